"""Distribution-matching (DMD) gradient and its surrogate loss (METHOD.md section 2, step 2).

For a generated sample x_hat [B, ...] noised to x_t = x_hat + sigma eps, with the teacher's
(real) and the fake score's denoisings m_real, m_fake of x_t:

    g = (m_fake - m_real) / mean_{C,T} |x_hat - m_real|        (per sample, DMD2's normalisation)
    L_DMD = 0.5 * mean((x_hat - sg(x_hat - g))^2),   so dL_DMD/dx_hat = g / numel.

Descending L_DMD moves x_hat toward the teacher's denoising and away from the fake score's.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dmd_gradient(x_hat: Tensor, m_real: Tensor, m_fake: Tensor) -> Tensor:
    """g [B, ...] = (m_fake - m_real) / mean over non-batch dims of |x_hat - m_real|, in float32;
    non-finite entries (a zero normaliser) become 0. All inputs are [B, ...] and carry no grad."""
    x_hat, m_real, m_fake = (t.detach().float() for t in (x_hat, m_real, m_fake))
    norm = (x_hat - m_real).abs().flatten(1).mean(dim=1)
    norm = norm.reshape([-1] + [1] * (x_hat.ndim - 1))
    return torch.nan_to_num((m_fake - m_real) / norm, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x_hat: Tensor, g: Tensor) -> Tensor:
    """Surrogate scalar 0.5 * mean((x_hat - sg(x_hat - g))^2); gradients reach x_hat only."""
    target = (x_hat.detach().float() - g).detach()
    return 0.5 * ((x_hat.float() - target) ** 2).mean()
