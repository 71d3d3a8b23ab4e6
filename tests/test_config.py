"""Configs: presets load, overrides apply, bad keys and values are named."""

from __future__ import annotations

import pytest

from presto_ray.config import ConfigError, PrestoConfig, load_config, parse_overrides


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, PrestoConfig)
    assert cfg.model.latent_frames % cfg.model.patch == 0


def test_overrides_are_typed_and_nested():
    cfg = load_config("tiny", ["model.depth=8", "train.lr=1e-4", "train.use_gpu=false", "run.name=x"])
    assert cfg.model.depth == 8 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.use_gpu is False and cfg.run.name == "x"
    assert parse_overrides(["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


@pytest.mark.parametrize("override, key", [
    ("model.depht=3", "model.depht"),
    ("trian.lr=1", "trian"),
    ("train.lr=fast", "train.lr"),
    ("train.zero_stage=5", "train.zero_stage"),
    ("model.patch=3", "model"),
    ("train.eval_sigmas=[]", "train"),
    ("train.eval_sigmas=[0.5,0]", "train"),
    ("train.eval_batch=0", "train"),
    ("train.cpus_per_worker=0", "train"),
])
def test_bad_keys_and_values_are_named(override, key):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert key in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  width: 64\n  hedas: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert "model.hedas" in str(info.value) and str(f) in str(info.value)


def test_missing_config_file_and_malformed_override():
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["model.depth"])


def test_latent_channels_must_match_codec():
    with pytest.raises(ConfigError, match="latent_channels"):
        load_config("tiny", ["model.latent_channels=16"])


def test_config_round_trips_through_yaml(tmp_path):
    from presto_ray.config import save_config

    cfg = load_config("small", ["train.steps=7"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_deepspeed_overrides_merge_into_the_generated_config():
    from presto_ray.runtime import choose_runtime
    from presto_ray.train.engine import deepspeed_config

    cfg = load_config("tiny", ["train.zero_stage=2", "train.deepspeed={zero_optimization: {overlap_comm: true}}"])
    ds = deepspeed_config(cfg.train, choose_runtime(False))
    assert ds["zero_optimization"]["overlap_comm"] is True and ds["zero_optimization"]["stage"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == cfg.train.batch_size and ds["bf16"]["enabled"] is False
