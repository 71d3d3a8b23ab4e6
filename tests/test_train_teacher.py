"""Teacher training under Ray Train with DeepSpeed on 2 CPU workers: learning, checkpoints,
resume, ZeRO-3, export -> generate, and the NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_ray.data.batch import batch_to_inputs, stack_rows
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.train.teacher import train_teacher
from presto_ray.edm.loss import fixed_eval_loss


def _cfg(base, tmp_path, name, **overrides):
    items = [f"run.name={name}", f"run.storage_path={tmp_path}"] + [f"{k}={v}" for k, v in overrides.items()]
    from presto_ray.config import config_from_dict, deep_merge, parse_overrides

    return config_from_dict(deep_merge(base.model_dump(mode="json"), parse_overrides(items)))


def _meta(step_dir: Path) -> dict:
    return json.loads((step_dir / "meta.json").read_text())


@pytest.mark.timeout(900)
def test_zero2_two_workers_learns_checkpoints_and_resumes(tiny_config, tone_data, tmp_path):
    ds, stats = tone_data
    cfg = _cfg(tiny_config, tmp_path, "z2", **{"train.num_workers": 2, "train.zero_stage": 2, "train.steps": 80,
                                              "train.eval_every": 40, "train.checkpoint_every": 40})
    result = train_teacher(cfg, dataset=ds, stats=stats)
    run = tmp_path / "z2"
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000040", "step_00000080"]

    # every role's DeepSpeed folder, both ranks' ZeRO shards, meta, RNG per rank, export
    last = run / "step_00000080"
    ds_files = {p.name for p in (last / "teacher" / "ds").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= ds_files
    assert {p.name for p in (last / "rng").iterdir()} == {"rank_00000.safetensors", "rank_00001.safetensors"}
    meta = _meta(last)
    assert meta["step"] == 80 and meta["world_size"] == 2 and meta["zero_stage"] == {"teacher": 2}
    assert meta["config"]["model"]["depth"] == cfg.model.depth
    assert (last / "export" / "teacher.safetensors").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    # the loss on a fixed batch and sigma grid falls clearly from the initial model's
    x0, cond = batch_to_inputs(stack_rows(ds.take(cfg.train.eval_batch)), stats, torch.device("cpu"))
    torch.manual_seed(0)
    initial = fixed_eval_loss(EDMPrecond(DiT1D(cfg.model), 0.5), x0, cond, cfg.train.eval_sigmas, 0.5, cfg.train.seed)
    final = result.metrics["eval_loss"]
    assert math.isfinite(final)
    assert final < 0.75 * initial["eval_loss"], (initial["eval_loss"], final)

    # relaunch with the same run name and more steps: resumes from step 80 with the saved weights
    longer = _cfg(cfg, tmp_path, "z2", **{"train.steps": 100})
    result2 = train_teacher(longer, dataset=ds, stats=stats)
    meta100 = _meta(run / "step_00000100")
    assert meta100["resumed_from"] == 80
    assert meta100["resumed_weights_sha256"] == meta["weights_sha256"]
    assert meta100["weights_sha256"] != meta["weights_sha256"]
    assert result2.metrics["step"] == 100
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000040", "step_00000080", "step_00000100"]

    # relaunching a finished run trains nothing more
    train_teacher(longer, dataset=ds, stats=stats)
    assert sorted(p.name for p in run.glob("step_*"))[-1] == "step_00000100"


@pytest.mark.timeout(600)
def test_zero3_smoke_export_and_generate(tiny_config, tone_data, tmp_path):
    from presto_ray.generate import MusicGenerator, Prompt

    ds, stats = tone_data
    # EMA off: the export then gathers ZeRO-3 shards from every rank (a collective)
    cfg = _cfg(tiny_config, tmp_path, "z3", **{"train.num_workers": 2, "train.zero_stage": 3, "train.steps": 10,
                                              "train.eval_every": 10, "train.checkpoint_every": 10,
                                              "train.ema_decay": 0.0})
    result = train_teacher(cfg, dataset=ds, stats=stats)
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(result.metrics["eval_loss"])
    step = tmp_path / "z3" / "step_00000010"
    ds_files = {p.name for p in (step / "teacher" / "ds").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= ds_files
    assert not (step / "ema").exists()

    gen = MusicGenerator(str(tmp_path / "z3"))  # the run folder resolves to its newest checkpoint
    assert gen.export.step == 10
    wavs = gen.generate([Prompt("a pure sine melody in the low register at 70 BPM", bpm=70, seed=3)],
                        steps=4, progress=False)
    wav = wavs[0]
    assert wav.shape == (cfg.model.latent_frames * cfg.codec.hop_length,)
    assert np.isfinite(wav).all() and wav.std() > 1e-4


@pytest.mark.timeout(300)
def test_nan_loss_is_skipped_then_stops_the_run(tiny_config, tone_data, tmp_path):
    import ray.data
    from ray.train.v2.api.exceptions import TrainingFailedError

    ds, stats = tone_data
    rows = ds.take(32)
    for r in rows:
        r["latent"] = np.full_like(r["latent"], np.nan)
    cfg = _cfg(tiny_config, tmp_path, "nan", **{"train.steps": 20, "train.nan_patience": 3,
                                               "train.checkpoint_every": 10})
    with pytest.raises(TrainingFailedError) as info:
        train_teacher(cfg, dataset=ray.data.from_items(rows), stats=stats)
    assert "NaN/Inf for 3 consecutive batches" in str(info.value)
    assert not list((tmp_path / "nan").glob("step_*"))  # nothing was trained on or saved


@pytest.mark.timeout(600)
def test_run_storage_in_s3_trains_generates_and_exports(tiny_config, tone_data, s3_endpoint, tmp_path):
    """Checkpoints, config and TensorBoard events go to an s3:// run folder on a real S3 protocol
    server; generate and export read them back from there."""
    import boto3

    from presto_ray.generate import MusicGenerator, Prompt
    from presto_ray.train.export import copy_export, load_export

    ds, stats = tone_data
    cfg = _cfg(tiny_config, tmp_path, "s3run", **{"run.storage_path": "s3://presto/runs", "train.steps": 6,
                                                 "train.eval_every": 6, "train.checkpoint_every": 6})
    train_teacher(cfg, dataset=ds, stats=stats)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="presto", Prefix="runs/s3run/")["Contents"]}
    assert "runs/s3run/config.yaml" in keys
    assert "runs/s3run/step_00000006/export/teacher.safetensors" in keys
    assert "runs/s3run/step_00000006/teacher/ds/mp_rank_00_model_states.pt" in keys
    assert any(k.startswith("runs/s3run/tensorboard/events.out.tfevents") for k in keys)

    gen = MusicGenerator("s3://presto/runs/s3run/step_00000006")
    wav = gen.generate([Prompt("a soft flute-like melody", seed=1)], steps=2, progress=False)[0]
    assert wav.shape == (cfg.model.latent_frames * cfg.codec.hop_length,) and np.isfinite(wav).all()

    copy_export("s3://presto/runs/s3run/step_00000006", "s3://presto/models/teacher")
    copy_export("s3://presto/models/teacher", str(tmp_path / "local-copy"))
    assert load_export(tmp_path / "local-copy").step == 6


def test_dataset_smaller_than_one_batch_per_worker_is_refused(tiny_config, tone_data, tmp_path):
    import ray.data

    ds, stats = tone_data
    cfg = _cfg(tiny_config, tmp_path, "small-ds", **{"train.num_workers": 2, "train.batch_size": 8})
    with pytest.raises(ValueError, match="has 12 rows, fewer than train.batch_size x train.num_workers = 16"):
        train_teacher(cfg, dataset=ray.data.from_items(ds.take(12)), stats=stats)


@pytest.mark.timeout(600)
def test_teacher_trains_from_prepared_shards_in_s3(tiny_config, tone_data, s3_endpoint, tmp_path):
    """data.source=shards: Parquet shards + manifest in object storage stream into training, and
    the manifest's statistics become the run's latent statistics."""
    from presto_ray.data.shards import ShardWriter
    from presto_ray.train.export import load_export

    ds, _ = tone_data
    cfg = tiny_config
    uri = "s3://presto/shards/tones"
    with ShardWriter(uri, rows_per_shard=16, latent_shape=(32, 128), text_shape=(cfg.text.max_tokens, 384),
                     codec_identity={"name": "mel"}, text_identity={"name": "minilm"}) as writer:
        for row in ds.take(48):
            writer.add(row)
    cfg = _cfg(tiny_config, tmp_path, "from-shards", **{"data.source": "shards", "data.uri": uri,
                                                       "train.steps": 6, "train.eval_every": 6,
                                                       "train.checkpoint_every": 6})
    result = train_teacher(cfg)
    assert math.isfinite(result.metrics["eval_loss"])
    stats = load_export(tmp_path / "from-shards").stats
    latents = np.stack([r["latent"] for r in ds.take(48)]).astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), latents.mean(axis=(0, 2)), rtol=1e-3, atol=1e-3)

    wrong = _cfg(cfg, tmp_path, "wrong-shape", **{"model.latent_frames": 64})
    with pytest.raises(ValueError, match="latent"):
        train_teacher(wrong)


@pytest.mark.timeout(300)
def test_rows_skipped_by_on_bad_rows_skip_are_counted_in_the_metrics(tiny_config, ray_cluster, tmp_path):
    from test_reader import make_rows, write  # noqa: E402 (shared shard helpers)
    from test_shards import _put_nan_row  # noqa: E402

    folder = tmp_path / "shards"
    rows = make_rows(20)
    for r in rows:  # the tiny model's text length
        r["text_states"] = np.concatenate([r["text_states"], np.zeros((16, 384), np.float16)])
        r["text_mask"] = np.concatenate([r["text_mask"], np.zeros(16, bool)])
    import test_reader

    test_reader.L = 48
    try:
        write(str(folder), rows)
    finally:
        test_reader.L = 32
    bad = {_put_nan_row(folder, "part-00000.parquet", 1), _put_nan_row(folder, "part-00003.parquet", 2)}
    assert len(bad) == 2
    cfg = _cfg(tiny_config, tmp_path, "skip", **{"data.source": "shards", "data.uri": str(folder),
                                                "data.on_bad_rows": "skip", "train.steps": 4, "train.log_every": 2,
                                                "train.eval_every": 4, "train.checkpoint_every": 4,
                                                "train.batch_size": 4, "train.eval_batch": 4})
    result = train_teacher(cfg)
    # 18 good rows make 4 batches of 4 per epoch; the NaN rows were dropped, counted, not trained on
    assert result.metrics["skipped_bad_rows"] >= 2
    assert math.isfinite(result.metrics["loss"]) and result.metrics["skipped_nonfinite"] == 0
