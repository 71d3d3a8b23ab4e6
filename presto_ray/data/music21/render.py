"""One item end to end: parse the piece, arrange it, render its MIDI with FluidSynth, crop a
fixed length and caption it (:func:`render_item`; a bad piece is returned as a skip reason,
never raised)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from presto_ray.data.captions import CaptionFacts, make_caption
from presto_ray.data.instruments import INSTRUMENTS
from presto_ray.data.music21.arrange import Arrangement, arrange, build_midi
from presto_ray.data.music21.catalogue import MIN_NOTES, PieceRef
from presto_ray.data.music21.corpus_facts import (TRADITIONAL_STYLES, TUNE_TYPE_STYLES, UNKNOWN_COLLECTION,
                                                  CollectionInfo, collection_info, region_from_locale, tune_type)
from presto_ray.data.music21.parse import ScoreNotes, extract_notes, load_score
from presto_ray.data.music21.planning import RenderSpec
from presto_ray.data.music21.synth import find_fluidsynth, find_soundfont, render_midi

log = logging.getLogger(__name__)


def _facts(notes: ScoreNotes, piece: PieceRef, info: CollectionInfo, arr: Arrangement) -> CaptionFacts:
    """What the caption may say about one rendering: the collection's noun (or a dance named in
    the title), key, meter, composer (not for traditional styles), region and title."""
    stem = Path(piece.path).stem
    noun = info.noun
    if info.style in TUNE_TYPE_STYLES:
        noun = tune_type(notes.title, stem) or noun
    region = region_from_locale(notes.locale) or info.region
    composer = info.composer or (None if info.style in TRADITIONAL_STYLES else notes.composer)
    return CaptionFacts(voices=tuple(n for _, n in arr.voices), bpm=arr.bpm, noun=noun, key=notes.key,
                        meter=notes.meter, composer=composer, region=region, title=notes.title)


def render_item(spec: RenderSpec | dict, keep_midi: str | Path | None = None) -> tuple[dict | None, str | None]:
    """Render one item -> (record, None), or (None, reason) when the piece cannot be used
    (parse failure, no notes, too short, silent or failed render). Never raises for a bad
    piece; raises FileNotFoundError when fluidsynth or the soundfont is missing.

    seconds_start: crop start in the rendered piece (seconds at the drawn tempo); seconds_total:
    length of the rendered piece (all plays). record: id, piece_id, split, audio (float32 [round(seconds * sample_rate)], mono),
    sample_rate, seconds_start, seconds_total, bpm, instruments (distinct names in score-part
    order, a doubling instrument last), caption, metadata (title, composer, collection, style, key, meter, region,
    num_parts, beat_quarter_length, qpm, programs, repeats, render_index, seed, path, number).
    ``keep_midi``: folder where the rendered MIDI is kept as ``<id>.mid``."""
    if isinstance(spec, dict):
        spec = RenderSpec.from_row(spec)
    if not 8000 <= spec.sample_rate <= 96000:
        raise ValueError(f"sample_rate {spec.sample_rate} is outside fluidsynth's 8000..96000 Hz")
    soundfont = find_soundfont(spec.soundfont)
    find_fluidsynth()
    piece = spec.piece
    score, reason = load_score(piece.path, piece.number)
    if score is None:
        return None, reason
    try:
        notes = extract_notes(score)
    except Exception as err:
        return None, f"note extraction failed: {type(err).__name__}: {str(err)[:200]}"
    if not notes.parts:
        return None, "no notes"
    if sum(len(p.onset) for p in notes.parts) < MIN_NOTES:
        return None, f"fewer than {MIN_NOTES} notes"
    info = collection_info(piece.path) if not Path(piece.path).is_absolute() else UNKNOWN_COLLECTION
    arr, reason = arrange(notes, spec, info.style)
    if arr is None:
        return None, reason
    midi, preroll = build_midi(notes, arr, spec.seconds)
    n = int(round(spec.seconds * spec.sample_rate))
    with tempfile.TemporaryDirectory(prefix="presto-m21-") as tmp:
        midi_path = Path(tmp) / f"{spec.item_id}.mid"
        midi.write(str(midi_path))
        if keep_midi is not None:
            Path(keep_midi).mkdir(parents=True, exist_ok=True)
            shutil.copy(midi_path, Path(keep_midi) / midi_path.name)
        try:
            audio = render_midi(midi_path, Path(tmp) / "out.wav", spec.sample_rate, soundfont)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            log.warning("render of %s failed: %s", spec.item_id, err)
            return None, f"render failed: {str(err)[:200]}"
    offset = int(round(preroll * spec.sample_rate))
    audio = audio[offset: offset + n]
    if len(audio) < n:
        audio = np.pad(audio, (0, n - len(audio)))
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    if not np.isfinite(audio).all() or rms < 1e-4:
        return None, f"silent render (rms {rms:.2e})"
    peak = float(np.abs(audio).max())
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    facts = _facts(notes, piece, info, arr)
    caption = make_caption(facts, arr.rng)
    metadata = {
        "title": notes.title, "composer": facts.composer, "collection": piece.collection, "style": info.style,
        "key": notes.key, "meter": notes.meter, "region": facts.region, "num_parts": len(notes.parts),
        "beat_quarter_length": arr.beat, "qpm": arr.qpm, "programs": [INSTRUMENTS[n].program for _, n in arr.voices],
        "repeats": arr.repeats, "render_index": spec.render_index, "seed": spec.seed, "path": piece.path,
        "number": piece.number,
    }
    record = {
        "id": spec.item_id, "piece_id": piece.piece_id, "split": spec.split, "audio": audio.astype(np.float32),
        "sample_rate": int(spec.sample_rate), "seconds_start": float(arr.seconds_start),
        "seconds_total": float(arr.seconds_total), "bpm": float(arr.bpm),
        "instruments": list(dict.fromkeys(n for _, n in arr.voices)), "caption": caption, "metadata": metadata,
    }
    return record, None


def render_items(specs: Iterable[RenderSpec | dict]) -> Iterator[tuple[RenderSpec, dict | None, str | None]]:
    """Render specs one after another, yielding (spec, record or None, skip reason or None)."""
    for spec in specs:
        spec = RenderSpec.from_row(spec) if isinstance(spec, dict) else spec
        record, reason = render_item(spec)
        if reason is not None:
            log.info("skipped %s: %s", spec.item_id, reason)
        yield spec, record, reason
