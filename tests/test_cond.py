"""Tests for presto_ray.models.cond.Cond (the text condition and CFG dropout)."""

from __future__ import annotations

import math

import pytest
import torch

from presto_ray.models.cond import Cond


def make_cond(batch: int = 4, length: int = 5, text_dim: int = 8, seed: int = 0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, text_dim, generator=g)
    lengths = torch.arange(batch) % length + 1
    mask = torch.arange(length)[None, :] < lengths[:, None]
    bpm = 60.0 + 100.0 * torch.rand(batch, generator=g)
    return Cond(tokens=tokens, mask=mask, bpm=bpm)


def test_len_and_null_shapes_and_values():
    cond = make_cond(batch=3)
    assert len(cond) == 3
    null = cond.null()
    assert null.tokens.shape == cond.tokens.shape and null.tokens.dtype == cond.tokens.dtype
    assert torch.count_nonzero(null.tokens) == 0
    assert null.mask.dtype == torch.bool and null.mask.shape == cond.mask.shape and not null.mask.any()
    assert null.bpm.shape == (3,) and torch.isnan(null.bpm).all()
    # bpm None still gives a NaN tempo in the null condition
    null2 = Cond(cond.tokens, cond.mask, None).null()
    assert null2.bpm.shape == (3,) and torch.isnan(null2.bpm).all()


def test_drop_p0_keeps_everything_and_p1_drops_everything():
    cond = make_cond(batch=6)
    kept = cond.drop(0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kept.tokens, cond.tokens)
    assert torch.equal(kept.mask, cond.mask)
    assert torch.equal(kept.bpm, cond.bpm)
    dropped = cond.drop(1.0, generator=torch.Generator().manual_seed(1))
    assert not dropped.mask.any()
    assert torch.count_nonzero(dropped.tokens) == 0
    assert torch.isnan(dropped.bpm).all()


def test_drop_rate_and_per_sample_consistency():
    n = 20_000
    cond = make_cond(batch=n, length=3, text_dim=2, seed=3)
    assert cond.mask.any(dim=1).all()
    out = cond.drop(0.3, generator=torch.Generator().manual_seed(7))
    dropped = ~out.mask.any(dim=1)
    rate = dropped.float().mean().item()
    # std of the rate is sqrt(0.21 / n) ~ 0.0032; 5 sigma
    assert abs(rate - 0.3) < 0.016, rate
    # a dropped sample is fully null (tokens zero, bpm NaN); a kept one is unchanged
    assert torch.count_nonzero(out.tokens[dropped]) == 0
    assert torch.isnan(out.bpm[dropped]).all()
    assert torch.equal(out.tokens[~dropped], cond.tokens[~dropped])
    assert torch.equal(out.mask[~dropped], cond.mask[~dropped])
    assert torch.equal(out.bpm[~dropped], cond.bpm[~dropped])


def test_drop_is_reproducible_with_generator_and_rejects_bad_p():
    cond = make_cond(batch=64)
    a = cond.drop(0.5, generator=torch.Generator().manual_seed(11))
    b = cond.drop(0.5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.mask, b.mask)
    assert 0 < (~a.mask.any(1)).sum() < 64
    with pytest.raises(ValueError, match="drop probability"):
        cond.drop(1.5)


def test_null_where_selected_rows():
    cond = make_cond(batch=4)
    out = cond.null_where(torch.tensor([False, True, False, True]))
    assert out.mask[[0, 2]].equal(cond.mask[[0, 2]])
    assert not out.mask[[1, 3]].any()
    assert torch.isnan(out.bpm[[1, 3]]).all() and torch.isfinite(out.bpm[[0, 2]]).all()
    with pytest.raises(ValueError, match="bool tensor of shape"):
        cond.null_where(torch.tensor([0, 1, 0, 1]))


def test_to_changes_float_dtype_only():
    cond = make_cond()
    half = cond.to(dtype=torch.bfloat16)
    assert half.tokens.dtype == torch.bfloat16 and half.bpm.dtype == torch.bfloat16
    assert half.mask.dtype == torch.bool
    same = cond.to(device="cpu")
    assert same.tokens.dtype == torch.float32 and torch.equal(same.tokens, cond.tokens)
    with pytest.raises(ValueError, match="floating"):
        cond.to(dtype=torch.int64)


def test_select_and_concat_roundtrip():
    cond = make_cond(batch=5)
    idx = torch.tensor([4, 0, 2])
    sub = cond.select(idx)
    assert len(sub) == 3
    assert torch.equal(sub.tokens, cond.tokens[idx]) and torch.equal(sub.bpm, cond.bpm[idx])
    whole = Cond.concat([cond.select(torch.tensor([0, 1])), cond.select(torch.tensor([2, 3, 4]))])
    assert torch.equal(whole.tokens, cond.tokens)
    assert torch.equal(whole.mask, cond.mask)
    assert torch.equal(whole.bpm, cond.bpm)


def test_concat_pads_lengths_and_fills_missing_bpm():
    a = make_cond(batch=2, length=3)
    b = Cond(tokens=torch.ones(1, 5, 8), mask=torch.ones(1, 5, dtype=torch.bool), bpm=None)
    out = Cond.concat([a, b])
    assert out.tokens.shape == (3, 5, 8) and out.mask.shape == (3, 5)
    assert torch.equal(out.tokens[:2, :3], a.tokens)
    assert torch.count_nonzero(out.tokens[:2, 3:]) == 0 and not out.mask[:2, 3:].any()
    assert torch.equal(out.bpm[:2], a.bpm) and math.isnan(out.bpm[2].item())
    assert Cond.concat([Cond(a.tokens, a.mask, None)]).bpm is None
    with pytest.raises(ValueError, match="text dims differ"):
        Cond.concat([a, Cond(torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool))])
    with pytest.raises(ValueError, match="at least one"):
        Cond.concat([])


def test_validate_accepts_good_and_names_each_problem():
    cond = make_cond(batch=4, length=5, text_dim=8)
    cond.validate(4, 8)
    Cond(cond.tokens, cond.mask, None).validate(4, 8)
    with pytest.raises(ValueError, match="Cond.tokens must have shape"):
        cond.validate(3, 8)
    with pytest.raises(ValueError, match="Cond.tokens must have shape"):
        cond.validate(4, 16)
    with pytest.raises(ValueError, match="Cond.mask must be a bool"):
        Cond(cond.tokens, cond.mask.long(), cond.bpm).validate(4, 8)
    with pytest.raises(ValueError, match="Cond.mask must have shape"):
        Cond(cond.tokens, cond.mask[:, :3], cond.bpm).validate(4, 8)
    with pytest.raises(ValueError, match="Cond.tokens must be a float"):
        Cond(cond.tokens.long(), cond.mask, cond.bpm).validate(4, 8)
    with pytest.raises(ValueError, match="Cond.bpm must be None or a tensor of shape"):
        Cond(cond.tokens, cond.mask, cond.bpm[:2]).validate(4, 8)
    with pytest.raises(ValueError, match="Cond.bpm must be a float"):
        Cond(cond.tokens, cond.mask, cond.bpm.long()).validate(4, 8)


def test_drop_bpm_is_independent_of_text_and_rate_matches():
    from presto_ray.models.cond import Cond

    n = 4000
    cond = Cond(tokens=torch.ones(n, 3, 4), mask=torch.ones(n, 3, dtype=torch.bool), bpm=torch.full((n,), 120.0))
    out = cond.drop_bpm(0.3, torch.Generator().manual_seed(0))
    rate = torch.isnan(out.bpm).float().mean().item()
    assert abs(rate - 0.3) < 0.03
    assert out.mask.all() and torch.equal(out.tokens, cond.tokens)  # text untouched
    assert cond.drop_bpm(0.0).bpm.eq(120.0).all()
    assert Cond(tokens=cond.tokens, mask=cond.mask).drop_bpm(0.5).bpm is None
