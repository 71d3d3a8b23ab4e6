"""The catalogue of renderable pieces: :func:`list_pieces` enumerates the music21 corpus from its
shipped metadata cache (about 1 s, nothing parsed), :func:`piece_from_file` names a user's own
score file. A :class:`PieceRef` carries the group that decides its split (variants of one
chorale share a group)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

SCORE_EXTENSIONS = (".mxl", ".musicxml", ".xml", ".krn", ".abc")  # preference order for duplicates
EXCLUDED_COLLECTIONS = frozenset({"demos", "theoryExercises", "leadSheet"})
EXCLUDED_PATHS = re.compile(r"^(essenFolksong/test|bach/choraleAnalyses/)")
VOICE_PER_TUNE = frozenset({"josquin"})  # ABC files whose numbered tunes are voices of one piece
MIN_NOTES = 8


@dataclass(frozen=True)
class PieceRef:
    """One piece: ``path`` is relative to the music21 corpus (or absolute for a user file),
    ``number`` selects a tune in a multi-piece file (None: the whole file), ``group`` is what the
    split is decided by (variants of one chorale share a group)."""

    piece_id: str
    path: str
    number: int | None
    collection: str
    group: str
    num_parts: int = 0


def piece_from_file(path: str | Path, number: int | None = None, collection: str = "user") -> PieceRef:
    """A PieceRef for any score file music21 can read (absolute path)."""
    path = str(Path(path).resolve())
    pid = _sanitize(Path(path).stem) + (f"-{number}" if number is not None else "")
    return PieceRef(pid, path, number, collection, pid)


def _sanitize(text: str) -> str:
    """Text safe in a piece id: runs of other characters than letters, digits, '.', '_', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def corpus_root() -> Path:
    """Folder of the music21 corpus that corpus-relative piece paths are relative to."""
    from music21 import common

    return Path(common.getCorpusFilePath())


@functools.lru_cache(maxsize=1)
def list_pieces() -> tuple[PieceRef, ...]:
    """All renderable corpus pieces, sorted by piece_id; read from music21's metadata cache
    (no score is parsed; cached in-process). Skips demo/exercise collections, analyses
    (.rntxt), Essen test files, entries with fewer than MIN_NOTES notes, and duplicates of one
    piece in another format (.mxl preferred over .krn). Josquin's ABC voices are one piece."""
    from music21.corpus import corpora

    bundle = corpora.CoreCorpus().metadataBundle
    if bundle is None or len(bundle) == 0:
        raise RuntimeError("music21's corpus metadata cache is empty: reinstall music21 (pip install music21)")
    best: dict[tuple[str, int | None], tuple[int, str, int]] = {}
    voices: dict[str, int] = {}
    entries = getattr(bundle, "_metadataEntries", None)  # iterating the bundle itself is O(n^2)
    for entry in (entries.values() if isinstance(entries, dict) else list(bundle)):
        meta = entry.metadata
        path = str(entry.sourcePath)
        ext = Path(path).suffix.lower()
        coll = path.split("/", 1)[0]
        if meta is None or ext not in SCORE_EXTENSIONS or coll in EXCLUDED_COLLECTIONS or EXCLUDED_PATHS.match(path):
            continue
        if (meta.noteCount or 0) < MIN_NOTES:
            continue
        if coll in VOICE_PER_TUNE and entry.number is not None:
            voices[path] = voices.get(path, 0) + 1
            continue
        number = int(entry.number) if entry.number is not None and str(entry.number).isdigit() else None
        if entry.number is not None and number is None:
            continue
        stem = path[: -len(ext)]
        rank = SCORE_EXTENSIONS.index(ext)
        key = (stem, number)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, path, int(meta.numberOfParts or 0))
    for path, count in voices.items():
        best[(path[: -len(Path(path).suffix)], None)] = (0, path, count)
    pieces = []
    for (stem, number), (_, path, parts) in best.items():
        suffix = f"-{number}" if number is not None else ""
        coll = path.split("/", 1)[0]
        group_stem = re.sub(r"-[^./]*$", "", stem) if coll == "bach" else stem
        pieces.append(PieceRef(_sanitize(stem.replace("/", ".")) + suffix, path, number, coll,
                               _sanitize(group_stem.replace("/", ".")) + suffix, parts))
    pieces.sort(key=lambda p: p.piece_id)
    if len({p.piece_id for p in pieces}) != len(pieces):
        raise RuntimeError("music21 corpus enumeration produced duplicate piece ids")
    return tuple(pieces)
