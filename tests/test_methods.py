"""The method registry (presto_ray.distill.methods): what each method is, as one table."""

import math

import pytest
import torch

from presto_ray.config import ConfigError, load_config
from presto_ray.distill.cd import ConsistencyDistillation
from presto_ray.distill.edm_training import EDMTraining
from presto_ray.distill.methods import REGISTRY, TEACHER, distilled_methods, method_for, method_of, resolve_config
from presto_ray.distill.networks import precond_network
from presto_ray.distill.presto_l import PrestoL
from presto_ray.distill.presto_s import PrestoS
from presto_ray.distill.roles import Roles
from presto_ray.models.cond import Cond

# name: trained roles, frozen roles, sampler, few-step, uses / trains on a budget schedule, ttur,
# generator from, update class, and the lowest budget of its student (tiny: depth 6, keep_last 1;
# distill.keep_last=2 for presto-l and so for presto-ls, which takes the presto-l network)
TABLE = {
    "presto-s": (("generator", "guidance"), ("teacher",), "pingpong", True, False, False, True, None, PrestoS, 1),
    "presto-l": (("generator",), ("teacher",), "teacher", False, True, False, False, None, PrestoL, 2),
    "presto-ls": (("generator", "guidance"), ("teacher",), "pingpong", True, True, True, True, "presto-l", PrestoS, 2),
    "dmd2": (("generator", "guidance"), ("teacher",), "pingpong", True, False, False, True, None, PrestoS, 1),
    "ase": (("generator",), ("teacher",), "teacher", False, True, True, False, None, PrestoL, 1),
    "cd": (("generator",), ("teacher", "target"), "pingpong", True, False, False, False, None, ConsistencyDistillation, 1),
    "teacher": (("teacher",), (), "teacher", False, False, False, False, None, EDMTraining, 1),
}


def _run_config(name: str):
    """A distill run of ``name`` resolved against the tiny teacher (presto-ls from a presto-l run)."""
    teacher = load_config("tiny")
    init = resolve_config(load_config("tiny", ["distill.method=presto-l", "distill.keep_last=2"]), teacher)
    cfg = load_config("tiny", [f"distill.method={name}", "distill.keep_last=2", "distill.budget_schedule.edges=[1.0]",
                               "distill.budget_schedule.budgets=[6,2]"])
    return resolve_config(cfg, teacher, init), teacher


def _weights(cfg) -> dict:
    """Weights for a DiT of ``cfg.model`` (random: only their shapes matter here)."""
    return precond_network(cfg.model, cfg, None).state_dict()


def test_the_registry_holds_every_method_once_and_the_config_names_the_distilled_ones():
    assert list(REGISTRY) == list(TABLE)
    assert distilled_methods() == ("presto-s", "presto-l", "presto-ls", "dmd2", "ase", "cd")
    for name in distilled_methods():  # the config takes its method names from the registry
        assert load_config("tiny", [f"distill.method={name}"]).distill.method == name
    with pytest.raises(ConfigError, match="unknown method 'teacher'; distill.method is one of presto-s, presto-l, "
                                          "presto-ls, dmd2, ase, cd"):
        load_config("tiny", ["distill.method=teacher"])
    assert all(method_for(name).name == name for name in REGISTRY)
    assert [n for n, m in REGISTRY.items() if m.updates_curve] == ["presto-s", "dmd2", "cd"]  # the paper's comparison


@pytest.mark.parametrize("name", list(TABLE))
def test_each_method_answers_from_the_table(name):
    trained, frozen, sampler, few_step, uses, trains_on, ttur, init_from, update_class, lowest = TABLE[name]
    method = method_for(name)
    assert (method.trained, method.frozen, method.sampler, method.few_step) == (trained, frozen, sampler, few_step)
    assert (method.uses_budget_schedule, method.trains_on_schedule, method.ttur, method.init_from) == \
        (uses, trains_on, ttur, init_from)
    assert method.distilled == (name != "teacher")
    if not method.distilled:
        cfg = load_config("tiny")
        assert method.lowest_budget(cfg.model) == lowest and method.budget_schedule(cfg).is_full
        assert type(method.make_update(cfg)) is update_class
        torch.manual_seed(0)
        nets = method.build_networks(cfg)  # a fresh teacher network, trained
        assert sorted(nets) == ["teacher"] and all(p.requires_grad for p in nets["teacher"].parameters())
        scores = _evaluate(method, cfg, Roles(generator=nets["teacher"]))
        assert set(scores) == {"eval_loss", *(f"eval_loss@{s:g}" for s in cfg.train.eval_sigmas)}
        return
    cfg, teacher = _run_config(name)
    assert method.lowest_budget(cfg.model) == lowest
    schedule = method.budget_schedule(cfg)
    assert (schedule.edges, schedule.budgets) == (([1.0], [6, 2]) if uses else ([], []))
    assert type(method.make_update(cfg)) is update_class
    torch.manual_seed(0)
    nets = method.build_networks(cfg, _weights(teacher), teacher.model, _weights(cfg) if init_from else None)
    assert sorted(nets) == sorted(trained + frozen)
    assert all(not p.requires_grad for role in frozen for p in nets[role].parameters())
    assert all(p.requires_grad for role in trained for p in nets[role].parameters())
    scores = _evaluate(method, cfg, Roles(generator=nets["generator"], teacher=nets["teacher"]))
    if method.few_step:  # its samples' moments at 1 and at its own steps
        assert set(scores) == {"eval_moment_err@1", f"eval_moment_err@{cfg.distill.student_steps}"}
    else:  # the dropped student against the full teacher at its lowest and the middle budget
        budgets = {lowest, max(lowest, cfg.model.depth // 2)}
        assert {k for k in scores if k.startswith("eval_")} == {f"eval_dropped_err@{b}" for b in budgets}


def _evaluate(method, cfg, roles) -> dict[str, float]:
    """The method's fixed-batch evaluation on two random latents and captions; every value finite."""
    g = torch.Generator().manual_seed(0)
    x0 = cfg.edm.sigma_data * torch.randn(2, cfg.model.latent_channels, cfg.model.latent_frames, generator=g)
    cond = Cond(tokens=torch.randn(2, 5, cfg.model.text_dim, generator=g), mask=torch.ones(2, 5, dtype=torch.bool),
                bpm=torch.tensor([90.0, 120.0]))
    scores = method.evaluate(cfg, roles, x0, cond)
    assert all(math.isfinite(v) for v in scores.values()), scores
    return scores


def test_the_schedule_is_checked_against_the_students_lowest_budget():
    cfg, _ = _run_config("presto-l")
    low = cfg.model_copy(update={"distill": cfg.distill.model_copy(
        update={"budget_schedule": cfg.distill.budget_schedule.model_copy(update={"budgets": [6, 1]})})})
    with pytest.raises(ValueError, match=r"outside \[2, depth=6\]"):
        method_for("presto-l").budget_schedule(low)
    assert method_for("presto-s").budget_schedule(low).is_full  # presto-s runs at full depth: not read


def test_an_exports_roles_are_sampled_by_their_method():
    cfg, _ = _run_config("presto-l")
    assert method_of(cfg, "generator") is method_for("presto-l") and method_of(cfg, "teacher") is TEACHER


def test_presto_ls_starts_from_a_presto_l_run_only():
    presto_ls = method_for("presto-ls")
    presto_ls.check_init(load_config("tiny", ["distill.method=presto-l"]), "runs/presto-l")
    with pytest.raises(ValueError, match="'runs/x' was made by method 'presto-s', not presto-l"):
        presto_ls.check_init(load_config("tiny", ["distill.method=presto-s"]), "runs/x")


def test_an_unknown_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'dmd3'; known methods: presto-s, presto-l, presto-ls, "
                                         "dmd2, ase, cd, teacher"):
        method_for("dmd3")
