"""A 2-D Gaussian-mixture distillation harness (used by tests/test_distill_gmm.py).

The teacher is the exact denoiser of a mixture with unequal weights
(:class:`presto_ray.edm.GaussianMixtureDenoiser`). "A copy of the teacher" is a small
EDMPrecond(MLPNet) pre-trained to regress that exact denoiser; the generator and the fake score of
every distillation method start from it. Everything runs in one process on the CPU with fixed seeds.

Distances are squared MMDs (biased V-statistic) with a mix of RBF kernels between n samples of a
generator and n fresh data samples; the noise floor is the same statistic between two independent
data samples of size n.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from presto_ray.distill.cd import ConsistencyDistillation, make_target
from presto_ray.distill.guidance import GuidanceModel
from presto_ray.distill.presto_s import PrestoS
from presto_ray.distill.roles import Roles, TorchRole
from presto_ray.edm import (EDMPrecond, GaussianMixtureDenoiser, KarrasContinuous, LogNormal, NoiseDistribution,
                            Shifted, karras_sigmas, loss_weight, sample_pingpong)
from presto_ray.models.disc_head import DiscriminatorHead
from presto_ray.models.mlp import MLPNet

# Unequal weights; data scaled so its std (~0.52) is about sigma_data: means / 3, component stds 0.1.
WEIGHTS = [0.5, 0.3, 0.2]
MEANS = [[-2.0 / 3, 0.0], [2.0 / 3, 1.0 / 3], [0.0, -2.5 / 3]]
STDS = [0.1, 0.1, 0.1]
SIGMA_DATA = 0.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
# RBF bandwidths from below a component's std (0.1) up to the spread of the mixture (~0.7)
BANDWIDTHS = (0.07, 0.17, 0.33, 0.7)
EVAL_N = 2000


def mixture() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(torch.tensor(WEIGHTS), torch.tensor(MEANS), torch.tensor(STDS))


def mmd(a: Tensor, b: Tensor, bandwidths=BANDWIDTHS) -> float:
    """Squared MMD (biased V-statistic) with a sum of RBF kernels: a [n, d], b [m, d]."""
    a, b = a.double(), b.double()

    def k(x, y):
        d = torch.cdist(x, y) ** 2
        return sum(torch.exp(-d / (2 * s * s)) for s in bandwidths)

    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def component_fractions(mix: GaussianMixtureDenoiser, x: Tensor) -> list[float]:
    """Share of the samples x [n, d] assigned (argmax responsibility at sigma_min) to each component."""
    resp = mix.responsibilities(x, SIGMA_MIN).argmax(1)
    return (torch.bincount(resp, minlength=len(WEIGHTS)).double() / x.shape[0]).tolist()


def pingpong_samples(gen, steps: int, n: int = EVAL_N, seed: int = 1) -> Tensor:
    """n ping-pong samples [n, d] of ``gen`` over karras_sigmas(steps, 0.002, 80, 7)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, len(MEANS[0]), generator=g)
    with torch.no_grad():
        return sample_pingpong(gen, noise, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO), None, generator=g)


def evaluate(mix: GaussianMixtureDenoiser, gen, steps: int, n: int = EVAL_N, seed: int = 1) -> dict:
    """{"mmd": distance of n ``steps``-step samples to n fresh data samples, "fractions": per
    component, "finite": all samples finite}."""
    x = pingpong_samples(gen, steps, n, seed)
    ref, _ = mix.sample(n, torch.Generator().manual_seed(seed + 1000))
    finite = bool(torch.isfinite(x).all())
    x = torch.nan_to_num(x, nan=1e3, posinf=1e3, neginf=-1e3)
    return {"mmd": mmd(x, ref), "fractions": component_fractions(mix, x), "finite": finite}


def pooled_output_mmd(mix: GaussianMixtureDenoiser, gen, p_gen: NoiseDistribution, n: int = EVAL_N,
                      seed: int = 2) -> float:
    """Distance to fresh data of G(x0 + sigma eps, sigma) with x0 ~ data, sigma ~ p_gen: the
    generator's output distribution pooled over its training levels, i.e. the distribution the fake
    score models and distribution matching drives to the data distribution."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mix.sample(n, g)
    sigma = p_gen.sample(n, generator=g)
    with torch.no_grad():
        y = gen(x0 + sigma[:, None] * torch.randn(x0.shape, generator=g), sigma, None)
    ref, _ = mix.sample(n, torch.Generator().manual_seed(seed + 1000))
    return mmd(y, ref)


def data_vs_data(mix: GaussianMixtureDenoiser, n: int = EVAL_N) -> float:
    a, _ = mix.sample(n, torch.Generator().manual_seed(5))
    b, _ = mix.sample(n, torch.Generator().manual_seed(6))
    return mmd(a, b)


def pretrain_copy(mix: GaussianMixtureDenoiser, width: int = 64, depth: int = 4, steps: int = 800,
                  batch: int = 512, lr: float = 2e-3, seed: int = 0) -> tuple[EDMPrecond, float]:
    """(EDMPrecond(MLPNet) regressing the exact denoiser with the EDM-weighted error, sigma ~
    LogNormal(-0.5, 1.5), the final weighted error): a copy of the teacher."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = EDMPrecond(MLPNet(len(MEANS[0]), width, depth), SIGMA_DATA)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    p_sigma = LogNormal(-0.5, 1.5)
    loss = torch.zeros(())
    for _ in range(steps):
        x0, _ = mix.sample(batch, g)
        sigma = p_sigma.sample(batch, generator=g)
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        loss = (loss_weight(sigma, SIGMA_DATA) * ((net(x, sigma, None) - mix(x, sigma)) ** 2).mean(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net, float(loss.detach())


# ---------------------------------------------------------------------------------- Presto-S / DMD2


@dataclass
class PrestoSRun:
    """Hyper-parameters of one Presto-S (or DMD2) run on the mixture."""

    iterations: int = 2000
    batch: int = 256
    lr_gen: float = 5e-4
    lr_guidance: float = 2e-4
    nu1: float = 0.01
    nu2: float = 0.01
    ttur: int = 3
    gen_shift: float = 2.0  # p_gen = the inference distribution shifted by exp(gen_shift)
    train_mean: float = -1.2  # p_dmd = p_dsm = p_gan = LogNormal(train_mean, train_std) ("train")
    train_std: float = 1.2
    head_width: int = 32
    grad_clip: float = 1.0
    seed: int = 0


def presto_s_update(run: PrestoSRun) -> PrestoS:
    """Presto-S as in METHOD.md: p_gen = (shifted) inference distribution, continuous; p_dmd, p_dsm,
    p_gan = train distribution; least-squares GAN; w_real = 1 (unconditional data)."""
    p_gen = Shifted(KarrasContinuous(SIGMA_MIN, SIGMA_MAX, RHO), run.gen_shift)
    train = LogNormal(run.train_mean, run.train_std)
    return PrestoS(p_gen=p_gen, p_dmd=train, p_dsm=train, p_gan=train, sigma_data=SIGMA_DATA, w_real=1.0,
                   nu1=run.nu1, nu2=run.nu2, ttur=run.ttur, gan_loss="lsgan")


def dmd2_update(run: PrestoSRun, student_steps: int) -> PrestoS:
    """The ``dmd2`` baseline through the config path (PrestoS.from_config): one noise distribution
    (inference) for everything, generator levels = the student's discrete Karras levels,
    non-saturating GAN loss."""
    from presto_ray.config import PrestoConfig

    cfg = PrestoConfig.model_validate({
        "edm": {"sigma_data": SIGMA_DATA, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO},
        "distill": {"method": "dmd2", "w_real": 1.0, "nu1": run.nu1, "nu2": run.nu2, "ttur": run.ttur,
                    "student_steps": student_steps, "student_rho": RHO},
    })
    return PrestoS.from_config(cfg)


def make_roles(mix, base: EDMPrecond, run: PrestoSRun) -> Roles:
    """Generator and fake score: copies of ``base``; the discriminator head reads the fake score's
    middle block."""
    net = base.net
    guidance = GuidanceModel(copy.deepcopy(base), DiscriminatorHead(net.width, run.head_width), net.depth // 2)
    return Roles(generator=TorchRole.adamw("generator", copy.deepcopy(base), run.lr_gen, grad_clip=run.grad_clip),
                 teacher=mix,
                 guidance=TorchRole.adamw("guidance", guidance, run.lr_guidance, grad_clip=run.grad_clip))


def train_distribution_matching(mix, base: EDMPrecond, update: PrestoS, run: PrestoSRun) -> dict:
    """Run ``update`` (Presto-S / DMD2) for ``run.iterations`` on fresh data batches. Both roles' lr
    decay linearly to 0 over the run (the generator's scheduler steps once per generator turn, so
    the fake score keeps tracking until the generator stops). Returns {"generator": module,
    "metrics": last step's metrics, "seconds": wall time}."""
    torch.manual_seed(run.seed)
    g = torch.Generator().manual_seed(run.seed + 1)
    roles = make_roles(mix, base, run)
    n, ttur = run.iterations, update.ttur
    gen_turns = (n + ttur - 1) // ttur
    sched_gen = torch.optim.lr_scheduler.LambdaLR(roles.generator.optimizer, lambda i: max(0.0, 1 - i / gen_turns))
    sched_guidance = torch.optim.lr_scheduler.LambdaLR(roles.guidance.optimizer, lambda i: max(0.0, 1 - i / n))
    t0 = time.time()
    metrics = {}
    for it in range(n):
        x0, _ = mix.sample(run.batch, g)
        metrics = update.step(roles, x0, None, it, generator=g)
        if it % ttur == 0:
            sched_gen.step()
        sched_guidance.step()
    return {"generator": roles.generator.module, "metrics": {k: float(v) for k, v in metrics.items()},
            "seconds": time.time() - t0}


# ------------------------------------------------------------------------------------------------ cd


@dataclass
class CDRun:
    iterations: int = 1500
    batch: int = 256
    lr: float = 1e-3
    steps: int = 18  # Karras levels of the teacher's Heun steps
    ema: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0


def train_cd(mix, base: EDMPrecond, run: CDRun) -> dict:
    """Consistency distillation from the exact teacher, generator = copy of ``base``, target = its
    EMA (Roles.target = make_target(generator)); lr decays linearly to 0."""
    torch.manual_seed(run.seed)
    g = torch.Generator().manual_seed(run.seed + 1)
    gen = copy.deepcopy(base)
    roles = Roles(generator=TorchRole.adamw("generator", gen, run.lr, grad_clip=run.grad_clip), teacher=mix,
                  target=make_target(gen))
    update = ConsistencyDistillation(SIGMA_MIN, SIGMA_MAX, RHO, steps=run.steps, ema=run.ema, w_real=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(roles.generator.optimizer, lambda i: max(0.0, 1 - i / run.iterations))
    t0 = time.time()
    metrics = {}
    for it in range(run.iterations):
        x0, _ = mix.sample(run.batch, g)
        metrics = update.step(roles, x0, None, it, generator=g)
        sched.step()
    return {"generator": gen, "metrics": {k: float(v) for k, v in metrics.items()}, "seconds": time.time() - t0}
