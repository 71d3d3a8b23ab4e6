"""Train / valid / test assignment by hashing: a piece group (or an audio file's path) lands in
the split where a hash of (split_seed, group) falls among the cumulative split fractions, the
same in every process, so no piece is in two splits."""

from __future__ import annotations

import hashlib
import math

SPLITS = ("train", "valid", "test")


def unit_hash(text: str) -> float:
    """Deterministic float in [0, 1) from text (sha256; same in every process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """The split fractions as floats; ValueError unless three non-negative numbers summing to 1."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(SPLITS) or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions {fractions} must be {len(SPLITS)} non-negative numbers summing to 1 "
                         f"(train, valid, test)")
    return fr  # type: ignore[return-value]


def split_of(group: str, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), split_seed: int = 0) -> str:
    """"train", "valid" or "test" for a piece group: a hash of (split_seed, group) compared with
    the cumulative fractions. The same group always lands in the same split."""
    fr = check_fractions(fractions)
    u = unit_hash(f"{split_seed}/{group}")
    cum = 0.0
    for name, f in zip(SPLITS, fr):
        cum += f
        if u < cum:
            return name
    return next(n for n, f in zip(reversed(SPLITS), reversed(fr)) if f > 0)
