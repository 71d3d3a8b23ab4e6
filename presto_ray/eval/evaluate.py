"""``evaluate``: generate ``n`` clips for held-out prompts of a shard set, embed generated and
reference audio with musicnn (and CLAP when its weights are given), and write metrics.json
(METHOD.md section 6).

Prompts: the held-out rows, repeated with new seeds when ``n`` exceeds them (clip i takes row
i mod rows and seed ``seed + i``). Reference: real audio through the codec (the latents of the
``reference`` shard sets decoded by the model's codec, so the generator's error is measured apart
from the codec's), embedded once and cached per shard set. The reference clips are split once, by
seed, into a *noise-floor sample* of min(n, M // 2) clips and the *reference* (the rest): every
model is scored against the same reference, and the floor sample against it gives the distance
two independent data samples have (the "data vs data" row).

Keys of metrics.json are stable. Distribution metrics, each with ``<name>_ci: [low, high]`` (95%
percentile bootstrap over generated and reference clips): kad (the primary metric: unbiased MMD^2
with the median-distance bandwidth, x1000, :func:`presto_ray.eval.metrics.kad`), mmd (CMMD style,
fixed bandwidth), fad (null, with ``fad_note`` "n too small", unless both sides have at least
twice as many feature vectors as embedding dimensions), precision, density, recall, coverage; ``floor_kad``
and ``floor_kad_ci`` (the floor sample against the reference). Adherence: tempo_err_bpm,
tempo_err_octave_bpm, key_acc, instrument_acc. Provenance: n_samples, n_prompts, n_frames,
n_reference, n_floor, reference, steps, sampler, cfg_scale, cfg_rescale, s_churn, schedule, model, role,
method, data, embedding. With CLAP also kad_clap, fad_clap, mmd_clap (and their _ci), clap_score
and clap_embedding.

Audio checks (:mod:`presto_ray.eval.loudness`; loudness is per-clip RMS in dB re full scale, of
the audio as decoded, before the WAV writer clips it to [-1, 1], so a blast reads above 0 dB; the
reference's per-clip loudness is decoded once and cached like its embeddings): loudness_db_median,
loudness_db_range [min, max], reference_loudness_db_range [p1, p99] (of the reference clips),
loudness_outside_share (share of generated clips outside that range), full_scale_share (share of
generated samples with |x| >= 0.999), clips_at_full_scale (generated clips with any such sample),
and floor_loudness_outside_share (the floor sample's share outside the same range: what the data
itself scores at this reference size). latent_out_of_range_share: the share of generated latent
values outside the data's per-channel range, clamped to it before the codec (None when the
export records no range; see :meth:`MusicGenerator.decode`).
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from presto_ray.eval.adherence import adherence_metrics
from presto_ray.eval.loudness import loudness_metrics, outside_share, reference_range, rms_db
from presto_ray.data import storage
from presto_ray.distill.budget import BudgetSchedule
from presto_ray.distill.methods import method_of
from presto_ray.eval.metrics import bootstrap_ci, fad, fad_checked, floor_split, kad, kad_ci, prdc_ci
from presto_ray.generate import (MusicGenerator, Prompt, default_sampler, out_of_range_share, resolve_role,
                                 sampler_steps, write_wav)
from presto_ray.train.export import Exported

log = logging.getLogger("presto_ray.evaluate")



BOOTSTRAP = 200
"""Bootstrap resamples behind every interval."""


def held_out_rows(uri: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """The first ``n`` rows (all when None), in the seeded file order, of the shard set at
    ``uri``: id, latent [C, T], caption, bpm. An empty caption is refused, naming the row."""
    from presto_ray.data.reader import training_dataset

    ds, _ = training_dataset(uri, seed=seed, epoch=0, columns=["id", "latent", "caption", "bpm"], preserve_order=True)
    rows = ds.take_all() if n is None else ds.take(n)
    if not rows:
        raise ValueError(f"the shard set at {uri} has no rows")
    for r in rows:
        if not str(r["caption"]).strip():
            raise ValueError(f"{uri}: row id '{r['id']}' has an empty caption")
    return rows


def prompts_for(rows: list[dict], n: int, seed: int) -> list[Prompt]:
    """``n`` prompts from held-out ``rows``: clip i takes row i mod len(rows) (caption, bpm) and
    noise seed ``seed + i``, so prompts repeat with new seeds once the rows run out."""
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        bpm = float(r["bpm"])
        out.append(Prompt(str(r["caption"]), None if not math.isfinite(bpm) else bpm, None, seed + i))
    return out


@dataclass(frozen=True)
class Sampling:
    """How the evaluated model is sampled; None keeps what its export says. ``role``: "auto"
    (the student when there is one) or "teacher" (e.g. the teacher's weights under a student's
    sampler, an undistilled control); ``schedule``: a budget schedule as JSON (see
    :meth:`BudgetSchedule.to_json`), None for the model's own."""

    role: str = "auto"
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    cfg_rescale: float | None = None
    s_churn: float | None = None
    schedule: str | None = None

    def generate_kw(self) -> dict:
        """Keyword arguments of :meth:`MusicGenerator.generate`."""
        kw = {"steps": self.steps, "cfg_scale": self.cfg_scale, "cfg_rescale": self.cfg_rescale,
              "s_churn": self.s_churn, "sampler": self.sampler}
        if self.schedule is not None:
            kw["schedule"] = BudgetSchedule.parse(self.schedule)
        return kw

    def resolved(self, exported: Exported) -> dict:
        """What sampling ``exported`` this way uses, as metrics.json records it: role, sampler,
        steps, cfg_scale (None: no guidance), cfg_rescale (its guidance rescale: the override or the
        export's sampler's; None without guidance), s_churn (None: not a Heun/Euler sampler),
        schedule (None: full depth)."""
        cfg, role = exported.cfg, resolve_role(exported, self.role)
        sampler = self.sampler or default_sampler(cfg, role)
        if self.schedule is not None:
            schedule = BudgetSchedule.parse(self.schedule)
        else:
            schedule = method_of(cfg, role).budget_schedule(cfg)
        steps = sampler_steps(cfg, sampler, self.steps)
        if sampler == "pingpong":
            scale, churn = self.cfg_scale, None
        else:
            scale = cfg.sampler.cfg_scale if self.cfg_scale is None else self.cfg_scale
            churn = cfg.sampler.s_churn if self.s_churn is None else self.s_churn
        return {"role": role, "sampler": sampler, "steps": steps, "cfg_scale": scale,
                "cfg_rescale": None if scale is None else (cfg.sampler.cfg_rescale if self.cfg_rescale is None
                                                           else self.cfg_rescale), "s_churn": churn,
                "schedule": None if schedule.is_full else json.loads(schedule.to_json())}


class _GeneratorActor:
    """A Ray actor holding one loaded model (see :func:`generate_distributed`)."""

    def __init__(self, checkpoint: str, sampling: Sampling) -> None:
        self.gen = MusicGenerator(checkpoint, role=sampling.role)
        self.kw = sampling.generate_kw()

    def generate(self, prompts: list[Prompt]) -> tuple[list[np.ndarray], int, int]:
        """(waveforms, latent values outside the data's range, latent values decoded) of one batch."""
        outside, total = self.gen.out_of_range_values, self.gen.decoded_values
        wavs = self.gen.generate(prompts, batch_size=len(prompts), progress=False, **self.kw)
        return wavs, self.gen.out_of_range_values - outside, self.gen.decoded_values - total


def generate_distributed(checkpoint: str, prompts: list[Prompt], *, num_workers: int, batch_size: int,
                         sampling: Sampling = Sampling(),
                         gpus_per_worker: float = 0.0) -> tuple[list[np.ndarray], int, int]:
    """Generate ``prompts`` on ``num_workers`` Ray actors, each loading the model once; batches of
    ``batch_size`` are handed out as actors free up and come back in prompt order. Each prompt's
    noise comes from its own seed, so the audio equals a single-process run's. Returns (waveforms,
    latent values clamped to the data's range, latent values decoded), as
    :meth:`MusicGenerator.decode` counts them."""
    import ray
    from ray.util import ActorPool

    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(_GeneratorActor)
    pool = ActorPool([actor.remote(checkpoint, sampling) for _ in range(num_workers)])
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    out: list[np.ndarray] = []
    outside = total = 0
    for wavs, batch_outside, batch_total in pool.map(lambda a, batch: a.generate.remote(batch), batches):
        out.extend(wavs)
        outside, total = outside + batch_outside, total + batch_total
    return out, outside, total


def cache_dir() -> Path:
    """Where reference embeddings are cached: $PRESTO_CACHE/eval or ~/.cache/presto_ray/eval."""
    import os

    root = os.environ.get("PRESTO_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "presto_ray") / "eval"


def reference_key(data_uris: list[str], n: int, seed: int, codec: dict, embedding: str) -> str:
    """Cache key of a reference set: the shard sets' manifests (their checksums name their
    content), the rows taken, the codec that decodes them and the embedding."""
    import hashlib

    from presto_ray.data import storage

    h = hashlib.sha256()
    for uri in data_uris:
        h.update(storage.read_bytes(storage.join(uri, "manifest.json")))
    h.update(json.dumps({"n": n, "seed": seed, "codec": codec, "embedding": embedding}, sort_keys=True).encode())
    return h.hexdigest()[:32]


class ReferenceAudio:
    """The latents of the shard sets ``uris`` (the first ``n`` rows of them, in order, when given),
    decoded by the model's codec ([M, samples] float32). Rows are read and decoded only when an
    embedder's reference features are not cached: the clip count comes from the manifests."""

    def __init__(self, gen: MusicGenerator, uris: list[str], seed: int = 0, n: int | None = None):
        from presto_ray.data import storage

        self.gen, self.uris, self.seed, self._audio = gen, [str(u) for u in uris], seed, None
        total = sum(int(json.loads(storage.read_bytes(storage.join(u, "manifest.json")))["num_rows"]) for u in self.uris)
        self.count = total if n is None else min(n, total)

    @property
    def codec(self) -> dict:
        return self.gen.export.cfg.codec.model_dump(mode="json")

    def rows(self) -> list[dict]:
        rows = [r for uri in self.uris for r in held_out_rows(uri, None, self.seed)][:self.count]
        if len(rows) != self.count:
            raise ValueError(f"the reference shard sets {self.uris} hold {len(rows)} rows, their manifests say "
                             f"{self.count}")
        return rows

    def audio(self) -> np.ndarray:
        if self._audio is None:
            latents = torch.from_numpy(np.stack([np.asarray(r["latent"], np.float32) for r in self.rows()]))
            self._audio = self.gen.codec.decode(latents).cpu().numpy().astype(np.float32)
        return self._audio


def embed_clips(embedder, clips, sample_rate: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Frame embeddings of each clip: (features [frames, D], clip index of each frame [frames],
    the embedder's outputs per clip)."""
    outs = [embedder.embed(w, sample_rate) for w in clips]
    feats = [np.asarray(o["features"].cpu().numpy() if hasattr(o["features"], "cpu") else o["features"]) for o in outs]
    groups = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
    return np.concatenate(feats), groups, outs


def reference_features(embedder, reference: ReferenceAudio, seed: int) -> tuple[np.ndarray, np.ndarray, Path]:
    """Frame embeddings [frames, D] of the reference audio by ``embedder`` and the clip of each frame
    [frames], read from or written to the cache (atomically); returns them with the cache file."""
    key = reference_key(reference.uris, reference.count, seed, reference.codec, embedder.name)
    cached = cache_dir() / f"reference-{key}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            return z["features"], z["groups"], cached
    feats, groups, _ = embed_clips(embedder, reference.audio(), reference.gen.sample_rate)
    buf = io.BytesIO()
    np.savez(buf, features=feats, groups=groups)
    storage.write_bytes_atomic(str(cached), buf.getvalue())  # two evaluations may fill it at once
    return feats, groups, cached


def reference_loudness(reference: ReferenceAudio, seed: int) -> np.ndarray:
    """Loudness [M] (dB, :func:`~presto_ray.eval.loudness.rms_db`) of the reference clips, read
    from or written to the cache beside the reference embeddings."""
    key = reference_key(reference.uris, reference.count, seed, reference.codec, "loudness-rms-db")
    cached = cache_dir() / f"loudness-{key}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            return z["db"]
    db = rms_db(reference.audio())
    buf = io.BytesIO()
    np.savez(buf, db=db)
    storage.write_bytes_atomic(str(cached), buf.getvalue())
    return db


def _select(feats: np.ndarray, groups: np.ndarray, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frames of ``clips`` (and their clip ids, renumbered 0..)."""
    keep = np.isin(groups, clips)
    return feats[keep], np.searchsorted(clips, groups[keep])


def distribution_metrics(gen_feats: np.ndarray, gen_groups: np.ndarray, ref_feats: np.ndarray,
                         ref_groups: np.ndarray, *, mmd_bandwidth: float, mmd_scale: float, k: int = 5,
                         seed: int = 0, prdc_too: bool = True, n_boot: int = BOOTSTRAP) -> dict:
    """Generated [n, D] against reference [m, D] frame embeddings (``*_groups``: the clip of each
    frame, the unit every interval resamples): kad, mmd, fad where n allows, and
    precision/density/recall/coverage (more than ``k`` frames each side), each with ``<name>_ci``."""
    groups = {"gen_groups": gen_groups, "ref_groups": ref_groups}
    boot = {**groups, "n_boot": n_boot, "seed": seed}
    cmmd = {"bandwidth": mmd_bandwidth, "scale": mmd_scale}
    out = {"kad": kad(gen_feats, ref_feats, **groups), "kad_ci": list(kad_ci(gen_feats, ref_feats, **boot)),
           "mmd": kad(gen_feats, ref_feats, **cmmd, **groups), "mmd_ci": list(kad_ci(gen_feats, ref_feats, **cmmd, **boot))}
    out["fad"] = fad_checked(gen_feats, ref_feats)
    if out["fad"] is None:
        out.update(fad_ci=None, fad_note=f"n too small: FAD needs >= 2 x {gen_feats.shape[1]} feature vectors each "
                                         f"side, has {len(gen_feats)} and {len(ref_feats)}")
    else:
        out["fad_ci"] = list(bootstrap_ci(fad, gen_feats, ref_feats, **boot))
    if prdc_too and min(len(gen_feats), len(ref_feats)) > k:
        values, intervals = prdc_ci(ref_feats, gen_feats, k=k, real_groups=ref_groups, fake_groups=gen_groups,
                                    n_boot=n_boot, seed=seed)
        for name, value in values.items():
            out[name], out[f"{name}_ci"] = value, list(intervals[name])
    return out


def evaluate(checkpoint: str, data_uri: str, out_dir: str | Path, *, n: int = 32, sampling: Sampling = Sampling(),
             reference: list[str] | None = None, batch_size: int = 8, seed: int = 0, noise_seed: int | None = None,
             mmd_bandwidth: float = 10.0, mmd_scale: float = 1000.0, k: int = 5, num_workers: int = 0, gpus_per_worker: float = 0.0,
             clap=None, write_audio: bool = True) -> dict:
    """Evaluate the model at ``checkpoint`` on ``n`` clips for the prompts of ``data_uri`` (see
    the module docstring), sampled as ``sampling`` says, against the decoded latents of the shard
    sets ``reference`` (default: ``data_uri`` itself). ``seed`` orders the rows, splits the
    reference and seeds the bootstrap; ``noise_seed`` (default ``seed``) is the first clip's noise
    seed (another one gives new noise for the same prompts and reference). Writes
    ``out_dir/metrics.json`` and ``out_dir/audio/*.wav`` (``write_audio``); returns the metrics.
    ``num_workers`` > 0 generates on that many Ray actors (see :func:`generate_distributed`).
    ``clap``: the folder of a CLAP model (or a loaded :class:`~presto_ray.eval.clap.ClapEmbedder`)
    adds kad_clap, fad_clap, mmd_clap (with intervals) and clap_score."""
    from presto_ray.eval.embeddings import load_embedder

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    reference_uris = [str(u) for u in (reference or [data_uri])]
    rows = held_out_rows(data_uri, n, seed)
    gen = MusicGenerator(checkpoint, role=sampling.role)
    prompts = prompts_for(rows, n, seed if noise_seed is None else noise_seed)
    if num_workers > 0:
        generated, outside, decoded = generate_distributed(str(checkpoint), prompts, num_workers=num_workers,
                                                           batch_size=batch_size, sampling=sampling,
                                                           gpus_per_worker=gpus_per_worker)
    else:
        generated = gen.generate(prompts, batch_size=batch_size, progress=True, **sampling.generate_kw())
        outside, decoded = gen.out_of_range_values, gen.decoded_values
    if write_audio:
        for i, wav in enumerate(generated):
            row_id = str(rows[i % len(rows)]["id"])
            slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row_id)[:60]
            write_wav(out / "audio" / f"{i:03d}_{slug}.wav", wav, gen.sample_rate)

    embedder = load_embedder("musicnn")
    gen_feats, gen_groups, gen_out = embed_clips(embedder, generated, gen.sample_rate)
    ref_audio = ReferenceAudio(gen, reference_uris, seed)
    m = ref_audio.count
    ref_all, ref_all_groups, cached = reference_features(embedder, ref_audio, seed)
    if m < 2 * n:
        log.warning("evaluate: %d reference clips for %d generated: the reference (%d clips) is smaller than the "
                    "generated set; give more --reference data", m, n, m - min(n, m // 2))
    floor_clips, ref_clips = floor_split(m, n, seed)
    ref_feats, ref_groups = _select(ref_all, ref_all_groups, ref_clips)
    floor_feats, floor_groups = _select(ref_all, ref_all_groups, floor_clips)
    dist = dict(mmd_bandwidth=mmd_bandwidth, mmd_scale=mmd_scale, k=k, seed=seed)
    metrics = distribution_metrics(gen_feats, gen_groups, ref_feats, ref_groups, **dist)
    pair = {"gen_groups": floor_groups, "ref_groups": ref_groups}
    metrics.update(floor_kad=kad(floor_feats, ref_feats, **pair),
                   floor_kad_ci=list(kad_ci(floor_feats, ref_feats, **pair, n_boot=BOOTSTRAP, seed=seed)))
    ref_db = reference_loudness(ref_audio, seed)
    metrics.update(loudness_metrics(generated, ref_db[ref_clips]))
    metrics["latent_out_of_range_share"] = out_of_range_share(gen.export.stats, outside, decoded)
    metrics["floor_loudness_outside_share"] = outside_share(ref_db[floor_clips], reference_range(ref_db[ref_clips]))
    if clap is not None:
        from presto_ray.eval.clap import ClapEmbedder, clap_score

        clap_embedder = clap if isinstance(clap, ClapEmbedder) else load_embedder("clap", str(clap))
        clap_gen, clap_gen_groups, clap_out = embed_clips(clap_embedder, generated, gen.sample_rate)
        clap_all, clap_all_groups, _ = reference_features(clap_embedder, ref_audio, seed)
        clap_ref, clap_ref_groups = _select(clap_all, clap_all_groups, ref_clips)
        clap_metrics = distribution_metrics(clap_gen, clap_gen_groups, clap_ref, clap_ref_groups, prdc_too=False,
                                            **dist)
        for name, v in clap_metrics.items():  # kad -> kad_clap, kad_ci -> kad_clap_ci, fad_note -> fad_clap_note
            base, _, tail = name.partition("_") if name.endswith(("_ci", "_note")) else (name, "", "")
            metrics[f"{base}_clap" + (f"_{tail}" if tail else "")] = v
        clips = torch.stack([torch.nn.functional.normalize(torch.as_tensor(o["features"]).mean(0), dim=0)
                             for o in clap_out])
        metrics["clap_score"] = clap_score(clips, clap_embedder.embed_text([p.text for p in prompts]))
        metrics["clap_embedding"] = clap_embedder.name
    metrics.update(adherence_metrics(generated, gen.sample_rate, [p.text for p in prompts], [p.bpm for p in prompts],
                                     [o["tags"].numpy().mean(0) for o in gen_out], embedder.tag_names))
    what = "+".join(Path(u.rstrip("/")).name or u for u in reference_uris)
    metrics.update({"n_samples": len(generated), "n_prompts": len(rows), "n_frames": int(len(gen_feats)),
                    "n_reference": int(len(ref_clips)), "n_floor": int(len(floor_clips)),
                    "reference": f"{what}: {m} clips through the codec, {len(floor_clips)} for the noise "
                                 f"floor, {len(ref_clips)} the reference",
                    "model": str(checkpoint),
                    "method": method_of(gen.export.cfg, gen.role).name,
                    **sampling.resolved(gen.export), "data": str(data_uri), "reference_uris": reference_uris,
                    "seed": seed, "noise_seed": seed if noise_seed is None else noise_seed,
                    "embedding": embedder.name, "reference_cache": str(cached)})
    storage.write_bytes_atomic(str(out / "metrics.json"), json.dumps(metrics, indent=2).encode())
    log.info("wrote %s", out / "metrics.json")
    return metrics
