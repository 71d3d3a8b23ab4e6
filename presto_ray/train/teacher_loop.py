"""The per-worker loop of ``train-teacher``: EDM denoising loss with condition dropout.

Runs inside each Ray Train worker. The teacher role is a DeepSpeed engine; rank 0 logs, keeps
the progress bar and writes the rank-0 parts of checkpoints.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray.train
import torch

from presto_ray.config import NoiseConfig, config_from_dict
from presto_ray.data.batch import batch_to_inputs
from presto_ray.data.stats import LatentStats
from presto_ray.edm import EDMLoss, EDMPrecond, make_noise
from presto_ray.edm.loss import denoising_loss
from presto_ray.models.dit import DiT1D
from presto_ray.runtime import choose_runtime
from presto_ray.train.batches import epoch_batches
from presto_ray.train.checkpoint import TrainState, restore, save_and_report
from presto_ray.train.ema import EMA
from presto_ray.train.engine import build_engine, weights_digest
from presto_ray.train.export import write_export
from presto_ray.train.guard import NonFiniteGuard
from presto_ray.train.logbook import Logbook, Progress

log = logging.getLogger("presto_ray.train")


@torch.no_grad()
def fixed_eval_loss(denoiser, x0: torch.Tensor, cond, sigmas: list[float], sigma_data: float, seed: int) -> dict:
    """Denoising loss on a fixed batch x0 [B, C, T] at a fixed sigma grid with fixed noise.

    Returns {"eval_loss": mean over the grid, "eval_loss@<sigma>": per sigma}."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        sigma = torch.full((x0.shape[0],), s, device=x0.device)
        out[f"eval_loss@{s:g}"] = denoising_loss(denoiser, x0, sigma, cond, noise, sigma_data=sigma_data).mean().item()
    out["eval_loss"] = sum(out.values()) / len(sigmas)
    return out


def teacher_worker(loop_config: dict) -> None:
    """Ray Train worker entry point. loop_config: config (dict), latent_stats (dict),
    eval_batch (column -> array), run_uri (str)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_from_dict(loop_config["config"], "train_loop_config")
    stats = LatentStats.from_dict(loop_config["latent_stats"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    runtime = choose_runtime(cfg.train.use_gpu, device=ray.train.torch.get_device())
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    generator = torch.Generator(device=runtime.device).manual_seed(cfg.train.seed * 1000 + rank + 1)

    teacher = EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data)
    role = build_engine("teacher", teacher, cfg.train, runtime)
    ema = EMA(role, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None

    def read_extra(folder: Path) -> None:
        if ema is not None:
            ema.load(folder / "ema" / "teacher.safetensors")

    state = restore([role], rank=rank, world_size=world, generator=generator, read_extra=read_extra) or TrainState()
    if state.step:
        state.extra = {"resumed_from": state.step, "resumed_weights_sha256": weights_digest(role)}
        log.info("rank %d resumed from step %d (epoch %d)", rank, state.step, state.epoch)
    if state.step >= cfg.train.steps:
        return

    loss_fn = EDMLoss(make_noise(NoiseConfig(kind="train"), cfg.edm), cfg.edm.sigma_data)
    guard = NonFiniteGuard(cfg.train.nan_patience)
    guard.skipped = state.skipped
    eval_x0, eval_cond = batch_to_inputs(loop_config["eval_batch"], stats, runtime.device)
    book = Logbook(cfg, loop_config["run_uri"]) if rank == 0 else None
    progress = Progress(cfg.train.steps, state.step)

    def write_rank0(folder: Path, weights: dict[str, torch.Tensor]) -> None:
        if ema is not None:
            (folder / "ema").mkdir()
            ema.save(folder / "ema" / "teacher.safetensors", weights)
        write_export(folder / "export", {"teacher": weights}, cfg, stats, state.step)
        if book is not None:
            book.flush()

    batches = epoch_batches(ray.train.get_dataset_shard("train"), cfg, state, rank, runtime.device)
    window_loss, window_n, data_wait, t0 = 0.0, 0, 0.0, time.perf_counter()
    while state.step < cfg.train.steps:
        t_wait = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t_wait
        x0, cond = batch_to_inputs(batch, stats, runtime.device)
        cond = cond.drop(cfg.edm.p_uncond, generator=generator).drop_bpm(cfg.edm.p_uncond_bpm, generator)
        with runtime.autocast():
            loss, _ = loss_fn(role.engine, x0, cond, generator=generator)
        loss = loss.float().mean()
        if not guard.allows(loss, state.step):
            log.warning("rank %d: non-finite loss at step %d, update skipped (%d skipped so far)",
                        rank, state.step, guard.skipped)
            continue
        role.engine.backward(loss)
        role.engine.step()
        if ema is not None:
            ema.update(role)
        state.step += 1
        state.skipped = guard.skipped
        window_loss, window_n = window_loss + loss.item(), window_n + 1

        metrics: dict = {}
        last = state.step >= cfg.train.steps
        if state.step % cfg.train.eval_every == 0 or last:
            metrics.update(fixed_eval_loss(role.engine, eval_x0, eval_cond, cfg.train.eval_sigmas,
                                           cfg.edm.sigma_data, cfg.train.seed))
        if state.step % cfg.train.log_every == 0 or last:
            elapsed = time.perf_counter() - t0
            metrics.update({"step": state.step, "epoch": state.epoch, "loss": window_loss / window_n,
                            "lr": role.engine.get_lr()[0], "skipped_nonfinite": guard.skipped,
                            "steps_per_s": window_n / elapsed, "data_wait_frac": data_wait / elapsed})
            window_loss, window_n, data_wait, t0 = 0.0, 0, 0.0, time.perf_counter()
            if book is not None:
                if loop_config.get("bad_rows") is not None:  # rows dropped by data.on_bad_rows=skip
                    metrics["skipped_bad_rows"] = loop_config["bad_rows"].count()
                book.log(state.step, metrics)
                log.info("%s %s", progress.line(state.step), " ".join(
                    f"{k}={metrics[k]:.4g}" for k in ("loss", "eval_loss", "lr", "data_wait_frac") if k in metrics))
        # ray.train.report is a barrier with the Train controller (~1 s on a small machine):
        # report at checkpoints and evaluations only; logs and TensorBoard carry the rest.
        metrics.setdefault("step", state.step)
        if state.step % cfg.train.checkpoint_every == 0 or last:
            # collectives first, on every rank; rank 0 then writes the files
            state.extra["weights_sha256"] = weights_digest(role)
            weights = ema.state_dict() if ema is not None else role.full_fp32_state()
            save_and_report(metrics, [role], state, cfg, rank=rank, world_size=world, generator=generator,
                            write_rank0=lambda folder: write_rank0(folder, weights))
        elif "eval_loss" in metrics:
            ray.train.report(metrics)
    if book is not None:
        book.close()
