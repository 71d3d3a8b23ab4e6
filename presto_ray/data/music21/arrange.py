"""The seeded musical choices of one rendering and its MIDI file.

:func:`arrange` draws instruments, tempo, velocities and crop from an RNG seeded by (seed, piece,
render index). Tempo: ``bpm`` counts the meter's beat as music21 defines it (quarter in 4/4, half
in 2/2, dotted quarter in 6/8); the MIDI tempo is ``qpm = bpm * beat_quarter_length`` quarter
notes per minute (a meter whose beat gives a qpm outside [30, 320] falls back to quarter-note
beats). Crops start at a note onset on a bar line (the first onset when the piece is just long
enough). A piece shorter than the crop is played again from the top (as a repeated verse), at
most ``max_repeats`` times in all; longer needs are skipped with reason "too short".
:func:`build_midi` writes the notes sounding around the crop at that tempo."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from presto_ray.data.instruments import INSTRUMENTS, STYLES, assign_instruments, octave_shift
from presto_ray.data.music21.parse import ScoreNotes
from presto_ray.data.music21.planning import RenderSpec
from presto_ray.data.music21.split import unit_hash

PREROLL_SECONDS = 1.0


@dataclass
class Arrangement:
    """The seeded choices for one rendering. ``voices``: (part index, instrument name) per
    sounding voice; ``velocity``: [N] per voice; ``shift``: octave transposition per voice."""

    voices: list[tuple[int, str]]
    bpm: float
    qpm: float
    beat: float
    velocity: list[np.ndarray]
    shift: list[int]
    seconds_start: float
    seconds_total: float
    repeats: int
    rng: np.random.Generator = field(repr=False, default=None)  # type: ignore[assignment]  # draws the caption next


def item_rng(seed: int, piece_id: str, render_index: int) -> np.random.Generator:
    """The RNG of one rendering: the same (seed, piece, render index) gives the same draws."""
    return np.random.default_rng([int(seed), int(unit_hash(piece_id) * 2**32), int(render_index)])


def arrange(notes: ScoreNotes, spec: RenderSpec, style: str) -> tuple[Arrangement | None, str | None]:
    """Draw instruments, tempo, velocities and crop start for one rendering (in that order)."""
    rng = item_rng(spec.seed, spec.piece.piece_id, spec.render_index)
    n_parts = len(notes.parts)
    mean_pitch = [float(p.pitch.mean()) for p in notes.parts]
    names = assign_instruments(style, mean_pitch, rng)
    if spec.instruments:
        if len(spec.instruments) not in (1, n_parts):
            raise ValueError(f"{spec.item_id}: {len(spec.instruments)} instruments given for {n_parts} parts")
        unknown = [n for n in spec.instruments if n not in INSTRUMENTS]
        if unknown:
            raise ValueError(f"unknown instrument names {unknown}; known: {sorted(INSTRUMENTS)}")
        names = list(spec.instruments) * (n_parts if len(spec.instruments) == 1 else 1)
    voices = [(i, names[i]) for i in range(n_parts)]
    if n_parts == 1 and len(names) == 2:
        voices.append((0, names[1]))
    lo, hi = STYLES.get(style, STYLES["keyboard"]).bpm_range
    bpm = float(rng.integers(lo, hi + 1))
    if spec.bpm is not None:
        bpm = float(spec.bpm)
    beat = notes.beat
    if not 30.0 <= bpm * beat <= 320.0:
        beat = 1.0
    qpm = bpm * beat
    spq = 60.0 / qpm
    bar_set = set(np.round(notes.bar_starts, 6))
    velocity, shift = [], []
    for j, (part_idx, name) in enumerate(voices):
        part = notes.parts[part_idx]
        base = int(rng.integers(70, 101)) - (12 if j >= n_parts else 0)
        on_bar = np.array([round(o, 6) in bar_set for o in part.onset], bool)
        vel = base + rng.integers(-6, 7, size=len(part.onset)) + 6 * on_bar
        velocity.append(np.clip(vel, 1, 127).astype(int))
        shift.append(octave_shift(part.pitch, name))
    period = notes.length * spq
    first_onset = min(float(p.onset.min()) for p in notes.parts) * spq
    repeats = max(1, math.ceil((first_onset + spec.seconds) / period - 1e-9)) if period > 0 else 0
    if period <= 0 or repeats > spec.max_repeats:
        return None, (f"too short: {period:.1f} s at {bpm:g} BPM needs {repeats} plays "
                      f"for {spec.seconds:g} s (max_repeats {spec.max_repeats})")
    total = repeats * period
    onsets = np.unique(np.concatenate([p.onset for p in notes.parts]))
    on_bars = onsets[np.isin(np.round(onsets, 6), list(bar_set))]
    cands = (on_bars if len(on_bars) else onsets) * spq
    cands = cands[cands + spec.seconds <= total + 1e-6]
    start = float(rng.choice(cands)) if len(cands) else first_onset
    return Arrangement(voices, bpm, qpm, beat, velocity, shift, start, total, repeats, rng), None


def build_midi(notes: ScoreNotes, arr: Arrangement, seconds: float):
    """pretty_midi.PrettyMIDI at tempo ``arr.qpm`` holding the notes that sound in
    [start - PREROLL_SECONDS, start + seconds), times relative to that preroll point.
    Returns (midi, preroll seconds)."""
    import pretty_midi

    spq = 60.0 / arr.qpm
    render_from = max(0.0, arr.seconds_start - PREROLL_SECONDS)
    window_end = arr.seconds_start + seconds
    midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=arr.qpm)
    per_voice = len(arr.voices) <= 15  # one MIDI channel per voice when they fit
    tracks: dict[Any, Any] = {}
    period = notes.length * spq
    for j, (part_idx, name) in enumerate(arr.voices):
        program = INSTRUMENTS[name].program
        track_key = j if per_voice else program
        if track_key not in tracks:
            tracks[track_key] = pretty_midi.Instrument(program=program, name=name)
        track = tracks[track_key]
        part = notes.parts[part_idx]
        pitch = np.clip(part.pitch + arr.shift[j], 0, 127)
        for rep in range(arr.repeats):
            t0 = rep * period + part.onset * spq
            t1 = t0 + part.duration * spq
            keep = (t1 > render_from) & (t0 < window_end)
            for a, b, p, v in zip(t0[keep], t1[keep], pitch[keep], arr.velocity[j][keep]):
                a = max(a, render_from) - render_from
                b = min(b, window_end + 0.5) - render_from
                if b - a > 0.005:
                    track.notes.append(pretty_midi.Note(velocity=int(v), pitch=int(p), start=float(a), end=float(b)))
    midi.instruments = [t for t in tracks.values() if t.notes]
    return midi, arr.seconds_start - render_from
