"""The write stage of ``prepare``: a Ray Data datasink whose write tasks write the shards themselves.

Encoded rows never pass through the driver (at paper scale a clip's latent and text states are
~300 KB). Each write task takes at least ``rows_per_shard`` rows (Ray Data bundles its input to
``min_rows_per_write``) and writes them with one :class:`ShardWriter` per split under
``<out>/<split>``, with a prefix of its own, ``part-<run tag>-<task index>``, so that tasks never
touch each other's files and a rerun never reuses an earlier run's names. The driver opens every
split folder once before the run (:func:`open_folder`: identity check, leftovers of a killed run
removed) and writes each split's ``manifest.json`` from the finished shards after it. A killed run
leaves only whole shards with their sidecars (and leftovers :func:`open_folder` removes next time).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data._internal.execution.interfaces import TaskContext

from presto_ray.data import storage
from presto_ray.data.shards import ShardWriter


def reason_code(reason: str) -> str:
    """"silent render (rms 1e-05)" / "too short: 3.1 s ..." -> "silent render" / "too short"."""
    return reason.split(":")[0].split(" (")[0].strip() or "unknown"


class ShardSink(Datasink[dict]):
    """Encoded records (id, split, skip_reason, latent [C, T], caption, text_states [L, Dt],
    text_mask [L], bpm, seconds_start, seconds_total, metadata columns) -> shards under
    ``<out>/<split>``. Records with a ``skip_reason`` are counted, not written.

    After ``Dataset.write_datasink(sink)``: ``sink.written`` {split: rows written this run} and
    ``sink.skipped`` {split: {reason code: count}}, summed over the write tasks."""

    def __init__(self, out: str, *, run_tag: str, writer_args: dict):
        self.out = out
        self.run_tag = run_tag
        self.writer_args = dict(writer_args)  # ShardWriter keyword arguments other than uri / prefix
        self.written: dict[str, int] = {}
        self.skipped: dict[str, Counter] = {}

    @property
    def min_rows_per_write(self) -> int:
        return int(self.writer_args["rows_per_shard"])

    def get_name(self) -> str:
        return "WriteShards"

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict:
        """One write task: returns {"written": {split: rows}, "skipped": {split: {reason: count}}}."""
        prefix = f"part-{self.run_tag}-{ctx.task_idx:05d}"
        writers: dict[str, ShardWriter] = {}
        written: Counter = Counter()
        skipped: dict[str, Counter] = {}
        for block in blocks:
            batch = BlockAccessor.for_block(block).to_numpy()
            columns = [k for k in batch if k not in ("skip_reason", "split")]
            for i in range(len(batch["id"])):
                split, reason = str(batch["split"][i]), str(batch["skip_reason"][i])
                if reason:
                    skipped.setdefault(split, Counter())[reason_code(reason)] += 1
                    continue
                if split not in writers:
                    writers[split] = ShardWriter(storage.join(self.out, split), prefix=prefix, scan_existing=False,
                                                 **self.writer_args)
                writers[split].add({k: _scalar(batch[k][i]) for k in columns})
                written[split] += 1
        for writer in writers.values():
            writer.close(finalize=False)
        return {"written": dict(written), "skipped": {s: dict(c) for s, c in skipped.items()}}

    def on_write_complete(self, write_result) -> None:
        """On the driver: sum the tasks' counts into ``written`` and ``skipped``."""
        for result in write_result.write_returns:
            for split, n in result["written"].items():
                self.written[split] = self.written.get(split, 0) + n
            for split, counts in result["skipped"].items():
                self.skipped.setdefault(split, Counter()).update(counts)


def _scalar(value):
    """numpy string scalars -> str (the writer wants str ids, captions and metadata)."""
    return str(value) if isinstance(value, np.str_) else value
