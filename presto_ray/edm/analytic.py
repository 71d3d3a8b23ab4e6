"""Exact denoisers for data whose distribution is known in closed form (tests, sanity checks).

For isotropic Gaussian-mixture data p(x0) = sum_k w_k N(mu_k, s_k^2 I) and x = x0 + sigma eps,
p_sigma(x) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I) and the posterior mean is

    E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with responsibilities r_k(x) = P(k | x) computed by log-sum-exp. This is the ideal D a network
approximates, so it plugs into every sampler and loss in presto_ray.edm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from presto_ray.edm.noise import standard_normal


class GaussianMixtureDenoiser:
    """Exact posterior-mean denoiser for an isotropic Gaussian mixture (a :class:`Denoiser`).

    weights: [K] (normalised here), means: [K, d], stds: [K] (> 0). A single Gaussian is K = 1.
    Parameters are kept in float64 on CPU and moved to x's device per call.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64).flatten()
        if means.ndim == 1:
            means = means[:, None]
        k = weights.shape[0]
        if means.shape[0] != k or stds.shape[0] != k:
            raise ValueError(f"weights [{k}], means {tuple(means.shape)} and stds {tuple(stds.shape)} disagree on K")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds

    @property
    def dim(self) -> int:
        """Data dimension d."""
        return self.means.shape[1]

    def _prep(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x flattens to {flat.shape[1]} dims per sample, the mixture has {self.dim}")
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(x.shape[0])
        return flat, sigma

    def _log_joint(self, flat: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log(w_k N(x; mu_k, v_k I)) [B, K] and v_k = s_k^2 + sigma^2 [B, K]."""
        means = self.means.to(flat.device)
        var = self.stds.to(flat.device)[None, :] ** 2 + sigma[:, None] ** 2
        sq = ((flat[:, None, :] - means[None]) ** 2).sum(-1)
        log_joint = (
            self.weights.to(flat.device).log()[None]
            - 0.5 * self.dim * (2 * math.pi * var).log()
            - 0.5 * sq / var
        )
        return log_joint, var

    def responsibilities(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """P(k | x_sigma = x): x [B, ...], sigma [B] or float -> [B, K] float64."""
        flat, sigma = self._prep(x, sigma)
        log_joint, _ = self._log_joint(flat, sigma)
        return torch.softmax(log_joint, dim=1)

    def log_prob(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """log p_sigma(x) of the noised data: x [B, ...], sigma [B] or float -> [B] float64
        (differentiable in x)."""
        flat, sigma = self._prep(x, sigma)
        log_joint, _ = self._log_joint(flat, sigma)
        return torch.logsumexp(log_joint, dim=1)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None, **kw: Any) -> Tensor:
        """E[x0 | x_sigma = x]: x [B, d] (or [B, ...] flattening to d), sigma [B] or float ->
        [B, ...] in x's dtype. ``cond`` and ``kw`` are ignored."""
        flat, sigma = self._prep(x, sigma)
        log_joint, var = self._log_joint(flat, sigma)
        resp = torch.softmax(log_joint, dim=1)  # [B, K]
        means = self.means.to(flat.device)
        gain = self.stds.to(flat.device)[None, :] ** 2 / var  # [B, K]
        comp = means[None] + gain[..., None] * (flat[:, None, :] - means[None])  # [B, K, d]
        out = (resp[..., None] * comp).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """n draws of x0: ([n, d] in ``dtype``, component index [n] int64), on CPU (or the
        generator's device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        eps = standard_normal((n, self.dim), generator=generator, device=device, dtype=torch.float64)
        x0 = self.means.to(device)[idx] + self.stds.to(device)[idx, None] * eps
        return x0.to(dtype), idx

    def __repr__(self) -> str:
        return f"GaussianMixtureDenoiser(K={self.weights.shape[0]}, d={self.dim})"
