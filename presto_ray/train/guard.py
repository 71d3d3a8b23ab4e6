"""Non-finite loss guard: a NaN/Inf loss is never trained on; K in a row stop the run."""

from __future__ import annotations

import torch
import torch.distributed as dist


class NonFiniteLossError(RuntimeError):
    """Raised after ``patience`` consecutive non-finite losses."""


class NonFiniteGuard:
    """Decide, identically on every rank, whether this step's loss may be trained on."""

    def __init__(self, patience: int):
        self.patience = patience
        self.skipped = 0
        self.in_a_row = 0

    def allows(self, loss: torch.Tensor, step: int) -> bool:
        """loss: scalar. False (skip the update) when the loss is non-finite on any rank."""
        finite = torch.isfinite(loss.detach()).float().reshape(1).cpu()
        if dist.is_available() and dist.is_initialized():
            finite_all = finite.to(loss.device)
            dist.all_reduce(finite_all, op=dist.ReduceOp.MIN)
            finite = finite_all.cpu()
        if bool(finite.item()):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.patience:
            raise NonFiniteLossError(
                f"loss was NaN/Inf for {self.in_a_row} consecutive batches at step {step} "
                f"({self.skipped} skipped in total); no update was applied from them and the last "
                "checkpoint is intact. Check the data for NaN values and lower train.lr."
            )
        return False
