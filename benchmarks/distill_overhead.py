"""Presto-S iteration cost: plain PyTorch vs Ray Train + DeepSpeed, and memory per worker by ZeRO stage.

Part 1, side by side in one invocation (same model, batch, threads, seeds): one Presto-S iteration
(generator turn every ``ttur`` iterations, guidance turn every iteration) with
  plain      the two trained roles on torch AdamW in this process (presto_ray.distill.TorchRole)
  ray+ds     the same update inside one Ray Train worker, each role a DeepSpeed engine
The time per iteration is the mean over whole ttur cycles (generator and guidance-only iterations
differ), median over cycles.

Part 2: 2 Ray Train workers per ZeRO stage (0-3); each reports its peak RSS and the bytes of model
state it holds (module parameters + optimiser-held master weights and Adam moments).

    python benchmarks/distill_overhead.py --config tiny --cycles 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def build(cfg, runtime=None):
    """(roles, update, x0, cond) for Presto-S on random tiny-model weights. runtime given: each
    trained role becomes a DeepSpeed engine; else a TorchRole."""
    from presto_ray.distill.networks import build_networks, make_update
    from presto_ray.distill.roles import Roles, TorchRole
    from presto_ray.edm import EDMPrecond
    from presto_ray.models.dit import DiT1D

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # also inside Ray workers
    from teacher_overhead import make_batch

    torch.manual_seed(0)
    teacher = EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data)
    for p in teacher.parameters():  # a non-trivial teacher: the zero-initialised output layers get weights
        torch.nn.init.normal_(p, std=0.02)
    nets = build_networks(cfg, teacher.state_dict(), cfg.model)
    if runtime is None:
        gen = TorchRole.adamw("generator", nets["generator"], cfg.distill.generator.lr, grad_clip=cfg.train.grad_clip)
        guid = TorchRole.adamw("guidance", nets["guidance"], cfg.distill.guidance.lr, grad_clip=cfg.train.grad_clip)
    else:
        from presto_ray.train.engine import build_engine

        gen = build_engine("generator", nets["generator"], cfg.distill.generator.apply_to(cfg.train), runtime)
        guid = build_engine("guidance", nets["guidance"], cfg.distill.guidance.apply_to(cfg.train), runtime)
    roles = Roles(generator=gen, teacher=nets["teacher"], guidance=guid)
    x0, cond = make_batch(cfg)
    return roles, make_update(cfg), x0, cond


def time_cycles(roles, update, x0, cond, cycles: int, warmup_cycles: int = 1) -> list[float]:
    """Seconds per iteration, averaged over each ttur cycle."""
    g = torch.Generator().manual_seed(0)
    it = 0
    out = []
    for c in range(warmup_cycles + cycles):
        t0 = time.perf_counter()
        for _ in range(update.ttur):
            update.step(roles, x0, cond, it, generator=g)
            it += 1
        if c >= warmup_cycles:
            out.append((time.perf_counter() - t0) / update.ttur)
    return out


def model_state_bytes(role) -> int:
    """Bytes of module parameters this rank holds plus the optimiser's tensors (master weights,
    moments). Under ZeRO-3 only the rank's partition of each parameter counts."""
    total = 0
    for p in role.module.parameters():
        t = getattr(p, "ds_tensor", None)
        t = t if t is not None else p
        total += t.numel() * t.element_size()
    opt = role.engine.optimizer
    base = getattr(opt, "optimizer", opt)
    seen = set()
    for group in base.param_groups:
        for p in group["params"]:
            if id(p) not in seen and p is not None and p.data_ptr() not in {q.data_ptr() for q in role.module.parameters()}:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    for state in base.state.values():
        for t in state.values():
            if torch.is_tensor(t) and t.ndim > 0:
                total += t.numel() * t.element_size()
    return total


def worker(config: dict) -> None:
    import ray.train

    from presto_ray.config import config_from_dict
    from presto_ray.runtime import choose_runtime

    cfg = config_from_dict(config["cfg"])
    torch.set_num_threads(config["threads"])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runtime = choose_runtime(False, device=ray.train.torch.get_device())
    roles, update, x0, cond = build(cfg, runtime)
    times = time_cycles(roles, update, x0, cond, config["cycles"])
    result = {"times": times, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_start_mb": rss0 / 1024, "state_mb": sum(model_state_bytes(r) for r in (roles.generator, roles.guidance)) / 2**20,
              "rank": ray.train.get_context().get_world_rank()}
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train V2 keeps only metrics that come with a checkpoint
        (Path(tmp) / f"rank{result['rank']}.json").write_text(json.dumps(result))
        ray.train.report({"median_s": statistics.median(times)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def in_ray(cfg, cycles: int, threads: int, workers: int) -> list[dict]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(num_cpus=max(workers * threads + 1, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False)
    trainer = TorchTrainer(
        worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "cycles": cycles, "threads": threads},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": threads}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"bench-distill-{int(time.time() * 1000)}", storage_path="/tmp/presto-bench"),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rank*.json"))]


def main() -> None:
    from presto_ray.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--cycles", type=int, default=8, help="ttur cycles timed (after one warm-up cycle)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zero-stage", type=int, default=2, help="ZeRO stage of the timing comparison")
    ap.add_argument("--stages", default="0,1,2,3", help="ZeRO stages of the 2-worker memory table")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"train.zero_stage={args.zero_stage}", "distill.method=presto-s"])

    import ray

    torch.set_num_threads(args.threads)
    plain = statistics.median(time_cycles(*build(cfg), args.cycles))
    ray_ds = statistics.median(in_ray(cfg, args.cycles, args.threads, 1)[0]["times"])
    memory = {}
    for stage in [int(s) for s in args.stages.split(",") if s]:
        staged = load_config(args.config, [*args.overrides, f"train.zero_stage={stage}", "distill.method=presto-s"])
        memory[stage] = in_ray(staged, 2, args.threads, 2)
    ray.shutdown()
    n_params = sum(p.numel() for p in build(cfg)[0].generator.module.parameters())
    print(f"\nPresto-S iteration, config={args.config} ({n_params / 1e6:.2f} M params per network) "
          f"batch={cfg.train.batch_size} ttur={cfg.distill.ttur} threads={args.threads}, "
          f"median over {args.cycles} ttur cycles, {os.cpu_count()} CPU cores")
    print(f"  plain PyTorch (this process)      {1000 * plain:8.1f} ms/iteration")
    print(f"  Ray Train + DeepSpeed ZeRO-{args.zero_stage} (1 wkr) {1000 * ray_ds:8.1f} ms/iteration   "
          f"x{ray_ds / plain:.3f} ({100 * (ray_ds / plain - 1):+.1f}%)")
    print("\nper worker with 2 workers (generator + guidance engines, frozen teacher):")
    print("  ZeRO | model state held (MB) | peak RSS (MB) | RSS growth from worker start (MB)")
    for stage, ranks in memory.items():
        state = statistics.mean(r["state_mb"] for r in ranks)
        peak = max(r["rss_peak_mb"] for r in ranks)
        growth = max(r["rss_peak_mb"] - r["rss_start_mb"] for r in ranks)
        print(f"  {stage:4d} | {state:21.2f} | {peak:13.0f} | {growth:10.0f}")


if __name__ == "__main__":
    main()
