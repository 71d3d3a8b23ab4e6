"""Presto-S: score-based distribution matching distillation (METHOD.md section 2), and DMD2 as
published (the ``dmd2`` baseline) as a configuration of the same update.

One call of :meth:`PrestoS.step` is one iteration on a real batch (x0, c):

1. sigma_g ~ p_gen; x_hat = G(x0 + sigma_g eps, sigma_g, c) (or, with backward simulation, G's
   input comes from its own ping-pong samples).
2. every ``ttur`` iterations, the generator turn: L_DMD (sigma ~ p_DMD) + nu1 * L_adv
   (sigma ~ p_GAN); the adversarial gradient is taken w.r.t. x_hat through the frozen guidance
   model and enters the generator's backward as one surrogate, so the guidance engine's
   parameters are never reached.
3. the guidance turn on sg(x_hat): L_fake (sigma ~ p_DSM) + nu2 * L_D (sigma ~ p_GAN).

Every loss draws its own sigma and noise from the ``generator`` passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from presto_ray.distill.budget import BudgetSchedule, ScheduledDenoiser
from presto_ray.distill.dmd import dmd_gradient, dmd_loss
from presto_ray.distill.gan import GanLoss, discriminator_gan_loss, generator_gan_loss
from presto_ray.distill.roles import Guard, Roles, allow_all, guarded_step
from presto_ray.edm.guidance import ClassifierFreeGuidance
from presto_ray.edm.loss import denoising_loss
from presto_ray.edm.noise import NoiseDistribution, make_noise, standard_normal
from presto_ray.edm.precond import expand_sigma
from presto_ray.edm.schedule import karras_sigmas

log = logging.getLogger("presto_ray.distill")

DMD2_REPLACES = ("p_gen", "p_dmd", "p_dsm", "p_gan")
"""``distill`` noise keys the dmd2 baseline does not read (``dmd2_noise`` stands in for all four;
``gan_loss`` is always the non-saturating loss there)."""


def _stats(prefix: str, x: Tensor) -> dict[str, Tensor]:
    x = x.detach().float()
    return {f"{prefix}_mean": x.mean(), f"{prefix}_std": x.std()}


def _student_levels(cfg) -> list[float]:
    """The student's ping-pong noise levels (``distill.student_steps`` Karras levels, without 0)."""
    d, edm = cfg.distill, cfg.edm
    return [float(s) for s in karras_sigmas(d.student_steps, edm.sigma_min, edm.sigma_max, d.student_rho)[:-1]]


@dataclass
class PrestoS:
    """The Presto-S / DMD2 update over :class:`Roles` (generator, guidance, teacher).

    p_gen, p_dmd, p_dsm, p_gan: noise-level distributions; gen_sigmas: when given, generator
    levels are drawn uniformly from this discrete set instead of p_gen (DMD2); sigma_data: EDM
    sigma_data; w_real: teacher CFG scale and cfg_rescale its guidance rescale; nu1 / nu2:
    adversarial weights of generator / discriminator; ttur: guidance updates per generator
    update; gan_loss: lsgan or nonsaturating; backward_simulation: generator inputs from its own
    samples over ``sim_sigmas``; schedule: the generator's layer-budget schedule (Presto-LS; full depth by default).
    """

    p_gen: NoiseDistribution
    p_dmd: NoiseDistribution
    p_dsm: NoiseDistribution
    p_gan: NoiseDistribution
    sigma_data: float
    w_real: float = 4.0
    cfg_rescale: float = 0.0  # guidance rescale of the real score (distill.cfg_rescale)
    nu1: float = 0.01
    nu2: float = 0.01
    ttur: int = 5
    gan_loss: GanLoss = "lsgan"
    gen_sigmas: list[float] | None = None
    backward_simulation: bool = False
    sim_sigmas: list[float] = field(default_factory=list)
    schedule: BudgetSchedule = field(default_factory=lambda: BudgetSchedule([], []))

    @classmethod
    def from_config(cls, cfg, schedule: BudgetSchedule | None = None) -> "PrestoS":
        """Presto-S from a :class:`~presto_ray.config.PrestoConfig` (methods presto-s and presto-ls;
        ``schedule``: the generator's budget schedule)."""
        d, edm = cfg.distill, cfg.edm
        return cls(p_gen=make_noise(d.p_gen, edm), p_dmd=make_noise(d.p_dmd, edm), p_dsm=make_noise(d.p_dsm, edm),
                   p_gan=make_noise(d.p_gan, edm), sigma_data=edm.sigma_data, w_real=d.w_real,
                   cfg_rescale=d.cfg_rescale, nu1=d.nu1,
                   nu2=d.nu2, ttur=d.ttur, gan_loss=d.gan_loss, gen_sigmas=d.gen_sigmas,
                   backward_simulation=d.backward_simulation, sim_sigmas=list(d.gen_sigmas or _student_levels(cfg)),
                   schedule=schedule or BudgetSchedule([], []))

    @classmethod
    def dmd2_from_config(cls, cfg, schedule: BudgetSchedule | None = None) -> "PrestoS":
        """DMD2 as published from a :class:`~presto_ray.config.PrestoConfig` (method dmd2): every
        noise level from ``distill.dmd2_noise`` (a warning names the ignored keys of
        :data:`DMD2_REPLACES` that were set), generator levels the student's, non-saturating GAN loss."""
        d, edm = cfg.distill, cfg.edm
        student = _student_levels(cfg)
        defaults = type(d)()
        ignored = [k for k in DMD2_REPLACES if getattr(d, k) != getattr(defaults, k)]
        if ignored:
            log.warning("distill.method=dmd2 ignores %s: DMD2 draws every noise level from "
                        "distill.dmd2_noise (%s) and uses the non-saturating GAN loss",
                        ", ".join(f"distill.{k}" for k in ignored), d.dmd2_noise.kind)
        noise = make_noise(d.dmd2_noise, edm)
        return cls(p_gen=noise, p_dmd=noise, p_dsm=noise, p_gan=noise, sigma_data=edm.sigma_data,
                   w_real=d.w_real, cfg_rescale=d.cfg_rescale, nu1=d.nu1, nu2=d.nu2, ttur=d.ttur,
                   gan_loss="nonsaturating",
                   gen_sigmas=list(d.gen_sigmas or student), backward_simulation=d.backward_simulation,
                   sim_sigmas=list(d.gen_sigmas or student), schedule=schedule or BudgetSchedule([], []))

    # ------------------------------------------------------------------------------ pieces

    def generator_fn(self, roles: Roles):
        """G as a denoiser, under the budget schedule when there is one."""
        return roles.generator if self.schedule.is_full else ScheduledDenoiser(roles.generator, self.schedule)

    def draw_sigma_gen(self, batch: int, generator: torch.Generator | None, device) -> Tensor:
        """sigma_g [B]: from gen_sigmas (uniform over the set) when given, else from p_gen."""
        if self.gen_sigmas is None:
            return self.p_gen.sample(batch, generator=generator, device=device)
        levels = torch.tensor(self.gen_sigmas, dtype=torch.float32)
        gen_device = generator.device if generator is not None else "cpu"
        index = torch.randint(len(self.gen_sigmas), (batch,), generator=generator, device=gen_device)
        return levels.to(gen_device)[index].to(device)

    def generator_input(self, roles: Roles, x0: Tensor, cond: Any, generator) -> tuple[Tensor, Tensor]:
        """(x_in [B, ...], sigma_g [B]): noised real data, or with backward simulation the
        generator's own samples along ``sim_sigmas`` renoised to a randomly chosen level."""
        batch = x0.shape[0]
        if not self.backward_simulation:
            sigma = self.draw_sigma_gen(batch, generator, x0.device)
            eps = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            return x0 + expand_sigma(sigma, x0).to(x0.dtype) * eps, sigma
        levels = self.sim_sigmas
        gen_device = generator.device if generator is not None else "cpu"
        index = torch.randint(len(levels), (batch,), generator=generator, device=gen_device).to(x0.device)
        eps = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = levels[0] * eps
        states = [x]
        g = self.generator_fn(roles)
        with torch.no_grad():
            for j in range(len(levels) - 1):  # all levels on every rank (equal collectives under ZeRO-3)
                x_hat = g(x, torch.full((batch,), levels[j], device=x0.device), cond).to(x0.dtype)
                eps = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                x = x_hat + levels[j + 1] * eps
                states.append(x)
        stacked = torch.stack(states)  # [J, B, ...]
        x_in = stacked[index, torch.arange(batch, device=x0.device)]
        sigma = torch.tensor(levels, device=x0.device, dtype=torch.float32)[index]
        return x_in, sigma

    def _noised(self, x: Tensor, p: NoiseDistribution, generator) -> tuple[Tensor, Tensor]:
        sigma = p.sample(x.shape[0], generator=generator, device=x.device)
        eps = standard_normal(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + expand_sigma(sigma, x).to(x.dtype) * eps, sigma

    # ------------------------------------------------------------------------------- turns

    def generator_turn(self, roles: Roles, x_hat: Tensor, cond: Any, generator, guard: Guard) -> dict:
        """Update G with L_DMD + nu1 * L_adv; x_hat [B, ...] carries G's graph."""
        teacher = ClassifierFreeGuidance(roles.teacher, self.w_real, rescale=self.cfg_rescale)
        x_t, sigma = self._noised(x_hat.detach(), self.p_dmd, generator)
        with torch.no_grad():
            m_real = teacher(x_t, sigma, cond).detach()
            m_fake = roles.guidance(x_t, sigma, cond, mode="score").detach()
        g = dmd_gradient(x_hat, m_real, m_fake)
        loss_dm = dmd_loss(x_hat, g)
        metrics = {"loss_dm": loss_dm.detach(), "dmd_grad_abs": g.abs().mean(),
                   **_stats("real_score", m_real), **_stats("fake_score", m_fake)}
        total = loss_dm
        if self.nu1 > 0:
            # gradient of L_adv w.r.t. the generator output only, through the frozen guidance model.
            # Its module is called directly: a DeepSpeed engine's forward expects engine.backward.
            x_in = x_hat.detach().requires_grad_(True)
            x_a, sigma_a = self._noised(x_in, self.p_gan, generator)
            logits = roles.guidance.module(x_a, sigma_a, cond, mode="logits")
            loss_adv = generator_gan_loss(logits, self.gan_loss)
            (grad,) = torch.autograd.grad(loss_adv, x_in)
            total = total + self.nu1 * (x_hat.float() * grad.detach().float()).sum()
            metrics["loss_gen_gan"] = loss_adv.detach()
        metrics["loss_gen"] = loss_dm.detach() + self.nu1 * metrics.get("loss_gen_gan", 0.0)
        guarded_step(roles.generator, total, guard, metrics)  # the guard sees the adversarial surrogate too
        return metrics

    def guidance_turn(self, roles: Roles, x0: Tensor, x_fake: Tensor, cond: Any, generator, guard: Guard) -> dict:
        """Update mu_fake and Dh with L_fake + nu2 * L_D on sg(x_hat) = x_fake [B, ...]."""
        x_fake = x_fake.detach()
        sigma_d = self.p_dsm.sample(x0.shape[0], generator=generator, device=x0.device)
        loss_fake = denoising_loss(roles.guidance, x_fake, sigma_d, cond, sigma_data=self.sigma_data,
                                   generator=generator).mean()
        metrics = {"loss_fake": loss_fake.detach()}
        total = loss_fake
        if self.nu2 > 0:
            sigma_a = self.p_gan.sample(x0.shape[0], generator=generator, device=x0.device)
            s = expand_sigma(sigma_a, x0).to(x0.dtype)
            e1 = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            e2 = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            logits_real = roles.guidance(x0 + s * e1, sigma_a, cond, mode="logits")
            logits_fake = roles.guidance(x_fake + s * e2, sigma_a, cond, mode="logits")
            loss_d = discriminator_gan_loss(logits_real, logits_fake, self.gan_loss)
            total = total + self.nu2 * loss_d
            metrics.update({"loss_disc": loss_d.detach(), "disc_real": logits_real.detach().float().mean(),
                            "disc_fake": logits_fake.detach().float().mean()})
        guarded_step(roles.guidance, total, guard, metrics)
        return metrics

    def step(self, roles: Roles, x0: Tensor, cond: Any, iteration: int, *,
             generator: torch.Generator | None = None, guard: Guard = allow_all) -> dict[str, Tensor]:
        """One iteration (generator turn when ``iteration % ttur == 0``, guidance turn always).
        x0: [B, ...] real (normalised) latents. Returns scalar tensors (DMD2's diagnostics)."""
        if roles.guidance is None:
            raise ValueError("Presto-S needs a guidance role (fake score + discriminator)")
        x_in, sigma_g = self.generator_input(roles, x0, cond, generator)
        g = self.generator_fn(roles)
        generator_turn = iteration % self.ttur == 0
        with torch.set_grad_enabled(generator_turn):
            x_hat = g(x_in, sigma_g, cond)
            x_hat = x_hat[0] if isinstance(x_hat, tuple) else x_hat
        metrics = _stats("generated", x_hat)
        if generator_turn:
            metrics.update(self.generator_turn(roles, x_hat, cond, generator, guard))
        metrics.update(self.guidance_turn(roles, x0, x_hat, cond, generator, guard))
        return metrics
