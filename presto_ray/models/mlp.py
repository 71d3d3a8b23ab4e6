"""A small residual MLP network F for low-dimensional data (analytic tests, quick experiments).

It has the DiT's calling convention, so EDM preconditioning, the distillation losses and the
discriminator head treat it like the DiT: ``forward(x_in [B, d], c_noise [B], cond, *,
budget=None, return_hidden=None)`` and ``hidden_state(x_in, c_noise, cond, block)``. ``cond`` is
ignored (unconditional data); ``budget`` (an int for the whole batch; per-sample budgets are not
supported) runs the first ``budget - keep_last`` blocks and the last ``keep_last`` ones, like the
DiT's "presto" mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from presto_ray.models.dit_blocks import sinusoidal_embedding
from presto_ray.models.layer_budget import BlockBudget


class MLPBlock(nn.Module):
    """h + W2 SiLU(W1 LayerNorm(h) + emb): h [B, D], emb [B, D] -> [B, D]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.emb = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class MLPNet(nn.Module):
    """F for data x [B, dim]: input projection, ``depth`` residual blocks modulated by the noise
    embedding, output projection. ``width`` D is the hidden size."""

    def __init__(self, dim: int, width: int = 128, depth: int = 4, keep_last: int = 1) -> None:
        super().__init__()
        self.dim, self.width, self.depth, self.keep_last = dim, width, depth, keep_last
        self.inp = nn.Linear(dim, width)
        self.noise = nn.Sequential(nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(MLPBlock(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def blocks_run(self, budget: int) -> list[int]:
        """The blocks a budget runs: the DiT's "presto" rule (:class:`BlockBudget`)."""
        return BlockBudget(self.depth, self.keep_last).blocks_run(budget)

    def forward(self, x: Tensor, c_noise: Tensor, cond=None, *, budget: int | None = None,
                return_hidden: Sequence[int] | None = None):
        """x: [B, dim]; c_noise: [B]. Returns F [B, dim], or (F, {k: h_k [B, 1, D]}) with the
        hidden state after block k as a one-token sequence (the discriminator head's input)."""
        h, hidden = self._trunk(x, c_noise, budget, self.depth - 1)
        out = self.out(h)
        if return_hidden is not None:
            return out, {k: hidden[k][:, None, :] for k in return_hidden}
        return out

    def hidden_state(self, x: Tensor, c_noise: Tensor, cond=None, block: int = 0, *,
                     budget: int | None = None) -> Tensor:
        """h_k [B, 1, D] after block ``k = block``, computing blocks 0..k only."""
        if not 0 <= block < self.depth:
            raise ValueError(f"block {block} is outside [0, depth={self.depth})")
        return self._trunk(x, c_noise, budget, block)[1][block][:, None, :]

    def _trunk(self, x: Tensor, c_noise: Tensor, budget: int | None, last: int) -> tuple[Tensor, dict[int, Tensor]]:
        """Blocks 0..last: (h [B, D], {k: h_k [B, D]})."""
        emb = self.noise(sinusoidal_embedding(c_noise.reshape(-1).expand(x.shape[0]) * 1000.0, 64))
        h = self.inp(x.to(self.inp.weight.dtype))
        run = set(range(self.depth)) if budget is None else set(self.blocks_run(int(budget)))
        hidden = {}
        for k in range(last + 1):
            if k in run:
                h = self.blocks[k](h, emb)
            hidden[k] = h
        return h, hidden
