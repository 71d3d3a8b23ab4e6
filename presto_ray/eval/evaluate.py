"""``evaluate``: generate for held-out prompts of a shard set, embed generated and reference audio
with musicnn (and CLAP when its weights are given), and write metrics.json (METHOD.md section 6).

The reference is the held-out latents decoded by the same codec ("real audio through the
codec"), so the generator's error is measured apart from the codec's. Its embeddings are cached
per shard set (keyed by the manifest, the rows taken, the codec and the embedding). Keys of metrics.json are
stable: fad, fad_inf, mmd, precision, density, recall, coverage, tempo_err_bpm,
tempo_err_octave_bpm, key_acc, instrument_acc (instrument family of musicnn's strongest
instrument tag vs the caption's), n_samples, n_frames, steps, sampler, model, data, embedding; with
CLAP also fad_clap, fad_inf_clap, mmd_clap, clap_score (mean cosine of each clip's audio embedding
with its prompt's text embedding) and clap_embedding.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from presto_ray.eval.adherence import adherence_metrics
from presto_ray.eval.metrics import fad, fad_inf, gaussian_stats, mmd, prdc
from presto_ray.generate import MusicGenerator, Prompt, write_wav

log = logging.getLogger("presto_ray.evaluate")



def held_out_rows(uri: str, n: int, seed: int = 0) -> list[dict]:
    """The first ``n`` rows (in the seeded file order) of the shard set at ``uri``: id, latent
    [C, T], caption, bpm."""
    from presto_ray.data.reader import training_dataset

    ds, _ = training_dataset(uri, seed=seed, epoch=0, columns=["id", "latent", "caption", "bpm"], preserve_order=True)
    rows = ds.take(n)
    if not rows:
        raise ValueError(f"the shard set at {uri} has no rows")
    for r in rows:
        if not str(r["caption"]).strip():
            raise ValueError(f"{uri}: row id '{r['id']}' has an empty caption")
    return rows


class _GeneratorActor:
    """A Ray actor holding one loaded model (see :func:`generate_distributed`)."""

    def __init__(self, checkpoint: str, steps: int | None) -> None:
        self.gen = MusicGenerator(checkpoint)
        self.steps = steps

    def generate(self, prompts: list[Prompt]) -> list[np.ndarray]:
        return self.gen.generate(prompts, batch_size=len(prompts), progress=False, steps=self.steps)


def generate_distributed(checkpoint: str, prompts: list[Prompt], *, num_workers: int, batch_size: int,
                         steps: int | None = None, gpus_per_worker: float = 0.0) -> list[np.ndarray]:
    """Generate ``prompts`` on ``num_workers`` Ray actors, each loading the model once; batches of
    ``batch_size`` are handed out as actors free up and come back in prompt order. Each prompt's
    noise comes from its own seed, so the audio equals a single-process run's."""
    import ray
    from ray.util import ActorPool

    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(_GeneratorActor)
    pool = ActorPool([actor.remote(checkpoint, steps) for _ in range(num_workers)])
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    out: list[np.ndarray] = []
    for wavs in pool.map(lambda a, batch: a.generate.remote(batch), batches):
        out.extend(wavs)
    return out


def cache_dir() -> Path:
    """Where reference embeddings are cached: $PRESTO_CACHE/eval or ~/.cache/presto_ray/eval."""
    import os

    root = os.environ.get("PRESTO_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "presto_ray") / "eval"


def reference_key(data_uri: str, n: int, seed: int, codec: dict, embedding: str) -> str:
    """Cache key of a reference set: the shard set's manifest (its checksums name its content), the
    rows taken, the codec that decodes them and the embedding."""
    import hashlib

    from presto_ray.data import storage

    manifest = storage.read_bytes(storage.join(data_uri, "manifest.json"))
    h = hashlib.sha256(manifest)
    h.update(json.dumps({"n": n, "seed": seed, "codec": codec, "embedding": embedding}, sort_keys=True).encode())
    return h.hexdigest()[:32]


class ReferenceAudio:
    """The held-out latents decoded by the model's codec ([n, samples] float32), decoded once and only
    when an embedder's reference features are not cached."""

    def __init__(self, gen: MusicGenerator, rows: list[dict]):
        self.gen, self.rows, self._audio = gen, rows, None

    @property
    def codec(self) -> dict:
        return self.gen.export.cfg.codec.model_dump(mode="json")

    def audio(self) -> np.ndarray:
        if self._audio is None:
            latents = torch.from_numpy(np.stack([np.asarray(r["latent"], np.float32) for r in self.rows]))
            self._audio = self.gen.codec.decode(latents).cpu().numpy().astype(np.float32)
        return self._audio


def reference_features(embedder, reference: ReferenceAudio, data_uri: str, seed: int) -> tuple[np.ndarray, Path]:
    """Frame embeddings [frames, D] of the reference audio by ``embedder``, read from or written to
    the cache (atomically); returns them with the cache file."""
    key = reference_key(str(data_uri), len(reference.rows), seed, reference.codec, embedder.name)
    cached = cache_dir() / f"reference-{key}.npy"
    if cached.is_file():
        return np.load(cached, allow_pickle=False), cached
    feats = np.concatenate([embedder.embed(w, reference.gen.sample_rate)["features"].cpu().numpy()
                            for w in reference.audio()])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part.npy")
    np.save(tmp, feats)
    tmp.replace(cached)
    return feats, cached


def distribution_metrics(gen_feats: np.ndarray, ref_feats: np.ndarray, *, mmd_bandwidth: float, mmd_scale: float,
                         k: int = 5, seed: int = 0, prdc_too: bool = True) -> dict[str, float]:
    """FAD, MMD, FAD-inf (8 or more generated frames) and precision/density/recall/coverage (more than
    ``k`` frames on each side) between generated [n, D] and reference [m, D] frame embeddings."""
    out = {"fad": fad(gen_feats, ref_feats), "mmd": mmd(gen_feats, ref_feats, bandwidth=mmd_bandwidth, scale=mmd_scale)}
    if len(gen_feats) >= 8:
        out["fad_inf"] = fad_inf(gen_feats, gaussian_stats(ref_feats), min_n=max(2, len(gen_feats) // 4),
                                 points=min(25, len(gen_feats)), seed=seed)[0]
    if prdc_too and min(len(gen_feats), len(ref_feats)) > k:
        out.update(prdc(ref_feats, gen_feats, k=k))
    return out


def evaluate(checkpoint: str, data_uri: str, out_dir: str | Path, *, n: int = 32, steps: int | None = None,
             batch_size: int = 8, seed: int = 0, mmd_bandwidth: float = 10.0, mmd_scale: float = 1000.0,
             k: int = 5, num_workers: int = 0, gpus_per_worker: float = 0.0, clap=None) -> dict:
    """Evaluate the model at ``checkpoint`` on ``n`` prompts of ``data_uri``; writes
    ``out_dir/metrics.json`` and ``out_dir/audio/*.wav``; returns the metrics. ``num_workers`` > 0
    generates on that many Ray actors (see :func:`generate_distributed`). ``clap``: the folder of a
    CLAP model (or a loaded :class:`~presto_ray.eval.clap.ClapEmbedder`) adds fad_clap, fad_inf_clap,
    mmd_clap and clap_score."""
    from presto_ray.eval.embeddings import load_embedder

    out = Path(out_dir)
    rows = held_out_rows(data_uri, n, seed)
    gen = MusicGenerator(checkpoint)
    prompts = [Prompt(str(r["caption"]), None if not math.isfinite(float(r["bpm"])) else float(r["bpm"]), None, seed + i)
               for i, r in enumerate(rows)]
    if num_workers > 0:
        generated = generate_distributed(str(checkpoint), prompts, num_workers=num_workers, batch_size=batch_size,
                                         steps=steps, gpus_per_worker=gpus_per_worker)
    else:
        generated = gen.generate(prompts, batch_size=batch_size, progress=True, steps=steps)
    for i, wav in enumerate(generated):
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(rows[i]["id"]))[:60]
        write_wav(out / "audio" / f"{i:03d}_{slug}.wav", wav, gen.sample_rate)

    embedder = load_embedder("musicnn")
    gen_out = [embedder.embed(w, gen.sample_rate) for w in generated]
    gen_feats = np.concatenate([o["features"].numpy() for o in gen_out])
    reference = ReferenceAudio(gen, rows)
    ref_feats, cached = reference_features(embedder, reference, data_uri, seed)
    metrics = distribution_metrics(gen_feats, ref_feats, mmd_bandwidth=mmd_bandwidth, mmd_scale=mmd_scale, k=k,
                                   seed=seed)
    if clap is not None:
        from presto_ray.eval.clap import ClapEmbedder, clap_score

        clap_embedder = clap if isinstance(clap, ClapEmbedder) else load_embedder("clap", str(clap))
        clap_gen = [clap_embedder.embed(w, gen.sample_rate)["features"] for w in generated]
        clap_ref, _ = reference_features(clap_embedder, reference, data_uri, seed)
        clap_metrics = distribution_metrics(torch.cat(clap_gen).numpy(), clap_ref, mmd_bandwidth=mmd_bandwidth,
                                            mmd_scale=mmd_scale, k=k, seed=seed, prdc_too=False)
        metrics.update({f"{name}_clap": v for name, v in clap_metrics.items()})
        clips = torch.stack([torch.nn.functional.normalize(f.mean(0), dim=0) for f in clap_gen])
        metrics["clap_score"] = clap_score(clips, clap_embedder.embed_text([p.text for p in prompts]))
        metrics["clap_embedding"] = clap_embedder.name
    metrics.update(adherence_metrics(generated, gen.sample_rate, [p.text for p in prompts], [p.bpm for p in prompts],
                                     [o["tags"].numpy().mean(0) for o in gen_out], embedder.tag_names))
    metrics.update({"n_samples": len(generated), "n_frames": int(len(gen_feats)), "model": str(checkpoint),
                    "role": gen.role, "method": gen.export.cfg.distill.method if gen.role == "generator" else "teacher",
                    "sampler": gen.sampler, "steps": steps or (gen.export.cfg.sampler.steps if gen.sampler == "teacher"
                                                               else gen.export.cfg.distill.student_steps),
                    "data": str(data_uri), "embedding": embedder.name, "reference_cache": str(cached)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("wrote %s", out / "metrics.json")
    return metrics
