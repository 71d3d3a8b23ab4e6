"""Builders for the networks of a distillation run, from the teacher's weights and config.

These know nothing of methods: :mod:`presto_ray.distill.methods` decides, per method, which of
them a run builds (METHOD.md sections 2-5) and from which weights.
"""

from __future__ import annotations

import logging

import torch

from presto_ray.config import DiTConfig, PrestoConfig
from presto_ray.distill.guidance import GuidanceModel
from presto_ray.edm.precond import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.models.disc_head import DiscriminatorHead

log = logging.getLogger("presto_ray.distill")


def layer_student_model(teacher_model: DiTConfig, cfg: PrestoConfig, drop_mode: str) -> DiTConfig:
    """The teacher's DiT config as a layer-dropping student: Presto-L's budget conditioning and
    ``distill.keep_last`` (``drop_mode`` "presto"), or ASE's early exit without conditioning ("ase")."""
    if drop_mode == "presto":
        if not 0 <= cfg.distill.keep_last < teacher_model.depth:
            raise ValueError(f"distill.keep_last={cfg.distill.keep_last} must be in [0, depth={teacher_model.depth})")
        return teacher_model.model_copy(update={"budget_embedding": True, "drop_mode": "presto",
                                                "keep_last": cfg.distill.keep_last})
    return teacher_model.model_copy(update={"budget_embedding": False, "drop_mode": drop_mode})


def with_teacher_settings(cfg: PrestoConfig, teacher_cfg: PrestoConfig, model: DiTConfig) -> PrestoConfig:
    """``cfg`` with edm, codec, text and sampler taken from the teacher's run (the student must see
    the teacher's latents and text features; a layer-dropping student samples as its teacher does,
    at the teacher's chosen sampler when its export holds one), and ``model`` (the student's DiT
    config) in ``model``."""
    for section in ("edm", "codec", "text", "sampler"):
        if getattr(cfg, section) != getattr(teacher_cfg, section):
            log.info("distill: using the teacher's %s settings", section)
    return cfg.model_copy(update={"model": model, "edm": teacher_cfg.edm, "codec": teacher_cfg.codec,
                                  "text": teacher_cfg.text, "sampler": teacher_cfg.sampler})


def precond_network(model_cfg: DiTConfig, cfg: PrestoConfig, state: dict[str, torch.Tensor] | None,
                    strict: bool = True) -> EDMPrecond:
    """An EDM-preconditioned DiT of ``model_cfg`` holding ``state``; ``strict=False`` lets a
    student's zero-initialised budget embedding be missing from the teacher's weights."""
    net = EDMPrecond(DiT1D(model_cfg), cfg.edm.sigma_data)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        allowed = {k for k in missing if ".budget_embed." in f".{k}"} if not strict else set()
        if set(missing) - allowed or unexpected:
            raise ValueError(f"weights do not fit the {model_cfg.depth}-block DiT: missing {sorted(set(missing) - allowed)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]}")
    return net


def guidance_network(fake_model: DiTConfig, cfg: PrestoConfig, state: dict[str, torch.Tensor]) -> GuidanceModel:
    """The guidance role: the fake score (a DiT of ``fake_model`` holding ``state``) and the
    discriminator head on its block ``distill.disc_block`` (default the middle one)."""
    fake = precond_network(fake_model, cfg, state)
    block = cfg.distill.disc_block if cfg.distill.disc_block is not None else fake_model.depth // 2
    if not 0 <= block < fake_model.depth:
        raise ValueError(f"distill.disc_block={block} is outside [0, depth={fake_model.depth})")
    return GuidanceModel(fake, DiscriminatorHead(fake_model.width, cfg.distill.disc_width), block)
