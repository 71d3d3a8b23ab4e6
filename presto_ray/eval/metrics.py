"""Distribution metrics over embeddings (METHOD.md section 6): Frechet distance / FAD and
FAD-infinity as fadtk defines them, CMMD-style MMD, and density / recall / coverage (Naeem et al.
2020). All take embeddings as arrays [N, D] (numpy or torch) and compute in float64.
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


def mmd(x, y, *, bandwidth: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD-style maximum mean discrepancy with a Gaussian RBF kernel
    k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2)), unbiased (diagonals excluded), times ``scale``."""
    a, b = _array(x), _array(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("MMD needs at least 2 embeddings per set")
    gamma = 1.0 / (2 * bandwidth**2)

    def kernel(p, q):
        d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2 * p @ q.T
        return np.exp(-gamma * np.clip(d, 0, None))

    kxx, kyy, kxy = kernel(a, a), kernel(b, b), kernel(a, b)
    n, m = a.shape[0], b.shape[0]
    value = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
             - 2 * kxy.mean())
    return float(scale * value)


def _distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip((p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2 * p @ q.T, 0, None))


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
