"""Tests for the 1-D DiT (presto_ray.models.dit): shapes, zero init, layer budgets, hidden taps,
the null condition, gradients, budget/bpm conditioning and bf16."""

from __future__ import annotations

import math

import pytest
import torch

from presto_ray.config import DiTConfig
from presto_ray.models.cond import Cond
from presto_ray.models.dit import DiT1D
from presto_ray.models.dit_blocks import CrossAttention, patchify, sinusoidal_embedding, unpatchify

TINY = dict(latent_channels=32, latent_frames=128, patch=2, width=64, depth=6, heads=4, text_dim=384)
SMALL = dict(TINY, width=160, depth=8, heads=4)


def tiny_cfg(**overrides) -> DiTConfig:
    return DiTConfig(**{**TINY, **overrides})


@torch.no_grad()
def perturb_(module: torch.nn.Module, seed: int = 123, std: float = 0.05) -> None:
    """Add Gaussian noise to every parameter, so zero-initialised layers become non-zero."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(std * torch.randn(p.shape, generator=g))


def make_model(seed: int = 0, perturb: bool = True, **overrides) -> DiT1D:
    torch.manual_seed(seed)
    model = DiT1D(tiny_cfg(**overrides))
    if perturb:
        perturb_(model, seed + 1)
    return model.eval()


def make_inputs(batch: int = 4, frames: int = 32, length: int = 7, seed: int = 0):
    """x [B, 32, frames], c_noise [B], a Cond with varied lengths, one null row (the last) and one
    unknown bpm."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 32, frames, generator=g)
    c_noise = torch.log(torch.exp(torch.randn(batch, generator=g)) * 0.8) / 4
    tokens = torch.randn(batch, length, 384, generator=g)
    lengths = torch.arange(batch) % length + 1
    mask = torch.arange(length)[None, :] < lengths[:, None]
    mask[-1] = False
    bpm = 60.0 + 100.0 * torch.rand(batch, generator=g)
    bpm[0] = math.nan
    return x, c_noise, Cond(tokens=tokens, mask=mask, bpm=bpm)


# --------------------------------------------------------------------------------- helpers


def test_patchify_layout_and_roundtrip():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    y = patchify(x, 2)
    assert y.shape == (2, 4, 6)
    # token n holds frames n*p .. n*p+p-1 of every channel, channel-major
    assert torch.equal(y[1, 2], torch.stack([x[1, c, 4:6] for c in range(3)]).reshape(-1))
    assert torch.equal(unpatchify(y, 3, 2), x)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 7), 2)


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0.0, 2.0]), 8)
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0].item() == pytest.approx(math.cos(2.0)) and emb[1, 4].item() == pytest.approx(math.sin(2.0))


# ----------------------------------------------------------------------------- shapes, sizes


@pytest.mark.parametrize("frames", [128, 32, 256])
def test_output_shape_for_any_length(frames):
    model = make_model()
    x, c_noise, cond = make_inputs(batch=3, frames=frames)
    out = model(x, c_noise, cond)
    assert out.shape == (3, 32, frames)
    assert torch.isfinite(out).all()


def test_parameter_counts():
    tiny = DiT1D(DiTConfig(**TINY))
    small = DiT1D(DiTConfig(**SMALL))
    assert tiny.num_parameters() < 1_000_000
    assert 2_000_000 < small.num_parameters() < 10_000_000
    assert tiny.num_parameters() == sum(p.numel() for p in tiny.parameters())
    for p in tiny.blocks.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in tiny.blocks.parameters())
    assert tiny.num_parameters(trainable_only=True) == tiny.num_parameters() - frozen


def test_invalid_inputs_raise_clear_errors():
    model = make_model(perturb=False)
    x, c_noise, cond = make_inputs()
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :16], c_noise, cond)
    with pytest.raises(ValueError, match="Cond.tokens must have shape"):
        model(x, c_noise, Cond(cond.tokens[..., :100], cond.mask, cond.bpm))
    with pytest.raises(ValueError, match="c_noise must have shape"):
        model(x, c_noise[:2], cond)
    with pytest.raises(ValueError, match="return_hidden"):
        model(x, c_noise, cond, return_hidden=[6])
    with pytest.raises(ValueError, match="even head dim"):
        DiT1D(tiny_cfg(width=60, heads=4))


# ------------------------------------------------------------------------------- zero init


def test_fresh_model_returns_exact_zero_so_D_is_c_skip_x():
    model = make_model(perturb=False, budget_embedding=True)
    x, _, cond = make_inputs(batch=4, frames=64)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    sigma_data = 0.5
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    for budget in [None, 3, torch.tensor([1, 6, 2, 4])]:
        F = model(c_in[:, None, None] * x, c_noise, cond, budget=budget)
        assert torch.count_nonzero(F) == 0
        D = c_skip[:, None, None] * x + c_out[:, None, None] * F
        assert torch.equal(D, c_skip[:, None, None] * x)


def test_inputs_matter_once_perturbed():
    model = make_model()
    x, c_noise, cond = make_inputs()
    ref = model(x, c_noise, cond)
    assert ref.abs().mean() > 1e-3
    assert not torch.allclose(model(x, c_noise + 0.3, cond), ref)
    assert not torch.allclose(model(x + 0.1, c_noise, cond), ref)
    changed = Cond(cond.tokens + 1.0, cond.mask, cond.bpm)
    diff = (model(x, c_noise, changed) - ref).abs().amax(dim=(1, 2))
    assert (diff[:-1] > 1e-4).all()  # real rows react to token values
    assert diff[-1] == 0  # the null row (last) does not


# ------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    ("mode", "keep_last", "budget", "expected"),
    [
        ("presto", 1, 6, [0, 1, 2, 3, 4, 5]),
        ("presto", 1, 5, [0, 1, 2, 3, 5]),
        ("presto", 1, 3, [0, 1, 5]),
        ("presto", 1, 1, [5]),
        ("presto", 2, 2, [4, 5]),
        ("presto", 2, 3, [0, 4, 5]),
        ("presto", 2, 5, [0, 1, 2, 4, 5]),
        ("presto", 0, 3, [0, 1, 2]),
        ("presto", 0, 1, [0]),
        ("ase", 1, 1, [0]),
        ("ase", 1, 4, [0, 1, 2, 3]),
        ("ase", 0, 6, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_blocks_run_exact_lists(mode, keep_last, budget, expected):
    model = make_model(perturb=False, drop_mode=mode, keep_last=keep_last)
    assert model.blocks_run(budget) == expected
    assert len(expected) == budget


@pytest.mark.parametrize(("mode", "keep_last", "budget"),
                         [("presto", 1, 0), ("presto", 1, 7), ("presto", 2, 1), ("presto", 3, 2), ("ase", 2, 0)])
def test_blocks_run_rejects_bad_budgets(mode, keep_last, budget):
    model = make_model(perturb=False, drop_mode=mode, keep_last=keep_last)
    with pytest.raises(ValueError, match="layer budget"):
        model.blocks_run(budget)


def test_forward_rejects_bad_budgets():
    model = make_model(perturb=False, keep_last=2)
    x, c_noise, cond = make_inputs(batch=4)
    with pytest.raises(ValueError, match="layer budget 1"):
        model(x, c_noise, cond, budget=torch.tensor([3, 1, 6, 2]))
    with pytest.raises(ValueError, match="layer budget 7"):
        model(x, c_noise, cond, budget=7)
    with pytest.raises(ValueError, match="integers"):
        model(x, c_noise, cond, budget=torch.tensor([3.0, 3.0, 3.0, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        model(x, c_noise, cond, budget=torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="budget must be"):
        model(x, c_noise, cond, budget=2.5)


@pytest.mark.parametrize(("mode", "keep_last"), [("presto", 1), ("presto", 2), ("ase", 0)])
def test_mixed_budget_runs_each_block_only_on_its_rows(mode, keep_last):
    model = make_model(drop_mode=mode, keep_last=keep_last, budget_embedding=True)
    budgets = [2, 6, 3, 5, 2, 4]
    budget = torch.tensor(budgets)
    x, c_noise, cond = make_inputs(batch=len(budgets))
    calls: dict[int, list[torch.Tensor]] = {k: [] for k in range(6)}
    handles = [
        block.register_forward_hook(lambda mod, args, out, k=k: calls[k].append(args[1].detach().clone()))
        for k, block in enumerate(model.blocks)
    ]
    with torch.no_grad():
        out = model(x, c_noise, cond, budget=budget)
        c_full = model.embed_condition(c_noise, cond, budget.float() / 6)
    for h in handles:
        h.remove()
    for k in range(6):
        rows = [i for i, b in enumerate(budgets) if k in model.blocks_run(b)]
        if not rows:  # called on zero rows, so data-parallel ranks run the same collectives
            assert len(calls[k]) == 1 and calls[k][0].shape[0] == 0
            continue
        assert len(calls[k]) == 1, f"block {k} called {len(calls[k])} times"
        # exactly the rows that execute block k went through it (identified by their own c)
        assert calls[k][0].shape[0] == len(rows)
        assert torch.equal(calls[k][0], c_full[rows])
    # total rows pushed through blocks equals the summed budgets: compute falls with the budget
    assert sum(c[0].shape[0] for c in calls.values()) == sum(budgets)
    # each sample's output equals its output run alone with the same budget
    with torch.no_grad():
        for i, b in enumerate(budgets):
            alone = model(x[i:i + 1], c_noise[i:i + 1], cond.select(torch.tensor([i])), budget=b)
            torch.testing.assert_close(out[i:i + 1], alone, atol=1e-5, rtol=1e-5)
        # and the budget actually changes the result
        full = model(x, c_noise, cond)
    assert not torch.allclose(out[0], full[0], atol=1e-4)


def test_int_budget_equals_uniform_tensor_budget_and_full_depth_equals_none():
    model = make_model(budget_embedding=True)
    x, c_noise, cond = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, c_noise, cond, budget=3),
                                   model(x, c_noise, cond, budget=torch.full((4,), 3)), atol=0, rtol=0)
        torch.testing.assert_close(model(x, c_noise, cond, budget=6), model(x, c_noise, cond), atol=0, rtol=0)


def _sub_model(full: DiT1D, block_ids: list[int], **overrides) -> DiT1D:
    """A model of len(block_ids) blocks holding copies of ``full``'s blocks ``block_ids``."""
    cfg = full.cfg.model_copy(update={"depth": len(block_ids), **overrides})
    sub = DiT1D(DiTConfig(**cfg.model_dump()))
    state = {}
    for key, value in full.state_dict().items():
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            if int(idx) in block_ids:
                state[f"blocks.{block_ids.index(int(idx))}.{rest}"] = value
        else:
            state[key] = value
    sub.load_state_dict(state, strict=True)
    return sub.eval()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_ase_budget_equals_model_truncated_to_k_blocks(k):
    model = make_model(drop_mode="ase", keep_last=0)
    truncated = _sub_model(model, list(range(k)), keep_last=0)
    x, c_noise, cond = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, c_noise, cond, budget=k), truncated(x, c_noise, cond),
                                   atol=1e-6, rtol=1e-6)


def test_presto_budget_equals_model_of_the_kept_blocks():
    model = make_model(drop_mode="presto", keep_last=2)
    kept = model.blocks_run(4)
    assert kept == [0, 1, 4, 5]
    sub = _sub_model(model, kept, keep_last=0)
    x, c_noise, cond = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, c_noise, cond, budget=4), sub(x, c_noise, cond), atol=1e-6, rtol=1e-6)


def test_skipped_blocks_get_zero_gradient():
    model = make_model(keep_last=1)
    x, c_noise, cond = make_inputs()
    out = model(x, c_noise, cond, budget=torch.tensor([3, 3, 2, 3]))  # blocks 0, 1, 5 (2: 0, 5)
    out.square().mean().backward()
    for k in (2, 3, 4):  # run on zero rows (equal collectives across ranks): exactly zero gradient
        assert all(p.grad is not None and not p.grad.any() for p in model.blocks[k].parameters())
    for k in (0, 1, 5):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks[k].parameters())


# --------------------------------------------------------------------------------- hidden taps


def test_hidden_taps_shapes_and_manual_run_with_mixed_budgets():
    model = make_model(keep_last=1, budget_embedding=True)
    budgets = [6, 3, 1, 4]
    budget = torch.tensor(budgets)
    x, c_noise, cond = make_inputs(batch=4, frames=32)
    with torch.no_grad():
        out, hidden = model(x, c_noise, cond, budget=budget, return_hidden=[5, 0, 2, 3])
        assert list(hidden) == [5, 0, 2, 3]
        for h in hidden.values():
            assert h.shape == (4, 16, 64)
        c = model.embed_condition(c_noise, cond, budget.float() / 6)
        ctx, ctx_mask = model.encode_context(cond)
        h0 = model.x_embed(patchify(x, 2))
        for i, b in enumerate(budgets):
            h = h0[i:i + 1]
            run = model.blocks_run(b)
            for k, block in enumerate(model.blocks):
                if k in run:
                    h = block(h, c[i:i + 1], ctx[i:i + 1], ctx_mask[i:i + 1])
                if k in hidden:
                    torch.testing.assert_close(hidden[k][i:i + 1], h, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[i:i + 1], unpatchify(model.final(h, c[i:i + 1]), 32, 2),
                                       atol=1e-5, rtol=1e-5)
        # sample 2 (budget 1 runs only block 5) carries its embedded input through blocks 0..4
        torch.testing.assert_close(hidden[3][2], h0[2], atol=0, rtol=0)
        # hidden taps without a budget
        _, full = model(x, c_noise, cond, return_hidden=range(6))
        assert sorted(full) == list(range(6))


def test_hidden_state_runs_only_the_blocks_up_to_k_and_equals_the_tapped_state():
    model = make_model(keep_last=1, budget_embedding=True)
    x, c_noise, cond = make_inputs(batch=4, frames=32)
    budget = torch.tensor([6, 3, 1, 4])
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            _, tapped = model(x, c_noise, cond, budget=budget, return_hidden=[2])
            assert calls == list(range(6))
            calls.clear()
            h = model.hidden_state(x, c_noise, cond, 2, budget=budget)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0, 1, 2]  # blocks 3..5 and the output layer are not computed
    torch.testing.assert_close(h, tapped[2], atol=0, rtol=0)
    with pytest.raises(ValueError, match="block 6 is outside"):
        model.hidden_state(x, c_noise, cond, 6)


# ------------------------------------------------------------------------------ null condition


def test_cross_attention_is_exactly_zero_for_rows_without_tokens():
    torch.manual_seed(0)
    attn = CrossAttention(64, 4)
    x = torch.randn(3, 5, 64)
    ctx = torch.randn(3, 4, 64)
    mask = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    out = attn(x, ctx, mask)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[1]) == 0
    assert out[0].abs().min() > 0 and out[2].abs().min() > 0
    # padded keys do not matter
    ctx2 = ctx.clone()
    ctx2[0, 2:] = 100.0
    torch.testing.assert_close(attn(x, ctx2, mask)[0], out[0], atol=0, rtol=0)
    # no tokens at all
    assert torch.count_nonzero(attn(x, ctx[:, :0], mask[:, :0])) == 0


def test_null_condition_has_no_nan_and_ignores_token_values():
    model = make_model()
    x, c_noise, cond = make_inputs(batch=4)
    null = cond.null()
    g = torch.Generator().manual_seed(5)
    noisy_null = Cond(tokens=torch.randn(null.tokens.shape, generator=g) * 10, mask=null.mask, bpm=null.bpm)
    nan_null = Cond(tokens=torch.full_like(null.tokens, math.nan), mask=null.mask, bpm=null.bpm)
    with torch.no_grad():
        ref = model(x, c_noise, null)
        assert torch.isfinite(ref).all()
        assert ref.abs().mean() > 1e-3
        torch.testing.assert_close(model(x, c_noise, noisy_null), ref, atol=0, rtol=0)
        torch.testing.assert_close(model(x, c_noise, nan_null), ref, atol=0, rtol=0)
        # a null-text row inside a mixed batch equals the same row run in an all-null-text batch
        mixed = model(x, c_noise, cond)
        assert torch.isfinite(mixed).all()
        null_text = model(x, c_noise, Cond(null.tokens, null.mask, cond.bpm))
        torch.testing.assert_close(mixed[-1], null_text[-1], atol=1e-6, rtol=1e-6)
        # masked-out token positions of real rows do not matter either
        padded = cond.tokens.clone()
        padded[~cond.mask] = math.nan
        torch.testing.assert_close(model(x, c_noise, Cond(padded, cond.mask, cond.bpm)), mixed, atol=0, rtol=0)


# ---------------------------------------------------------------------------------- gradients


def test_gradients_reach_every_parameter_after_zero_init_layers_move():
    """At init only the (zero) output layer gets gradient; after a few optimiser steps the
    zero-initialised layers are non-zero and every parameter receives a non-zero gradient."""
    model = make_model(perturb=False, budget_embedding=True).train()
    x, c_noise, cond = make_inputs(batch=4)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    budget = torch.tensor([6, 3, 5, 6])  # every block runs on some row
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    names = dict(model.named_parameters())
    # zero-init chain: output layer -> modulations/gates -> c -> budget_embed.fc2 -> budget_embed.fc1
    for step in range(4):
        opt.zero_grad()
        (model(x, c_noise, cond, budget=budget) - target).square().mean().backward()
        assert all(p.grad is not None for p in names.values())
        nonzero = {n for n, p in names.items() if p.grad.abs().sum() > 0}
        if step == 0:
            assert nonzero == {"final.linear.weight", "final.linear.bias"}
        opt.step()
    assert nonzero == set(names), f"no gradient for {sorted(set(names) - nonzero)}"


# ------------------------------------------------------------------------ budget embedding, bpm


def test_budget_embedding_does_not_change_outputs_at_init():
    off = make_model(perturb=False, budget_embedding=False)
    on = make_model(perturb=False, budget_embedding=True)
    # same seed: every shared parameter initialises identically
    on_state = on.state_dict()
    for key, value in off.state_dict().items():
        assert torch.equal(on_state[key], value), key
    # a trained (perturbed) model with the budget embedding switched on behaves exactly as before
    perturb_(off, seed=3)
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("budget_embed.") for k in missing)
    x, c_noise, cond = make_inputs()
    with torch.no_grad():
        for budget in [None, 2, torch.tensor([1, 6, 4, 2])]:
            torch.testing.assert_close(on(x, c_noise, cond, budget=budget),
                                       off(x, c_noise, cond, budget=budget), atol=0, rtol=0)
        # once the embedding itself is trained, the budget is visible to the blocks
        perturb_(on.budget_embed, seed=4)
        a = on(x, c_noise, cond, budget=torch.tensor([6, 6, 6, 6]))
        b = off(x, c_noise, cond, budget=6)
    assert not torch.allclose(a, b, atol=1e-5)


def test_bpm_changes_output_only_when_known_and_enabled():
    model = make_model(use_bpm=True)
    x, c_noise, cond = make_inputs()
    nan_bpm = torch.full((4,), math.nan)
    with torch.no_grad():
        unknown = model(x, c_noise, Cond(cond.tokens, cond.mask, nan_bpm))
        none = model(x, c_noise, Cond(cond.tokens, cond.mask, None))
        torch.testing.assert_close(unknown, none, atol=0, rtol=0)
        given = model(x, c_noise, Cond(cond.tokens, cond.mask, torch.full((4,), 120.0)))
        faster = model(x, c_noise, Cond(cond.tokens, cond.mask, torch.full((4,), 150.0)))
        mixed = model(x, c_noise, Cond(cond.tokens, cond.mask, torch.tensor([120.0, math.nan, 120.0, math.nan])))
    assert torch.isfinite(given).all()
    assert (given - unknown).abs().amax(dim=(1, 2)).min() > 1e-4
    assert (given - faster).abs().amax(dim=(1, 2)).min() > 1e-4
    torch.testing.assert_close(mixed[[0, 2]], given[[0, 2]], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[[1, 3]], unknown[[1, 3]], atol=1e-6, rtol=1e-6)

    no_bpm = make_model(use_bpm=False)
    assert no_bpm.bpm_embed is None
    with torch.no_grad():
        torch.testing.assert_close(no_bpm(x, c_noise, Cond(cond.tokens, cond.mask, torch.full((4,), 120.0))),
                                   no_bpm(x, c_noise, Cond(cond.tokens, cond.mask, nan_bpm)), atol=0, rtol=0)


# -------------------------------------------------------------------------------------- bf16


def test_bf16_autocast_and_bf16_weights_match_fp32():
    model = make_model(budget_embedding=True)
    x, c_noise, cond = make_inputs()
    budget = torch.tensor([6, 2, 4, 3])
    with torch.no_grad():
        ref = model(x, c_noise, cond, budget=budget)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto, hidden = model(x, c_noise, cond, budget=budget, return_hidden=[1])
        assert torch.isfinite(auto).all() and hidden[1].shape == (4, 16, 64)
        rel = (auto.float() - ref).norm() / ref.norm()
        assert rel < 0.05, rel
        model_bf16 = make_model(budget_embedding=True).to(torch.bfloat16)
        pure = model_bf16(x, c_noise, cond.to(dtype=torch.bfloat16), budget=budget)
    assert pure.dtype == torch.bfloat16 and torch.isfinite(pure).all()
    rel = (pure.float() - ref).norm() / ref.norm()
    assert rel < 0.1, rel
