"""A small in-memory text-to-audio set of synthesised melodies, for tests and smoke runs.

Each example is a melody (one note per beat from a pentatonic scale) with a chosen timbre,
register and tempo, encoded by the real codec; its caption names those choices and is encoded
by the real text encoder. The rows follow the latent-shard columns of DESIGN.md, so training code
cannot tell them from shards.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from presto_ray.config import PrestoConfig

TIMBRES = {  # name -> relative amplitudes of harmonics 1, 2, 3, ...
    "pure sine": [1.0],
    "hollow square-wave": [1.0, 0.0, 1 / 3, 0.0, 1 / 5, 0.0, 1 / 7],
    "bright sawtooth": [1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 1 / 7, 1 / 8],
    "soft flute-like": [1.0, 0.25, 0.06],
}
REGISTERS = {"low": 110.0, "middle": 220.0, "high": 440.0}  # lowest note of the scale, Hz
PENTATONIC = [0, 2, 4, 7, 9, 12]
TEMPLATES = [
    "a {timbre} melody in the {register} register at {bpm} BPM",
    "{register} {timbre} tune, {bpm} BPM",
    "{bpm} BPM melody played on a {timbre} synth in a {register} register",
]


def render_melody(timbre: str, base_hz: float, bpm: float, seconds: float, sample_rate: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Synthesise one melody -> float32 [n] in [-1, 1], n = round(seconds * sample_rate)."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    beat = 60.0 / bpm
    wav = np.zeros(n)
    for start in np.arange(0.0, seconds, beat):
        freq = base_hz * 2 ** (rng.choice(PENTATONIC) / 12)
        on = (t >= start) & (t < start + beat)
        tt = t[on] - start
        env = np.minimum(tt / 0.01, 1.0) * np.exp(-3.0 * tt / beat)
        tone = sum(a * np.sin(2 * math.pi * freq * (k + 1) * tt) for k, a in enumerate(TIMBRES[timbre]))
        wav[on] += env * tone
    return (0.5 * wav / max(np.abs(wav).max(), 1e-6)).astype(np.float32)


def build_tone_rows(cfg: PrestoConfig, codec, text_encoder) -> list[dict]:
    """cfg.data.num_examples rows with columns id, latent [C, T] float16, caption,
    text_states [L, Dt] float16, text_mask [L] bool, bpm, seconds_start, seconds_total."""
    rng = np.random.default_rng(cfg.data.seed)
    seconds = cfg.clip_seconds
    frames = cfg.model.latent_frames
    rows: list[dict] = []
    batch = 64
    for lo in range(0, cfg.data.num_examples, batch):
        count = min(batch, cfg.data.num_examples - lo)
        specs = []
        for _ in range(count):
            timbre = str(rng.choice(list(TIMBRES)))
            register = str(rng.choice(list(REGISTERS)))
            bpm = int(rng.integers(60, 161))
            template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
            specs.append((timbre, register, bpm, template.format(timbre=timbre, register=register, bpm=bpm)))
        wavs = torch.stack([
            torch.from_numpy(render_melody(t, REGISTERS[r], b, seconds, cfg.codec.sample_rate, rng))
            for t, r, b, _ in specs
        ])
        latents = codec.encode(wavs)[..., :frames]
        states, mask = text_encoder.encode([s[3] for s in specs])
        for j, (_, _, bpm, caption) in enumerate(specs):
            rows.append({
                "id": f"tone-{lo + j:05d}",
                "latent": latents[j].numpy().astype(np.float16),
                "caption": caption,
                "text_states": states[j].numpy().astype(np.float16),
                "text_mask": mask[j].numpy(),
                "bpm": np.float32(bpm),
                "seconds_start": np.float32(0.0),
                "seconds_total": np.float32(seconds),
            })
    return rows
