"""``presto-ray sweep layer-drop``: search the sigma -> budget schedule of a trained layer-dropping
student at inference (METHOD.md section 3: Presto-L is budget-conditioned, so one model serves
every schedule and the search needs no retraining).

Candidates are monotone: over the sigma bins from clean to noisy, the number of DiT blocks never
increases (fewer, or equal, blocks at higher noise). They are built monotone (every non-increasing
budget sequence for ``search: grid``, uniform draws among them for ``search: random``), hand-written
schedules are checked, and full depth is always the reference. Each candidate is one Ray Tune trial
that loads the export, generates the validation prompts under the schedule with the same seeds as
every other trial, and reports

* quality: KAD of musicnn embeddings with its 95% bootstrap interval over clips (the primary
  metric of ``evaluate``, :func:`presto_ray.eval.metrics.kad`) against the validation set's
  reference embeddings (computed once, in the same cache as ``evaluate``'s), and tempo / key /
  instrument adherence;
* cost: DiT blocks executed per sample, counted by forward hooks (CFG's unconditional pass
  included), and the measured batch-1 sampling latency.

The sweep writes to ``out``: ``trials.csv`` (every trial), ``pareto.csv`` and ``pareto.md`` (the
front of KAD against blocks per sample), ``pareto.png``, ``sweep.json`` (settings, reference and the
choice) and ``export/``: a copy of the input export whose ``config.yaml`` carries the chosen
``distill.budget_schedule``, so ``generate`` and ``evaluate`` use it by default. The choice is
:func:`presto_ray.sweep.pareto.cheapest_qualifying`: the fewest blocks per sample on the front
whose KAD is not resolved worse than full depth's (the low end of its interval at most full depth's
high end, plus ``choose.max_kad_increase``), the rule the teacher sampler search uses too. Tune
keeps its state under
``out/tune/``; rerunning the same sweep resumes it (finished trials are not run again).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from presto_ray.config import BudgetScheduleConfig, config_from_dict
from presto_ray.data import storage
from presto_ray.sweep.space import error_message, load_space_file
from presto_ray.distill.budget import BudgetSchedule
from presto_ray.distill.methods import method_of
from presto_ray.edm import karras_sigmas
from presto_ray.eval.metrics import not_resolved_worse
from presto_ray.generate import MusicGenerator, Prompt
from presto_ray.sweep.pareto import cheapest_qualifying, pareto_front
from presto_ray.train.export import Exported, load_export, write_export

log = logging.getLogger("presto_ray.sweep")

MAX_GRID = 1000
"""A grid with more candidates than this is refused (use ``search: random``)."""

# ------------------------------------------------------------------------------ the space file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FixedSchedule(_Strict):
    """A hand-written candidate: its own sigma edges and budgets (low sigma first)."""

    edges: list[float] = []
    budgets: list[int]


class LatencySettings(_Strict):
    """Batch-1 sampling latency: median of ``repeats`` timed runs after ``warmup`` untimed ones."""

    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)


class TrialResources(_Strict):
    """Ray resources of one trial."""

    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)


class ChoiceRule(_Strict):
    """The saved schedule: the cheapest Pareto point whose KAD interval's low end is at most full
    depth's high end plus ``max_kad_increase`` (KAD units, x1000): not resolved worse than full
    depth, with an optional tolerance."""

    max_kad_increase: float = Field(0.0, ge=0)


class LayerDropSpace(_Strict):
    """The search space and settings of a layer-drop sweep (``tuning/layer_drop.yaml``)."""

    edges: list[float] | None = None  # sigma bin edges (ascending); or leave out and give bins
    bins: int | None = Field(None, ge=1)  # edges between the sampler's noise levels, equal levels per bin
    budgets: list[int] | None = None  # budgets a bin may take; None = every allowed one
    search: Literal["grid", "random"] = "grid"
    num_trials: int | None = Field(None, ge=1)  # random: schedules drawn (besides full depth and fixed ones)
    schedules: list[FixedSchedule] = []  # extra hand-written candidates
    prompts: int = Field(16, ge=2)  # validation prompts (held-out rows), as evaluate -n
    seed: int = 0  # rows taken and per-prompt noise seeds, as evaluate --seed (the same in every trial)
    steps: int | None = Field(None, ge=1)  # sampler steps; None = the export's own
    batch_size: int = Field(8, ge=1)
    latency: LatencySettings = LatencySettings()
    resources: TrialResources = TrialResources()
    max_concurrent_trials: int | None = Field(1, ge=1)  # None: as many as the cluster fits
    choose: ChoiceRule = ChoiceRule()

    @model_validator(mode="after")
    def _consistent(self) -> "LayerDropSpace":
        if self.edges is not None and self.bins is not None:
            raise ValueError("give either edges or bins, not both")
        if self.edges is None and self.bins is None:
            self.bins = 3
        if self.edges is not None and (any(e <= 0 for e in self.edges)
                                       or any(b <= a for a, b in zip(self.edges, self.edges[1:]))):
            raise ValueError(f"edges must be positive and increasing, got {self.edges}")
        if self.budgets is not None and (not self.budgets or len(set(self.budgets)) != len(self.budgets)
                                         or min(self.budgets) < 1):
            raise ValueError(f"budgets must be distinct positive block counts, got {self.budgets}")
        if (self.search == "random") != (self.num_trials is not None):
            raise ValueError("num_trials is needed by search: random, and only by it")
        for i, s in enumerate(self.schedules):
            try:
                BudgetScheduleConfig(edges=s.edges, budgets=s.budgets)
            except ValidationError as err:
                raise ValueError(f"schedules[{i}]: {error_message(err.errors()[0])}") from None
            if not is_monotone(s.budgets):
                raise ValueError(f"schedules[{i}]: budgets {s.budgets} increase with sigma; a candidate runs "
                                 f"fewer (or equal) blocks at higher noise")
        return self


def load_space(path: str | Path) -> LayerDropSpace:
    """Read and validate a space file; an unknown or ill-typed key raises ConfigError (a ValueError)
    naming the key and the file."""
    return load_space_file(path, LayerDropSpace)


# ------------------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class Candidate:
    """One trial's schedule and its label in tables and plots."""

    label: str
    schedule: BudgetSchedule


def is_monotone(budgets: list[int]) -> bool:
    """True when budgets (ordered from low to high sigma) never increase."""
    return all(b <= a for a, b in zip(budgets, budgets[1:]))


def monotone_budgets(allowed: list[int], bins: int) -> list[tuple[int, ...]]:
    """Every non-increasing sequence of ``bins`` budgets from ``allowed`` (low sigma first); there
    are C(len(allowed) + bins - 1, bins) of them."""
    return list(itertools.combinations_with_replacement(sorted(set(allowed), reverse=True), bins))


def sample_monotone_budgets(allowed: list[int], bins: int, n: int, seed: int,
                            exclude: set[tuple[int, ...]] = frozenset()) -> list[tuple[int, ...]]:
    """``n`` distinct non-increasing sequences drawn uniformly (all of them, less ``exclude``,
    when there are no more). A draw is a ``bins``-subset c_0 < ... < c_{K-1} of
    range(len(allowed) + bins - 1), read as indices c_j - j (stars and bars) into ``allowed``
    sorted from most to fewest blocks, so no sequence list is ever built."""
    values = sorted(set(allowed), reverse=True)
    excluded = {s for s in exclude if len(s) == bins and is_monotone(list(s)) and set(s) <= set(values)}
    if n >= math.comb(len(values) + bins - 1, bins) - len(excluded):
        return [s for s in monotone_budgets(values, bins) if s not in exclude]
    rng = random.Random(seed)
    drawn: dict[tuple[int, ...], None] = {}
    while len(drawn) < n:
        picks = sorted(rng.sample(range(len(values) + bins - 1), bins))
        seq = tuple(values[c - j] for j, c in enumerate(picks))
        if seq not in exclude:
            drawn[seq] = None
    return list(drawn)


def sampler_levels(gen: MusicGenerator, steps: int | None) -> list[float]:
    """The noise levels (ascending, > 0) at which ``gen``'s sampler evaluates the network with
    ``steps`` steps (None: the export's default), from the same Karras discretisation."""
    from presto_ray.generate import sampler_steps

    cfg = gen.export.cfg
    rho = cfg.distill.student_rho if gen.sampler == "pingpong" else cfg.sampler.rho
    sigmas = karras_sigmas(sampler_steps(cfg, gen.sampler, steps), cfg.edm.sigma_min, cfg.edm.sigma_max, rho,
                           dtype=torch.float64)
    return sorted(float(s) for s in sigmas if s > 0)


def edges_for_bins(levels: list[float], bins: int) -> list[float]:
    """``bins - 1`` sigma edges splitting the ascending noise levels into ``bins`` groups of equal
    size (within one); each edge is the geometric mean of the two levels it separates."""
    n = len(levels)
    if not 1 <= bins <= n:
        raise ValueError(f"bins={bins} needs between 1 and the sampler's {n} noise levels")
    cuts = [j * n // bins for j in range(1, bins)]
    return [math.sqrt(levels[c - 1] * levels[c]) for c in cuts]


def make_candidates(space: LayerDropSpace, depth: int, lowest: int, levels: list[float]) -> list[Candidate]:
    """Full depth first, then the searched schedules, then the hand-written ones (duplicates and
    schedules equal to full depth dropped). ``lowest``: the fewest blocks the model allows."""
    edges = list(space.edges) if space.edges is not None else edges_for_bins(levels, space.bins)
    allowed = list(space.budgets) if space.budgets is not None else list(range(lowest, depth + 1))
    bad = [b for b in allowed if not lowest <= b <= depth]
    if bad:
        raise ValueError(f"budgets {bad} are outside [{lowest}, depth={depth}] for this model")
    bins = len(edges) + 1
    full = (depth,) * bins
    if space.search == "grid":
        total = math.comb(len(set(allowed)) + bins - 1, bins)
        if total > MAX_GRID:
            raise ValueError(f"the grid holds {total} schedules (> {MAX_GRID}); use search: random with num_trials")
        searched = [s for s in monotone_budgets(allowed, bins) if s != full]
    else:
        searched = sample_monotone_budgets(allowed, bins, space.num_trials, space.seed, exclude={full})
    out = [Candidate("full depth", BudgetSchedule([], []))]
    seen = {((), ())}
    for budgets in searched:
        out.append(Candidate("-".join(map(str, budgets)), BudgetSchedule(edges, list(budgets))))
        seen.add((tuple(edges), budgets))
    for i, fixed in enumerate(space.schedules):
        schedule = BudgetSchedule(fixed.edges, fixed.budgets)
        try:
            schedule.validate(depth, lowest)
        except ValueError as err:
            raise ValueError(f"schedules[{i}]: {err}") from None
        key = ((), ()) if all(b == depth for b in fixed.budgets) else (tuple(schedule.edges), tuple(schedule.budgets))
        if key not in seen:
            seen.add(key)
            out.append(Candidate(f"fixed {i}: " + "-".join(map(str, fixed.budgets)), schedule))
    return out


# ------------------------------------------------------------------------------ one trial


@dataclass
class TrialSetup:
    """What every trial shares (put in the object store once by ``tune.with_parameters``)."""

    checkpoint: str
    prompts: list[Prompt]
    reference: np.ndarray  # [frames, 200] musicnn features of the validation audio (evaluate's reference)
    reference_groups: np.ndarray  # [frames] the clip of each reference frame (the bootstrap's unit)
    steps: int | None
    batch_size: int
    latency: LatencySettings
    seed: int  # of the KAD bootstrap


def measure_schedule(gen: MusicGenerator, setup: TrialSetup) -> dict:
    """Generate ``setup.prompts`` under ``gen.schedule`` and score them.

    Returns kad, kad_ci ([low, high], 95% bootstrap over clips), tempo_err_bpm,
    tempo_err_octave_bpm, key_acc, instrument_acc (those the captions allow), blocks_per_sample
    (rows through DiT blocks / samples), evals_per_sample (network passes per sample, CFG's
    included), block_fraction, and sampling_s / total_s of one batch-1 clip."""
    from presto_ray.eval.adherence import adherence_metrics
    from presto_ray.eval.embeddings import load_embedder
    from presto_ray.eval.evaluate import embed_clips
    from presto_ray.eval.latency import Case, counting, measure
    from presto_ray.eval.metrics import kad, kad_ci

    n = len(setup.prompts)
    with counting(gen) as counts:
        wavs = gen.generate(setup.prompts, batch_size=setup.batch_size, progress=False, steps=setup.steps)
    embedder = load_embedder("musicnn")
    feats, groups, embedded = embed_clips(embedder, wavs, gen.sample_rate)
    pair = {"gen_groups": groups, "ref_groups": setup.reference_groups}
    out = {"kad": kad(feats, setup.reference, **pair),
           "kad_ci": list(kad_ci(feats, setup.reference, **pair, seed=setup.seed)),
           "blocks_per_sample": counts["block_rows"] / n,
           "evals_per_sample": counts["rows"] / n,
           "block_fraction": counts["block_rows"] / (counts["rows"] * gen.export.cfg.model.depth)}
    out.update(adherence_metrics(wavs, gen.sample_rate, [p.text for p in setup.prompts], [p.bpm for p in setup.prompts],
                                 [e["tags"].numpy().mean(0) for e in embedded], embedder.tag_names))
    timing = measure(gen, Case("schedule", gen.sampler, setup.steps), prompt=setup.prompts[0],
                     repeats=setup.latency.repeats, warmup=setup.latency.warmup)
    out.update(sampling_s=timing["sampling_s"], total_s=timing["total_s"])
    return out


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable: ``config["candidate"]`` = {index, label, edges, budgets}."""
    from ray import tune

    c = config["candidate"]
    gen = MusicGenerator(setup.checkpoint, budget_schedule=BudgetSchedule(c["edges"], c["budgets"]))
    tune.report(measure_schedule(gen, setup))


# ------------------------------------------------------------------------------ the sweep

METRICS = ["blocks_per_sample", "block_fraction", "evals_per_sample", "kad", "kad_ci", "tempo_err_bpm",
           "tempo_err_octave_bpm", "key_acc", "instrument_acc", "sampling_s", "total_s"]
"""What a trial reports (:func:`measure_schedule`); adherence keys only when the captions allow them."""
COLUMNS = ["index", "label", "edges", "budgets", *METRICS, "on_front", "chosen", "trial_id"]
"""Columns of trials.csv and pareto.csv (edges and budgets as JSON lists)."""


def save_schedule_export(exported: Exported, schedule: BudgetSchedule, dest: Path, *,
                         steps: int | None = None, sampler: str = "teacher") -> Path:
    """Copy ``exported`` to ``dest`` with ``distill.budget_schedule`` = ``schedule`` (and, when
    ``steps`` is given, the sampler's default steps: ``sampler.steps`` or
    ``distill.student_steps``); weights are checksum-verified on the way and ``export.json`` is
    written anew by :func:`write_export`. ``dest`` is replaced whole."""
    cfg = exported.cfg
    distill = {"budget_schedule": BudgetScheduleConfig(edges=schedule.edges, budgets=schedule.budgets)}
    update = {}
    if steps is not None and sampler == "pingpong":
        distill["student_steps"] = steps
    elif steps is not None:
        update["sampler"] = cfg.sampler.model_copy(update={"steps": steps})
    update["distill"] = cfg.distill.model_copy(update=distill)
    new_cfg = config_from_dict(cfg.model_copy(update=update).model_dump(mode="json"), f"{dest}/config.yaml")
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    write_export(part, {role: exported.state_dict(role) for role in exported.roles}, new_cfg, exported.stats,
                 exported.step)
    written = load_export(part)
    for role in written.roles:
        written.state_dict(role)  # the digests in the new export.json verify
    shutil.rmtree(dest, ignore_errors=True)
    part.rename(dest)
    return dest


def _run_trials(candidates: list[Candidate], setup: TrialSetup, space: LayerDropSpace, tune_uri: str,
                name: str, progress: bool) -> dict[int, dict]:
    """One Tune trial per candidate, the experiment stored at ``tune_uri/name`` (local or s3://)
    and resumed when it exists. Returns candidate index -> the trial's reported metrics (with
    Tune's trial_id)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    fs, tune_dir = storage.resolve(tune_uri)
    fs = fs if storage.is_remote(tune_uri) else None
    path = f"{tune_dir}/{name}"
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("resuming the sweep in %s", storage.join(tune_uri, name))
        tuner = tune.Tuner.restore(path, trainable, restart_errored=True, storage_filesystem=fs)
    else:
        space_json = [{"index": i, "label": c.label, "edges": c.schedule.edges, "budgets": c.schedule.budgets}
                      for i, c in enumerate(candidates)]
        tuner = tune.Tuner(
            trainable, param_space={"candidate": tune.grid_search(space_json)},
            tune_config=tune.TuneConfig(max_concurrent_trials=space.max_concurrent_trials, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=tune_dir, storage_filesystem=fs,
                                      verbose=1 if progress else 0))
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} layer-drop trial(s) failed (logs under "
                           f"{storage.join(tune_uri, name)}): {grid.errors[0]}")
    results = {r.config["candidate"]["index"]: r.metrics for r in grid}
    missing = sorted(set(range(len(candidates))) - set(results))
    if missing:
        raise RuntimeError(f"no result for candidates {missing} in {storage.join(tune_uri, name)}")
    return results


def _publish(folder: Path, out: str) -> None:
    """Copy the files under ``folder`` to the object-storage folder ``out``; ``export/export.json``
    goes last, so the export reads as complete only once its weights are there."""
    import pyarrow.fs as pafs

    fs, root = storage.resolve(out)
    files = sorted((p for p in folder.rglob("*") if p.is_file()),
                   key=lambda p: (p.relative_to(folder).as_posix() == "export/export.json", str(p)))
    for f in files:
        pafs.copy_files(str(f), f"{root}/{f.relative_to(folder).as_posix()}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    path.write_text(buf.getvalue())


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _kad(row: dict) -> str:
    low, high = row["kad_ci"]
    return f"{row['kad']:.1f} [{low:.1f}, {high:.1f}]"


def choose_schedule(rows: list[dict], max_kad_increase: float) -> tuple[list[int], int]:
    """(Pareto front indices, chosen index) of trial rows (blocks_per_sample, kad, kad_ci; full
    depth first): the cheapest front point whose KAD interval's low end is at most full depth's
    high end + ``max_kad_increase``."""
    points = [(r["blocks_per_sample"], r["kad"]) for r in rows]
    qualifies = not_resolved_worse([r["kad_ci"] for r in rows], 0, max_kad_increase)
    return pareto_front(points), cheapest_qualifying(points, qualifies, 0)


def _write_markdown(path: Path, rows: list[dict], front: list[int], chosen: int, space: LayerDropSpace,
                    depth: int) -> None:
    full = rows[0]
    lines = [f"# Layer-drop sweep: Pareto front ({len(front)} of {len(rows)} schedules)", "",
             "Cost: DiT blocks executed per sample (counted by hooks, CFG included); quality: KAD x1000 "
             f"(lower is better) with its 95% bootstrap interval over {space.prompts} clips.",
             f"Full depth ({depth} blocks): {full['blocks_per_sample']:.0f} blocks per sample, KAD {_kad(full)}.",
             "Chosen: the cheapest front point whose KAD interval reaches down to full depth's upper end"
             + (f" + {space.choose.max_kad_increase:g}" if space.choose.max_kad_increase else "")
             + f" (not resolved worse) -> **{rows[chosen]['label']}** (edges {rows[chosen]['edges']}, "
             f"budgets {rows[chosen]['budgets']}).", "",
             "| schedule | edges | budgets | blocks/sample | vs full | KAD [95% CI] | tempo err, octave-folded (bpm) | "
             "key acc | instrument acc | sampling (ms) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i in front:
        r = rows[i]
        name = f"**{r['label']}**" if i == chosen else r["label"]
        lines.append(f"| {name} | {r['edges']} | {r['budgets']} | {r['blocks_per_sample']:.0f} | "
                     f"{r['blocks_per_sample'] / full['blocks_per_sample']:.2f} | {_kad(r)} | "
                     f"{_fmt(r.get('tempo_err_octave_bpm'))} | {_fmt(r.get('key_acc'))} | "
                     f"{_fmt(r.get('instrument_acc'))} | {1000 * r['sampling_s']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def _plot(path: Path, rows: list[dict], front: list[int], chosen: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = np.array([r["blocks_per_sample"] for r in rows])
    y = np.array([r["kad"] for r in rows])
    ci = np.array([r["kad_ci"] for r in rows])
    ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="o", ms=4, color="0.6", elinewidth=0.8,
                label="schedules (95% CI)")
    ax.step(x[front], y[front], where="post", color="tab:red", marker="o", label="Pareto front")
    ax.scatter([x[0]], [y[0]], s=80, marker="s", facecolors="none", edgecolors="k", label="full depth")
    ax.scatter([x[chosen]], [y[chosen]], s=160, marker="*", color="tab:blue",
               label=f"chosen ({rows[chosen]['label']})", zorder=3)
    ax.axhspan(ci[0, 0], ci[0, 1], color="tab:blue", alpha=0.12, label="full depth's interval")
    for i in front:
        ax.annotate(rows[i]["label"], (x[i], y[i]), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("DiT blocks executed per sample")
    ax.set_ylabel("KAD x1000 (musicnn)")
    ax.set_title("Layer-drop schedules")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_drop_sweep(checkpoint: str, data: str, space: LayerDropSpace, out: str, *, address: str | None = None,
                     progress: bool = True) -> dict:
    """Sweep sigma -> budget schedules of the layer-dropping student at ``checkpoint`` (an export,
    step or run folder of a presto-l, presto-ls or ase run) on held-out prompts of the shard set
    ``data``, writing the tables, plot, Tune experiment and chosen export under ``out`` (each a
    local path or s3:// URI). Returns sweep.json's document: settings, ``trials`` (one row per
    candidate, full depth first), ``front`` (indices), ``chosen`` (index) and ``export``."""
    from presto_ray.eval.embeddings import load_embedder
    from presto_ray.eval.evaluate import ReferenceAudio, held_out_rows, reference_features
    from presto_ray.train.cluster import ensure_ray

    ensure_ray(address)
    checkpoint, data, out = storage.absolute(checkpoint), storage.absolute(data), storage.absolute(out)
    gen = MusicGenerator(checkpoint)
    cfg = gen.export.cfg
    method = method_of(cfg, gen.role)
    if not method.uses_budget_schedule:
        raise ValueError(f"{gen.export.folder}: a layer-drop sweep needs a layer-dropping student (presto-l, "
                         f"presto-ls, ase); this export holds a {method.name} model")
    depth = cfg.model.depth
    lowest = method.lowest_budget(cfg.model)
    candidates = make_candidates(space, depth, lowest, sampler_levels(gen, space.steps))
    rows = held_out_rows(data, space.prompts, space.seed)
    prompts = [Prompt(str(r["caption"]), float(r["bpm"]) if math.isfinite(float(r["bpm"])) else None, None,
                      space.seed + i) for i, r in enumerate(rows)]
    reference, reference_groups, cache_file = reference_features(load_embedder("musicnn"),
                                                  ReferenceAudio(gen, [data], space.seed, n=space.prompts), space.seed)
    log.info("layer-drop sweep: %d schedules on %d prompts (reference embeddings: %s)", len(candidates),
             len(prompts), cache_file)

    setup = TrialSetup(checkpoint, prompts, reference, reference_groups, space.steps, space.batch_size, space.latency,
                       space.seed)
    identity = {"export": (gen.export.folder / "export.json").read_text(), "reference": cache_file.name,
                "metric": "kad",
                "candidates": [[c.schedule.edges, c.schedule.budgets] for c in candidates],
                "space": space.model_dump(mode="json", include={"prompts", "seed", "steps", "batch_size", "latency"})}
    name = "layer_drop-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    results = _run_trials(candidates, setup, space, storage.join(out, "tune"), name, progress)

    table = [{"index": i, "label": c.label, "edges": c.schedule.edges, "budgets": c.schedule.budgets,
              **{k: results[i].get(k) for k in METRICS}, "trial_id": results[i].get("trial_id")}
             for i, c in enumerate(candidates)]
    front, chosen = choose_schedule(table, space.choose.max_kad_increase)
    for i, r in enumerate(table):
        r["on_front"], r["chosen"] = i in front, i == chosen
    doc = {"checkpoint": checkpoint, "data": data, "space": space.model_dump(mode="json"), "depth": depth,
           "sampler": gen.sampler, "reference_cache": str(cache_file), "tune": storage.join(out, "tune", name),
           "trials": table, "front": front, "chosen": chosen, "export": storage.join(out, "export")}
    with tempfile.TemporaryDirectory(prefix="presto-sweep-") as tmp:
        folder = Path(tmp) if storage.is_remote(out) else storage.local_path(out)
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "trials.csv", table)
        _write_csv(folder / "pareto.csv", [table[i] for i in front])
        _write_markdown(folder / "pareto.md", table, front, chosen, space, depth)
        _plot(folder / "pareto.png", table, front, chosen)
        (folder / "sweep.json").write_text(json.dumps(doc, indent=2))
        save_schedule_export(gen.export, candidates[chosen].schedule, folder / "export", steps=space.steps,
                             sampler=gen.sampler)
        if storage.is_remote(out):
            _publish(folder, out)
    log.info("layer-drop sweep: chose %s (%.0f of %.0f blocks per sample, KAD %s vs full depth %s); export in %s",
             table[chosen]["label"], table[chosen]["blocks_per_sample"], table[0]["blocks_per_sample"],
             _kad(table[chosen]), _kad(table[0]), doc["export"])
    return doc
