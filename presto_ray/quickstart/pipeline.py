"""``quickstart``: the embedded default end to end on one machine (Ray in-process, local storage).

Stages, each skipped when its output exists (so an interrupted quickstart continues where it
stopped, and a distill run cut short resumes from its newest checkpoint):

    prepare              music21 corpus rendered by FluidSynth -> DIR/data/{train,valid}
    train-teacher        the EDM teacher                       -> DIR/runs/<run.name>/
    teacher-sampler      its best sampler on held-out prompts   -> sampler.json in its export
    distill <method>     presto-l, presto-s, presto-ls (+ dmd2, ase, cd with baselines) -> DIR/runs/<method>/
    evaluate <name>      held-out prompts of DIR/data/valid     -> DIR/eval/<name>/{metrics.json,audio/}
                         (each student, its undistilled control: the teacher's weights under the
                         same sampler, steps and schedule, and the teacher at 4 and 8 steps)
    curve <method>       every checkpoint of presto-s (dmd2, cd) -> DIR/eval/<method>-updates/curve.json
    benchmark            batch-1 latency of every model, one run -> DIR/latency.json
    metrics              one entry per model and case           -> DIR/metrics.json
    results              the table and the paper's targets checked -> DIR/results.md
    audio                the first clips of each model + the reference -> DIR/audio/<name>/
    report               tables, plots, curves, players         -> DIR/report.html

Stage sizes come from a :class:`~presto_ray.quickstart.plan.Plan`; the config gives everything else.
The stages are objects in :mod:`presto_ray.quickstart.stages`; the runs' configs are in
:mod:`presto_ray.quickstart.runs`, the evaluations in :mod:`presto_ray.quickstart.cases`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from presto_ray.config import PrestoConfig
from presto_ray.eval.targets import check
from presto_ray.quickstart.cases import write_json
from presto_ray.quickstart.plan import BASELINES, METHODS, Plan
from presto_ray.quickstart.results import table
from presto_ray.quickstart.runs import with_tree
from presto_ray.quickstart.stages import Quickstart, stage_list


def quickstart(cfg: PrestoConfig, out: Path, *, plan: Plan = Plan(), with_baselines: bool = False,
               address: str | None = None, command: str = "presto-ray quickstart", cfg_name: str = "tiny") -> dict:
    """Run (or continue) the quickstart into ``out``; returns the summary also written to
    ``out/summary.json`` (stage_seconds, skipped, models, and the output paths). ``command`` and
    ``cfg_name`` are what results.md says produced it."""
    from presto_ray.train.cluster import ensure_ray

    t_start = time.perf_counter()
    out = Path(out).resolve()
    cfg = with_tree(cfg, {"run": {"storage_path": str(out / "runs")},
                          "data": {"source": "shards", "uri": str(out / "data" / "train")},
                          "prepare": {"hours": plan.hours, "items": plan.items,
                                      "split_fractions": list(plan.split_fractions)},
                          "train": {"steps": plan.teacher_steps}})
    methods = METHODS + (BASELINES if with_baselines else ())
    if cfg.run.name in methods:
        raise ValueError(f"run.name '{cfg.run.name}' is the name of a distill run; give the teacher another")
    q = Quickstart(cfg, plan, out, methods, address, command, cfg_name)
    ensure_ray(address, num_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    for stage in stage_list(q):
        q.stages.run(stage.name, stage.done(q), lambda stage=stage: stage.run(q))

    doc = json.loads(q.file("metrics.json").read_text())
    summary = {"out": str(out), "data": str(q.data),
               "valid_rows": json.loads((q.data / "valid" / "manifest.json").read_text())["num_rows"],
               "train_rows": json.loads((q.data / "train" / "manifest.json").read_text())["num_rows"],
               "models": {name: str(path) for name, path in q.exports.items()}, "with_baselines": with_baselines,
               "stage_seconds": q.stages.seconds, "skipped": q.stages.skipped,
               "total_seconds": time.perf_counter() - t_start, "report": str(q.file("report.html")),
               "metrics": str(q.file("metrics.json")), "latency": str(q.file("latency.json")),
               "results": str(q.file("results.md")), "audio": [str(f) for f in q.audio_folders]}
    write_json(out / "summary.json", summary)
    print("\nquickstart stages", *q.stages.lines(), f"  {'total':<{max(map(len, q.stages.seconds))}}  "
          f"{summary['total_seconds']:7.1f} s", sep="\n")
    print(f"\n{table(doc)}\n")
    for verdict in check(doc):
        print(f"  {verdict.status:>12s}  {verdict.target.name}")
    print(f"\nreport: {q.file('report.html')}\nresults: {q.file('results.md')}")
    return summary
