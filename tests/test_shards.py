"""Latent shards: writer (refusals, atomic files, resume), manifest statistics, validation, retries."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from presto_ray.data import storage
from presto_ray.data.shards import SCHEMA_VERSION, Manifest, ShardWriter, completed_files, read_manifest
from presto_ray.cli import main
from presto_ray.data.validate import ShardValidationError, check_against_model, validate_shards

C, T, L, DT = 32, 128, 32, 384
CODEC = {"name": "mel", "sample_rate": 16000, "n_mels": 32}
TEXT = {"name": "minilm", "max_tokens": L}


def make_rows(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    """n synthetic rows: latent [C, T] float16 (channel c has mean c/8), text_states [L, Dt]."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        latent = rng.normal(size=(C, T)) * 0.5 + np.arange(C)[:, None] / 8
        mask = np.zeros(L, dtype=bool)
        mask[: 5 + i % 7] = True
        rows.append({"id": f"row-{i:04d}", "latent": latent.astype(np.float16), "caption": f"piece {i} at {60 + i} BPM",
                     "text_states": rng.normal(size=(L, DT)).astype(np.float16), "text_mask": mask,
                     "bpm": np.float32(60 + i), "seconds_start": np.float32(0.0), "seconds_total": np.float32(4.0),
                     "split": "train", "source": "synthetic"})
    return rows


def writer(uri: str, rows_per_shard: int = 4) -> ShardWriter:
    return ShardWriter(uri, rows_per_shard=rows_per_shard, latent_shape=(C, T), text_shape=(L, DT),
                       codec_identity=CODEC, text_identity=TEXT, metadata_columns=("split", "source"))


def write_folder(uri: str, rows: list[dict], rows_per_shard: int = 4) -> Manifest:
    w = writer(uri, rows_per_shard)
    w.add_rows(rows)
    return w.close(extra={"skipped_pieces": 1})


def read_back(folder) -> list[dict]:
    out = []
    for name in sorted(p.name for p in folder.glob("part-*.parquet")):
        out += pq.read_table(folder / name).to_pylist()
    return out


def test_round_trip_local_manifest_and_stats(tmp_path):
    rows = make_rows(10)
    manifest = write_folder(str(tmp_path / "shards"), rows)
    folder = tmp_path / "shards"
    assert [f.name for f in manifest.files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [f.rows for f in manifest.files] == [4, 4, 2] and manifest.num_rows == 10
    for f in manifest.files:
        data = (folder / f.name).read_bytes()
        assert f.sha256 == hashlib.sha256(data).hexdigest() and f.bytes == len(data)
    assert manifest.extra == {"skipped_pieces": 1}
    assert manifest.codec == CODEC and manifest.text_encoder == TEXT
    assert manifest.latent_shape == [C, T] and manifest.text_shape == [L, DT]

    # per-channel statistics over every value of the data, as numpy computes them
    lat = np.stack([r["latent"] for r in rows]).astype(np.float64)  # [N, C, T]
    np.testing.assert_allclose(manifest.latent_mean, lat.mean(axis=(0, 2)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(manifest.latent_std, lat.transpose(1, 0, 2).reshape(C, -1).std(axis=1, ddof=1),
                               rtol=1e-9)
    np.testing.assert_array_equal(manifest.latent_min, lat.min(axis=(0, 2)))  # the range over all shards
    np.testing.assert_array_equal(manifest.latent_max, lat.max(axis=(0, 2)))
    stats = manifest.latent_stats(sigma_data=0.5)
    assert stats.mean.shape == (C,) and stats.sigma_data == 0.5
    assert abs(float(stats.mean[8]) - 1.0) < 0.05  # channel c has mean c / 8
    np.testing.assert_array_equal(stats.high.numpy(), lat.max(axis=(0, 2)).astype(np.float32))

    # the manifest on disk parses to the same object; rows read back equal what was written
    assert read_manifest(str(folder)) == manifest == Manifest.from_json(manifest.to_json())
    back = read_back(folder)
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    for got, want in zip(back, rows):
        assert got["caption"] == want["caption"] and got["split"] == "train"
        np.testing.assert_array_equal(np.frombuffer(got["latent"], "<f2").reshape(C, T), want["latent"])
        np.testing.assert_array_equal(np.frombuffer(got["text_states"], "<f2").reshape(L, DT), want["text_states"])
        np.testing.assert_array_equal(np.frombuffer(got["text_mask"], bool), want["text_mask"])
    assert validate_shards(str(folder)) == manifest
    assert completed_files(str(folder)) == {f.name for f in manifest.files}


@pytest.mark.parametrize("bad, message", [
    (lambda r: r.update(latent=r["latent"][:, :64]), r"row-0003.*latent has shape \(32, 64\)"),
    (lambda r: r["latent"].__setitem__((2, 5), np.nan), r"row-0003.*latent holds 1 NaN/Inf"),
    (lambda r: r.update(latent=r["latent"].astype(np.float32) * 1e6), r"row-0003.*latent holds .* NaN/Inf"),
    (lambda r: r["text_states"].__setitem__((0, 0), np.inf), r"row-0003.*text_states holds 1 NaN/Inf"),
    (lambda r: r.update(caption="  "), r"row-0003.*empty caption"),
    (lambda r: r.update(text_mask=np.ones(L + 1, bool)), r"row-0003.*text_mask has shape"),
])
def test_bad_rows_refused_at_write_time(tmp_path, bad, message):
    rows = make_rows(6)
    bad(rows[3])
    w = writer(str(tmp_path / "s"))
    w.add_rows(rows[:3])
    with pytest.raises(ValueError, match=message):
        w.add(rows[3])
    w.add_rows(rows[4:])
    manifest = w.close()
    assert manifest.num_rows == 5
    assert "row-0003" not in {r["id"] for r in read_back(tmp_path / "s")}


def test_check_against_model_names_the_key(tmp_path):
    manifest = write_folder(str(tmp_path / "s"), make_rows(3))
    check_against_model(manifest, latent_channels=C, latent_frames=T, text_tokens=L, text_dim=DT)
    with pytest.raises(ValueError, match=r"latent_shape\[1\] = 128 .*model.latent_frames = 64"):
        check_against_model(manifest, latent_channels=C, latent_frames=64, text_tokens=L, text_dim=DT)
    with pytest.raises(ValueError, match=r"text_shape\[1\] = 384 .*model.text_dim = 768"):
        check_against_model(manifest, latent_channels=C, latent_frames=T, text_tokens=L, text_dim=768)


def test_manifest_parse_errors_name_the_key():
    good = json.loads(Manifest(SCHEMA_VERSION, {}, {}, [2, 3], [4, 5], [0.0, 0.0], [1.0, 1.0], 0, []).to_json())
    with pytest.raises(ValueError, match="lacks key 'latent_std'"):
        Manifest.from_json(json.dumps({k: v for k, v in good.items() if k != "latent_std"}))
    with pytest.raises(ValueError, match="'latent_mean' has 1 values"):
        Manifest.from_json(json.dumps({**good, "latent_mean": [0.0]}))
    with pytest.raises(ValueError, match="not valid JSON"):
        Manifest.from_json("{\"schema_version\": 1, ")
    with pytest.raises(ValueError, match=r"'schema_version' is 1, this code reads 2: run `presto-ray prepare` again"):
        Manifest.from_json(json.dumps({**good, "schema_version": 1}))  # fixed_size_list shards of version 1
    with pytest.raises(ValueError, match="'latent_max' has 3 values, latent_shape says 2"):
        Manifest.from_json(json.dumps({**good, "latent_min": [0.0, 0.0], "latent_max": [1.0, 1.0, 1.0]}))
    # a manifest written before the range was recorded reads with no range, and its stats bound nothing
    old = Manifest.from_json(json.dumps({k: v for k, v in good.items() if k not in ("latent_min", "latent_max")}))
    assert old.latent_min == [] and old.latent_stats(1.0).low is None


def test_fixed_columns_round_trip_slices_chunks_and_refusals():
    """fixed_column -> fixed_values is exact for float16 and bool arrays, also for a slice (Arrow
    offset) and a chunked column; a column of another width is refused naming the column."""
    import pyarrow as pa

    from presto_ray.data.shards import fixed_column, fixed_values

    rng = np.random.default_rng(3)
    latent = rng.standard_normal((9, C, T)).astype(np.float16)
    mask = rng.random((9, L)) < 0.5
    col, mcol = fixed_column("latent", latent), fixed_column("text_mask", mask)
    assert col.type == pa.binary(C * T * 2) and mcol.type == pa.binary(L)
    np.testing.assert_array_equal(fixed_values(col, "latent", (C, T)), latent)
    np.testing.assert_array_equal(fixed_values(col.slice(3, 4), "latent", (C, T)), latent[3:7])
    np.testing.assert_array_equal(fixed_values(mcol.slice(5), "text_mask", (L,)), mask[5:])
    chunked = pa.chunked_array([col.slice(0, 2), col.slice(2)])
    np.testing.assert_array_equal(fixed_values(chunked, "latent", (C, T)), latent)
    assert fixed_values(col.slice(0, 0), "latent", (C, T)).shape == (0, C, T)
    with pytest.raises(ValueError, match=r"column 'latent' has type fixed_size_binary\[8192\], expected fixed_size_binary\[4096\]"):
        fixed_values(col, "latent", (C, T // 2))


def _rewrite_manifest(folder, change) -> None:
    d = json.loads((folder / "manifest.json").read_text())
    change(d)
    (folder / "manifest.json").write_text(json.dumps(d))


def _nan_latent(r: dict) -> None:
    """NaN in one latent value of the row ``r``."""
    latent = np.frombuffer(r["latent"], "<f2").copy()
    latent[0] = np.nan
    r["latent"] = latent.tobytes()


def _put_nan_row(folder, name: str, row: int) -> str:
    """Rewrite shard ``name`` with NaN in ``row``'s latent and make the manifest agree on bytes/sha;
    returns the row's id."""
    return _edit_row(folder, name, row, _nan_latent)


def _edit_row(folder, name: str, row: int, edit) -> str:
    """Rewrite shard ``name`` with ``edit(row dict)`` applied to ``row``; the manifest's bytes and
    sha256 follow, so only the row's content is wrong. Returns the row's id."""
    table = pq.read_table(folder / name)
    rows = table.to_pylist()
    edit(rows[row])
    pq.write_table(table.from_pylist(rows, schema=table.schema), folder / name)
    data = (folder / name).read_bytes()

    def change(d):
        entry = next(f for f in d["files"] if f["name"] == name)
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _rewrite_manifest(folder, change)
    return rows[row]["id"]


def _truncate(folder):
    path = folder / "part-00001.parquet"
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(folder):
    path = folder / "part-00001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _row_count(folder):
    _rewrite_manifest(folder, lambda d: d["files"][1].update(rows=5))


@pytest.mark.parametrize("damage, messages", [
    (_truncate, [r"part-00001.parquet: \d+ bytes, the manifest says", r"part-00001.parquet: not a readable Parquet"]),
    (_flip_byte, [r"part-00001.parquet: sha256 differs"]),
    (_row_count, [r"part-00001.parquet: 4 rows, the manifest says 5", r"num_rows 10 differs"]),
    (lambda f: (f / "part-00001.parquet").unlink(), [r"part-00001.parquet: listed in manifest.json but missing"]),
    (lambda f: _put_nan_row(f, "part-00002.parquet", 1),
     [r"part-00002.parquet: row 1 \(id 'row-0009'\): latent has NaN/Inf"]),
])
def test_validate_names_the_file(tmp_path, damage, messages):
    folder = tmp_path / "s"
    write_folder(str(folder), make_rows(10))
    damage(folder)
    with pytest.raises(ShardValidationError) as err:
        validate_shards(str(folder))
    for m in messages:
        assert any(re.search(m, p) for p in err.value.problems), (m, err.value.problems)
    assert all("part-00000" not in p for p in err.value.problems)  # intact files are not blamed


def test_validate_manifest_missing_or_garbled(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        validate_shards(str(tmp_path / "nothing"))
    folder = tmp_path / "s"
    write_folder(str(folder), make_rows(3))
    (folder / "manifest.json").write_text("{\"schema_version\": 1")
    with pytest.raises(ValueError, match=r"manifest.json: manifest is not valid JSON"):
        validate_shards(str(folder))


def test_validate_command_prints_a_table_and_exits_2_on_any_problem(tmp_path, capsys):
    folder = tmp_path / "s"
    write_folder(str(folder), make_rows(10))
    assert main(["validate", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "bytes", "sha256", "schema", "rows", "nan_rows", "empty_captions", "problems"]
    assert [line.split()[2:] for line in lines[1:4]] == [["ok", "ok", str(n), "0", "0", "0"] for n in (4, 4, 2)]
    assert lines[4] == "3 of 3 files checked, 10 rows in the manifest: clean" and len(lines) == 5

    _edit_row(folder, "part-00000.parquet", 1, lambda r: r.update(caption="   "))
    _flip_byte(folder)  # part-00001: same size, other bytes
    _put_nan_row(folder, "part-00002.parquet", 1)
    assert main(["validate", str(folder)]) == 2
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert rows["part-00000.parquet"][1:] == ["ok", "ok", "4", "0", "1", "1"]
    assert rows["part-00001.parquet"][1] == "differs"
    assert rows["part-00002.parquet"][1:] == ["ok", "ok", "2", "1", "0", "1"]
    problems = [line for line in lines if line.startswith("  - ")]
    assert "  - part-00000.parquet: row 1 (id 'row-0001'): empty caption" in problems
    assert "  - part-00001.parquet: sha256 differs from the manifest (corrupt or changed file)" in problems
    assert "  - part-00002.parquet: row 1 (id 'row-0009'): latent has NaN/Inf values" in problems
    assert lines[4].startswith("3 of 3 files checked, 10 rows in the manifest: ") and lines[4].endswith(" problems")

    assert main(["validate", str(tmp_path / "nothing")]) == 2  # no manifest: one line naming it
    assert "manifest.json" in capsys.readouterr().err


def _interrupted(uri: str, rows: list[dict]) -> None:
    """A writer that dies (an exception from the row source) while its third shard is buffered."""
    def source():
        yield from rows[:9]
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        with writer(uri) as w:
            w.add_rows(source())


def _resume_and_check(uri: str, rows: list[dict], digest) -> Manifest:
    w = writer(uri)
    assert w.completed == {"part-00000.parquet", "part-00001.parquet"}
    assert w.completed_ids == {r["id"] for r in rows[:8]}
    with pytest.raises(ValueError, match="row-0002.*already stored in part-00000.parquet"):
        w.add(rows[2])
    w.add_rows(r for r in rows if r["id"] not in w.completed_ids)
    manifest = w.close()
    assert manifest.num_rows == 10 and [f.rows for f in manifest.files] == [4, 4, 2]
    assert digest("part-00000.parquet") == manifest.files[0].sha256  # finished files kept untouched
    assert validate_shards(uri).num_rows == 10
    return manifest


def test_interrupted_writer_resumes_without_losing_files(tmp_path):
    rows = make_rows(10)
    folder = tmp_path / "s"
    _interrupted(str(folder), rows)
    before = {p.name: p.read_bytes() for p in folder.glob("part-*.parquet")}
    assert sorted(before) == ["part-00000.parquet", "part-00001.parquet"]  # the buffered row never became a file
    assert not (folder / "manifest.json").exists()
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    # debris of a crash in the middle of a write: a temporary and a final-named file without sidecar
    (folder / ".part-00002.parquet.tmp-dead").write_bytes(b"PAR1 half")
    (folder / "part-00002.parquet").write_bytes(b"PAR1 half written")
    manifest = _resume_and_check(str(folder), rows,
                                 lambda n: hashlib.sha256((folder / n).read_bytes()).hexdigest())
    assert (folder / "part-00000.parquet").read_bytes() == before["part-00000.parquet"]
    assert not (folder / ".part-00002.parquet.tmp-dead").exists()
    assert sorted(p.name for p in folder.glob("part-*")) == [f.name for f in manifest.files]


def test_interrupted_writer_on_s3(s3_endpoint, tmp_path):
    import pyarrow.fs as pafs

    uri = "s3://presto/interrupted"
    rows = make_rows(10)
    _interrupted(uri, rows)
    fs, base = storage.resolve(uri)
    names = storage.list_dir(uri)
    assert "manifest.json" not in names and {"part-00000.parquet", "part-00001.parquet"} <= set(names)
    assert "part-00002.parquet" not in names
    # a staged upload left by a crash, and a final-named object without sidecar
    with fs.open_output_stream(f"{base}/_staging/part-00002.parquet.dead") as f:
        f.write(b"PAR1 half")
    with fs.open_output_stream(f"{base}/part-00002.parquet") as f:
        f.write(b"PAR1 half written")

    def digest(name):
        with fs.open_input_stream(f"{base}/{name}") as f:
            return hashlib.sha256(f.read()).hexdigest()
    _resume_and_check(uri, rows, digest)
    staged = fs.get_file_info(pafs.FileSelector(f"{base}/_staging", allow_not_found=True))
    assert staged == []


def test_rerun_with_other_identity_is_refused(tmp_path):
    write_folder(str(tmp_path / "s"), make_rows(3))
    with pytest.raises(ValueError, match=r"different \['codec'\]"):
        ShardWriter(str(tmp_path / "s"), rows_per_shard=4, latent_shape=(C, T), text_shape=(L, DT),
                    codec_identity={"name": "vae"}, text_identity=TEXT, metadata_columns=("split", "source"))
    assert (tmp_path / "s" / "manifest.json").exists()  # the refusal changed nothing


def test_s3_permanent_error_fails_at_once_with_uri(s3_endpoint):
    import time

    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="shard folder 's3://no-such-bucket/shards': bucket 'no-such-bucket' does not exist"):
        writer("s3://no-such-bucket/shards")
    assert time.monotonic() - t0 < 3.0
    # a permanent error in the middle of the work (the bucket removed under a running writer)
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="doomed")
    w = writer("s3://doomed/shards")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").delete_bucket(Bucket="doomed")
    t0 = time.monotonic()
    message = r"uploading 's3://doomed/shards/part-00000.parquet' failed: .*NO_SUCH_BUCKET"
    with pytest.raises(OSError, match=message) as err:
        w.add_rows(make_rows(4))
    assert time.monotonic() - t0 < 3.0 and "attempts" not in str(err.value) and "test-secret" not in str(err.value)


def test_retries_transient_then_fails_permanent(monkeypatch):
    sleeps, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("When uploading part: AWS Error SLOW_DOWN during UploadPart operation: Please reduce")
        return "done"

    assert storage.with_retries(flaky, "s3://b/k", what="uploading", base_delay=0.1, sleep=sleeps.append) == "done"
    assert len(calls) == 3 and len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    calls.clear()

    def denied():
        calls.append(1)
        raise OSError("AWS Error ACCESS_DENIED during PutObject: signature for very-secret-value")

    with pytest.raises(OSError, match="uploading 's3://b/k' failed") as err:
        storage.with_retries(denied, "s3://b/k", what="uploading", sleep=sleeps.append)
    assert len(calls) == 1 and "very-secret-value" not in str(err.value)
    with pytest.raises(OSError, match="after 2 attempts"):
        storage.with_retries(lambda: (_ for _ in ()).throw(ConnectionResetError("reset")), "s3://b/k",
                             what="reading", attempts=2, sleep=sleeps.append)


class ResettingProxy:
    """A TCP proxy to ``target`` that resets (RST) the first ``resets`` connections it accepts."""

    def __init__(self, target: tuple[str, int], resets: int):
        self.target, self.resets, self.reset_count = target, resets, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import struct

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.reset_count < self.resets:
                self.reset_count += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


def test_s3_transient_resets_are_retried(s3_endpoint, monkeypatch):
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = ResettingProxy((host, int(port)), resets=6)
    monkeypatch.setenv("PRESTO_S3_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
    try:
        manifest = write_folder("s3://presto/flaky", make_rows(5))
    finally:
        proxy.close()
    assert proxy.reset_count == 6
    monkeypatch.setenv("PRESTO_S3_ENDPOINT", s3_endpoint)
    assert validate_shards("s3://presto/flaky") == manifest and manifest.num_rows == 5
