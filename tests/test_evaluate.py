"""presto-ray evaluate: held-out prompts -> generated audio -> musicnn embeddings -> metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from presto_ray.cli import main
from presto_ray.config import load_config
from presto_ray.data.stats import LatentStats
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.train.export import write_export

pytest.importorskip("musicnn", reason="the musicnn weights come with `pip install --no-deps musicnn==0.1.0`")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Reference embeddings are cached under PRESTO_CACHE: keep each test's cache to itself."""
    monkeypatch.setenv("PRESTO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, ray_cluster):
    from test_reader import make_rows, write  # shard helpers: latent [32, 128], captions, bpm

    folder = tmp_path_factory.mktemp("valid") / "valid"
    rows = make_rows(12)
    for i, r in enumerate(rows):
        r["caption"] = f"a piece for piano, in {'C major' if i % 2 else 'A minor'}, 4/4, {int(r['bpm'])} BPM"
    write(str(folder), rows)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    cfg = load_config("tiny", ["sampler.steps=4"])
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("teacher") / "export"
    write_export(folder, {"teacher": EDMPrecond(DiT1D(cfg.model), 0.5).state_dict()}, cfg,
                 LatentStats(mean=torch.zeros(32), std=torch.ones(32), sigma_data=0.5), 1)
    return folder


def test_evaluate_writes_metrics_and_audio(held_out, teacher, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(teacher), "--data", str(held_out), "--out", str(out),
                 "-n", "10", "--steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fad", "fad_inf", "mmd", "precision", "density", "recall", "coverage", "tempo_err_bpm",
                "tempo_err_octave_bpm", "key_acc", "instrument_acc"):
        assert math.isfinite(metrics[key]), key
    assert metrics["n_samples"] == 10 and metrics["n_frames"] == 10  # one 3-s patch per 4.1-s clip
    assert metrics["steps"] == 2 and metrics["sampler"] == "teacher" and metrics["role"] == "teacher"
    assert 0.0 <= metrics["key_acc"] <= 1.0 and 0.0 <= metrics["instrument_acc"] <= 1.0 and metrics["fad"] > 0
    wavs = sorted((out / "audio").glob("*.wav"))
    assert len(wavs) == 10
    audio, rate = sf.read(str(wavs[0]))
    assert rate == 16000 and audio.shape == (128 * 512,) and np.isfinite(audio).all()


def test_evaluate_refuses_an_empty_caption(held_out, teacher, tmp_path):
    import hashlib

    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in held_out.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    table = pq.read_table(bad / "part-00000.parquet")
    rows = table.to_pylist()
    rows[0]["caption"] = "  "
    pq.write_table(table.from_pylist(rows, schema=table.schema), bad / "part-00000.parquet")
    manifest = json.loads((bad / "manifest.json").read_text())
    data = (bad / "part-00000.parquet").read_bytes()
    entry = next(e for e in manifest["files"] if e["name"] == "part-00000.parquet")
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert main(["evaluate", "--checkpoint", str(teacher), "--data", str(bad), "--out", str(tmp_path / "e"),
                 "-n", "12", "--steps", "1"]) == 2  # refused before anything is generated
    assert not (tmp_path / "e").exists()


def test_generation_on_ray_actors_equals_the_single_process_run(held_out, teacher, tmp_path):
    from presto_ray.eval.evaluate import evaluate

    local = evaluate(str(teacher), str(held_out), tmp_path / "local", n=6, steps=2, batch_size=2)
    spread = evaluate(str(teacher), str(held_out), tmp_path / "actors", n=6, steps=2, batch_size=2, num_workers=2)
    local_wavs = sorted((tmp_path / "local" / "audio").glob("*.wav"))
    actor_wavs = sorted((tmp_path / "actors" / "audio").glob("*.wav"))
    assert [w.name for w in local_wavs] == [w.name for w in actor_wavs] and len(local_wavs) == 6
    for a, b in zip(local_wavs, actor_wavs):
        assert a.read_bytes() == b.read_bytes()
    assert spread["fad"] == pytest.approx(local["fad"])


def test_reference_embeddings_are_cached_per_shard_set(held_out, teacher, tmp_path):
    from presto_ray.eval.evaluate import evaluate

    first = evaluate(str(teacher), str(held_out), tmp_path / "a", n=4, steps=1)
    cached = list((tmp_path / "cache" / "eval").glob("reference-*.npy"))
    assert len(cached) == 1 and first["reference_cache"] == str(cached[0])
    stamp = cached[0].stat().st_mtime_ns
    second = evaluate(str(teacher), str(held_out), tmp_path / "b", n=4, steps=1)
    assert cached[0].stat().st_mtime_ns == stamp and second["fad"] == first["fad"]  # read, not rebuilt
    evaluate(str(teacher), str(held_out), tmp_path / "c", n=5, steps=1)  # other rows: another entry
    assert len(list((tmp_path / "cache" / "eval").glob("reference-*.npy"))) == 2
