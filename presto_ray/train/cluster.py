"""Connecting to Ray: an in-process local cluster by default, ``--address``/RAY_ADDRESS otherwise.

A local cluster pins Ray's State API to a loopback port of its own (:func:`pin_state_api`), so no
other Ray instance on the machine can answer for it. Ray Train's ``PlacementGroupCleaner`` asks
the State API whether the run's controller lives and removes the run's placement group (killing its
workers) on a "no such actor" answer. Unpinned, Ray picks the cluster to ask from
``<tmp>/ray/ray_current_cluster`` (written by any ``ray start``) or else the one GCS process on the
machine ("Found multiple active Ray instances" with several), then asks at the dashboard port that
cluster's GCS records: 8265 by default, which a cluster without a dashboard never binds and the
next ``ray.init()`` with a dashboard takes.

Joining a cluster (``--address``/RAY_ADDRESS): the cleaner runs on that cluster's head node, in a
worker of its raylet. Start the head with a dashboard and with ``RAY_API_SERVER_ADDRESS`` set, in
the environment of ``ray start``, to that dashboard (``http://127.0.0.1:<dashboard port>``) whenever
another Ray instance can run on the head's machine (a shared workstation). Set for the driver only,
it does not reach the cleaner."""

from __future__ import annotations

import logging
import os
import socket

import ray

log = logging.getLogger("presto_ray")

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
"""Read first by every State API client (``ray.dashboard.utils.get_address_for_submission_client``)."""
DEFAULT_DASHBOARD_PORTS = range(8265, 8265 + 51)
"""Ports a Ray dashboard started with default settings binds: 8265 and up to 50 retries."""

QUIET_WORKER_LOGGERS = {
    # Ray Train's placement-group cleaner asks the State API, which the dashboard serves, whether the
    # controller still lives; a local cluster has no dashboard and pins that API to a port nothing
    # serves (pin_state_api), so the cleaner warns every second for the whole run and never acts
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    # a training split logs its start, plan and finish once per epoch (hundreds of lines per run)
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}
"""Loggers in the worker processes of a local cluster raised to these levels."""


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of the local cluster: raise :data:`QUIET_WORKER_LOGGERS`."""
    for name, level in QUIET_WORKER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def pin_state_api() -> int:
    """Pick a free loopback port outside :data:`DEFAULT_DASHBOARD_PORTS` and point
    ``RAY_API_SERVER_ADDRESS`` of this process at it; returns the port. Call it before starting a
    local cluster and pass the port as ``dashboard_port``: the raylet, and so every worker, inherits
    this process's environment, and the cluster's GCS then records the same port. Started without a
    dashboard, nothing serves that port: State API calls fail ("unavailable"), which the cleaner
    ignores, instead of reading another cluster."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in DEFAULT_DASHBOARD_PORTS:
            break
    previous = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
    if previous and previous != os.environ[API_SERVER_ENV]:
        log.info("%s=%s replaced by %s for this process's own Ray cluster", API_SERVER_ENV, previous,
                 os.environ[API_SERVER_ENV])
    return port


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process. A local cluster gets at least ``num_cpus`` logical CPUs
    (Ray Data and the Train controller need a slot beside the workers) and a State API of its own
    (:func:`pin_state_api`)."""
    quiet_data_progress()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
        return
    cpus = max(os.cpu_count() or 1, num_cpus or 0)
    port = pin_state_api()
    # address "local": a new cluster even where <tmp>/ray/ray_current_cluster names one (any `ray start`
    # writes it; without "local", ray.init would try to join that one and refuse num_cpus)
    ray.init(num_cpus=cpus, address="local", include_dashboard=False, dashboard_port=port, log_to_driver=True,
             runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_worker_logs"})
    log.info("started a local Ray cluster with %d logical CPUs", cpus)


def quiet_data_progress() -> None:
    """Ray Data's per-operator bars flood job logs once per epoch; training logs its own progress."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
