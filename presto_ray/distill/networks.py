"""The networks of a distillation run, built from the teacher's weights and config.

Which networks exist depends on the method (METHOD.md sections 2-5):

    presto-s, dmd2   generator (copy of the teacher), guidance (fake score = copy of the teacher
                     + discriminator head), frozen teacher
    presto-ls        as presto-s, generator from the Presto-L student (fake score from the teacher,
                     or from the Presto-L student with distill.fake_from_init)
    presto-l, ase    generator = layer-dropping student (copy of the teacher; presto-l adds the
                     zero-initialised budget embedding), frozen teacher
    cd               generator (copy of the teacher), its frozen EMA target, frozen teacher
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from presto_ray.config import DiTConfig, PrestoConfig
from presto_ray.distill.budget import BudgetSchedule
from presto_ray.distill.cd import ConsistencyDistillation, make_target
from presto_ray.distill.guidance import GuidanceModel
from presto_ray.distill.presto_l import PrestoL
from presto_ray.distill.presto_s import PrestoS
from presto_ray.distill.roles import frozen
from presto_ray.edm.precond import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.models.disc_head import DiscriminatorHead

log = logging.getLogger("presto_ray.distill")

LAYER_METHODS = ("presto-l", "ase")
"""Methods whose student is a layer-dropped denoiser sampled like the teacher (many steps, CFG)."""
SCORE_METHODS = ("presto-s", "presto-ls", "dmd2")
"""Methods with a guidance role (fake score + discriminator)."""


def student_model_config(teacher_model: DiTConfig, cfg: PrestoConfig, init_model: DiTConfig | None = None) -> DiTConfig:
    """The generator's DiT config: the teacher's, with Presto-L's budget conditioning and
    ``keep_last`` (presto-l), ASE's early exit without conditioning (ase), or the Presto-L
    student's (presto-ls)."""
    method = cfg.distill.method
    if method == "presto-l":
        if not 0 <= cfg.distill.keep_last < teacher_model.depth:
            raise ValueError(f"distill.keep_last={cfg.distill.keep_last} must be in [0, depth={teacher_model.depth})")
        return teacher_model.model_copy(update={"budget_embedding": True, "drop_mode": "presto",
                                                "keep_last": cfg.distill.keep_last})
    if method == "ase":
        return teacher_model.model_copy(update={"budget_embedding": False, "drop_mode": "ase"})
    if method == "presto-ls":
        if init_model is None:
            raise ValueError("presto-ls needs distill.init: the Presto-L run (or export) to start the generator from")
        return init_model
    return teacher_model


def resolve_config(cfg: PrestoConfig, teacher_cfg: PrestoConfig, init_cfg: PrestoConfig | None = None) -> PrestoConfig:
    """``cfg`` with edm, codec, text and sampler taken from the teacher's run (the student must see
    the teacher's latents and text features; a layer-dropping student samples as its teacher does,
    at the teacher's chosen sampler when its export holds one), and the student's model config in
    ``model``."""
    model = student_model_config(teacher_cfg.model, cfg, init_cfg.model if init_cfg is not None else None)
    for section in ("edm", "codec", "text", "sampler"):
        if getattr(cfg, section) != getattr(teacher_cfg, section):
            log.info("distill: using the teacher's %s settings", section)
    return cfg.model_copy(update={"model": model, "edm": teacher_cfg.edm, "codec": teacher_cfg.codec,
                                  "text": teacher_cfg.text, "sampler": teacher_cfg.sampler})


def _precond(model_cfg: DiTConfig, cfg: PrestoConfig, state: dict[str, torch.Tensor] | None,
             strict: bool = True) -> EDMPrecond:
    net = EDMPrecond(DiT1D(model_cfg), cfg.edm.sigma_data)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        allowed = {k for k in missing if ".budget_embed." in f".{k}"} if not strict else set()
        if set(missing) - allowed or unexpected:
            raise ValueError(f"weights do not fit the {model_cfg.depth}-block DiT: missing {sorted(set(missing) - allowed)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]}")
    return net


def budget_schedule(cfg: PrestoConfig) -> BudgetSchedule:
    """The sigma -> budget schedule the method's student runs under (presto-l, ase, presto-ls:
    ``distill.budget_schedule``; other methods: full depth), checked against its depth."""
    if cfg.distill.method not in (*LAYER_METHODS, "presto-ls"):
        return BudgetSchedule([], [])
    schedule = BudgetSchedule.from_config(cfg.distill.budget_schedule)
    model = cfg.model
    schedule.validate(model.depth, max(1, model.keep_last) if model.drop_mode == "presto" else 1)
    return schedule


def build_networks(cfg: PrestoConfig, teacher_state: dict[str, torch.Tensor], teacher_model: DiTConfig,
                   init_state: dict[str, torch.Tensor] | None = None) -> dict[str, nn.Module]:
    """Modules by role name for ``cfg.distill.method`` (cfg already resolved: ``cfg.model`` is the
    student's). Trained roles come back in train mode; ``teacher`` and ``target`` frozen."""
    method = cfg.distill.method
    teacher = frozen(_precond(teacher_model, cfg, teacher_state))
    nets: dict[str, nn.Module] = {"teacher": teacher}
    generator_state = init_state if method == "presto-ls" else teacher_state
    nets["generator"] = _precond(cfg.model, cfg, generator_state, strict=method not in LAYER_METHODS)
    if method in SCORE_METHODS:
        fake_state = init_state if (method == "presto-ls" and cfg.distill.fake_from_init) else teacher_state
        fake_model = cfg.model if fake_state is init_state else teacher_model
        fake = _precond(fake_model, cfg, fake_state)
        block = cfg.distill.disc_block if cfg.distill.disc_block is not None else fake_model.depth // 2
        if not 0 <= block < fake_model.depth:
            raise ValueError(f"distill.disc_block={block} is outside [0, depth={fake_model.depth})")
        nets["guidance"] = GuidanceModel(fake, DiscriminatorHead(fake_model.width, cfg.distill.disc_width), block)
    if method == "cd":
        nets["target"] = make_target(nets["generator"])
    return nets


def make_update(cfg: PrestoConfig):
    """The update object for the method: PrestoS, PrestoL or ConsistencyDistillation."""
    method = cfg.distill.method
    if method in SCORE_METHODS:
        schedule = budget_schedule(cfg) if method == "presto-ls" else BudgetSchedule([], [])
        return PrestoS.from_config(cfg, schedule)
    if method in LAYER_METHODS:
        lowest = max(1, cfg.model.keep_last) if cfg.model.drop_mode == "presto" else 1
        return PrestoL.from_config(cfg, lowest)
    return ConsistencyDistillation.from_config(cfg)
