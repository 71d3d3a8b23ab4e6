"""Consistency distillation (the ``cd`` baseline) in EDM form (Song et al. 2023, with the
teacher's Heun step and an EMA target network).

Levels t_1 < ... < t_N are the Karras schedule of ``steps`` levels. One iteration: n ~ U{1..N-1},
x_{n+1} = x0 + t_{n+1} eps; the teacher (with CFG) takes one Heun step to x_n at t_n; the loss is
mean((G(x_{n+1}, t_{n+1}) - sg(G_target(x_n, t_n)))^2) with G_target an EMA of G (decay ``ema``).
EDM preconditioning gives G(x, sigma_min) ~= x, the consistency boundary condition.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from presto_ray.distill.roles import Guard, Roles, TrainedRole, allow_all, frozen, guarded_step
from presto_ray.edm.guidance import ClassifierFreeGuidance
from presto_ray.edm.noise import standard_normal
from presto_ray.edm.precond import expand_sigma, first_output
from presto_ray.edm.schedule import karras_sigmas

def heun_step(denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, cond: Any) -> Tensor:
    """One Heun step of the probability-flow ODE from sigma [B] to sigma_next [B] (> 0): x [B, ...]."""
    s, s_next = expand_sigma(sigma, x).to(x.dtype), expand_sigma(sigma_next, x).to(x.dtype)
    d = (x - first_output(denoiser(x, sigma, cond)).to(x.dtype)) / s
    x_next = x + (s_next - s) * d
    d_next = (x_next - first_output(denoiser(x_next, sigma_next, cond)).to(x.dtype)) / s_next
    return x + (s_next - s) * 0.5 * (d + d_next)


def make_target(module: nn.Module) -> nn.Module:
    """A frozen copy of the generator's module to serve as the EMA target."""
    return frozen(copy.deepcopy(module))


@torch.no_grad()
def update_target(target: nn.Module, role: TrainedRole, decay: float) -> None:
    """target <- decay * target + (1 - decay) * generator (fp32 master weights; collective under ZeRO)."""
    params = dict(target.named_parameters())
    for name, value in role.full_fp32_params():
        p = params[name]
        p.lerp_(value.to(p.device, p.dtype), 1.0 - decay)


@dataclass
class ConsistencyDistillation:
    """The ``cd`` update over :class:`Roles` (generator, teacher, target)."""

    sigma_min: float
    sigma_max: float
    rho: float
    steps: int = 18
    ema: float = 0.95
    w_real: float = 1.0
    cfg_rescale: float = 0.0  # guidance rescale of the teacher's step (distill.cfg_rescale)

    @classmethod
    def from_config(cls, cfg) -> "ConsistencyDistillation":
        d, edm = cfg.distill, cfg.edm
        return cls(edm.sigma_min, edm.sigma_max, edm.rho, steps=d.cd_steps, ema=d.cd_ema, w_real=d.w_real,
                   cfg_rescale=d.cfg_rescale)

    def levels(self, device) -> Tensor:
        """t_1 < ... < t_N: [N] ascending."""
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho, device=device)[:-1].flip(0)

    def step(self, roles: Roles, x0: Tensor, cond: Any, iteration: int, *,
             generator: torch.Generator | None = None, guard: Guard = allow_all) -> dict[str, Tensor]:
        if roles.target is None:
            raise ValueError("consistency distillation needs an EMA target network (Roles.target)")
        t = self.levels(x0.device)
        gen_device = generator.device if generator is not None else "cpu"
        n = torch.randint(0, self.steps - 1, (x0.shape[0],), generator=generator, device=gen_device).to(x0.device)
        t_n, t_next = t[n], t[n + 1]
        eps = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_next = x0 + expand_sigma(t_next, x0).to(x0.dtype) * eps
        with torch.no_grad():
            teacher = ClassifierFreeGuidance(roles.teacher, self.w_real, rescale=self.cfg_rescale)
            x_n = heun_step(teacher, x_next, t_next, t_n, cond)
            target = first_output(roles.target(x_n, t_n, cond)).detach()
        pred = first_output(roles.generator(x_next, t_next, cond))
        loss = ((pred.float() - target.float()) ** 2).flatten(1).mean(1).mean()
        metrics = {"loss_cd": loss.detach()}
        if guarded_step(roles.generator, loss, guard, metrics):
            update_target(roles.target, roles.generator, self.ema)
        return metrics
