"""The non-finite loss guard in one process (the Ray run is in test_train_teacher.py)."""

from __future__ import annotations

import math

import pytest
import torch

from presto_ray.train.guard import NonFiniteGuard, NonFiniteLossError


def test_guard_skips_counts_and_resets():
    guard = NonFiniteGuard(patience=3)
    assert guard.allows(torch.tensor(1.0), 0)
    assert not guard.allows(torch.tensor(math.nan), 1)
    assert not guard.allows(torch.tensor(math.inf), 1)
    assert guard.allows(torch.tensor(0.5), 1)  # a finite loss resets the run of bad ones
    assert guard.skipped == 2 and guard.in_a_row == 0


def test_guard_raises_after_patience():
    guard = NonFiniteGuard(patience=2)
    assert not guard.allows(torch.tensor(math.nan), 5)
    with pytest.raises(NonFiniteLossError, match="2 consecutive batches at step 5"):
        guard.allows(torch.tensor(-math.inf), 5)
