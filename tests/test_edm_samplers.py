"""Karras schedule, teacher (EDM Heun/Euler, with churn) and ping-pong samplers, and
classifier-free guidance, all checked against exact Gaussian / Gaussian-mixture denoisers."""

from __future__ import annotations

import math

import pytest
import torch

from presto_ray.edm import (
    ClassifierFreeGuidance,
    EDMPrecond,
    GaussianMixtureDenoiser,
    karras_sigmas,
    sample_pingpong,
    sample_teacher,
)

MU, S = 0.7, 0.4
SMIN, SMAX, RHO = 0.002, 80.0, 7.0
GAUSS = GaussianMixtureDenoiser(torch.tensor([1.0]), torch.tensor([[MU]]), torch.tensor([S]))
MIX_W = torch.tensor([0.2, 0.5, 0.3])
MIX = GaussianMixtureDenoiser(MIX_W, torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]]), torch.tensor([0.3, 0.5, 0.4]))


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Many small tensor ops: with 2 shared cores, intra-op threads only spin (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Counting:
    """Wraps a denoiser; records call count, sigma shapes and keyword arguments."""

    def __init__(self, denoiser, as_tuple=False):
        self.denoiser, self.as_tuple = denoiser, as_tuple
        self.calls, self.sigma_shapes, self.kws, self.conds = 0, [], [], []

    def __call__(self, x, sigma, cond, **kw):
        self.calls += 1
        self.sigma_shapes.append(tuple(sigma.shape))
        self.kws.append(kw)
        self.conds.append(cond)
        out = self.denoiser(x, sigma, cond)
        return (out, {"aux": True}) if self.as_tuple else out


def _noise(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _mixture_moments(gm):
    w, m, s = gm.weights, gm.means, gm.stds
    mean = (w[:, None] * m).sum(0)
    second = (w[:, None] * (m**2 + s[:, None] ** 2)).sum(0)
    return mean, (second - mean**2).sqrt()


# ---------------------------------------------------------------- schedule


def test_karras_sigmas_endpoints_length_monotone():
    s = karras_sigmas(40, SMIN, SMAX, RHO)
    assert s.shape == (41,)
    assert s[0].item() == pytest.approx(SMAX)
    assert s[-2].item() == pytest.approx(SMIN)
    assert s[-1].item() == 0.0
    assert (s.diff() < 0).all()
    expected_1 = (SMAX ** (1 / RHO) + (SMIN ** (1 / RHO) - SMAX ** (1 / RHO)) / 39) ** RHO
    assert s[1].item() == pytest.approx(expected_1, rel=1e-6)


def test_karras_sigmas_one_step_and_validation():
    assert karras_sigmas(1, SMIN, SMAX, RHO).tolist() == [SMAX, 0.0]
    assert karras_sigmas(2, SMIN, SMAX, RHO, dtype=torch.float64).tolist() == pytest.approx([SMAX, SMIN, 0.0])
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError):
            karras_sigmas(bad, SMIN, SMAX, RHO)


# ---------------------------------------------------------------- teacher sampler


def test_heun_and_euler_converge_to_exact_ode_solution_with_their_orders():
    """For Gaussian data the probability-flow ODE is linear: x(0) - mu = s / sqrt(s^2 + smax^2)
    (x(smax) - mu). Heun is second order (error / 4 per doubling of steps), Euler first (/ 2)."""
    noise = _noise(256, 1, 0).double()
    exact = MU + S / math.sqrt(S**2 + SMAX**2) * (SMAX * noise - MU)

    def err(steps, solver):
        x = sample_teacher(GAUSS, noise, karras_sigmas(steps, SMIN, SMAX, RHO, dtype=torch.float64), None,
                           solver=solver)
        return ((x - MU) / (exact - MU) - 1).abs().max().item()

    heun40, heun80 = err(40, "heun"), err(80, "heun")
    euler40, euler80 = err(40, "euler"), err(80, "euler")
    assert heun40 < 0.02
    assert 3.0 < heun40 / heun80 < 5.0
    assert 1.6 < euler40 / euler80 < 2.5
    assert euler40 > 5 * heun40


def test_heun_40_steps_gaussian_distribution():
    x = sample_teacher(GAUSS, _noise(8000, 1, 1), karras_sigmas(40, SMIN, SMAX, RHO), None)
    assert x.shape == (8000, 1) and x.dtype == torch.float32
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert x.std().item() == pytest.approx(S, rel=0.03)


def test_heun_40_steps_mixture_distribution():
    n = 10000
    x = sample_teacher(MIX, _noise(n, 2, 2), karras_sigmas(40, SMIN, SMAX, RHO), None)
    freq = torch.bincount(MIX.responsibilities(x, 0.0).argmax(1), minlength=3).double() / n
    assert (freq - MIX_W.double()).abs().max().item() < 0.02
    mean, std = _mixture_moments(MIX)
    assert ((x.double().mean(0) - mean).abs() / std).max().item() < 0.05
    torch.testing.assert_close(x.double().std(0), std, rtol=0.04, atol=0)


def test_euler_more_steps_lands_on_distribution():
    x = sample_teacher(GAUSS, _noise(8000, 1, 3), karras_sigmas(200, SMIN, SMAX, RHO), None, solver="euler")
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert x.std().item() == pytest.approx(S, rel=0.03)
    n = 8000
    xm = sample_teacher(MIX, _noise(n, 2, 4), karras_sigmas(200, SMIN, SMAX, RHO), None, solver="euler")
    freq = torch.bincount(MIX.responsibilities(xm, 0.0).argmax(1), minlength=3).double() / n
    assert (freq - MIX_W.double()).abs().max().item() < 0.02


def test_churn_still_lands_on_distribution_and_uses_generator():
    sig = karras_sigmas(100, SMIN, SMAX, RHO)
    kw = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    x = sample_teacher(GAUSS, _noise(8000, 1, 5), sig, None, generator=torch.Generator().manual_seed(0), **kw)
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert x.std().item() == pytest.approx(S, rel=0.03)
    n = 8000
    xm = sample_teacher(MIX, _noise(n, 2, 6), sig, None, generator=torch.Generator().manual_seed(1), **kw)
    freq = torch.bincount(MIX.responsibilities(xm, 0.0).argmax(1), minlength=3).double() / n
    assert (freq - MIX_W.double()).abs().max().item() < 0.02
    # churn is stochastic: another generator seed gives different samples from the same noise
    noise = _noise(64, 1, 7)
    a = sample_teacher(GAUSS, noise, sig, None, generator=torch.Generator().manual_seed(0), **kw)
    b = sample_teacher(GAUSS, noise, sig, None, generator=torch.Generator().manual_seed(1), **kw)
    c = sample_teacher(GAUSS, noise, sig, None, generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.allclose(a, b) and torch.equal(a, c)


def test_churn_only_inside_s_tmin_s_tmax():
    """Churn outside [s_tmin, s_tmax] is off: the sampler then equals the deterministic one; a
    window covering only some steps changes the result."""
    sig = karras_sigmas(20, SMIN, SMAX, RHO)
    noise = _noise(64, 1, 16)
    plain = sample_teacher(GAUSS, noise, sig, None)
    gen = torch.Generator().manual_seed(0)
    above = sample_teacher(GAUSS, noise, sig, None, s_churn=40.0, s_tmin=100.0, s_tmax=200.0, generator=gen)
    below = sample_teacher(GAUSS, noise, sig, None, s_churn=40.0, s_tmin=0.0, s_tmax=1e-3, generator=gen)
    assert torch.equal(plain, above) and torch.equal(plain, below)
    window = sample_teacher(GAUSS, noise, sig, None, s_churn=40.0, s_tmin=0.1, s_tmax=1.0, generator=gen)
    assert not torch.allclose(plain, window)


def test_teacher_nfe_sigma_shape_kwargs_and_tuple_outputs():
    sig = karras_sigmas(10, SMIN, SMAX, RHO)
    noise = _noise(5, 1, 8)
    heun = Counting(GAUSS, as_tuple=True)
    out = sample_teacher(heun, noise, sig, "c", budget=0.5)
    assert heun.calls == 2 * 10 - 1
    assert set(heun.sigma_shapes) == {(5,)}
    assert all(kw == {"budget": 0.5} for kw in heun.kws) and set(heun.conds) == {"c"}
    torch.testing.assert_close(out, sample_teacher(GAUSS, noise, sig, "c"))
    euler = Counting(GAUSS)
    sample_teacher(euler, noise, sig, None, solver="euler")
    assert euler.calls == 10
    with pytest.raises(ValueError):
        sample_teacher(GAUSS, noise, sig, None, solver="rk4")


def test_one_step_teacher_is_the_denoiser_at_sigma_max_and_progress_is_harmless():
    noise = _noise(16, 1, 9)
    out = sample_teacher(GAUSS, noise, karras_sigmas(1, SMIN, SMAX, RHO), None)
    torch.testing.assert_close(out, GAUSS(noise * SMAX, torch.full((16,), SMAX)))
    sig = karras_sigmas(5, SMIN, SMAX, RHO)
    torch.testing.assert_close(
        sample_teacher(GAUSS, noise, sig, None, progress=True), sample_teacher(GAUSS, noise, sig, None)
    )


def _algorithm1(denoise, noise, steps, smin, smax, rho):
    """Karras et al. 2022, Algorithm 1 (deterministic Heun) in float64, written from the paper:
    t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, t_N = 0, x_0 = t_0 noise."""
    t = [(smax ** (1 / rho) + i / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
         for i in range(steps)] + [0.0]
    x = noise * t[0]
    for i in range(steps):
        d = (x - denoise(x, t[i])) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoise(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


class _MixtureNet(torch.nn.Module):
    """The raw network F whose EDM preconditioning is MIX's exact denoiser:
    F = (D(x, sigma) - c_skip x) / c_out with x = x_in / c_in and sigma = exp(4 c_noise)."""

    def __init__(self, sd):
        super().__init__()
        self.sd = sd

    def forward(self, x_in, c_noise, cond):
        assert x_in.dtype == c_noise.dtype == torch.float64
        sigma = (4 * c_noise).exp()[:, None]
        var = sigma**2 + self.sd**2
        x = x_in * var.sqrt()
        return (MIX(x, sigma[:, 0]) - self.sd**2 / var * x) / (sigma * self.sd / var.sqrt())


@pytest.mark.parametrize("wrapped", [False, True])
def test_float64_heun_equals_algorithm_1_in_float64(wrapped):
    """Sigma stays float64 from the schedule through the preconditioner to the network: the
    sampler equals Algorithm 1 to 1e-12 (a sigma rounded to float32 on the way differs by ~1e-8)."""
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    denoiser = EDMPrecond(_MixtureNet(0.5), sigma_data=0.5) if wrapped else MIX
    out = sample_teacher(denoiser, noise, karras_sigmas(18, SMIN, SMAX, RHO, dtype=torch.float64), None)
    reference = _algorithm1(lambda x, t: MIX(x, torch.full((x.shape[0],), t, dtype=torch.float64)),
                            noise, 18, SMIN, SMAX, RHO)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)


def test_teacher_keeps_float64_and_shapes():
    noise = torch.randn(4, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample_teacher(GAUSS, noise, karras_sigmas(8, SMIN, SMAX, RHO), None)
    assert out.shape == (4, 1, 1) and out.dtype == torch.float64


# ---------------------------------------------------------------- ping-pong sampler


def _pingpong_moments(steps):
    """Exact mean/std of ping-pong with the exact denoiser on N(MU, S^2): every map is linear."""
    sig = karras_sigmas(steps, SMIN, SMAX, RHO, dtype=torch.float64).tolist()
    m, v = 0.0, sig[0] ** 2
    for i in range(steps):
        k = S**2 / (S**2 + sig[i] ** 2)
        m, v = MU + k * (m - MU), k**2 * v
        if sig[i + 1] > 0:
            v += sig[i + 1] ** 2
    return m, math.sqrt(v)


def test_pingpong_40_steps_with_exact_denoiser():
    """Ping-pong with the posterior mean lands on the data mean and on the closed-form std of the
    linear recursion, which is well below the data std: the posterior mean is not a sampler."""
    counting = Counting(GAUSS)
    x = sample_pingpong(counting, _noise(8000, 1, 10), karras_sigmas(40, SMIN, SMAX, RHO), None,
                        generator=torch.Generator().manual_seed(0), budget=1.0)
    assert counting.calls == 40 and set(counting.sigma_shapes) == {(8000,)}
    assert all(kw == {"budget": 1.0} for kw in counting.kws)
    m, sd = _pingpong_moments(40)
    assert x.mean().item() == pytest.approx(MU, rel=0.02)
    assert x.std().item() == pytest.approx(sd, rel=0.03)
    assert sd < 0.75 * S


def test_pingpong_one_step_collapses_to_posterior_mean():
    noise = _noise(8000, 1, 11)
    x = sample_pingpong(GAUSS, noise, karras_sigmas(1, SMIN, SMAX, RHO), None)
    torch.testing.assert_close(x, GAUSS(noise * SMAX, torch.full((8000,), SMAX)))
    assert x.mean().item() == pytest.approx(MU, rel=0.02)
    assert x.std().item() < 0.02 * S
    assert x.std().item() == pytest.approx(_pingpong_moments(1)[1], rel=0.05)


def test_pingpong_uses_generator_and_tolerates_missing_trailing_zero():
    noise = _noise(32, 1, 12)
    sig = karras_sigmas(4, SMIN, SMAX, RHO)
    a = sample_pingpong(GAUSS, noise, sig, None, generator=torch.Generator().manual_seed(0))
    b = sample_pingpong(GAUSS, noise, sig[:-1], None, generator=torch.Generator().manual_seed(0))
    c = sample_pingpong(GAUSS, noise, sig, None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError):
        sample_pingpong(GAUSS, noise, torch.tensor([1.0, 2.0, 0.0]), None)


# ---------------------------------------------------------------- classifier-free guidance


class Cond:
    def __init__(self, label):
        self.label = label

    def null(self):
        return Cond("null")


MU_C, MU_U = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.2, 0.3]])
CONDITIONAL = GaussianMixtureDenoiser(torch.tensor([1.0]), MU_C, torch.tensor([0.5]))
UNCONDITIONAL = GaussianMixtureDenoiser(torch.tensor([1.0]), MU_U, torch.tensor([0.5]))


def _by_label(x, sigma, cond, **kw):
    return (CONDITIONAL if cond.label == "c" else UNCONDITIONAL)(x, sigma)


def test_cfg_scale_one_is_plain_with_one_call():
    counting = Counting(_by_label, as_tuple=True)
    cfg = ClassifierFreeGuidance(counting, scale=1.0)
    x, sigma = _noise(8, 2, 13), torch.full((8,), 0.8)
    torch.testing.assert_close(cfg(x, sigma, Cond("c")), CONDITIONAL(x, sigma))
    assert counting.calls == 1


@pytest.mark.parametrize("scale", [0.0, 2.5, 4.0])
def test_cfg_of_two_gaussians_is_the_exact_denoiser_of_the_extrapolated_gaussian(scale):
    """Equal-variance Gaussians: D_null + w (D_c - D_null) is exactly the posterior mean for
    N(mu_u + w (mu_c - mu_u), s^2)."""
    counting = Counting(_by_label, as_tuple=True)
    cfg = ClassifierFreeGuidance(counting, scale=scale)
    target = GaussianMixtureDenoiser(torch.tensor([1.0]), MU_U + scale * (MU_C - MU_U), torch.tensor([0.5]))
    x = 3 * _noise(64, 2, 14)
    sigma = torch.logspace(-2, 1.5, 64)
    torch.testing.assert_close(cfg(x, sigma, Cond("c")), target(x, sigma), rtol=1e-5, atol=1e-5)
    assert counting.calls == 2 and {c.label for c in counting.conds} == {"c", "null"}


def test_cfg_custom_null_and_sampling_lands_on_guided_gaussian():
    cfg = ClassifierFreeGuidance(_by_label, scale=3.0, null_cond=lambda c: Cond("u"))
    x = sample_teacher(cfg, _noise(4000, 2, 15), karras_sigmas(40, SMIN, SMAX, RHO), Cond("c"))
    expected = (MU_U + 3.0 * (MU_C - MU_U))[0]
    torch.testing.assert_close(x.mean(0), expected, rtol=0, atol=0.05)
    torch.testing.assert_close(x.std(0), torch.tensor([0.5, 0.5]), rtol=0.04, atol=0)


def test_cfg_rescale_gives_the_guided_estimate_the_conditional_spread():
    """Guidance rescale: at 1 each sample's guided estimate is scaled to the std of its conditional
    one (direction kept), at 0 it is plain CFG, in between the mix; outside [0, 1] is refused."""
    x, sigma = 3 * _noise(32, 2, 16), torch.logspace(-1, 1, 32)
    c, u = _by_label(x, sigma, Cond("c")), _by_label(x, sigma, Cond("null"))
    plain = u + 4.0 * (c - u)
    torch.testing.assert_close(ClassifierFreeGuidance(_by_label, 4.0, rescale=0.0)(x, sigma, Cond("c")), plain)
    full = ClassifierFreeGuidance(_by_label, 4.0, rescale=1.0)(x, sigma, Cond("c"))
    torch.testing.assert_close(full.std(dim=1), c.std(dim=1))
    torch.testing.assert_close(full / full.norm(dim=1, keepdim=True), plain / plain.norm(dim=1, keepdim=True))
    assert (plain.std(dim=1) > 1.5 * c.std(dim=1)).float().mean() > 0.5  # the extrapolation had spread it
    half = ClassifierFreeGuidance(_by_label, 4.0, rescale=0.5)(x, sigma, Cond("c"))
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)
    with pytest.raises(ValueError, match=r"guidance rescale must be in \[0, 1\], got 1.5"):
        ClassifierFreeGuidance(_by_label, 4.0, rescale=1.5)


def test_the_real_scores_rescale_is_the_distill_configs_and_the_samplers_is_apart():
    from presto_ray.config import ConfigError, load_config
    from presto_ray.distill.cd import ConsistencyDistillation
    from presto_ray.distill.presto_s import PrestoS

    cfg = load_config("tiny", ["distill.cfg_rescale=0.5"])
    assert cfg.sampler.cfg_rescale == 1.0  # tiny's sampler
    assert PrestoS.from_config(cfg).cfg_rescale == 0.5 and PrestoS.dmd2_from_config(cfg).cfg_rescale == 0.5
    assert ConsistencyDistillation.from_config(cfg).cfg_rescale == 0.5
    assert PrestoS.from_config(load_config("tiny")).cfg_rescale == 0.0  # plain CFG unless asked
    for bad in ("distill.cfg_rescale=2", "sampler.cfg_rescale=-0.1"):
        with pytest.raises(ConfigError, match="cfg_rescale must be in"):
            load_config("tiny", [bad])


def _gaussian_flow_map(x, sigma, cond=None, **kw):
    """The exact probability-flow ODE map from noise level sigma to 0 for N(MU, S^2) data:
    x0 = MU + (x - MU) * S / sqrt(S^2 + sigma^2). This is what a perfect few-step student is."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)
    return MU + (x - MU) * S / torch.sqrt(S**2 + sigma**2)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_pingpong_with_exact_flow_map_lands_on_data(steps):
    """Ping-pong with an exact consistency (flow-map) generator reproduces the data law at any
    step count: re-noising a data sample to sigma gives the sigma-marginal again."""
    x = sample_pingpong(_gaussian_flow_map, _noise(8000, 1, 20 + steps), karras_sigmas(steps, SMIN, SMAX, RHO),
                        None, generator=torch.Generator().manual_seed(steps))
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert x.std().item() == pytest.approx(S, rel=0.03)
