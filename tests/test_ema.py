"""The weight EMA: warm-up schedule, what a short run exports, and its checkpoint round trip."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from presto_ray.train.ema import EMA
from presto_ray.train.engine import RoleEngine


def _role(value: float) -> RoleEngine:
    """A role whose (single-process, non-ZeRO) module holds one weight of 3 entries."""
    net = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(value)
    return RoleEngine("generator", SimpleNamespace(module=net))


def _set(role: RoleEngine, value: float) -> None:
    with torch.no_grad():
        role.module.weight.fill_(value)


@pytest.mark.parametrize("warmup", [True, False])
def test_share_of_initial_weights_after_a_short_run(warmup):
    """Trained weights jump from 0 to 1 and stay there: after n updates the shadow holds
    prod(d_k) of the initial 0. 60 updates at 0.999 (a 300-iteration Presto-S run) keep 94% of
    the initial weights without warm-up and under 1% with it."""
    role = _role(0.0)
    ema = EMA(role, 0.999, warmup=warmup)
    _set(role, 1.0)
    for _ in range(60):
        ema.update(role)
    kept = 1.0 - ema.state_dict()["weight"][0, 0].item()
    expected = 1.0
    for k in range(60):
        expected *= min(0.999, (1 + k) / (10 + k)) if warmup else 0.999
    assert kept == pytest.approx(expected, rel=1e-4, abs=1e-6)  # fp32 shadow
    assert (kept < 0.01) if warmup else (kept == pytest.approx(0.999 ** 60, rel=1e-4) and kept > 0.9)
    assert ema.updates == 60


def test_warmup_reaches_the_configured_decay():
    ema = EMA(_role(0.0), 0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # first update: (1 + 0) / (10 + 0)
    ema.updates = 890  # (1 + 890) / 900 = 0.99
    assert ema.current_decay() == pytest.approx(0.99)
    ema.updates = 100_000
    assert ema.current_decay() == 0.99
    assert EMA(_role(0.0), 0.99, warmup=False).current_decay() == 0.99


def test_checkpoint_round_trip_keeps_weights_and_update_count(tmp_path):
    role = _role(0.0)
    ema = EMA(role, 0.999)
    _set(role, 2.0)
    for _ in range(7):
        ema.update(role)
    ema.save(tmp_path / "ema.safetensors", ema.state_dict())

    resumed = EMA(_role(5.0), 0.999)
    resumed.load(tmp_path / "ema.safetensors")
    assert resumed.updates == 7
    assert torch.equal(resumed.state_dict()["weight"], ema.state_dict()["weight"])
    # both continue identically
    ema.update(role)
    resumed.update(role)
    assert torch.equal(resumed.state_dict()["weight"], ema.state_dict()["weight"])


def test_checkpoint_without_a_count_restarts_warmup_and_missing_weights_are_named(tmp_path):
    save_file({"weight": torch.ones(1, 3)}, str(tmp_path / "old.safetensors"))
    ema = EMA(_role(0.0), 0.999)
    ema.load(tmp_path / "old.safetensors")
    assert ema.updates == 0 and torch.equal(ema.state_dict()["weight"], torch.ones(1, 3))
    save_file({"other": torch.ones(1)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 parameters"):
        ema.load(tmp_path / "wrong.safetensors")
