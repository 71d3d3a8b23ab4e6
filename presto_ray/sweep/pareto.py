"""Pareto front of (cost, quality) points, both minimised, and the rule that picks one point of it.

A point is a pair ``(cost, quality)`` of floats where lower is better in both coordinates (for the
layer-drop sweep: DiT blocks executed per sample, and FAD). Pure functions, no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]


def dominates(a: Point, b: Point) -> bool:
    """True when ``a`` is no worse than ``b`` in both coordinates and better in at least one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, ordered by cost (then quality, then index). Equal
    points do not dominate each other, so duplicates on the front are all kept. Points with a
    NaN coordinate are never on the front."""
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ValueError(f"point {i} is {p!r}, not a (cost, quality) pair")
    valid = [i for i, p in enumerate(points) if not (math.isnan(p[0]) or math.isnan(p[1]))]
    front = [i for i in valid if not any(dominates(points[j], points[i]) for j in valid if j != i)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1], i))


def cheapest_within(points: Sequence[Point], reference: int, max_increase: float) -> int:
    """Index of the chosen point: the cheapest point of the Pareto front whose quality is within
    ``max_increase`` (a fraction: 0.05 = 5 %) of the reference point's, i.e. at most
    ``q_ref + |q_ref| * max_increase`` (for the layer-drop sweep: the fewest blocks per sample whose
    FAD is within 5 % of full depth's). Equal costs go to the better quality. A point always
    qualifies: the reference itself, or a front point that dominates it."""
    if not 0 <= reference < len(points):
        raise IndexError(f"reference index {reference} is outside the {len(points)} points")
    if not max_increase >= 0:
        raise ValueError(f"max_increase must be >= 0, got {max_increase}")
    q_ref = points[reference][1]
    if math.isnan(q_ref) or math.isnan(points[reference][0]):
        raise ValueError(f"the reference point {points[reference]} has a NaN coordinate")
    limit = q_ref + abs(q_ref) * max_increase
    return next(i for i in pareto_front(points) if points[i][1] <= limit)
