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


def test_evaluate_writes_metrics_with_intervals_the_floor_and_audio(held_out, teacher, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(teacher), "--data", str(held_out), "--out", str(out),
                 "-n", "16", "--steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("kad", "mmd", "precision", "density", "recall", "coverage"):
        low, high = metrics[f"{key}_ci"]
        assert math.isfinite(metrics[key]) and low <= high, key
    for key in ("tempo_err_bpm", "tempo_err_octave_bpm", "key_acc", "instrument_acc", "floor_kad"):
        assert math.isfinite(metrics[key]), key
    # 16 clips of 12 prompts (prompts repeat with new seeds); 12 reference clips: 6 floor, 6 reference
    assert metrics["n_samples"] == 16 and metrics["n_prompts"] == 12 and metrics["n_frames"] == 16
    assert (metrics["n_floor"], metrics["n_reference"]) == (6, 6) and "6 for the noise floor" in metrics["reference"]
    # FAD needs >= 2 x 200 feature vectors each side: refused, and said why
    assert metrics["fad"] is None and metrics["fad_note"].startswith("n too small")
    assert metrics["steps"] == 2 and metrics["sampler"] == "teacher" and metrics["role"] == "teacher"
    assert metrics["cfg_scale"] == 4.0 and metrics["schedule"] is None
    # an untrained teacher's noise is far from the data; two samples of the data are not
    assert metrics["kad_ci"][0] > metrics["floor_kad_ci"][1]
    wavs = sorted((out / "audio").glob("*.wav"))
    assert len(wavs) == 16
    audio, rate = sf.read(str(wavs[0]))
    assert rate == 16000 and audio.shape == (128 * 512,) and np.isfinite(audio).all()
    assert wavs[0].read_bytes() != wavs[12].read_bytes()  # the same prompt, another seed
    # audio checks on the audio as decoded, before the WAV writer clips it to [-1, 1]: this
    # untrained teacher is louder than full scale, and its WAVs hold the clipped samples
    from presto_ray.eval.loudness import FULL_SCALE, rms_db

    clipped = [np.abs(sf.read(str(w), dtype="float32")[0]) >= FULL_SCALE for w in wavs]
    assert metrics["clips_at_full_scale"] == sum(c.any() for c in clipped) > 0
    assert metrics["full_scale_share"] == pytest.approx(np.mean(clipped), abs=1e-3)
    assert metrics["loudness_db_range"][1] >= rms_db([sf.read(str(w))[0] for w in wavs]).max() - 0.01
    low, high = metrics["reference_loudness_db_range"]
    lo_db, hi_db = metrics["loudness_db_range"]
    assert low < high < hi_db and lo_db <= metrics["loudness_db_median"] <= hi_db
    assert 0 < metrics["loudness_outside_share"] <= 1 and 0 <= metrics["floor_loudness_outside_share"] <= 1
    assert metrics["latent_out_of_range_share"] is None  # its statistics record no data range


@pytest.fixture(scope="module")
def lively_teacher(tmp_path_factory):
    """A teacher whose zero-initialised output layers are perturbed, so that its output depends on
    the condition and on every block (CFG and a budget schedule change what it samples)."""
    from lively import lively_export

    return lively_export(tmp_path_factory.mktemp("lively") / "export", load_config("tiny", ["sampler.steps=4"]),
                         "teacher", seed=1, step=1)


def test_the_teacher_weights_under_a_student_sampler_are_its_undistilled_control(held_out, lively_teacher, tmp_path):
    from presto_ray.eval.evaluate import Sampling, evaluate

    teacher = lively_teacher
    plain = evaluate(str(teacher), str(held_out), tmp_path / "a", n=6, batch_size=6,
                     sampling=Sampling(role="teacher", sampler="pingpong", steps=2))
    guided = evaluate(str(teacher), str(held_out), tmp_path / "b", n=6, batch_size=6,
                      sampling=Sampling(role="teacher", sampler="pingpong", steps=2, cfg_scale=4.0,
                                        schedule='{"edges": [1.0], "budgets": [6, 3]}'))
    assert (plain["sampler"], plain["steps"], plain["cfg_scale"], plain["schedule"]) == ("pingpong", 2, None, None)
    assert (guided["cfg_scale"], guided["schedule"]) == (4.0, {"edges": [1.0], "budgets": [6, 3]})
    a, b = sorted((tmp_path / "a" / "audio").glob("*.wav")), sorted((tmp_path / "b" / "audio").glob("*.wav"))
    assert all(x.read_bytes() != y.read_bytes() for x, y in zip(a, b))
    assert plain["floor_kad"] == guided["floor_kad"]  # the same reference split for every model
    # the reference loudness, cached by the first evaluation, is the same for the second
    assert plain["reference_loudness_db_range"] == guided["reference_loudness_db_range"]
    assert plain["floor_loudness_outside_share"] == guided["floor_loudness_outside_share"]


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


@pytest.fixture(scope="module")
def ranged_teacher(tmp_path_factory):
    """The ``teacher`` fixture's weights with statistics that record a data range of [-1, 1] in every
    channel: part of what it samples lies outside and is clamped before the codec."""
    cfg = load_config("tiny", ["sampler.steps=4"])
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ranged") / "export"
    stats = LatentStats(mean=torch.zeros(32), std=torch.ones(32), sigma_data=0.5, low=-torch.ones(32),
                        high=torch.ones(32))
    write_export(folder, {"teacher": EDMPrecond(DiT1D(cfg.model), 0.5).state_dict()}, cfg, stats, 1)
    return folder


def test_generation_on_ray_actors_equals_the_single_process_run(held_out, ranged_teacher, tmp_path):
    from presto_ray.eval.evaluate import Sampling, evaluate

    two, teacher = Sampling(steps=2), ranged_teacher
    local = evaluate(str(teacher), str(held_out), tmp_path / "local", n=6, sampling=two, batch_size=2)
    spread = evaluate(str(teacher), str(held_out), tmp_path / "actors", n=6, sampling=two, batch_size=2, num_workers=2)
    # the values clamped to the data's range are counted in the actors as in one process
    assert 0 < local["latent_out_of_range_share"] < 1
    assert spread["latent_out_of_range_share"] == local["latent_out_of_range_share"]
    local_wavs = sorted((tmp_path / "local" / "audio").glob("*.wav"))
    actor_wavs = sorted((tmp_path / "actors" / "audio").glob("*.wav"))
    assert [w.name for w in local_wavs] == [w.name for w in actor_wavs] and len(local_wavs) == 6
    for a, b in zip(local_wavs, actor_wavs):
        assert a.read_bytes() == b.read_bytes()
    assert spread["kad"] == pytest.approx(local["kad"])


def test_reference_embeddings_are_cached_per_shard_set(held_out, teacher, tmp_path):
    from presto_ray.eval.evaluate import Sampling, evaluate

    one = Sampling(steps=1)
    first = evaluate(str(teacher), str(held_out), tmp_path / "a", n=4, sampling=one)
    cached = list((tmp_path / "cache" / "eval").glob("reference-*.npz"))
    assert len(cached) == 1 and first["reference_cache"] == str(cached[0])
    (loudness,) = (tmp_path / "cache" / "eval").glob("loudness-*.npz")  # the reference clips' loudness
    stamp, loud_stamp = cached[0].stat().st_mtime_ns, loudness.stat().st_mtime_ns
    second = evaluate(str(teacher), str(held_out), tmp_path / "b", n=4, sampling=one)
    assert cached[0].stat().st_mtime_ns == stamp and second["floor_kad"] == first["floor_kad"]  # read, not rebuilt
    assert loudness.stat().st_mtime_ns == loud_stamp
    assert second["reference_loudness_db_range"] == first["reference_loudness_db_range"]
    evaluate(str(teacher), str(held_out), tmp_path / "c", n=4, sampling=one, reference=[str(held_out)] * 2)
    assert len(list((tmp_path / "cache" / "eval").glob("reference-*.npz"))) == 2  # another reference: another entry


def test_teacher_sampler_search_stores_its_choice_in_the_export(held_out, lively_teacher, tmp_path):
    import shutil

    from presto_ray.eval.sampler_search import grid
    from presto_ray.train.export import ExportError, load_export

    export = tmp_path / "teacher"
    shutil.copytree(lively_teacher, export)
    assert main(["sweep", "teacher-sampler", "--checkpoint", str(export), "--data", str(held_out),
                 "--out", str(tmp_path / "search"), "--steps", "1", "2", "--cfg-scales", "1", "3", "-n", "6",
                 "--batch-size", "6"]) == 0
    doc = json.loads((tmp_path / "search" / "search.json").read_text())
    assert [t["label"] for t in doc["trials"]] == ["1 steps, CFG 1", "1 steps, CFG 3", "2 steps, CFG 1", "2 steps, CFG 3"]
    assert [t["network_evals"] for t in doc["trials"]] == [1, 2, 3, 6]  # cheapest first
    best = min(doc["trials"], key=lambda t: t["kad"])
    chosen = doc["trials"][doc["chosen"]]
    assert chosen["kad_ci"][0] <= best["kad_ci"][1]  # within the best one's interval ...
    assert all(t["network_evals"] >= chosen["network_evals"] for t in doc["trials"]
               if t["kad_ci"][0] <= best["kad_ci"][1])  # ... and the cheapest such
    sampler = load_export(export).cfg.sampler
    assert (sampler.steps, sampler.cfg_scale, sampler.s_churn) == (chosen["steps"], chosen["cfg_scale"], 0.0)
    stored = json.loads((export / "sampler.json").read_text())
    assert stored["evidence"]["kad"] == chosen["kad"] and stored["evidence"]["n"] == 6
    assert load_export(lively_teacher).cfg.sampler.steps == 4  # the original untouched

    (export / "sampler.json").write_text(json.dumps({"settings": {"solver": "rk45", "cfg_scale": 2.0}}))
    with pytest.raises(ExportError, match="sampler.json"):
        load_export(export)
    with pytest.raises(ValueError, match="sampler grid is empty"):
        grid((), (1.0,))


def test_counts_below_one_are_refused_before_any_model_loads(held_out, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data", str(held_out), "--steps", "0"])
    assert err.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
