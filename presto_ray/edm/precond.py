"""EDM preconditioning (Karras et al. 2022, METHOD.md section 1).

D(x, sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), c), with

    c_skip = sd^2 / (sigma^2 + sd^2)        c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)       c_noise = ln(sigma) / 4
    lambda = (sigma^2 + sd^2) / (sigma sd)^2   (loss weight; lambda * c_out^2 = 1)

where sd = sigma_data. Every coefficient function accepts a tensor (or a python float) and
returns a tensor of the same shape; broadcast a per-sample sigma [B] against x [B, ...] with
:func:`expand_sigma`. Sigma keeps the caller's precision: a tensor's dtype promoted to at least
float32 (never half precision), a python float as float64 in the coefficient functions and in
x's dtype (at least float32) where it meets x, so a float64 sampler is float64 throughout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from presto_ray.edm import Denoiser


def _t(value: Tensor | float) -> Tensor:
    """sigma as a tensor of at least float32: a tensor keeps its dtype (half precision promoted),
    a python float becomes float64 (its own precision)."""
    if not isinstance(value, Tensor):
        return torch.as_tensor(value, dtype=torch.float64)
    return value.to(torch.promote_types(value.dtype, torch.float32)) if value.is_floating_point() else value.double()


def _sigma_dtype(x: Tensor) -> torch.dtype:
    """x's dtype promoted to at least float32 (coefficients are never computed in half precision)."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def as_sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Noise levels as a [B] tensor on x's device (B = x.shape[0]).

    sigma: python float, 0-d tensor, [1] or [B] tensor. The dtype is x's dtype promoted to at
    least float32; a python float is converted straight to it (never through float32).
    """
    sigma = torch.as_tensor(sigma, dtype=_sigma_dtype(x), device=x.device)
    batch = x.shape[0]
    if sigma.ndim == 0 or sigma.numel() == 1:
        return sigma.reshape(1).expand(batch).clone()
    if sigma.ndim != 1 or sigma.shape[0] != batch:
        raise ValueError(f"sigma must be a scalar or have shape [{batch}], got {tuple(sigma.shape)}")
    return sigma


def expand_sigma(sigma: Tensor | float, like: Tensor) -> Tensor:
    """Reshape a per-sample sigma [B] (or a scalar) to [B, 1, 1, ...] so it broadcasts against
    ``like`` [B, ...]. A scalar gives a tensor of shape [1, 1, ...] (like.ndim dims). A tensor
    keeps its dtype; a python float takes like's dtype promoted to at least float32."""
    sigma = sigma.to(like.device) if isinstance(sigma, Tensor) else torch.as_tensor(
        sigma, dtype=_sigma_dtype(like), device=like.device)
    if sigma.ndim == 0:
        return sigma.reshape([1] * max(like.ndim, 1))
    if sigma.ndim != 1:
        raise ValueError(f"sigma must be a scalar or 1-D [B], got shape {tuple(sigma.shape)}")
    return sigma.reshape([sigma.shape[0]] + [1] * (like.ndim - 1))


def c_skip(sigma: Tensor | float, sigma_data: float) -> Tensor:
    """Skip weight sd^2 / (sigma^2 + sd^2); same shape as sigma."""
    sigma = _t(sigma)
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Tensor | float, sigma_data: float) -> Tensor:
    """Output scale sigma sd / sqrt(sigma^2 + sd^2); same shape as sigma."""
    sigma = _t(sigma)
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: Tensor | float, sigma_data: float) -> Tensor:
    """Input scale 1 / sqrt(sigma^2 + sd^2) (unit-variance network input); same shape as sigma."""
    sigma = _t(sigma)
    return (sigma**2 + sigma_data**2).rsqrt()


def c_noise(sigma: Tensor | float) -> Tensor:
    """Noise conditioning ln(sigma) / 4; same shape as sigma."""
    return _t(sigma).log() / 4


def loss_weight(sigma: Tensor | float, sigma_data: float) -> Tensor:
    """EDM loss weight lambda = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2; same shape as sigma."""
    sigma = _t(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def score_from_denoiser(x0_hat: Tensor, x: Tensor, sigma: Tensor | float) -> Tensor:
    """Score grad_x log p_sigma(x) = (x0_hat - x) / sigma^2.

    x0_hat, x: [B, ...]; sigma: [B] or scalar (broadcast with :func:`expand_sigma`). Returns [B, ...].
    """
    s = expand_sigma(sigma, x).to(x.dtype)
    return (x0_hat - x) / s**2


def first_output(out: Tensor | tuple[Tensor, Any]) -> Tensor:
    """The x0 estimate of a denoiser output: the tensor itself, or the first element of a tuple."""
    return out[0] if isinstance(out, tuple) else out


def denoise(denoiser: "Denoiser", x: Tensor, sigma: Tensor | float, cond: Any, **kw: Any) -> Tensor:
    """Call ``denoiser(x, sigma [B], cond, **kw)`` and return only the x0 estimate [B, ...].

    x: [B, ...]; sigma: scalar or [B] (converted to a [B] tensor on x's device).
    """
    return first_output(denoiser(x, as_sigma_batch(sigma, x), cond, **kw))


class Preconditioner(torch.nn.Module):
    """D(x; sigma, c) = c_skip x + c_out F(c_in x, t(sigma), c): a raw network F made a
    :class:`Denoiser`. Subclasses give the objective's :meth:`time` and :meth:`coefficients`
    (:class:`EDMPrecond` here; v-prediction and rectified flow in presto_ray.models.objectives).

    ``net(x_in [B, ...], t [B], cond, **kw)`` returns F [B, ...] or a tuple (F, aux);
    ``forward(x [B, ...], sigma (float or [B]), cond, **kw)`` returns D [B, ...] (in x's dtype)
    or (D, aux) with aux passed through unchanged.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def time(self, sigma: Tensor) -> Tensor:
        """The network's time input t(sigma): [B] -> [B]."""
        raise NotImplementedError

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in), each of sigma's shape."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any, **kw: Any) -> Tensor | tuple[Tensor, Any]:
        """x: [B, ...]; sigma: python float or [B]; returns D [B, ...] or (D, aux)."""
        sigma = as_sigma_batch(sigma, x)
        skip, out_scale, in_scale = self.coefficients(expand_sigma(sigma, x))
        out = self.net((in_scale * x).to(x.dtype), self.time(sigma), cond, **kw)
        aux = None
        is_tuple = isinstance(out, tuple)
        if is_tuple:
            if len(out) != 2:
                raise ValueError(f"net returned a tuple of {len(out)} items, expected (F, aux)")
            out, aux = out
        d = (skip * x + out_scale * out.to(skip.dtype)).to(x.dtype)
        return (d, aux) if is_tuple else d

    def hidden_state(self, x: Tensor, sigma: Tensor | float, cond: Any, block: int, **kw: Any) -> Tensor:
        """The network's hidden state after ``block`` on the preconditioned input (c_in x, t):
        ``net.hidden_state``, which runs blocks 0..block only. x: [B, ...]; sigma: float or [B]."""
        sigma = as_sigma_batch(sigma, x)
        in_scale = self.coefficients(expand_sigma(sigma, x))[2]
        return self.net.hidden_state((in_scale * x).to(x.dtype), self.time(sigma), cond, block, **kw)


class EDMPrecond(Preconditioner):
    """EDM's preconditioning (the module docstring) of a raw network F, whose time input is
    c_noise = ln(sigma) / 4."""

    def __init__(self, net: torch.nn.Module, sigma_data: float) -> None:
        super().__init__(net)
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def time(self, sigma: Tensor) -> Tensor:
        return c_noise(sigma)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd = self.sigma_data
        return c_skip(sigma, sd), c_out(sigma, sd), c_in(sigma, sd)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}"
