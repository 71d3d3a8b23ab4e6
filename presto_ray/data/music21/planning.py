"""Render planning, nothing parsed: :func:`plan_items` shares a number of items among the splits
by their fractions and turns them into :class:`RenderSpec` s. :func:`pick_pieces` orders one
split's pieces by a seeded weighted draw (each style family weighs ~sqrt(its size), so the 8,500
Essen folk songs do not drown the 60 quartet movements); a split with fewer pieces than items
renders its pieces again with render index k = 1, 2, ... (new instruments, tempo and crop)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from presto_ray.data.music21.catalogue import PieceRef, list_pieces
from presto_ray.data.music21.corpus_facts import collection_info
from presto_ray.data.music21.split import SPLITS, check_fractions, split_of


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


def split_counts(num_items: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Items per split, proportional to the fractions (largest remainder; sums to num_items)."""
    fr = check_fractions(fractions)
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
