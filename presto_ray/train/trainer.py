"""The Ray Train ``TorchTrainer`` every training command builds: the dataset check, the run folder
(with config.yaml), scaling, the collective backend, failure handling and checkpoint retention."""

from __future__ import annotations

import pyarrow.fs as pafs
import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from presto_ray.config import PrestoConfig, config_to_yaml
from presto_ray.data import storage
from presto_ray.data.batch import TRAIN_COLUMNS, stack_rows
from presto_ray.data.stats import LatentStats
from presto_ray.runtime import choose_runtime
from presto_ray.train.loop import WorkerConfig, train_worker


def check_rows(rows: list[dict], cfg: PrestoConfig) -> None:
    """Check the first training rows against the model config: the columns and shapes of the first
    row, and enough rows for one full batch per worker. Errors name the column or the counts."""
    import numpy as np

    if not rows:
        raise ValueError("the training dataset is empty")
    row = rows[0]
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
    need = cfg.train.batch_size * cfg.train.num_workers
    if len(rows) < need:
        raise ValueError(f"the training dataset has {len(rows)} rows, fewer than train.batch_size x "
                         f"train.num_workers = {need}: no worker would get a full batch")


def run_uri(cfg: PrestoConfig) -> str:
    """Absolute location of the run folder (Ray Train changes each worker's working directory)."""
    return storage.join(storage.absolute(cfg.run.storage_path), cfg.run.name)


def build_trainer(method: str, cfg: PrestoConfig, dataset: ray.data.Dataset, stats: LatentStats,
                  extra: dict | None = None, probe: ray.data.Dataset | None = None,
                  callbacks: list | None = None) -> TorchTrainer:
    """A TorchTrainer running :func:`~presto_ray.train.loop.train_worker` for ``method`` (a
    registered method name; "teacher" for ``train-teacher``) on ``cfg.train.num_workers`` workers.

    Every worker gets a :class:`~presto_ray.train.loop.WorkerConfig` of the method, ``cfg``,
    ``stats``, the fixed evaluation batch, the run folder and ``extra`` (its other fields). The
    run folder gets config.yaml; a relaunch with the same run name resumes. The driver's checks
    and the fixed evaluation batch read ``probe`` (default ``dataset``): a shard dataset's file
    order advances one epoch per execution, so the workers must be the first to execute it.
    ``callbacks`` go to the run's RunConfig (e.g. Tune's TuneReportCallback when a Tune trial
    drives the run)."""
    probe = dataset if probe is None else probe
    # the driver's one read: the first rows the checks and the fixed evaluation batch need (not a
    # full pass over S3)
    rows = probe.take(max(cfg.train.batch_size * cfg.train.num_workers, cfg.train.eval_batch))
    check_rows(rows, cfg)
    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else choose_runtime().is_cuda
    eval_rows = rows[:cfg.train.eval_batch]
    uri = run_uri(cfg)
    fs, storage_path = storage.resolve(cfg.run.storage_path)
    fs.create_dir(storage.resolve(uri)[1], recursive=True)
    config_uri = storage.join(uri, "config.yaml")
    fs_run, config_path = storage.resolve(config_uri)
    if fs_run.get_file_info(config_path).type == pafs.FileType.NotFound:  # the config the run started with
        storage.write_bytes_atomic(config_uri, config_to_yaml(cfg).encode())
    return TorchTrainer(
        train_worker,
        train_loop_config={"worker": WorkerConfig(method=method, config=cfg, latent_stats=stats,
                                                  eval_batch=stack_rows(eval_rows), run_uri=uri, **(extra or {}))},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=storage_path,
            storage_filesystem=fs if storage.is_remote(cfg.run.storage_path) else None,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,
        ),
        datasets={"train": dataset.select_columns(TRAIN_COLUMNS)},
    )
