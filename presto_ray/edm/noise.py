"""Noise-level distributions p(sigma) (METHOD.md sections 1-2).

``train``: ln sigma ~ N(p_mean, p_std^2) (:class:`LogNormal`); ``inference``: the continuous
Karras schedule (:class:`KarrasContinuous`); :class:`UniformLog`; and :class:`Shifted`, which
multiplies any of them by exp(shift). Each has ``sample(n) -> [n]`` and the exact ``cdf`` (used
by the KS tests). :func:`make_noise` builds one from a ``NoiseConfig``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from presto_ray.config import EDMConfig, NoiseConfig


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def standard_normal(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """N(0, I) noise of ``shape`` on ``device``; drawn on the generator's device (so a CPU
    generator gives the same numbers whatever ``device`` is) and then moved."""
    out = torch.randn(tuple(shape), generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def standard_uniform(
    n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """U[0, 1) samples [n] in float64, drawn on the generator's device and moved to ``device``."""
    out = torch.rand(n, generator=generator, device=_draw_device(generator, device), dtype=torch.float64)
    return out.to(device) if device is not None else out


class NoiseDistribution(ABC):
    """A distribution over noise levels sigma > 0."""

    @abstractmethod
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """n draws of sigma: [n] float32 on ``device``."""

    @abstractmethod
    def cdf(self, sigma: Tensor) -> Tensor:
        """Exact P(S <= sigma), elementwise; float64, same shape as sigma."""


class LogNormal(NoiseDistribution):
    """ln sigma ~ N(p_mean, p_std^2) (EDM's training distribution, "train")."""

    def __init__(self, p_mean: float, p_std: float) -> None:
        if not p_std > 0:
            raise ValueError(f"p_std must be positive, got {p_std}")
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)

    def sample(self, n, *, generator=None, device=None) -> Tensor:
        """[n] float32."""
        z = standard_normal((n,), generator=generator, device=device, dtype=torch.float64)
        return (self.p_mean + self.p_std * z).exp().float()

    def cdf(self, sigma: Tensor) -> Tensor:
        """Phi((ln sigma - p_mean) / p_std); float64, same shape as sigma."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return torch.special.ndtr((sigma.log() - self.p_mean) / self.p_std)

    def __repr__(self) -> str:
        return f"LogNormal(p_mean={self.p_mean}, p_std={self.p_std})"


class KarrasContinuous(NoiseDistribution):
    """The continuous Karras schedule ("inference"): u ~ U[0, 1],
    sigma = (smax^(1/rho) + u (smin^(1/rho) - smax^(1/rho)))^rho."""

    def __init__(self, sigma_min: float, sigma_max: float, rho: float) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not rho > 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.rho = float(rho)

    def _ends(self) -> tuple[float, float]:
        return self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    def sample(self, n, *, generator=None, device=None) -> Tensor:
        """[n] float32 in [sigma_min, sigma_max]."""
        lo, hi = self._ends()
        u = standard_uniform(n, generator=generator, device=device)
        return ((hi + u * (lo - hi)) ** self.rho).float()

    def cdf(self, sigma: Tensor) -> Tensor:
        """(sigma^(1/rho) - smin^(1/rho)) / (smax^(1/rho) - smin^(1/rho)), clipped to [0, 1]."""
        lo, hi = self._ends()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp_min(0)
        return ((sigma ** (1 / self.rho) - lo) / (hi - lo)).clamp(0, 1)

    def __repr__(self) -> str:
        return f"KarrasContinuous(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho})"


class UniformLog(NoiseDistribution):
    """ln sigma ~ U[ln sigma_min, ln sigma_max]."""

    def __init__(self, sigma_min: float, sigma_max: float) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def sample(self, n, *, generator=None, device=None) -> Tensor:
        """[n] float32 in [sigma_min, sigma_max]."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        u = standard_uniform(n, generator=generator, device=device)
        return (lo + u * (hi - lo)).exp().float()

    def cdf(self, sigma: Tensor) -> Tensor:
        """(ln sigma - ln sigma_min) / (ln sigma_max - ln sigma_min), clipped to [0, 1]."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return ((sigma.log() - lo) / (hi - lo)).clamp(0, 1)

    def __repr__(self) -> str:
        return f"UniformLog(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class Shifted(NoiseDistribution):
    """sigma = exp(shift) * sigma_base with sigma_base ~ ``base`` (shift > 0: noisier)."""

    def __init__(self, base: NoiseDistribution, shift: float) -> None:
        self.base = base
        self.shift = float(shift)

    def sample(self, n, *, generator=None, device=None) -> Tensor:
        """[n] float32."""
        return self.base.sample(n, generator=generator, device=device) * math.exp(self.shift)

    def cdf(self, sigma: Tensor) -> Tensor:
        """base.cdf(sigma * exp(-shift)); float64."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.base.cdf(sigma * math.exp(-self.shift))

    def __repr__(self) -> str:
        return f"Shifted({self.base!r}, shift={self.shift})"


def make_noise(spec: "NoiseConfig", edm: "EDMConfig") -> NoiseDistribution:
    """Build the distribution a ``NoiseConfig`` names, with defaults from ``EDMConfig``.

    train -> LogNormal(edm.p_mean, edm.p_std), each overridable by spec.p_mean / spec.p_std;
    inference -> KarrasContinuous(edm.sigma_min, edm.sigma_max, edm.rho);
    lognormal -> LogNormal(spec.p_mean, spec.p_std) (both required);
    uniform_log -> UniformLog(edm.sigma_min, edm.sigma_max).
    spec.shift != 0 wraps the result in :class:`Shifted`. p_mean / p_std given for a kind that
    does not use them raise ValueError (they would otherwise be ignored silently).
    """
    kind = spec.kind
    if kind == "train":
        p_mean = edm.p_mean if spec.p_mean is None else spec.p_mean
        p_std = edm.p_std if spec.p_std is None else spec.p_std
        dist: NoiseDistribution = LogNormal(p_mean, p_std)
    elif kind == "lognormal":
        for field in ("p_mean", "p_std"):
            if getattr(spec, field) is None:
                raise ValueError(f"noise kind 'lognormal' requires '{field}' to be set")
        dist = LogNormal(spec.p_mean, spec.p_std)
    elif kind in ("inference", "uniform_log"):
        for field in ("p_mean", "p_std"):
            if getattr(spec, field) is not None:
                raise ValueError(f"noise kind '{kind}' does not use '{field}' (got {getattr(spec, field)})")
        if kind == "inference":
            dist = KarrasContinuous(edm.sigma_min, edm.sigma_max, edm.rho)
        else:
            dist = UniformLog(edm.sigma_min, edm.sigma_max)
    else:
        raise ValueError(f"unknown noise kind '{kind}'")
    if spec.shift != 0:
        dist = Shifted(dist, spec.shift)
    return dist
