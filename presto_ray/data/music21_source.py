"""The embedded default music source: music21 corpus pieces rendered by FluidSynth + FluidR3_GM.

Three cheap-to-expensive steps, each usable from a Ray task:

1. :func:`list_pieces` enumerates the corpus from music21's shipped metadata cache (about 1 s,
   nothing parsed) and :func:`split_of` puts every piece group into train/valid/test by a hash
   of (split_seed, group): no piece is in two splits. :func:`pick_pieces` orders one split's
   pieces by a seeded weighted draw (each style family weighs ~sqrt(its size), so the 8,500
   Essen folk songs do not drown the 60 quartet movements).
2. :func:`plan_items` turns a number of items into :class:`RenderSpec` s (no parsing): items are
   shared among splits by the split fractions, and a split with fewer pieces than items renders
   its pieces again with render index k = 1, 2, ... (new instruments, tempo and crop).
3. :func:`render_item` parses one piece (failures are returned as a reason, never raised),
   draws instruments, tempo, crop and caption from an RNG seeded by (seed, piece, k), writes a
   MIDI file at that tempo, renders it with the fluidsynth binary and crops a fixed length.

Tempo: ``bpm`` counts the meter's beat as music21 defines it (quarter in 4/4, half in 2/2,
dotted quarter in 6/8); the MIDI tempo is ``qpm = bpm * beat_quarter_length`` quarter notes per
minute (a meter whose beat gives a qpm outside [30, 320] falls back to quarter-note beats).
Crops start at a note onset on a bar line (the first onset when the piece is just long enough).
A piece shorter than the crop is played again from the top (as a repeated verse), at most
``max_repeats`` times in all; longer needs are skipped with reason "too short". Repeat signs
in the score are not expanded.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from presto_ray.data.captions import CaptionFacts, make_caption
from presto_ray.data.instruments import INSTRUMENTS, STYLES, assign_instruments, octave_shift

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SCORE_EXTENSIONS = (".mxl", ".musicxml", ".xml", ".krn", ".abc")  # preference order for duplicates
EXCLUDED_COLLECTIONS = frozenset({"demos", "theoryExercises", "leadSheet"})
EXCLUDED_PATHS = re.compile(r"^(essenFolksong/test|bach/choraleAnalyses/)")
VOICE_PER_TUNE = frozenset({"josquin"})  # ABC files whose numbered tunes are voices of one piece
MIN_NOTES = 8
PREROLL_SECONDS = 1.0
SOUNDFONT_NAME = "FluidR3_GM.sf2"
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/usr/local/share/soundfonts",
                  "/usr/local/share/sounds/sf2", "/opt/homebrew/share/soundfonts")
FLUIDSYNTH_GAIN = 0.5


# ----------------------------------------------------------------------------- corpus facts

@dataclass(frozen=True)
class CollectionInfo:
    """What the corpus collection tells about its pieces: style family (a key of
    instruments.STYLES), the caption noun, and composer / region when the collection fixes them."""

    style: str
    noun: str
    composer: str | None = None
    region: str | None = None


def _c(style: str, noun: str, composer: str | None = None, region: str | None = None) -> CollectionInfo:
    return CollectionInfo(style, noun, composer, region)


COLLECTIONS: dict[str, CollectionInfo] = {
    "bach": _c("chorale", "chorale", "J. S. Bach"),
    "palestrina": _c("renaissance", "Renaissance mass movement", "Palestrina"),
    "josquin": _c("renaissance", "Renaissance polyphonic song", "Josquin des Prez"),
    "monteverdi": _c("renaissance", "madrigal", "Claudio Monteverdi"),
    "lusitano": _c("renaissance", "madrigal", "Vicente Lusitano"),
    "luca": _c("renaissance", "Renaissance mass movement"),
    "trecento": _c("renaissance", "medieval Italian song"),
    "ciconia": _c("renaissance", "medieval motet", "Johannes Ciconia"),
    "beethoven": _c("chamber", "string quartet movement", "Beethoven"),
    "haydn": _c("chamber", "string quartet movement", "Haydn"),
    "mozart": _c("chamber", "string quartet movement", "Mozart"),
    "corelli": _c("chamber", "trio sonata movement", "Arcangelo Corelli"),
    "schumann_robert": _c("keyboard", "art song", "Robert Schumann"),
    "schumann_clara": _c("keyboard", "piano piece", "Clara Schumann"),
    "chopin": _c("keyboard", "piano piece", "Chopin"),
    "joplin": _c("keyboard", "ragtime piece", "Scott Joplin"),
    "cpebach": _c("keyboard", "keyboard piece", "C. P. E. Bach"),
    "schubert": _c("keyboard", "art song", "Franz Schubert"),
    "verdi": _c("keyboard", "aria", "Giuseppe Verdi"),
    "handel": _c("keyboard", "aria", "Handel"),
    "weber": _c("keyboard", "concertino", "Carl Maria von Weber"),
    "webern": _c("keyboard", "sacred song", "Anton Webern"),
    "schoenberg": _c("keyboard", "piano piece", "Arnold Schoenberg"),
    "beach": _c("keyboard", "art song", "Amy Beach"),
    "liliuokalani": _c("keyboard", "song", "Liliuokalani"),
    "johnson_j_r": _c("keyboard", "hymn", "J. Rosamond Johnson"),
    "essenFolksong": _c("folk_song", "folk song"),
    "miscFolk": _c("folk_song", "folk tune"),
    "oneills1850": _c("fiddle_tune", "dance tune", region="Ireland"),
    "ryansMammoth": _c("fiddle_tune", "fiddle tune"),
    "nottingham-dataset": _c("fiddle_tune", "folk dance tune"),
    "airdsAirs": _c("fiddle_tune", "air"),
}
PATH_COLLECTIONS = (  # sub-collections that differ from their collection
    (re.compile(r"^schumann_robert/opus41"), _c("chamber", "string quartet movement", "Robert Schumann")),
    (re.compile(r"^schumann_clara/opus17"), _c("chamber", "piano trio movement", "Clara Schumann")),
)
UNKNOWN_COLLECTION = _c("keyboard", "piece")

TUNE_TYPES = ("slip jig", "set dance", "jig", "reel", "hornpipe", "strathspey", "polka", "waltz",
              "march", "mazurka", "schottische", "quadrille", "lament", "fling", "minuet", "gavotte",
              "polonaise", "lullaby", "rag", "air")
TUNE_TYPE_STYLES = frozenset({"folk_song", "fiddle_tune", "keyboard"})  # nouns taken from titles
TRADITIONAL_STYLES = frozenset({"folk_song", "fiddle_tune"})  # their ABC "C:" field holds origins, not composers

REGIONS = {  # Essen folk-song locales are German; first token found wins
    "Deutschland": "Germany", "BRD": "Germany", "DDR": "Germany", "China": "China",
    "Lothringen": "Lorraine", "Luxemburg": "Luxembourg", "Frankreich": "France", "Elsass": "Alsace",
    "Polen": "Poland", "Jugoslawien": "Yugoslavia", "Schweiz": "Switzerland",
    "Niederlande": "the Netherlands", "Oesterreich": "Austria", "Irland": "Ireland",
    "UdSSR": "the Soviet Union", "Russland": "Russia", "Ungarn": "Hungary",
    "Tschechoslowakei": "Czechoslovakia", "Rumaenien": "Romania", "Taiwan": "Taiwan",
    "Schweden": "Sweden", "Italien": "Italy", "Ukraine": "Ukraine", "Amerika": "America",
    "USA": "America", "Nord - Amerika": "America", "SCOTCH": "Scotland", "SCOTCH.": "Scotland",
    "Schottland": "Scotland", "Daenemark": "Denmark", "England": "England", "Kroatien": "Croatia",
    "Mexiko": "Mexico", "Norwegen": "Norway", "Slowakei": "Slovakia", "Slowenien": "Slovenia",
    "Tirol": "Tyrol", "Steiermark": "Austria", "Boehmen": "Bohemia", "Schlesien": "Silesia",
}


def collection_info(path: str) -> CollectionInfo:
    """CollectionInfo for a corpus-relative path such as ``bach/bwv101.7.mxl``."""
    for pattern, info in PATH_COLLECTIONS:
        if pattern.match(path):
            return info
    return COLLECTIONS.get(path.split("/", 1)[0], UNKNOWN_COLLECTION)


def region_from_locale(locale: str | None) -> str | None:
    """English region name from a music21 ``localeOfComposition`` (Essen: German words)."""
    if not locale:
        return None
    for token in re.split(r"[,;/()]", locale):
        name = REGIONS.get(token.strip())
        if name:
            return name
    return None


def tune_type(*texts: str | None) -> str | None:
    """Dance or form name ("reel", "waltz") found as a word in a title or file stem."""
    for text in texts:
        if not text:
            continue
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text).replace("_", " ").lower()
        for name in TUNE_TYPES:
            if re.search(rf"\b{name}s?\b", words):
                return name
    return None


# ----------------------------------------------------------------------------- enumeration

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
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _corpus_root() -> Path:
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


def _unit_hash(text: str) -> float:
    """Deterministic float in [0, 1) from text (sha256; same in every process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(SPLITS) or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions {fractions} must be {len(SPLITS)} non-negative numbers summing to 1 "
                         f"(train, valid, test)")
    return fr  # type: ignore[return-value]


def split_of(group: str, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), split_seed: int = 0) -> str:
    """"train", "valid" or "test" for a piece group: a hash of (split_seed, group) compared with
    the cumulative fractions. The same group always lands in the same split."""
    fr = _check_fractions(fractions)
    u = _unit_hash(f"{split_seed}/{group}")
    cum = 0.0
    for name, f in zip(SPLITS, fr):
        cum += f
        if u < cum:
            return name
    return next(n for n, f in zip(reversed(SPLITS), reversed(fr)) if f > 0)


def pick_pieces(split: str, n: int | None, seed: int, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                split_seed: int = 0, pieces: Iterable[PieceRef] | None = None) -> list[PieceRef]:
    """Up to ``n`` distinct pieces of ``split`` (all when n is None), in a seeded weighted order:
    a piece's weight is 1/sqrt(number of pieces of its style family in the split), so families
    are drawn in proportion to the square root of their size. The order does not depend on n."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}', expected one of {SPLITS}")
    source = list_pieces() if pieces is None else pieces
    pool = [p for p in source if split_of(p.group, fractions, split_seed) == split]
    if not pool:
        return []
    styles = [collection_info(p.path).style if not Path(p.path).is_absolute() else p.collection for p in pool]
    sizes = {s: styles.count(s) for s in set(styles)}
    weights = np.array([1.0 / math.sqrt(sizes[s]) for s in styles])
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    keys = np.log(rng.random(len(pool))) / weights  # Efraimidis-Spirakis weighted order
    order = np.argsort(-keys, kind="stable")
    return [pool[i] for i in order[: len(pool) if n is None else n]]


# ----------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class RenderSpec:
    """Everything :func:`render_item` needs for one item. ``bpm`` and ``instruments`` override
    the seeded draws (instrument names of instruments.INSTRUMENTS, one per part or one for all)."""

    piece: PieceRef
    split: str
    render_index: int
    seed: int
    sample_rate: int = 16000
    seconds: float = 4.0
    soundfont: str | None = None
    max_repeats: int = 4
    bpm: float | None = None
    instruments: tuple[str, ...] | None = None

    @property
    def item_id(self) -> str:
        return f"{self.piece.piece_id}-r{self.render_index}"

    def to_row(self) -> dict[str, Any]:
        """Flat dict of plain values (a Ray Data row)."""
        row = asdict(self)
        piece = row.pop("piece")
        row.update({f"piece_{k}" if k not in ("piece_id",) else k: v for k, v in piece.items()})
        row["instruments"] = list(self.instruments) if self.instruments else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RenderSpec":
        """Inverse of :meth:`to_row` (accepts numpy scalars from Ray batches)."""
        def opt(v, kind):
            missing = v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))
            return None if missing else kind(v)
        piece = PieceRef(str(row["piece_id"]), str(row["piece_path"]), opt(row.get("piece_number"), int),
                         str(row["piece_collection"]), str(row["piece_group"]), int(row.get("piece_num_parts") or 0))
        inst = row.get("instruments")
        inst = tuple(str(x) for x in inst) if isinstance(inst, (list, tuple, np.ndarray)) and len(inst) else None
        return cls(piece, str(row["split"]), int(row["render_index"]), int(row["seed"]), int(row["sample_rate"]),
                   float(row["seconds"]), opt(row.get("soundfont"), str), int(row.get("max_repeats", 4)),
                   opt(row.get("bpm"), float), inst)


def split_counts(num_items: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Items per split, proportional to the fractions (largest remainder; sums to num_items)."""
    fr = _check_fractions(fractions)
    raw = [num_items * f for f in fr]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(fr)), key=lambda i: raw[i] - counts[i], reverse=True)[: num_items - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


def plan_items(num_items: int, split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), seed: int = 0, *,
               sample_rate: int = 16000, seconds: float = 4.0, soundfont: str | None = None, split_seed: int = 0,
               max_repeats: int = 4, pieces: Iterable[PieceRef] | None = None) -> list[RenderSpec]:
    """``num_items`` RenderSpecs (train first, then valid, then test), shared among splits by
    ``split_fractions``; each split cycles through :func:`pick_pieces` order, item i of a split
    using piece i mod P with render index i // P. Cheap: nothing is parsed."""
    pieces = list_pieces() if pieces is None else tuple(pieces)
    specs: list[RenderSpec] = []
    for split, count in split_counts(num_items, split_fractions).items():
        if count == 0:
            continue
        order = pick_pieces(split, None, seed, split_fractions, split_seed, pieces)
        if not order:
            raise ValueError(f"split '{split}' has no pieces (fractions {split_fractions}, split_seed {split_seed})")
        for i in range(count):
            specs.append(RenderSpec(order[i % len(order)], split, i // len(order), seed, sample_rate, seconds,
                                    soundfont, max_repeats))
    return specs


# ----------------------------------------------------------------------------- tools

def find_soundfont(path: str | Path | None = None) -> str:
    """Path of the FluidR3_GM soundfont (``path`` when given). Raises FileNotFoundError naming
    the package to install when it is missing."""
    hint = ("install the Debian/Ubuntu package fluid-soundfont-gm "
            "(apt-get install -y --no-install-recommends fluid-soundfont-gm) or pass a .sf2 path")
    if path is not None:
        if Path(path).is_file():
            return str(path)
        raise FileNotFoundError(f"soundfont '{path}' does not exist: {hint}")
    for folder in SOUNDFONT_DIRS:
        candidate = Path(folder) / SOUNDFONT_NAME
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"{SOUNDFONT_NAME} not found in {', '.join(SOUNDFONT_DIRS)}: {hint}")


def find_fluidsynth(executable: str = "fluidsynth") -> str:
    """Path of the fluidsynth binary; FileNotFoundError naming the package when missing."""
    found = shutil.which(executable)
    if found is None:
        raise FileNotFoundError(f"the '{executable}' binary is not on PATH: install the fluidsynth package "
                                f"(apt-get install -y --no-install-recommends fluidsynth; brew install fluid-synth)")
    return found


def render_midi(midi_path: str | Path, wav_path: str | Path, sample_rate: int, soundfont: str,
                executable: str = "fluidsynth") -> np.ndarray:
    """Render a MIDI file with the fluidsynth CLI (no reverb/chorus, gain 0.5, float WAV) ->
    mono float32 [n] at ``sample_rate``. Raises RuntimeError when fluidsynth fails."""
    cmd = [find_fluidsynth(executable), "-ni", "-q", "-R", "0", "-C", "0", "-g", str(FLUIDSYNTH_GAIN),
           "-r", str(int(sample_rate)), "-O", "float", "-o", "synth.dynamic-sample-loading=1",
           "-F", str(wav_path), str(soundfont), str(midi_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not Path(wav_path).is_file():
        raise RuntimeError(f"fluidsynth failed ({proc.returncode}) on {midi_path}: {proc.stderr.strip()[-400:]}")
    import soundfile

    audio, rate = soundfile.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate} Hz")
    return audio.mean(axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- score -> notes

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

    full = Path(path) if Path(path).is_absolute() else _corpus_root() / path
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


# ----------------------------------------------------------------------------- render

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
    return np.random.default_rng([int(seed), int(_unit_hash(piece_id) * 2**32), int(render_index)])


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


def _facts(notes: ScoreNotes, piece: PieceRef, info: CollectionInfo, arr: Arrangement) -> CaptionFacts:
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
