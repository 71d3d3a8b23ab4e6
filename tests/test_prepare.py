"""`prepare` end to end on the embedded default: music21 pieces rendered by FluidSynth inside a
Ray Data pipeline, encoded by the real codec and text encoder, written as validated shards to
object storage; a rerun renders nothing twice."""

from __future__ import annotations

import re

import numpy as np
import pytest

from presto_ray.config import load_config


@pytest.mark.timeout(600)
def test_prepare_music21_to_s3_validates_and_resumes(ray_cluster, s3_endpoint):
    from presto_ray.data.prepare import prepare
    from presto_ray.data.reader import training_dataset
    from presto_ray.data.validate import validate_shards

    cfg = load_config("tiny", ["prepare.items=12", "prepare.rows_per_shard=4", "prepare.split_fractions=[0.75,0.25,0.0]"])
    out = "s3://presto/prepared"
    manifests = prepare(cfg, out, progress=False)
    assert set(manifests) == {"train", "valid"}
    rendered = sum(m.extra["rendered_this_run"] for m in manifests.values())
    skipped = sum(sum(m.extra["skipped_this_run"].values()) for m in manifests.values())
    assert rendered == 12 and manifests["train"].num_rows + manifests["valid"].num_rows == 12 - skipped
    assert manifests["train"].num_rows >= 6
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
