"""Layer budgets for Presto-L (METHOD.md section 3): random budgets in training, the piecewise-
constant sigma -> budget schedule at inference, and a denoiser wrapper that applies it."""

from __future__ import annotations

import bisect
import json
from typing import Any

import torch
from torch import Tensor

from presto_ray.edm.precond import as_sigma_batch


class BudgetSchedule:
    """sigma -> number of blocks: ``budgets[i]`` for ``edges[i-1] <= sigma < edges[i]`` (edges
    ascending; len(edges) = len(budgets) - 1). ``BudgetSchedule([], [])`` means full depth."""

    def __init__(self, edges: list[float], budgets: list[int]) -> None:
        edges, budgets = [float(e) for e in edges], [int(b) for b in budgets]
        if budgets and len(edges) != len(budgets) - 1:
            raise ValueError(f"need len(edges) = len(budgets) - 1, got {len(edges)} and {len(budgets)}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"edges must increase, got {edges}")
        self.edges, self.budgets = edges, budgets

    @classmethod
    def from_config(cls, cfg) -> "BudgetSchedule":
        """From a :class:`~presto_ray.config.BudgetScheduleConfig`."""
        return cls(list(cfg.edges), list(cfg.budgets))

    @classmethod
    def parse(cls, text: str) -> "BudgetSchedule":
        """From JSON ``{"edges": [...], "budgets": [...]}`` (what :meth:`to_json` writes)."""
        try:
            obj = json.loads(text)
            return cls(obj.get("edges", []), obj["budgets"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # AttributeError: not a JSON object
            raise ValueError(f"not a budget schedule ({{\"edges\": [...], \"budgets\": [...]}}): {err}") from None

    def to_json(self) -> str:
        return json.dumps({"edges": self.edges, "budgets": self.budgets})

    @property
    def is_full(self) -> bool:
        return not self.budgets

    def validate(self, depth: int, lowest: int) -> None:
        """Raise ValueError when a budget is outside [lowest, depth]."""
        bad = [b for b in self.budgets if not lowest <= b <= depth]
        if bad:
            raise ValueError(f"budget schedule {self.budgets} has budgets {bad} outside [{lowest}, depth={depth}]")

    def budget_at(self, sigma: float) -> int | None:
        """The budget at one noise level (None = full depth)."""
        if not self.budgets:
            return None
        return self.budgets[bisect.bisect_right(self.edges, float(sigma))]

    def __call__(self, sigma: Tensor) -> Tensor | None:
        """sigma [B] -> LongTensor [B] of budgets (None = full depth)."""
        if not self.budgets:
            return None
        edges = torch.tensor(self.edges, dtype=torch.float64, device=sigma.device)
        index = torch.bucketize(sigma.detach().double(), edges, right=True)
        return torch.tensor(self.budgets, dtype=torch.long, device=sigma.device)[index]

    def mean_fraction(self, sigmas: list[float], depth: int) -> float:
        """Mean fraction of blocks run over the sampler's noise levels (the cost relative to full depth)."""
        levels = [s for s in sigmas if s > 0]
        return sum((self.budget_at(s) or depth) / depth for s in levels) / max(len(levels), 1)

    def __repr__(self) -> str:
        return f"BudgetSchedule(edges={self.edges}, budgets={self.budgets})"


class ScheduledDenoiser:
    """A denoiser that runs ``denoiser(x, sigma, cond, budget=schedule(sigma))`` (a :class:`Denoiser`)."""

    def __init__(self, denoiser, schedule: BudgetSchedule) -> None:
        self.denoiser, self.schedule = denoiser, schedule

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any, **kw: Any):
        budget = self.schedule(as_sigma_batch(sigma, x))
        if budget is not None:
            kw["budget"] = budget
        return self.denoiser(x, sigma, cond, **kw)


def draw_budgets(batch: int, lowest: int, depth: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Budgets uniform over {lowest, ..., depth}: LongTensor [B] (on the generator's device, then moved)."""
    if not 1 <= lowest <= depth:
        raise ValueError(f"lowest budget {lowest} is outside [1, depth={depth}]")
    gen_device = generator.device if generator is not None else "cpu"
    b = torch.randint(lowest, depth + 1, (batch,), generator=generator, device=gen_device)
    return b.to(device) if device is not None else b
