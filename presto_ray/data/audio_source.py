"""The ``audio`` source: users' own music, a folder or bucket of audio files plus a captions file.

Layout. ``audio_uri`` (local path, ``file://`` or ``s3://``) holds audio files in any format
soundfile reads (wav, flac, ogg/vorbis/opus, mp3, aiff ...), in sub-folders if wanted. The
captions file (``captions_uri``, anywhere) maps each file's path relative to ``audio_uri`` to a
caption, an optional tempo and an optional split:

- CSV (``.csv``, comma) or TSV (``.tsv``, tab) with a header row: columns ``file`` (or ``path``),
  ``caption``, and optionally ``bpm`` and ``split``; other columns are ignored;
- JSON Lines (``.jsonl`` / ``.ndjson``): one object per line with the same keys.

An empty ``bpm`` means unknown (stored as NaN); an empty ``split`` lets the path's hash decide
(:func:`presto_ray.data.music21.split.split_of` with ``split_seed``), so every crop of a file
lands in the split of its file. Files in the folder that the captions file does not list are
not used.

Two steps, as in :mod:`presto_ray.data.music21`:

1. :func:`plan_audio_items` reads the captions file, checks that every listed file exists
   (one listing of the folder; nothing is downloaded) and returns plain-dict plan rows, one per
   (file, crop index k). Bad input raises ValueError naming the captions file and line.
2. :func:`load_audio_item` decodes one row's file (whole object into memory for ``s3://``),
   downmixes to mono, resamples with ``torchaudio.functional.resample`` and cuts crop k. Only the
   crop (plus the resampling kernel's margin) is decoded and resampled, aligned so that it equals
   the same slice of the whole file resampled. Bad audio is returned as a skip reason, never
   raised; storage errors (after retries) are raised with the URI.

Crop placement: with K crops per file, crop k starts at ``floor((k + u) / K * (S + 1))`` samples
(at the target rate), where S = resampled length - clip length and u in [0, 1) is a hash of
(seed, id): crops are spread over the file and do not move between runs. A file shorter than the
clip is used from its start and zero-padded at the end when at least half of the clip is audio,
and skipped ("too short") otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow.fs as pafs
import soundfile
import torch
import torchaudio

from presto_ray.data import storage
from presto_ray.data.records import skipped_record
from presto_ray.data.music21.split import SPLITS, split_of

log = logging.getLogger(__name__)

FILE_COLUMNS = ("file", "path")  # the first one present names the audio file
CAPTION_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                              ".au", ".snd", ".caf", ".w64", ".rf64"})  # containers libsndfile decodes
SILENCE_RMS = 1e-4
MIN_AUDIO_FRACTION = 0.5  # a shorter file needs at least this much of the clip as real audio
MAX_BPM = 1000.0
MAX_LISTED_ERRORS = 20
_LOWPASS_FILTER_WIDTH = 6  # torchaudio.functional.resample defaults, used for the crop margin
_ROLLOFF = 0.99


# ----------------------------------------------------------------------------- captions file

@dataclass(frozen=True)
class CaptionEntry:
    """One usable line of the captions file: ``path`` relative to the audio folder, ``bpm``
    NaN when unknown, ``split`` None when the path's hash decides."""

    line: int
    path: str
    caption: str
    bpm: float
    split: str | None


def _read_text(uri: str) -> str:
    fs, path = storage.resolve(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    data = storage.with_retries(read, uri, what="read captions file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"captions file '{uri}' is not UTF-8 text: {err}") from err


def _normalize_path(value: Any) -> str:
    """Relative POSIX path of an audio file, or ValueError saying why it is not one."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty file path")
    text = value.strip().replace("\\", "/")
    if "://" in text or text.startswith("/"):
        raise ValueError(f"file '{value}' must be a path relative to the audio folder")
    path = posixpath.normpath(text)
    if path == "." or path == ".." or path.startswith("../"):
        raise ValueError(f"file '{value}' points outside the audio folder")
    if posixpath.splitext(path)[1].lower() not in AUDIO_EXTENSIONS:
        raise ValueError(f"file '{value}' has an unknown audio extension "
                         f"(soundfile reads: {', '.join(sorted(AUDIO_EXTENSIONS))})")
    return path


def _parse_bpm(value: Any) -> float:
    """Tempo in beats per minute; NaN for an empty value; ValueError for anything else odd."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    bad = ValueError(f"bad bpm {value!r}: expected a positive number of beats per minute "
                     f"(at most {MAX_BPM:g}), or an empty value when unknown")
    if isinstance(value, bool):
        raise bad
    try:
        bpm = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not math.isfinite(bpm) or not 0 < bpm <= MAX_BPM:
        raise bad
    return bpm


def _parse_split(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    split = str(value).strip().lower()
    if split not in SPLITS:
        raise ValueError(f"unknown split {value!r}: expected one of {', '.join(SPLITS)} or an empty value")
    return split


def _entry(line: int, fields: dict[str, Any], file_key: str) -> CaptionEntry:
    path = _normalize_path(fields.get(file_key))
    caption = fields.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"caption of '{path}' is not text: {caption!r}")
    if caption is None or not caption.strip():
        raise ValueError(f"empty caption for '{path}'")
    return CaptionEntry(line, path, " ".join(caption.split()), _parse_bpm(fields.get("bpm")),
                        _parse_split(fields.get("split")))


def _csv_rows(text: str, delimiter: str, uri: str) -> Iterable[tuple[int, dict[str, Any], str, str | None]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    file_key = next((c for c in FILE_COLUMNS if c in header), None)
    missing = [name for name, ok in (("file", file_key), ("caption", "caption" in header)) if not ok]
    if missing:
        raise ValueError(f"{uri} line 1: missing column {', '.join(repr(m) for m in missing)} "
                         f"(header has: {', '.join(header) or 'nothing'}; expected file, caption[, bpm, split])")
    for row in reader:
        if None in row:
            yield reader.line_num, {}, file_key, (f"{len(header) + len(row[None])} fields but the header "
                                                  f"has {len(header)} columns")
            continue
        if all(v is None or not str(v).strip() for v in row.values()):
            continue
        yield reader.line_num, row, file_key, None


def _jsonl_rows(text: str) -> Iterable[tuple[int, dict[str, Any], str, str | None]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            yield line, {}, "file", f"not valid JSON: {err.msg}"
            continue
        if not isinstance(obj, dict):
            yield line, {}, "file", f"expected a JSON object, got {type(obj).__name__}"
            continue
        file_key = next((c for c in FILE_COLUMNS if c in obj), None)
        missing = [name for name, ok in (("file", file_key), ("caption", "caption" in obj)) if not ok]
        if missing:
            yield line, {}, "file", f"missing field {', '.join(repr(m) for m in missing)}"
            continue
        yield line, obj, file_key, None


def _raise_all(uri: str, errors: list[str]) -> None:
    if errors:
        shown = errors[:MAX_LISTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise ValueError(f"captions file '{uri}' has {len(errors)} problem(s):\n" + "\n".join(shown) + more)


def read_captions(captions_uri: str, present: set[str] | None = None, audio_uri: str = "") -> list[CaptionEntry]:
    """Parse the captions file (CSV/TSV with header, or JSON Lines; chosen by extension) into
    entries in file order. Raises ValueError naming the file and line for: an unknown captions
    format, a missing column/field, an empty caption, a path that is absolute, leaves the folder
    or has an unknown audio extension, a bad bpm, an unknown split, a file listed twice, a file not
    in ``present`` (the relative paths under ``audio_uri``; not checked when None), or no entries
    at all. Every line's problem is listed in one error (up to MAX_LISTED_ERRORS)."""
    ext = posixpath.splitext(str(captions_uri).rstrip("/"))[1].lower()
    if ext not in CAPTION_FORMATS:
        raise ValueError(f"captions file '{captions_uri}': unknown extension '{ext}' "
                         f"(expected {', '.join(CAPTION_FORMATS)})")
    text = _read_text(captions_uri)
    delimiter = CAPTION_FORMATS[ext]
    rows = _jsonl_rows(text) if delimiter is None else _csv_rows(text, delimiter, captions_uri)
    entries: list[CaptionEntry] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for line, fields, file_key, problem in rows:
        try:
            if problem is not None:
                raise ValueError(problem)
            entry = _entry(line, fields, file_key)
            if entry.path in first_line:
                raise ValueError(f"file '{entry.path}' is listed again (first on line {first_line[entry.path]})")
            if present is not None and entry.path not in present:
                raise ValueError(f"file '{entry.path}' is not in '{audio_uri}'")
        except ValueError as err:
            errors.append(f"{captions_uri} line {line}: {err}")
            continue
        first_line[entry.path] = line
        entries.append(entry)
    _raise_all(captions_uri, errors)
    if not entries:
        raise ValueError(f"captions file '{captions_uri}' lists no audio files")
    return entries


# ----------------------------------------------------------------------------- plan

def list_audio_files(audio_uri: str) -> set[str]:
    """Paths (relative, '/'-separated) of every file under ``audio_uri``, from one recursive
    listing of its filesystem (nothing is read). FileNotFoundError when there is none."""
    fs, base = storage.resolve(audio_uri)
    base = base.rstrip("/")
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = storage.with_retries(lambda: fs.get_file_info(selector), audio_uri, what="list audio folder")
    files = {i.path[len(base):].lstrip("/") for i in infos
             if i.type == pafs.FileType.File and i.path.startswith(base + "/")}
    if not files:
        raise FileNotFoundError(f"audio folder '{audio_uri}' does not exist or holds no files")
    return files


def plan_audio_items(audio_uri: str, captions_uri: str, *, clip_seconds: float, sample_rate: int,
                     split_fractions: tuple[float, float, float], split_seed: int, seed: int,
                     crops_per_file: int = 1) -> list[dict]:
    """Plan rows (plain dicts, Ray Data rows) for every file of the captions file, ``crops_per_file``
    per file: train first, then valid, then test, each in captions-file order, crops of a file
    together. Keys: id "<path>-c<k>", split, audio_uri, path (relative), caption, bpm (NaN when
    unknown), crop_index k, crops_per_file, clip_seconds, sample_rate, seed, captions_line.

    A file's split is the captions file's ``split`` when given, else split_of(path,
    split_fractions, split_seed). Raises ValueError naming the captions file and line for bad
    captions and for listed files that are not in ``audio_uri`` (checked by one listing)."""
    if clip_seconds <= 0 or sample_rate <= 0 or crops_per_file < 1:
        raise ValueError(f"need clip_seconds > 0, sample_rate > 0 and crops_per_file >= 1, got "
                         f"{clip_seconds}, {sample_rate}, {crops_per_file}")
    present = list_audio_files(audio_uri)
    entries = read_captions(captions_uri, present, audio_uri)
    unused = len(present) - len(entries)
    if unused > 0:
        log.info("audio source: %d file(s) under %s are not in the captions file and are not used", unused, audio_uri)
    split = {e.path: e.split or split_of(e.path, split_fractions, split_seed) for e in entries}
    rows = []
    for name in SPLITS:
        for e in entries:
            if split[e.path] != name:
                continue
            for k in range(int(crops_per_file)):
                rows.append({
                    "id": f"{e.path}-c{k}", "split": name, "audio_uri": storage.join(audio_uri, e.path),
                    "path": e.path, "caption": e.caption, "bpm": float(e.bpm), "crop_index": k,
                    "crops_per_file": int(crops_per_file), "clip_seconds": float(clip_seconds),
                    "sample_rate": int(sample_rate), "seed": int(seed), "captions_line": e.line,
                })
    return rows


# ----------------------------------------------------------------------------- load

def crop_start(total: int, n: int, k: int, crops: int, seed: int, item_id: str) -> int:
    """First sample (target rate) of crop ``k`` of ``crops`` for a resampled file of ``total``
    samples and a clip of ``n`` samples: floor((k + u) / crops * (total - n + 1)), u in [0, 1)
    hashed from (seed, item_id); 0 when total <= n."""
    span = total - n
    if span <= 0:
        return 0
    digest = hashlib.sha256(f"crop/{seed}/{item_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return min(span, int((k + u) / crops * (span + 1)))


def resampled_length(frames: int, orig_sr: int, new_sr: int) -> int:
    """Length of ``torchaudio.functional.resample`` output for ``frames`` input samples."""
    if orig_sr == new_sr:
        return frames
    g = math.gcd(orig_sr, new_sr)
    return math.ceil(frames * (new_sr // g) / (orig_sr // g))


def _resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """x: [m] float32 at orig_sr -> [resampled_length(m)] float32 at new_sr."""
    if orig_sr == new_sr:
        return x
    return torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(x)), orig_sr, new_sr).numpy()


def _open_source(audio_uri: str) -> Any:
    """What soundfile opens: the local path, or the object's bytes (BytesIO) for remote URIs."""
    if not storage.is_remote(audio_uri):
        path = storage.local_path(audio_uri)
        if not path.is_file():
            raise FileNotFoundError(f"audio file '{audio_uri}' does not exist")
        return str(path)
    fs, path = storage.resolve(audio_uri)

    def read() -> bytes:
        with fs.open_input_file(path) as f:
            return f.read()

    return io.BytesIO(storage.with_retries(read, audio_uri, what="read audio file"))


def load_audio_item(row: dict) -> tuple[dict | None, str | None]:
    """Decode one plan row -> (record, None), or (None, reason) for a file that cannot be used:
    "decode failed: <path>: ..." (corrupt, truncated or undecodable), "too short: <path>: ..."
    (less than half the clip), "silent: <path>: ..." (clip RMS below SILENCE_RMS) or
    "non-finite audio: <path>". Storage errors (missing object, access denied, retries
    exhausted) are raised with the URI.

    record: exactly the keys of prepare's ``_render``: id, split, skip_reason "", audio float32
    [round(clip_seconds * sample_rate)] mono, caption, bpm float32 (NaN when unknown),
    seconds_start / seconds_total float32 (crop start and file duration, seconds), piece_id (the
    relative path), instruments "" and source_metadata (JSON: path, sample_rate, channels,
    frames, duration, format, subtype of the original file; crop_index, start_sample at the
    target rate, padded_samples)."""
    item_id, path, uri = str(row["id"]), str(row["path"]), str(row["audio_uri"])
    sample_rate, clip_seconds = int(row["sample_rate"]), float(row["clip_seconds"])
    k, crops, seed = int(row["crop_index"]), int(row.get("crops_per_file", 1)), int(row["seed"])
    n = int(round(clip_seconds * sample_rate))
    source = _open_source(uri)
    try:
        with soundfile.SoundFile(source) as snd:
            orig_sr, channels, frames = int(snd.samplerate), int(snd.channels), int(snd.frames)
            fmt, subtype = str(snd.format), str(snd.subtype)
            total = resampled_length(frames, orig_sr, sample_rate)
            if total < MIN_AUDIO_FRACTION * n:
                return None, (f"too short: {path}: {frames / max(orig_sr, 1):.2f} s is less than "
                              f"{MIN_AUDIO_FRACTION:g} of the {clip_seconds:g} s clip")
            start = crop_start(total, n, k, crops, seed, item_id)
            first, stop, offset = _segment(start, n, frames, orig_sr, sample_rate)
            snd.seek(first)
            data = snd.read(stop - first, dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - any decoder error means this file is unusable
        return None, f"decode failed: {path}: {type(err).__name__}: {str(err)[:200]}"
    if len(data) != stop - first:
        return None, (f"decode failed: {path}: got {len(data)} of {stop - first} frames from frame {first} "
                      f"(truncated file?)")
    mono = data.mean(axis=1, dtype=np.float32)
    clip = _resample(mono, orig_sr, sample_rate)[offset: offset + n]
    padded = n - len(clip)
    if padded > 0:
        clip = np.pad(clip, (0, padded))
    clip = clip.astype(np.float32, copy=False)
    if not np.isfinite(clip).all():
        return None, f"non-finite audio: {path}"
    rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
    if rms < SILENCE_RMS:
        return None, f"silent: {path}: clip rms {rms:.2e} < {SILENCE_RMS:g}"
    meta = {"path": path, "sample_rate": orig_sr, "channels": channels, "frames": frames,
            "duration": frames / orig_sr, "format": fmt, "subtype": subtype, "crop_index": k,
            "start_sample": start, "padded_samples": padded}
    record = {
        "id": item_id, "split": str(row["split"]), "skip_reason": "", "audio": clip,
        "caption": str(row["caption"]), "bpm": np.float32(row["bpm"]),
        "seconds_start": np.float32(start / sample_rate), "seconds_total": np.float32(frames / orig_sr),
        "piece_id": path, "instruments": "", "source_metadata": json.dumps(meta, sort_keys=True),
    }
    return record, None


def _segment(start: int, n: int, frames: int, orig_sr: int, new_sr: int) -> tuple[int, int, int]:
    """Input frames [first, stop) to decode so that resampling them and taking
    ``[offset: offset + n]`` equals samples [start, start + n) of the whole file resampled:
    ``first`` is a multiple of orig_sr / gcd (the resampler's input stride, so output phases line
    up) and both ends keep a margin wider than the sinc kernel."""
    if orig_sr == new_sr:
        return start, min(frames, start + n), 0
    g = math.gcd(orig_sr, new_sr)
    stride, up = orig_sr // g, new_sr // g
    margin = math.ceil(_LOWPASS_FILTER_WIDTH * orig_sr / (_ROLLOFF * min(orig_sr, new_sr))) + stride + 1
    first = max(0, start * stride // up - margin) // stride * stride
    stop = min(frames, -(-(start + n) * stride // up) + margin)
    return first, stop, start - first // stride * up


def render_audio_row(row: dict) -> dict:
    """Ray Data task for prepare: a plan row -> :func:`load_audio_item`'s record. A skipped file
    gives a row with the SAME columns (skip_reason set, audio zeros [round(clip_seconds *
    sample_rate)], caption "", bpm NaN, seconds 0, source_metadata "{}"): Ray Data cannot
    concatenate blocks whose rows lack the ``audio`` tensor column with blocks that have it."""
    record, reason = load_audio_item(row)
    if record is not None:
        return record
    n = int(round(float(row["clip_seconds"]) * int(row["sample_rate"])))
    return skipped_record(row["id"], row["split"], reason, n, row["path"])