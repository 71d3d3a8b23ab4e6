"""How far apart the evaluation embedding puts a same-renderer set and degraded sets.

24 music21 folk tunes (9 s, piano, 100 BPM, 16 kHz): half rendered with FluidR3_GM form set A; the
other half are rendered with FluidR3_GM (set B), with TimGM6mb, with noise at 10 dB SNR, and
low-passed at 1.5 kHz. Prints FAD and MMD of each against A over musicnn penultimate features.

    python benchmarks/embedding_separation.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    import test_embedding_ranking as t  # the test's own rendering and embedding

    from presto_ray.eval.metrics import fad, mmd

    feats = t.feature_sets()
    print(f"{'set vs A':18s} {'frames':>6s} {'FAD':>8s} {'MMD':>8s}")
    for name in ("b", "other_soundfont", "noise_10db", "lowpass"):
        print(f"{name:18s} {len(feats[name]):6d} {fad(feats['a'], feats[name]):8.2f} {mmd(feats['a'], feats[name]):8.1f}")


if __name__ == "__main__":
    main()
