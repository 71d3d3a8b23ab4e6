"""``quickstart``: the embedded default end to end on one machine (see :mod:`.pipeline`)."""

from presto_ray.quickstart.pipeline import quickstart
from presto_ray.quickstart.plan import BASELINES, METHODS, Plan

__all__ = ["BASELINES", "METHODS", "Plan", "quickstart"]
