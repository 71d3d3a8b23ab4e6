"""General MIDI instruments and style-appropriate ensembles for rendering music21 scores.

A *style* (chorale, renaissance, chamber, keyboard, folk_song, fiddle_tune) owns a tempo range
(beats per minute, the beat being the meter's beat), a list of ensembles for polyphonic pieces
and a pool of solo instruments for single melodies. :func:`assign_instruments` picks one
ensemble with a seeded RNG and maps it onto the parts from the highest to the lowest voice;
:func:`octave_shift` moves a part by whole octaves into the chosen instrument's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Instrument:
    """One General MIDI melodic program. ``low``/``high``: playable MIDI pitch range.
    ``countable``: several parts on it are several players ("two violins"); otherwise (piano,
    organ, choir, string section) several parts are one instrument."""

    name: str
    program: int
    low: int
    high: int
    countable: bool = True


def _table(*rows: tuple) -> dict[str, Instrument]:
    return {r[0]: Instrument(*r) for r in rows}


INSTRUMENTS: dict[str, Instrument] = _table(
    ("piano", 0, 21, 108, False),
    ("harpsichord", 6, 29, 89, False),
    ("celesta", 8, 60, 108, False),
    ("music box", 10, 60, 108, False),
    ("vibraphone", 11, 53, 89, False),
    ("marimba", 12, 45, 96, False),
    ("dulcimer", 15, 48, 84, False),
    ("church organ", 19, 24, 96, False),
    ("reed organ", 20, 36, 96, False),
    ("accordion", 21, 41, 93, False),
    ("harmonica", 22, 60, 96),
    ("bandoneon", 23, 41, 93, False),
    ("classical guitar", 24, 40, 83, False),
    ("acoustic guitar", 25, 40, 83, False),
    ("violin", 40, 55, 100),
    ("viola", 41, 48, 88),
    ("cello", 42, 36, 76),
    ("double bass", 43, 28, 60),
    ("pizzicato strings", 45, 28, 96, False),
    ("harp", 46, 24, 103, False),
    ("strings", 48, 28, 96, False),
    ("choir", 52, 40, 81, False),
    ("voices", 53, 40, 81, False),
    ("trumpet", 56, 54, 82),
    ("trombone", 57, 40, 72),
    ("tuba", 58, 28, 58),
    ("french horn", 60, 41, 77),
    ("brass section", 61, 36, 84, False),
    ("soprano saxophone", 64, 56, 87),
    ("alto saxophone", 65, 49, 80),
    ("tenor saxophone", 66, 44, 75),
    ("oboe", 68, 58, 91),
    ("english horn", 69, 52, 81),
    ("bassoon", 70, 34, 75),
    ("clarinet", 71, 50, 91),
    ("piccolo", 72, 74, 108),
    ("flute", 73, 60, 96),
    ("recorder", 74, 60, 86),
    ("pan flute", 75, 60, 91),
    ("tin whistle", 78, 62, 93),
    ("ocarina", 79, 60, 84),
    ("banjo", 105, 48, 84),
    ("bagpipe", 109, 55, 79),
    ("fiddle", 110, 55, 96),
)


@dataclass(frozen=True)
class Ensemble:
    """Instruments for the voices of a polyphonic piece, highest voice first.

    mode ``rank``: parts sorted from high to low are spread over ``names`` (first and last part
    get the first and last name); one name means every part plays it. mode ``lead``: the highest
    part gets ``names[0]``, all other parts ``names[1]`` (melody plus accompaniment)."""

    names: tuple[str, ...]
    mode: str = "rank"


def _ens(*names: str, mode: str = "rank") -> Ensemble:
    return Ensemble(tuple(names), mode)


@dataclass(frozen=True)
class Style:
    """Rendering choices for one family of repertoire: ``bpm_range`` (inclusive, in meter beats),
    ``ensembles`` for pieces with several parts, ``solos`` for single melodies, and
    ``double_prob``: chance that a single melody is doubled by a second solo instrument."""

    key: str
    bpm_range: tuple[int, int]
    ensembles: tuple[Ensemble, ...]
    solos: tuple[str, ...]
    double_prob: float = 0.0


_MELODY_SOLOS = ("flute", "violin", "oboe", "clarinet", "recorder", "trumpet", "cello",
                 "french horn", "piano", "harpsichord", "church organ", "voices")
_FOLK_SOLOS = ("flute", "violin", "clarinet", "oboe", "recorder", "accordion", "harmonica",
               "classical guitar", "acoustic guitar", "piano", "music box", "pan flute", "ocarina",
               "marimba", "vibraphone", "harp", "trumpet", "french horn", "voices", "dulcimer")
_FIDDLE_SOLOS = ("fiddle", "fiddle", "tin whistle", "flute", "accordion", "banjo", "harp",
                 "bagpipe", "piano", "acoustic guitar", "harmonica", "piccolo", "recorder",
                 "bandoneon", "dulcimer")

STYLES: dict[str, Style] = {
    "chorale": Style("chorale", (56, 100), (
        _ens("choir"), _ens("voices"), _ens("church organ"), _ens("reed organ"), _ens("strings"),
        _ens("violin", "violin", "viola", "cello"), _ens("flute", "oboe", "clarinet", "bassoon"),
        _ens("trumpet", "trumpet", "french horn", "trombone"), _ens("trumpet", "french horn", "trombone", "tuba"),
        _ens("recorder"), _ens("piano"), _ens("harpsichord"), _ens("oboe", "violin", "viola", "cello"),
        _ens("brass section"), _ens("voices", "voices", "voices", "double bass"),
    ), _MELODY_SOLOS),
    "renaissance": Style("renaissance", (48, 84), (
        _ens("choir"), _ens("voices"), _ens("recorder", "recorder", "recorder", "bassoon"),
        _ens("violin", "viola", "cello", "double bass"), _ens("trumpet", "trombone", "trombone", "tuba"),
        _ens("church organ"), _ens("flute", "recorder", "english horn", "bassoon"),
        _ens("harpsichord"), _ens("classical guitar"), _ens("strings"), _ens("harp"),
    ), ("recorder", "voices", "flute", "violin", "classical guitar", "harp", "church organ", "english horn")),
    "chamber": Style("chamber", (60, 144), (
        _ens("violin", "violin", "viola", "cello"), _ens("violin", "violin", "viola", "cello"),
        _ens("strings"), _ens("piano"), _ens("flute", "oboe", "clarinet", "bassoon"),
        _ens("flute", "violin", "viola", "cello"), _ens("clarinet", "violin", "viola", "cello"),
        _ens("harpsichord"), _ens("oboe", "clarinet", "french horn", "bassoon"),
        _ens("pizzicato strings"),
    ), _MELODY_SOLOS),
    "keyboard": Style("keyboard", (56, 132), (
        _ens("piano"), _ens("piano"), _ens("harpsichord"), _ens("vibraphone"), _ens("marimba"),
        _ens("classical guitar"), _ens("strings"), _ens("harp"), _ens("church organ"),
        _ens("violin", "piano", mode="lead"), _ens("flute", "piano", mode="lead"),
        _ens("clarinet", "piano", mode="lead"), _ens("cello", "piano", mode="lead"),
        _ens("voices", "piano", mode="lead"), _ens("oboe", "harpsichord", mode="lead"),
        _ens("trumpet", "church organ", mode="lead"), _ens("alto saxophone", "piano", mode="lead"),
        _ens("violin", "viola", "cello"),
    ), _MELODY_SOLOS),
    "folk_song": Style("folk_song", (66, 132), (
        _ens("accordion"), _ens("classical guitar"), _ens("flute", "classical guitar", mode="lead"),
        _ens("violin", "accordion", mode="lead"), _ens("strings"), _ens("piano"),
    ), _FOLK_SOLOS, double_prob=0.35),
    "fiddle_tune": Style("fiddle_tune", (76, 132), (
        _ens("fiddle", "acoustic guitar", mode="lead"), _ens("tin whistle", "harp", mode="lead"),
        _ens("accordion"), _ens("fiddle", "fiddle", "cello"), _ens("piano"),
    ), _FIDDLE_SOLOS, double_prob=0.4),
}


def ensemble_indices(num_parts: int, ensemble: Ensemble) -> list[int]:
    """Index into ``ensemble.names`` for each register rank 0 (highest) .. num_parts-1."""
    n_names = len(ensemble.names)
    if n_names == 1 or num_parts == 1:
        return [0] * num_parts
    if ensemble.mode == "lead":
        return [0] + [1] * (num_parts - 1)
    return [int(math.floor(r * (n_names - 1) / (num_parts - 1) + 0.5)) for r in range(num_parts)]


def assign_instruments(style_key: str, mean_pitches: list[float], rng: np.random.Generator) -> list[str]:
    """Instrument names for the parts of one piece.

    mean_pitches: [P] mean MIDI pitch of each part (in score order). Returns [P] names in
    score order, or [2] names for a single melody doubled by a second instrument. Draws from
    ``rng`` in a fixed order, so the same RNG state gives the same choice."""
    style = STYLES.get(style_key, STYLES["keyboard"])
    num_parts = len(mean_pitches)
    if num_parts == 1:
        lead = str(rng.choice(style.solos))
        if rng.random() < style.double_prob:
            second = str(rng.choice([s for s in style.solos if s != lead]))
            return [lead, second]
        return [lead]
    ensemble = style.ensembles[int(rng.integers(len(style.ensembles)))]
    order = np.argsort(-np.asarray(mean_pitches, dtype=float), kind="stable")  # rank -> part index
    names = [""] * num_parts
    for rank, idx in zip(range(num_parts), ensemble_indices(num_parts, ensemble)):
        names[int(order[rank])] = ensemble.names[idx]
    return names


def octave_shift(pitches: np.ndarray, name: str) -> int:
    """Whole-octave transposition (in semitones, a multiple of 12 in [-36, 36]) that puts the
    most notes of pitches [N] (MIDI numbers) inside the instrument's range; ties prefer the
    smallest move."""
    inst = INSTRUMENTS[name]
    pitches = np.asarray(pitches)
    best, best_in = 0, -1
    for k in sorted(range(-3, 4), key=abs):
        shifted = pitches + 12 * k
        inside = int(((shifted >= inst.low) & (shifted <= inst.high)).sum())
        if inside > best_in:
            best, best_in = 12 * k, inside
    return best
