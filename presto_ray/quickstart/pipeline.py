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
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from presto_ray.config import PrestoConfig, config_from_dict, deep_merge
from presto_ray.data import storage
from presto_ray.distill.methods import PRESTO_S, method_for
from presto_ray.eval.evaluate import Sampling
from presto_ray.eval.targets import CONTROLS, check, results_markdown
from presto_ray.eval.updates import curve_is_current, update_curve
from presto_ray.quickstart.plan import BASELINES, METHODS, Plan
from presto_ray.quickstart.results import case_label, combine, table
from presto_ray.quickstart.stages import Stages
from presto_ray.train.export import SAMPLER_FILE, ExportError, find_export, load_export

log = logging.getLogger("presto_ray.quickstart")


def _with(cfg: PrestoConfig, tree: dict) -> PrestoConfig:
    """``cfg`` with the nested values of ``tree``, validated like a config file."""
    return config_from_dict(deep_merge(cfg.model_dump(mode="json"), tree), "quickstart plan")


def finished_step(run_dir: Path) -> int:
    """Step of the newest complete checkpoint of a run (0 when there is none)."""
    try:
        return load_export(run_dir).step
    except ExportError:
        return 0


class TrainingSet:
    """The prepared train split, read once into Ray's object store on first use and shared by every
    training stage: it is small (about 45 KB a clip), and decoding Parquet each epoch on the same
    two cores as training made the teacher 2-3x slower (data_wait_frac 0.7)."""

    def __init__(self, cfg: PrestoConfig) -> None:
        self.cfg = cfg
        self._loaded = None

    def get(self):
        """(materialised Ray Dataset, LatentStats)."""
        if self._loaded is None:
            from presto_ray.train.teacher import shard_dataset

            dataset, stats = shard_dataset(self.cfg)
            self._loaded = dataset.materialize(), stats
        return self._loaded


def distill_config(cfg: PrestoConfig, plan: Plan, name: str, runs: Path, teacher_run: Path) -> PrestoConfig:
    """The config of one distill run of the quickstart: named after its method ``name``, from the
    teacher's run (presto-ls: from the presto-l run), at the plan's steps and budget schedule (the
    methods that use one). Presto-L draws its training budgets from the schedule's lowest budget up
    to full depth (``distill.min_budget``): the budgets the evaluation samples with, as ase trains on
    exactly them. ``plan.distill_lr``, when set, is the learning rate of both trained roles;
    ``plan.ttur``, when it names the method, its guidance updates per generator update. Each run
    keeps ``plan.curve_points`` checkpoints, the points of its KAD-against-updates curve."""
    method = method_for(name)
    distill: dict = {"method": name, "teacher": str(teacher_run), "init": None}
    if method.init_from is not None:
        distill["init"] = str(runs / method.init_from)
    if method.uses_budget_schedule:
        distill["budget_schedule"] = plan.budget_schedule(cfg.model)
        if not method.trains_on_schedule:
            distill["min_budget"] = min(distill["budget_schedule"]["budgets"])
    if plan.distill_lr is not None:
        distill["generator"] = {"lr": plan.distill_lr}
        distill["guidance"] = {"lr": plan.distill_lr}
    if name in plan.ttur:
        distill["ttur"] = plan.ttur[name]
    steps = plan.steps_for(name)
    train = {"steps": steps, "checkpoint_every": max(1, math.ceil(steps / plan.curve_points))}
    return _with(cfg, {"run": {"name": name}, "train": train, "distill": distill})


@dataclass(frozen=True)
class EvalCase:
    """One row of the quickstart's table: ``name`` (its folder under eval/), ``run`` (the teacher
    run's name or a method: whose export), ``case`` (how the table names the sampling: the
    benchmark's case label where it is timed), ``sampling``, and ``control_of`` (the student whose
    undistilled control this row is: the teacher's weights sampled as that student is)."""

    name: str
    run: str
    case: str
    sampling: Sampling = Sampling()
    control_of: str | None = None


def eval_cases(plan: Plan, methods: tuple[str, ...], exported: dict) -> list[EvalCase]:
    """The evaluations of a quickstart: the teacher at its (chosen) default and at the plan's extra
    steps, each method's student, presto-s at the plan's extra steps, and the undistilled control
    of each Presto student (:data:`~presto_ray.eval.targets.CONTROLS`). ``exported``: loaded
    exports by run name (teacher and each method)."""
    cases = [EvalCase("teacher", "teacher", "default", Sampling(role="teacher"))]
    cases += [EvalCase(f"teacher-{n}-steps", "teacher", f"{n} steps", Sampling(role="teacher", steps=n))
              for n in plan.teacher_extra_steps]
    for m in methods:
        mcfg = exported[m].cfg
        cases.append(EvalCase(m, m, case_label(m, mcfg, None)))
        if method_for(m) is PRESTO_S:
            cases += [EvalCase(f"{m}-{n}-steps", m, case_label(m, mcfg, n), Sampling(steps=n))
                      for n in plan.student_extra_steps]
    for m in methods:
        if m not in CONTROLS:
            continue
        mcfg, method = exported[m].cfg, method_for(m)
        steps, schedule = mcfg.distill.student_steps, method.budget_schedule(mcfg)
        as_json = None if schedule.is_full else schedule.to_json()
        if not method.few_step:  # the student's own Heun sampler (steps, CFG, churn) under its schedule
            own = mcfg.sampler
            first = Sampling(role="teacher", sampler="teacher", steps=own.steps, cfg_scale=own.cfg_scale,
                             s_churn=own.s_churn, schedule=as_json)
        else:
            first = Sampling(role="teacher", sampler="pingpong", steps=steps, schedule=as_json)
        controls = [("", CONTROLS[m][0], first)]
        if CONTROLS[m][1]:  # also with the CFG scale the student was distilled with
            controls.append(("-cfg", CONTROLS[m][1], Sampling(role="teacher", sampler="pingpong", steps=steps,
                                                              cfg_scale=mcfg.distill.w_real, schedule=as_json)))
        cases += [EvalCase(f"control-{m}{suffix}", "teacher", label.format(n=steps), sampling, control_of=m)
                  for suffix, label, sampling in controls]
    return cases


def _write_json(path: Path, doc: dict) -> None:
    storage.write_bytes_atomic(str(path), json.dumps(doc, indent=2).encode())


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.wav") if not p.name.endswith(".part.wav"))


def write_reference_clips(valid: str, names: list[str], folder: Path, codec_cfg) -> None:
    """The first held-out latents decoded by the codec ("real audio through the codec"), under the
    file names the evaluations gave the same prompts."""
    import numpy as np
    import torch

    from presto_ray.eval.evaluate import held_out_rows
    from presto_ray.generate import write_wav
    from presto_ray.models.codec import load_codec

    codec = load_codec(codec_cfg)
    rows = held_out_rows(valid, len(names))
    latents = torch.from_numpy(np.stack([np.asarray(r["latent"], np.float32) for r in rows]))
    for name, wav in zip(names, codec.decode(latents).cpu().numpy()):
        write_wav(folder / name, wav, codec.sample_rate)


def collect_audio(evals: Path, names: list[str], audio: Path, clips: int, valid: str, codec_cfg) -> list[Path]:
    """DIR/audio/<name>/: the first ``clips`` evaluation clips of each model, and
    DIR/audio/reference/ with the real audio for the same prompts; returns the folders."""
    folders = [audio / "reference"] + [audio / n for n in names]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for name in names:
        for wav in _wavs(evals / name / "audio")[:clips]:
            shutil.copyfile(wav, audio / name / wav.name)
    write_reference_clips(valid, [w.name for w in _wavs(audio / names[0])], audio / "reference", codec_cfg)
    return folders


def quickstart(cfg: PrestoConfig, out: Path, *, plan: Plan = Plan(), with_baselines: bool = False,
               address: str | None = None, command: str = "presto-ray quickstart", cfg_name: str = "tiny") -> dict:
    """Run (or continue) the quickstart into ``out``; returns the summary also written to
    ``out/summary.json`` (stage_seconds, skipped, models, and the output paths). ``command`` and
    ``cfg_name`` are what results.md says produced it."""
    from presto_ray.train.cluster import ensure_ray

    t_start = time.perf_counter()
    out = Path(out).resolve()
    data, runs, evals, audio = out / "data", out / "runs", out / "eval", out / "audio"
    valid = str(data / "valid")
    cfg = _with(cfg, {"run": {"storage_path": str(runs)}, "data": {"source": "shards", "uri": str(data / "train")},
                      "prepare": {"hours": plan.hours, "items": plan.items, "split_fractions": list(plan.split_fractions)},
                      "train": {"steps": plan.teacher_steps}})
    methods = METHODS + (BASELINES if with_baselines else ())
    if cfg.run.name in methods:
        raise ValueError(f"run.name '{cfg.run.name}' is the name of a distill run; give the teacher another")
    stages = Stages()
    ensure_ray(address, num_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 1)

    def prepare() -> None:
        from presto_ray.data.prepare import prepare as run_prepare

        run_prepare(cfg, str(data))  # resumes: clips already written are not rendered again
        if not (data / "valid" / "manifest.json").is_file():
            raise ValueError(f"prepare wrote no valid split under {data}: the quickstart evaluates on it; "
                             "render more clips or give valid a larger share")

    stages.run("prepare", all((data / s / "manifest.json").is_file() for s in ("train", "valid")), prepare)
    training_set = TrainingSet(cfg)

    def train_teacher() -> None:
        from presto_ray.train.teacher import train_teacher as run_teacher

        dataset, stats = training_set.get()
        run_teacher(cfg, dataset=dataset, stats=stats, address=address)  # resumes from its newest checkpoint

    teacher_run = runs / cfg.run.name
    stages.run("train-teacher", finished_step(teacher_run) >= plan.teacher_steps, train_teacher)
    reference = [valid, str(data / "train")]

    def teacher_sampler() -> None:
        from presto_ray.eval.sampler_search import grid, search_teacher_sampler

        search_teacher_sampler(str(teacher_run), valid, evals / "teacher-sampler",
                               grid(plan.sampler_steps, plan.sampler_cfg_scales, plan.sampler_churns),
                               n=plan.sampler_search_samples, reference=reference, batch_size=plan.eval_batch,
                               seed=plan.sampler_search_seed)

    stages.run("teacher-sampler", not plan.sampler_steps or (find_export(teacher_run) / SAMPLER_FILE).is_file(),
               teacher_sampler)
    for name in methods:
        run_cfg = distill_config(cfg, plan, name, runs, teacher_run)

        def distill(run_cfg: PrestoConfig = run_cfg) -> None:
            from presto_ray.train.distill import distill as run_distill

            run_distill(run_cfg, dataset=training_set.get()[0], address=address)

        stages.run(f"distill {name}", finished_step(runs / name) >= run_cfg.train.steps, distill)

    exports = {"teacher": find_export(teacher_run), **{m: find_export(runs / m) for m in methods}}
    exported = {name: load_export(path) for name, path in exports.items()}
    valid_rows = json.loads((data / "valid" / "manifest.json").read_text())["num_rows"]
    cases = eval_cases(plan, methods, exported)
    evaluations = []
    for c in cases:
        export, folder = exports[c.run], evals / c.name

        def evaluate(export: Path = export, folder: Path = folder, c: EvalCase = c) -> None:
            from presto_ray.eval.evaluate import evaluate as run_evaluate

            run_evaluate(str(export), valid, folder, n=plan.eval_samples, sampling=c.sampling, reference=reference,
                         batch_size=plan.eval_batch)

        done = storage.read_json_record(folder / "metrics.json")
        wanted = c.sampling.resolved(exported[c.run])  # a changed teacher sampler makes its rows stale
        stages.run(f"evaluate {c.name}", done.get("model") == str(export) and done.get("n_samples") == plan.eval_samples
                   and all(done.get(k, "-") == v for k, v in wanted.items()), evaluate)
        metrics = json.loads((folder / "metrics.json").read_text())
        evaluations.append({"name": c.name, "case": c.case, "train_steps": exported[c.run].step,
                            "control_of": c.control_of, "metrics": metrics})

    curves = {}
    for m in (m for m in methods if method_for(m).updates_curve):
        folder = evals / f"{m}-updates"

        def curve(m: str = m, folder: Path = folder) -> None:
            update_curve(runs / m, valid, folder, n=plan.eval_samples, reference=reference, batch_size=plan.eval_batch,
                         known=[evals / m / "metrics.json"])

        stages.run(f"curve {m}", curve_is_current(runs / m, folder, plan.eval_samples), curve)
        curves[m] = json.loads((folder / "curve.json").read_text())["points"]

    latency_file = out / "latency.json"
    models = [str(exports[name]) for name in ("teacher", *methods)]

    def run_benchmark() -> None:
        from presto_ray.eval.latency import benchmark

        _write_json(latency_file, benchmark(models[0], models[1:], repeats=plan.latency_repeats,
                                            warmup=plan.latency_warmup, teacher_steps=plan.teacher_extra_steps))

    timed = storage.read_json_record(latency_file) or {"entries": []}
    stages.run("benchmark", list(dict.fromkeys(e["model"] for e in timed["entries"])) == models, run_benchmark)

    metrics_file = out / "metrics.json"
    stages.run("metrics", metrics_file.is_file() and not stages.ran,
               lambda: _write_json(metrics_file, combine(evaluations, json.loads(latency_file.read_text()), curves)))
    results_file = out / "results.md"

    def results() -> None:
        doc = json.loads(metrics_file.read_text())
        text = results_markdown(doc, title=f"presto_ray results ({cfg_name})", command=command,
                                date=time.strftime("%Y-%m-%d"))
        storage.write_bytes_atomic(str(results_file), text.encode())

    stages.run("results", results_file.is_file() and not stages.ran, results)

    names = [c.name for c in cases]
    folders = [audio / "reference"] + [audio / n for n in names]
    clips = min(plan.report_clips, len(_wavs(evals / names[0] / "audio")))
    stages.run("audio", not stages.ran and all(len(_wavs(f)) == clips for f in folders),
               lambda: collect_audio(evals, names, audio, clips, valid, load_export(exports["teacher"]).cfg.codec))

    report = out / "report.html"

    def write() -> None:
        from presto_ray.eval.report import write_report

        write_report(report, latency=[latency_file], metrics=[metrics_file],
                     runs=[teacher_run, *(runs / m for m in methods)], audio=folders, title="presto_ray quickstart")

    stages.run("report", report.is_file() and not stages.ran, write)

    doc = json.loads(metrics_file.read_text())
    summary = {"out": str(out), "data": str(data), "valid_rows": valid_rows,
               "train_rows": json.loads((data / "train" / "manifest.json").read_text())["num_rows"],
               "models": {name: str(path) for name, path in exports.items()}, "with_baselines": with_baselines,
               "stage_seconds": stages.seconds, "skipped": stages.skipped,
               "total_seconds": time.perf_counter() - t_start, "report": str(report), "metrics": str(metrics_file),
               "latency": str(latency_file), "results": str(results_file), "audio": [str(f) for f in folders]}
    _write_json(out / "summary.json", summary)
    print("\nquickstart stages", *stages.lines(), f"  {'total':<{max(map(len, stages.seconds))}}  "
          f"{summary['total_seconds']:7.1f} s", sep="\n")
    print(f"\n{table(doc)}\n")
    for verdict in check(doc):
        print(f"  {verdict.status:>12s}  {verdict.target.name}")
    print(f"\nreport: {report}\nresults: {results_file}")
    return summary
