"""``train-teacher``: the EDM teacher trained by a Ray Train ``TorchTrainer`` whose workers wrap
the DiT in DeepSpeed engines. Relaunching with the same run name and storage resumes."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import ray
import ray.data

from presto_ray.config import PrestoConfig
from presto_ray.data.stats import LatentStats
from presto_ray.train.cluster import ensure_ray
from presto_ray.train.trainer import build_trainer

log = logging.getLogger("presto_ray.train")


def tone_dataset(cfg: PrestoConfig) -> tuple[ray.data.Dataset, LatentStats]:
    """The in-memory synthesised-melody set (cfg.data.source == "tones") as a Ray Dataset."""
    import torch

    from presto_ray.data.tones import build_tone_rows
    from presto_ray.models.codec import load_codec
    from presto_ray.models.text import load_text_encoder

    rows = build_tone_rows(cfg, load_codec(cfg.codec), load_text_encoder(cfg.text))
    latents = torch.from_numpy(np.stack([r["latent"] for r in rows]).astype(np.float32))
    stats = LatentStats.from_latents(latents, cfg.edm.sigma_data)
    blocks = max(1, min(8, len(rows) // 64))  # a few large blocks: per-block task overhead dominates otherwise
    return ray.data.from_items(rows, override_num_blocks=blocks).materialize(), stats


class TrainingData(NamedTuple):
    """What a trainer is built from: ``dataset`` (first executed by the workers, so that its
    executions count epochs), ``probe`` (the same rows, for the driver's checks), the latent
    statistics, and the bad-row counter (None unless data.on_bad_rows=skip)."""

    dataset: ray.data.Dataset
    probe: ray.data.Dataset
    stats: LatentStats
    bad_rows: object | None


def resume_epoch(cfg: PrestoConfig) -> int:
    """The epoch recorded by the newest checkpoint of the run (0 for a new run): where a relaunch
    resumes, so that its first pass over the shards reads them in that epoch's file order."""
    import json

    from presto_ray.data import storage
    from presto_ray.train.trainer import run_uri

    uri = run_uri(cfg)
    for name in sorted((n for n in storage.list_dir(uri) if n.startswith("step_")), reverse=True):
        try:
            return int(json.loads(storage.read_bytes(storage.join(uri, name, "meta.json")))["epoch"])
        except FileNotFoundError:
            continue  # a step folder without meta.json is not a finished checkpoint
    return 0


def shard_dataset(cfg: PrestoConfig, bad_rows=None, first_epoch: int = 0,
                  verify: bool = True) -> tuple[ray.data.Dataset, LatentStats]:
    """Prepared Parquet shards (cfg.data.source == "shards"), checked against the model config, read
    in epoch ``first_epoch``'s file order first and the next epoch's at each later pass.
    bad_rows: a :class:`~presto_ray.data.reader.BadRowCounter` counting rows skipped with
    data.on_bad_rows=skip; verify: check the files as data.verify says (False: files this process
    has just checked)."""
    from presto_ray.data.reader import training_dataset
    from presto_ray.data.validate import check_against_model

    ds, manifest = training_dataset(cfg.data.uri, seed=cfg.train.seed, epoch=first_epoch,
                                    on_bad_rows=cfg.data.on_bad_rows, bad_rows=bad_rows,
                                    verify=cfg.data.verify if verify else "off")
    check_against_model(manifest, cfg.model.latent_channels, cfg.model.latent_frames, cfg.text.max_tokens,
                        cfg.model.text_dim)
    return ds, manifest.latent_stats(cfg.edm.sigma_data)


def training_data(cfg: PrestoConfig) -> TrainingData:
    """The training data of ``cfg.data``: shards (resuming the run's file-order epochs) or the melody
    set. The run's storage is checked first: a missing bucket is refused before any data is read."""
    from presto_ray.data import storage

    storage.check_reachable(cfg.run.storage_path, "run storage (run.storage_path)")
    if cfg.data.source != "shards":
        dataset, stats = tone_dataset(cfg)
        return TrainingData(dataset, dataset, stats, None)
    from presto_ray.data.reader import BadRowCounter

    bad_rows = BadRowCounter() if cfg.data.on_bad_rows == "skip" else None
    first_epoch = resume_epoch(cfg)
    dataset, stats = shard_dataset(cfg, bad_rows, first_epoch)
    probe, _ = shard_dataset(cfg, None, first_epoch, verify=False)  # the same files, just checked
    return TrainingData(dataset, probe, stats, bad_rows)


def build_teacher_trainer(cfg: PrestoConfig, dataset: ray.data.Dataset, stats: LatentStats, bad_rows=None,
                          probe: ray.data.Dataset | None = None):
    """The teacher's TorchTrainer (see :func:`presto_ray.train.trainer.build_trainer`)."""
    return build_trainer("teacher", cfg, dataset, stats, {"bad_rows": bad_rows}, probe=probe)


def train_teacher(cfg: PrestoConfig, *, dataset: ray.data.Dataset | None = None,
                  stats: LatentStats | None = None, address: str | None = None):
    """Train (or resume) the teacher; returns the Ray Train ``Result``."""
    ensure_ray(address, num_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    bad_rows = probe = None
    if dataset is None:
        dataset, probe, stats, bad_rows = training_data(cfg)
    if stats is None:
        raise ValueError("a dataset given without latent statistics")
    result = build_teacher_trainer(cfg, dataset, stats, bad_rows, probe).fit()
    log.info("teacher run '%s' finished; latest checkpoint: %s", cfg.run.name,
             result.checkpoint.path if result.checkpoint else None)
    return result
