"""``quickstart``: the embedded default end to end on one machine.

Today: render a small music21/FluidSynth corpus into latent shards (``prepare``), train the tiny
EDM teacher on them with Ray Train + DeepSpeed (in-process Ray, local storage), and generate a few
prompts to WAV. Distillation, evaluation and the HTML report join as their issues land. Stages
whose output exists are skipped, so an interrupted quickstart continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from presto_ray.config import PrestoConfig
from presto_ray.data.prepare import prepare
from presto_ray.generate import Prompt, generate_files
from presto_ray.train.export import ExportError, find_export
from presto_ray.train.cluster import ensure_ray
from presto_ray.train.teacher import train_teacher

log = logging.getLogger("presto_ray.quickstart")


def _finished_step(run_dir: Path) -> int:
    """Step of the newest complete checkpoint of a run (0 when there is none)."""
    try:
        return json.loads((find_export(run_dir) / "export.json").read_text())["step"]
    except ExportError:
        return 0


PROMPTS = [
    Prompt("a folk song from Germany for flute, in G major, 3/4, 100 BPM", bpm=100, seed=0),
    Prompt("Strings playing a chorale by J. S. Bach in D major at 72 BPM, in 4/4 time", bpm=72, seed=1),
    Prompt("Fiddle playing a dance tune from Ireland in D major at 120 BPM, in 2/2 time", bpm=120, seed=2),
]


def quickstart(cfg: PrestoConfig, out: Path, address: str | None = None) -> dict:
    out = out.resolve()
    data = out / "data"
    cfg = cfg.model_copy(update={
        "run": cfg.run.model_copy(update={"storage_path": str(out / "runs")}),
        "data": cfg.data.model_copy(update={"source": "shards", "uri": str(data / "train")}),
    })
    run_dir = out / "runs" / cfg.run.name
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    if not (data / "train" / "manifest.json").is_file():
        ensure_ray(address, num_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
        prepare(cfg, str(data))  # resumes: clips already written are not rendered again
    times["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if _finished_step(run_dir) < cfg.train.steps:
        train_teacher(cfg, address=address)  # resumes from the newest checkpoint if there is one
    times["train_teacher_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    audio = out / "audio" / "teacher"
    if len(list(audio.glob("*.wav"))) < len(PROMPTS):
        generate_files(str(run_dir), PROMPTS, audio, progress=False)
    times["generate_s"] = time.perf_counter() - t0

    export = find_export(run_dir)
    metrics = json.loads((export.parent / "meta.json").read_text()).get("metrics", {})
    summary = {
        "data": str(data), "train_rows": json.loads((data / "train" / "manifest.json").read_text())["num_rows"],
        "teacher_checkpoint": str(export.parent),
        "final_loss": metrics.get("loss"), "final_eval_loss": metrics.get("eval_loss"),
        "audio": sorted(str(p) for p in audio.glob("*.wav")), "stage_seconds": times,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nquickstart stages")
    for k, v in times.items():
        print(f"  {k:<18} {v:8.1f} s")
    print(f"  teacher eval loss  {summary['final_eval_loss']}")
    print(f"  audio              {audio}")
    return summary
