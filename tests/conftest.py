"""Shared fixtures: a real local Ray cluster and a small real dataset (codec + text encoder)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (4 logical CPUs on a 2-core machine: Ray Data and the Train controller
    need slots beside two workers)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny preset, shrunk for tests."""
    from presto_ray.config import load_config

    return load_config("tiny", ["data.num_examples=64", "train.batch_size=8", "train.eval_batch=8",
                                "train.log_every=10", "train.warmup_steps=5", "train.ema_decay=0.9",
                                "train.lr=0.002"])


@pytest.fixture(scope="session")
def tone_data(ray_cluster, tiny_config):
    """(Ray Dataset, LatentStats) of 64 synthesised melodies through the real mel codec and MiniLM."""
    from presto_ray.train.teacher import tone_dataset

    ds, stats = tone_dataset(tiny_config)
    return ds.materialize(), stats
