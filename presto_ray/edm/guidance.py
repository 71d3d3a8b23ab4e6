"""Classifier-free guidance as a denoiser wrapper (METHOD.md section 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor

from presto_ray.edm.precond import first_output

if TYPE_CHECKING:
    from presto_ray.edm import Denoiser


def _default_null(cond: Any) -> Any:
    return cond.null()


class ClassifierFreeGuidance:
    """D_w(x, sigma, c) = D(x, sigma, null) + scale * (D(x, sigma, c) - D(x, sigma, null)),
    optionally rescaled (guidance rescale, Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", section 3.4, applied to the x0 estimate):

        D_r = D_w * std(D(x, sigma, c)) / std(D_w),   D = rescale * D_r + (1 - rescale) * D_w

    with std over each sample's non-batch dims. Extrapolating by ``scale`` inflates the estimate's
    spread beyond anything in the data (on log-mel latents: every band louder at once, decoded as
    blasts and clipping); the rescale gives each guided estimate the spread of its conditional one
    and keeps its direction. ``rescale`` in [0, 1]: 0 is plain CFG.

    A :class:`Denoiser` itself: x [B, ...], sigma [B] -> [B, ...]. ``null_cond(cond)`` builds the
    unconditional condition (default ``cond.null()``). ``scale == 1`` makes a single conditional
    call. Tuple outputs of ``denoiser`` contribute their first element only.
    """

    def __init__(self, denoiser: "Denoiser", scale: float, null_cond: Callable[[Any], Any] = _default_null,
                 rescale: float = 0.0) -> None:
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"the guidance rescale must be in [0, 1], got {rescale}")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.null_cond = null_cond
        self.rescale = float(rescale)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any, **kw: Any) -> Tensor:
        """x: [B, ...]; sigma: [B]; returns the guided x0 estimate [B, ...]."""
        d_cond = first_output(self.denoiser(x, sigma, cond, **kw))
        if self.scale == 1.0:
            return d_cond
        d_null = first_output(self.denoiser(x, sigma, self.null_cond(cond), **kw))
        guided = d_null + self.scale * (d_cond - d_null)
        if self.rescale == 0.0:
            return guided
        dims = tuple(range(1, guided.ndim))
        ratio = d_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
        return self.rescale * (guided * ratio) + (1.0 - self.rescale) * guided

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, rescale={self.rescale}, denoiser={self.denoiser!r})"
