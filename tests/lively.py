"""Exports of untrained networks that still respond to their input: the zero-initialised output
and modulation layers of a fresh DiT make it ignore the condition and the blocks run, so every
weight gets a small random perturbation."""

from __future__ import annotations

from pathlib import Path

import torch

from presto_ray.data.stats import LatentStats
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.train.export import write_export


def lively_export(folder: Path, cfg, role: str, *, seed: int, step: int, scale: float = 0.05) -> Path:
    """Write an export at ``folder`` holding ``role``: EDMPrecond(DiT1D(cfg.model)) built with
    ``seed``, every parameter moved by ``scale`` x N(0, 1); unit latent statistics."""
    torch.manual_seed(seed)
    net = EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    channels = cfg.model.latent_channels
    return write_export(folder, {role: net.state_dict()}, cfg,
                        LatentStats(mean=torch.zeros(channels), std=torch.ones(channels),
                                    sigma_data=cfg.edm.sigma_data), step)
