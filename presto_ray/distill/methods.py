"""The method registry: one object per method (METHOD.md sections 1-5) that every other module
asks what a run of that method is, so that no module outside this one compares method names.

    method     trained roles       frozen roles     sampler   budget schedule       generator from
    presto-s   generator guidance  teacher          pingpong  -                     teacher
    presto-l   generator           teacher          teacher   at inference          teacher + budget embedding
    presto-ls  generator guidance  teacher          pingpong  training + inference  the presto-l student
    dmd2       generator guidance  teacher          pingpong  -                     teacher
    ase        generator           teacher          teacher   training + inference  teacher (early exit)
    cd         generator           teacher target   pingpong  -                     teacher
    teacher    teacher             -                teacher   -                     (train-teacher)

Adding a method: a :class:`Method` (or a subclass with its own networks and update) registered in
:data:`REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from presto_ray.config import DiTConfig, PrestoConfig, TrainConfig
from presto_ray.distill.budget import BudgetSchedule
from presto_ray.distill.cd import ConsistencyDistillation, make_target
from presto_ray.distill.edm_training import EDMTraining
from presto_ray.distill.evaluation import dropped_layers, few_step_moments
from presto_ray.distill.networks import guidance_network, layer_student_model, precond_network, with_teacher_settings
from presto_ray.distill.presto_l import PrestoL
from presto_ray.distill.presto_s import PrestoS
from presto_ray.distill.roles import Roles, frozen
from presto_ray.edm.loss import fixed_eval_loss
from presto_ray.edm.precond import EDMPrecond
from presto_ray.models.dit import DiT1D

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Method:
    """What a run of one method is. ``trained``: roles with an engine and optimizer; ``frozen``:
    roles built but never stepped; ``sampler``: how its model is sampled ("pingpong": few steps,
    no CFG; "teacher": Heun/Euler with CFG); ``uses_budget_schedule``: its model runs under
    ``distill.budget_schedule`` (a layer-dropping student); ``trains_on_schedule``: its training
    uses that schedule's budgets too (else presto-l's budgets drawn at random); ``ttur``: the
    generator is updated every ``distill.ttur``-th iteration only; ``updates_curve``: the
    quickstart draws its quality against generator updates (the step-distillation methods the
    paper compares); ``init_from``: the method whose student its generator starts from."""

    name: str
    trained: tuple[str, ...]
    frozen: tuple[str, ...] = ("teacher",)
    sampler: str = "pingpong"
    uses_budget_schedule: bool = False
    trains_on_schedule: bool = False
    ttur: bool = False
    updates_curve: bool = False
    init_from: str | None = None

    @property
    def distilled(self) -> bool:
        """A distilled student (it has a generator), as opposed to the teacher."""
        return "generator" in self.trained

    @property
    def main_role(self) -> str:
        """The role whose weights the run exports, checkpoints a digest of and keeps an EMA of."""
        return self.trained[0]

    @property
    def few_step(self) -> bool:
        """A few-step student (sampled by ping-pong), as opposed to a model sampled like the teacher."""
        return self.sampler == "pingpong"

    @staticmethod
    def lowest_budget(model: DiTConfig) -> int:
        """The fewest blocks a DiT of config ``model`` may run: Presto's drop mode keeps its last
        ``keep_last`` blocks (and at least one), ASE's early exit needs one."""
        return max(1, model.keep_last) if model.drop_mode == "presto" else 1

    def budget_schedule(self, cfg: PrestoConfig) -> BudgetSchedule:
        """The sigma -> budget schedule this method's model of the (resolved) ``cfg`` runs under:
        ``distill.budget_schedule`` checked against its depth, or full depth."""
        if not self.uses_budget_schedule:
            return BudgetSchedule([], [])
        schedule = BudgetSchedule.from_config(cfg.distill.budget_schedule)
        schedule.validate(cfg.model.depth, self.lowest_budget(cfg.model))
        return schedule

    def check_init(self, init_cfg: PrestoConfig, uri: str) -> None:
        """Raise ValueError unless the run at ``uri`` (config ``init_cfg``) is one of :attr:`init_from`."""
        if init_cfg.distill.method != self.init_from:
            raise ValueError(f"distill.init '{uri}' was made by method '{init_cfg.distill.method}', not {self.init_from}")

    def student_model(self, teacher_model: DiTConfig, cfg: PrestoConfig,
                      init_model: DiTConfig | None = None) -> DiTConfig:
        """The generator's DiT config: the teacher's, or the :attr:`init_from` student's (``init_model``)."""
        if self.init_from is None:
            return teacher_model
        if init_model is None:
            raise ValueError(f"{self.name} needs distill.init: the {self.init_from} run (or export) to start the generator from")
        return init_model

    def build_networks(self, cfg: PrestoConfig, teacher_state: StateDict, teacher_model: DiTConfig,
                       init_state: StateDict | None = None) -> dict[str, nn.Module]:
        """Modules by role name (``cfg`` resolved: ``cfg.model`` is the student's): the frozen
        teacher and the generator, from the teacher's weights or the :attr:`init_from` student's.
        Trained roles come back in train mode, frozen ones frozen."""
        if not self.distilled:
            raise ValueError(f"method '{self.name}' is not distilled: it has no student networks")
        generator_state = init_state if self.init_from is not None else teacher_state
        return {"teacher": frozen(precond_network(teacher_model, cfg, teacher_state)),
                "generator": precond_network(cfg.model, cfg, generator_state)}

    def make_update(self, cfg: PrestoConfig):
        """The update object of a run of ``cfg``: ``step(roles, x0, cond, iteration, generator=,
        guard=) -> metrics``, stepping each trained role through ``guarded_step``."""
        raise ValueError(f"method '{self.name}' is not distilled: it has no distillation update")

    def role_train(self, cfg: PrestoConfig, role: str) -> TrainConfig:
        """The optimiser settings of trained ``role``: ``train`` with ``distill.<role>``'s overrides."""
        return getattr(cfg.distill, role).apply_to(cfg.train)

    def evaluate(self, cfg: PrestoConfig, roles: Roles, x0: torch.Tensor, cond) -> dict[str, float]:
        """The fixed-batch evaluation of a run (x0 [B, C, T] normalised latents): for a few-step
        student the moments of its 1- and N-step samples (:func:`few_step_moments`)."""
        return few_step_moments(cfg, roles, x0, cond, self.budget_schedule(cfg))


@dataclass(frozen=True)
class ScoreMethod(Method):
    """Score-based distillation (presto-s, presto-ls, dmd2): a guidance role (fake score +
    discriminator head) beside the generator; ``published_dmd2``: DMD2's noise and GAN loss."""

    published_dmd2: bool = False

    def build_networks(self, cfg: PrestoConfig, teacher_state: StateDict, teacher_model: DiTConfig,
                       init_state: StateDict | None = None) -> dict[str, nn.Module]:
        """The teacher, the generator and the guidance role; its fake score from the teacher, or
        with ``distill.fake_from_init`` from the :attr:`init_from` student."""
        nets = super().build_networks(cfg, teacher_state, teacher_model, init_state)
        from_init = self.init_from is not None and cfg.distill.fake_from_init
        nets["guidance"] = guidance_network(cfg.model if from_init else teacher_model, cfg,
                                            init_state if from_init else teacher_state)
        return nets

    def make_update(self, cfg: PrestoConfig) -> PrestoS:
        """:class:`PrestoS` (Presto-S, or DMD2 as published), under the budget schedule when it has one."""
        build = PrestoS.dmd2_from_config if self.published_dmd2 else PrestoS.from_config
        return build(cfg, self.budget_schedule(cfg))


@dataclass(frozen=True)
class LayerMethod(Method):
    """Layer distillation (presto-l, ase): a layer-dropping student of drop mode ``drop_mode``
    sampled like its teacher; ``self_teacher``: trained toward the full-depth teacher (presto-l),
    else plain denoising (ase)."""

    drop_mode: str = "presto"
    self_teacher: bool = True

    def student_model(self, teacher_model: DiTConfig, cfg: PrestoConfig,
                      init_model: DiTConfig | None = None) -> DiTConfig:
        """The teacher's DiT config as a layer-dropping student of :attr:`drop_mode`."""
        return layer_student_model(teacher_model, cfg, self.drop_mode)

    def build_networks(self, cfg: PrestoConfig, teacher_state: StateDict, teacher_model: DiTConfig,
                       init_state: StateDict | None = None) -> dict[str, nn.Module]:
        """The teacher and the student from the teacher's weights (its budget embedding, which
        the teacher lacks, starts at zero)."""
        return {"teacher": frozen(precond_network(teacher_model, cfg, teacher_state)),
                "generator": precond_network(cfg.model, cfg, teacher_state, strict=False)}

    def make_update(self, cfg: PrestoConfig) -> PrestoL:
        return PrestoL.from_config(cfg, self.lowest_budget(cfg.model), self_teacher=self.self_teacher,
                                   on_schedule=self.trains_on_schedule)

    def evaluate(self, cfg: PrestoConfig, roles: Roles, x0: torch.Tensor, cond) -> dict[str, float]:
        """The dropped student's error to the full teacher and its hidden-state scale (:func:`dropped_layers`)."""
        return dropped_layers(cfg, roles, x0, cond, self.lowest_budget(cfg.model))


@dataclass(frozen=True)
class ConsistencyMethod(Method):
    """Consistency distillation (cd): the generator's frozen EMA target beside the teacher."""

    def build_networks(self, cfg: PrestoConfig, teacher_state: StateDict, teacher_model: DiTConfig,
                       init_state: StateDict | None = None) -> dict[str, nn.Module]:
        nets = super().build_networks(cfg, teacher_state, teacher_model, init_state)
        nets["target"] = make_target(nets["generator"])
        return nets

    def make_update(self, cfg: PrestoConfig) -> ConsistencyDistillation:
        return ConsistencyDistillation.from_config(cfg)


@dataclass(frozen=True)
class TeacherMethod(Method):
    """The EDM teacher's own training (``train-teacher``): one trained role, no frozen ones."""

    def build_networks(self, cfg: PrestoConfig, teacher_state: StateDict | None = None,
                       teacher_model: DiTConfig | None = None,
                       init_state: StateDict | None = None) -> dict[str, nn.Module]:
        """A freshly initialised EDM-preconditioned DiT of ``cfg.model`` (from torch's global RNG)."""
        return {"teacher": EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data)}

    def make_update(self, cfg: PrestoConfig) -> EDMTraining:
        return EDMTraining.from_config(cfg)

    def role_train(self, cfg: PrestoConfig, role: str) -> TrainConfig:
        return cfg.train

    def evaluate(self, cfg: PrestoConfig, roles: Roles, x0: torch.Tensor, cond) -> dict[str, float]:
        """The denoising loss on the fixed batch at ``train.eval_sigmas`` (:func:`fixed_eval_loss`)."""
        return fixed_eval_loss(roles.generator, x0, cond, cfg.train.eval_sigmas, cfg.edm.sigma_data, cfg.train.seed)


TEACHER = TeacherMethod("teacher", trained=("teacher",), frozen=(), sampler="teacher")
"""The EDM teacher itself (trained by ``train-teacher``, not distilled)."""
PRESTO_S = ScoreMethod("presto-s", trained=("generator", "guidance"), ttur=True, updates_curve=True)
PRESTO_L = LayerMethod("presto-l", trained=("generator",), sampler="teacher", uses_budget_schedule=True)
PRESTO_LS = ScoreMethod("presto-ls", trained=("generator", "guidance"), uses_budget_schedule=True,
                        trains_on_schedule=True, ttur=True, init_from="presto-l")
DMD2 = ScoreMethod("dmd2", trained=("generator", "guidance"), ttur=True, updates_curve=True, published_dmd2=True)
ASE = LayerMethod("ase", trained=("generator",), sampler="teacher", uses_budget_schedule=True,
                  trains_on_schedule=True, drop_mode="ase", self_teacher=False)
CD = ConsistencyMethod("cd", trained=("generator",), frozen=("teacher", "target"), updates_curve=True)

REGISTRY: dict[str, Method] = {m.name: m for m in (PRESTO_S, PRESTO_L, PRESTO_LS, DMD2, ASE, CD, TEACHER)}
"""Every method by name (``distill.method`` names one of the distilled ones)."""


def distilled_methods() -> tuple[str, ...]:
    """The names ``distill.method`` may take (every registered method but the teacher), in registry order."""
    return tuple(name for name, method in REGISTRY.items() if method.distilled)


def method_for(name: str) -> Method:
    """The registered method called ``name``; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; known methods: {', '.join(REGISTRY)}") from None


def method_of(cfg: PrestoConfig, role: str) -> Method:
    """The method whose model ``role`` of an export with config ``cfg`` is: the ``generator`` is
    the student of ``distill.method``, every other role (the teacher) a model sampled as the teacher."""
    return method_for(cfg.distill.method) if role == "generator" else TEACHER


# The steps of a distill run, for callers that hold its config: each asks the method of ``distill.method``.

def student_model_config(teacher_model: DiTConfig, cfg: PrestoConfig, init_model: DiTConfig | None = None) -> DiTConfig:
    """The generator's DiT config for ``cfg.distill.method`` (:meth:`Method.student_model`)."""
    return method_for(cfg.distill.method).student_model(teacher_model, cfg, init_model)


def resolve_config(cfg: PrestoConfig, teacher_cfg: PrestoConfig, init_cfg: PrestoConfig | None = None) -> PrestoConfig:
    """``cfg`` with the teacher's edm, codec, text and sampler settings and the student's model
    config in ``model`` (``init_cfg``: the config of the run the generator starts from)."""
    model = student_model_config(teacher_cfg.model, cfg, init_cfg.model if init_cfg is not None else None)
    return with_teacher_settings(cfg, teacher_cfg, model)


def build_networks(cfg: PrestoConfig, teacher_state: StateDict, teacher_model: DiTConfig,
                   init_state: StateDict | None = None) -> dict[str, nn.Module]:
    """Modules by role name for ``cfg.distill.method`` (:meth:`Method.build_networks`)."""
    return method_for(cfg.distill.method).build_networks(cfg, teacher_state, teacher_model, init_state)


def make_update(cfg: PrestoConfig):
    """The update object for ``cfg.distill.method`` (:meth:`Method.make_update`)."""
    return method_for(cfg.distill.method).make_update(cfg)
