"""The Presto-S loss-weight sweep: the search-space file (each distribution, errors naming the key
and the file), a two-trial sweep of real distill runs under ASHA with the results table, the best
config and a restore, and the placement groups that stopped trials leave behind without the
workaround."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from presto_ray.config import ConfigError, config_from_dict, deep_merge, load_config, parse_overrides
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.sweep.loss_weights import LossWeightSpace, check_space, load_space, loss_weight_sweep
from presto_ray.sweep.resources import (free_resources, orphaned_groups, read_ledger, release_orphaned_groups,
                                        settle, shortfall)
from presto_ray.train.export import write_export

SHIPPED = Path(__file__).resolve().parent.parent / "tuning" / "loss_weights.yaml"


def _space_file(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _minimal(**extra) -> dict:
    return {"params": {"distill.nu1": {"loguniform": [1.0e-3, 1.0e-1]}}, **extra}


# --- the search-space file ------------------------------------------------------------------------

def test_shipped_space_loads_and_fits_the_tiny_config():
    space = load_space(SHIPPED)
    assert space.metric == "eval_moment_err@1" and space.mode == "min"
    assert {k: d.kind for k, d in space.params.items()} == {
        "distill.nu1": "loguniform", "distill.nu2": "loguniform", "distill.w_real": "uniform",
        "distill.generator.lr": "loguniform", "distill.guidance.lr": "loguniform", "distill.ttur": "choice",
        "distill.p_gen": "choice", "distill.p_dmd": "choice", "distill.p_dsm": "choice", "distill.p_gan": "choice"}
    base = check_space(load_config("tiny", ["distill.teacher=/t"]), space)
    assert base["train"]["steps"] == 900 and base["train"]["checkpoint_every"] == 300  # `fixed` applied
    assert base["distill"]["nu1"] == 0.01  # searched keys keep the config's value in the base


def test_each_distribution_kind_becomes_its_tune_domain(tmp_path):
    space = load_space(_space_file(tmp_path, {"params": {
        "distill.nu1": {"loguniform": [1.0e-4, 1.0e-1]},
        "distill.w_real": {"uniform": [2.0, 6.0]},
        "distill.p_dmd": {"choice": [{"kind": "train"}, {"kind": "lognormal", "p_mean": -0.4, "p_std": 1.0}]},
        "distill.ttur": {"grid": [1, 5]}}}))
    rng = np.random.RandomState(0)
    log_u = space.params["distill.nu1"].to_tune()
    draws = np.asarray(log_u.sample(size=400, random_state=rng))
    assert type(log_u.sampler).__name__ == "_LogUniform" and (log_u.lower, log_u.upper) == (1e-4, 1e-1)
    assert draws.min() >= 1e-4 and draws.max() <= 1e-1
    # uniform in log: each of the three decades gets about a third of the draws
    decades = np.histogram(np.log10(draws), bins=[-4, -3, -2, -1])[0] / len(draws)
    assert np.all(np.abs(decades - 1 / 3) < 0.08), decades
    uni = space.params["distill.w_real"].to_tune()
    draws = np.asarray(uni.sample(size=400, random_state=rng))
    assert type(uni.sampler).__name__ == "_Uniform" and draws.min() >= 2.0 and draws.max() <= 6.0
    assert abs(np.mean(draws) - 4.0) < 0.2
    choice = space.params["distill.p_dmd"].to_tune()
    assert choice.categories == [{"kind": "train"}, {"kind": "lognormal", "p_mean": -0.4, "p_std": 1.0}]
    assert space.params["distill.ttur"].to_tune() == {"grid_search": [1, 5]}
    # every candidate (bounds, options) is checked against the config
    assert space.params["distill.w_real"].candidates() == [2.0, 6.0]
    check_space(load_config("tiny", ["distill.teacher=/t"]), space)


@pytest.mark.parametrize("tree, key", [
    ({**_minimal(), "metrc": "x"}, "unknown key 'metrc'"),
    (_minimal(asha={"grace": 3}), "unknown key 'asha.grace'"),
    (_minimal(resources={"cpus": 1}), "unknown key 'resources.cpus'"),
    ({"params": {"distill.nu1": {"logunifrom": [0.1, 1.0]}}}, "unknown key 'params.distill.nu1.logunifrom'"),
])
def test_unknown_keys_are_named_with_the_file(tmp_path, tree, key):
    path = _space_file(tmp_path, tree)
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert key in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("dist, message", [
    ({"uniform": [1.0, 2.0], "choice": [1]}, "exactly one of"),
    ({}, "exactly one of"),
    ({"uniform": [2.0, 1.0]}, "low < high"),
    ({"loguniform": [0.0, 1.0]}, "positive lower bound"),
    ({"grid": []}, "at least one value"),
])
def test_bad_distributions_are_refused(tmp_path, dist, message):
    path = _space_file(tmp_path, {"params": {"distill.nu2": dist}})
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path)
    assert "params.distill.nu2" in str(err.value)


@pytest.mark.parametrize("params, message", [
    ({"run.name": {"choice": ["a"]}}, "key 'run.name' is set by the sweep"),
    ({"distill.teacher": {"choice": ["/t"]}}, "key 'distill.teacher' is set by the sweep"),
    ({"distill.p_dmd": {"choice": [{"kind": "train"}]}, "distill.p_dmd.kind": {"choice": ["train"]}},
     "overlaps"),
])
def test_keys_the_sweep_owns_or_that_overlap_are_refused(tmp_path, params, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_space_file(tmp_path, {"params": params}))


@pytest.mark.parametrize("extra, message", [
    ({"params": {"distill.nu3": {"uniform": [0.0, 1.0]}}}, "params key 'distill.nu3'.*unknown config key 'distill.nu3'"),
    ({"params": {"distill.ttur": {"choice": [5, 0]}}}, "params key 'distill.ttur' with value 0.*ttur must be >= 1"),
    ({"fixed": {"train.stepz": 3}}, "unknown config key 'train.stepz'"),
    ({"metric": "loss_dm"}, "metric 'loss_dm' is not reported"),
    ({"fixed": {"train.eval_every": 30}}, "checkpoint_every=100 must be a multiple of train.eval_every=30"),
    ({"asha": {"max_t": 500}}, "max_t=500 exceeds train.steps=300"),
])
def test_space_values_are_checked_against_the_config(tmp_path, extra, message):
    path = _space_file(tmp_path, {**_minimal(), **extra})
    with pytest.raises(ConfigError, match=message) as err:
        check_space(load_config("tiny", ["distill.teacher=/t"]), load_space(path))
    assert str(path) in str(err.value)


def test_only_presto_s_is_swept(tmp_path):
    with pytest.raises(ConfigError, match="trains Presto-S; distill.method is 'presto-l'"):
        check_space(load_config("tiny", ["distill.method=presto-l"]), load_space(_space_file(tmp_path, _minimal())))


# --- Ray: the leak, and the sweep -----------------------------------------------------------------

def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_a_stopped_trial_leaves_its_worker_group_behind_without_the_workaround(ray_cluster, tmp_path):
    import ray.train
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler

    def steady_worker(config):
        for step in range(1, config["steps"] + 1):
            time.sleep(0.2)
            ray.train.report({"step": step, "err": 1.0})

    def plain_trial(config):
        """A Tune function driving a plain Train run (no DeepSpeed: the leak is Ray's, not ours)."""
        TorchTrainer(steady_worker, train_loop_config=config,
                     scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                     run_config=RunConfig(name=tune.get_context().get_trial_id(), storage_path=config["storage"],
                                          callbacks=[TuneReportCallback()])).fit()

    release_orphaned_groups()  # from a clean slate, whatever ran before in this session
    baseline = free_resources()
    tuner = tune.Tuner(
        tune.with_resources(plain_trial, {"CPU": 1}),
        param_space={"steps": 200, "storage": str(tmp_path / "train")},
        tune_config=tune.TuneConfig(metric="err", mode="min", scheduler=ASHAScheduler(
            time_attr="step", max_t=2, grace_period=1)),  # stops the trial at step 2 of 200
        run_config=tune.RunConfig(name="leak", storage_path=str(tmp_path / "tune")))
    try:
        result = tuner.fit()[0]
        assert result.error is None and result.metrics["step"] == 2
        # the trial's actor is gone; its Train controller died with it and left the worker group
        left = _wait_for(orphaned_groups, 60, "the stopped trial's group to be orphaned")
        assert [g.bundles for g in left] == [[{"CPU": 1.0}]] and left[0].state == "CREATED"
        # once the trial's own resources are back, exactly the group's CPU stays missing
        _wait_for(lambda: shortfall(baseline, free_resources()) == {"CPU": 1.0}, 60, "only the group's CPU missing")
        assert [g.group_id for g in orphaned_groups()] == [left[0].group_id]
        assert release_orphaned_groups() == left
        assert settle(baseline, timeout_s=30) == {}
    finally:
        release_orphaned_groups()


@pytest.fixture(scope="module")
def untrained_teacher(tiny_config, tone_data, tmp_path_factory):
    _, stats = tone_data
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sweep-teacher") / "export"
    write_export(folder, {"teacher": EDMPrecond(DiT1D(tiny_config.model), 0.5).state_dict()}, tiny_config, stats, 1)
    return folder


def _metric_at(sweep: Path, metric: str, step: int) -> dict[str, float]:
    from ray.tune import ExperimentAnalysis

    frames = ExperimentAnalysis(str(sweep)).trial_dataframes
    return {tid: float(df.loc[df["step"] == step, metric].iloc[0]) for tid, df in frames.items()}


@pytest.mark.slow  # ~43 s on 2 cores: kept out of the default suite's 20 minutes; CI runs it when time allows
@pytest.mark.timeout(900)
def test_two_trials_under_asha_give_a_table_a_best_config_and_the_resources_back(
        ray_cluster, tiny_config, tone_data, untrained_teacher, tmp_path):
    ds, _ = tone_data
    cfg = config_from_dict(deep_merge(tiny_config.model_dump(mode="json"), parse_overrides([
        f"distill.teacher={untrained_teacher}", f"run.storage_path={tmp_path / 'runs'}", "run.name=base",
        "train.num_workers=1", "train.steps=4", "train.eval_every=2", "train.checkpoint_every=4",
        "train.log_every=2", "distill.ttur=2"])))
    space = LossWeightSpace.model_validate({
        "metric": "eval_moment_err@1", "mode": "min", "num_samples": 1,
        "asha": {"grace_period": 2, "reduction_factor": 2},
        "resources": {"driver_cpus": 1, "max_concurrent_trials": 1},
        # the grid's order is the trials' order; with these seeds the 1e-5 trial trails at step 2
        "params": {"distill.generator.lr": {"grid": [3.0e-3, 1.0e-5]},
                   "distill.w_real": {"uniform": [3.0, 5.0]},
                   "distill.p_dmd": {"choice": [{"kind": "lognormal", "p_mean": -0.4, "p_std": 1.0}]}}})
    baseline = free_resources()
    sweep = tmp_path / "sweeps" / "lw"
    summary = loss_weight_sweep(cfg, space, str(tmp_path / "sweeps"), "lw", dataset=ds)

    rows = summary["rows"]
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" and not r["error"] for r in rows)
    assert sorted(r["distill.generator.lr"] for r in rows) == [1e-5, 3e-3]
    assert all(3.0 <= r["distill.w_real"] <= 5.0 for r in rows)
    # ASHA, trials one at a time: the first passes rung 2 unopposed and trains to max_t = 4 steps;
    # the second is stopped at step 2 exactly when its metric there is worse than the first's
    first, second = rows
    at2 = _metric_at(sweep, "eval_moment_err@1", 2)
    assert first["last_step"] == 4 and not first["stopped_early"]
    second_worse = at2[second["trial_id"]] > at2[first["trial_id"]]
    assert second["last_step"] == (2 if second_worse else 4) and second["stopped_early"] == second_worse

    # each trial trained in its own run folder with its own config
    for row in rows:
        run_cfg = load_config(Path(row["run"]) / "config.yaml")
        assert run_cfg.distill.generator.lr == row["distill.generator.lr"]
        assert run_cfg.distill.w_real == row["distill.w_real"] and run_cfg.distill.p_dmd.kind == "lognormal"
        assert Path(row["run"]).parent == sweep / "runs"
    with open(summary["results"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["trial_id"] for t in table] == [r["trial_id"] for r in rows]
    assert {float(t["distill.generator.lr"]) for t in table} == {1e-5, 3e-3}
    assert all(t["distill.p_dmd"] == '{"kind": "lognormal", "p_mean": -0.4, "p_std": 1.0}' for t in table)
    assert all(float(t["eval_moment_err@1"]) >= 0 and t["best_eval_moment_err@1"] for t in table)

    # the best config: the best trial among those that trained 4 steps, as a full distill config
    finished = [r for r in rows if r["last_step"] == 4]
    best = min(finished, key=lambda r: r["eval_moment_err@1"])
    assert summary["best_trial"] == best["trial_id"] and summary["best_value"] == best["eval_moment_err@1"]
    chosen = load_config(summary["best_config"])
    assert chosen.distill.generator.lr == best["distill.generator.lr"]
    assert chosen.distill.w_real == best["distill.w_real"] and chosen.distill.p_dmd.p_mean == -0.4
    assert chosen.distill.method == "presto-s" and chosen.distill.teacher == str(untrained_teacher)
    assert chosen.train.steps == 4 and chosen.run.name == "lw-best"

    # resources: every trial's groups released, the cluster's free resources back to the baseline
    assert summary["missing_resources"] == {}
    _wait_for(lambda: not shortfall(baseline, free_resources()), 60, "the free resources to return")
    assert not orphaned_groups()
    ledger = read_ledger(str(sweep / "released_groups.jsonl"))
    assert summary["released_groups"] == len(ledger)
    # each released group was a trial's worker group (one 1-CPU bundle) whose controller had died
    assert all(g["bundles"] == [{"CPU": 1.0}] and g["creator_actor_dead"] and g["state"] == "CREATED"
               for g in ledger)
    if second_worse:  # a trial stopped mid-run always leaves its group (see the test above)
        assert len(ledger) >= 1

    # resubmitted unchanged: Tune's state is restored and nothing trains again
    again = loss_weight_sweep(cfg, space, str(tmp_path / "sweeps"), "lw", dataset=ds)
    assert again["restored"] and again["best_trial"] == summary["best_trial"]
    assert [(r["trial_id"], r["last_step"], r["distill.w_real"]) for r in again["rows"]] == \
        [(r["trial_id"], r["last_step"], r["distill.w_real"]) for r in rows]
    changed = space.model_copy(update={"num_samples": 2})
    with pytest.raises(ConfigError, match="was started with another space"):
        loss_weight_sweep(cfg, changed, str(tmp_path / "sweeps"), "lw", dataset=ds)


def test_cli_refuses_a_bad_space_before_any_trial(tmp_path, capsys):
    """`presto-ray sweep loss-weights` exits 2 naming the file and key; nothing is written."""
    from presto_ray.cli import main

    path = _space_file(tmp_path, _minimal(asha={"grace": 3}))
    assert main(["sweep", "loss-weights", "--config", "tiny", "--teacher", str(tmp_path / "t"), "--space", str(path),
                 "--storage-path", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'asha.grace'" in err and str(path) in err
    assert not (tmp_path / "sweeps").exists()
