"""Audio checks of generated clips against the reference (issue #19): per-clip loudness against the
reference's 1st-99th percentile range, and samples at full scale.

Loudness is the RMS of a clip's samples in dB relative to full scale, ``20 log10(rms)`` with
full scale the amplitude 1 (a full-scale square wave reads 0 dB, a full-scale sine -3.01 dB); no
weighting, no gating. A silent clip reads :data:`SILENCE_DB`.
"""

from __future__ import annotations

import numpy as np

FULL_SCALE = 0.999
"""A sample with ``|x| >= FULL_SCALE`` is at full scale (clipped, or as loud as a 16-bit WAV holds)."""
SILENCE_DB = -120.0
"""The loudness of a silent clip: RMS is floored at 1e-6 before the log."""
REFERENCE_PERCENTILES = (1.0, 99.0)
"""The reference loudness range: these percentiles of the reference clips' loudness."""
LOUDNESS_KEYS = ("loudness_db_median", "loudness_db_range", "reference_loudness_db_range", "loudness_outside_share",
                 "full_scale_share", "clips_at_full_scale")
"""The keys of :func:`loudness_metrics`, as metrics.json and the quickstart's entries hold them."""


def _clips(clips) -> list[np.ndarray]:
    """clips: [N, samples] (or N arrays of any shape, each flattened) -> N float64 vectors."""
    out = [np.asarray(c, np.float64).ravel() for c in clips]
    if not out or any(c.size == 0 for c in out):
        raise ValueError("loudness needs at least one clip, each with samples")
    return out


def rms_db(clips) -> np.ndarray:
    """Loudness [N] in dB re full scale (RMS, see the module docstring) of clips [N, samples]."""
    rms = np.array([np.sqrt(np.mean(c * c)) for c in _clips(clips)])
    return 20.0 * np.log10(np.maximum(rms, 10.0 ** (SILENCE_DB / 20.0)))


def reference_range(reference_db: np.ndarray) -> tuple[float, float]:
    """(p1, p99) of the reference clips' loudness [M] in dB (linear interpolation between clips)."""
    low, high = np.percentile(np.asarray(reference_db, np.float64), REFERENCE_PERCENTILES)
    return float(low), float(high)


def outside_share(db: np.ndarray, low_high: tuple[float, float]) -> float:
    """Share (0..1) of clips whose loudness [N] lies outside [low, high] (a NaN counts as outside)."""
    db = np.asarray(db, np.float64)
    low, high = low_high
    return float(np.mean(~((db >= low) & (db <= high))))


def loudness_metrics(generated, reference_db: np.ndarray) -> dict:
    """The audio checks of generated clips [N, samples] against the loudness [M] of the reference
    clips (:func:`rms_db` of them, so a cached reference needs no audio):

    - ``loudness_db_median``, ``loudness_db_range`` [min, max]: the generated clips' loudness (dB);
    - ``reference_loudness_db_range`` [p1, p99]: the reference's 1st-99th percentile loudness (dB);
    - ``loudness_outside_share``: share of generated clips outside that range (0..1);
    - ``full_scale_share``: share of all generated samples at full scale (:data:`FULL_SCALE`);
    - ``clips_at_full_scale``: how many generated clips have any sample at full scale.
    """
    clips = _clips(generated)
    db = rms_db(clips)
    ref = reference_range(reference_db)
    at_full = [np.abs(c) >= FULL_SCALE for c in clips]
    return {"loudness_db_median": float(np.median(db)), "loudness_db_range": [float(db.min()), float(db.max())],
            "reference_loudness_db_range": list(ref), "loudness_outside_share": outside_share(db, ref),
            "full_scale_share": float(sum(a.sum() for a in at_full) / sum(a.size for a in at_full)),
            "clips_at_full_scale": int(sum(bool(a.any()) for a in at_full))}
