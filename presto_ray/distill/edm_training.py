"""The teacher's own update (METHOD.md section 1), in the protocol every distillation update has.

One iteration: drop the condition with probability ``p_uncond`` (the tempo alone with
``p_uncond_bpm``) so that the teacher learns the unconditional score classifier-free guidance
needs, then one EDM denoising-loss step of the trained denoiser. The worker loop
(:mod:`presto_ray.train.loop`) runs it exactly as it runs Presto-S, Presto-L or cd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from presto_ray.config import NoiseConfig, PrestoConfig
from presto_ray.distill.roles import Guard, Roles, allow_all, guarded_step
from presto_ray.edm import EDMLoss, make_noise


@dataclass
class EDMTraining:
    """Train ``roles.generator`` (here the teacher's network) on the EDM loss with condition dropout."""

    loss: EDMLoss
    p_uncond: float
    p_uncond_bpm: float

    @classmethod
    def from_config(cls, cfg: PrestoConfig) -> "EDMTraining":
        """The training noise of ``cfg.edm`` (log-normal p_mean, p_std) and its dropout rates."""
        return cls(EDMLoss(make_noise(NoiseConfig(kind="train"), cfg.edm), cfg.edm.sigma_data),
                   cfg.edm.p_uncond, cfg.edm.p_uncond_bpm)

    def step(self, roles: Roles, x0: Tensor, cond, iteration: int, generator: torch.Generator | None = None,
             guard: Guard = allow_all) -> dict[str, Tensor]:
        """x0: [B, C, T] normalised latents; cond: their Cond. Returns {"loss", and
        ``guarded_step``'s update count, gradient norm or skip count}."""
        cond = cond.drop(self.p_uncond, generator=generator).drop_bpm(self.p_uncond_bpm, generator)
        loss, _ = self.loss(roles.generator, x0, cond, generator=generator)
        loss = loss.float().mean()
        metrics = {"loss": loss.detach()}
        guarded_step(roles.generator, loss, guard, metrics)
        return metrics
