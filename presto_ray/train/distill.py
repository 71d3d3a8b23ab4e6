"""``distill``: Presto-S / Presto-L / Presto-LS and the baselines under Ray Train + DeepSpeed.

The driver loads the teacher's export (and, for presto-ls, the Presto-L student's), resolves the
student's config from it, puts the weights in the Ray object store and launches the workers of
:mod:`presto_ray.train.loop`. Relaunching with the same run name resumes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import ray

from presto_ray.config import PrestoConfig
from presto_ray.data import storage
from presto_ray.distill.methods import method_for, resolve_config
from presto_ray.train.cluster import ensure_ray
from presto_ray.train.loop import STEP_TRACE_ENV
from presto_ray.train.export import Exported, load_export
from presto_ray.train.teacher import training_data
from presto_ray.train.trainer import build_trainer, run_uri

log = logging.getLogger("presto_ray.distill")


def load_run_export(uri: str, role: str, what: str) -> tuple[Exported, dict]:
    """An export (or step / run folder) at ``uri``, local or remote: (export, state dict of ``role``)."""
    with tempfile.TemporaryDirectory(prefix="presto-teacher-") as tmp:
        exported = load_export(storage.fetch_dir(uri, Path(tmp)))
        if role not in exported.roles:
            raise ValueError(f"{what} '{uri}' has no '{role}' weights (roles: {sorted(exported.roles)})")
        return exported, exported.state_dict(role)


def check_same_teacher(init: Exported, teacher: Exported, init_uri: str) -> None:
    """The Presto-L student must have been distilled from a teacher like this one: the same
    network shape, EDM settings, codec, text encoder and latent statistics."""
    layer_keys = {"budget_embedding", "drop_mode", "keep_last"}
    student = {k: v for k, v in init.cfg.model.model_dump().items() if k not in layer_keys}
    base = {k: v for k, v in teacher.cfg.model.model_dump().items() if k not in layer_keys}
    for what, a, b in (("model", student, base), ("edm", init.cfg.edm, teacher.cfg.edm),
                       ("codec", init.cfg.codec, teacher.cfg.codec), ("text", init.cfg.text, teacher.cfg.text),
                       ("latent statistics", init.stats.to_dict(), teacher.stats.to_dict())):
        if a != b:
            raise ValueError(f"distill.init '{init_uri}' does not match distill.teacher in its {what} "
                             "settings: it was distilled from another teacher")


def prepare_distill(cfg: PrestoConfig) -> tuple[PrestoConfig, Exported, dict, dict | None]:
    """Load teacher (and init) weights; returns (resolved config, teacher export, teacher
    state dict, init state dict or None)."""
    d = cfg.distill
    if not d.teacher:
        raise ValueError("distill needs distill.teacher (or --teacher): the teacher's run, step or export folder")
    teacher, teacher_state = load_run_export(d.teacher, "teacher", "distill.teacher")
    init_cfg, init_state = None, None
    method = method_for(d.method)
    if method.init_from is not None:
        if not d.init:
            raise ValueError(f"{method.name} needs distill.init (or --init): the {method.init_from} run or export "
                             "to start from")
        init, init_state = load_run_export(d.init, "generator", "distill.init")
        method.check_init(init.cfg, d.init)
        check_same_teacher(init, teacher, d.init)
        init_cfg = init.cfg
    resolved = resolve_config(cfg, teacher.cfg, init_cfg)
    # absolute local paths: a relaunch from another directory (or spelling) names the same teacher
    absolute = {k: (v if v is None else storage.absolute(v)) for k, v in (("teacher", d.teacher), ("init", d.init))}
    resolved = resolved.model_copy(update={"distill": resolved.distill.model_copy(update=absolute)})
    teacher_loc = storage.absolute(d.teacher).rstrip("/")
    run_loc = run_uri(resolved)
    if teacher_loc == run_loc or teacher_loc.startswith(run_loc + "/"):
        raise ValueError(f"run '{resolved.run.name}' would write into the teacher's run folder; choose another run.name")
    return resolved, teacher, teacher_state, init_state


def distill(cfg: PrestoConfig, *, dataset: ray.data.Dataset | None = None, address: str | None = None,
            callbacks: list | None = None):
    """Distil (or resume) the student of ``cfg.distill.method``; returns the Ray Train ``Result``.
    ``callbacks``: Ray Train callbacks for the run (a Tune sweep passes TuneReportCallback)."""
    cfg, teacher, teacher_state, init_state = prepare_distill(cfg)  # before Ray starts: fails fast
    ensure_ray(address, num_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    bad_rows = probe = None
    if dataset is None:
        dataset, probe, _, bad_rows = training_data(cfg)
    extra = {"bad_rows": bad_rows, "teacher": ray.put(teacher_state), "teacher_model": teacher.cfg.model,
             "init": ray.put(init_state) if init_state is not None else None,
             "step_trace": os.environ.get(STEP_TRACE_ENV)}
    log.info("distill %s: teacher %s (step %d), %d workers, %d steps", cfg.distill.method, cfg.distill.teacher,
             teacher.step, cfg.train.num_workers, cfg.train.steps)
    # the student normalises latents exactly as its teacher was trained
    result = build_trainer(cfg.distill.method, cfg, dataset, teacher.stats, extra, probe=probe,
                           callbacks=callbacks).fit()
    log.info("distill run '%s' finished; latest checkpoint: %s", cfg.run.name,
             result.checkpoint.path if result.checkpoint else None)
    return result
