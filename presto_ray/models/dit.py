"""The 1-D diffusion transformer F over latent frames (METHOD.md sections 1 and 3).

``DiT1D`` is the raw network F inside EDM preconditioning: the wrapper passes ``c_in * x`` and
``c_noise`` and forms ``D = c_skip x + c_out F``. It supports a layer budget (Presto-L "presto"
dropping, which keeps the last ``keep_last`` blocks, or ASE "ase" early exit), per-sample budgets
in one batch (each block runs only on the samples that execute it), budget conditioning, and
hidden-state taps after any block.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from presto_ray.config import DiTConfig
from presto_ray.models.cond import Cond
from presto_ray.models.dit_blocks import (
    DiTBlock,
    EmbedMLP,
    FinalLayer,
    patchify,
    sinusoidal_embedding,
    unpatchify,
)
from presto_ray.models.layer_budget import BlockBudget, BudgetArg

FREQ_DIM = 256
"""Width of the sinusoidal features fed to the noise, bpm and budget embedding MLPs."""
NOISE_SCALE = 1000.0
"""c_noise = ln(sigma)/4 spans about [-1.6, 1.1]; it is multiplied by this before the sinusoids so
the range covers the frequency ladder like DiT's 0..1000 timesteps."""
BUDGET_SCALE = 1000.0
"""The budget fraction (0, 1] is multiplied by this before the sinusoids (same reasoning)."""


class DiT1D(nn.Module):
    """1-D DiT: patchify along time, ``depth`` adaLN-Zero blocks (self-attention with rotary
    positions, cross-attention to text tokens, MLP), final adaLN + linear, unpatchify.

    cfg: DiTConfig (latent_channels C, patch p, width D, depth, heads, mlp_ratio, text_dim Dt,
    use_bpm, budget_embedding, drop_mode, keep_last). Any T divisible by p works (N = T / p).
    A freshly initialised model returns exactly F = 0.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if (cfg.width // cfg.heads) % 2:
            raise ValueError(f"rotary positions need an even head dim, got width={cfg.width} / "
                             f"heads={cfg.heads} = {cfg.width // cfg.heads}")
        self.cfg = cfg
        width, patch_dim = cfg.width, cfg.latent_channels * cfg.patch
        self.x_embed = nn.Linear(patch_dim, width)
        self.noise_embed = EmbedMLP(FREQ_DIM, width)
        self.text_pool = nn.Linear(cfg.text_dim, width)
        self.context_proj = nn.Linear(cfg.text_dim, width)
        self.bpm_embed = EmbedMLP(FREQ_DIM, width) if cfg.use_bpm else None
        self.blocks = nn.ModuleList(DiTBlock(width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(width, patch_dim)
        self._init_weights()
        # Created last, so that turning it on consumes the RNG after every other module: the rest
        # initialises identically, and its zero last layer leaves the outputs unchanged.
        self.budget_embed = EmbedMLP(FREQ_DIM, width, zero_last=True) if cfg.budget_embedding else None
        self.budget = BlockBudget(cfg.depth, cfg.keep_last, cfg.drop_mode)

    def _init_weights(self) -> None:
        for module in [self.x_embed, self.text_pool, self.context_proj, *self.blocks]:
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        for layer in [*(b.modulation for b in self.blocks), self.final.modulation, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------------------- budget

    def blocks_run(self, budget: int) -> list[int]:
        """The 0-based blocks a sample with ``budget`` executes, in order. "presto": the first
        budget - keep_last blocks, then the last keep_last ones; "ase": the first ``budget``."""
        return self.budget.blocks_run(budget)

    # ---------------------------------------------------------------------------- conditioning

    def embed_condition(self, c_noise: Tensor, cond: Cond, budget_fraction: Tensor | None = None) -> Tensor:
        """The conditioning vector c: [B, D] = MLP(sinusoidal(c_noise)) + Linear(masked-mean tokens)
        + bpm MLP (known bpm only) + budget MLP (when enabled; budget_fraction [B], default 1).

        c_noise: [B]; cond: Cond of batch B.
        """
        dtype = self.x_embed.weight.dtype
        c = self.noise_embed(sinusoidal_embedding(c_noise * NOISE_SCALE, FREQ_DIM))
        tokens = cond.tokens.to(dtype)
        weights = cond.mask.to(dtype)[..., None]
        pooled = torch.where(cond.mask[..., None], tokens, 0.0).sum(1) / weights.sum(1).clamp_min(1.0)
        c = c + self.text_pool(pooled)
        if self.bpm_embed is not None and cond.bpm is not None:
            known = torch.isfinite(cond.bpm)
            bpm = torch.where(known, cond.bpm, 0.0)
            bpm_c = self.bpm_embed(sinusoidal_embedding(bpm, FREQ_DIM))
            c = c + torch.where(known[:, None], bpm_c, 0.0)
        if self.budget_embed is not None:
            if budget_fraction is None:
                budget_fraction = torch.ones(c.shape[0], device=c.device)
            c = c + self.budget_embed(sinusoidal_embedding(budget_fraction * BUDGET_SCALE, FREQ_DIM))
        return c

    def encode_context(self, cond: Cond) -> tuple[Tensor, Tensor]:
        """Text tokens for cross-attention: (ctx [B, L, D], mask [B, L] bool). Masked-out tokens are
        zeroed first, so their values (even NaN) never reach the output."""
        tokens = torch.where(cond.mask[..., None], cond.tokens.to(self.x_embed.weight.dtype), 0.0)
        return self.context_proj(tokens), cond.mask

    # --------------------------------------------------------------------------------- forward

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        cond: Cond,
        *,
        budget: BudgetArg = None,
        return_hidden: Sequence[int] | None = None,
    ) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        """F(x, c_noise, cond): x [B, C, T] (already scaled by c_in), c_noise [B] (or a scalar) ->
        F [B, C, T].

        budget: None (all blocks), an int, or a LongTensor [B] of blocks each sample executes
        (see :meth:`blocks_run`); every block runs only on the rows that execute it.
        return_hidden: block indices k; then returns (F, {k: h_k [B, N, D]}) with h_k the state
        after block k (a sample that skips block k carries its state through it).
        """
        cfg = self.cfg
        taps = set()
        if return_hidden is not None:
            taps = {operator.index(k) for k in return_hidden}
            bad = sorted(k for k in taps if not 0 <= k < cfg.depth)
            if bad:
                raise ValueError(f"return_hidden indices {bad} are outside [0, depth={cfg.depth})")
        h, c, hidden = self._trunk(x, c_noise, cond, budget, taps, cfg.depth - 1)
        out = unpatchify(self.final(h, c), cfg.latent_channels, cfg.patch)
        if return_hidden is not None:
            return out, {k: hidden[k] for k in return_hidden}
        return out

    def hidden_state(self, x: Tensor, c_noise: Tensor | float, cond: Cond, block: int, *,
                     budget: BudgetArg = None) -> Tensor:
        """h_k [B, N, D], the state after block ``k = block``, computing blocks 0..k only (the
        discriminator's input: equal to ``forward(..., return_hidden=[k])[1][k]`` at a fraction of
        its cost). x [B, C, T], c_noise [B] and budget as in :meth:`forward`."""
        k = operator.index(block)
        if not 0 <= k < self.cfg.depth:
            raise ValueError(f"block {k} is outside [0, depth={self.cfg.depth})")
        return self._trunk(x, c_noise, cond, budget, {k}, k)[2][k]

    def _trunk(self, x: Tensor, c_noise: Tensor | float, cond: Cond, budget: BudgetArg, taps: set[int],
               last: int) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        """Embed the inputs and run blocks 0..last: (h [B, N, D], c [B, D], {k: h_k} for k in taps)."""
        cfg = self.cfg
        if x.ndim != 3 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must have shape [B, C={cfg.latent_channels}, T], got {tuple(x.shape)}")
        batch = x.shape[0]
        cond.validate(batch, cfg.text_dim)
        c_noise = torch.as_tensor(c_noise, device=x.device).reshape(-1)
        if c_noise.numel() == 1:
            c_noise = c_noise.expand(batch)
        if c_noise.shape != (batch,):
            raise ValueError(f"c_noise must have shape [B={batch}] (or be a scalar), got {tuple(c_noise.shape)}")
        budgets = self.budget.per_sample(budget, batch)
        c = self.embed_condition(c_noise, cond, self.budget.fraction(budgets, batch, x.device))
        ctx, ctx_mask = self.encode_context(cond)
        h = self.x_embed(patchify(x.to(self.x_embed.weight.dtype), cfg.patch))

        hidden: dict[int, Tensor] = {}
        schedule = self.budget.rows(budgets, x.device)
        for k in range(last + 1):
            block, rows = self.blocks[k], schedule[k]
            if rows is None:
                h = block(h, c, ctx, ctx_mask)
            else:  # possibly zero rows (see BlockBudget.rows)
                h_rows = block(h[rows], c[rows], ctx[rows], ctx_mask[rows])
                h = h.index_copy(0, rows, h_rows.to(h.dtype))
            if k in taps:
                hidden[k] = h
        return h, c, hidden

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with requires_grad when ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
