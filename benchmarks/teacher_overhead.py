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
import time

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


def ray_deepspeed_worker(config: dict) -> None:
    import ray.train

    from presto_ray.config import NoiseConfig, config_from_dict
    from presto_ray.edm import EDMLoss, EDMPrecond, make_noise
    from presto_ray.models.dit import DiT1D
    from presto_ray.runtime import choose_runtime
    from presto_ray.train.engine import build_engine

    torch.set_num_threads(config["threads"])
    cfg = config_from_dict(config["cfg"])
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
    ray.train.report({"times": json.dumps(times)})


def ray_deepspeed(cfg, warmup: int, steps: int, threads: int) -> list[float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(num_cpus=max(threads + 1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    trainer = TorchTrainer(
        ray_deepspeed_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "warmup": warmup, "steps": steps, "threads": threads},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": threads}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"bench-{int(time.time())}", storage_path="/tmp/presto-bench"),
    )
    result = trainer.fit()
    ray.shutdown()
    return json.loads(result.metrics["times"])


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

    plain = plain_pytorch(cfg, args.warmup, args.steps, args.threads)
    ray_ds = ray_deepspeed(cfg, args.warmup, args.steps, args.threads)
    p, r = statistics.median(plain), statistics.median(ray_ds)
    print(f"\nteacher step, config={args.config} batch={cfg.train.batch_size} threads={args.threads} "
          f"ZeRO-{args.zero_stage}, median of {args.steps} steps")
    print(f"  plain PyTorch           {1000 * p:8.1f} ms")
    print(f"  Ray Train + DeepSpeed   {1000 * r:8.1f} ms")
    print(f"  ratio (ray+ds / plain)  {r / p:8.3f}   overhead {100 * (r / p - 1):+.1f}%")


if __name__ == "__main__":
    main()
