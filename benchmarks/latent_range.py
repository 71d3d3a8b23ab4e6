"""Where loud generated clips come from (issue #19): generated latents against the data's range,
and what decoding inside that range changes, side by side in one run.

For a teacher export and its shard sets, samples ``--n`` latents per sampler setting (held-out
captions, seeds 0..n-1) and prints, next to the same figures for as many data clips:

- the normalised latents' mean and std;
- the share of raw latent values above their channel's largest data value (and below its smallest);
- frame energy: the log of the summed mel magnitudes of a frame (logsumexp over channels), median /
  99th percentile / maximum: a frame above the data's maximum is louder than any data frame;
- the decoded clips' RMS (median, max) and the share of samples at full scale (|x| >= 0.999), as
  the codec decodes the latents as they are and after clamping them to the data's per-channel range
  (what ``MusicGenerator.decode`` does).

    python benchmarks/latent_range.py --export quickstart/runs/teacher-tiny \\
        --data quickstart/data/train quickstart/data/valid --n 48
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

SETTINGS = {"16 steps, CFG 4": dict(steps=16, cfg_scale=4.0), "16 steps, CFG 2": dict(steps=16, cfg_scale=2.0),
            "16 steps, CFG 1": dict(steps=16, cfg_scale=1.0), "4 steps, CFG 4": dict(steps=4, cfg_scale=4.0)}


def data_latents(uris: list[str], channels: int):
    """Raw latents [N, C, T] float32 and captions of every row of the shard sets."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from presto_ray.data import storage
    from presto_ray.data.shards import fixed_values, read_manifest

    lat, captions, bpms = [], [], []
    for uri in uris:
        manifest = read_manifest(uri)
        for f in manifest.files:
            table = pq.read_table(storage.join(uri, f.name), columns=["latent", "caption", "bpm"])
            lat.append(fixed_values(table.column("latent"), "latent", manifest.latent_shape).astype(np.float32))
            captions += table.column("caption").to_pylist()
            bpms += table.column("bpm").to_pylist()
    return torch.from_numpy(np.concatenate(lat)), captions, bpms


def describe(name: str, x, stats, low, high, codec, decode_n: int) -> str:
    """One table row for normalised latents x [N, C, T]."""
    import numpy as np
    import torch

    raw = stats.denormalise(x)
    energy = torch.logsumexp(raw, dim=1)  # [N, T]
    cells = [f"{x.mean():+.3f}", f"{x.std():.3f}", f"{100 * (raw > high).float().mean():.2f}%",
             f"{100 * (raw < low).float().mean():.2f}%",
             f"{energy.median():.2f} / {energy.quantile(0.99):.2f} / {energy.max():.2f}"]
    for latent in (raw[:decode_n], torch.minimum(torch.maximum(raw[:decode_n], low), high)):
        wav = codec.decode(latent).numpy()
        rms = np.sqrt((wav**2).mean(axis=1))
        cells.append(f"{np.median(rms):.3f} / {rms.max():.3f} / {100 * (np.abs(wav) >= 0.999).mean():.2f}%")
    return "| " + " | ".join([name, *cells]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="teacher run, step or export folder")
    parser.add_argument("--data", nargs="+", required=True, help="shard sets (train, valid) of that teacher")
    parser.add_argument("--n", type=int, default=48, help="latents per setting (and data clips)")
    parser.add_argument("--decode", type=int, default=16, help="clips decoded per row (Griffin-Lim is slow)")
    args = parser.parse_args()

    import torch

    from presto_ray.generate import MusicGenerator, Prompt

    torch.manual_seed(0)
    gen = MusicGenerator(args.export, role="teacher")
    stats = gen.export.stats
    raw, captions, bpms = data_latents(args.data, gen.export.cfg.model.latent_channels)
    low, high = raw.amin((0, 2)).view(1, -1, 1), raw.amax((0, 2)).view(1, -1, 1)
    pick = torch.randperm(len(raw), generator=torch.Generator().manual_seed(0))[:args.n]
    print(f"{len(raw)} data clips; {args.n} per row, the first {args.decode} decoded\n")
    print("| latents | mean | std | > channel max | < channel min | frame energy med / p99 / max | "
          "RMS med / max / full scale, as sampled | same, clamped to the data range |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(describe("data", stats.normalise(raw[pick]), stats, low, high, gen.codec, args.decode), flush=True)
    prompts = [Prompt(text=str(captions[i % len(captions)]), bpm=bpms[i % len(bpms)], seed=i) for i in range(args.n)]
    for name, kw in SETTINGS.items():
        x = torch.cat([gen.sample_latents(prompts[i:i + 16], sampler="teacher", **kw)
                       for i in range(0, args.n, 16)])
        print(describe(f"teacher, {name}", x, stats, low, high, gen.codec, args.decode), flush=True)


if __name__ == "__main__":
    main()
