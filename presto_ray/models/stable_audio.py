"""Stable Audio Open's transformer (diffusers ``StableAudioDiTModel``) as a raw network F for the
teacher objectives of presto_ray.models.objectives (METHOD.md section 7).

:class:`StableAudioNet` has the ``net(x_in [B, C, L], t [B], cond)`` signature the preconditioners
call; Stable Audio Open 1.0 is a v-prediction model with sigma_data 1, so its denoiser is
``VPrecond(StableAudioNet(transformer), sigma_data=1.0)`` (``make_precond("v", ...)``). The network
does what ``StableAudioPipeline`` does around the transformer call: it builds the rotary embedding
for the L latent frames plus the one prepended global token and passes the condition's two streams.

For Presto-L (METHOD.md section 3) the network runs a layer budget of the transformer's blocks
(:class:`~presto_ray.models.layer_budget.BlockBudget`: the last ``keep_last`` always kept) and, for
a student, adds a zero-initialised learned budget embedding to the timestep conditioning (the
global token), so that at initialisation the student is the teacher at full budget.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import Tensor

from presto_ray.models.dit import BUDGET_SCALE, FREQ_DIM
from presto_ray.models.dit_blocks import EmbedMLP, sinusoidal_embedding
from presto_ray.models.layer_budget import BlockBudget, BudgetArg


@dataclass
class StableAudioCond:
    """The condition of a batch of B samples, as ``StableAudioPipeline`` builds it.

    encoder_hidden_states: [B, S, Dc] float, the cross-attention tokens (the projected T5 states
    with padding zeroed, followed by the seconds_start and seconds_end tokens);
    global_hidden_states: [B, 1, Dg] float, the global token (seconds_start and seconds_end
    embeddings concatenated along features, Dg = 2 Dc), prepended to the latent sequence.
    """

    encoder_hidden_states: Tensor
    global_hidden_states: Tensor

    def __len__(self) -> int:
        """The batch size B."""
        return int(self.encoder_hidden_states.shape[0])

    def null(self) -> StableAudioCond:
        """The classifier-free-guidance null condition of the pipeline (no negative prompt): zero
        cross-attention tokens [B, S, Dc]; the global (timing) token is kept."""
        return StableAudioCond(torch.zeros_like(self.encoder_hidden_states), self.global_hidden_states)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StableAudioCond:
        """Both tensors on ``device`` and/or in the float ``dtype``."""
        return StableAudioCond(self.encoder_hidden_states.to(device=device, dtype=dtype),
                               self.global_hidden_states.to(device=device, dtype=dtype))


class StableAudioNet(torch.nn.Module):
    """A diffusers ``StableAudioDiTModel`` as a raw network ``F(x_in, t, cond, budget=None)``.

    x_in [B, C, L] is the preconditioned latent, t [B] (or a scalar) the model's own time, which for
    Stable Audio Open is (2/pi) atan(sigma), cond a :class:`StableAudioCond`. Inputs are cast to
    the transformer's dtype; F [B, C, L] comes back in it. ``keep_last``: the blocks every layer
    budget keeps; ``budget_embedding``: add the learned budget embedding (a Presto-L student).
    """

    def __init__(self, transformer: torch.nn.Module, *, keep_last: int = 1, budget_embedding: bool = False) -> None:
        super().__init__()
        self.transformer = transformer
        depth = len(transformer.transformer_blocks)
        if not 0 <= keep_last < depth:
            raise ValueError(f"keep_last={keep_last} must be in [0, depth={depth})")
        self.budget = BlockBudget(depth, keep_last, "presto")
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.budget_embed = (EmbedMLP(FREQ_DIM, inner, zero_last=True).to(transformer.dtype)
                             if budget_embedding else None)

    @property
    def depth(self) -> int:
        """The number of transformer blocks."""
        return len(self.transformer.transformer_blocks)

    def rotary_embedding(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin), each [length + 1, head_dim // 2]: the pipeline's rotary embedding over the
        prepended global token and the ``length`` latent frames (rotating half of each head)."""
        cos, sin = get_1d_rotary_pos_embed(self.transformer.config.attention_head_dim // 2, length + 1,
                                           use_real=True, repeat_interleave_real=False)
        return cos.to(device), sin.to(device)

    def _inputs(self, x_in: Tensor, t: Tensor | float, cond: StableAudioCond) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Check shapes and cast to the transformer's dtype: (x_in [B, C, L], t [B], encoder states
        [B, S, Dc], global states [B, 1, Dg])."""
        cfg = self.transformer.config
        dtype = self.transformer.dtype
        if x_in.ndim != 3 or x_in.shape[1] != cfg.in_channels:
            raise ValueError(f"x_in must have shape [B, C={cfg.in_channels}, L], got {tuple(x_in.shape)}")
        batch = x_in.shape[0]
        enc, glob = cond.encoder_hidden_states, cond.global_hidden_states
        if enc.ndim != 3 or enc.shape[0] != batch or enc.shape[2] != cfg.cross_attention_input_dim:
            raise ValueError(f"encoder_hidden_states must have shape [B={batch}, S, "
                             f"{cfg.cross_attention_input_dim}], got {tuple(enc.shape)}")
        if tuple(glob.shape) != (batch, 1, cfg.global_states_input_dim):
            raise ValueError(f"global_hidden_states must have shape [B={batch}, 1, {cfg.global_states_input_dim}], "
                             f"got {tuple(glob.shape)}")
        t = torch.as_tensor(t, device=x_in.device).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [B={batch}] (or be a scalar), got {tuple(t.shape)}")
        return x_in.to(dtype), t.to(dtype), enc.to(dtype), glob.to(dtype)

    def blocks_run(self, budget: int) -> list[int]:
        """The 0-based transformer blocks a sample with ``budget`` runs (the last ``keep_last`` kept)."""
        return self.budget.blocks_run(budget)

    def forward(self, x_in: Tensor, t: Tensor | float, cond: StableAudioCond, *, budget: BudgetArg = None) -> Tensor:
        """F(x_in, t, cond) [B, C, L]: the steps of ``StableAudioDiTModel.forward`` (embeddings,
        blocks, output projections), each block run on the rows whose ``budget`` (None, an int or
        a LongTensor [B]) executes it."""
        model = self.transformer
        h = self._trunk(x_in, t, cond, budget, self.depth - 1)
        out = model.proj_out(h).transpose(1, 2)[:, :, 1:]  # the prepended global token dropped
        return model.postprocess_conv(out) + out

    def hidden_state(self, x_in: Tensor, t: Tensor | float, cond: StableAudioCond, block: int, *,
                     budget: BudgetArg = None) -> Tensor:
        """h_k [B, L, D], the sequence after block ``k = block`` (blocks 0..k run; the prepended global
        token dropped, so one state per latent frame); D = the transformer's inner dimension."""
        if not 0 <= block < self.depth:
            raise ValueError(f"block {block} is outside [0, depth={self.depth})")
        return self._trunk(x_in, t, cond, budget, block)[:, 1:]

    def _trunk(self, x_in: Tensor, t: Tensor | float, cond: StableAudioCond, budget: BudgetArg,
               last: int) -> Tensor:
        """Embed the inputs as ``StableAudioDiTModel.forward`` does (plus the budget embedding on
        the global token) and run blocks 0..last: the sequence [B, 1 + L, D], global token first."""
        x_in, t, enc, glob = self._inputs(x_in, t, cond)
        model = self.transformer
        batch = x_in.shape[0]
        budgets = self.budget.per_sample(budget, batch)
        cross = model.cross_attention_proj(enc)
        glob = model.global_proj(glob) + model.timestep_proj(model.time_proj(t)).unsqueeze(1)
        if self.budget_embed is not None:
            fraction = self.budget.fraction(budgets, batch, x_in.device)
            glob = glob + self.budget_embed(sinusoidal_embedding(fraction * BUDGET_SCALE, FREQ_DIM).to(glob.dtype))[:, None]
        h = model.proj_in((model.preprocess_conv(x_in) + x_in).transpose(1, 2))
        h = torch.cat([glob, h], dim=-2)
        rotary = self.rotary_embedding(x_in.shape[2], x_in.device)
        checkpointed = torch.is_grad_enabled() and model.gradient_checkpointing

        def run(layer, h, cross):  # the block call of StableAudioDiTModel.forward, checkpointed as it is there
            if checkpointed:
                return model._gradient_checkpointing_func(layer, h, None, cross, None, rotary)
            return layer(hidden_states=h, attention_mask=None, encoder_hidden_states=cross,
                         encoder_attention_mask=None, rotary_embedding=rotary)

        for k, rows in enumerate(self.budget.rows(budgets, x_in.device)[: last + 1]):
            layer = model.transformer_blocks[k]
            if rows is None:
                h = run(layer, h, cross)
            elif len(rows):
                h = h.index_copy(0, rows, run(layer, h[rows], cross[rows]).to(h.dtype))
            else:  # no sample runs it; diffusers' attention cannot take zero rows, so one row runs
                # and adds an empty sum (0, in the graph): every data-parallel rank still touches
                # every block (see BlockBudget.rows)
                h = h + run(layer, h[:1], cross[:1])[:0].sum().to(h.dtype)
        return h
