"""`prepare` end to end on the embedded default: music21 pieces rendered by FluidSynth inside a
Ray Data pipeline, encoded by the real codec and text encoder, written as validated shards to
object storage by Ray Data write tasks; a rerun renders nothing twice, and a run killed midway
loses nothing it had finished."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from presto_ray.config import load_config


@pytest.mark.timeout(600)
def test_prepare_music21_to_s3_validates_and_resumes(ray_cluster, s3_endpoint):
    from presto_ray.data.prepare import prepare
    from presto_ray.data.reader import training_dataset
    from presto_ray.data.validate import validate_shards

    cfg = load_config("tiny", ["prepare.items=12", "prepare.rows_per_shard=4", "prepare.encode_batch=4",
                               "prepare.split_fractions=[0.75,0.25,0.0]"])
    out = "s3://presto/prepared"
    manifests = prepare(cfg, out, progress=False)
    assert set(manifests) == {"train", "valid"}
    rendered = sum(m.extra["rendered_this_run"] for m in manifests.values())
    skipped = sum(sum(m.extra["skipped_this_run"].values()) for m in manifests.values())
    assert rendered == 12 and manifests["train"].num_rows + manifests["valid"].num_rows == 12 - skipped
    assert manifests["train"].num_rows >= 6
    # the shards come from the write tasks: part-<run tag>-<task index>-<n>, several tasks, one run tag
    names = [f.name for m in manifests.values() for f in m.files]
    parsed = [re.fullmatch(r"part-(\w+)-(\d{5})-(\d{5})\.parquet", n) for n in names]
    assert all(parsed), names
    assert len({p.group(1) for p in parsed}) == 1 and len({p.group(2) for p in parsed}) >= 2
    assert all(f.rows <= 4 for m in manifests.values() for f in m.files)
    for split, m in manifests.items():
        assert validate_shards(f"{out}/{split}").num_rows == m.num_rows
        assert m.latent_shape == [32, 128] and m.codec["name"] == "mel"
        assert np.isfinite(m.latent_mean).all() and min(m.latent_std) > 0

    ds, _ = training_dataset(f"{out}/train", seed=0, epoch=0, columns=["latent", "caption", "bpm", "piece_id"])
    rows = ds.take_all()
    train_pieces = {r["piece_id"] for r in rows}
    valid_pieces = {r["piece_id"] for r in training_dataset(f"{out}/valid", seed=0, epoch=0,
                                                            columns=["piece_id"])[0].take_all()}
    assert not train_pieces & valid_pieces  # no piece in two splits
    for r in rows:
        assert f"{int(r['bpm'])} BPM" in r["caption"] or re.search(r"\b%d\b" % int(r["bpm"]), r["caption"])
        assert r["latent"].shape == (32, 128) and np.isfinite(r["latent"].astype(np.float32)).all()

    again = prepare(cfg, out, progress=False)  # everything is there: nothing rendered twice
    assert sum(m.extra["rendered_this_run"] for m in again.values()) == 0
    assert {s: m.num_rows for s, m in again.items()} == {s: m.num_rows for s, m in manifests.items()}
    assert {s: m.files for s, m in again.items()} == {s: m.files for s, m in manifests.items()}

    reseeded = load_config("tiny", ["prepare.items=12", "prepare.split_fractions=[0.5,0.5,0.0]"])
    with pytest.raises(ValueError, match="other prepare settings"):  # never mix two plans in one folder
        prepare(reseeded, out, progress=False)


@pytest.mark.timeout(300)
def test_prepare_users_audio_folder(ray_cluster, tmp_path):
    """prepare.source=audio: a folder of the user's files plus a captions CSV become shards; a
    silent file is skipped and counted, captions and tempi come from the CSV."""
    import soundfile as sf

    from presto_ray.data.prepare import prepare
    from presto_ray.data.reader import training_dataset

    audio = tmp_path / "music"
    audio.mkdir()
    t = np.arange(int(22050 * 6.0)) / 22050
    for i, freq in enumerate([220.0, 330.0, 440.0, 550.0]):
        sf.write(audio / f"song{i}.wav", 0.3 * np.sin(2 * np.pi * freq * t)[:, None].repeat(2, 1), 22050)
    sf.write(audio / "quiet.flac", np.zeros(22050 * 6), 22050)
    sf.write(audio / "no_tempo.wav", 0.3 * np.sin(2 * np.pi * 660.0 * t), 22050)
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption,bpm,split\n" + "".join(
        f"song{i}.wav,a sine tone number {i},{100 + i},train\n" for i in range(4)) +
        "quiet.flac,nothing at all,,train\nno_tempo.wav,a tone of unknown tempo,,train\n")
    cfg = load_config("tiny", ["prepare.source=audio", f"prepare.audio_uri={audio}",
                               f"prepare.captions_uri={captions}", "prepare.crops_per_file=2"])
    manifests = prepare(cfg, str(tmp_path / "shards"), progress=False)
    train = manifests["train"]
    assert train.num_rows == 10 and train.extra["source"] == "audio" and train.extra["skipped_this_run"] == {"silent": 2}
    rows = training_dataset(str(tmp_path / "shards" / "train"), seed=0, epoch=0,
                            columns=["caption", "bpm", "latent"])[0].take_all()
    assert sorted({r["caption"] for r in rows}) == [f"a sine tone number {i}" for i in range(4)] + ["a tone of unknown tempo"]
    bpms = [float(r["bpm"]) for r in rows]
    assert sorted({b for b in bpms if not np.isnan(b)}) == [100.0, 101.0, 102.0, 103.0]
    assert sum(np.isnan(bpms)) == 2  # a blank bpm is stored as unknown (NaN)


def test_prepare_stages_stay_separate_operators(ray_cluster, capsys):
    """Rendering is not fused into the encoder actors (Ray Data would, for equal remote args), even
    when both stages reserve the same CPUs: renders run as parallel tasks."""
    from presto_ray.data.prepare import pipeline, plan

    cfg = load_config("tiny", ["prepare.items=4", "prepare.render_cpus=1", "prepare.encode_cpus=1"])
    rows, load_row, _ = plan(cfg)
    pipeline(cfg, rows, load_row).explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(Encoder)]" in physical
    assert "TaskPoolMapOperator[Map(_render)]" in physical
    assert "->" not in physical


@pytest.mark.slow  # ~56 s on 2 cores: kept out of the default suite's 20 minutes; CI runs it when time allows
@pytest.mark.timeout(600)
def test_prepare_killed_midway_keeps_finished_shards_and_resumes(ray_cluster, tmp_path):
    """A prepare driver is SIGKILLed once it has finished a few shards; the rerun keeps those files
    byte for byte, renders only what is missing, removes the killed run's leftovers, and the set
    validates with every planned clip exactly once."""
    from presto_ray.data.prepare import prepare
    from presto_ray.data.shards import completed_files
    from presto_ray.data.validate import validate_shards

    out = tmp_path / "prepared"
    overrides = ["prepare.rows_per_shard=2", "prepare.split_fractions=[1.0,0.0,0.0]"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "presto_ray", "prepare", "--config", "tiny", "--items", "40",
                             "--out", str(out), *overrides], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while len(completed_files(str(out / "train"), verify=False)) < 3:
            assert proc.poll() is None, "prepare ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    train = out / "train"
    kept = {name: (train / name).read_bytes() for name in completed_files(str(train))}
    assert 3 <= len(kept) < 20 and not (train / "manifest.json").exists()

    cfg = load_config("tiny", ["prepare.items=40", *overrides])
    manifest = prepare(cfg, str(out), progress=False)["train"]
    kept_rows = sum(f.rows for f in manifest.files if f.name in kept)
    skipped = sum(manifest.extra["skipped_this_run"].values())
    assert manifest.extra["rendered_this_run"] == 40 - kept_rows  # finished work is not redone
    assert manifest.num_rows == 40 - skipped
    assert all((train / name).read_bytes() == data for name, data in kept.items())
    assert set(kept) <= {f.name for f in manifest.files}
    validate_shards(str(train))  # every row once, checksums and statistics agree
    parquet_files = {p.name for p in train.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert parquet_files == {f.name for f in manifest.files}  # no half file or temporary is left
