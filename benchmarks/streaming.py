"""Shard streaming throughput vs what training consumes, side by side in one run.

Writes the same synthetic shard set (random latents and text states of a preset's shapes: the
reader's cost does not depend on the values) to a local folder and to an S3 protocol server on
loopback (moto), streams each back through the training reader (`ray.data.read_parquet` ->
`iter_torch_batches`, as one Ray Train worker does, one epoch per pass), and times teacher training
steps of the same preset in plain PyTorch. Prints, per source, the steady streaming rate (samples/s
after an epoch's first batch), the start-up of an epoch (seconds to its first batch: Ray Data
launching the listing and read tasks), the rate over the whole epoch, and each rate's ratio to
what training consumes (target >= 10x).

    python benchmarks/streaming.py --config tiny --rows 8192
    python benchmarks/streaming.py --config small --rows 4096
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_shards(uri: str, cfg, rows: int, rows_per_shard: int = 256) -> None:
    """A synthetic shard set at ``uri``: ``rows`` rows of ``cfg``'s shapes, random values."""
    from presto_ray.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    C, T, L, D = cfg.model.latent_channels, cfg.model.latent_frames, cfg.text.max_tokens, cfg.model.text_dim
    with ShardWriter(uri, rows_per_shard=rows_per_shard, latent_shape=(C, T), text_shape=(L, D),
                     codec_identity={"name": "synthetic"}, text_identity={"name": "synthetic"},
                     verify_existing=False) as writer:
        for i in range(rows):
            writer.add({"id": f"row-{i:06d}", "latent": rng.standard_normal((C, T)).astype(np.float16),
                        "caption": "a synthetic benchmark row", "text_states": rng.standard_normal((L, D)).astype(np.float16),
                        "text_mask": np.ones(L, bool), "bpm": np.float32(120), "seconds_start": np.float32(0),
                        "seconds_total": np.float32(cfg.clip_seconds)})


def stream(uri: str, batch_size: int, epoch: int) -> tuple[float, float, float]:
    """One pass (one epoch) over the shards through the training reader; returns (samples/s after
    the first batch, seconds to the first batch, samples/s over the whole pass)."""
    from presto_ray.data.reader import training_dataset

    ds, manifest = training_dataset(uri, seed=0, epoch=epoch)
    t0, n, first = time.perf_counter(), 0, None
    for batch in ds.iter_torch_batches(batch_size=batch_size, drop_last=False, local_shuffle_buffer_size=64):
        if first is None:
            first, n_first = time.perf_counter(), batch["latent"].shape[0]
        n += batch["latent"].shape[0]
    end = time.perf_counter()
    assert n == manifest.num_rows
    return (n - n_first) / (end - first), first - t0, n / (end - t0)


def consumption(cfg, threads: int) -> float:
    """Samples/s one worker consumes in plain PyTorch teacher steps."""
    from teacher_overhead import plain_pytorch

    step = statistics.median(plain_pytorch(cfg, warmup=3, steps=10, threads=threads))
    return cfg.train.batch_size / step


def main() -> None:
    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    from presto_ray.config import load_config
    from presto_ray.train.cluster import quiet_data_progress

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"PRESTO_S3_ENDPOINT": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="bench")
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    quiet_data_progress()

    with tempfile.TemporaryDirectory() as tmp:
        local, remote = f"{tmp}/shards", "s3://bench/shards"
        write_shards(local, cfg, args.rows)
        write_shards(remote, cfg, args.rows)
        stream(local, cfg.train.batch_size, epoch=0)  # warm-up: Ray Data start-up
        rates = {"local folder": [stream(local, cfg.train.batch_size, epoch=e) for e in (1, 2)],
                 "S3 on loopback (moto)": [stream(remote, cfg.train.batch_size, epoch=e) for e in (1, 2)]}
    ray.shutdown()
    server.stop()
    used = consumption(cfg, args.threads)
    print(f"\nshard streaming, config={args.config} rows={args.rows} batch={cfg.train.batch_size} "
          f"latent {cfg.model.latent_channels}x{cfg.model.latent_frames} text {cfg.text.max_tokens}x{cfg.model.text_dim}, "
          f"{os.cpu_count()} CPU cores; streaming figures are the median of two epochs")
    print(f"  training consumes (plain PyTorch, {args.threads} threads)  {used:9.1f} samples/s")
    print(f"  {'reading from':24s} {'steady samples/s':>18s} {'first batch s':>14s} {'whole epoch samples/s':>22s}")
    for where, runs in rates.items():
        steady, first, whole = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"  {where:24s} {steady:10.0f} (x{steady / used:4.1f}) {first:14.2f} {whole:13.0f} (x{whole / used:4.1f})")


if __name__ == "__main__":
    main()
