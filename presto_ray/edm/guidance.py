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
    """D_w(x, sigma, c) = D(x, sigma, null) + scale * (D(x, sigma, c) - D(x, sigma, null)).

    A :class:`Denoiser` itself: x [B, ...], sigma [B] -> [B, ...]. ``null_cond(cond)`` builds the
    unconditional condition (default ``cond.null()``). ``scale == 1`` makes a single conditional
    call. Tuple outputs of ``denoiser`` contribute their first element only.
    """

    def __init__(self, denoiser: "Denoiser", scale: float, null_cond: Callable[[Any], Any] = _default_null) -> None:
        self.denoiser = denoiser
        self.scale = float(scale)
        self.null_cond = null_cond

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any, **kw: Any) -> Tensor:
        """x: [B, ...]; sigma: [B]; returns the guided x0 estimate [B, ...]."""
        d_cond = first_output(self.denoiser(x, sigma, cond, **kw))
        if self.scale == 1.0:
            return d_cond
        d_null = first_output(self.denoiser(x, sigma, self.null_cond(cond), **kw))
        return d_null + self.scale * (d_cond - d_null)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, denoiser={self.denoiser!r})"
