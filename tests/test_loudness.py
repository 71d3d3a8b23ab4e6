"""Loudness and full-scale checks (presto_ray/eval/loudness.py) on synthetic clips of known RMS."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from presto_ray.eval.loudness import (FULL_SCALE, LOUDNESS_KEYS, SILENCE_DB, loudness_metrics, outside_share,
                                      reference_range, rms_db)

RATE, SECONDS = 8000, 1


def sine(amplitude: float, hz: float = 440.0) -> np.ndarray:
    """A whole number of periods: RMS exactly amplitude / sqrt(2)."""
    t = np.arange(RATE * SECONDS) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_rms_db_of_known_signals():
    square = np.where(np.arange(RATE) % 20 < 10, 0.5, -0.5).astype(np.float32)  # RMS 0.5
    db = rms_db(np.stack([sine(1.0), sine(0.1), square, np.zeros(RATE, np.float32)]))
    assert db == pytest.approx([-3.0103, -23.0103, -6.0206, SILENCE_DB], abs=1e-3)
    # a list of clips of different lengths and shapes (stereo [2, n]) is read clip by clip
    assert rms_db([sine(0.1), np.stack([sine(0.1)[:4000]] * 2)]) == pytest.approx([-23.0103] * 2, abs=1e-3)
    with pytest.raises(ValueError, match="at least one clip"):
        rms_db([])


def test_reference_range_is_the_1st_to_99th_percentile_and_outside_counts_both_sides_and_nan():
    ref = np.arange(101, dtype=np.float64) - 60.0  # -60 .. 40: p1 = -59, p99 = 39
    assert reference_range(ref) == pytest.approx((-59.0, 39.0))
    assert outside_share(np.array([-60.0, -59.0, 0.0, 39.0, 39.5, np.nan]), (-59.0, 39.0)) == pytest.approx(3 / 6)


def test_loudness_metrics_on_clips_of_known_rms():
    # the reference: sines from -40 to -20 dB RMS (amplitudes sqrt(2) x 10^(dB/20))
    ref_db = np.linspace(-40.0, -20.0, 41)
    reference = [sine(math.sqrt(2) * 10 ** (d / 20)) for d in ref_db]
    p1, p99 = np.percentile(ref_db, [1, 99])
    # generated: two inside, one too quiet (-50 dB), one clipping blast (a square wave at +-1: 0 dB)
    quiet, inside_a, inside_b = (sine(math.sqrt(2) * 10 ** (d / 20)) for d in (-50.0, -30.0, -25.0))
    blast = np.where(np.arange(RATE) % 40 < 20, 1.0, -1.0).astype(np.float32)
    m = loudness_metrics(np.stack([quiet, inside_a, inside_b, blast]), rms_db(reference))
    assert m["reference_loudness_db_range"] == pytest.approx([p1, p99], abs=1e-3)
    assert m["loudness_db_range"] == pytest.approx([-50.0, 0.0], abs=1e-3)
    assert m["loudness_db_median"] == pytest.approx((-30.0 + -25.0) / 2, abs=1e-3)
    assert m["loudness_outside_share"] == pytest.approx(0.5)
    assert m["clips_at_full_scale"] == 1 and m["full_scale_share"] == pytest.approx(RATE / (4 * RATE))
    json.dumps(m)  # plain JSON types: metrics.json takes it as it is
    assert tuple(m) == LOUDNESS_KEYS


def test_full_scale_threshold_is_the_named_constant():
    just_below = np.full(100, np.nextafter(np.float32(FULL_SCALE), np.float32(0)), np.float32)
    at = just_below.copy()
    at[7] = -FULL_SCALE
    m = loudness_metrics([just_below, at], rms_db([just_below]))
    assert m["clips_at_full_scale"] == 1 and m["full_scale_share"] == pytest.approx(1 / 200)
