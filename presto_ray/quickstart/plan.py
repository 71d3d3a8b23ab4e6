"""How big each quickstart stage is, in one place.

The quickstart should finish in 20 minutes on a 2-core CPU with the ``tiny`` preset (issue #18); it
took 20.9 and 26.7 in two idle runs (docs/benchmarks.md has each stage's time). Each field says what its stage
costs there; costs grow about linearly with the size. Everything else
(model, batch size, learning rates, DiT depth) comes from the config the quickstart is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from presto_ray.config import DiTConfig
from presto_ray.distill.methods import Method

METHODS = ("presto-l", "presto-s", "presto-ls")
"""The students every quickstart distils, in order (presto-ls starts from the presto-l run)."""
BASELINES = ("dmd2", "ase", "cd")
"""The paper's baselines, distilled too with ``with_baselines``."""


def _default_distill_steps() -> dict[str, int]:
    # iterations; presto-s, presto-ls and dmd2 at ttur 1 (_default_ttur): 300 generator updates
    # each for presto-s and dmd2, as cd; presto-ls 200 (presto-s's KAD was flat from 100 updates
    # on, docs/results.md). Seconds on an idle 2-core CPU, with ~15-20 s of Ray Train start-up each:
    # presto-l, ase ~6.5 it/s (60 s); presto-s ~1.9 it/s at ttur 2, ~3.1 it/s at ttur 5; cd
    # ~3.3 it/s (135 s)
    return {"presto-l": 300, "presto-s": 300, "presto-ls": 200, "dmd2": 300, "ase": 300, "cd": 300}


def _default_ttur() -> dict[str, int]:
    # guidance updates per generator update: the paper's 5 would need 1500 iterations for 300
    # generator updates, about 8 minutes per student on 2 cores; at 2 (600 iterations) presto-s
    # alone took 337 s of the quickstart. 1 fits the 20-minute budget best; the KAD-against-updates
    # curve shows whether the fake score keeps up.
    return {"presto-s": 1, "presto-ls": 1, "dmd2": 1}


@dataclass(frozen=True)
class Plan:
    """Stage sizes of one quickstart. Costs are for ``tiny`` on a 2-core x86_64 CPU."""

    hours: float = 0.6
    """prepare: music21 audio to render (0.6 h = about 530 clips of 4.1 s, about 190 s): enough
    reference clips (train + valid, through the codec) for a noise-floor sample and a reference
    each at least as large as ``eval_samples``."""
    items: int | None = None
    """prepare: the number of clips instead of ``hours`` (tests)."""
    split_fractions: tuple[float, float, float] = (0.85, 0.15, 0.0)
    """prepare: train/valid/test shares by piece; valid (about 40 clips) holds the evaluation prompts."""
    teacher_steps: int = 1000
    """train-teacher: EDM steps at the preset's batch: 7.5 it/s from the in-memory train split, 160 s.
    (300 steps left the teacher at eval loss 0.39 and FAD 119; 1000 reach 0.28 and FAD 71.)"""
    distill_steps: dict[str, int] = field(default_factory=_default_distill_steps)
    """distill: iterations per method."""
    distill_lr: float | None = None
    """distill: learning rate of the generator and guidance roles of every method (None: the
    config's ``distill.generator.lr`` / ``distill.guidance.lr``)."""
    ttur: dict[str, int] = field(default_factory=_default_ttur)
    """distill: ``distill.ttur`` of the methods named (the others keep the config's)."""
    sampler_steps: tuple[int, ...] = (8, 16, 32)
    sampler_cfg_scales: tuple[float, ...] = (2.0, 4.0)
    sampler_churns: tuple[float, ...] = (0.0,)
    """teacher-sampler: the grid the teacher's default sampler is chosen from (Heun steps x CFG
    scale x churn; empty ``sampler_steps``: keep the config's sampler, no search). CFG 1 scored
    worst at every step count on the tiny teacher (docs/results.md) and is left out for time."""
    sampler_search_samples: int = 64
    sampler_search_seed: int = 10_000
    """teacher-sampler: clips per setting, and their seeds (apart from the evaluation's, so the
    chosen setting is not scored again on the same noise)."""
    budget_edges: tuple[float, ...] = (1.0,)
    budget_fractions: tuple[float, ...] = (1.0, 0.5)
    """The sigma -> budget schedule of presto-l, presto-ls and ase: the share of blocks run below,
    between and above ``budget_edges`` (here: all blocks below sigma 1, half above)."""
    curve_points: int = 3
    """distill: checkpoints of each run (every steps / curve_points iterations), each a point of the
    KAD-against-generator-updates curve of presto-s, dmd2 and cd (the last one is the run's row)."""
    eval_samples: int = 256
    """evaluate: clips per model (held-out prompts repeated with new seeds; each costs one
    generation and one musicnn pass)."""
    eval_batch: int = 32
    teacher_extra_steps: tuple[int, ...] = (4, 8)
    """evaluate and benchmark: the teacher at these step counts besides its default sampler."""
    student_extra_steps: tuple[int, ...] = ()
    """evaluate: presto-s also at these step counts besides its own (``distill.student_steps``);
    the benchmark times every student at 1, 2 and 4 steps anyway."""
    latency_repeats: int = 5
    latency_warmup: int = 1
    """benchmark: timed repeats (median) after warm-up, per model and case."""
    report_clips: int = 3
    """report: clips per model shown and played in report.html (the first evaluation prompts)."""

    def steps_for(self, method: str) -> int:
        if method not in self.distill_steps:
            raise ValueError(f"the quickstart plan has no distill_steps for '{method}' (has {sorted(self.distill_steps)})")
        return self.distill_steps[method]

    def budget_schedule(self, model: DiTConfig) -> dict[str, list]:
        """``distill.budget_schedule`` for a student of ``model``: budgets are the fractions of its
        depth, rounded up, at least its lowest budget (one block, and the kept last blocks)."""
        if len(self.budget_fractions) != len(self.budget_edges) + 1:
            raise ValueError(f"budget_fractions needs one more entry than budget_edges, got "
                             f"{self.budget_fractions} and {self.budget_edges}")
        lowest = Method.lowest_budget(model)
        budgets = [min(model.depth, max(lowest, math.ceil(f * model.depth))) for f in self.budget_fractions]
        return {"edges": list(self.budget_edges), "budgets": budgets}


def _reference_distill_steps() -> dict[str, int]:
    # iterations at `small` (batch 32): 2000 generator updates per student (presto-s, presto-ls and
    # dmd2 at the config's ttur 5; presto-l, ase and cd update the generator every iteration). On a
    # 2-core CPU a presto-s iteration took ~2.9 s, dmd2 ~3.5 s, cd ~3.0 s, presto-l and ase ~1.2 s:
    # about 45 h in all, so this plan is for a GPU (train.use_gpu=true)
    return {"presto-l": 2000, "presto-s": 10000, "presto-ls": 10000, "dmd2": 10000, "ase": 2000, "cd": 2000}


REFERENCE = Plan(hours=4.8, split_fractions=(0.8, 0.2, 0.0), teacher_steps=5000,
                 distill_steps=_reference_distill_steps(), distill_lr=1e-4, ttur={}, eval_samples=1024,
                 eval_batch=64, teacher_extra_steps=(4, 8), student_extra_steps=(1, 2),
                 sampler_steps=(8, 16, 32, 64), sampler_search_samples=256, curve_points=5, latency_repeats=5,
                 latency_warmup=1, report_clips=4)
"""The reference experiment (issue #18, docs/results.md) with ``configs/small.yaml``: 4.8 h of
music21 audio (~2100 clips of 8.2 s, a fifth held out; train + valid through the codec give a
noise-floor sample and a reference of >= 1024 clips each), the teacher for 5000 steps and its
sampler searched on 256 clips per setting, 2000 generator updates per student and baseline at
learning rate 1e-4 and the config's ttur (5), 1024 clips per model (2 musicnn vectors each, so
FAD is reported: 2048 >= 2 x 200), Presto-S at 1, 2 and 4 steps. Sized for one GPU
(``train.use_gpu=true``); on a 2-core CPU the distillation alone would take about 45 h."""

PLANS = {"quickstart": Plan(), "reference": REFERENCE}
"""The plans ``presto-ray quickstart --plan`` accepts."""
