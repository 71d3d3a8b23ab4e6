"""The embedded default music source: music21 corpus pieces rendered by FluidSynth + FluidR3_GM.

Three cheap-to-expensive steps, each usable from a Ray task:

1. :func:`list_pieces` (catalogue) enumerates the corpus from music21's shipped metadata cache
   (about 1 s, nothing parsed) and :func:`split_of` (split) puts every piece group into
   train/valid/test by a hash of (split_seed, group): no piece is in two splits.
2. :func:`plan_items` (planning) turns a number of items into :class:`RenderSpec` s (no
   parsing): items are shared among splits by the split fractions, each split's pieces in a
   seeded weighted order (:func:`pick_pieces`), and a split with fewer pieces than items renders
   its pieces again with render index k = 1, 2, ... (new instruments, tempo and crop).
3. :func:`render_item` (render) parses one piece (parse; failures are returned as a reason,
   never raised), draws instruments, tempo, crop (arrange) and caption from an RNG seeded by
   (seed, piece, k), writes a MIDI file at that tempo, renders it with the fluidsynth binary
   (synth) and crops a fixed length. Collection facts for captions live in corpus_facts.
"""

from presto_ray.data.music21.catalogue import PieceRef, corpus_root, list_pieces, piece_from_file
from presto_ray.data.music21.corpus_facts import collection_info
from presto_ray.data.music21.planning import RenderSpec, pick_pieces, plan_items
from presto_ray.data.music21.render import render_item, render_items
from presto_ray.data.music21.split import SPLITS, split_of
from presto_ray.data.music21.synth import find_fluidsynth, find_soundfont

__all__ = ["SPLITS", "PieceRef", "RenderSpec", "collection_info", "corpus_root", "find_fluidsynth", "find_soundfont",
           "list_pieces", "pick_pieces", "piece_from_file", "plan_items", "render_item", "render_items", "split_of"]
