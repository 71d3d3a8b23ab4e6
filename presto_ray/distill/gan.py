"""Adversarial losses on discriminator logits (METHOD.md section 2).

``lsgan`` (Presto-S): generator mean((D(fake) - 1)^2); discriminator mean((D(real) - 1)^2) +
mean(D(fake)^2). ``nonsaturating`` (DMD2): generator mean(softplus(-D(fake))); discriminator
mean(softplus(-D(real))) + mean(softplus(D(fake))). Logits are [B, M] (one per frame); the loss
is averaged over frames and batch.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

GanLoss = Literal["lsgan", "nonsaturating"]


def generator_gan_loss(logits_fake: Tensor, kind: GanLoss = "lsgan") -> Tensor:
    """Scalar adversarial loss of the generator from the logits of its (noised) samples."""
    if kind == "lsgan":
        return ((logits_fake.float() - 1.0) ** 2).mean()
    if kind == "nonsaturating":
        return F.softplus(-logits_fake.float()).mean()
    raise ValueError(f"unknown GAN loss '{kind}'")


def discriminator_gan_loss(logits_real: Tensor, logits_fake: Tensor, kind: GanLoss = "lsgan") -> Tensor:
    """Scalar discriminator loss: real logits pushed to 1 (lsgan) / up, fake to 0 / down."""
    if kind == "lsgan":
        return ((logits_real.float() - 1.0) ** 2).mean() + (logits_fake.float() ** 2).mean()
    if kind == "nonsaturating":
        return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()
    raise ValueError(f"unknown GAN loss '{kind}'")
