"""The discriminator head of Presto-S (METHOD.md section 2, "Discriminator (choice)").

It reads the fake score's hidden sequence after one block and returns one logit per (strided)
frame; conditioning already entered the backbone, so the head needs none.
"""

from __future__ import annotations

from torch import Tensor, nn


class DiscriminatorHead(nn.Module):
    """h [B, N, D] -> logits [B, ceil(N / 2)]: Conv1d(D, W, 3, stride 2), GroupNorm, SiLU,
    Conv1d(W, 1, 1). ``width`` W is the head's channel count."""

    def __init__(self, in_dim: int, width: int = 64, groups: int = 8) -> None:
        super().__init__()
        groups = max(g for g in range(1, min(groups, width) + 1) if width % g == 0)
        self.net = nn.Sequential(
            nn.Conv1d(in_dim, width, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv1d(width, 1, kernel_size=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        if h.ndim != 3:
            raise ValueError(f"the discriminator head reads hidden states [B, N, D], got {tuple(h.shape)}")
        return self.net(h.transpose(1, 2).to(self.net[0].weight.dtype)).squeeze(1).float()
