"""Rank-0 metric sinks: console, TensorBoard event files in the run's storage, MLflow / W&B."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

from presto_ray.config import PrestoConfig
from presto_ray.data import storage

log = logging.getLogger("presto_ray.train")


class Logbook:
    """Writes scalar metrics to every enabled sink. Create it on rank 0 only."""

    def __init__(self, cfg: PrestoConfig, run_uri: str):
        self.sinks: list = []
        self._remote: str | None = None
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            if storage.is_remote(run_uri):
                self._remote = storage.join(run_uri, "tensorboard")
                self._tb_dir = Path(tempfile.mkdtemp(prefix="presto-tb-"))
            else:
                self._tb_dir = storage.local_path(run_uri) / "tensorboard"
            self.tb = SummaryWriter(log_dir=str(self._tb_dir))
            self.sinks.append(self._tensorboard)
        if cfg.train.mlflow:
            try:
                import mlflow
            except ImportError:
                raise RuntimeError("train.mlflow=true needs MLflow: pip install 'presto-ray[mlflow]'") from None
            mlflow.set_experiment(cfg.run.name)
            mlflow.start_run(run_name=cfg.run.name)
            mlflow.log_params({"model.depth": cfg.model.depth, "model.width": cfg.model.width,
                               "train.lr": cfg.train.lr, "train.batch_size": cfg.train.batch_size})
            self.sinks.append(lambda step, m: mlflow.log_metrics(m, step=step))
        if cfg.train.wandb:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("train.wandb=true needs Weights & Biases: pip install 'presto-ray[wandb]'") from None
            wandb.init(project="presto_ray", name=cfg.run.name, config=cfg.model_dump(mode="json"))
            self.sinks.append(lambda step, m: wandb.log(m, step=step))

    def _tensorboard(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def log(self, step: int, metrics: dict) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        for sink in self.sinks:
            sink(step, scalars)

    def flush(self) -> None:
        """Make event files visible in storage (uploaded when the run lives in object storage)."""
        if hasattr(self, "tb"):
            self.tb.flush()
            if self._remote is not None:
                fs, path = storage.resolve(self._remote)
                pafs.copy_files(str(self._tb_dir), path, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)

    def close(self) -> None:
        self.flush()
        if hasattr(self, "tb"):
            self.tb.close()


class Progress:
    """A progress line for logs (Ray job logs garble terminal bars):
    ``[####------] 120/300 40% 4.1 it/s eta 0:00:44``."""

    def __init__(self, total: int, start: int = 0, width: int = 20):
        self.total, self.start, self.width = total, start, width
        self.t0 = time.perf_counter()

    def line(self, step: int) -> str:
        done = step / max(self.total, 1)
        rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
        bar = "#" * int(self.width * done) + "-" * (self.width - int(self.width * done))
        return f"[{bar}] {step}/{self.total} {100 * done:3.0f}% {rate:.2f} it/s eta {eta_s}"
