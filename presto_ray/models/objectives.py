"""Teacher objectives as EDM denoisers (METHOD.md section 7): wrap a network trained with another
parameterisation so that it is a :class:`~presto_ray.edm.Denoiser` D(x; sigma) -> x0 on the EDM
process x = x0 + sigma n, and every sampler, loss and method in presto_ray.edm and
presto_ray.distill runs on it unchanged.

Each objective is D(x; sigma) = c_skip x + c_out F(c_in x, t(sigma), cond) with

    edm             c_skip = sd^2/(sigma^2+sd^2)  c_out =  sigma sd/sqrt(sigma^2+sd^2)  c_in = 1/sqrt(sigma^2+sd^2)
                    t = ln(sigma)/4                       (presto_ray.edm.precond.EDMPrecond)
    v               c_skip = sd^2/(sigma^2+sd^2)  c_out = -sigma sd/sqrt(sigma^2+sd^2)  c_in = 1/sqrt(sigma^2+sd^2)
                    t = (2/pi) atan(sigma)         (alpha = cos, sigma_t = sin; F = alpha n - sigma_t x0 at sd = 1)
    rectified_flow  c_skip = 1/(1+sigma)          c_out = -sigma/(1+sigma)             c_in = 1/(1+sigma)
                    t = sigma/(1+sigma)            (x_t = (1-t) x0 + t n; F = n - x0)

where sd = sigma_data. With sd = 1 the v row is k-diffusion's VDenoiser and Stable Audio Open 1.0:
D = x/(sigma^2+1) - sigma/sqrt(sigma^2+1) F(x/sqrt(sigma^2+1), t); the rectified-flow row is
D = (x - sigma F(x/(1+sigma), t)) / (1+sigma).

Sigma dtypes follow presto_ray.edm.precond: sigma becomes a [B] tensor of x's dtype promoted to at
least float32, the coefficients and t are computed in it, F is combined in it and D is returned
in x's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from presto_ray.edm.precond import EDMPrecond, Preconditioner

OBJECTIVES = ("edm", "v", "rectified_flow")


def v_time(sigma: Tensor) -> Tensor:
    """The v-objective's time t = (2/pi) atan(sigma) in [0, 1) (the angle phi = atan(sigma) over pi/2);
    same shape and dtype as sigma."""
    return sigma.atan() * (2 / math.pi)


def v_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) of the v objective: sd^2/(sigma^2+sd^2), -sigma sd/sqrt(sigma^2+sd^2),
    1/sqrt(sigma^2+sd^2); each of sigma's shape."""
    var = sigma**2 + sigma_data**2
    return sigma_data**2 / var, -sigma * sigma_data * var.rsqrt(), var.rsqrt()


def flow_time(sigma: Tensor) -> Tensor:
    """The rectified-flow time t = sigma / (1 + sigma) in [0, 1); same shape and dtype as sigma."""
    return sigma / (1 + sigma)


def flow_sigma(t: float) -> float:
    """The inverse of :func:`flow_time`: sigma = t / (1 - t) for t in [0, 1) (t = 1 is sigma = infinity)."""
    return t / (1 - t)


def flow_coefficients(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) of rectified flow: 1/(1+sigma), -sigma/(1+sigma), 1/(1+sigma); each of
    sigma's shape."""
    c_in = 1 / (1 + sigma)
    return c_in, -sigma * c_in, c_in


class VPrecond(Preconditioner):
    """v-prediction with alpha = cos, sigma_t = sin (Stable Audio Open 1.0; k-diffusion's VDenoiser).

    The network takes x_in = x / sqrt(sigma^2 + sd^2) and t = (2/pi) atan(sigma) and predicts
    v = alpha n - sigma_t x0 (at sd = 1, with alpha = cos(pi t / 2), sigma_t = sin(pi t / 2)).
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__(net)
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def time(self, sigma: Tensor) -> Tensor:
        return v_time(sigma)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return v_coefficients(sigma, self.sigma_data)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}"


class RectifiedFlowPrecond(Preconditioner):
    """Rectified flow x_t = (1 - t) x0 + t n with the network predicting F = n - x0.

    The network takes x_in = x / (1 + sigma) (= x_t) and t = sigma / (1 + sigma). The formula is
    exact for every finite sigma, but t = 1 (pure noise, where flow samplers start) is sigma =
    infinity: :attr:`sigma_max` = t_max / (1 - t_max) is the highest noise level a sampler may start
    from (sigmas[0] <= sigma_max; a sampler starting there begins at x = sigma_max n, which is x_t =
    t_max n instead of n). Noise distributions for training and distillation should stay below it too.
    """

    def __init__(self, net: torch.nn.Module, t_max: float = 0.999) -> None:
        super().__init__(net)
        if not 0.0 < t_max < 1.0:
            raise ValueError(f"t_max must be in (0, 1) (t = 1 is sigma = infinity), got {t_max}")
        self.t_max = float(t_max)

    @property
    def sigma_max(self) -> float:
        """The noise-level cap t_max / (1 - t_max) (999 at the default t_max = 0.999)."""
        return flow_sigma(self.t_max)

    def time(self, sigma: Tensor) -> Tensor:
        return flow_time(sigma)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return flow_coefficients(sigma)

    def extra_repr(self) -> str:
        return f"t_max={self.t_max}, sigma_max={self.sigma_max:.6g}"


def make_precond(objective: str, net: torch.nn.Module, sigma_data: float = 1.0, **options: Any) -> torch.nn.Module:
    """The denoiser D(x; sigma) for ``net`` trained with ``objective`` (one of :data:`OBJECTIVES`).

    "edm": :class:`EDMPrecond` (net takes c_noise = ln(sigma)/4); "v": :class:`VPrecond`;
    "rectified_flow": :class:`RectifiedFlowPrecond`, which has no sigma_data (its interpolation does
    not depend on the data scale): ``sigma_data`` must then be 1, the scale its networks are trained
    at. ``options`` go to the class (``t_max`` for rectified flow).
    """
    if objective == "edm":
        return EDMPrecond(net, sigma_data, **options)
    if objective == "v":
        return VPrecond(net, sigma_data, **options)
    if objective == "rectified_flow":
        if sigma_data != 1.0:
            raise ValueError(f"objective 'rectified_flow' has no sigma_data; got sigma_data={sigma_data}, expected 1.0")
        return RectifiedFlowPrecond(net, **options)
    raise ValueError(f"unknown teacher objective {objective!r}; expected one of {', '.join(map(repr, OBJECTIVES))}")
