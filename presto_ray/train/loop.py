"""The one per-worker loop of every trained thing: ``train-teacher`` and every ``distill`` method.

Runs inside each Ray Train worker. The run's method object (:mod:`presto_ray.distill.methods`)
says which networks exist, which are trained (each its own DeepSpeed engine), the update and the
fixed-batch evaluation; this loop adds what they share: restoring the latest checkpoint, the data,
the NaN/Inf guard, the EMA of the main role, the logging window, evaluation cadence, reports and
checkpoints. Every batch is one iteration (``state.step``), whether its updates were applied or
skipped by the guard. Rank 0 logs, keeps the progress bar and writes the rank-0 parts of
checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
from safetensors.torch import load_file, save_file

from presto_ray.config import DiTConfig, PrestoConfig
from presto_ray.data.batch import batch_to_inputs
from presto_ray.data.stats import LatentStats
from presto_ray.distill.methods import Method, method_for
from presto_ray.distill.roles import Roles
from presto_ray.runtime import Runtime, choose_runtime
from presto_ray.train.batches import epoch_batches
from presto_ray.train.checkpoint import TrainState, restore, save_and_report
from presto_ray.train.ema import EMA
from presto_ray.train.engine import RoleEngine, build_engine, build_inference_engine, weights_digest
from presto_ray.train.export import write_export
from presto_ray.train.guard import NonFiniteGuard
from presto_ray.train.logbook import Logbook, Progress

log = logging.getLogger("presto_ray.train")

SHOWN = ("loss", "loss_dm", "loss_fake", "loss_gen_gan", "loss_disc", "loss_cd", "data_wait_frac")
"""Metrics on the progress line (with the evaluations); TensorBoard and metrics.jsonl hold all."""

STEP_TRACE_ENV = "PRESTO_STEP_TRACE"
"""Debugging aid: when set (in the driver's environment) to a local file path, rank 0 appends
"pid step" after every finished step, so restarts and repeated steps can be read off."""


@dataclass(frozen=True)
class WorkerConfig:
    """What the driver hands every worker across the Ray boundary (pickled once per worker).

    method: the registered method run ("teacher" for ``train-teacher``); config: the resolved
    run config; latent_stats: the normalisation of the training latents; eval_batch: the fixed
    evaluation rows (column -> array [eval_batch, ...]); run_uri: the run folder (local or
    remote); bad_rows: the Ray counter of rows dropped by ``data.on_bad_rows=skip`` (or None);
    teacher / init: object refs of the teacher's / the init student's state dicts (distill);
    teacher_model: the teacher's DiT config (distill); step_trace: see :data:`STEP_TRACE_ENV`."""

    method: str
    config: PrestoConfig
    latent_stats: LatentStats
    eval_batch: dict[str, np.ndarray]
    run_uri: str
    bad_rows: object | None = None
    teacher: ray.ObjectRef | None = None
    teacher_model: DiTConfig | None = None
    init: ray.ObjectRef | None = None
    step_trace: str | None = None


def _is_counter(key: str) -> bool:
    """Step metrics summed over the logging window (update and skip counts); the others are averaged."""
    return key.endswith("_updates") or key.startswith("skipped_")


def _trace(path: str | None, step: int) -> None:
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {step}\n")


def build_roles(method: Method, w: WorkerConfig, runtime: Runtime) -> tuple[Roles, list[RoleEngine]]:
    """The run's networks as roles; returns (roles, trained engines in checkpoint order, the main
    role first). Call after seeding torch's global RNG: fresh weights come from it."""
    cfg = w.config
    teacher_state = ray.get(w.teacher) if w.teacher is not None else None
    init_state = ray.get(w.init) if w.init is not None else None
    nets = method.build_networks(cfg, teacher_state, w.teacher_model, init_state)
    engines = {role: build_engine(role, nets[role], method.role_train(cfg, role), runtime)
               for role in method.trained}
    target = nets["target"].to(runtime.device) if "target" in nets else None
    teacher = None
    if "teacher" in method.frozen:
        teacher = nets["teacher"].to(runtime.device)
        if cfg.distill.teacher_zero3:
            teacher = build_inference_engine(teacher, cfg.train, runtime)
    roles = Roles(generator=engines[method.main_role], teacher=teacher, guidance=engines.get("guidance"),
                  target=target)
    return roles, list(engines.values())


def same_run(cfg: PrestoConfig, meta: dict) -> None:
    """Refuse a distill checkpoint made with another method, teacher or init (a reused run name)."""
    saved = meta.get("config", {}).get("distill", {})
    for key in ("method", "teacher", "init"):
        if saved.get(key) != getattr(cfg.distill, key):
            raise RuntimeError(f"the checkpoint in run '{cfg.run.name}' was made with distill.{key}="
                               f"{saved.get(key)!r}, this launch has {getattr(cfg.distill, key)!r}; "
                               "choose another run.name")


def train_worker(loop_config: dict) -> None:
    """Ray Train worker entry point; ``loop_config["worker"]`` is the :class:`WorkerConfig`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    w: WorkerConfig = loop_config["worker"]
    cfg, stats, method = w.config, w.latent_stats, method_for(w.method)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    runtime = choose_runtime(cfg.train.use_gpu, device=ray.train.torch.get_device())
    torch.manual_seed(cfg.train.seed)  # identical initial weights and heads on every rank
    generator = torch.Generator(device=runtime.device).manual_seed(cfg.train.seed * 1000 + rank + 1)

    roles, trained = build_roles(method, w, runtime)
    main = trained[0]
    ema = EMA(main, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None

    def read_extra(folder: Path) -> None:
        if ema is not None:
            ema.load(folder / "ema" / f"{main.name}.safetensors")
        if roles.target is not None:
            roles.target.load_state_dict(load_file(str(folder / "target" / "generator.safetensors")))

    state = restore(trained, rank=rank, world_size=world, generator=generator, read_extra=read_extra,
                    check_meta=(lambda meta: same_run(cfg, meta)) if method.distilled else None) or TrainState()
    if state.step:
        state.extra = {"resumed_from": state.step, "resumed_weights_sha256": weights_digest(main)}
        log.info("rank %d resumed from step %d (epoch %d)", rank, state.step, state.epoch)
    if state.step >= cfg.train.steps:
        return

    update = method.make_update(cfg)
    guard = NonFiniteGuard(cfg.train.nan_patience)
    guard.skipped = state.skipped
    eval_x0, eval_cond = batch_to_inputs(w.eval_batch, stats, runtime.device)
    book = Logbook(cfg, w.run_uri) if rank == 0 else None
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
            ema.save(folder / "ema" / f"{main.name}.safetensors", weights)
        if roles.target is not None:
            (folder / "target").mkdir()
            save_file({k: v.detach().cpu().contiguous() for k, v in roles.target.state_dict().items()},
                      str(folder / "target" / "generator.safetensors"))
        write_export(folder / "export", {main.name: weights}, cfg, stats, state.step)
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
        if ema is not None and f"{main.name}_updates" in step_metrics:  # presto-s: every ttur iterations
            ema.update(main)
        state.step += 1
        state.skipped = guard.skipped
        window_n += 1
        for k, v in step_metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
        if rank == 0:
            _trace(w.step_trace, state.step)

        metrics: dict = {}
        last = state.step >= cfg.train.steps
        if state.step % cfg.train.eval_every == 0 or last:
            with runtime.autocast():
                metrics.update(method.evaluate(cfg, roles, eval_x0, eval_cond))
        if state.step % cfg.train.log_every == 0 or last:
            elapsed = time.perf_counter() - t0
            metrics.update({k: sums[k] if _is_counter(k) else sums[k] / counts[k] for k in sums})
            metrics.update({"step": state.step, "epoch": state.epoch, f"lr_{main.name}": main.engine.get_lr()[0],
                            "skipped_nonfinite": guard.skipped, "steps_per_s": window_n / elapsed,
                            "data_wait_frac": data_wait / elapsed})
            sums, counts, window_n, data_wait, t0 = {}, {}, 0, 0.0, time.perf_counter()
            if book is not None:
                if w.bad_rows is not None:  # rows dropped by data.on_bad_rows=skip
                    metrics["skipped_bad_rows"] = w.bad_rows.count()
                book.log(state.step, metrics)
                shown = [k for k in metrics if k in SHOWN or (k.startswith("eval_") and not k.startswith("eval_loss@"))]
                log.info("%s %s", progress.line(state.step), " ".join(f"{k}={metrics[k]:.4g}" for k in shown))
        # ray.train.report is a barrier with the Train controller (~1 s on a small machine):
        # report at checkpoints and evaluations only; logs and TensorBoard carry the rest.
        metrics.setdefault("step", state.step)
        if state.step % cfg.train.checkpoint_every == 0 or last:
            # collectives first, on every rank; rank 0 then writes the files
            state.extra["weights_sha256"] = weights_digest(main)
            weights = ema.state_dict() if ema is not None else main.full_fp32_state()
            save_and_report(metrics, trained, state, cfg, rank=rank, world_size=world, generator=generator,
                            write_rank0=lambda folder: write_rank0(folder, weights))
        elif any(k.startswith("eval_") for k in metrics):
            ray.train.report(metrics)
    if book is not None:
        book.close()
