"""Pareto front of (cost, quality) points, both minimised, and the rule that picks one point of it.

A point is a pair ``(cost, quality)`` of floats where lower is better in both coordinates (for the
layer-drop sweep: DiT blocks executed per sample, and KAD). Pure functions, no Ray, no torch.
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


def cheapest_qualifying(points: Sequence[Point], qualifies: Sequence[bool], reference: int) -> int:
    """Index of the chosen point: the cheapest point of the Pareto front with ``qualifies[i]`` true
    (for the layer-drop sweep: the fewest blocks per sample whose KAD is not resolved worse than
    full depth's). Equal costs go to the better quality. When no front point qualifies, the
    ``reference`` point (full depth) is chosen."""
    if len(qualifies) != len(points):
        raise ValueError(f"{len(qualifies)} qualification flags for {len(points)} points")
    if not 0 <= reference < len(points):
        raise IndexError(f"reference index {reference} is outside the {len(points)} points")
    if math.isnan(points[reference][0]) or math.isnan(points[reference][1]):
        raise ValueError(f"the reference point {points[reference]} has a NaN coordinate")
    return next((i for i in pareto_front(points) if qualifies[i]), reference)
