"""The per-worker loop of ``distill``: every trained role (generator; guidance for Presto-S and
DMD2) is its own DeepSpeed engine, the teacher a frozen module, the cd target a frozen EMA copy.

The update itself (presto_ray.distill) only calls, steps and reads the roles; this loop adds
the data, the NaN/Inf guard, the generator EMA, evaluation, logging and checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import ray
import ray.train
import torch
from safetensors.torch import load_file, save_file

from presto_ray.config import DiTConfig, config_from_dict
from presto_ray.data.batch import batch_to_inputs
from presto_ray.data.stats import LatentStats
from presto_ray.distill.budget import BudgetSchedule, ScheduledDenoiser
from presto_ray.distill.methods import build_networks, make_update, method_for
from presto_ray.distill.presto_l import dropped_error, hidden_std
from presto_ray.distill.roles import Roles
from presto_ray.edm import karras_sigmas, sample_pingpong
from presto_ray.runtime import choose_runtime
from presto_ray.train.batches import epoch_batches
from presto_ray.train.checkpoint import TrainState, restore, save_and_report
from presto_ray.train.ema import EMA
from presto_ray.train.engine import build_engine, build_inference_engine, weights_digest
from presto_ray.train.export import write_export
from presto_ray.train.guard import NonFiniteGuard
from presto_ray.train.logbook import Logbook, Progress

log = logging.getLogger("presto_ray.distill")

COUNTERS = ("generator_updates", "guidance_updates", "skipped_generator", "skipped_guidance")
"""Step metrics summed over the logging window (the others are averaged)."""

STEP_TRACE_ENV = "PRESTO_STEP_TRACE"
"""Debugging aid: when set (in the driver's environment) to a local file path, rank 0 appends
"pid step" after every finished step, so restarts and repeated steps can be read off."""


@torch.no_grad()
def student_eval(cfg, roles: Roles, x0: torch.Tensor, cond, schedule: BudgetSchedule) -> dict[str, float]:
    """Fixed-batch evaluation on every rank (collective under ZeRO-3).

    Students sampled like the teacher (presto-l, ase): lambda-weighted error of the dropped student
    to the full teacher at the lowest and the middle budget, and per-block hidden std (full vs
    middle budget) at sigma = 1. Few-step students: per-channel mean/std of ping-pong samples at 1
    and ``student_steps`` steps against the real batch's (``eval_moment_err@N``; the data has std
    sigma_data)."""
    d, edm, model = cfg.distill, cfg.edm, cfg.model
    out: dict[str, float] = {}
    method = method_for(d.method)
    if not method.few_step:
        lowest = method.lowest_budget(model)
        for b in sorted({lowest, max(lowest, model.depth // 2)}):
            out[f"eval_dropped_err@{b}"] = dropped_error(roles.generator, roles.teacher, x0, cond, b,
                                                         cfg.train.eval_sigmas, edm.sigma_data, cfg.train.seed)
        full = hidden_std(roles.generator, x0, cond, 1.0, None, model.depth, cfg.train.seed)
        half = hidden_std(roles.generator, x0, cond, 1.0, max(lowest, model.depth // 2), model.depth, cfg.train.seed)
        out.update({f"hidden_std_full/{k}": v for k, v in enumerate(full)})
        out.update({f"hidden_std_dropped/{k}": v for k, v in enumerate(half)})
        return out
    g = roles.generator if schedule.is_full else ScheduledDenoiser(roles.generator, schedule)
    ref_mean, ref_std = x0.float().mean(dim=(0, 2)), x0.float().std(dim=(0, 2))
    for steps in sorted({1, d.student_steps}):
        gen = torch.Generator(device=x0.device).manual_seed(cfg.train.seed)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        sigmas = karras_sigmas(steps, edm.sigma_min, edm.sigma_max, d.student_rho, device=x0.device)
        x = sample_pingpong(g, noise, sigmas, cond, generator=gen).float()
        err = (x.mean(dim=(0, 2)) - ref_mean).abs().mean() + (x.std(dim=(0, 2)) - ref_std).abs().mean()
        out[f"eval_moment_err@{steps}"] = float(err)
    return out


def _trace(path: str | None, step: int) -> None:
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {step}\n")


def distill_worker(loop_config: dict) -> None:
    """Ray Train worker entry point. loop_config: config, latent_stats, eval_batch, run_uri,
    teacher (ObjectRef of the teacher's state dict), teacher_model (dict), init (ObjectRef or None)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_from_dict(loop_config["config"], "train_loop_config")
    stats = LatentStats.from_dict(loop_config["latent_stats"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    runtime = choose_runtime(cfg.train.use_gpu, device=ray.train.torch.get_device())
    torch.manual_seed(cfg.train.seed)  # identical heads on every rank
    generator = torch.Generator(device=runtime.device).manual_seed(cfg.train.seed * 1000 + rank + 1)

    init = loop_config.get("init")
    nets = build_networks(cfg, ray.get(loop_config["teacher"]), DiTConfig(**loop_config["teacher_model"]),
                          ray.get(init) if init is not None else None)
    gen_role = build_engine("generator", nets["generator"], cfg.distill.generator.apply_to(cfg.train), runtime)
    trained = [gen_role]
    guidance = None
    if "guidance" in nets:
        guidance = build_engine("guidance", nets["guidance"], cfg.distill.guidance.apply_to(cfg.train), runtime)
        trained.append(guidance)
    target = nets["target"].to(runtime.device) if "target" in nets else None
    teacher = nets["teacher"].to(runtime.device)
    if cfg.distill.teacher_zero3:
        teacher = build_inference_engine(teacher, cfg.train, runtime)
    roles = Roles(generator=gen_role, teacher=teacher, guidance=guidance, target=target)
    ema = EMA(gen_role, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None

    def read_extra(folder: Path) -> None:
        if ema is not None:
            ema.load(folder / "ema" / "generator.safetensors")
        if target is not None:
            target.load_state_dict(load_file(str(folder / "target" / "generator.safetensors")))

    def same_run(meta: dict) -> None:
        saved = meta.get("config", {}).get("distill", {})
        for key in ("method", "teacher", "init"):
            if saved.get(key) != getattr(cfg.distill, key):
                raise RuntimeError(f"the checkpoint in run '{cfg.run.name}' was made with distill.{key}="
                                   f"{saved.get(key)!r}, this launch has {getattr(cfg.distill, key)!r}; "
                                   "choose another run.name")

    state = restore(trained, rank=rank, world_size=world, generator=generator, read_extra=read_extra,
                    check_meta=same_run) or TrainState()
    if state.step:
        state.extra = {"resumed_from": state.step, "resumed_weights_sha256": weights_digest(gen_role)}
        log.info("rank %d resumed from step %d (epoch %d)", rank, state.step, state.epoch)
    if state.step >= cfg.train.steps:
        return

    update = make_update(cfg)
    schedule = method_for(cfg.distill.method).budget_schedule(cfg)
    guard = NonFiniteGuard(cfg.train.nan_patience)
    guard.skipped = state.skipped
    eval_x0, eval_cond = batch_to_inputs(loop_config["eval_batch"], stats, runtime.device)
    book = Logbook(cfg, loop_config["run_uri"]) if rank == 0 else None
    progress = Progress(cfg.train.steps, state.step)

    def allows(role: str, loss: torch.Tensor) -> bool:
        ok = guard.allows(loss.float(), state.step)
        if not ok:
            log.warning("rank %d: non-finite %s loss at step %d, update skipped (%d skipped so far)",
                        rank, role, state.step, guard.skipped)
        return ok

    def write_rank0(folder: Path, weights: dict[str, torch.Tensor]) -> None:
        if ema is not None:
            (folder / "ema").mkdir()
            ema.save(folder / "ema" / "generator.safetensors", weights)
        if target is not None:
            (folder / "target").mkdir()
            save_file({k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()},
                      str(folder / "target" / "generator.safetensors"))
        write_export(folder / "export", {"generator": weights}, cfg, stats, state.step)
        if book is not None:
            book.flush()

    batches = epoch_batches(ray.train.get_dataset_shard("train"), cfg, state, rank, runtime.device)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    window_n, data_wait, t0 = 0, 0.0, time.perf_counter()
    while state.step < cfg.train.steps:
        t_wait = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t_wait
        x0, cond = batch_to_inputs(batch, stats, runtime.device)
        with runtime.autocast():
            step_metrics = update.step(roles, x0, cond, state.step, generator=generator, guard=allows)
        if ema is not None and "generator_updates" in step_metrics:  # presto-s: every ttur iterations
            ema.update(gen_role)
        state.step += 1
        state.skipped = guard.skipped
        window_n += 1
        for k, v in step_metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
        if rank == 0:
            _trace(loop_config.get("step_trace"), state.step)

        metrics: dict = {}
        last = state.step >= cfg.train.steps
        if state.step % cfg.train.eval_every == 0 or last:
            with runtime.autocast():
                metrics.update(student_eval(cfg, roles, eval_x0, eval_cond, schedule))
        if state.step % cfg.train.log_every == 0 or last:
            elapsed = time.perf_counter() - t0
            metrics.update({k: sums[k] if k in COUNTERS else sums[k] / counts[k] for k in sums})
            metrics.update({"step": state.step, "epoch": state.epoch, "lr_generator": gen_role.engine.get_lr()[0],
                            "skipped_nonfinite": guard.skipped, "steps_per_s": window_n / elapsed,
                            "data_wait_frac": data_wait / elapsed})
            sums, counts, window_n, data_wait, t0 = {}, {}, 0, 0.0, time.perf_counter()
            if book is not None:
                if loop_config.get("bad_rows") is not None:  # rows dropped by data.on_bad_rows=skip
                    metrics["skipped_bad_rows"] = loop_config["bad_rows"].count()
                book.log(state.step, metrics)
                shown = ("loss_dm", "loss_fake", "loss_gen_gan", "loss_disc", "loss_cd", "loss", "data_wait_frac")
                log.info("%s %s", progress.line(state.step), " ".join(
                    f"{k}={metrics[k]:.4g}" for k in (*shown, *(k for k in metrics if k.startswith("eval_")))
                    if k in metrics))
        metrics.setdefault("step", state.step)
        if state.step % cfg.train.checkpoint_every == 0 or last:
            state.extra["weights_sha256"] = weights_digest(gen_role)
            weights = ema.state_dict() if ema is not None else gen_role.full_fp32_state()
            save_and_report(metrics, trained, state, cfg, rank=rank, world_size=world, generator=generator,
                            write_rank0=lambda folder: write_rank0(folder, weights))
        elif any(k.startswith("eval_") for k in metrics):
            ray.train.report(metrics)
    if book is not None:
        book.close()
