"""The EDM denoising loss (METHOD.md section 1): lambda(sigma) ||D(x0 + sigma eps, sigma, c) - x0||^2."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from presto_ray.edm.noise import NoiseDistribution, standard_normal
from presto_ray.edm.precond import expand_sigma, first_output, loss_weight

if TYPE_CHECKING:
    from presto_ray.edm import Denoiser


def denoising_loss(
    denoiser: "Denoiser",
    x0: Tensor,
    sigma: Tensor,
    cond: Any,
    noise: Tensor | None = None,
    *,
    sigma_data: float,
    generator: torch.Generator | None = None,
    **kw: Any,
) -> Tensor:
    """Per-sample weighted denoising loss [B].

    x0: [B, ...] clean data; sigma: [B]; noise: [B, ...] (drawn from ``generator`` when None).
    Returns mean over non-batch dims of loss_weight(sigma) * (D(x0 + sigma noise, sigma, cond) - x0)^2,
    in float32 or higher. A tuple output of the denoiser uses its first element; ``kw`` go to the
    denoiser. Gradients flow into the denoiser.
    """
    if sigma.ndim != 1 or sigma.shape[0] != x0.shape[0]:
        raise ValueError(f"sigma must have shape [{x0.shape[0]}], got {tuple(sigma.shape)}")
    if noise is None:
        noise = standard_normal(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    s = expand_sigma(sigma, x0).to(x0.dtype)
    x0_hat = first_output(denoiser(x0 + s * noise, sigma, cond, **kw))
    dtype = torch.promote_types(x0_hat.dtype, torch.float32)
    err = (x0_hat.to(dtype) - x0.to(dtype)) ** 2
    weight = loss_weight(sigma.to(dtype), sigma_data)
    return weight * err.flatten(1).mean(dim=1)


class EDMLoss:
    """Draw sigma ~ p_sigma and noise, return (loss [B], sigma [B]) of :func:`denoising_loss`."""

    def __init__(self, p_sigma: NoiseDistribution, sigma_data: float) -> None:
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.p_sigma = p_sigma
        self.sigma_data = float(sigma_data)

    def __call__(
        self, denoiser: "Denoiser", x0: Tensor, cond: Any, *, generator: torch.Generator | None = None, **kw: Any
    ) -> tuple[Tensor, Tensor]:
        """x0: [B, ...]; returns (loss [B], sigma [B]); sigma and noise come from ``generator``."""
        sigma = self.p_sigma.sample(x0.shape[0], generator=generator, device=x0.device)
        sigma = sigma.to(torch.promote_types(x0.dtype, torch.float32))
        loss = denoising_loss(denoiser, x0, sigma, cond, sigma_data=self.sigma_data, generator=generator, **kw)
        return loss, sigma

    def __repr__(self) -> str:
        return f"EDMLoss(p_sigma={self.p_sigma!r}, sigma_data={self.sigma_data})"


@torch.no_grad()
def fixed_eval_loss(denoiser: "Denoiser", x0: Tensor, cond: Any, sigmas: list[float], sigma_data: float,
                    seed: int) -> dict[str, float]:
    """Denoising loss on a fixed batch x0 [B, C, T] at a fixed sigma grid with fixed noise.

    Returns {"eval_loss": mean over the grid, "eval_loss@<sigma>": per sigma}."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        sigma = torch.full((x0.shape[0],), s, device=x0.device)
        out[f"eval_loss@{s:g}"] = denoising_loss(denoiser, x0, sigma, cond, noise, sigma_data=sigma_data).mean().item()
    out["eval_loss"] = sum(out.values()) / len(sigmas)
    return out
