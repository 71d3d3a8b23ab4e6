"""The quickstart's training runs: their configs (named after their methods, sized by the plan),
whether they finished, and the train split they all read."""

from __future__ import annotations

import math
from pathlib import Path

from presto_ray.config import PrestoConfig, config_from_dict, deep_merge
from presto_ray.distill.methods import method_for
from presto_ray.quickstart.plan import Plan
from presto_ray.train.export import ExportError, load_export


def with_tree(cfg: PrestoConfig, tree: dict) -> PrestoConfig:
    """``cfg`` with the nested values of ``tree``, validated like a config file."""
    return config_from_dict(deep_merge(cfg.model_dump(mode="json"), tree), "quickstart plan")


def finished_step(run_dir: Path) -> int:
    """Step of the newest complete checkpoint of a run (0 when there is none)."""
    try:
        return load_export(run_dir).step
    except ExportError:
        return 0


class TrainingSet:
    """The prepared train split, read once into Ray's object store on first use and shared by every
    training stage: it is small (about 45 KB a clip), and decoding Parquet each epoch on the same
    two cores as training made the teacher 2-3x slower (data_wait_frac 0.7)."""

    def __init__(self, cfg: PrestoConfig) -> None:
        self.cfg = cfg
        self._loaded = None

    def get(self):
        """(materialised Ray Dataset, LatentStats)."""
        if self._loaded is None:
            from presto_ray.train.teacher import shard_dataset

            dataset, stats = shard_dataset(self.cfg)
            self._loaded = dataset.materialize(), stats
        return self._loaded


def distill_config(cfg: PrestoConfig, plan: Plan, name: str, runs: Path, teacher_run: Path) -> PrestoConfig:
    """The config of one distill run of the quickstart: named after its method ``name``, from the
    teacher's run (presto-ls: from the presto-l run), at the plan's steps and budget schedule (the
    methods that use one). Presto-L draws its training budgets from the schedule's lowest budget up
    to full depth (``distill.min_budget``): the budgets the evaluation samples with, as ase trains on
    exactly them. ``plan.distill_lr``, when set, is the learning rate of both trained roles;
    ``plan.ttur``, when it names the method, its guidance updates per generator update. Each run
    keeps ``plan.curve_points`` checkpoints, the points of its KAD-against-updates curve."""
    method = method_for(name)
    distill: dict = {"method": name, "teacher": str(teacher_run), "init": None}
    if method.init_from is not None:
        distill["init"] = str(runs / method.init_from)
    if method.uses_budget_schedule:
        distill["budget_schedule"] = plan.budget_schedule(cfg.model)
        if not method.trains_on_schedule:
            distill["min_budget"] = min(distill["budget_schedule"]["budgets"])
    if plan.distill_lr is not None:
        distill["generator"] = {"lr": plan.distill_lr}
        distill["guidance"] = {"lr": plan.distill_lr}
    if name in plan.ttur:
        distill["ttur"] = plan.ttur[name]
    steps = plan.steps_for(name)
    train = {"steps": steps, "checkpoint_every": max(1, math.ceil(steps / plan.curve_points))}
    return with_tree(cfg, {"run": {"name": name}, "train": train, "distill": distill})
