"""The evaluation embedding separates what it should: on music21 pieces rendered by FluidSynth,
a second set from the same renderer is closer (FAD, MMD over musicnn features) than the same
pieces rendered with another soundfont, with noise at 10 dB SNR, or low-passed at 1.5 kHz."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from presto_ray.data import music21 as m
from presto_ray.eval.metrics import fad, mmd

pytest.importorskip("musicnn", reason="the musicnn weights come with `pip install --no-deps musicnn==0.1.0`")

FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
TIM = "/usr/share/sounds/sf2/TimGM6mb.sf2"  # apt package timgm6mb-soundfont (infra/install.sh)


def _render(piece, soundfont: str) -> np.ndarray | None:
    record, _ = m.render_item(m.RenderSpec(piece, "train", 0, 0, 16000, 9.0, soundfont, 4, 100.0, ("piano",)))
    return None if record is None else record["audio"]


def feature_sets() -> dict[str, np.ndarray]:
    """musicnn features [frames, 200] of set A and of the four sets compared with it
    (benchmarks/embedding_separation.py prints their distances)."""
    from presto_ray.eval.musicnn import MusicnnEmbedder

    pieces = [p for p in m.list_pieces() if p.collection in ("essenFolksong", "oneills1850")][:240:10]
    rng = np.random.default_rng(0)
    sets: dict[str, list[np.ndarray]] = {"a": [], "b": [], "other_soundfont": [], "noise_10db": [], "lowpass": []}
    for i, piece in enumerate(pieces):
        audio = _render(piece, FLUID)
        if audio is None:
            continue
        if i % 2 == 0:
            sets["a"].append(audio)
            continue
        sets["b"].append(audio)
        sets["other_soundfont"].append(_render(piece, TIM))
        noise = rng.normal(size=audio.shape) * np.sqrt(np.mean(audio**2) / 10)
        sets["noise_10db"].append((audio + noise).astype(np.float32))
        sets["lowpass"].append(torchaudio.functional.lowpass_biquad(torch.from_numpy(audio), 16000, 1500.0).numpy())
    assert min(len(v) for v in sets.values()) >= 10
    embedder = MusicnnEmbedder()
    return {k: np.concatenate([embedder.embed(a, 16000)["features"].numpy() for a in v]) for k, v in sets.items()}


@pytest.fixture(scope="module")
def features():
    return feature_sets()


@pytest.mark.parametrize("degraded", ["other_soundfont", "noise_10db", "lowpass"])
def test_same_renderer_is_closer_than_a_degraded_set(features, degraded):
    same_fad, other_fad = fad(features["a"], features["b"]), fad(features["a"], features[degraded])
    same_mmd, other_mmd = mmd(features["a"], features["b"]), mmd(features["a"], features[degraded])
    assert other_fad > 2 * same_fad, (same_fad, other_fad)
    assert other_mmd > 4 * same_mmd, (same_mmd, other_mmd)
