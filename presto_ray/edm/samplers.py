"""Samplers: the teacher's EDM stochastic sampler (Karras et al. 2022, Algorithm 2) and the
student's ping-pong sampler (METHOD.md sections 1-2). Pure functions of a :class:`Denoiser`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from presto_ray.edm.noise import standard_normal
from presto_ray.edm.precond import denoise

if TYPE_CHECKING:
    from presto_ray.edm import Denoiser


def _state_dtype(noise: Tensor) -> torch.dtype:
    return torch.promote_types(noise.dtype, torch.float32)


def _check_sigmas(sigmas: Tensor) -> list[float]:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    values = [float(s) for s in sigmas.detach().cpu().double()]
    if any(b > a for a, b in zip(values, values[1:])) or values[-1] < 0 or min(values[:-1]) <= 0:
        raise ValueError("sigmas must be non-increasing and positive, except a final 0")
    return values


def _steps(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, leave=False)


@torch.no_grad()
def sample_teacher(
    denoiser: "Denoiser",
    noise: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    solver: Literal["heun", "euler"] = "heun",
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **kw: Any,
) -> Tensor:
    """EDM stochastic sampler (Algorithm 2 of Karras et al. 2022).

    noise: [B, ...] ~ N(0, I) (the output's shape); sigmas: [N + 1] decreasing, last entry 0
    (e.g. :func:`karras_sigmas`). Start x = sigmas[0] * noise; at each step optionally add churn
    (gamma = min(s_churn / N, sqrt(2) - 1) when s_tmin <= sigma_i <= s_tmax, fresh noise scaled by
    s_noise drawn from ``generator``), take an Euler step and, unless ``solver == "euler"`` or
    sigma_{i+1} == 0, a Heun correction. Extra ``kw`` go to every denoiser call; sigma is passed
    as a [B] tensor. Runs under no_grad; the state is at least float32. Returns x0 [B, ...] in
    noise's dtype. NFE: 2N - 1 for Heun, N for Euler.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    values = _check_sigmas(sigmas)
    n_steps = len(values) - 1
    dtype = _state_dtype(noise)
    x = noise.to(dtype) * values[0]
    gamma_max = min(s_churn / n_steps, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0
    for i in _steps(n_steps, progress, "teacher"):
        sigma, sigma_next = values[i], values[i + 1]
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        x_hat = x
        if gamma > 0:
            eps = standard_normal(x.shape, generator=generator, device=x.device, dtype=dtype)
            x_hat = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * eps
        x0_hat = denoise(denoiser, x_hat, sigma_hat, cond, **kw).to(dtype)
        if sigma_next == 0:
            x = x0_hat  # the Euler step to sigma = 0, without its cancellation error
            continue
        d = (x_hat - x0_hat) / sigma_hat
        x = x_hat + (sigma_next - sigma_hat) * d
        if solver == "heun":
            d_next = (x - denoise(denoiser, x, sigma_next, cond, **kw).to(dtype)) / sigma_next
            x = x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
    return x.to(noise.dtype)


@torch.no_grad()
def sample_pingpong(
    denoiser: "Denoiser",
    noise: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **kw: Any,
) -> Tensor:
    """Ping-pong (consistency-style) sampler for the distilled generator.

    noise: [B, ...] ~ N(0, I); sigmas: [N + 1] decreasing with last entry 0 (a trailing 0 is
    optional). x = sigmas[0] * noise; for each sigma_i > 0: x_hat = D(x, sigma_i, cond); if
    sigma_{i+1} > 0, x = x_hat + sigma_{i+1} * fresh_eps (from ``generator``). Returns the last
    x_hat [B, ...] in noise's dtype; N network evaluations.
    """
    values = [float(s) for s in sigmas.detach().cpu().double()] if sigmas.ndim == 1 else None
    if not values or values[0] <= 0 or any(b > a for a, b in zip(values, values[1:])) or values[-1] < 0:
        raise ValueError("sigmas must be 1-D, non-increasing, non-negative and start above 0")
    values = [s for s in values if s > 0] + [0.0]
    dtype = _state_dtype(noise)
    x = noise.to(dtype) * values[0]
    x_hat = x
    for i in _steps(len(values) - 1, progress, "pingpong"):
        x_hat = denoise(denoiser, x, values[i], cond, **kw).to(dtype)
        if values[i + 1] > 0:
            eps = standard_normal(x.shape, generator=generator, device=x.device, dtype=dtype)
            x = x_hat + values[i + 1] * eps
    return x_hat.to(noise.dtype)
