"""The teacher at its best: choose its default sampler (steps, CFG scale, churn) by the primary
metric on held-out prompts, and store the choice in its export (``sampler.json``), so that every
comparison and every speed-up is made against the teacher at that setting (METHOD.md section 6).

Each setting is one :func:`~presto_ray.eval.evaluate.evaluate` run (generation, musicnn, KAD with
its interval) on the same prompts, seeds and reference. The best is the lowest KAD; among the
settings whose interval overlaps the best one's (not resolved from it), the cheapest (fewest
network evaluations) is kept, so the teacher's speed is not understated by a slower setting that
is no better within the intervals.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from presto_ray.config import SamplerConfig
from presto_ray.data import storage
from presto_ray.eval.evaluate import Sampling, evaluate
from presto_ray.eval.metrics import not_resolved_worse
from presto_ray.train.export import find_export, write_sampler_choice

log = logging.getLogger("presto_ray.sampler_search")


@dataclass(frozen=True)
class SamplerSetting:
    """One teacher sampler setting: Heun steps, CFG scale, churn (EDM's S_churn)."""

    steps: int
    cfg_scale: float
    s_churn: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.steps} steps, CFG {self.cfg_scale:g}" + (f", churn {self.s_churn:g}" if self.s_churn else "")

    @property
    def network_evals(self) -> int:
        """Network evaluations per clip with Heun (Euler on the last step), x2 for CFG != 1."""
        return (2 * self.steps - 1) * (1 if self.cfg_scale == 1 else 2)


def grid(steps: tuple[int, ...], cfg_scales: tuple[float, ...], churns: tuple[float, ...] = (0.0,)) -> list[SamplerSetting]:
    """Every combination, cheapest first."""
    settings = [SamplerSetting(n, w, c) for n, w, c in itertools.product(steps, cfg_scales, churns)]
    if not settings:
        raise ValueError("the sampler grid is empty: give at least one step count and one CFG scale")
    for s in settings:  # SamplerConfig's own checks, before anything is generated
        SamplerConfig(steps=s.steps, cfg_scale=s.cfg_scale, s_churn=s.s_churn)
    return sorted(settings, key=lambda s: (s.network_evals, s.cfg_scale, s.s_churn))


def choose(trials: list[dict]) -> int:
    """Index of the chosen trial (dicts with kad, kad_ci, network_evals): the cheapest whose KAD
    interval overlaps the interval of the lowest KAD."""
    best = min(range(len(trials)), key=lambda i: trials[i]["kad"])
    tied = [i for i, ok in enumerate(not_resolved_worse([t["kad_ci"] for t in trials], best)) if ok]
    return min(tied, key=lambda i: (trials[i]["network_evals"], trials[i]["kad"]))


def search_teacher_sampler(checkpoint: str, data_uri: str, out_dir: str | Path, settings: list[SamplerSetting], *,
                           n: int = 64, reference: list[str] | None = None, batch_size: int = 16, seed: int = 0,
                           store: bool = True) -> dict:
    """Evaluate the teacher at ``checkpoint`` under each setting on ``n`` clips for the prompts of
    ``data_uri`` (reference: ``reference`` or ``data_uri``; the same reference split as
    :func:`~presto_ray.eval.evaluate.evaluate` at its default seed, with noise seeds from ``seed`` on, so
    an evaluation at seed 0 does not score the chosen setting on the noise it was chosen on), choose
    (see :func:`choose`), write
    ``out_dir/search.json`` and, with ``store``, the choice into the teacher's export. Returns the
    search document: trials (setting, network_evals, kad, kad_ci, ...), chosen (index), export."""
    out = Path(out_dir)
    export = find_export(Path(checkpoint))
    trials = []
    for s in settings:
        log.info("teacher sampler search: %s", s.label)
        m = evaluate(str(export), data_uri, out / f"{s.steps}-steps-cfg-{s.cfg_scale:g}-churn-{s.s_churn:g}", n=n,
                     sampling=Sampling(role="teacher", sampler="teacher", steps=s.steps, cfg_scale=s.cfg_scale,
                                       s_churn=s.s_churn),
                     reference=reference, batch_size=batch_size, noise_seed=seed, write_audio=False)
        trials.append({**asdict(s), "label": s.label, "network_evals": s.network_evals,
                       **{k: m.get(k) for k in ("kad", "kad_ci", "mmd", "recall", "coverage", "floor_kad",
                                                "floor_kad_ci", "n_samples", "n_reference")}})
    chosen = choose(trials)
    doc = {"checkpoint": str(export), "data": str(data_uri), "reference": reference or [str(data_uri)], "n": n,
           "seed": seed, "metric": "kad", "rule": "cheapest setting whose KAD interval overlaps the best one's",
           "trials": trials, "chosen": chosen, "export": str(export)}
    storage.write_bytes_atomic(str(out / "search.json"), json.dumps(doc, indent=2).encode())
    if store:
        c = trials[chosen]
        write_sampler_choice(export, {"steps": c["steps"], "cfg_scale": c["cfg_scale"], "s_churn": c["s_churn"]},
                             {k: doc[k] for k in ("data", "reference", "n", "seed", "metric", "rule")}
                             | {"kad": c["kad"], "kad_ci": c["kad_ci"], "search": str(out / "search.json")})
    log.info("teacher sampler: chose %s (KAD %.3g [%.3g, %.3g])", trials[chosen]["label"], trials[chosen]["kad"],
             *trials[chosen]["kad_ci"])
    return doc


def search_table(doc: dict) -> str:
    """The search as a markdown table, the chosen setting marked."""
    lines = ["| setting | network evals | KAD [95% CI] | recall | coverage |", "| --- | --- | --- | --- | --- |"]
    for i, t in enumerate(doc["trials"]):
        mark = " **(chosen)**" if i == doc["chosen"] else ""
        lines.append(f"| {t['label']}{mark} | {t['network_evals']} | {t['kad']:.2f} [{t['kad_ci'][0]:.2f}, "
                     f"{t['kad_ci'][1]:.2f}] | {t.get('recall', float('nan')):.2f} | {t.get('coverage', float('nan')):.2f} |")
    return "\n".join(lines)
