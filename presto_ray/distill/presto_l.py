"""Presto-L: budget-conditioned, variance-preserving layer distillation (METHOD.md section 3), and
ASE (drop from the end, no budget conditioning, plain DSM) as the ``ase`` baseline.

One call of :meth:`PrestoL.step`: sigma ~ p_layer, x = x0 + sigma eps, budgets b ~ U{lowest..depth}
per sample (or b = schedule(sigma) when the method trains under a fixed schedule), then

    presto-l:  L = lambda(sigma) ||D(x; b) - sg(D_full(x))||^2 + dsm_weight * lambda ||D(x; b) - x0||^2
    ase:       L = lambda(sigma) ||D(x; b) - x0||^2

with D_full the frozen teacher at full depth (the self-teacher).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from presto_ray.distill.budget import BudgetSchedule, draw_budgets
from presto_ray.distill.roles import Guard, Roles, allow_all, guarded_step
from presto_ray.edm.noise import NoiseDistribution, make_noise, standard_normal
from presto_ray.edm.precond import expand_sigma, first_output, loss_weight

def weighted_error(pred: Tensor, target: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) * mean over non-batch dims of (pred - target)^2: [B] float32."""
    err = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    return loss_weight(sigma.float(), sigma_data) * err


@dataclass
class PrestoL:
    """The Presto-L / ASE update of the generator (the layer-dropped student).

    p_layer: noise levels; lowest, depth: budget range; self_teacher: True for presto-l (target =
    full-depth teacher), False for ase (target = x0); dsm_weight: plain DSM added in presto-l;
    schedule: when not full and ``use_schedule``, budgets come from it instead of at random.
    """

    p_layer: NoiseDistribution
    sigma_data: float
    lowest: int
    depth: int
    self_teacher: bool = True
    dsm_weight: float = 0.0
    schedule: BudgetSchedule = field(default_factory=lambda: BudgetSchedule([], []))
    use_schedule: bool = False
    p_uncond: float = 0.0  # condition dropout (the student is sampled with CFG, like its teacher)

    @classmethod
    def from_config(cls, cfg, lowest: int, *, self_teacher: bool, on_schedule: bool) -> "PrestoL":
        """From a :class:`~presto_ray.config.PrestoConfig` (method presto-l or ase); ``lowest`` is the
        lowest budget the student network allows; ``self_teacher``: presto-l's target (else ase's
        plain DSM); ``on_schedule``: train on ``distill.budget_schedule``'s budgets when it has any
        (ase) instead of random ones."""
        d = cfg.distill
        schedule = BudgetSchedule.from_config(d.budget_schedule)
        if d.min_budget is not None and not lowest <= d.min_budget <= cfg.model.depth:
            raise ValueError(f"distill.min_budget={d.min_budget} must be in [{lowest}, depth={cfg.model.depth}]")
        return cls(p_layer=make_noise(d.p_layer, cfg.edm), sigma_data=cfg.edm.sigma_data,
                   lowest=max(lowest, d.min_budget or lowest), depth=cfg.model.depth,
                   self_teacher=self_teacher, dsm_weight=d.dsm_weight if self_teacher else 0.0, schedule=schedule,
                   use_schedule=on_schedule and not schedule.is_full, p_uncond=cfg.edm.p_uncond)

    def budgets(self, sigma: Tensor, generator) -> Tensor:
        """LongTensor [B]: from the schedule (ase with a schedule) or uniform over [lowest, depth]."""
        if self.use_schedule:
            return self.schedule(sigma)
        return draw_budgets(sigma.shape[0], self.lowest, self.depth, generator=generator, device=sigma.device)

    def losses(self, roles: Roles, x0: Tensor, cond: Any, generator=None) -> dict[str, Tensor]:
        """{"loss": [B] with graph, "loss_st", "loss_dsm", "budget": [B]}."""
        sigma = self.p_layer.sample(x0.shape[0], generator=generator, device=x0.device)
        eps = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + expand_sigma(sigma, x0).to(x0.dtype) * eps
        budget = self.budgets(sigma, generator)
        if self.p_uncond > 0 and cond is not None:  # the same dropped condition for student and teacher
            cond = cond.drop(self.p_uncond, generator=generator)
        pred = first_output(roles.generator(x, sigma, cond, budget=budget))
        out = {"budget": budget}
        loss_dsm = weighted_error(pred, x0, sigma, self.sigma_data)
        out["loss_dsm"] = loss_dsm.detach()
        if self.self_teacher:
            with torch.no_grad():
                target = first_output(roles.teacher(x, sigma, cond)).detach()
            loss_st = weighted_error(pred, target, sigma, self.sigma_data)
            out["loss_st"] = loss_st.detach()
            out["loss"] = loss_st + self.dsm_weight * loss_dsm if self.dsm_weight else loss_st
        else:
            out["loss"] = loss_dsm
        return out

    def step(self, roles: Roles, x0: Tensor, cond: Any, iteration: int, *,
             generator: torch.Generator | None = None, guard: Guard = allow_all) -> dict[str, Tensor]:
        """One update of the generator. Returns scalar tensors."""
        out = self.losses(roles, x0, cond, generator)
        loss = out["loss"].mean()
        metrics = {"loss": loss.detach(), "loss_dsm": out["loss_dsm"].mean(),
                   "budget_mean": out["budget"].float().mean()}
        if "loss_st" in out:
            metrics["loss_st"] = out["loss_st"].mean()
        guarded_step(roles.generator, loss, guard, metrics)
        return metrics


@torch.no_grad()
def dropped_error(student, teacher, x0: Tensor, cond: Any, budget: int, sigmas: list[float], sigma_data: float,
                  seed: int = 0) -> float:
    """Mean over ``sigmas`` of lambda ||D_student(x; budget) - D_teacher_full(x)||^2 on fixed noise:
    how far the dropped student is from the full-depth teacher (lower is better)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = 0.0
    for s in sigmas:
        eps = torch.randn(x0.shape, generator=gen).to(x0)
        sigma = torch.full((x0.shape[0],), float(s), device=x0.device)
        x = x0 + s * eps
        pred = first_output(student(x, sigma, cond, budget=budget))
        target = first_output(teacher(x, sigma, cond))
        total += weighted_error(pred, target, sigma, sigma_data).mean().item()
    return total / len(sigmas)


@torch.no_grad()
def hidden_std(denoiser, x0: Tensor, cond: Any, sigma: float, budget: int | None, depth: int,
               seed: int = 0) -> list[float]:
    """Per-block standard deviation of the hidden state h_k [B, N, D] (k = 0..depth-1) on fixed
    noise at one sigma, for a given budget (None = full depth). A sample that skips block k
    carries its state through it, so a dropped path shows where its variance departs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen).to(x0)
    sigma_t = torch.full((x0.shape[0],), float(sigma), device=x0.device)
    kw = {"budget": budget} if budget is not None else {}
    _, hidden = denoiser(x0 + sigma * eps, sigma_t, cond, return_hidden=list(range(depth)), **kw)
    return [hidden[k].float().std().item() for k in range(depth)]
