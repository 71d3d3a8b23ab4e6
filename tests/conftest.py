"""Shared fixtures: a real local Ray cluster and a small real dataset (codec + text encoder)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol server (moto) on 127.0.0.1 with a bucket "presto"; the endpoint and test
    credentials are put in the environment before Ray starts, so Ray workers inherit them."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({"PRESTO_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "test-key",
                       "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="presto")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """A local Ray cluster (4 logical CPUs on a 2-core machine: Ray Data and the Train controller
    need slots beside two workers). Started after the S3 server so workers inherit its settings."""
    import ray

    from presto_ray.train.cluster import pin_state_api

    if not ray.is_initialized():
        # its State API pinned to a port of its own, as ensure_ray's clusters are: Ray Train's
        # placement-group cleaner then never reads another Ray instance on the machine
        ray.init(num_cpus=4, address="local", include_dashboard=False, dashboard_port=pin_state_api(),
                 log_to_driver=False)
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
