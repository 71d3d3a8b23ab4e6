"""Parquet decode speed of the two ways to store fixed-shape arrays, side by side in one run.

Schema version 1 stored ``latent`` and ``text_states`` as ``fixed_size_list`` columns (Parquet keeps
a repetition and a definition level per list element); version 2 stores each row's array as one
``fixed_size_binary`` value (presto_ray.data.shards.fixed_column). Both are written in memory with
zstd and without compression, then read back with pyarrow and turned into numpy [N, *shape], in one
process, no Ray. Prints rows/s per layout.

    python benchmarks/shard_decode.py --config tiny --rows 2048
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    from presto_ray.config import load_config
    from presto_ray.data.shards import fixed_column, fixed_values

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(args.config)
    rng = np.random.default_rng(0)
    shapes = {"latent": (cfg.model.latent_channels, cfg.model.latent_frames),
              "text_states": (cfg.text.max_tokens, cfg.model.text_dim)}
    values = {k: rng.standard_normal((args.rows, *s)).astype(np.float16) for k, s in shapes.items()}

    def as_list(v: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v[0].size)

    def list_values(col: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
        arr = col.combine_chunks()
        return arr.flatten().to_numpy(zero_copy_only=False).reshape((len(arr), *shape))

    layouts = {
        "fixed_size_list (v1)": ({k: as_list(v) for k, v in values.items()}, lambda t, k: list_values(t.column(k), shapes[k])),
        "fixed_size_binary (v2)": ({k: fixed_column(k, v) for k, v in values.items()},
                                   lambda t, k: fixed_values(t.column(k), k, shapes[k])),
    }
    print(f"decode {args.rows} rows of config={args.config} (latent {shapes['latent']}, text_states "
          f"{shapes['text_states']} float16), pyarrow {pa.__version__}, median of {args.repeats}")
    for name, (columns, decode) in layouts.items():
        for compression in ("zstd", "none"):
            sink = pa.BufferOutputStream()
            pq.write_table(pa.table(columns), sink, compression=compression, row_group_size=256)
            data = sink.getvalue()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                table = pq.read_table(pa.BufferReader(data))
                out = {k: decode(table, k) for k in shapes}
                times.append(time.perf_counter() - t0)
            assert all(np.array_equal(out[k], values[k]) for k in shapes)
            print(f"  {name:24s} {compression:5s} {len(data) // args.rows:7d} B/row "
                  f"{args.rows / sorted(times)[len(times) // 2]:9.0f} rows/s")


if __name__ == "__main__":
    main()
