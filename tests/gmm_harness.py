"""A 2-D Gaussian-mixture distillation harness (used by tests/test_distill_gmm.py).

Two mixtures, each scaled so that its per-axis std is about sigma_data = 0.5: :func:`mixture`
(3 components, weights 0.5 / 0.3 / 0.2, stds 0.1) and :func:`ring` (8 equal components on a
circle of radius 0.7, stds 0.07). The teacher is the exact denoiser of the mixture
(:class:`presto_ray.edm.GaussianMixtureDenoiser`). "A copy of the teacher" is a small
EDMPrecond(MLPNet) trained by denoising score matching on samples of the data (as a real teacher
is); the generator and the fake score of every distillation method start from it. Everything runs
in one process on the CPU with fixed seeds.

Distances are squared MMDs (biased V-statistic) with a mix of RBF kernels between n samples of a
generator and n fresh data samples; the noise floor is the same statistic between two independent
data samples of size n.

Presto-S settings (PrestoSRun, pretrain_copy) and what was measured about them (ring and "three",
seed 0 unless said; docs/results.md, "The analytic floor (issue #18)"):
- p_gen is the method's inference distribution, unshifted. A shift of 2 (exp(2) = 7.4 times
  noisier) put 32% of generator training above sigma_max = 80, where the sampler never goes, and
  cut the share below the 4-step sampler's last real level (0.47) from 33% to 18%.
- The copy is fitted to noised data samples (target x0) for 800 steps. The copy's fit bounds the
  precision: the teacher is exact but the fake score is an MLP that starts from the copy, so where
  it cannot reproduce the exact denoiser the DMD gradient g = (m_fake - m_real) / |x_hat - m_real|
  is not 0 even for a generator equal to the data (mean |g| 0.37 for this copy, 0.95 for sigma in
  0.05-0.2, the components' scale; 0.13-0.18 after 3000 steps). On the ring a 3000-step copy (with
  the fake score's lr 1e-3) took 1-step / 4-step / pooled MMD^2 from 20 / 45 / 10x the floor to
  11-20 / 10-18 / 4-7x (seeds 0-2; 4 steps below 1 step in each). It is not the default because on "three" the same accurate copy collapsed the
  sampled levels onto the heaviest component (1 and 4 steps ~470x) with the pooled output at 7x;
  an exact-regressed copy collapses the same way (1 step, 3 seeds of 3): such a copy outputs
  nearly the data mean for every input at sigma >= 10, so the generator starts with no spread there,
  and the level-blind fake score lets the other levels compensate in the pool.
- The fake score's lr is 2e-4 (measured over 3 seeds). 1e-3 halved the ring's 4-step figure
  (45x -> 24x the floor, the 0.47 level 39x -> 22x, 1 step 20x -> 23x) and "three"'s (35x -> 17x,
  1 step 16x both), seed 0 only.
- Not the cause (ring): width 128 (the copy's error stays 0.034: it is the fit, not the capacity),
  fitting the copy at LogNormal(-1.2, 1.2), and p_dmd = p_dsm = p_gan = the copy's own fitting
  distribution LogNormal(-0.5, 1.5) (1 / 4 steps 22 / 22x against 23 / 24x).
"""

from __future__ import annotations

import copy
import math
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
# The ring: 8 equal components on a circle of radius 0.7 with stds 0.07 (per-axis std 0.5 = sigma_data;
# neighbours 0.54 = 7.7 stds apart).
RING_K, RING_RADIUS, RING_STD = 8, 0.7, 0.07
SIGMA_DATA = 0.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
# RBF bandwidths from below a component's std (0.1) up to the spread of the mixture (~0.7)
BANDWIDTHS = (0.07, 0.17, 0.33, 0.7)
EVAL_N = 2000


def mixture() -> GaussianMixtureDenoiser:
    """The 3-component mixture with weights 0.5 / 0.3 / 0.2."""
    return GaussianMixtureDenoiser(torch.tensor(WEIGHTS), torch.tensor(MEANS), torch.tensor(STDS))


def ring() -> GaussianMixtureDenoiser:
    """8 equal components evenly spaced on a circle of radius 0.7, stds 0.07."""
    angle = torch.arange(RING_K, dtype=torch.float64) * (2 * math.pi / RING_K)
    means = RING_RADIUS * torch.stack([angle.cos(), angle.sin()], 1)
    return GaussianMixtureDenoiser(torch.full((RING_K,), 1.0 / RING_K), means, torch.full((RING_K,), RING_STD))


MIXTURES = {"three": mixture, "ring": ring}


class ExactV(torch.nn.Module):
    """The exact v-prediction network of mixture ``mix``: on x_t = cos(phi) x0 + sin(phi) n with
    phi = pi t / 2 it returns v = cos(phi) n_hat - sin(phi) x0_hat, x0_hat = E[x0 | x_t] and
    n_hat = (x_t - cos(phi) x0_hat) / sin(phi). Derived from the process, not from VPrecond."""

    def __init__(self, mix: GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.mix = mix

    def forward(self, x_t, t, cond):
        phi = (t * math.pi / 2)[:, None]
        cos, sin = phi.cos(), phi.sin()
        x0_hat = self.mix(x_t / cos, sin / cos)  # x_t / alpha = x0 + tan(phi) n: the EDM process at sigma = tan(phi)
        n_hat = (x_t - cos * x0_hat) / sin
        return cos * n_hat - sin * x0_hat


class ExactFlow(torch.nn.Module):
    """The exact rectified-flow network of mixture ``mix``: on x_t = (1 - t) x0 + t n it returns
    n_hat - x0_hat, x0_hat = E[x0 | x_t] and n_hat = (x_t - (1 - t) x0_hat) / t."""

    def __init__(self, mix: GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.mix = mix

    def forward(self, x_t, t, cond):
        t = t[:, None]
        x0_hat = self.mix(x_t / (1 - t), t / (1 - t))  # x_t / (1 - t) = x0 + t / (1 - t) n
        n_hat = (x_t - (1 - t) * x0_hat) / t
        return n_hat - x0_hat


def exact_teacher(mix: GaussianMixtureDenoiser, objective: str):
    """The exact denoiser of ``mix`` as a teacher trained with ``objective`` would be seen: the
    exact network of that parameterisation ("v": sigma_data 1, as Stable Audio Open 1.0;
    "rectified_flow") wrapped by its preconditioner; "edm": the mixture's denoiser itself."""
    from presto_ray.models.objectives import make_precond

    if objective == "edm":
        return mix
    return make_precond(objective, {"v": ExactV, "rectified_flow": ExactFlow}[objective](mix), 1.0)


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
    return (torch.bincount(resp, minlength=mix.weights.shape[0]).double() / x.shape[0]).tolist()


def pingpong_samples(gen, steps: int, n: int = EVAL_N, seed: int = 1, dim: int = 2) -> Tensor:
    """n ping-pong samples [n, dim] of ``gen`` over karras_sigmas(steps, 0.002, 80, 7)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, dim, generator=g)
    with torch.no_grad():
        return sample_pingpong(gen, noise, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO), None, generator=g)


def evaluate(mix: GaussianMixtureDenoiser, gen, steps: int, n: int = EVAL_N, seed: int = 1) -> dict:
    """{"mmd": distance of n ``steps``-step samples to n fresh data samples, "fractions": per
    component, "finite": all samples finite}."""
    x = pingpong_samples(gen, steps, n, seed, mix.dim)
    ref, _ = mix.sample(n, torch.Generator().manual_seed(seed + 1000))
    finite = bool(torch.isfinite(x).all())
    x = torch.nan_to_num(x, nan=1e3, posinf=1e3, neginf=-1e3)
    return {"mmd": mmd(x, ref), "fractions": component_fractions(mix, x), "finite": finite}


def level_output(mix: GaussianMixtureDenoiser, gen, sigma: float, n: int = EVAL_N, seed: int = 3) -> Tensor:
    """G(x0 + sigma eps, sigma) [n, d] for n fresh data samples x0: the generator's output at one
    noise level on the inputs it was trained on."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mix.sample(n, g)
    with torch.no_grad():
        return gen(x0 + sigma * torch.randn(x0.shape, generator=g), torch.full((n,), float(sigma)), None)


def level_mmd(mix: GaussianMixtureDenoiser, gen, sigma: float, n: int = EVAL_N, seed: int = 3) -> float:
    """Distance to fresh data of :func:`level_output`."""
    ref, _ = mix.sample(n, torch.Generator().manual_seed(seed + 1000))
    return mmd(level_output(mix, gen, sigma, n, seed), ref)


def component_offsets(mix: GaussianMixtureDenoiser, x: Tensor) -> Tensor:
    """[K, d]: mean of the samples x [n, d] assigned to each component minus that component's mean
    (0 for a component with no sample)."""
    resp = mix.responsibilities(x, SIGMA_MIN).argmax(1)
    out = torch.zeros_like(mix.means)
    for k in range(mix.means.shape[0]):
        if (resp == k).any():
            out[k] = x[resp == k].double().mean(0) - mix.means[k]
    return out


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
                  batch: int = 512, lr: float = 2e-3, seed: int = 0, target: str = "x0") -> tuple[EDMPrecond, float]:
    """(EDMPrecond(MLPNet) trained with the EDM-weighted error, sigma ~ LogNormal(-0.5, 1.5), the
    final weighted error against the exact denoiser): a copy of the teacher. ``target`` "x0" is
    denoising score matching on data samples (how a teacher is trained); "exact" regresses the
    exact denoiser."""
    if target not in ("x0", "exact"):
        raise ValueError(f"target must be 'x0' or 'exact', got {target!r}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = EDMPrecond(MLPNet(mix.dim, width, depth), SIGMA_DATA)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    p_sigma = LogNormal(-0.5, 1.5)
    loss = torch.zeros(())
    for _ in range(steps):
        x0, _ = mix.sample(batch, g)
        sigma = p_sigma.sample(batch, generator=g)
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        y = net(x, sigma, None)
        w = loss_weight(sigma, SIGMA_DATA)
        loss = (w * ((y - mix(x, sigma)) ** 2).mean(1)).mean()
        fit = loss if target == "exact" else (w * ((y - x0) ** 2).mean(1)).mean()
        opt.zero_grad()
        fit.backward()
        opt.step()
        sched.step()
    return net, float(loss.detach())


# ---------------------------------------------------------------------------------- Presto-S / DMD2


@dataclass
class PrestoSRun:
    """Hyper-parameters of one Presto-S (or DMD2) run on the mixture."""

    iterations: int = 3000
    batch: int = 256
    lr_gen: float = 5e-4
    lr_guidance: float = 2e-4
    nu1: float = 0.01
    nu2: float = 0.01
    ttur: int = 5
    gen_shift: float = 0.0  # p_gen = the inference distribution shifted by exp(gen_shift) (method: 0)
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
    """The ``dmd2`` baseline through the config path (make_update): one noise distribution
    (inference) for everything, generator levels = the student's discrete Karras levels,
    non-saturating GAN loss."""
    from presto_ray.config import PrestoConfig
    from presto_ray.distill.methods import make_update

    cfg = PrestoConfig.model_validate({
        "edm": {"sigma_data": SIGMA_DATA, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO},
        "distill": {"method": "dmd2", "w_real": 1.0, "nu1": run.nu1, "nu2": run.nu2, "ttur": run.ttur,
                    "student_steps": student_steps, "student_rho": RHO},
    })
    return make_update(cfg)


def make_roles(mix, base: EDMPrecond, run: PrestoSRun, teacher=None) -> Roles:
    """Generator and fake score: copies of ``base``; the discriminator head reads the fake score's
    middle block; the teacher is ``teacher`` (default: the mixture's exact denoiser)."""
    net = base.net
    guidance = GuidanceModel(copy.deepcopy(base), DiscriminatorHead(net.width, run.head_width), net.depth // 2)
    return Roles(generator=TorchRole.adamw("generator", copy.deepcopy(base), run.lr_gen, grad_clip=run.grad_clip),
                 teacher=mix if teacher is None else teacher,
                 guidance=TorchRole.adamw("guidance", guidance, run.lr_guidance, grad_clip=run.grad_clip))


def train_distribution_matching(mix, base: EDMPrecond, update: PrestoS, run: PrestoSRun, teacher=None) -> dict:
    """Run ``update`` (Presto-S / DMD2) for ``run.iterations`` on fresh data batches of ``mix``,
    with ``teacher`` (default: the exact denoiser of ``mix``) as the real score. Both roles' lr
    decay linearly to 0 over the run (the generator's scheduler steps once per generator turn, so
    the fake score keeps tracking until the generator stops). Returns {"generator": module,
    "metrics": last step's metrics, "seconds": wall time}."""
    torch.manual_seed(run.seed)
    g = torch.Generator().manual_seed(run.seed + 1)
    roles = make_roles(mix, base, run, teacher)
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
