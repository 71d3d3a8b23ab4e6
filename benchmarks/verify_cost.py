"""What `data.verify=checksum` costs over `data.verify=size` before training reads a shard set,
side by side in one run, and against reading one epoch.

Times `presto_ray.data.reader.check_files` on the same set with verify=size (one listing) and
verify=checksum (that, plus every file streamed through sha256 by one Ray task per file), each the
median of ``--repeats`` alternating runs after one warm-up of each (the warm-up starts Ray's worker
processes and fills the page cache, as a set just written by `prepare` is). For scale it also times
one epoch read through the training reader (verify=off, all training columns, every batch taken).

``--data`` takes a prepared shard set (e.g. the quickstart's `quickstart/data/train`); without it
the script writes a synthetic set of the quickstart's size (449 rows of the tiny preset's shapes in
6 files, random values) to a temporary folder.

    python benchmarks/verify_cost.py --data quickstart/data/train
    python benchmarks/verify_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # streaming.py's synthetic shard writer


def write_synthetic(uri: str, rows: int, files: int) -> None:
    from presto_ray.config import load_config
    from streaming import write_shards

    write_shards(uri, load_config("tiny"), rows, rows_per_shard=-(-rows // files))


def time_check(uri: str, manifest, verify: str) -> float:
    from presto_ray.data.reader import check_files

    t0 = time.perf_counter()
    check_files(uri, manifest, verify)
    return time.perf_counter() - t0


def time_epoch(uri: str) -> float:
    from presto_ray.data.reader import training_dataset

    t0 = time.perf_counter()
    ds, _ = training_dataset(uri, seed=0, epoch=0, verify="off")
    for _ in ds.iter_batches(batch_size=64, batch_format="numpy"):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a prepared shard set (default: a synthetic quickstart-sized one)")
    ap.add_argument("--rows", type=int, default=449, help="rows of the synthetic set (default 449)")
    ap.add_argument("--files", type=int, default=6, help="files of the synthetic set (default 6)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    args = ap.parse_args()

    import logging

    import ray

    from presto_ray.data.shards import read_manifest

    logging.basicConfig(level=logging.ERROR)
    tmp = None
    uri = args.data
    if uri is None:
        tmp = tempfile.TemporaryDirectory(prefix="verify-cost-")
        uri = f"{tmp.name}/train"
        write_synthetic(uri, args.rows, args.files)
    manifest = read_manifest(uri)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        for verify in ("size", "checksum"):  # warm-up: worker processes, page cache
            time_check(uri, manifest, verify)
        times: dict[str, list[float]] = {"size": [], "checksum": []}
        for _ in range(args.repeats):
            for verify in times:
                times[verify].append(time_check(uri, manifest, verify))
        epoch = time_epoch(uri)
    finally:
        ray.shutdown()
    size, checksum = (statistics.median(times[k]) for k in ("size", "checksum"))
    total = sum(f.bytes for f in manifest.files)
    print(f"shard set: {uri} ({manifest.num_rows} rows, {len(manifest.files)} files, {total / 1e6:.1f} MB)")
    print(f"{'verify':10s} {'median':>10s} {'vs size':>9s} {'vs epoch read':>14s}")
    for name, value in (("size", size), ("checksum", checksum)):
        print(f"{name:10s} {1000 * value:8.1f} ms {value / size:8.1f}x {100 * value / epoch:12.1f} %")
    print(f"checksum - size: {1000 * (checksum - size):.1f} ms "
          f"({total / 1e6 / max(checksum - size, 1e-9):.0f} MB/s); one epoch read: {1000 * epoch:.0f} ms")


if __name__ == "__main__":
    main()
