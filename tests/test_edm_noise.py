"""Noise-level distributions: KS tests against their exact CDFs, shifting, and the NoiseConfig
factory."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import kstest

from presto_ray.config import EDMConfig, NoiseConfig
from presto_ray.edm import KarrasContinuous, LogNormal, Shifted, UniformLog, make_noise

N = 5000


def _dists():
    return {
        "lognormal": LogNormal(-1.2, 1.2),
        "karras": KarrasContinuous(0.002, 80.0, 7.0),
        "uniform_log": UniformLog(0.002, 80.0),
        "shifted": Shifted(LogNormal(-1.2, 1.2), 1.0),
    }


def _ks_p(samples: torch.Tensor, dist) -> float:
    return kstest(samples.double().numpy(), lambda s: dist.cdf(torch.from_numpy(s)).numpy()).pvalue


@pytest.mark.parametrize("name", ["lognormal", "karras", "uniform_log", "shifted"])
def test_samples_match_own_cdf_and_not_others(name):
    dists = _dists()
    dist = dists[name]
    g = torch.Generator().manual_seed(123)
    s = dist.sample(N, generator=g)
    assert s.shape == (N,) and s.dtype == torch.float32 and (s > 0).all()
    assert _ks_p(s, dist) > 0.01
    for other_name, other in dists.items():
        if other_name != name:
            assert _ks_p(s, other) < 1e-6, f"{name} samples look like {other_name}"


def test_karras_and_uniform_log_bounds_and_cdf_ends():
    g = torch.Generator().manual_seed(0)
    for dist in (KarrasContinuous(0.002, 80.0, 7.0), UniformLog(0.002, 80.0)):
        s = dist.sample(N, generator=g)
        assert s.min() >= 0.002 * (1 - 1e-6) and s.max() <= 80.0 * (1 + 1e-6)
        torch.testing.assert_close(dist.cdf(torch.tensor([0.001, 0.002, 80.0, 100.0])),
                                   torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64))


def test_karras_cdf_matches_its_schedule_midpoint():
    dist = KarrasContinuous(0.002, 80.0, 7.0)
    mid = (0.5 * (0.002 ** (1 / 7) + 80 ** (1 / 7))) ** 7  # u = 0.5
    assert dist.cdf(torch.tensor([mid])).item() == pytest.approx(0.5)


def test_shifted_lognormal_is_lognormal_with_shifted_mean():
    shifted = Shifted(LogNormal(-1.2, 1.2), 0.7)
    ref = LogNormal(-0.5, 1.2)
    grid = torch.logspace(-3, 2, 30, dtype=torch.float64)
    torch.testing.assert_close(shifted.cdf(grid), ref.cdf(grid))
    g = torch.Generator().manual_seed(5)
    s = shifted.sample(N, generator=g)
    assert _ks_p(s, ref) > 0.01
    assert s.log().mean().item() == pytest.approx(-0.5, abs=0.06)
    g = torch.Generator().manual_seed(5)
    base = LogNormal(-1.2, 1.2).sample(N, generator=g)
    torch.testing.assert_close(s, base * math.exp(0.7))


def test_sampling_is_reproducible_with_a_generator():
    for dist in _dists().values():
        a = dist.sample(10, generator=torch.Generator().manual_seed(9))
        b = dist.sample(10, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a, b)


def test_invalid_parameters_raise():
    with pytest.raises(ValueError):
        LogNormal(0.0, 0.0)
    with pytest.raises(ValueError):
        KarrasContinuous(1.0, 0.5, 7.0)
    with pytest.raises(ValueError):
        UniformLog(0.0, 1.0)


def test_make_noise_mapping():
    edm = EDMConfig(p_mean=-1.0, p_std=1.5, sigma_min=0.01, sigma_max=50.0, rho=5.0)
    train = make_noise(NoiseConfig(kind="train"), edm)
    assert isinstance(train, LogNormal) and (train.p_mean, train.p_std) == (-1.0, 1.5)
    train2 = make_noise(NoiseConfig(kind="train", p_mean=0.3), edm)
    assert isinstance(train2, LogNormal) and (train2.p_mean, train2.p_std) == (0.3, 1.5)
    inf = make_noise(NoiseConfig(kind="inference"), edm)
    assert isinstance(inf, KarrasContinuous)
    assert (inf.sigma_min, inf.sigma_max, inf.rho) == (0.01, 50.0, 5.0)
    ln = make_noise(NoiseConfig(kind="lognormal", p_mean=0.5, p_std=0.8), edm)
    assert isinstance(ln, LogNormal) and (ln.p_mean, ln.p_std) == (0.5, 0.8)
    ul = make_noise(NoiseConfig(kind="uniform_log"), edm)
    assert isinstance(ul, UniformLog) and (ul.sigma_min, ul.sigma_max) == (0.01, 50.0)
    sh = make_noise(NoiseConfig(kind="inference", shift=0.5), edm)
    assert isinstance(sh, Shifted) and isinstance(sh.base, KarrasContinuous) and sh.shift == 0.5
    assert "Shifted(KarrasContinuous(sigma_min=0.01, sigma_max=50.0, rho=5.0), shift=0.5)" == repr(sh)
    assert repr(train) == "LogNormal(p_mean=-1.0, p_std=1.5)"
    assert repr(ul) == "UniformLog(sigma_min=0.01, sigma_max=50.0)"


def test_make_noise_errors_name_the_field():
    edm = EDMConfig()
    with pytest.raises(ValueError, match="p_mean"):
        make_noise(NoiseConfig(kind="lognormal", p_std=1.0), edm)
    with pytest.raises(ValueError, match="p_std"):
        make_noise(NoiseConfig(kind="lognormal", p_mean=0.0), edm)
    with pytest.raises(ValueError, match="p_mean"):
        make_noise(NoiseConfig(kind="inference", p_mean=0.0), edm)
