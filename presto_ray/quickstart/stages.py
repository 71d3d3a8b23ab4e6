"""The quickstart's stages as objects, and the runner that skips, times and prints them.

A stage has a ``name``, ``done(q)`` (its output exists, so an interrupted quickstart continues
where it stopped) and ``run(q)``; ``q`` is the :class:`Quickstart` every stage shares (config,
plan, folders, methods). :func:`stage_list` yields them in order; the later stages are made only
when reached, since which evaluations exist depends on the exports the training stages wrote.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator, Protocol

from presto_ray.config import PrestoConfig
from presto_ray.data import storage
from presto_ray.distill.methods import method_for
from presto_ray.eval.updates import curve_is_current, update_curve
from presto_ray.quickstart.cases import EvalCase, collect_audio, eval_cases, wavs, write_json
from presto_ray.quickstart.plan import Plan
from presto_ray.quickstart.runs import TrainingSet, distill_config, finished_step
from presto_ray.train.export import SAMPLER_FILE, Exported, find_export, load_export

log = logging.getLogger("presto_ray.quickstart")


class Stages:
    """Runs named stages in order. ``seconds`` holds each stage's wall time (0.0 when skipped);
    ``skipped`` the names of stages whose output already existed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    @property
    def ran(self) -> list[str]:
        return [name for name in self.seconds if name not in self.skipped]

    def run(self, name: str, done: bool, fn) -> None:
        """Call ``fn()`` unless ``done`` (its output exists); record the time either way."""
        if name in self.seconds:
            raise ValueError(f"stage '{name}' ran twice")
        if done:
            self.seconds[name] = 0.0
            self.skipped.append(name)
            log.info("quickstart: %s: skipped (its output exists)", name)
            return
        t0 = time.perf_counter()
        log.info("quickstart: %s ...", name)
        fn()
        self.seconds[name] = time.perf_counter() - t0
        log.info("quickstart: %s: %.1f s", name, self.seconds[name])

    def lines(self) -> list[str]:
        width = max((len(n) for n in self.seconds), default=0)
        return [f"  {name:<{width}}  " + ("skipped" if name in self.skipped else f"{secs:7.1f} s")
                for name, secs in self.seconds.items()]


@dataclass
class Quickstart:
    """What the stages of one quickstart share. ``cfg``: the teacher's config, its storage and data
    under ``out``; ``methods``: the distill runs (named after their methods); ``command`` and
    ``cfg_name``: what results.md says produced it. The folders: ``data`` (train, valid), ``runs``,
    ``evals``, ``audio``; ``reference``: the reference sets of every distribution metric."""

    cfg: PrestoConfig
    plan: Plan
    out: Path
    methods: tuple[str, ...]
    address: str | None
    command: str
    cfg_name: str
    stages: Stages = field(default_factory=Stages)

    def __post_init__(self) -> None:
        self.data, self.runs, self.evals, self.audio = (self.out / n for n in ("data", "runs", "eval", "audio"))
        self.valid = str(self.data / "valid")
        self.reference = [self.valid, str(self.data / "train")]  # held-out, then train
        self.teacher_run = self.runs / self.cfg.run.name
        self.training_set = TrainingSet(self.cfg)
        self.curve_methods = [m for m in self.methods if method_for(m).updates_curve]

    @cached_property
    def exports(self) -> dict[str, Path]:
        """Export folder by run (teacher and each method); read once the training stages are done."""
        return {"teacher": find_export(self.teacher_run), **{m: find_export(self.runs / m) for m in self.methods}}

    @cached_property
    def exported(self) -> dict[str, Exported]:
        return {name: load_export(path) for name, path in self.exports.items()}

    @cached_property
    def cases(self) -> list[EvalCase]:
        return eval_cases(self.plan, self.methods, self.exported)

    @property
    def models(self) -> list[str]:
        """Every model's export, the teacher first (the benchmark's order)."""
        return [str(self.exports[name]) for name in ("teacher", *self.methods)]

    @property
    def audio_folders(self) -> list[Path]:
        return [self.audio / "reference"] + [self.audio / c.name for c in self.cases]

    def file(self, name: str) -> Path:
        """A file of the quickstart's top folder (latency.json, metrics.json, results.md, report.html)."""
        return self.out / name


class Stage(Protocol):
    name: str

    def done(self, q: Quickstart) -> bool: ...

    def run(self, q: Quickstart) -> None: ...


class Prepare:
    name = "prepare"

    def done(self, q: Quickstart) -> bool:
        return all((q.data / s / "manifest.json").is_file() for s in ("train", "valid"))

    def run(self, q: Quickstart) -> None:
        from presto_ray.data.prepare import prepare

        prepare(q.cfg, str(q.data))  # resumes: clips already written are not rendered again
        if not (q.data / "valid" / "manifest.json").is_file():
            raise ValueError(f"prepare wrote no valid split under {q.data}: the quickstart evaluates on it; "
                             "render more clips or give valid a larger share")


class TrainTeacher:
    name = "train-teacher"

    def done(self, q: Quickstart) -> bool:
        return finished_step(q.teacher_run) >= q.plan.teacher_steps

    def run(self, q: Quickstart) -> None:
        from presto_ray.train.teacher import train_teacher

        dataset, stats = q.training_set.get()
        train_teacher(q.cfg, dataset=dataset, stats=stats, address=q.address)  # resumes from its newest checkpoint


class TeacherSampler:
    """The teacher's default sampler chosen on held-out prompts (sampler.json in its export)."""

    name = "teacher-sampler"

    def done(self, q: Quickstart) -> bool:
        return not q.plan.sampler_steps or (find_export(q.teacher_run) / SAMPLER_FILE).is_file()

    def run(self, q: Quickstart) -> None:
        from presto_ray.eval.sampler_search import grid, search_teacher_sampler

        p = q.plan
        search_teacher_sampler(str(q.teacher_run), q.valid, q.evals / "teacher-sampler",
                               grid(p.sampler_steps, p.sampler_cfg_scales, p.sampler_churns),
                               n=p.sampler_search_samples, reference=q.reference, batch_size=p.eval_batch,
                               seed=p.sampler_search_seed)


@dataclass
class Distill:
    method: str

    @property
    def name(self) -> str:
        return f"distill {self.method}"

    def config(self, q: Quickstart) -> PrestoConfig:
        return distill_config(q.cfg, q.plan, self.method, q.runs, q.teacher_run)

    def done(self, q: Quickstart) -> bool:
        return finished_step(q.runs / self.method) >= self.config(q).train.steps

    def run(self, q: Quickstart) -> None:
        from presto_ray.train.distill import distill

        distill(self.config(q), dataset=q.training_set.get()[0], address=q.address)


@dataclass
class Evaluate:
    case: EvalCase

    @property
    def name(self) -> str:
        return f"evaluate {self.case.name}"

    def done(self, q: Quickstart) -> bool:
        c = self.case
        done = storage.read_json_record(q.evals / c.name / "metrics.json")
        wanted = c.sampling.resolved(q.exported[c.run])  # a changed teacher sampler makes its rows stale
        return (done.get("model") == str(q.exports[c.run]) and done.get("n_samples") == q.plan.eval_samples
                and all(done.get(k, "-") == v for k, v in wanted.items()))

    def run(self, q: Quickstart) -> None:
        from presto_ray.eval.evaluate import evaluate

        evaluate(str(q.exports[self.case.run]), q.valid, q.evals / self.case.name, n=q.plan.eval_samples,
                 sampling=self.case.sampling, reference=q.reference, batch_size=q.plan.eval_batch)


@dataclass
class Curve:
    """KAD against generator updates over every checkpoint of a step-distillation run."""

    method: str

    @property
    def name(self) -> str:
        return f"curve {self.method}"

    def folder(self, q: Quickstart) -> Path:
        return q.evals / f"{self.method}-updates"

    def done(self, q: Quickstart) -> bool:
        return curve_is_current(q.runs / self.method, self.folder(q), q.plan.eval_samples)

    def run(self, q: Quickstart) -> None:
        update_curve(q.runs / self.method, q.valid, self.folder(q), n=q.plan.eval_samples, reference=q.reference,
                     batch_size=q.plan.eval_batch, known=[q.evals / self.method / "metrics.json"])


class Benchmark:
    """Batch-1 latency of every model in one run."""

    name = "benchmark"

    def done(self, q: Quickstart) -> bool:
        timed = storage.read_json_record(q.file("latency.json")) or {"entries": []}
        return list(dict.fromkeys(e["model"] for e in timed["entries"])) == q.models

    def run(self, q: Quickstart) -> None:
        from presto_ray.eval.latency import benchmark

        p = q.plan
        write_json(q.file("latency.json"), benchmark(q.models[0], q.models[1:], repeats=p.latency_repeats,
                                                     warmup=p.latency_warmup, teacher_steps=p.teacher_extra_steps))


class Metrics:
    """metrics.json: one entry per model and case, the latency and the update curves."""

    name = "metrics"

    def done(self, q: Quickstart) -> bool:
        return q.file("metrics.json").is_file() and not q.stages.ran

    def run(self, q: Quickstart) -> None:
        from presto_ray.quickstart.results import combine

        evaluations = [{"name": c.name, "case": c.case, "train_steps": q.exported[c.run].step,
                        "control_of": c.control_of,
                        "metrics": json.loads((q.evals / c.name / "metrics.json").read_text())} for c in q.cases]
        curves = {m: json.loads((Curve(m).folder(q) / "curve.json").read_text())["points"] for m in q.curve_methods}
        write_json(q.file("metrics.json"), combine(evaluations, json.loads(q.file("latency.json").read_text()), curves))


class Results:
    """results.md: the table and the paper's targets checked."""

    name = "results"

    def done(self, q: Quickstart) -> bool:
        return q.file("results.md").is_file() and not q.stages.ran

    def run(self, q: Quickstart) -> None:
        from presto_ray.eval.targets import results_markdown

        text = results_markdown(json.loads(q.file("metrics.json").read_text()),
                                title=f"presto_ray results ({q.cfg_name})", command=q.command,
                                date=time.strftime("%Y-%m-%d"))
        storage.write_bytes_atomic(str(q.file("results.md")), text.encode())


class Audio:
    """The first clips of each model and the reference for the same prompts."""

    name = "audio"

    def clips(self, q: Quickstart) -> int:
        return min(q.plan.report_clips, len(wavs(q.evals / q.cases[0].name / "audio")))

    def done(self, q: Quickstart) -> bool:
        return not q.stages.ran and all(len(wavs(f)) == self.clips(q) for f in q.audio_folders)

    def run(self, q: Quickstart) -> None:
        collect_audio(q.evals, [c.name for c in q.cases], q.audio, self.clips(q), q.valid,
                      q.exported["teacher"].cfg.codec)


class Report:
    name = "report"

    def done(self, q: Quickstart) -> bool:
        return q.file("report.html").is_file() and not q.stages.ran

    def run(self, q: Quickstart) -> None:
        from presto_ray.eval.report import write_report

        write_report(q.file("report.html"), latency=[q.file("latency.json")], metrics=[q.file("metrics.json")],
                     runs=[q.teacher_run, *(q.runs / m for m in q.methods)], audio=q.audio_folders,
                     title="presto_ray quickstart")


def stage_list(q: Quickstart) -> Iterator[Stage]:
    """The quickstart's stages in order (see :mod:`presto_ray.quickstart.pipeline`)."""
    yield from (Prepare(), TrainTeacher(), TeacherSampler())
    yield from (Distill(m) for m in q.methods)
    yield from (Evaluate(c) for c in q.cases)  # the cases read the exports the stages above wrote
    yield from (Curve(m) for m in q.curve_methods)
    yield from (Benchmark(), Metrics(), Results(), Audio(), Report())
