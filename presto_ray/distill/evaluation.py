"""Fixed-batch evaluations of a distilled student during training (every rank; collective under
ZeRO-3). Each method object (:mod:`presto_ray.distill.methods`) picks the one that fits its model.
"""

from __future__ import annotations

import torch

from presto_ray.config import PrestoConfig
from presto_ray.distill.budget import BudgetSchedule, ScheduledDenoiser
from presto_ray.distill.presto_l import dropped_error, hidden_std
from presto_ray.distill.roles import Roles
from presto_ray.edm import karras_sigmas, sample_pingpong


@torch.no_grad()
def few_step_moments(cfg: PrestoConfig, roles: Roles, x0: torch.Tensor, cond,
                     schedule: BudgetSchedule) -> dict[str, float]:
    """A few-step student: per-channel mean/std of ping-pong samples at 1 and
    ``distill.student_steps`` steps (under ``schedule``) against those of the real batch x0
    [B, C, T] (whose std is sigma_data): ``eval_moment_err@N``."""
    d, edm = cfg.distill, cfg.edm
    g = roles.generator if schedule.is_full else ScheduledDenoiser(roles.generator, schedule)
    ref_mean, ref_std = x0.float().mean(dim=(0, 2)), x0.float().std(dim=(0, 2))
    out: dict[str, float] = {}
    for steps in sorted({1, d.student_steps}):
        gen = torch.Generator(device=x0.device).manual_seed(cfg.train.seed)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        sigmas = karras_sigmas(steps, edm.sigma_min, edm.sigma_max, d.student_rho, device=x0.device)
        x = sample_pingpong(g, noise, sigmas, cond, generator=gen).float()
        err = (x.mean(dim=(0, 2)) - ref_mean).abs().mean() + (x.std(dim=(0, 2)) - ref_std).abs().mean()
        out[f"eval_moment_err@{steps}"] = float(err)
    return out


@torch.no_grad()
def dropped_layers(cfg: PrestoConfig, roles: Roles, x0: torch.Tensor, cond, lowest: int) -> dict[str, float]:
    """A student sampled like its teacher (layer dropping): lambda-weighted error of the dropped
    student to the full teacher at the ``lowest`` and the middle budget
    (``eval_dropped_err@<budget>``), and per-block hidden std at sigma = 1, full against middle
    budget (``hidden_std_full/<block>``, ``hidden_std_dropped/<block>``)."""
    model, edm = cfg.model, cfg.edm
    out: dict[str, float] = {}
    middle = max(lowest, model.depth // 2)
    for b in sorted({lowest, middle}):
        out[f"eval_dropped_err@{b}"] = dropped_error(roles.generator, roles.teacher, x0, cond, b,
                                                     cfg.train.eval_sigmas, edm.sigma_data, cfg.train.seed)
    full = hidden_std(roles.generator, x0, cond, 1.0, None, model.depth, cfg.train.seed)
    half = hidden_std(roles.generator, x0, cond, 1.0, middle, model.depth, cfg.train.seed)
    out.update({f"hidden_std_full/{k}": v for k, v in enumerate(full)})
    out.update({f"hidden_std_dropped/{k}": v for k, v in enumerate(half)})
    return out
