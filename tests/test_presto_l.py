"""Presto-L (METHOD.md section 3) in one process on plain torch (TorchRole.adamw, no Ray, no
DeepSpeed), on the tiny 6-block DiT and real tone data (mel codec + MiniLM):

- a tiny teacher trained in-process with the EDM loss, whose blocks matter (dropping them moves
  its output);
- self-teacher training with random budgets shrinks the dropped model's error to the full teacher;
- the variance argument: keeping the last block ("presto") beats dropping from the end ("ase") at
  the same budget, before and after equal training;
- the per-block hidden-state std diagnostic;
- BudgetSchedule, ScheduledDenoiser and draw_budgets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from presto_ray.data.batch import batch_to_inputs, stack_rows
from presto_ray.data.stats import LatentStats
from presto_ray.distill.budget import BudgetSchedule, ScheduledDenoiser, draw_budgets
from presto_ray.distill.methods import build_networks, make_update, resolve_config, student_model_config
from presto_ray.distill.presto_l import PrestoL, dropped_error, hidden_std
from presto_ray.distill.roles import Roles, TorchRole, frozen
from presto_ray.edm import EDMLoss, EDMPrecond, make_noise
from presto_ray.models.cond import Cond
from presto_ray.models.dit import DiT1D
from presto_ray.edm.loss import fixed_eval_loss

DEPTH = 6
BUDGET = 3  # of 6: presto runs blocks 0, 1, 5; ase runs blocks 0, 1, 2
EVAL_SIGMAS = [0.2, 0.5, 1.0, 2.0]
STD_SIGMA = 1.0
N_EVAL = 8
TEACHER_STEPS, TEACHER_LR = 200, 2e-3
STUDENT_STEPS, STUDENT_LR = 100, 1e-3
BATCH = 16


def _method(cfg, method: str):
    return cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"method": method})})


def _rows(x: torch.Tensor, cond: Cond, idx: torch.Tensor) -> tuple[torch.Tensor, Cond]:
    return x[idx], Cond(tokens=cond.tokens[idx], mask=cond.mask[idx], bpm=cond.bpm[idx])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread. Measured on this 2-core machine: a training step of the tiny DiT takes
    0.054 s with 2 threads and 0.087 s with 1 when the machine is idle, but 1.0-1.6 s with 2 threads
    (0.08 s with 1) while another process keeps the cores busy (OpenMP threads spin-wait)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tones(tiny_config):
    """(cfg, x_train, cond_train, x_eval, cond_eval): 64 synthesised melodies through the real mel
    codec and MiniLM, built in-process; the last 8 are a fixed held-out batch."""
    from presto_ray.data.tones import build_tone_rows
    from presto_ray.models.codec import load_codec
    from presto_ray.models.text import load_text_encoder

    cfg = tiny_config
    rows = build_tone_rows(cfg, load_codec(cfg.codec), load_text_encoder(cfg.text))
    latents = torch.from_numpy(np.stack([r["latent"] for r in rows]).astype(np.float32))
    stats = LatentStats.from_latents(latents, cfg.edm.sigma_data)
    x, cond = batch_to_inputs(stack_rows(rows), stats, torch.device("cpu"))
    n = x.shape[0] - N_EVAL
    return (cfg, *_rows(x, cond, torch.arange(n)), *_rows(x, cond, torch.arange(n, x.shape[0])))


@pytest.fixture(scope="module")
def teacher(tones):
    """A frozen EDMPrecond(DiT1D) teacher trained with the EDM loss; returns (teacher, metrics)."""
    cfg, x, cond, x_eval, cond_eval = tones
    assert cfg.model.depth == DEPTH and cfg.model.drop_mode == "presto" and not cfg.model.budget_embedding
    sd = cfg.edm.sigma_data
    torch.manual_seed(0)
    net = EDMPrecond(DiT1D(cfg.model), sd)
    before = fixed_eval_loss(net, x_eval, cond_eval, EVAL_SIGMAS, sd, seed=0)["eval_loss"]
    loss_fn = EDMLoss(make_noise(cfg.distill.p_layer, cfg.edm), sd)
    opt = torch.optim.AdamW(net.parameters(), lr=TEACHER_LR, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(0)
    for _ in range(TEACHER_STEPS):
        xb, cb = _rows(x, cond, torch.randint(0, x.shape[0], (BATCH,), generator=gen))
        loss, _ = loss_fn(net, xb, cb, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
    frozen(net)
    after = fixed_eval_loss(net, x_eval, cond_eval, EVAL_SIGMAS, sd, seed=0)["eval_loss"]
    return net, {"eval_loss_before": before, "eval_loss_after": after}


def _student(cfg, teacher_net, method: str):
    """(student cfg, networks) for ``method`` built by the library from the teacher's weights."""
    student_cfg = resolve_config(_method(cfg, method), cfg)
    nets = build_networks(student_cfg, teacher_net.state_dict(), cfg.model)
    return student_cfg, nets


@pytest.fixture(scope="module")
def students(tones, teacher):
    """Two students trained with the same self-teacher update, data, sigmas, noise and budgets:
    "presto" (presto-l: keep_last=1, budget embedding) and "ase" (drop from the end, no budget
    embedding). Returns {mode: {...measurements...}}."""
    cfg, x, cond, x_eval, cond_eval = tones
    teacher_net, _ = teacher
    sd = cfg.edm.sigma_data
    # The presto-l update (self-teacher, random budgets); the ase network below gets the same update,
    # so the two differ only in which blocks a budget drops and in the budget embedding.
    update = make_update(resolve_config(_method(cfg, "presto-l"), cfg))
    assert isinstance(update, PrestoL) and update.self_teacher and update.dsm_weight == 0.0
    assert (update.lowest, update.depth, update.use_schedule) == (1, DEPTH, False)
    out = {}
    for mode, method in (("presto", "presto-l"), ("ase", "ase")):
        student_cfg, nets = _student(cfg, teacher_net, method)
        net = nets["generator"]
        assert net.training and all(p.requires_grad for p in net.parameters())
        measured = {
            "cfg": student_cfg.model,
            "blocks_run": net.net.blocks_run(BUDGET),
            "init_errors": {b: dropped_error(net, teacher_net, x_eval, cond_eval, b, EVAL_SIGMAS, sd)
                            for b in range(1, DEPTH + 1)},
            "init_std_full": hidden_std(net, x_eval, cond_eval, STD_SIGMA, None, DEPTH),
            "init_std_drop": hidden_std(net, x_eval, cond_eval, STD_SIGMA, BUDGET, DEPTH),
        }
        with torch.no_grad():
            xs = x_eval + 0.7 * torch.randn(x_eval.shape, generator=torch.Generator().manual_seed(5))
            measured["init_full_equal"] = torch.equal(net(xs, torch.full((N_EVAL,), 0.7), cond_eval),
                                                      teacher_net(xs, torch.full((N_EVAL,), 0.7), cond_eval))
        roles = Roles(generator=TorchRole.adamw("generator", net, lr=STUDENT_LR), teacher=nets["teacher"])
        gen = torch.Generator().manual_seed(1)
        losses, budgets = [], []
        for it in range(STUDENT_STEPS):
            xb, cb = _rows(x, cond, torch.randint(0, x.shape[0], (BATCH,), generator=gen))
            metrics = update.step(roles, xb, cb, it, generator=gen)
            losses.append(float(metrics["loss_st"]))
            budgets.append(float(metrics["budget_mean"]))
        net.eval()
        measured.update({
            "net": net,
            "losses": losses,
            "budget_means": budgets,
            "errors": {b: dropped_error(net, teacher_net, x_eval, cond_eval, b, EVAL_SIGMAS, sd)
                       for b in range(1, DEPTH + 1)},
            "std_full": hidden_std(net, x_eval, cond_eval, STD_SIGMA, None, DEPTH),
            "std_drop": hidden_std(net, x_eval, cond_eval, STD_SIGMA, BUDGET, DEPTH),
        })
        out[mode] = measured
    for mode, m in out.items():
        print(f"\n{mode}: blocks at budget {BUDGET} {m['blocks_run']}")
        print(f"  dropped_error init  {[round(m['init_errors'][b], 4) for b in range(1, DEPTH + 1)]}")
        print(f"  dropped_error after {[round(m['errors'][b], 4) for b in range(1, DEPTH + 1)]}")
        print(f"  hidden std init full {[round(v, 4) for v in m['init_std_full']]}")
        print(f"  hidden std init drop {[round(v, 4) for v in m['init_std_drop']]}")
        print(f"  hidden std after full {[round(v, 4) for v in m['std_full']]}")
        print(f"  hidden std after drop {[round(v, 4) for v in m['std_drop']]}")
    return out


# ---------------------------------------------------------------------------------- teacher


def test_teacher_learns_and_its_blocks_matter(tones, teacher):
    cfg, _, _, x_eval, cond_eval = tones
    net, metrics = teacher
    print(f"\nteacher eval loss {metrics['eval_loss_before']:.4f} -> {metrics['eval_loss_after']:.4f}")
    assert metrics["eval_loss_after"] < 0.7 * metrics["eval_loss_before"], metrics
    errors = [dropped_error(net, net, x_eval, cond_eval, b, EVAL_SIGMAS, cfg.edm.sigma_data) for b in range(1, DEPTH + 1)]
    print(f"teacher dropped_error (presto mode, vs itself) by budget 1..6: {[round(e, 4) for e in errors]}")
    # budget 6 runs every block: exactly the full path
    assert errors[-1] == 0.0
    # dropping blocks moves the output, more so the more blocks are dropped
    assert errors[BUDGET - 1] > 0.05, errors
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


# --------------------------------------------------------------------------------- presto-l


def test_student_configs_and_initial_identity(tiny_config, students):
    presto, ase = students["presto"], students["ase"]
    assert (presto["cfg"].drop_mode, presto["cfg"].budget_embedding, presto["cfg"].keep_last) == ("presto", True, 1)
    assert (ase["cfg"].drop_mode, ase["cfg"].budget_embedding) == ("ase", False)
    assert presto["blocks_run"] == [0, 1, 5] and ase["blocks_run"] == [0, 1, 2]
    # the zero-initialised budget embedding: the student is the teacher at full depth
    assert presto["init_full_equal"] and ase["init_full_equal"]
    assert presto["init_errors"][DEPTH] == 0.0 and ase["init_errors"][DEPTH] == 0.0

    # the library's ase update is plain DSM (the comparison here gives both the self-teacher loss)
    ase_update = make_update(resolve_config(_method(tiny_config, "ase"), tiny_config))
    assert isinstance(ase_update, PrestoL) and not ase_update.self_teacher and ase_update.lowest == 1


def test_self_teacher_training_shrinks_the_dropped_error(students):
    presto = students["presto"]
    before, after = presto["init_errors"][BUDGET], presto["errors"][BUDGET]
    print(f"\npresto dropped_error at budget {BUDGET}: {before:.4f} -> {after:.4f} ({after / before:.2f}x)")
    assert after < 0.7 * before, (before, after)
    # every dropped budget improved; budgets were drawn over the whole range
    assert all(presto["errors"][b] < presto["init_errors"][b] for b in range(1, DEPTH)), presto["errors"]
    assert all(1.0 <= m <= DEPTH for m in presto["budget_means"])
    assert min(presto["budget_means"]) < 3.5 < max(presto["budget_means"])
    losses = presto["losses"]
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:10]), (losses[:10], losses[-20:])


def test_keeping_the_last_block_beats_dropping_from_the_end(students):
    presto, ase = students["presto"], students["ase"]
    p0, a0 = presto["init_errors"][BUDGET], ase["init_errors"][BUDGET]
    p1, a1 = presto["errors"][BUDGET], ase["errors"][BUDGET]
    print(f"\nbudget {BUDGET}: init presto {p0:.4f} vs ase {a0:.4f}; after equal training presto {p1:.4f} vs ase {a1:.4f}")
    # identical training inputs: the same budgets were drawn for both
    assert presto["budget_means"] == ase["budget_means"]
    # at initialisation (no training) and after the same self-teacher training
    assert p0 < a0, (p0, a0)
    assert p1 < a1, (p1, a1)
    # and summed over every dropped budget 1..5
    dropped = range(1, DEPTH)
    assert sum(presto["init_errors"][b] for b in dropped) < sum(ase["init_errors"][b] for b in dropped)
    assert sum(presto["errors"][b] for b in dropped) < sum(ase["errors"][b] for b in dropped)


# ------------------------------------------------------------------------------ hidden std


def test_hidden_std_full_and_dropped_paths(teacher, tones, students):
    cfg, _, _, x_eval, cond_eval = tones
    teacher_net, _ = teacher
    teacher_full = hidden_std(teacher_net, x_eval, cond_eval, STD_SIGMA, None, DEPTH)
    assert len(teacher_full) == DEPTH and all(math.isfinite(v) and v > 0 for v in teacher_full)
    # the same fixed noise: the diagnostic is deterministic
    assert hidden_std(teacher_net, x_eval, cond_eval, STD_SIGMA, None, DEPTH) == teacher_full
    for mode in ("presto", "ase"):
        s = students[mode]
        full, drop = s["init_std_full"], s["init_std_drop"]
        assert len(full) == DEPTH and len(drop) == DEPTH
        # the student starts as the teacher: its full path is the teacher's
        assert full == teacher_full, (mode, full, teacher_full)
        run = s["blocks_run"]
        for k in range(DEPTH):
            if k not in run:
                # a skipped block carries the state: the std does not move
                assert drop[k] == drop[k - 1], (mode, k, drop)
            elif all(j in run for j in range(k + 1)):
                # before the first skipped block the dropped path is the full path
                assert drop[k] == full[k], (mode, k, drop, full)
        for key in ("std_full", "std_drop"):
            assert len(s[key]) == DEPTH and all(math.isfinite(v) for v in s[key])
        trained = s["std_drop"]
        assert all(trained[k] == trained[k - 1] for k in range(1, DEPTH) if k not in run), (mode, trained)
    p_drop, a_drop = students["presto"]["init_std_drop"], students["ase"]["init_std_drop"]
    # presto runs the last block after the skip: its final std moves again; ase's stays frozen
    assert p_drop[-1] != p_drop[-2] and a_drop[-1] == a_drop[BUDGET - 1]
    # the variance argument: the state the output layer sees is closer in std to full depth's
    # when the last block is kept, at initialisation and after equal training
    for prefix in ("init_", ""):
        gaps = {mode: abs(students[mode][f"{prefix}std_drop"][-1] - students[mode][f"{prefix}std_full"][-1])
                for mode in ("presto", "ase")}
        print(f"\n{prefix or 'trained '}final-block std gap to full depth: {gaps}")
        assert gaps["presto"] < gaps["ase"], (prefix, gaps)


# ------------------------------------------------------------------------------ budgets


def test_budget_schedule_lookup_and_bin_edges():
    s = BudgetSchedule([0.5, 2.0], [6, 4, 2])
    assert [s.budget_at(v) for v in (0.01, 0.4999, 0.5, 1.0, 1.9999, 2.0, 80.0)] == [6, 6, 4, 4, 4, 2, 2]
    sig = torch.tensor([0.01, 0.4999, 0.5, 1.0, 2.0, 80.0])
    out = s(sig)
    assert out.dtype == torch.long and out.tolist() == [6, 6, 4, 4, 2, 2]
    assert s(sig.double()).tolist() == out.tolist()
    assert not s.is_full
    full = BudgetSchedule([], [])
    assert full.is_full and full.budget_at(1.0) is None and full(sig) is None
    one = BudgetSchedule([], [3])
    assert one.budget_at(0.001) == 3 and one(sig).tolist() == [3] * 6
    # the cost: mean fraction of blocks over the sampler's positive levels (the final 0 is ignored)
    assert s.mean_fraction([80.0, 1.0, 0.1, 0.0], 6) == pytest.approx((2 / 6 + 4 / 6 + 6 / 6) / 3)
    assert full.mean_fraction([80.0, 1.0, 0.0], 6) == 1.0
    with pytest.raises(ValueError, match="len"):
        BudgetSchedule([1.0], [6, 4, 2])
    with pytest.raises(ValueError, match="increase"):
        BudgetSchedule([2.0, 0.5], [6, 4, 2])


def test_budget_schedule_json_round_trip_and_validate():
    s = BudgetSchedule([0.3, 1.5, 10.0], [6, 5, 3, 2])
    back = BudgetSchedule.parse(s.to_json())
    assert (back.edges, back.budgets) == (s.edges, s.budgets) == ([0.3, 1.5, 10.0], [6, 5, 3, 2])
    assert back.to_json() == s.to_json()
    assert BudgetSchedule.parse('{"budgets": [4]}').budgets == [4]
    full = BudgetSchedule.parse(BudgetSchedule([], []).to_json())
    assert full.is_full
    for bad in ("not json", '{"edges": [1.0]}', '{"edges": [1.0], "budgets": [6]}', "[1, 2]"):
        with pytest.raises(ValueError, match="not a budget schedule"):
            BudgetSchedule.parse(bad)
    s.validate(depth=6, lowest=1)
    s.validate(depth=6, lowest=2)
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        s.validate(depth=6, lowest=4)  # 3 and 2 are below the lowest
    with pytest.raises(ValueError, match=r"\[7\]"):
        BudgetSchedule([1.0], [7, 3]).validate(depth=6, lowest=1)
    with pytest.raises(ValueError, match=r"\[0\]"):
        BudgetSchedule([1.0], [6, 0]).validate(depth=6, lowest=1)
    # the update uses the schedule instead of random budgets when told to
    update = PrestoL(p_layer=None, sigma_data=0.5, lowest=1, depth=6, schedule=s, use_schedule=True)
    sig = torch.tensor([0.1, 0.3, 2.0, 50.0])
    assert update.budgets(sig, None).tolist() == [6, 5, 3, 2]


@torch.no_grad()
def test_scheduled_denoiser_passes_per_sample_budgets(tiny_config):
    torch.manual_seed(0)
    model_cfg = student_model_config(tiny_config.model, _method(tiny_config, "presto-l"))
    dit = DiT1D(model_cfg)
    g = torch.Generator().manual_seed(1)
    for p in dit.parameters():  # a fresh DiT returns F = 0; make every layer matter
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    net = EDMPrecond(dit, tiny_config.edm.sigma_data).eval()
    batch = 5
    x = torch.randn(batch, 32, 32, generator=g)
    cond = Cond(tokens=torch.randn(batch, 6, 384, generator=g), mask=torch.ones(batch, 6, dtype=torch.bool),
                bpm=torch.full((batch,), 120.0))
    sigma = torch.tensor([0.05, 0.5, 1.0, 2.0, 40.0])
    schedule = BudgetSchedule([0.5, 2.0], [6, 4, 2])
    expected_budgets = torch.tensor([6, 4, 4, 2, 2])
    assert torch.equal(schedule(sigma), expected_budgets)
    out = ScheduledDenoiser(net, schedule)(x, sigma, cond)
    assert torch.equal(out, net(x, sigma, cond, budget=expected_budgets))
    # each row is that sample run alone at its own budget
    for i in range(batch):
        alone = net(x[i:i + 1], sigma[i:i + 1], _rows(x, cond, torch.tensor([i]))[1], budget=int(expected_budgets[i]))
        torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    # rows with fewer blocks differ from full depth; the full-depth row does not
    full = net(x, sigma, cond)
    torch.testing.assert_close(out[0], full[0], rtol=1e-5, atol=1e-5)
    assert all((out[i] - full[i]).abs().max() > 1e-4 for i in range(1, batch))
    # an empty schedule passes no budget; a scalar sigma gets one budget for the batch
    assert torch.equal(ScheduledDenoiser(net, BudgetSchedule([], []))(x, sigma, cond), full)
    assert torch.equal(ScheduledDenoiser(net, schedule)(x, 40.0, cond), net(x, 40.0, cond, budget=2))
    # extra keywords pass through (hidden taps)
    _, hidden = ScheduledDenoiser(net, schedule)(x, sigma, cond, return_hidden=[5])
    assert hidden[5].shape == (batch, 16, model_cfg.width)


def test_draw_budgets_range_and_determinism():
    b = draw_budgets(3000, 2, 6, generator=torch.Generator().manual_seed(3))
    assert b.dtype == torch.long and b.shape == (3000,)
    assert set(b.tolist()) == {2, 3, 4, 5, 6}
    counts = torch.bincount(b, minlength=7)[2:].float()
    assert counts.min() > 0.8 * 600 and counts.max() < 1.2 * 600, counts  # uniform
    again = draw_budgets(3000, 2, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b, again)
    other = draw_budgets(3000, 2, 6, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(b, other)
    assert draw_budgets(7, 6, 6).tolist() == [6] * 7
    assert draw_budgets(4, 1, 6, device="cpu").device.type == "cpu"
    for lowest, depth in ((0, 6), (7, 6), (-1, 6)):
        with pytest.raises(ValueError, match="lowest budget"):
            draw_budgets(4, lowest, depth)
