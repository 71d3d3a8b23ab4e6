"""The ``audio`` source: a folder (or bucket) of users' audio files plus a captions file.

Real WAV/FLAC files written with soundfile (22.05 kHz stereo tones, noise, short, silent and
corrupt files), CSV and JSONL captions, 2 s crops at 16 kHz; an S3 round trip through the
loopback moto server."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from presto_ray.data import audio_source as a
from presto_ray.data.music21.split import SPLITS, split_of

FILE_SR = 22050
SR = 16000
CLIP = 2.0
N = int(CLIP * SR)
FRACTIONS = (0.6, 0.2, 0.2)
RECORD_KEYS = {"id", "split", "skip_reason", "audio", "caption", "bpm", "seconds_start", "seconds_total",
               "piece_id", "instruments", "source_metadata"}


def _tone(freq: float, seconds: float, amps=(0.4, 0.2)) -> np.ndarray:
    """Stereo sine [n, 2] at FILE_SR, channel c with amplitude amps[c]."""
    t = np.arange(int(seconds * FILE_SR)) / FILE_SR
    return np.stack([amp * np.sin(2 * np.pi * freq * t) for amp in amps], axis=1).astype(np.float32)


CAPTIONS = [  # (file, caption, bpm, split)
    ("tones/a440.wav", "A steady tone, A4 on strings", "120", ""),
    ("tones/e660.flac", "A fifth above", "", "valid"),
    ("noise.wav", "White noise, loud", "96.5", ""),
    ("short.wav", "A short tone", "", "test"),
    ("tooshort.wav", "Too short a tone", "", ""),
    ("corrupt.wav", "Broken file", "", ""),
    ("silent.flac", "Nothing at all", "", ""),
    ("cut.flac", "A truncated FLAC", "", ""),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(audio folder, captions.csv, captions.jsonl) with the files of CAPTIONS plus one unlisted file."""
    root = tmp_path_factory.mktemp("audio")
    (root / "tones").mkdir()
    sf.write(root / "tones/a440.wav", _tone(440.0, 6.0), FILE_SR, subtype="PCM_16")
    sf.write(root / "tones/e660.flac", _tone(660.0, 6.0), FILE_SR, subtype="PCM_16")
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, size=(10 * FILE_SR, 2)).astype(np.float32)
    sf.write(root / "noise.wav", noise, FILE_SR, subtype="FLOAT")
    sf.write(root / "short.wav", _tone(440.0, 1.5), FILE_SR, subtype="PCM_16")  # 75% of the clip
    sf.write(root / "tooshort.wav", _tone(440.0, 0.8), FILE_SR, subtype="PCM_16")  # 40% of the clip
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x10\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    sf.write(root / "silent.flac", np.zeros((3 * FILE_SR, 2), np.float32), FILE_SR, subtype="PCM_16")
    sf.write(root / "full.flac", _tone(440.0, 8.0), FILE_SR, subtype="PCM_16")
    data = (root / "full.flac").read_bytes()
    (root / "cut.flac").write_bytes(data[: len(data) // 3])
    (root / "full.flac").unlink()
    sf.write(root / "unlisted.wav", _tone(220.0, 3.0), FILE_SR)
    captions = tmp_path_factory.mktemp("captions")
    csv_path = captions / "captions.csv"
    lines = ["file,caption,bpm,split"] + [f'{f},"{c}",{b},{s}' for f, c, b, s in CAPTIONS]
    csv_path.write_text("\n".join(lines) + "\n")
    jsonl_path = captions / "captions.jsonl"
    jsonl_path.write_text("\n".join(json.dumps({"file": f, "caption": c, "bpm": float(b) if b else None,
                                                **({"split": s} if s else {})}) for f, c, b, s in CAPTIONS) + "\n")
    return root, csv_path, jsonl_path


def _plan(audio, captions, **kw):
    args = dict(clip_seconds=CLIP, sample_rate=SR, split_fractions=FRACTIONS, split_seed=0, seed=0)
    args.update(kw)
    return a.plan_audio_items(str(audio), str(captions), **args)


def _row(rows, path, k=0):
    return next(r for r in rows if r["id"] == f"{path}-c{k}")


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec)) * sr / len(x)


# ----------------------------------------------------------------------------- plan

def test_plan_rows_from_csv_and_jsonl(corpus):
    root, csv_path, jsonl_path = corpus
    rows = _plan(root, csv_path, crops_per_file=2)
    assert len(rows) == 2 * len(CAPTIONS)
    assert {r["path"] for r in rows} == {f for f, *_ in CAPTIONS}  # the unlisted file is not used
    a440 = _row(rows, "tones/a440.wav", 1)
    assert a440 == {
        "id": "tones/a440.wav-c1", "split": split_of("tones/a440.wav", FRACTIONS, 0),
        "audio_uri": f"{root}/tones/a440.wav", "path": "tones/a440.wav", "caption": "A steady tone, A4 on strings",
        "bpm": 120.0, "crop_index": 1, "crops_per_file": 2, "clip_seconds": CLIP, "sample_rate": SR, "seed": 0,
        "captions_line": 2,
    }
    assert math.isnan(_row(rows, "tones/e660.flac")["bpm"]) and _row(rows, "noise.wav")["bpm"] == 96.5
    # explicit splits are honoured, the others follow the hash of the path; crops of a file stay together
    assert _row(rows, "tones/e660.flac")["split"] == "valid" and _row(rows, "short.wav", 1)["split"] == "test"
    for f, _, _, s in CAPTIONS:
        assert {r["split"] for r in rows if r["path"] == f} == {s or split_of(f, FRACTIONS, 0)}
    order = [SPLITS.index(r["split"]) for r in rows]
    assert order == sorted(order)  # train, then valid, then test
    # JSONL gives the same plan (lines shift by the CSV header); file:// the same items
    from_jsonl = _plan(root, jsonl_path, crops_per_file=2)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("captions_line", "bpm")} for r in rs]  # noqa: E731
    assert strip(from_jsonl) == strip(rows)
    assert [r["captions_line"] for r in from_jsonl] == [r["captions_line"] - 1 for r in rows]
    file_uri = _plan(f"file://{root}", csv_path, crops_per_file=2)
    assert [r["id"] for r in file_uri] == [r["id"] for r in rows]
    assert file_uri[0]["audio_uri"].startswith(f"file://{root}/")


def test_split_assignment_is_by_file_deterministic_and_seed_independent(tmp_path):
    audio = tmp_path / "audio"
    (audio / "album").mkdir(parents=True)
    names = [f"album/track{i:02d}.wav" for i in range(60)]
    for name in names:
        (audio / name).write_bytes(b"")  # planning lists files, it never decodes them
    explicit = {"album/track00.wav": "test", "album/track01.wav": "train"}
    (tmp_path / "c.csv").write_text("file,caption,split\n" + "".join(
        f"{n},song {i},{explicit.get(n, '')}\n" for i, n in enumerate(names)))
    plan = lambda **kw: _plan(audio, tmp_path / "c.csv", crops_per_file=3, **kw)  # noqa: E731
    rows = plan()
    split = {r["path"]: r["split"] for r in rows}
    assert all(r["split"] == split[r["path"]] for r in rows) and len(rows) == 180
    assert split["album/track00.wav"] == "test" and split["album/track01.wav"] == "train"
    counts = {s: sum(v == s for v in split.values()) for s in SPLITS}
    assert counts["train"] > counts["valid"] > 0 and counts["test"] > 0, counts
    assert plan() == rows  # deterministic
    assert {r["path"]: r["split"] for r in plan(seed=7)} == split  # the crop seed never moves a file
    moved = {r["path"]: r["split"] for r in plan(split_seed=1)}
    assert moved != split and all(moved[n] == s for n, s in explicit.items())
    assert {r["split"] for r in plan(split_fractions=(0.0, 0.0, 1.0)) if r["path"] not in explicit} == {"test"}


CSV_ERRORS = [  # (captions text, line named, phrase in the message)
    ("name,caption\na.wav,x\n", 1, "missing column 'file'"),
    ("file,text\na.wav,x\n", 1, "missing column 'caption'"),
    ("file,caption\na.wav,x\nb.wav,  \n", 3, "empty caption for 'b.wav'"),
    ("file,caption\na.wav,x\nc.wav,y\n", 3, "file 'c.wav' is not in"),
    ("file,caption\nnotes.txt,x\n", 2, "unknown audio extension"),
    ("file,caption,bpm\na.wav,x,fast\n", 2, "bad bpm 'fast'"),
    ("file,caption,bpm\na.wav,x,-3\n", 2, "bad bpm '-3'"),
    ("file,caption,split\na.wav,x,training\n", 2, "unknown split 'training'"),
    ("file,caption\na.wav,x\nb.wav,y\na.wav,z\n", 4, "listed again (first on line 2)"),
    ("file,caption\n../a.wav,x\n", 2, "outside the audio folder"),
    ("file,caption\na.wav,x,extra\n", 2, "3 fields but the header has 2 columns"),
]
JSONL_ERRORS = [
    ('{"file": "a.wav", "caption": "x"}\n{"file": "b.wav", "caption": "y"\n', 2, "not valid JSON"),
    ('{"file": "a.wav", "caption": "x"}\n\n{"file": "b.wav"}\n', 3, "missing field 'caption'"),
    ('{"file": "a.wav", "caption": "x", "bpm": true}\n', 1, "bad bpm True"),
    ('["a.wav", "x"]\n', 1, "expected a JSON object"),
    ('{"path": "sub/a.wav", "caption": "x"}\n', 1, "file 'sub/a.wav' is not in"),
]


@pytest.mark.parametrize("ext,text,line,phrase",
                         [(".csv", *c) for c in CSV_ERRORS] + [(".jsonl", *c) for c in JSONL_ERRORS])
def test_bad_captions_are_refused_naming_file_and_line(tmp_path, ext, text, line, phrase):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", _tone(440.0, 0.1), FILE_SR)
    sf.write(audio / "b.wav", _tone(440.0, 0.1), FILE_SR)
    captions = tmp_path / f"captions{ext}"
    captions.write_text(text)
    with pytest.raises(ValueError) as err:
        _plan(audio, captions)
    assert f"{captions} line {line}: " in str(err.value) and phrase in str(err.value), str(err.value)


def test_every_bad_line_is_reported_and_odd_captions_files_refused(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", _tone(440.0, 0.1), FILE_SR)
    captions = tmp_path / "c.csv"
    captions.write_text("file,caption,bpm\na.wav,x,0\nmissing.flac,y,\na.wav,,\n")
    with pytest.raises(ValueError) as err:
        _plan(audio, captions)
    msg = str(err.value)
    assert f"{captions} line 2: bad bpm '0'" in msg and f"{captions} line 4: empty caption" in msg
    assert f"{captions} line 3: file 'missing.flac' is not in '{audio}'" in msg
    (tmp_path / "c.txt").write_text("file,caption\na.wav,x\n")
    with pytest.raises(ValueError, match=r"c\.txt'?: unknown extension '\.txt'"):
        _plan(audio, tmp_path / "c.txt")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl' lists no audio files"):
        _plan(audio, tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _plan(tmp_path / "nowhere", tmp_path / "empty.jsonl")


# ----------------------------------------------------------------------------- load

def test_load_gives_exact_length_mono_and_right_pitch(corpus):
    root, csv_path, _ = corpus
    rows = _plan(root, csv_path)
    for path, freq in (("tones/a440.wav", 440.0), ("tones/e660.flac", 660.0)):
        record, reason = a.load_audio_item(_row(rows, path))
        assert reason is None and set(record) == RECORD_KEYS
        audio = record["audio"]
        assert audio.dtype == np.float32 and audio.shape == (N,)
        assert abs(_dominant_hz(audio, SR) - freq) / freq < 0.02
        # mono = mean of the channels (0.4 and 0.2 amplitude): RMS 0.3 / sqrt(2)
        assert float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) == pytest.approx(0.3 / math.sqrt(2), rel=0.02)
        assert record["piece_id"] == path and record["instruments"] == "" and record["skip_reason"] == ""
        assert record["seconds_total"] == pytest.approx(6.0) and 0 <= record["seconds_start"] <= 6.0 - CLIP
        meta = json.loads(record["source_metadata"])
        assert (meta["path"], meta["sample_rate"], meta["channels"], meta["duration"]) == (path, FILE_SR, 2, 6.0)
    a440, _ = a.load_audio_item(_row(rows, "tones/a440.wav"))
    assert a440["bpm"].dtype == np.float32 and a440["bpm"] == 120.0
    assert a440["caption"] == "A steady tone, A4 on strings"
    e660, _ = a.load_audio_item(_row(rows, "tones/e660.flac"))
    assert np.isnan(e660["bpm"]) and e660["split"] == "valid"


def test_crops_are_deterministic_spread_and_equal_the_whole_file_resampled(corpus):
    root, csv_path, _ = corpus
    rows = [r for r in _plan(root, csv_path, crops_per_file=3) if r["path"] == "noise.wav"]
    records = [a.load_audio_item(r)[0] for r in rows]
    again = [a.load_audio_item(r)[0] for r in rows]
    assert all(np.array_equal(x["audio"], y["audio"]) for x, y in zip(records, again))
    starts = [json.loads(r["source_metadata"])["start_sample"] for r in records]
    total = math.ceil(10 * SR)
    for k, start in enumerate(starts):  # crop k lies in the k-th third of the possible starts
        assert k * (total - N + 1) / 3 <= start < (k + 1) * (total - N + 1) / 3
        assert records[k]["seconds_start"] == pytest.approx(start / SR, abs=1e-6)
    other_seed = [a.load_audio_item({**r, "seed": 5})[0] for r in rows]
    assert [json.loads(r["source_metadata"])["start_sample"] for r in other_seed] != starts
    data, _ = sf.read(root / "noise.wav", dtype="float32", always_2d=True)
    full = torchaudio.functional.resample(torch.from_numpy(data.mean(axis=1)), FILE_SR, SR).numpy()
    assert len(full) == total
    for start, rec in zip(starts, records):
        np.testing.assert_allclose(rec["audio"], full[start: start + N], atol=1e-5)


def test_short_file_is_padded_and_too_short_file_skipped(corpus):
    root, csv_path, _ = corpus
    rows = _plan(root, csv_path, crops_per_file=2)
    for k in range(2):
        record, reason = a.load_audio_item(_row(rows, "short.wav", k))
        assert reason is None
        audio, real = record["audio"], int(1.5 * SR)
        assert audio.shape == (N,) and record["seconds_start"] == 0.0
        assert np.all(audio[real:] == 0.0) and np.sqrt(np.mean(audio[:real] ** 2)) > 0.2
        assert json.loads(record["source_metadata"])["padded_samples"] == N - real
    record, reason = a.load_audio_item(_row(rows, "tooshort.wav"))
    assert record is None and reason.startswith("too short: tooshort.wav: 0.80 s"), reason


def test_corrupt_truncated_and_silent_files_are_skipped_with_reasons(corpus):
    root, csv_path, _ = corpus
    rows = _plan(root, csv_path)
    for path, prefix in (("corrupt.wav", "decode failed: corrupt.wav: "), ("cut.flac", "decode failed: cut.flac: "),
                         ("silent.flac", "silent: silent.flac: clip rms 0.00e+00")):
        record, reason = a.load_audio_item(_row(rows, path))
        assert record is None and reason.startswith(prefix), reason
        skip = a.render_audio_row(_row(rows, path))  # same columns as a good row, reason set
        assert set(skip) == RECORD_KEYS and skip["skip_reason"] == reason and skip["id"] == f"{path}-c0"
        assert skip["audio"].shape == (N,) and skip["audio"].dtype == np.float32


def test_rendered_rows_stream_through_ray_data(corpus, ray_cluster):
    """Good and skipped rows in separate blocks combine into one numpy batch (prepare's path)."""
    import ray.data

    root, csv_path, _ = corpus
    rows = _plan(root, csv_path)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(a.render_audio_row)
    [batch] = list(ds.iter_batches(batch_size=len(rows), batch_format="numpy"))
    assert set(batch) == RECORD_KEYS and batch["audio"].shape == (len(rows), N)
    reasons = {str(i): str(r).split(":")[0] for i, r in zip(batch["id"], batch["skip_reason"])}
    assert reasons == {"tones/a440.wav-c0": "", "tones/e660.flac-c0": "", "noise.wav-c0": "", "short.wav-c0": "",
                       "tooshort.wav-c0": "too short", "corrupt.wav-c0": "decode failed",
                       "silent.flac-c0": "silent", "cut.flac-c0": "decode failed"}
    i = list(batch["id"]).index("tones/a440.wav-c0")
    assert np.array_equal(batch["audio"][i], a.load_audio_item(_row(rows, "tones/a440.wav"))[0]["audio"])


def test_s3_round_trip_equals_local(corpus, s3_endpoint):
    import boto3

    root, csv_path, jsonl_path = corpus
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "presto", f"user-audio/music/{path.relative_to(root).as_posix()}")
    s3.upload_file(str(jsonl_path), "presto", "user-audio/captions.jsonl")
    remote = _plan("s3://presto/user-audio/music", "s3://presto/user-audio/captions.jsonl", crops_per_file=2)
    local = _plan(root, jsonl_path, crops_per_file=2)
    assert [r["audio_uri"] for r in remote] == [f"s3://presto/user-audio/music/{r['path']}" for r in local]
    assert [{**r, "audio_uri": ""} for r in remote] == [{**r, "audio_uri": ""} for r in local]
    for path in ("tones/a440.wav", "tones/e660.flac", "noise.wav"):
        got, want = a.load_audio_item(_row(remote, path, 1))[0], a.load_audio_item(_row(local, path, 1))[0]
        assert np.array_equal(got["audio"], want["audio"])
        assert set(got) == RECORD_KEYS
        for key in RECORD_KEYS - {"audio"}:
            np.testing.assert_equal(got[key], want[key])  # NaN bpm counts as equal
    record, reason = a.load_audio_item(_row(remote, "corrupt.wav"))
    assert record is None and reason.startswith("decode failed: corrupt.wav: ")
    s3.put_object(Bucket="presto", Key="user-audio/captions.csv", Body=b"file,caption\ngone.wav,x\n")
    gone = r"captions.csv line 2: file 'gone.wav' is not in 's3://presto/user-audio/music'"
    with pytest.raises(ValueError, match=gone):
        _plan("s3://presto/user-audio/music", "s3://presto/user-audio/captions.csv")
    with pytest.raises(FileNotFoundError, match="s3://presto/user-audio/music/none.wav"):
        a.load_audio_item({**_row(remote, "noise.wav"), "audio_uri": "s3://presto/user-audio/music/none.wav"})
