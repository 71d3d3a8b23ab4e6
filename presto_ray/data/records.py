"""The record a prepare source hands to the encoder: one rendered or decoded clip.

Keys: id, split, skip_reason ("" when usable), audio float32 [n], caption, bpm (NaN = unknown),
seconds_start, seconds_total, piece_id, instruments, source_metadata (JSON string).
"""

from __future__ import annotations

import math

import numpy as np


def skipped_record(item_id: str, split: str, reason: str, num_samples: int, piece_id: str) -> dict:
    """A record for an item that cannot be used. It keeps every column (audio zeros [num_samples]):
    Ray Data cannot concatenate blocks whose rows lack the ``audio`` tensor column with blocks
    that have it."""
    return {
        "id": str(item_id), "split": str(split), "skip_reason": reason or "unknown",
        "audio": np.zeros(int(num_samples), np.float32), "caption": "", "bpm": np.float32(math.nan),
        "seconds_start": np.float32(0.0), "seconds_total": np.float32(0.0), "piece_id": str(piece_id),
        "instruments": "", "source_metadata": "{}",
    }
