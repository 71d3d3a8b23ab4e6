"""EDM diffusion math (METHOD.md sections 1-2): preconditioning, noise-level distributions,
the Karras schedule, classifier-free guidance, samplers, the denoising loss and exact analytic
denoisers. Pure torch; everything takes a :class:`Denoiser`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Denoiser(Protocol):
    """Any callable ``(x [B, ...], sigma [B], cond, **kw) -> x0_hat [B, ...]`` (a tuple
    ``(x0_hat, aux)`` is also accepted; consumers use its first element)."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any, **kw: Any) -> Tensor | tuple[Tensor, Any]: ...


from presto_ray.edm.analytic import GaussianMixtureDenoiser  # noqa: E402
from presto_ray.edm.guidance import ClassifierFreeGuidance  # noqa: E402
from presto_ray.edm.loss import EDMLoss, denoising_loss  # noqa: E402
from presto_ray.edm.noise import (  # noqa: E402
    KarrasContinuous,
    LogNormal,
    NoiseDistribution,
    Shifted,
    UniformLog,
    make_noise,
    standard_normal,
)
from presto_ray.edm.precond import (  # noqa: E402
    EDMPrecond,
    as_sigma_batch,
    c_in,
    c_noise,
    c_out,
    c_skip,
    denoise,
    expand_sigma,
    first_output,
    loss_weight,
    score_from_denoiser,
)
from presto_ray.edm.samplers import sample_pingpong, sample_teacher  # noqa: E402
from presto_ray.edm.schedule import karras_sigmas  # noqa: E402

__all__ = [
    "ClassifierFreeGuidance",
    "Denoiser",
    "EDMLoss",
    "EDMPrecond",
    "GaussianMixtureDenoiser",
    "KarrasContinuous",
    "LogNormal",
    "NoiseDistribution",
    "Shifted",
    "UniformLog",
    "as_sigma_batch",
    "c_in",
    "c_noise",
    "c_out",
    "c_skip",
    "denoise",
    "denoising_loss",
    "expand_sigma",
    "first_output",
    "karras_sigmas",
    "loss_weight",
    "make_noise",
    "sample_pingpong",
    "sample_teacher",
    "score_from_denoiser",
    "standard_normal",
]
