"""``train-teacher``: the EDM teacher trained by a Ray Train ``TorchTrainer`` whose workers wrap
the DiT in DeepSpeed engines. Relaunching with the same run name and storage resumes."""

from __future__ import annotations

import logging

import numpy as np
import ray
import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from presto_ray.config import PrestoConfig, config_to_yaml
from presto_ray.data import storage
from presto_ray.data.batch import TRAIN_COLUMNS, stack_rows
from presto_ray.data.stats import LatentStats
from presto_ray.runtime import choose_runtime
from presto_ray.train.cluster import ensure_ray
from presto_ray.train.teacher_loop import teacher_worker

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


def shard_dataset(cfg: PrestoConfig) -> tuple[ray.data.Dataset, LatentStats]:
    """Prepared Parquet shards (cfg.data.source == "shards"), checked against the model config."""
    from presto_ray.data.reader import training_dataset
    from presto_ray.data.validate import check_against_model

    # TODO(issue 3): draw a new file order per epoch (the worker iterates one dataset today)
    ds, manifest = training_dataset(cfg.data.uri, seed=cfg.train.seed, epoch=0, on_bad_rows=cfg.data.on_bad_rows)
    check_against_model(manifest, cfg.model.latent_channels, cfg.model.latent_frames, cfg.text.max_tokens,
                        cfg.model.text_dim)
    return ds, manifest.latent_stats(cfg.edm.sigma_data)


def check_dataset(ds: ray.data.Dataset, cfg: PrestoConfig) -> dict:
    """Check one row against the model config; returns it. Errors name the column."""
    row = ds.take(1)
    if not row:
        raise ValueError("the training dataset is empty")
    row = row[0]
    missing = [c for c in TRAIN_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"training dataset lacks columns {missing} (has {sorted(row)})")
    want = {"latent": (cfg.model.latent_channels, cfg.model.latent_frames),
            "text_states": (cfg.text.max_tokens, cfg.model.text_dim), "text_mask": (cfg.text.max_tokens,)}
    for col, shape in want.items():
        got = tuple(np.asarray(row[col]).shape)
        if got != shape:
            raise ValueError(f"column '{col}' has shape {got}, the config expects {shape} "
                             "(model.latent_channels / model.latent_frames / text.max_tokens / model.text_dim)")
    return row


def build_teacher_trainer(cfg: PrestoConfig, dataset: ray.data.Dataset, stats: LatentStats) -> TorchTrainer:
    check_dataset(dataset, cfg)
    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else choose_runtime().is_cuda
    need = cfg.train.batch_size * cfg.train.num_workers
    rows = len(dataset.take(need))  # reads only what the check needs (not a full pass over S3)
    if rows < need:
        raise ValueError(f"the training dataset has {rows} rows, fewer than train.batch_size x train.num_workers "
                         f"= {need}: no worker would get a full batch")
    eval_rows = dataset.take(cfg.train.eval_batch)
    # Ray Train changes each worker's working directory: hand workers an absolute location
    base = cfg.run.storage_path if storage.is_remote(cfg.run.storage_path) else str(storage.local_path(cfg.run.storage_path))
    run_uri = storage.join(base, cfg.run.name)
    fs, storage_path = storage.resolve(cfg.run.storage_path)
    fs.create_dir(storage.resolve(run_uri)[1], recursive=True)
    storage.write_bytes_atomic(storage.join(run_uri, "config.yaml"), config_to_yaml(cfg).encode())
    return TorchTrainer(
        teacher_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"), "latent_stats": stats.to_dict(),
            "eval_batch": stack_rows(eval_rows), "run_uri": run_uri,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=storage_path,
            storage_filesystem=fs if storage.is_remote(cfg.run.storage_path) else None,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
        datasets={"train": dataset.select_columns(TRAIN_COLUMNS)},
    )


def train_teacher(cfg: PrestoConfig, *, dataset: ray.data.Dataset | None = None,
                  stats: LatentStats | None = None, address: str | None = None):
    """Train (or resume) the teacher; returns the Ray Train ``Result``."""
    ensure_ray(address, num_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    if dataset is None:
        dataset, stats = shard_dataset(cfg) if cfg.data.source == "shards" else tone_dataset(cfg)
    if stats is None:
        raise ValueError("a dataset given without latent statistics")
    result = build_teacher_trainer(cfg, dataset, stats).fit()
    log.info("teacher run '%s' finished; latest checkpoint: %s", cfg.run.name,
             result.checkpoint.path if result.checkpoint else None)
    return result
