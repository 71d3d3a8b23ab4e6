"""Presto-L on the diffusers Stable Audio transformer (issue #17): layer budgets, the zero-initialised
budget embedding, and the Presto-L update on a v-prediction teacher, on a tiny random 4-block
``StableAudioDiTModel`` (no download)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from diffusers import StableAudioDiTModel

from presto_ray.distill.presto_l import PrestoL, dropped_error
from presto_ray.distill.roles import Roles, TorchRole, frozen
from presto_ray.edm import LogNormal
from presto_ray.models.objectives import VPrecond
from presto_ray.models.stable_audio import StableAudioCond, StableAudioNet

CONFIG = dict(sample_size=4, in_channels=3, num_layers=4, attention_head_dim=8, num_attention_heads=2,
              num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4, time_proj_dim=8,
              global_states_input_dim=8, cross_attention_input_dim=4)
B, L, S = 3, 6, 5


def _transformer(dtype=torch.float64) -> StableAudioDiTModel:
    torch.manual_seed(0)
    model = StableAudioDiTModel(**CONFIG).eval()
    with torch.no_grad():  # diffusers' init leaves some layers near zero; make every weight matter
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.to(dtype)


def _cond(batch: int = B, seed: int = 1, dtype=torch.float64) -> StableAudioCond:
    g = torch.Generator().manual_seed(seed)
    return StableAudioCond(torch.randn(batch, S, 4, generator=g, dtype=dtype),
                           torch.randn(batch, 1, 8, generator=g, dtype=dtype))


def _inputs(seed: int = 2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, L, generator=g, dtype=dtype), torch.tensor([0.1, 0.5, 0.9], dtype=dtype)


def _with_blocks(transformer: StableAudioDiTModel, blocks: list[int]) -> StableAudioDiTModel:
    """A copy of the transformer holding only ``blocks`` (same weights), to run through its own forward."""
    short = copy.deepcopy(transformer)
    short.transformer_blocks = torch.nn.ModuleList(short.transformer_blocks[k] for k in blocks)
    return short


@torch.no_grad()
def test_a_budget_runs_its_blocks_and_keeps_the_last():
    transformer = _transformer()
    net = StableAudioNet(transformer, keep_last=1)
    x_in, t = _inputs()
    cond = _cond()
    assert [net.blocks_run(b) for b in (1, 2, 3, 4)] == [[3], [0, 3], [0, 1, 3], [0, 1, 2, 3]]
    for b in (1, 2, 3, 4):  # the transformer's own forward over exactly the blocks the budget names
        want = StableAudioNet(_with_blocks(transformer, net.blocks_run(b)), keep_last=0)(x_in, t, cond)
        torch.testing.assert_close(net(x_in, t, cond, budget=b), want, rtol=0, atol=1e-12)
    full = net(x_in, t, cond)
    torch.testing.assert_close(net(x_in, t, cond, budget=4), full, rtol=0, atol=0)
    assert (net(x_in, t, cond, budget=2) - full).abs().max() > 1e-3  # dropping blocks changes F
    # per-sample budgets in one batch: each row as if run alone at its budget
    mixed = net(x_in, t, cond, budget=torch.tensor([1, 4, 2]))
    for i, b in enumerate((1, 4, 2)):
        torch.testing.assert_close(mixed[i], net(x_in, t, cond, budget=b)[i], rtol=0, atol=1e-12)
    # blocks 1 and 2 run for no sample here: still called (on one row, adding nothing), so that
    # every data-parallel rank touches every block; their gradients are zeros, not missing
    with torch.enable_grad():
        out = net(x_in, t, cond, budget=torch.tensor([1, 1, 2]))
        out.square().sum().backward()
    for i, b in enumerate((1, 1, 2)):
        torch.testing.assert_close(out[i], net(x_in, t, cond, budget=b)[i], rtol=0, atol=1e-12)
    for k in (1, 2):
        grads = [p.grad for p in transformer.transformer_blocks[k].parameters()]
        assert all(g is not None and g.abs().max() == 0 for g in grads)
    keep2 = StableAudioNet(transformer, keep_last=2)
    assert keep2.blocks_run(2) == [2, 3]
    with pytest.raises(ValueError, match=r"layer budget 1 is outside \[2, depth=4\]"):
        keep2(x_in, t, cond, budget=1)
    with pytest.raises(ValueError, match=r"keep_last=4 must be in \[0, depth=4\)"):
        StableAudioNet(transformer, keep_last=4)


def test_the_budget_embedding_starts_at_zero_and_then_conditions_on_the_budget():
    transformer = _transformer()
    teacher = StableAudioNet(transformer)
    student = StableAudioNet(copy.deepcopy(transformer), budget_embedding=True)
    x_in, t = _inputs()
    cond = _cond()
    with torch.no_grad():  # at initialisation the student is the teacher, at every budget
        for b in (None, 2, 4):
            torch.testing.assert_close(student(x_in, t, cond, budget=b), teacher(x_in, t, cond, budget=b),
                                       rtol=0, atol=0)
    # its gradient reaches the zero last layer, and once that moves the output depends on the budget
    student(x_in, t, cond, budget=2).square().sum().backward()
    last = student.budget_embed.fc2
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    with torch.no_grad():
        last.weight.normal_(0.0, 0.1)
        at2, at3 = student(x_in, t, cond, budget=2), student(x_in, t, cond, budget=3)
        assert (at2 - teacher(x_in, t, cond, budget=2)).abs().max() > 1e-4
        # the embedding reads the budget: the same blocks at two budget fractions differ only by it
        alone3 = StableAudioNet(_with_blocks(student.transformer, student.blocks_run(3)), keep_last=0)
        assert (at3 - alone3(x_in, t, cond)).abs().max() > 1e-4


def test_checkpointed_blocks_give_the_same_output_and_gradients():
    x_in, t = _inputs()
    cond = _cond()
    outs = []
    for checkpointing in (False, True):
        transformer = _transformer()
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        net = StableAudioNet(transformer).train()
        loss = net(x_in, t, cond, budget=torch.tensor([2, 4, 3])).square().sum()
        loss.backward()
        outs.append((loss.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert len(outs[0][1]) == len(outs[1][1])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def test_presto_l_brings_a_dropped_stable_audio_student_to_its_full_depth_teacher():
    """The Presto-L update (self-teacher loss, random budgets) on the v-prediction teacher
    VPrecond(StableAudioNet), in float32 on torch optimisers: the student's error to the full
    teacher at budget 2 of 4 on fixed noise falls well below the undistilled start."""
    torch.manual_seed(0)
    transformer = _transformer(torch.float32)
    teacher = frozen(VPrecond(StableAudioNet(copy.deepcopy(transformer)), sigma_data=1.0))
    student = VPrecond(StableAudioNet(transformer, budget_embedding=True), sigma_data=1.0)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(16, 3, L, generator=g)
    cond = _cond(16, seed=4, dtype=torch.float32)
    sigmas = [0.5, 1.0, 2.0, 5.0]
    before = dropped_error(student, teacher, x0, cond, 2, sigmas, 1.0, seed=0)
    update = PrestoL(p_layer=LogNormal(0.0, 1.0), sigma_data=1.0, lowest=1, depth=4)
    roles = Roles(generator=TorchRole.adamw("generator", student, lr=3e-3), teacher=teacher)
    for it in range(150):
        metrics = update.step(roles, x0, cond, it, generator=g)
        assert math.isfinite(float(metrics["loss"]))
    after = dropped_error(student, teacher, x0, cond, 2, sigmas, 1.0, seed=0)
    assert after < 0.5 * before, (before, after)
    full = dropped_error(student, teacher, x0, cond, 4, sigmas, 1.0, seed=0)
    assert full < 0.5 * before  # and the full-depth path stays near the teacher
