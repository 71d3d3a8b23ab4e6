"""Score parsing: a corpus or user score file -> music21 stream (:func:`load_score`, failures
returned as a reason) -> :class:`ScoreNotes` (:func:`extract_notes`: notes per part with ties
merged, bar starts, the meter's beat, key, cleaned title and composer, locale). Repeat signs in
the score are not expanded."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from presto_ray.data.music21.catalogue import corpus_root


@dataclass
class PartNotes:
    """Notes of one part in quarter lengths: onset [N], duration [N], MIDI pitch [N]."""

    onset: np.ndarray
    duration: np.ndarray
    pitch: np.ndarray


@dataclass
class ScoreNotes:
    """What rendering needs from a parsed score. ``length`` and ``bar_starts`` in quarter
    lengths; ``beat``: quarter length of the meter's beat; text facts None when unknown."""

    parts: list[PartNotes]
    length: float
    bar_starts: np.ndarray
    beat: float = 1.0
    meter: str | None = None
    key: str | None = None
    title: str | None = None
    composer: str | None = None
    locale: str | None = None


def load_score(path: str, number: int | None = None) -> tuple[Any, str | None]:
    """Parse a score (corpus-relative or absolute path; ``number`` picks one tune of a
    multi-piece file) -> (music21 stream, None), or (None, reason) when parsing fails."""
    from music21 import converter

    full = Path(path) if Path(path).is_absolute() else corpus_root() / path
    if not full.is_file():
        return None, f"missing file: {path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = converter.parse(str(full), number=number, forceSource=True)
    except Exception as err:  # music21 raises many unrelated types for malformed input
        return None, f"parse failed: {type(err).__name__}: {str(err)[:200]}"
    if score is None:
        return None, "parse failed: nothing parsed"
    return score, None


def _part_notes(part) -> PartNotes:
    """Pitched notes of one part with ties merged (single linear pass, no stripTies)."""
    from music21 import chord, harmony, note

    onsets: list[float] = []
    durs: list[float] = []
    pitches: list[int] = []
    open_ties: dict[int, int] = {}
    for el in part.flatten().getElementsByClass((note.Note, chord.Chord)):
        if isinstance(el, harmony.ChordSymbol):
            continue
        ql = float(el.duration.quarterLength)
        if ql <= 0:  # grace notes
            continue
        off = float(el.offset)
        members = [el] if isinstance(el, note.Note) else list(el.notes)
        for n in members:
            midi = int(round(n.pitch.ps))
            tie = n.tie if n.tie is not None else getattr(el, "tie", None)
            kind = tie.type if tie is not None else None
            idx = open_ties.get(midi)
            if kind in ("stop", "continue") and idx is not None and abs(onsets[idx] + durs[idx] - off) < 1e-3:
                durs[idx] = off + ql - onsets[idx]
                if kind == "stop":
                    del open_ties[midi]
                continue
            onsets.append(off)
            durs.append(ql)
            pitches.append(min(127, max(0, midi)))
            if kind in ("start", "continue"):
                open_ties[midi] = len(onsets) - 1
            else:
                open_ties.pop(midi, None)
    return PartNotes(np.asarray(onsets, float), np.asarray(durs, float), np.asarray(pitches, int))


def _meter(part) -> tuple[str | None, float]:
    """First plausible time signature of a part -> (ratio string, beat quarter length)."""
    from music21 import meter

    for ts in part.flatten().getElementsByClass(meter.TimeSignature):
        try:
            beat = float(ts.beatDuration.quarterLength)
            bar = float(ts.barDuration.quarterLength)
        except Exception:
            continue
        if 1 <= ts.numerator <= 16 and ts.denominator in (1, 2, 4, 8, 16) and bar >= 1.0 and 0.5 <= beat <= 3.0:
            return ts.ratioString, beat
    return None, 1.0


def format_key(k) -> str:
    """music21 Key -> "F# minor", "Bb major", "G dorian"."""
    return f"{k.tonic.name.replace('-', 'b')} {k.mode}"


def _key(score, part) -> str | None:
    """The analysed key when it agrees with the written key signature (this picks the mode),
    else the written key when it names a mode, else a confident analysis, else None."""
    from music21 import key

    written = next(iter(part.flatten().getElementsByClass(key.KeySignature)), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = score.analyze("key")
    except Exception:
        found = None
    if found is not None and written is not None and found.sharps == written.sharps:
        return format_key(found)
    if isinstance(written, key.Key):
        return format_key(written)
    if found is not None and (found.correlationCoefficient or 0) >= 0.8:
        return format_key(found)
    return None


def _clean_title(title: str | None) -> str | None:
    if not title:
        return None
    title = re.sub(r"\([^)]*\)|\[[^\]]*\]|,?\s*S\.\s*\d+.*$", "", str(title))  # Essen "(Band 1), S. 229"
    title = " ".join(title.split()).strip(" .,;:-")
    if title.isupper():
        title = title.title()
    if len(title) < 2 or len(title) > 40 or "music21" in title.lower() or re.search(r"\.(mxl|xml|krn|abc)$", title):
        return None
    return title


def _clean_composer(name: str | None) -> str | None:
    if not name:
        return None
    name = re.sub(r"^by\s+", "", " ".join(str(name).split()).strip(" .,;"), flags=re.I)
    if name.isupper():
        name = name.title()
    if re.search(r"[\d()\[\]]", name) or re.search(r"anonym|collected|unknown|\btrad", name.lower()) or len(name) > 40:
        return None
    return name


def extract_notes(score) -> ScoreNotes:
    """Parsed music21 Score (or Opus whose tunes are voices) -> ScoreNotes. Repeat signs are
    not expanded (music21's expandRepeats takes seconds on some fiddle tunes)."""
    from music21 import stream

    scores = list(score.scores) if isinstance(score, stream.Opus) else [score]
    raw_parts = [p for s in scores for p in (s.parts if s.hasPartLikeStreams() else [s])]
    parts = [pn for pn in (_part_notes(p) for p in raw_parts) if len(pn.onset)]
    first = raw_parts[0] if raw_parts else scores[0]
    notes_end = max((float((pn.onset + pn.duration).max()) for pn in parts), default=0.0)
    length = notes_end
    if len(scores) == 1:
        highest = float(scores[0].highestTime)
        if notes_end <= highest <= notes_end + 8.0:
            length = highest
    bars = np.asarray(sorted({float(m.offset) for m in first.getElementsByClass(stream.Measure)}), float)
    meter_str, beat = _meter(first)
    md = scores[0].metadata if scores[0].metadata is not None else getattr(score, "metadata", None)
    return ScoreNotes(
        parts=parts, length=length, bar_starts=bars, beat=beat, meter=meter_str,
        key=_key(scores[0], first) if parts else None,
        title=_clean_title(md.title) if md is not None else None,
        composer=_clean_composer(md.composer) if md is not None else None,
        locale=md.localeOfComposition if md is not None else None,
    )
