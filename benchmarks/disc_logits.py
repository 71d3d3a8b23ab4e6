"""Presto-S iteration cost with the discriminator reading the fake score's block k, side by side:

  full pass   the old way: the whole fake-score backbone and output layer run, block k's state tapped
  blocks 0..k the current GuidanceModel: the backbone stops after block k (``hidden_state``)

Same roles, weights, batch, seeds and threads; plain PyTorch roles (benchmarks/distill_overhead.py
shows Ray Train + DeepSpeed adds about 2% on top). Cycles of ``ttur`` iterations alternate between
the two, and the figure is the median per-iteration time over cycles.

    python benchmarks/disc_logits.py --config tiny --cycles 6 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def full_pass_logits(guidance):
    """Make ``guidance`` compute logits through its whole backbone (the way before blocks 0..k)."""
    forward = guidance.forward

    def logits_from_full_pass(x, sigma, cond, mode="score", **kw):
        if mode != "logits":
            return forward(x, sigma, cond, mode=mode, **kw)
        _, hidden = guidance.fake_score(x, sigma, cond, return_hidden=[guidance.disc_block], **kw)
        return guidance.head(hidden[guidance.disc_block])

    guidance.forward = logits_from_full_pass


def main() -> None:
    from distill_overhead import build

    from presto_ray.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--cycles", type=int, default=6, help="ttur cycles timed per variant (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    variants = {"blocks 0..k": build(cfg), "full pass": build(cfg)}
    full_pass_logits(variants["full pass"][0].guidance.module)
    times: dict[str, list[float]] = {name: [] for name in variants}
    iteration = {name: 0 for name in variants}
    generators = {name: torch.Generator().manual_seed(0) for name in variants}
    for cycle in range(args.cycles + 1):
        for name, (roles, update, x0, cond) in variants.items():
            t0 = time.perf_counter()
            for _ in range(update.ttur):
                update.step(roles, x0, cond, iteration[name], generator=generators[name])
                iteration[name] += 1
            if cycle:  # the first cycle warms up
                times[name].append((time.perf_counter() - t0) / update.ttur)
    fast, slow = (statistics.median(times[n]) for n in ("blocks 0..k", "full pass"))
    block = variants["full pass"][0].guidance.module.disc_block
    print(f"config {args.config}: depth {cfg.model.depth}, disc_block {block}, batch {cfg.train.batch_size}, "
          f"ttur {variants['full pass'][1].ttur}, threads {args.threads}, {args.cycles} cycles each")
    print("| discriminator input | ms per Presto-S iteration |\n| --- | --- |")
    print(f"| full pass, block {block} tapped | {1000 * slow:.1f} |\n| blocks 0..{block} only | {1000 * fast:.1f} |")
    print(f"speed-up: x{slow / fast:.2f} ({100 * (1 - fast / slow):.0f}% less time per iteration)")


if __name__ == "__main__":
    main()
