"""Networks of presto_ray: the 1-D DiT, its text condition, encoders and codecs."""

from __future__ import annotations

from presto_ray.models.cond import Cond
from presto_ray.models.dit import DiT1D

__all__ = ["Cond", "DiT1D"]
