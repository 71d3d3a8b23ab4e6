"""Checkpoints as DESIGN.md lays them out, persisted through ``ray.train.report``.

``<storage>/<run-name>/step_XXXXXXXX/`` holds one DeepSpeed folder per trained role (each rank
writes its own ZeRO shards into a temporary folder and Ray merges the folders), ``meta.json``
(step, world size, ZeRO stages, config, code version, data epoch, skipped steps), per-rank RNG
states, the EMA weights and ``export/`` (safetensors per role). Ray registers a checkpoint only
after every rank's files are persisted, so a run killed mid-save resumes from the previous one.
Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray.train
import torch
from safetensors.torch import load_file, save_file

from presto_ray import __version__
from presto_ray.config import PrestoConfig
from presto_ray.train.engine import RoleEngine

DS_TAG = "ds"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


@dataclass
class TrainState:
    """What a worker loop carries besides the engines."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped: int = 0
    extra: dict = field(default_factory=dict)


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["generator"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def save_and_report(metrics: dict, roles: list[RoleEngine], state: TrainState, cfg: PrestoConfig, *,
                    rank: int, world_size: int, generator: torch.Generator,
                    write_rank0: Callable[[Path], None]) -> None:
    """Collective: every rank saves its engine shards and RNG state; rank 0 also writes meta.json
    and whatever ``write_rank0(folder)`` adds (EMA, export/). Then report to Ray Train."""
    with tempfile.TemporaryDirectory(prefix="presto-ckpt-") as tmp:
        folder = Path(tmp)
        for role in roles:
            role.engine.save_checkpoint(str(folder / role.name), tag=DS_TAG)
        (folder / "rng").mkdir()
        save_file(_rng_state(generator), str(folder / "rng" / f"rank_{rank:05d}.safetensors"))
        if rank == 0:
            write_rank0(folder)
            meta = {
                "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                "skipped_nonfinite": state.skipped,
                "world_size": world_size, "zero_stage": {r.name: r.zero_stage for r in roles},
                "roles": [r.name for r in roles], "code_version": __version__, "saved_at": time.time(),
                "metrics": metrics, "config": cfg.model_dump(mode="json"), **state.extra,
            }
            (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=step_dir_name(state.step))


def restore(roles: list[RoleEngine], *, rank: int, world_size: int, generator: torch.Generator,
            read_extra: Callable[[Path], None] | None = None,
            check_meta: Callable[[dict], None] | None = None) -> TrainState | None:
    """Load the latest checkpoint Ray Train hands this worker (relaunch or restart), if any.
    ``check_meta(meta)`` may refuse it (raise) before anything is loaded."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as tmp:
        folder = Path(tmp)
        meta = json.loads((folder / "meta.json").read_text())
        names = [r.name for r in roles]
        if meta.get("roles") != names:
            raise RuntimeError(
                f"checkpoint {checkpoint.path} holds roles {meta.get('roles')}, this run trains {names}: "
                "it belongs to another kind of run; choose another run.name"
            )
        if check_meta is not None:
            check_meta(meta)
        if meta["world_size"] != world_size and any(r.zero_stage > 0 for r in roles):
            raise RuntimeError(
                f"checkpoint {checkpoint.path} was written by {meta['world_size']} workers with ZeRO "
                f"sharding; resume it with train.num_workers={meta['world_size']}"
            )
        for role in roles:
            role.engine.load_checkpoint(str(folder / role.name), tag=DS_TAG)
        rng_file = folder / "rng" / f"rank_{rank:05d}.safetensors"
        if rng_file.is_file():
            _set_rng_state(load_file(str(rng_file)), generator)
        if read_extra is not None:
            read_extra(folder)
    return TrainState(step=meta["step"], epoch=meta["epoch"], batch_in_epoch=meta["batch_in_epoch"],
                      skipped=meta["skipped_nonfinite"])
