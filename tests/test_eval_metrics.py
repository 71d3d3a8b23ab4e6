"""Distribution metrics with known answers: Frechet distance in closed form, FAD against an
independent scipy computation, FAD-infinity's bias removal, MMD, and precision/recall/density/
coverage on constructed point sets; KAD (unbiased MMD^2, median bandwidth) against a plain loop,
its unbiasedness, its bootstrap intervals' coverage of a closed-form truth (rows and clips), the
FAD n >= 2D rule and disjoint reference splits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from scipy.spatial.distance import cdist, pdist

from presto_ray.eval.metrics import (
    FAD_MIN_RATIO,
    _KernelStats,
    bootstrap_ci,
    fad,
    fad_checked,
    fad_inf,
    fad_resolvable,
    frechet_distance,
    gaussian_stats,
    kad,
    kad_ci,
    median_bandwidth,
    mmd,
    floor_split,
    prdc,
    prdc_ci,
)


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


# ---------------------------------------------------------------------------------------------
# KAD


def _loop_unbiased_mmd2(x, y, h):
    """Unbiased MMD^2 by explicit loops over pairs (independent of the vectorised code)."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _gauss_mean_kernel(mu, var, h):
    """E exp(-||Z||^2 / (2 h^2)) for Z ~ N(mu, diag(var)): det(I + C/h^2)^(-1/2) exp(-mu'(C + h^2)^-1 mu / 2)."""
    mu, var = np.asarray(mu, float), np.asarray(var, float)
    return float(np.prod(1 + var / h**2) ** -0.5 * np.exp(-0.5 * np.sum(mu**2 / (var + h**2))))


def _gauss_mmd2(mu, var_x, var_y, h, dim, scale=1000.0):
    """Closed-form MMD^2 (RBF bandwidth h) of N(0, var_x I) vs N(mu, var_y I) in dim dimensions."""
    zero = np.zeros(dim)
    within = _gauss_mean_kernel(zero, np.full(dim, 2 * var_x), h) + _gauss_mean_kernel(zero, np.full(dim, 2 * var_y), h)
    return scale * (within - 2 * _gauss_mean_kernel(mu, np.full(dim, var_x + var_y), h))


def test_kad_matches_a_plain_loop_with_the_median_bandwidth():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.3
    h = float(np.median(pdist(y)))
    assert median_bandwidth(y) == pytest.approx(h, abs=1e-12)
    expected = _loop_unbiased_mmd2(x, y, h)
    assert abs(kad(x, y, scale=1.0) - expected) < 1e-10
    assert abs(kad(x, y) - 1000.0 * expected) < 1e-10
    assert abs(kad(x, y, bandwidth=2.5, scale=1.0) - _loop_unbiased_mmd2(x, y, 2.5)) < 1e-10
    # the same kernel as mmd: with mmd's bandwidth, the same statistic
    assert kad(x, y, bandwidth=10.0) == pytest.approx(mmd(x, y, bandwidth=10.0), rel=1e-12, abs=1e-12)
    # median over pairs i < j, not counting a row with itself
    assert median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == 2.0  # distances 1, 3, 2


def test_kad_is_unbiased_where_the_v_statistic_and_fad_are_not():
    rng = np.random.default_rng(11)
    # 200-d Gaussians at n = 32 (far fewer vectors than dimensions)
    values, v_stats, fads = [], [], []
    for _ in range(300):
        x, y = rng.normal(size=(32, 200)), rng.normal(size=(32, 200))
        values.append(kad(x, y))
        h = median_bandwidth(y)
        kxx, kyy, kxy = (np.exp(-cdist(p, q, "sqeuclidean") / (2 * h * h)) for p, q in ((x, x), (y, y), (x, y)))
        v_stats.append(1000.0 * (kxx.mean() + kyy.mean() - 2 * kxy.mean()))  # biased: diagonals kept
        if len(fads) < 20:
            fads.append(fad(x, y))
    values, v_stats = np.array(values), np.array(v_stats)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean()) < 3 * se and (values < 0).mean() > 0.3  # ~0 on average, often negative
    assert v_stats.mean() > 20.0 and v_stats.mean() > 50 * se  # V-statistic: + about 2 (1 - mean k) / n
    assert min(fads) > 100.0  # FAD of two samples of one distribution, n << D: large
    # a 16-d non-Gaussian (exponential) pair at n = 1024: still ~0 on average
    big = np.array([kad(rng.exponential(size=(1024, 16)), rng.exponential(size=(1024, 16))) for _ in range(12)])
    assert abs(big.mean()) < 4 * big.std(ddof=1) / np.sqrt(big.size)
    assert abs(big.mean()) < 0.1


def test_kad_grows_with_a_mean_shift():
    rng = np.random.default_rng(12)
    reference, generated = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    values = [kad(generated + shift, reference) for shift in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)]
    assert abs(values[0]) < 2.0 and values[1] > 2.0
    assert all(a < b for a, b in zip(values, values[1:]))
    # the bandwidth comes from the reference only: shifting the generated set leaves it fixed
    assert kad(generated + 1.0, reference) == pytest.approx(kad(generated + 1.0, reference,
                                                                bandwidth=median_bandwidth(reference)))


def test_kad_ci_covers_the_closed_form_value_at_the_nominal_rate():
    dim, h, mu = 2, 1.0, np.array([0.5, 0.0])
    truth = _gauss_mmd2(mu, 1.0, 1.0, h, dim)
    # the closed form itself, against Monte Carlo on independent pairs (x, x2): with y = x2 + mu the
    # two within terms agree, so MMD^2 = 2 E[k(x, x2) - k(x, x2 + mu)] (low-variance difference)
    rng = np.random.default_rng(13)
    x, x2 = rng.normal(size=(800_000, dim)), rng.normal(size=(800_000, dim))
    def k(a, b):
        return np.exp(-((a - b) ** 2).sum(1) / (2 * h * h))
    diff = 2000 * (k(x, x2) - k(x, x2 + mu))
    assert abs(diff.mean() - truth) < 4 * diff.std() / np.sqrt(diff.size) and diff.std() / np.sqrt(diff.size) < 0.5
    covered, estimates, n = 0, [], 60
    for rep in range(200):
        x, y = rng.normal(size=(n, dim)), rng.normal(size=(n, dim)) + mu
        lo, hi = kad_ci(x, y, bandwidth=h, seed=rep)
        estimates.append(kad(x, y, bandwidth=h))
        assert lo <= estimates[-1] <= hi
        covered += lo <= truth <= hi
    assert 0.88 <= covered / 200 <= 1.0  # nominal 0.95 (measured 0.965 with this seed)
    assert abs(np.mean(estimates) - truth) < 3 * np.std(estimates) / np.sqrt(200)  # unbiased


def test_kad_ci_resamples_leave_out_copies_of_a_row():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2)) + 0.5
    stats = _KernelStats(x, y, 1.0, None, None)
    cx, cy = rng.multinomial(6, np.full(6, 1 / 6), size=3), rng.multinomial(5, np.full(5, 1 / 5), size=3)
    for b in range(3):
        ix, iy = np.repeat(np.arange(6), cx[b]), np.repeat(np.arange(5), cy[b])
        def within(p, idx):  # pairs of positions whose original rows differ
            pairs = [(i, j) for i in idx for j in idx if i != j]  # noqa: B023
            return np.mean([np.exp(-np.sum((p[i] - p[j]) ** 2) / 2) for i, j in pairs])
        cross = np.mean([np.exp(-np.sum((x[i] - y[j]) ** 2) / 2) for i in ix for j in iy])
        expected = within(x, ix) + within(y, iy) - 2 * cross
        assert stats.mmd2(cx[b:b + 1].astype(float), cy[b:b + 1].astype(float))[0] == pytest.approx(expected, rel=1e-12)
    # a naive bootstrap of rows pairs copies (k = 1) and drifts upward by about (1 - mean k) (1/n + 1/m);
    # the resamples of kad_ci stay centred on the estimate
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    stats = _KernelStats(x, y, 1.0, None, None)
    estimate = kad(x, y, bandwidth=1.0)
    cx = rng.multinomial(40, np.full(40, 1 / 40), size=400).astype(float)
    cy = rng.multinomial(40, np.full(40, 1 / 40), size=400).astype(float)
    fixed = 1000 * stats.mmd2(cx, cy)
    naive = np.array([kad(x[np.repeat(np.arange(40), a.astype(int))], y[np.repeat(np.arange(40), b.astype(int))],
                          bandwidth=1.0) for a, b in zip(cx, cy)])
    mean_k = [(k.sum() - 40) / (40 * 39) for k in (np.exp(-cdist(p, p, "sqeuclidean") / 2) for p in (x, y))]
    drift = 1000 * sum(1 - mk for mk in mean_k) / 40
    assert abs(fixed.mean() - estimate) < 0.15 * drift
    assert (naive - fixed).mean() == pytest.approx(drift, rel=0.15)


def test_kad_ci_is_the_bootstrap_of_rows_that_skips_pairs_of_one_original_clip():
    """End to end against bootstrap_ci (same seed, same resamples): each row carries its original
    clip id as an extra column, and the metric leaves out within-set pairs with equal ids."""
    rng = np.random.default_rng(19)
    x, y = rng.normal(size=(36, 3)), rng.normal(size=(25, 3)) + 0.4
    gen_groups = np.repeat(np.arange(12) * 7, 3)  # 12 clips of 3 rows, arbitrary ids
    h = median_bandwidth(y)
    def tagged(p, ids):
        return np.column_stack([p, ids])
    def skip_same_clip(a, b):
        (pa, ia), (pb, ib) = (a[:, :-1], a[:, -1]), (b[:, :-1], b[:, -1])
        def k(p, q):
            return np.exp(-cdist(p, q, "sqeuclidean") / (2 * h * h))
        within = [k(p, p)[i[:, None] != i[None, :]].mean() for p, i in ((pa, ia), (pb, ib))]
        return 1000 * (within[0] + within[1] - 2 * k(pa, pb).mean())
    expected = bootstrap_ci(skip_same_clip, tagged(x, gen_groups), tagged(y, np.arange(25)), gen_groups=gen_groups,
                            n_boot=150, seed=5)
    assert kad_ci(x, y, gen_groups=gen_groups, n_boot=150, seed=5) == pytest.approx(expected, rel=1e-9)
    assert skip_same_clip(tagged(x, gen_groups), tagged(y, np.arange(25))) == pytest.approx(
        kad(x, y, gen_groups=gen_groups), rel=1e-9)


def _clip_frames(rng, clips, frames, dim, tau, shift=0.0):
    """clips x frames rows: a clip centre ~ N(0, I) plus per-frame noise tau N(0, I) (frames of one
    clip correlated); marginally every row is N(shift, (1 + tau^2) I)."""
    centres = rng.normal(size=(clips, 1, dim))
    return (centres + tau * rng.normal(size=(clips, frames, dim)) + shift).reshape(clips * frames, dim)


def test_grouped_bootstrap_by_clip():
    rng = np.random.default_rng(15)
    # clips of 5 identical rows: the grouped statistic and interval are those of one row per clip
    unique, reference = rng.normal(size=(30, 3)), rng.normal(size=(40, 3)) + 0.3
    repeated, groups = np.repeat(unique, 5, axis=0), np.repeat(np.arange(30), 5)
    assert kad(repeated, reference, gen_groups=groups) == pytest.approx(kad(unique, reference), rel=1e-12)
    grouped = kad_ci(repeated, reference, gen_groups=groups, seed=3)
    assert grouped == pytest.approx(kad_ci(unique, reference, seed=3), rel=1e-10)
    rows = kad_ci(repeated, reference, seed=3)  # treats 150 copies as 150 independent rows
    assert grouped[1] - grouped[0] > 1.5 * (rows[1] - rows[0])
    # generic bootstrap_ci resamples clips the same way
    def mean_gap(a, b):
        return float(a.mean() - b.mean())
    assert bootstrap_ci(mean_gap, repeated, reference, gen_groups=groups, seed=4) == pytest.approx(
        bootstrap_ci(mean_gap, unique, reference, seed=4), rel=1e-10)
    # correlated frames: by clip, the interval covers the true value (of the frames' marginal
    # distributions) at about the nominal rate and kad with groups is unbiased; by row, both fail
    dim, h, tau, mu = 2, 1.0, 0.5, np.array([0.5, 0.0])
    truth = _gauss_mmd2(mu, 1 + tau**2, 1 + tau**2, h, dim)
    groups = np.repeat(np.arange(30), 5)
    by_clip = by_row = 0
    clip_values, row_values, widths = [], [], []
    for rep in range(100):
        x, y = _clip_frames(rng, 30, 5, dim, tau), _clip_frames(rng, 30, 5, dim, tau, mu)
        lo, hi = kad_ci(x, y, bandwidth=h, gen_groups=groups, ref_groups=groups, seed=rep)
        lo_r, hi_r = kad_ci(x, y, bandwidth=h, seed=rep)
        by_clip += lo <= truth <= hi
        by_row += lo_r <= truth <= hi_r
        widths.append((hi - lo) / (hi_r - lo_r))
        clip_values.append(kad(x, y, bandwidth=h, gen_groups=groups, ref_groups=groups))
        row_values.append(kad(x, y, bandwidth=h))
    assert 0.88 <= by_clip / 100 <= 1.0 and by_row / 100 < 0.85  # measured: 0.98 and 0.67 (seed 15)
    assert np.median(widths) > 1.5
    se = np.std(clip_values) / np.sqrt(100)
    assert abs(np.mean(clip_values) - truth) < 3 * se and np.mean(row_values) > truth + 5 * se


def test_bootstrap_ci_of_a_mean_difference_matches_the_normal_interval():
    rng = np.random.default_rng(16)
    x, y = rng.normal(size=(400, 1)), rng.normal(size=(300, 1)) + 1.0
    lo, hi = bootstrap_ci(lambda a, b: float(a.mean() - b.mean()), x, y, n_boot=1000, seed=0)
    centre = float(x.mean() - y.mean())
    half = 1.96 * np.sqrt(x.var() / 400 + y.var() / 300)
    assert lo == pytest.approx(centre - half, abs=0.2 * half) and hi == pytest.approx(centre + half, abs=0.2 * half)
    # fad as the metric (duplicated rows are harmless to a mean and covariance)
    lo, hi = bootstrap_ci(fad, x, y, n_boot=200, seed=0)
    assert lo < fad(x, y) < hi and lo > 0.5


def test_fad_only_with_enough_vectors_per_dimension():
    assert FAD_MIN_RATIO == 2
    assert fad_resolvable(8, 4) and fad_resolvable(9, 4) and not fad_resolvable(7, 4)
    assert fad_resolvable(1024, 512) and not fad_resolvable(1023, 512)
    rng = np.random.default_rng(17)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 4)) + 1.0
    assert fad_checked(x, y) == pytest.approx(fad(x, y))
    assert fad_checked(x[:7], y) is None and fad_checked(x, y[:7]) is None
    assert fad_checked(rng.normal(size=(100, 4)), y) == pytest.approx(fad(rng.normal(size=(100, 4)), y), rel=1.0)
    with pytest.raises(ValueError, match="widths differ"):
        fad_checked(x, y[:, :3])


def test_floor_split_takes_a_floor_sample_and_leaves_the_rest_as_reference():
    floor, ref = floor_split(100, 30, seed=1)
    assert floor.size == 30 and ref.size == 70 and len(np.intersect1d(floor, ref)) == 0
    assert len(np.union1d(floor, ref)) == 100 and (np.diff(floor) > 0).all()
    floor, ref = floor_split(100, 80, seed=1)  # the floor sample is at most half: the reference never smaller
    assert floor.size == ref.size == 50
    assert all((p == q).all() for p, q in zip(floor_split(100, 80, seed=1), (floor, ref)))  # seeded
    assert not (floor_split(100, 80, seed=2)[0] == floor).all()
    with pytest.raises(ValueError, match=r"n=5, m=3"):
        floor_split(3, 5)


def test_prdc_intervals_keep_the_full_sets_radii():
    rng = np.random.default_rng(21)
    real, fake = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    values, intervals = prdc_ci(real, fake, k=5, seed=3)
    assert values == prdc(real, fake, k=5)
    for name, (lo, hi) in intervals.items():
        assert lo <= values[name] <= hi and hi - lo > 0.01, name
    # a plain bootstrap of both sets (radii recomputed) keeps fewer distinct points and finds drawn
    # copies at distance 0: its whole interval falls below the full-sample coverage (0.73-0.94 vs 0.99)
    naive = bootstrap_ci(lambda r, f: prdc(r, f, k=5)["coverage"], real, fake, seed=3)
    assert naive[1] < values["coverage"] <= intervals["coverage"][1]
    # the interval of a mean of 0/1 indicators over n points is about the binomial one
    p = values["coverage"]
    assert intervals["coverage"][1] - intervals["coverage"][0] == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 150),
                                                                               rel=0.35)
    # clips of 4 identical frames: resampling clips (not frames) widens the interval
    clips_r, clips_f = np.repeat(real[:40], 4, axis=0), np.repeat(fake[:40], 4, axis=0)
    groups = np.repeat(np.arange(40), 4)
    _, flat = prdc_ci(clips_r, clips_f, k=5, seed=3)
    _, grouped = prdc_ci(clips_r, clips_f, k=5, real_groups=groups, fake_groups=groups, seed=3)
    assert grouped["coverage"][1] - grouped["coverage"][0] > 1.5 * (flat["coverage"][1] - flat["coverage"][0])


def test_kernel_metric_errors():
    rng = np.random.default_rng(18)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="widths differ"):
        kad(x, y[:, :2])
    with pytest.raises(ValueError, match="widths differ"):
        kad_ci(x, y[:, :2])
    with pytest.raises(ValueError, match="widths differ"):
        mmd(x, y[:, :2])
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        kad(x[:1], y)
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        kad_ci(x, y[:1])
    with pytest.raises(ValueError, match="at least 2 reference rows"):
        median_bandwidth(y[:1])
    with pytest.raises(ValueError, match="is 0"):
        median_bandwidth(np.ones((5, 3)))
    with pytest.raises(ValueError, match="is 0"):
        kad(x, np.ones((5, 3)))
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        kad(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match=r"gen_groups must have shape \(10,\)"):
        kad_ci(x, y, gen_groups=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="2 distinct clips"):
        kad(x, y, ref_groups=np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="n_boot"):
        kad_ci(x, y, n_boot=1)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(fad, x, y, level=1.0)
    with pytest.raises(ValueError, match="must be \\[N, D\\]"):
        kad(x[0], y)


def test_not_resolved_worse_compares_low_ends_with_the_reference_high_end():
    from presto_ray.eval.metrics import not_resolved_worse

    intervals = [(10.0, 14.0), (13.9, 20.0), (14.0, 15.0), (14.1, 16.0)]
    assert not_resolved_worse(intervals, 0) == [True, True, True, False]
    assert not_resolved_worse(intervals, 0, margin=0.2) == [True, True, True, True]
    assert not_resolved_worse(intervals, 2) == [True, True, True, True]
    with pytest.raises(IndexError, match="reference index 4"):
        not_resolved_worse(intervals, 4)
