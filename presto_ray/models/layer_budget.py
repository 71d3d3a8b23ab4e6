"""Layer budgets (METHOD.md section 3): which blocks of a transformer a sample runs.

A budget b is the number of blocks a sample executes. Presto-L's "presto" drop mode runs the first
b - keep_last blocks and then the last keep_last ones (so the output layer still reads a state of
full-depth scale); ASE's "ase" mode exits early after the first b. One batch may mix budgets: each
block then runs only on the rows that execute it. :class:`BlockBudget` holds these rules for any
stack of blocks (our DiT1D and the diffusers Stable Audio transformer use the same one).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor

BudgetArg = int | Tensor | None
"""None (every block), an int, or an integer tensor [B] (or a scalar) of per-sample budgets."""


@dataclass(frozen=True)
class BlockBudget:
    """The budget rules of ``depth`` blocks under ``drop_mode`` ("presto" or "ase")."""

    depth: int
    keep_last: int = 1
    drop_mode: str = "presto"

    @property
    def lowest(self) -> int:
        """The fewest blocks a sample may run: presto mode keeps its last ``keep_last`` (at least one)."""
        return max(1, self.keep_last) if self.drop_mode == "presto" else 1

    def check(self, budget: int) -> None:
        """ValueError unless ``lowest <= budget <= depth``."""
        if not self.lowest <= budget <= self.depth:
            extra = (f" (presto mode with keep_last={self.keep_last} needs budget >= {self.lowest})"
                     if self.lowest > 1 else "")
            raise ValueError(f"layer budget {budget} is outside [{self.lowest}, depth={self.depth}]{extra}")

    def runs(self, k: int, budget: int) -> bool:
        """Whether a sample with ``budget`` runs block ``k`` (0-based)."""
        if self.drop_mode == "ase":
            return k < budget
        return k < budget - self.keep_last or k >= self.depth - self.keep_last

    def blocks_run(self, budget: int) -> list[int]:
        """The 0-based blocks a sample with ``budget`` executes, in order."""
        budget = operator.index(budget)
        self.check(budget)
        return [k for k in range(self.depth) if self.runs(k, budget)]

    def per_sample(self, budget: BudgetArg, batch: int) -> list[int] | None:
        """Per-sample budgets as a Python list (one host sync), or None for full depth; each checked."""
        if budget is None:
            return None
        if isinstance(budget, Tensor):
            if budget.is_floating_point() or budget.dtype == torch.bool or budget.is_complex():
                raise ValueError(f"a budget tensor must hold integers, got {budget.dtype}")
            if budget.ndim == 0:
                values = [int(budget)] * batch
            elif budget.shape == (batch,):
                values = [int(v) for v in budget.tolist()]
            else:
                raise ValueError(f"a budget tensor must have shape [B={batch}], got {tuple(budget.shape)}")
        else:
            try:
                values = [operator.index(budget)] * batch
            except TypeError:
                raise ValueError(f"budget must be None, an int or a LongTensor [B], got "
                                 f"{type(budget).__name__}") from None
        for value in set(values):
            self.check(value)
        return values

    def rows(self, budgets: list[int] | None, device: torch.device) -> list[Tensor | None]:
        """Per block: None = every sample runs it, else the LongTensor of the rows that do (possibly
        empty: a block no sample runs is still called on zero rows, so every data-parallel rank
        touches every block and ZeRO's gathers and gradient buckets match across ranks)."""
        if budgets is None:
            return [None] * self.depth
        out: list[Tensor | None] = []
        for k in range(self.depth):
            rows = [i for i, b in enumerate(budgets) if self.runs(k, b)]
            out.append(None if len(rows) == len(budgets) else torch.tensor(rows, dtype=torch.long, device=device))
        return out

    def fraction(self, budgets: list[int] | None, batch: int, device: torch.device) -> Tensor:
        """The budget fraction b / depth [B] (1 at full depth), the input of the budget embedding."""
        if budgets is None:
            return torch.ones(batch, device=device)
        return torch.tensor(budgets, dtype=torch.float32, device=device) / self.depth
