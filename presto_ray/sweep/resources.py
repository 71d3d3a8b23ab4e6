"""Placement groups that Ray 2.60 leaves behind when Ray Train runs inside Ray Tune: found, released,
and the cluster's free resources compared with a baseline.

Why they leak. A Train V2 run reserves its workers in a placement group created by its controller
actor, which the Tune trial's driver function owns. When Tune stops a trial (ASHA, ``max_t``, the
end of the sweep) it ends the trial's actor; the controller dies with it, before shutting its
worker group down, and Ray frees a non-detached group whose creator *actor* died only when the
creator's *job* ends, so the group keeps its CPUs/GPUs for the rest of the sweep. Train's own
guard (a detached ``PlacementGroupCleaner`` per run) asks the state API whether the controller
lives; without a dashboard, or with several Ray instances on the machine, that call raises in its
monitor thread, and nothing removes the group. (The cleaner actor itself stays alive, holding
0.001 of ``node:__internal_head__``; see :func:`free_resources`.)

Which groups are released. An *orphaned* group: not removed, not detached, created by this job,
by an actor that has died. No live process holds its handle (the controller that made it and the
workers inside it are gone), so removing it frees only what nobody can use again. A running trial's
group is never one: its controller lives. The GCS knows each group's creator, but Ray's Python
``placement_group_table()`` drops those fields, so :func:`placement_groups` reads the GCS records.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import ray
from ray import tune
from ray.util.placement_group import PlacementGroup, remove_placement_group

from presto_ray.data import storage

log = logging.getLogger("presto_ray.sweep")


@dataclass(frozen=True)
class GroupRecord:
    """One placement group as the GCS records it. ``bundles``: resources per bundle."""

    group_id: str
    state: str  # PENDING, PREPARED, CREATED, RESCHEDULING or REMOVED
    bundles: list[dict[str, float]]
    creator_job_id: str
    creator_actor_id: str  # empty when a driver (not an actor) created it
    creator_actor_dead: bool  # (the GCS also sets it for a driver's groups)
    is_detached: bool


def placement_groups() -> list[GroupRecord]:
    """Every placement group of the connected cluster, with its creator (from the GCS)."""
    from ray._private.state import state as global_state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    records = []
    for raw in global_state._connect_and_get_accessor().get_placement_group_table():
        pg = PlacementGroupTableData.FromString(raw)
        creator = ray.ActorID(pg.creator_actor_id)
        records.append(GroupRecord(
            group_id=pg.placement_group_id.hex(),
            state=PlacementGroupTableData.PlacementGroupState.Name(pg.state),
            bundles=[dict(b.unit_resources) for b in pg.bundles],
            creator_job_id=pg.creator_job_id.hex(),
            creator_actor_id="" if creator.is_nil() else creator.hex(),
            creator_actor_dead=pg.creator_actor_dead,
            is_detached=pg.is_detached,
        ))
    return records


def orphaned_groups() -> list[GroupRecord]:
    """This job's placement groups whose creator actor has died but which still hold (or wait
    for) resources: what a stopped Train-in-Tune trial leaves behind."""
    job = ray.get_runtime_context().get_job_id()
    return [g for g in placement_groups()
            if g.state != "REMOVED" and not g.is_detached and g.creator_job_id == job
            and g.creator_actor_id and g.creator_actor_dead]


def release_orphaned_groups(ledger_uri: str | None = None) -> list[GroupRecord]:
    """Remove every orphaned group; returns them. ``ledger_uri``: a JSON-lines file (local or
    s3://) that gets one line per released group, with the time it was released."""
    released = orphaned_groups()
    for group in released:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.group_id))))
        log.warning("released placement group %s (%s) left behind by a stopped trial", group.group_id,
                    group.bundles)
    if released and ledger_uri is not None:
        append_ledger(ledger_uri, released)
    return released


def append_ledger(uri: str, groups: list[GroupRecord]) -> None:
    """Add one JSON line per group to the ledger at ``uri`` (rewritten whole: objects in S3 cannot
    be appended to; one writer, the Tune driver)."""
    try:
        old = storage.read_bytes(uri)
    except FileNotFoundError:
        old = b""
    lines = "".join(json.dumps({**asdict(g), "released_at": time.time()}) + "\n" for g in groups)
    storage.write_bytes_atomic(uri, old + lines.encode())


def read_ledger(uri: str) -> list[dict]:
    """The groups recorded by :func:`append_ledger` (empty when none was released)."""
    try:
        text = storage.read_bytes(uri).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class OrphanedGroupReleaser(tune.Callback):
    """Tune callback releasing orphaned groups as trials end.

    A trial's controller dies shortly after Tune ends the trial, so besides checking when a trial
    completes or fails, the callback checks every ``interval_s`` seconds of Tune's loop, and once
    more when the experiment ends."""

    def __init__(self, ledger_uri: str | None = None, interval_s: float = 2.0):
        self.ledger_uri = ledger_uri
        self.interval_s = interval_s
        self._last = 0.0

    def _release(self) -> None:
        self._last = time.monotonic()
        release_orphaned_groups(self.ledger_uri)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release()

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last >= self.interval_s:
            self._release()

    def on_experiment_end(self, trials, **info):
        self._release()


def free_resources() -> dict[str, float]:
    """``ray.available_resources()`` restricted to what trials reserve: CPU, GPU, memory and custom
    resources. Left out: per-group entries (``*_group_*``), node markers (``node:*``: Ray Train's
    leftover cleaner actors each hold 0.001 of ``node:__internal_head__``, a scheduling label, not
    capacity) and ``object_store_memory`` (it moves with every object stored)."""
    return {k: v for k, v in ray.available_resources().items()
            if "_group_" not in k and not k.startswith("node:") and k != "object_store_memory"}


def shortfall(baseline: dict[str, float], now: dict[str, float], tol: float = 1e-6) -> dict[str, float]:
    """Resources of ``baseline`` that ``now`` has less of: name -> amount missing."""
    return {k: v - now.get(k, 0.0) for k, v in baseline.items() if now.get(k, 0.0) < v - tol}


def settle(baseline: dict[str, float], timeout_s: float = 60.0, ledger_uri: str | None = None,
           poll_s: float = 0.5) -> dict[str, float]:
    """Release orphaned groups until the free resources are back at ``baseline`` (as measured by
    :func:`free_resources`) or ``timeout_s`` passes; returns what is still missing ({} when
    restored). Ray frees resources asynchronously, hence the polling."""
    deadline = time.monotonic() + timeout_s
    while True:
        release_orphaned_groups(ledger_uri)
        missing = shortfall(baseline, free_resources())
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(poll_s)
