"""Distribution metrics with known answers: Frechet distance in closed form, FAD against an
independent scipy computation, FAD-infinity's bias removal, MMD, and precision/recall/density/
coverage on constructed point sets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from presto_ray.eval.metrics import fad, fad_inf, frechet_distance, gaussian_stats, mmd, prdc


def test_frechet_distance_closed_forms():
    mu = np.array([1.0, -2.0, 0.5])
    a, b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    assert frechet_distance(mu, a, mu, a) == pytest.approx(0.0, abs=1e-10)
    # diagonal covariances: sum (sqrt(a_i) - sqrt(b_i))^2 = 1 + 1 + 0; plus the mean shift
    shift = np.array([3.0, 0.0, -4.0])
    assert frechet_distance(mu, a, mu + shift, b) == pytest.approx(25.0 + 2.0)
    # rotation-invariant: the same pair rotated gives the same distance
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    assert frechet_distance(q @ mu, q @ a @ q.T, q @ (mu + shift), q @ b @ q.T) == pytest.approx(27.0)
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(mu, a, mu[:2], a[:2, :2])


def test_fad_matches_an_independent_scipy_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
    mu1, c1, mu2, c2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)
    assert fad(x, y) == pytest.approx(expected, rel=1e-6)
    assert fad(x, x) == pytest.approx(0.0, abs=1e-8)
    # a pure shift of one set adds exactly its squared norm
    assert fad(x, x + 2.0) == pytest.approx(16 * 4.0, rel=1e-9)


def test_fad_inf_removes_the_small_sample_bias():
    rng = np.random.default_rng(2)
    reference = gaussian_stats(rng.normal(size=(20000, 8)))
    same = rng.normal(size=(2000, 8))  # same distribution: finite-sample FAD > 0, FAD-inf ~ 0
    value, slope = fad_inf(same, reference, min_n=200, seed=0)
    small = frechet_distance(*gaussian_stats(same[:200]), *reference)  # biased upward at small n
    assert slope > 0 and abs(value) < 0.03 and small > 5 * abs(value)
    shifted = same + 0.5  # true FAD = 8 * 0.25 = 2
    value, _ = fad_inf(shifted, reference, min_n=200, seed=0)
    assert value == pytest.approx(2.0, abs=0.1)


def test_mmd_zero_for_one_distribution_and_grows_with_the_difference():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
    near, far = mmd(x, y, bandwidth=1.0), mmd(x, y + 1.0, bandwidth=1.0)
    assert abs(near) < 5.0 and far > 50 * max(abs(near), 1.0)  # unbiased: ~0 for equal distributions
    assert mmd(x, y + 2.0, bandwidth=1.0) > far
    # scale is a plain factor
    assert mmd(x, y + 1.0, bandwidth=1.0, scale=1.0) == pytest.approx(far / 1000.0)
    with pytest.raises(ValueError, match="NaN"):
        mmd(np.full((3, 4), np.nan), y)


def test_prdc_on_constructed_sets():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(1000, 2))
    same = prdc(real, rng.normal(size=(1000, 2)), k=5)
    assert same["precision"] > 0.9 and same["recall"] > 0.9 and same["coverage"] > 0.9
    assert 0.8 < same["density"] < 1.2
    # fakes on half of the real support (x > 0): high precision, coverage about one half
    half = rng.normal(size=(1000, 2))
    half[:, 0] = np.abs(half[:, 0])
    part = prdc(real, half, k=5)
    assert part["precision"] > 0.9 and 0.4 < part["coverage"] < 0.62 and part["recall"] < 0.7
    # fakes far away: nothing covered, nothing precise
    far = prdc(real, rng.normal(size=(1000, 2)) + 50.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # all fakes collapsed onto one real point: precise but no diversity
    collapsed = prdc(real, np.repeat(real[:1], 100, axis=0) + 1e-9 * rng.normal(size=(100, 2)), k=5)
    assert collapsed["precision"] == 1.0 and collapsed["coverage"] < 0.02 and collapsed["recall"] < 0.02
    with pytest.raises(ValueError, match="more than k=5"):
        prdc(real[:5], real, k=5)
