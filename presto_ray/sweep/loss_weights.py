"""``presto-ray sweep loss-weights``: Presto-S's loss weights (nu1, nu2, w_real), learning rates,
ttur and noise distributions searched with Ray Tune.

Each trial is a Ray Train distillation run (:func:`presto_ray.train.distill.distill`) driven by a
Tune function: the workers' fixed-batch evaluations (the method's ``evaluate``) reach Tune through Ray
Train's ``TuneReportCallback`` while the run trains, and ASHA stops the trials that trail at its
rungs. The search space is a YAML file (``tuning/loss_weights.yaml``) read by :func:`load_space`.

Layout under ``<storage_path>/<name>/`` (local or s3://), beside Tune's own experiment state:

    sweep.json              the search space and base config the sweep started with
    runs/<trial_id>/        each trial's distill run (checkpoints, export/, config.yaml)
    results.csv             one row per trial: status, steps, its parameters, last and best metric
    best_config.yaml        the best trial's full config: ``presto-ray distill --config`` takes it
    released_groups.jsonl   placement groups left behind by stopped trials and released
                            (see :mod:`presto_ray.sweep.resources`)

Submitting the same sweep again (same storage and name) restores Tune's state: finished trials
stay, unfinished ones start again and their distill runs resume from their last checkpoints.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from presto_ray.config import ConfigError, PrestoConfig, config_from_dict, config_to_yaml, deep_merge
from presto_ray.data import storage
from presto_ray.distill.methods import PRESTO_S, method_for
from presto_ray.sweep.space import load_space_file
from presto_ray.sweep.resources import OrphanedGroupReleaser, free_resources, read_ledger, settle
from presto_ray.train.cluster import ensure_ray
from presto_ray.train.distill import distill, prepare_distill

log = logging.getLogger("presto_ray.sweep")

KINDS = ("loguniform", "uniform", "choice", "grid")
SWEEP_OWNED = ("run", "distill.method", "distill.teacher", "distill.init")
"""Config keys the sweep sets itself; a search space may not set them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One searched value: exactly one of ``loguniform: [low, high]``, ``uniform: [low, high]``
    (sampled), ``choice: [v, ...]`` (sampled uniformly) or ``grid: [v, ...]`` (every value, times
    ``num_samples``). Values may be mappings, e.g. a whole noise distribution."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Distribution":
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        kind, args = given[0], getattr(self, given[0])
        if kind in ("loguniform", "uniform"):
            low, high = args
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"{kind} needs finite bounds [low, high] with low < high, got {list(args)}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs a positive lower bound, got {low}")
        elif not args:
            raise ValueError(f"{kind} needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def to_tune(self):
        """The Ray Tune search-space object."""
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.choice is not None:
            return tune.choice(list(self.choice))
        return tune.grid_search(list(self.grid))

    def candidates(self) -> list[Any]:
        """Values checked against the config before the sweep starts: both bounds, or every value."""
        return list(getattr(self, self.kind))


class AshaSettings(_Strict):
    """ASHA on the training step (``time_attr=step``): trials are compared at ``grace_period``,
    ``grace_period * reduction_factor``, ... steps and all stop at ``max_t`` (default
    ``train.steps``). A rung counts the first evaluation at or after it (``train.eval_every``)."""

    grace_period: int = 1
    max_t: int | None = None
    reduction_factor: float = 3.0

    @model_validator(mode="after")
    def _ranges(self) -> "AshaSettings":
        if self.grace_period < 1:
            raise ValueError(f"grace_period must be >= 1, got {self.grace_period}")
        if self.max_t is not None and self.max_t < self.grace_period:
            raise ValueError(f"max_t={self.max_t} must be >= grace_period={self.grace_period}")
        if self.reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {self.reduction_factor}")
        return self


class TrialResources(_Strict):
    """Resources a trial takes beside its Train workers (those come from ``train.num_workers``,
    ``train.cpus_per_worker``, ``train.use_gpu``): the Tune driver function's CPUs. Keep a CPU free
    for Ray Data beyond the trials that run at once."""

    driver_cpus: float = 1.0
    max_concurrent_trials: int = 1

    @model_validator(mode="after")
    def _positive(self) -> "TrialResources":
        if self.driver_cpus <= 0 or self.max_concurrent_trials < 1:
            raise ValueError("driver_cpus must be > 0 and max_concurrent_trials >= 1")
        return self


class LossWeightSpace(_Strict):
    """A loss-weight search space (``tuning/loss_weights.yaml``). ``fixed``: dotted config
    overrides for every trial (e.g. ``train.steps``); ``params``: dotted config key -> distribution."""

    metric: str = "eval_moment_err@1"
    mode: Literal["min", "max"] = "min"
    num_samples: int = 8
    seed: int = 0
    asha: AshaSettings = AshaSettings()
    resources: TrialResources = TrialResources()
    fixed: dict[str, Any] = {}
    params: dict[str, Distribution]
    _source: str = PrivateAttr(default="search space")

    @model_validator(mode="after")
    def _keys(self) -> "LossWeightSpace":
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not self.params:
            raise ValueError("params is empty: nothing to search")
        keys = [*self.fixed, *self.params]
        for key in keys:
            if any(key == owned or key.startswith(owned + ".") for owned in SWEEP_OWNED):
                raise ValueError(f"key '{key}' is set by the sweep itself (run name and storage, method, teacher)")
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"key '{key}' is both in fixed and in params")
            inside = [k for k in keys if k.startswith(key + ".")]
            if inside:
                raise ValueError(f"key '{key}' overlaps {inside}: give the whole section or its fields")
        return self

    @property
    def source(self) -> str:
        return self._source


def load_space(path: str | Path) -> LossWeightSpace:
    """Read and validate a search-space YAML file; errors name the key and the file."""
    space = load_space_file(path, LossWeightSpace)
    space._source = str(Path(path))
    return space


def nest(dotted: dict[str, Any]) -> dict:
    """``{"distill.nu1": 0.1}`` -> ``{"distill": {"nu1": 0.1}}``."""
    tree: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def trial_config(base: dict, params: dict[str, Any], runs_uri: str, run_name: str) -> PrestoConfig:
    """A trial's config: ``base`` (a config as a dict) with ``params`` (dotted keys) set, run in
    ``runs_uri/run_name``."""
    tree = deep_merge(base, nest(params))
    tree["run"] = {"name": run_name, "storage_path": runs_uri}
    return config_from_dict(tree, f"trial {run_name}")


def check_space(cfg: PrestoConfig, space: LossWeightSpace) -> dict:
    """The base config of every trial (``cfg`` with ``space.fixed``, as a dict), after checking that
    every searched value makes a valid config and that every report carries the metric. Errors
    name the key and the space file."""
    if method_for(cfg.distill.method) is not PRESTO_S:
        raise ConfigError(f"the loss-weight sweep trains Presto-S; distill.method is '{cfg.distill.method}'")
    try:
        base = config_from_dict(deep_merge(cfg.model_dump(mode="json"), nest(space.fixed)), "fixed")
    except ConfigError as err:
        raise ConfigError(f"{space.source}: {err}") from None
    tree = base.model_dump(mode="json")
    for key, dist in space.params.items():
        for value in dist.candidates():
            try:
                trial_config(tree, {key: value}, "runs", "check")
            except ConfigError as err:
                raise ConfigError(f"{space.source}: params key '{key}' with value {value!r}: {err}") from None
    train = base.train
    if train.checkpoint_every % train.eval_every:
        raise ConfigError(f"{space.source}: train.checkpoint_every={train.checkpoint_every} must be a multiple of "
                          f"train.eval_every={train.eval_every}: every report reaches Tune and must carry the metric")
    reported = sorted({f"eval_moment_err@{n}" for n in (1, base.distill.student_steps)})
    if space.metric not in reported:
        raise ConfigError(f"{space.source}: metric '{space.metric}' is not reported by the evaluation; use one of {reported}")
    max_t = space.asha.max_t or train.steps
    if max_t > train.steps:
        raise ConfigError(f"{space.source}: asha.max_t={max_t} exceeds train.steps={train.steps}")
    if space.asha.grace_period > max_t:
        raise ConfigError(f"{space.source}: asha.grace_period={space.asha.grace_period} exceeds max_t={max_t}")
    return tree


def run_trial(params: dict, *, base: dict, runs_uri: str, dataset: ray.data.Dataset | None = None) -> None:
    """Tune function of one trial: a distill run named after the trial, reporting to Tune."""
    run_name = tune.get_context().get_trial_id()
    distill(trial_config(base, params, runs_uri, run_name), dataset=dataset, callbacks=[TuneReportCallback()])


def results_table(grid, space: LossWeightSpace, steps: int, runs_uri: str) -> list[dict]:
    """One row per trial of a Tune ResultGrid, in trial-id order: trial_id, status, last_step,
    stopped_early (by ASHA, before ``steps``), each searched key, the metric's last and best value,
    the run folder and the error's first line."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        values = history[space.metric].dropna() if history is not None and space.metric in history else []
        last_step = int(result.metrics.get("step") or 0)
        trial_id = result.metrics["trial_id"]
        row = {"trial_id": trial_id, "status": "ERROR" if result.error else "TERMINATED",
               "last_step": last_step, "stopped_early": result.error is None and last_step < steps}
        row.update({k: result.config.get(k) for k in space.params})
        row.update({space.metric: result.metrics.get(space.metric),
                    f"best_{space.metric}": (float(min(values) if space.mode == "min" else max(values))
                                             if len(values) else None),
                    "run": storage.join(runs_uri, trial_id),
                    "error": (str(result.error).strip().splitlines() or [type(result.error).__name__])[0]
                    if result.error else ""})
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def best_row(rows: list[dict], space: LossWeightSpace) -> dict | None:
    """The best trial among those that trained longest (values from different steps are not
    compared): by its last reported metric."""
    done = [r for r in rows if r["status"] == "TERMINATED" and r[space.metric] is not None]
    if not done:
        return None
    longest = max(r["last_step"] for r in done)
    sign = 1.0 if space.mode == "min" else -1.0
    return min((r for r in done if r["last_step"] == longest), key=lambda r: sign * r[space.metric])


def _csv(rows: list[dict]) -> bytes:
    """The table as CSV; mapping and list values (e.g. a noise distribution) as JSON."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
                         for k, v in row.items()})
    return out.getvalue().encode()


def _record_or_check(sweep_uri: str, record: dict, restoring: bool) -> None:
    """First submission: save the space and base config. Later ones must match them (Tune restores
    the original space and the trials would train another config)."""
    uri = storage.join(sweep_uri, "sweep.json")
    if not restoring:
        storage.write_bytes_atomic(uri, json.dumps(record, indent=1, sort_keys=True).encode())
        return
    saved = json.loads(storage.read_bytes(uri))
    for what in ("space", "base_config"):
        if saved[what] != record[what]:
            raise ConfigError(f"sweep '{sweep_uri}' was started with another {what.replace('_', ' ')}; "
                              "resubmit it unchanged or choose another name")


def _new_tuner(trainable, space: LossWeightSpace, max_t: int, name: str, storage_path: str,
               fs_arg, ledger: str) -> tune.Tuner:
    """A fresh Tuner: ASHA on the training step, seeded draws, the orphaned-group releaser."""
    asha = ASHAScheduler(time_attr="step", max_t=max_t, grace_period=space.asha.grace_period,
                         reduction_factor=space.asha.reduction_factor)
    # BasicVariantGenerator limits concurrency itself (TuneConfig.max_concurrent_trials is ignored with it)
    search = BasicVariantGenerator(max_concurrent=space.resources.max_concurrent_trials, random_state=space.seed)
    return tune.Tuner(
        trainable, param_space={k: d.to_tune() for k, d in space.params.items()},
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, scheduler=asha,
                                    num_samples=space.num_samples, search_alg=search),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs_arg,
                                  callbacks=[OrphanedGroupReleaser(ledger)]))


def loss_weight_sweep(cfg: PrestoConfig, space: LossWeightSpace, storage_path: str, name: str, *,
                      address: str | None = None, dataset: ray.data.Dataset | None = None) -> dict:
    """Run (or restore) the sweep ``name`` under ``storage_path``; returns its summary: sweep,
    results and best_config URIs, best_trial, best_value, rows (the results table), restored,
    released_groups (placement groups released so far) and missing_resources (what the cluster
    still lacked against its pre-sweep free resources; {} when all came back).

    ``cfg`` is the base Presto-S config with ``distill.teacher`` set; ``dataset`` (optional) is
    given to every trial instead of each one reading ``cfg.data``."""
    storage.check_reachable(storage_path, "sweep storage (run.storage_path)")  # before the teacher loads
    sweep_uri = storage.join(storage.absolute(storage_path), name)
    runs_uri = storage.join(sweep_uri, "runs")
    ledger = storage.join(sweep_uri, "released_groups.jsonl")
    # load the teacher once, as a trial will: fails before any trial starts; absolute teacher path
    resolved = prepare_distill(trial_config(cfg.model_dump(mode="json"), {}, runs_uri, "check"))[0]
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(
        update={"teacher": resolved.distill.teacher, "init": resolved.distill.init})})
    base = check_space(cfg, space)
    train = config_from_dict(base).train
    fs, sweep_path = storage.resolve(sweep_uri)
    fs_arg = fs if storage.is_remote(sweep_uri) else None

    per_trial = space.resources.driver_cpus + train.num_workers * train.cpus_per_worker
    need = space.resources.max_concurrent_trials * per_trial + 1  # + 1: Ray Data feeds the workers
    ensure_ray(address, num_cpus=math.ceil(need))
    if ray.cluster_resources().get("CPU", 0.0) < need:
        log.warning("the cluster has %g CPUs now; %d trials at once need %g (driver and workers) plus one "
                    "for Ray Data: without an autoscaler adding nodes, trials wait or stall",
                    ray.cluster_resources().get("CPU", 0.0), space.resources.max_concurrent_trials, need)
    baseline = free_resources()

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, runs_uri=runs_uri, dataset=dataset),
        {"CPU": space.resources.driver_cpus})
    restoring = tune.Tuner.can_restore(sweep_path, storage_filesystem=fs_arg)
    _record_or_check(sweep_uri, {"space": space.model_dump(mode="json"), "base_config": base}, restoring)
    if restoring:
        log.info("restoring sweep %s: finished trials are kept, unfinished ones resume", sweep_uri)
        tuner = tune.Tuner.restore(sweep_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs_arg)
    else:
        tuner = _new_tuner(trainable, space, space.asha.max_t or train.steps, name,
                           storage.resolve(storage.absolute(storage_path))[1], fs_arg, ledger)
    grid = tuner.fit()
    missing = settle(baseline, ledger_uri=ledger)
    if missing:
        log.warning("after the sweep the cluster still lacks %s of its free resources before it", missing)

    rows = results_table(grid, space, train.steps, runs_uri)
    results_uri = storage.join(sweep_uri, "results.csv")
    storage.write_bytes_atomic(results_uri, _csv(rows))
    best = best_row(rows, space)
    summary = {"sweep": sweep_uri, "results": results_uri, "best_config": None, "best_trial": None,
               "best_value": None, "rows": rows, "restored": restoring,
               "released_groups": len(read_ledger(ledger)), "missing_resources": missing}
    if best is not None:
        chosen = trial_config(base, {k: best[k] for k in space.params},
                              storage.absolute(cfg.run.storage_path), f"{name}-best")
        summary.update(best_config=storage.join(sweep_uri, "best_config.yaml"), best_trial=best["trial_id"],
                       best_value=best[space.metric])
        storage.write_bytes_atomic(summary["best_config"], config_to_yaml(chosen).encode())
        log.info("best trial %s: %s=%.4g; config in %s", best["trial_id"], space.metric, best[space.metric],
                 summary["best_config"])
    return summary
