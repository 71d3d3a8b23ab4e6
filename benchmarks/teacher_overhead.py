"""Teacher training-step time: plain PyTorch vs the same step inside Ray Train + DeepSpeed.

Both sides run in one invocation, on the same machine, the same model, batch and thread count:
  plain      torch AdamW loop in this process
  ray+ds     one Ray Train worker (TorchTrainer) wrapping the model in a DeepSpeed engine
Prints the median step times and their ratio (target: overhead <= 10%).

    python benchmarks/teacher_overhead.py --config tiny --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_batch(cfg, seed: int = 0):
    from presto_ray.models.cond import Cond

    g = torch.Generator().manual_seed(seed)
    b, L = cfg.train.batch_size, cfg.text.max_tokens
    x0 = 0.5 * torch.randn(b, cfg.model.latent_channels, cfg.model.latent_frames, generator=g)
    mask = torch.arange(L)[None, :] < torch.randint(4, L, (b, 1), generator=g)
    cond = Cond(tokens=torch.randn(b, L, cfg.model.text_dim, generator=g) * mask[..., None], mask=mask,
                bpm=torch.full((b,), 120.0))
    return x0, cond


def time_steps(step, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def plain_pytorch(cfg, warmup: int, steps: int, threads: int) -> list[float]:
    from presto_ray.config import NoiseConfig
    from presto_ray.edm import EDMLoss, EDMPrecond, make_noise
    from presto_ray.models.dit import DiT1D

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    loss_fn = EDMLoss(make_noise(NoiseConfig(kind="train"), cfg.edm), cfg.edm.sigma_data)
    x0, cond = make_batch(cfg)

    def step():
        loss, _ = loss_fn(model, x0, cond)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return time_steps(step, warmup, steps)


def ray_worker(config: dict) -> None:
    import ray.train

    from presto_ray.config import NoiseConfig, config_from_dict
    from presto_ray.edm import EDMLoss, EDMPrecond, make_noise
    from presto_ray.models.dit import DiT1D
    from presto_ray.runtime import choose_runtime
    from presto_ray.train.engine import build_engine

    cfg = config_from_dict(config["cfg"])
    if config["deepspeed"]:
        torch.set_num_threads(config["threads"])
        runtime = choose_runtime(False, device=ray.train.torch.get_device())
        torch.manual_seed(0)
        role = build_engine("teacher", EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data), cfg.train, runtime)
        loss_fn = EDMLoss(make_noise(NoiseConfig(kind="train"), cfg.edm), cfg.edm.sigma_data)
        x0, cond = make_batch(cfg)

        def step():
            loss, _ = loss_fn(role.engine, x0, cond)
            role.engine.backward(loss.mean())
            role.engine.step()

        times = time_steps(step, config["warmup"], config["steps"])
    else:
        times = plain_pytorch(cfg, config["warmup"], config["steps"], config["threads"])
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train V2 keeps only metrics that come with a checkpoint
        (Path(tmp) / "times.json").write_text(json.dumps(times))
        ray.train.report({"median_s": statistics.median(times)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def in_ray_train(cfg, warmup: int, steps: int, threads: int, deepspeed: bool) -> list[float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(num_cpus=max(threads + 1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "warmup": warmup, "steps": steps, "threads": threads,
                           "deepspeed": deepspeed},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": threads}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"bench-{int(time.time())}", storage_path="/tmp/presto-bench"),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / "times.json").read_text())


def main() -> None:
    from presto_ray.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zero-stage", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"train.zero_stage={args.zero_stage}"])

    import ray

    plain = statistics.median(plain_pytorch(cfg, args.warmup, args.steps, args.threads))
    in_ray = statistics.median(in_ray_train(cfg, args.warmup, args.steps, args.threads, deepspeed=False))
    ray_ds = statistics.median(in_ray_train(cfg, args.warmup, args.steps, args.threads, deepspeed=True))
    ray.shutdown()
    print(f"\nteacher step, config={args.config} batch={cfg.train.batch_size} threads={args.threads} "
          f"ZeRO-{args.zero_stage}, median of {args.steps} steps, {os.cpu_count()} CPU cores")
    print(f"  plain PyTorch (this process)        {1000 * plain:8.1f} ms")
    print(f"  plain PyTorch in a Ray Train worker {1000 * in_ray:8.1f} ms   x{in_ray / plain:.3f}")
    print(f"  Ray Train + DeepSpeed               {1000 * ray_ds:8.1f} ms   x{ray_ds / plain:.3f}")
    print(f"  overhead of Ray Train + DeepSpeed vs plain: {100 * (ray_ds / plain - 1):+.1f}% "
          f"(DeepSpeed alone, inside the same Ray worker: {100 * (ray_ds / in_ray - 1):+.1f}%)")


if __name__ == "__main__":
    main()
