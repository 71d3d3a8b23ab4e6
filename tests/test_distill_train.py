"""Distillation under Ray Train with one DeepSpeed engine per trained role on 2 CPU workers:
Presto-S with ZeRO-2 and ZeRO-3, checkpoints holding every role, resume by relaunch, restart
after a worker is SIGKILLed, Presto-L -> Presto-LS, cd, and the exported student in generate."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_ray.config import config_from_dict, deep_merge, parse_overrides
from presto_ray.data.batch import batch_to_inputs, stack_rows
from presto_ray.edm import EDMLoss, EDMPrecond, make_noise
from presto_ray.config import NoiseConfig
from presto_ray.generate import MusicGenerator, Prompt
from presto_ray.models.dit import DiT1D
from presto_ray.train.distill import distill
from presto_ray.train.loop import STEP_TRACE_ENV
from presto_ray.train.export import load_export, write_export


def _cfg(base, tmp_path, name, teacher, **overrides):
    items = [f"run.name={name}", f"run.storage_path={tmp_path}", f"distill.teacher={teacher}",
             "train.log_every=2", "distill.ttur=2"] + [f"{k}={v}" for k, v in overrides.items()]
    return config_from_dict(deep_merge(base.model_dump(mode="json"), parse_overrides(items)))


def _meta(step_dir: Path) -> dict:
    return json.loads((step_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def teacher_export(tiny_config, tone_data, tmp_path_factory):
    """A tiny teacher trained in-process for 40 steps, written as an export folder."""
    ds, stats = tone_data
    x0_all, cond_all = batch_to_inputs(stack_rows(ds.take(64)), stats, torch.device("cpu"))
    torch.manual_seed(0)
    teacher = EDMPrecond(DiT1D(tiny_config.model), tiny_config.edm.sigma_data)
    opt = torch.optim.AdamW(teacher.parameters(), lr=2e-3)
    loss_fn = EDMLoss(make_noise(NoiseConfig(kind="train"), tiny_config.edm), tiny_config.edm.sigma_data)
    gen = torch.Generator().manual_seed(0)
    for step in range(40):
        idx = torch.randint(0, 64, (16,), generator=gen)
        loss, _ = loss_fn(teacher, x0_all[idx], cond_all.select(idx), generator=gen)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    folder = tmp_path_factory.mktemp("teacher") / "export"
    write_export(folder, {"teacher": teacher.state_dict()}, tiny_config, stats, 40)
    return folder


def _finite_losses(metrics: dict, keys) -> None:
    for k in keys:
        assert k in metrics and math.isfinite(metrics[k]), (k, metrics.get(k))


@pytest.mark.timeout(900)
def test_presto_s_zero2_two_workers_checkpoints_every_role_and_resumes(tiny_config, tone_data, teacher_export,
                                                                      tmp_path):
    ds, _ = tone_data
    cfg = _cfg(tiny_config, tmp_path, "ps", teacher_export, **{
        "train.num_workers": 2, "train.zero_stage": 2, "train.steps": 8, "train.eval_every": 8,
        "train.checkpoint_every": 4})
    result = distill(cfg, dataset=ds)
    _finite_losses(result.metrics, ["loss_dm", "loss_gen_gan", "loss_fake", "loss_disc", "eval_moment_err@1",
                                    "eval_moment_err@4", "grad_norm_gen", "real_score_std", "fake_score_std"])
    run = tmp_path / "ps"
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000004", "step_00000008"]
    last = run / "step_00000008"
    for role in ("generator", "guidance"):
        files = {p.name for p in (last / role / "ds").iterdir()}
        assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    meta = _meta(last)
    assert meta["roles"] == ["generator", "guidance"] and meta["zero_stage"] == {"generator": 2, "guidance": 2}
    assert meta["step"] == 8 and meta["world_size"] == 2 and meta["config"]["distill"]["method"] == "presto-s"
    exported = load_export(last / "export")
    assert set(exported.roles) == {"generator"} and exported.cfg.distill.student_steps == 4

    # relaunch the same run with more steps: resumes from step 8 with the saved weights
    longer = _cfg(tiny_config, tmp_path, "ps", teacher_export, **{
        "train.num_workers": 2, "train.zero_stage": 2, "train.steps": 10, "train.eval_every": 10,
        "train.checkpoint_every": 10})
    distill(longer, dataset=ds)
    resumed = _meta(run / "step_00000010")
    assert resumed["resumed_from"] == 8
    assert resumed["resumed_weights_sha256"] == meta["weights_sha256"]
    assert resumed["weights_sha256"] != meta["weights_sha256"]  # and it trained on

    # a finished run relaunched trains nothing more
    distill(longer, dataset=ds)
    assert sorted(p.name for p in run.glob("step_*"))[-1] == "step_00000010"

    # the export samples with ping-pong at its default 4 steps and at --steps 1, without CFG
    gen = MusicGenerator(str(run))
    assert gen.role == "generator" and gen.sampler == "pingpong"
    prompt = [Prompt("a slow string quartet", bpm=70.0, seed=3)]
    x4 = gen.sample_latents(prompt)
    x1 = gen.sample_latents(prompt, steps=1)
    assert x4.shape == x1.shape == (1, cfg.model.latent_channels, cfg.model.latent_frames)
    assert torch.isfinite(x4).all() and torch.isfinite(x1).all() and not torch.allclose(x1, x4)
    wav = gen.decode(x4)
    assert wav.shape[-1] > 0 and np.isfinite(wav).all()


@pytest.mark.slow  # ~40 s (ZeRO-3 on 2 workers, sharded teacher): out of the default suite's 20 minutes; CI runs it when time allows
@pytest.mark.timeout(900)
def test_presto_s_zero3_two_workers_with_a_sharded_teacher(tiny_config, tone_data, teacher_export, tmp_path):
    ds, _ = tone_data
    cfg = _cfg(tiny_config, tmp_path, "ps3", teacher_export, **{
        "train.num_workers": 2, "train.zero_stage": 3, "train.steps": 4, "train.eval_every": 4,
        "train.checkpoint_every": 4, "train.ema_decay": 0.0, "distill.teacher_zero3": True})
    result = distill(cfg, dataset=ds)  # the frozen teacher sharded by a ZeRO-3 inference engine too
    _finite_losses(result.metrics, ["loss_dm", "loss_gen_gan", "loss_fake", "loss_disc", "eval_moment_err@4",
                                    "real_score_std"])
    last = tmp_path / "ps3" / "step_00000004"
    assert _meta(last)["zero_stage"] == {"generator": 3, "guidance": 3}
    for role in ("generator", "guidance"):
        names = {p.name for p in (last / role / "ds").iterdir()}
        assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= names
    # the exported generator holds whole (gathered) weights that load into the full-size model
    exported = load_export(last / "export")
    state = exported.state_dict("generator")
    model = EDMPrecond(DiT1D(exported.cfg.model), 0.5)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _kill_when(trace: Path, at_step: int, killed: dict) -> None:
    """Watch the step trace; SIGKILL the worker that reports ``at_step``."""
    deadline = time.time() + 600
    while time.time() < deadline and not killed:
        if trace.is_file():
            for line in trace.read_text().splitlines():
                pid, step = (int(v) for v in line.split())
                if step >= at_step:
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, step=step)
                    return
        time.sleep(0.05)


@pytest.mark.timeout(900)
def test_sigkilled_worker_restarts_from_last_checkpoint(tiny_config, tone_data, teacher_export, tmp_path,
                                                        monkeypatch):
    ds, _ = tone_data
    trace = tmp_path / "steps.txt"
    monkeypatch.setenv(STEP_TRACE_ENV, str(trace))
    cfg = _cfg(tiny_config, tmp_path, "killed", teacher_export, **{
        "train.num_workers": 2, "train.zero_stage": 2, "train.steps": 14, "train.eval_every": 100,
        "train.checkpoint_every": 4, "train.max_failures": 1})
    killed: dict = {}
    # killed at step 10: checkpoints 4 and 8 were reported, and Ray has registered at least step 4's
    watcher = threading.Thread(target=_kill_when, args=(trace, 10, killed), daemon=True)
    watcher.start()
    result = distill(cfg, dataset=ds)
    watcher.join(timeout=5)
    assert killed, "the worker was never killed"
    lines = [tuple(int(v) for v in line.split()) for line in trace.read_text().splitlines()]
    after = [step for pid, step in lines if pid != killed["pid"]]
    before = [step for pid, step in lines if pid == killed["pid"]]
    assert max(before) < 14, "the kill came after the run had finished"
    final = _meta(tmp_path / "killed" / "step_00000014")
    restored = final.get("resumed_from", 0)  # the newest checkpoint registered before the kill
    assert restored in (4, 8) and restored <= max(before), (restored, max(before))
    # the restarted group continues from the restore point: every later step exactly once
    assert after == list(range(restored + 1, 15))
    assert result.metrics["step"] == 14 and math.isfinite(result.metrics["loss_fake"])


@pytest.mark.timeout(900)
def test_presto_l_then_presto_ls_under_a_budget_schedule(tiny_config, tone_data, teacher_export, tmp_path):
    ds, _ = tone_data
    # 2 workers under ZeRO-3: the ranks draw different budgets, yet run the same collectives
    pl = _cfg(tiny_config, tmp_path, "pl", teacher_export, **{
        "distill.method": "presto-l", "train.steps": 6, "train.eval_every": 6, "train.checkpoint_every": 6,
        "train.num_workers": 2, "train.zero_stage": 3})
    result = distill(pl, dataset=ds)
    _finite_losses(result.metrics, ["loss", "loss_st", "eval_dropped_err@1", "eval_dropped_err@3",
                                    "hidden_std_full/5", "hidden_std_dropped/5"])
    exported = load_export(tmp_path / "pl" / "step_00000006" / "export")
    assert exported.cfg.model.budget_embedding and exported.cfg.model.drop_mode == "presto"
    # the same run name for another method would load the wrong roles: refused, run untouched
    with pytest.raises(Exception, match="choose another run.name"):
        distill(_cfg(tiny_config, tmp_path, "pl", teacher_export, **{"train.steps": 8, "train.num_workers": 2}),
                dataset=ds)
    assert sorted(p.name for p in (tmp_path / "pl").glob("step_*")) == ["step_00000006"]

    ls = _cfg(tiny_config, tmp_path, "pls", teacher_export, **{
        "distill.method": "presto-ls", "distill.init": str(tmp_path / "pl"), "train.steps": 4,
        "train.eval_every": 4, "train.checkpoint_every": 4,
        "distill.budget_schedule.edges": "[1.0]", "distill.budget_schedule.budgets": "[6,3]"})
    result = distill(ls, dataset=ds)
    _finite_losses(result.metrics, ["loss_dm", "loss_fake", "eval_moment_err@4"])
    gen = MusicGenerator(str(tmp_path / "pls"))
    assert gen.sampler == "pingpong" and gen.schedule.budgets == [6, 3] and gen.schedule.edges == [1.0]
    assert gen.export.cfg.model.budget_embedding  # the generator is the Presto-L network
    x = gen.sample_latents([Prompt("a lively flute melody", seed=1)])
    assert torch.isfinite(x).all()

    # a presto-ls without its Presto-L init, and an init made by another method, are refused
    with pytest.raises(ValueError, match="distill.init"):
        distill(_cfg(tiny_config, tmp_path, "pls2", teacher_export, **{"distill.method": "presto-ls"}), dataset=ds)
    with pytest.raises(ValueError, match="not presto-l"):
        distill(_cfg(tiny_config, tmp_path, "pls3", teacher_export, **{
            "distill.method": "presto-ls", "distill.init": str(tmp_path / "pls")}), dataset=ds)


@pytest.mark.timeout(900)
def test_cd_checkpoints_its_ema_target_and_nan_data_stops_it_with_the_checkpoint_intact(tiny_config, tone_data, teacher_export, tmp_path):
    ds, _ = tone_data
    cfg = _cfg(tiny_config, tmp_path, "cd", teacher_export, **{
        "distill.method": "cd", "train.steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4})
    result = distill(cfg, dataset=ds)
    _finite_losses(result.metrics, ["loss_cd", "eval_moment_err@1"])
    last = tmp_path / "cd" / "step_00000004"
    assert (last / "target" / "generator.safetensors").is_file()
    good = _meta(last)
    assert good["roles"] == ["generator"]

    # relaunched on NaN latents: every update is refused, K in a row stop the run with a clear
    # error, and the last good checkpoint is intact
    import ray.data
    from ray.train.v2.api.exceptions import TrainingFailedError

    rows = ds.take(32)
    for r in rows:
        r["latent"] = np.full_like(r["latent"], np.nan)
    poisoned = _cfg(tiny_config, tmp_path, "cd", teacher_export, **{
        "distill.method": "cd", "train.steps": 12, "train.checkpoint_every": 4, "train.nan_patience": 3})
    with pytest.raises(TrainingFailedError) as info:
        distill(poisoned, dataset=ray.data.from_items(rows))
    assert "NaN/Inf for 3 consecutive batches" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "cd").glob("step_*")) == ["step_00000004"]
    assert _meta(last)["weights_sha256"] == good["weights_sha256"]


def test_refuses_to_write_into_the_teacher_run_or_without_a_teacher(tiny_config, tone_data,
                                                                             teacher_export, tmp_path):
    ds, _ = tone_data
    cfg = _cfg(tiny_config, teacher_export.parent.parent, teacher_export.parent.name, teacher_export)
    with pytest.raises(ValueError, match="teacher's run folder"):
        distill(cfg, dataset=ds)
    with pytest.raises(ValueError, match="distill.teacher"):
        distill(_cfg(tiny_config, tmp_path, "x", teacher_export, **{"distill.teacher": "null"}), dataset=ds)


def test_presto_ls_refuses_an_init_from_another_teacher(tiny_config, tone_data, teacher_export, tmp_path):
    from presto_ray.train.distill import prepare_distill

    _, stats = tone_data
    other = config_from_dict(deep_merge(tiny_config.model_dump(mode="json"), parse_overrides(
        ["model.depth=4", "model.budget_embedding=true", "distill.method=presto-l"])))
    write_export(tmp_path / "pl-other" / "export", {"generator": EDMPrecond(DiT1D(other.model), 0.5).state_dict()},
                 other, stats, 10)
    cfg = _cfg(tiny_config, tmp_path, "pls", teacher_export, **{
        "distill.method": "presto-ls", "distill.init": str(tmp_path / "pl-other" / "export")})
    with pytest.raises(ValueError, match="does not match distill.teacher in its model settings"):
        prepare_distill(cfg)


def test_teacher_paths_are_recorded_absolute(tiny_config, teacher_export, tmp_path, monkeypatch):
    from presto_ray.train.distill import prepare_distill

    monkeypatch.chdir(teacher_export.parent.parent)
    relative = f"{teacher_export.parent.name}/{teacher_export.name}"
    resolved, *_ = prepare_distill(_cfg(tiny_config, tmp_path, "abs", relative))
    assert resolved.distill.teacher == str(teacher_export.resolve())  # a relaunch from elsewhere still matches
