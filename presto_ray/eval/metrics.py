"""Distribution metrics over embeddings (METHOD.md section 6): Frechet distance / FAD and
FAD-infinity as fadtk defines them, CMMD-style MMD, KAD (unbiased MMD^2 with the median-distance
bandwidth, arXiv 2502.15602), and density / recall / coverage (Naeem et al. 2020); FAD only where
n >= 2 D (``fad_checked``), percentile bootstrap intervals over clips (``bootstrap_ci``, and
``kad_ci`` for the kernel metrics, ``prdc_ci`` for the k-NN ones) and the reference split for the
noise floor (``floor_split``). All take embeddings as arrays [N, D] (numpy or torch) and compute in float64.
"""

from __future__ import annotations

import numpy as np


def _array(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or Inf")
    return x


def gaussian_stats(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of embeddings [N, D] (N >= 2), float64."""
    x = _array(embeddings)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix by eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    tr (cov1 cov2)^(1/2) = tr (s1 cov2 s1)^(1/2) with s1 = cov1^(1/2): both square roots are of
    symmetric PSD matrices, taken by eigendecomposition (no complex parts, no sqrtm iteration).
    If that is not finite, eps * I is added to both covariances (fadtk's fallback)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes disagree: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}")

    def trace_sqrt(c1, c2) -> float:
        s1 = _sqrt_psd(c1)
        w = np.linalg.eigvalsh((s1 @ c2 @ s1 + (s1 @ c2 @ s1).T) / 2)
        return float(np.sqrt(np.clip(w, 0, None)).sum())

    tr = trace_sqrt(cov1, cov2)
    if not np.isfinite(tr):
        offset = eps * np.eye(cov1.shape[0])
        cov1, cov2 = cov1 + offset, cov2 + offset
        tr = trace_sqrt(cov1, cov2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr)


def fad(embeddings_a, embeddings_b) -> float:
    """Frechet Audio Distance between two sets of (frame) embeddings [N, D] and [M, D]."""
    return frechet_distance(*gaussian_stats(embeddings_a), *gaussian_stats(embeddings_b))


def fad_inf(embeddings, reference_stats: tuple[np.ndarray, np.ndarray], *, points: int = 25,
            min_n: int | None = None, seed: int = 0) -> tuple[float, float]:
    """FAD-infinity (Chong & Forsyth 2020, as fadtk computes it): the FAD of random subsets of
    ``embeddings`` at ``points`` sizes from ``min_n`` (default N/4) to N, against
    ``reference_stats`` (mean, cov), regressed linearly on 1/n. Returns (intercept, slope): the
    intercept is the bias-free FAD at n -> infinity."""
    x = _array(embeddings)
    n_max = x.shape[0]
    lo = min_n if min_n is not None else max(2, n_max // 4)
    if not 2 <= lo <= n_max:
        raise ValueError(f"min_n={lo} must be in [2, N={n_max}]")
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.linspace(lo, n_max, points).astype(int))
    values = [frechet_distance(*gaussian_stats(x[rng.choice(n_max, n, replace=False)]), *reference_stats)
              for n in sizes]
    slope, intercept = np.polyfit(1.0 / sizes, values, 1)
    return float(intercept), float(slope)


def _sq_distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [N, M] between rows of p [N, D] and q [M, D], clipped at 0."""
    return np.clip((p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2 * p @ q.T, 0, None)


def _distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sqrt(_sq_distances(p, q))


def _rbf_kernel(p: np.ndarray, q: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian RBF kernel matrix [N, M]: k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2)).
    The one kernel implementation behind ``mmd``, ``kad`` and ``kad_ci``."""
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be positive and finite, got {bandwidth}")
    gamma = 1.0 / (2 * bandwidth**2)
    return np.exp(-gamma * _sq_distances(p, q))


def _kernel_pair(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float64 [N, D] and [M, D] with equal D and N, M >= 2, else ValueError."""
    a, b = _array(x), _array(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 embeddings per set, got {a.shape[0]} and {b.shape[0]}")
    return a, b


def mmd(x, y, *, bandwidth: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD-style maximum mean discrepancy with a Gaussian RBF kernel
    k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2)), unbiased (diagonals excluded), times ``scale``.
    x [N, D], y [M, D], N, M >= 2. For its bootstrap interval use ``kad_ci(x, y, bandwidth=...)``
    (the same statistic; a row-resampling bootstrap would count duplicated rows as pairs)."""
    a, b = _kernel_pair(x, y, "MMD")
    kxx, kyy, kxy = _rbf_kernel(a, a, bandwidth), _rbf_kernel(b, b, bandwidth), _rbf_kernel(a, b, bandwidth)
    n, m = a.shape[0], b.shape[0]
    value = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
             - 2 * kxy.mean())
    return float(scale * value)


# ---------------------------------------------------------------------------------------------
# Kernel Audio Distance (KAD, arXiv 2502.15602): unbiased MMD^2, RBF kernel, median bandwidth.


def median_bandwidth(reference) -> float:
    """Median of the Euclidean distances between all pairs of distinct rows (i < j) of
    reference [M, D], M >= 2. ValueError if it is 0 (e.g. all rows identical)."""
    r = _array(reference)
    m = r.shape[0]
    if m < 2:
        raise ValueError(f"median bandwidth needs at least 2 reference rows, got {m}")
    h = float(np.median(_distances(r, r)[np.triu_indices(m, 1)]))
    if not h > 0:
        raise ValueError("median pairwise distance of the reference set is 0 (rows identical?)")
    return h


def _clip_index(groups, n_rows: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Clip structure of a set of n_rows rows: (clip id 0..G-1 per row [n_rows], rows per clip [G]).
    groups None: every row is its own clip. Needs G >= 2."""
    if groups is None:
        return np.arange(n_rows), np.ones(n_rows, dtype=np.int64)
    g = np.asarray(groups)
    if g.shape != (n_rows,):
        raise ValueError(f"{name} must have shape ({n_rows},) (one clip id per row), got {g.shape}")
    _, inverse, sizes = np.unique(g, return_inverse=True, return_counts=True)
    if sizes.size < 2:
        raise ValueError(f"{name}: need at least 2 distinct clips, got {sizes.size}")
    return inverse.reshape(-1), sizes


def _sum_by_clip(k: np.ndarray, clip: np.ndarray, axis: int) -> np.ndarray:
    """Sum k along ``axis`` within each clip: clip [k.shape[axis]] holds ids 0..G-1 (all present);
    the result has G entries along ``axis``, in clip-id order."""
    if (clip == np.arange(clip.size)).all():
        return k
    order = np.argsort(clip, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(clip[order]) != 0])
    return np.add.reduceat(np.take(k, order, axis=axis), starts, axis=axis)


def _clip_sums(k: np.ndarray, row_clip: np.ndarray, col_clip: np.ndarray) -> np.ndarray:
    """Kernel sums per pair of clips: S[g, h] = sum of k[i, j] over rows i of clip g and columns j
    of clip h. k [N, M], row_clip [N] in 0..Gx-1, col_clip [M] in 0..Gy-1 -> [Gx, Gy] (a new array)."""
    return np.array(_sum_by_clip(_sum_by_clip(k, row_clip, 0), col_clip, 1), dtype=np.float64, copy=True)


class _KernelStats:
    """Clip-level kernel sums of a (generated, reference) pair, computed once.

    The estimate is the U-statistic over clips: within a set, every pair of rows from two
    different clips (so never a row with itself, nor two rows of one clip); across the sets, every
    pair. With one row per clip this is the usual unbiased MMD^2. ``mmd2(cx, cy)`` evaluates it for
    clip multiplicities cx [B, Gx], cy [B, Gy] (a bootstrap resample that draws clip g c_g times):
    pairs of copies of one original clip are excluded as well, so a duplicated row never meets
    itself and the resampled statistic stays an unbiased-form estimate."""

    def __init__(self, a, b, bandwidth, gen_groups, ref_groups):
        row_x, self.nx = _clip_index(gen_groups, a.shape[0], "gen_groups")
        row_y, self.ny = _clip_index(ref_groups, b.shape[0], "ref_groups")
        self.sxx = _clip_sums(_rbf_kernel(a, a, bandwidth), row_x, row_x)
        self.syy = _clip_sums(_rbf_kernel(b, b, bandwidth), row_y, row_y)
        self.sxy = _clip_sums(_rbf_kernel(a, b, bandwidth), row_x, row_y)
        np.fill_diagonal(self.sxx, 0.0)  # same clip (and so same row): excluded
        np.fill_diagonal(self.syy, 0.0)

    def mmd2(self, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Unbiased-form MMD^2 [B] for clip multiplicities cx [B, Gx], cy [B, Gy]; NaN where a set
        has no pair of rows from two different clips (every draw the same clip)."""
        rows_x, rows_y = cx @ self.nx, cy @ self.ny  # [B] rows per resampled set
        pairs_x = rows_x**2 - (cx**2) @ (self.nx**2)  # ordered pairs from different original clips
        pairs_y = rows_y**2 - (cy**2) @ (self.ny**2)
        within_x = ((cx @ self.sxx) * cx).sum(1)  # sum over clip pairs g != h of c_g c_h S[g, h]
        within_y = ((cy @ self.syy) * cy).sum(1)
        cross = ((cx @ self.sxy) * cy).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = within_x / pairs_x + within_y / pairs_y - 2 * cross / (rows_x * rows_y)
        return np.where((pairs_x > 0) & (pairs_y > 0), value, np.nan)


def kad(generated, reference, *, bandwidth: float | None = None, scale: float = 1000.0,
        gen_groups=None, ref_groups=None) -> float:
    """Kernel Audio Distance (arXiv 2502.15602): unbiased MMD^2 between generated [N, D] and
    reference [M, D] (N, M >= 2) with k(a, b) = exp(-||a - b||^2 / (2 h^2)),
    h = ``bandwidth`` or else ``median_bandwidth(reference)``, times ``scale``. Unbiased, so it
    is about 0 (and may be negative) for two samples of one distribution, at any N, M.

    gen_groups [N] / ref_groups [M] (optional clip id per row): when several rows come from one
    clip (frames of a clip, correlated), pairs of rows of the same clip are left out of the
    within-set terms, which keeps the estimate unbiased when clips (not rows) are independent.
    None (default): every row its own clip, the plain row-level statistic. Pass the same groups
    as to ``kad_ci``: its interval is that of the statistic with these groups."""
    a, b = _kernel_pair(generated, reference, "KAD")
    h = median_bandwidth(b) if bandwidth is None else float(bandwidth)
    stats = _KernelStats(a, b, h, gen_groups, ref_groups)
    ones_x, ones_y = np.ones((1, stats.nx.size)), np.ones((1, stats.ny.size))
    return float(scale * stats.mmd2(ones_x, ones_y)[0])


# ---------------------------------------------------------------------------------------------
# FAD only where resolvable, bootstrap intervals, disjoint reference splits (noise floor).

FAD_MIN_RATIO = 2  # FAD needs at least this many feature vectors per embedding dimension


def fad_resolvable(n_vectors: int, dim: int) -> bool:
    """Whether n_vectors feature vectors of width dim are enough for FAD: n >= FAD_MIN_RATIO * dim."""
    return n_vectors >= FAD_MIN_RATIO * dim


def fad_checked(generated, reference) -> float | None:
    """``fad(generated, reference)`` for generated [N, D] and reference [M, D] when both N and M
    are at least FAD_MIN_RATIO * D (``fad_resolvable``), else None ("n too small")."""
    a, b = _array(generated), _array(reference)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    if not (fad_resolvable(a.shape[0], a.shape[1]) and fad_resolvable(b.shape[0], b.shape[1])):
        return None
    return fad(a, b)


def _check_interval_args(n_boot: int, level: float) -> None:
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap values [B], ignoring NaN (degenerate resamples)."""
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError("fewer than 2 usable bootstrap resamples (too few clips?)")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _draw_clips(rng: np.random.Generator, n_clips: int, n_boot: int) -> np.ndarray:
    """Clip ids [n_boot, n_clips]: each row n_clips draws with replacement from range(n_clips)."""
    return rng.integers(n_clips, size=(n_boot, n_clips))


def _multiplicities(draws: np.ndarray, n_clips: int) -> np.ndarray:
    """How often each clip was drawn: draws [B, G'] of ids in range(n_clips) -> counts [B, n_clips]."""
    offsets = draws + n_clips * np.arange(draws.shape[0])[:, None]
    return np.bincount(offsets.ravel(), minlength=draws.shape[0] * n_clips).reshape(-1, n_clips).astype(np.float64)


def bootstrap_ci(metric, generated, reference, *, gen_groups=None, ref_groups=None, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) at ``level`` of ``metric(gen_sample, ref_sample)``.

    generated [N, D], reference [M, D]; gen_groups [N] / ref_groups [M] give each row's clip id
    (None: every row its own clip). Each resample draws, for each set independently, as many
    clips as it has with replacement and takes all rows of every drawn clip (so a clip drawn
    twice appears twice). Resamples are drawn with np.random.default_rng(seed), the same ones
    ``kad_ci`` draws for the same seed and clip counts (paired intervals across metrics).

    Duplicated rows are passed to ``metric`` as they are. That suits FAD (mean and covariance
    of a resample), but not metrics that treat two rows as distinct points: an unbiased kernel
    statistic (``kad``, ``mmd``) would count a row paired with its own copy (k = 1), biasing the
    resamples upward, and k-NN statistics (``prdc``) would find copies at distance 0. For
    kad / mmd use ``kad_ci``, which excludes those pairs."""
    _check_interval_args(n_boot, level)
    a, b = _array(generated), _array(reference)
    row_x, _ = _clip_index(gen_groups, a.shape[0], "gen_groups")
    row_y, _ = _clip_index(ref_groups, b.shape[0], "ref_groups")
    members_x = [np.flatnonzero(row_x == g) for g in range(row_x.max() + 1)]
    members_y = [np.flatnonzero(row_y == g) for g in range(row_y.max() + 1)]
    rng = np.random.default_rng(seed)
    draws_x, draws_y = _draw_clips(rng, len(members_x), n_boot), _draw_clips(rng, len(members_y), n_boot)
    values = np.empty(n_boot)
    for i in range(n_boot):
        ix = np.concatenate([members_x[g] for g in draws_x[i]])
        iy = np.concatenate([members_y[g] for g in draws_y[i]])
        values[i] = metric(a[ix], b[iy])
    return _percentile_interval(values, level)


def kad_ci(generated, reference, *, bandwidth: float | None = None, scale: float = 1000.0, gen_groups=None,
           ref_groups=None, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) at ``level`` of ``kad(generated, reference,
    bandwidth=..., gen_groups=..., ref_groups=...)`` (generated [N, D], reference [M, D]),
    resampling clips with replacement as ``bootstrap_ci`` does.

    The kernel matrices are computed once, with the bandwidth fixed from the full reference set
    (``median_bandwidth(reference)`` when None, not re-estimated per resample); each resample is
    the U-statistic over its clip multiplicities, leaving out pairs of copies of the same original
    clip (so never a row with its own duplicate: a naive resample of rows would add k(x, x) = 1
    terms to the within-set means and shift every resample upward by about 2 (1 - mean k) / N).
    Resamples whose within-set pairs are all of one clip are skipped. With bandwidth=10 this is
    the interval of ``mmd``."""
    _check_interval_args(n_boot, level)
    a, b = _kernel_pair(generated, reference, "KAD")
    h = median_bandwidth(b) if bandwidth is None else float(bandwidth)
    stats = _KernelStats(a, b, h, gen_groups, ref_groups)
    rng = np.random.default_rng(seed)
    cx = _multiplicities(_draw_clips(rng, stats.nx.size, n_boot), stats.nx.size)
    cy = _multiplicities(_draw_clips(rng, stats.ny.size, n_boot), stats.ny.size)
    return _percentile_interval(scale * stats.mmd2(cx, cy), level)


def not_resolved_worse(intervals, reference: int, margin: float = 0.0) -> list[bool]:
    """For intervals [(low, high), ...] of a lower-is-better metric: whether each one is not resolved
    worse than interval ``reference``, i.e. its low end is at most the reference's high end +
    ``margin``. The rule behind every "no worse within the intervals" choice (the teacher's sampler,
    a layer-drop schedule)."""
    if not 0 <= reference < len(intervals):
        raise IndexError(f"reference index {reference} is outside the {len(intervals)} intervals")
    limit = float(intervals[reference][1]) + margin
    return [float(low) <= limit for low, _ in intervals]


def floor_split(m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference rows (or clips) range(m) split at random into a noise-floor sample of min(n, m // 2)
    and the reference (the rest, at least as many): sorted index arrays. The floor sample against
    the reference is "data vs data", the distance two independent samples of the data have."""
    if n < 1 or m < 4:
        raise ValueError(f"a noise-floor split needs n >= 1 and at least 4 reference clips, got n={n}, m={m}")
    perm = np.random.default_rng(seed).permutation(m)
    n_floor = min(n, m // 2)
    return np.sort(perm[:n_floor]), np.sort(perm[n_floor:])


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point: [N]."""
    d = _distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def prdc(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    real [N, D], fake [M, D] (N, M > k). A point lies in a set's manifold when it falls inside
    some member's k-NN ball. precision: share of fake in the real manifold; recall: share of real
    in the fake manifold; density: mean count of real balls holding a fake point, / k; coverage:
    share of real points whose ball holds at least one fake point."""
    r, f = _array(real), _array(fake)
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(f"need more than k={k} points per set, got {r.shape[0]} real and {f.shape[0]} fake")
    real_radii, fake_radii = _knn_radii(r, k), _knn_radii(f, k)
    d = _distances(r, f)  # [N, M]
    inside_real = d <= real_radii[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d <= fake_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float(inside_real.any(axis=1).mean()),
    }


def prdc_ci(real, fake, *, k: int = 5, real_groups=None, fake_groups=None, n_boot: int = 200, level: float = 0.95,
            seed: int = 0) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """``prdc(real, fake, k)`` (real [N, D], fake [M, D]) and a percentile bootstrap interval at
    ``level`` for each of its four values, resampling clips with replacement as ``bootstrap_ci``
    does (same draws for the same seed).

    Each value is a mean over one set of whether (or how often) its points fall in the balls of, or
    hold points of, the other set. A resample redraws the set averaged over (fake for precision and
    density, real for recall and coverage) and keeps the other set whole, with the full sets' k-NN
    radii: redrawing the other set too would leave only about 63% of its distinct points in play
    (and put drawn copies at distance 0 if radii were recomputed), biasing every value down. The
    intervals therefore hold the sampling noise of the averaged set and understate that of the
    other one."""
    _check_interval_args(n_boot, level)
    r, f = _array(real), _array(fake)
    values = prdc(r, f, k=k)
    d = _distances(r, f)  # [N, M]
    inside_real = d <= _knn_radii(r, k)[:, None]  # fake j inside real i's ball
    inside_fake = d <= _knn_radii(f, k)[None, :]  # real i inside fake j's ball
    per_fake = {"precision": inside_real.any(axis=0).astype(np.float64), "density": inside_real.sum(axis=0) / k}
    per_real = {"recall": inside_fake.any(axis=1).astype(np.float64),
                "coverage": inside_real.any(axis=1).astype(np.float64)}
    row_f, _ = _clip_index(fake_groups, f.shape[0], "fake_groups")
    row_r, _ = _clip_index(real_groups, r.shape[0], "real_groups")
    rng = np.random.default_rng(seed)
    gf, gr = row_f.max() + 1, row_r.max() + 1
    cf = _multiplicities(_draw_clips(rng, gf, n_boot), gf)[:, row_f]  # [B, M] draws of each fake row
    cr = _multiplicities(_draw_clips(rng, gr, n_boot), gr)[:, row_r]  # [B, N]
    intervals = {name: _percentile_interval(cf @ v / cf.sum(1), level) for name, v in per_fake.items()}
    intervals |= {name: _percentile_interval(cr @ v / cr.sum(1), level) for name, v in per_real.items()}
    return values, {name: intervals[name] for name in values}
