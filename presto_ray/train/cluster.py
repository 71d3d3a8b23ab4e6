"""Connecting to Ray: an in-process local cluster by default, ``--address``/RAY_ADDRESS otherwise."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger("presto_ray")

QUIET_WORKER_LOGGERS = {
    # Ray Train's placement-group cleaner asks the State API, which the dashboard serves, whether the
    # controller still lives; without a dashboard it warns every few seconds for the whole run
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    # a training split logs its start, plan and finish once per epoch (hundreds of lines per run)
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}
"""Loggers in the worker processes of a local cluster raised to these levels."""


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of the local cluster: raise :data:`QUIET_WORKER_LOGGERS`."""
    for name, level in QUIET_WORKER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process. A local cluster gets at least ``num_cpus`` logical CPUs
    (Ray Data and the Train controller need a slot beside the workers)."""
    quiet_data_progress()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
        return
    cpus = max(os.cpu_count() or 1, num_cpus or 0)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True,
             runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_worker_logs"})
    log.info("started a local Ray cluster with %d logical CPUs", cpus)


def quiet_data_progress() -> None:
    """Ray Data's per-operator bars flood job logs once per epoch; training logs its own progress."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
