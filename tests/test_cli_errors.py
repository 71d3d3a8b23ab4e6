"""One error contract: an input error raised inside Ray (a Ray Data operator, a task, a Train
worker) reaches the CLI as one line naming the file, row or key, with exit 2; the traceback only
behind --verbose. Run storage that cannot be reached is refused before any data is read."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from presto_ray.cli import main, user_error
from presto_ray.data.shards import ShardWriter

C, T, L, DT = 32, 128, 48, 384  # the tiny preset's latent and text shapes


def _shards_with_nan_row(folder) -> None:
    """One shard of 8 tiny-shaped rows written by the project's writer; row 5 ('r005') then gets a
    NaN latent value, with the manifest's bytes and sha256 following."""
    rng = np.random.default_rng(0)
    rows = [{"id": f"r{i:03d}", "latent": rng.normal(size=(C, T)).astype(np.float16), "caption": f"piece {i}",
             "text_states": rng.normal(size=(L, DT)).astype(np.float16), "text_mask": np.arange(L) < 5,
             "bpm": np.float32(90), "seconds_start": np.float32(0), "seconds_total": np.float32(4)} for i in range(8)]
    w = ShardWriter(str(folder), rows_per_shard=8, latent_shape=(C, T), text_shape=(L, DT),
                    codec_identity={"name": "mel"}, text_identity={"name": "minilm"})
    w.add_rows(rows)
    w.close()
    path = folder / "part-00000.parquet"
    table = pq.read_table(path)
    data = table.to_pylist()
    latent = np.frombuffer(data[5]["latent"], "<f2").copy()
    latent[3] = np.nan
    data[5]["latent"] = latent.tobytes()
    pq.write_table(table.from_pylist(data, schema=table.schema), path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0].update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _train_args(tmp_path, data_uri) -> list[str]:
    return ["train-teacher", "--config", "tiny", "--storage-path", str(tmp_path / "runs"), "data.source=shards",
            f"data.uri={data_uri}", "train.steps=2", "train.batch_size=4", "train.eval_batch=4"]


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.timeout(300)
def test_nan_row_read_under_ray_is_one_line_and_exit_2(tmp_path):
    folder = tmp_path / "shards"
    _shards_with_nan_row(folder)
    proc = subprocess.run([sys.executable, "-m", "presto_ray", *_train_args(tmp_path, folder)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _last_line(proc.stderr) == ("presto-ray train-teacher: error: shard file part-00000.parquet: row id 'r005' "
                                       "has NaN/Inf in latent or text_states (on_bad_rows='raise'; use 'skip' to "
                                       "drop such rows)")
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(300)
def test_verbose_adds_the_traceback_above_the_same_line(ray_cluster, tmp_path, capsys):
    folder = tmp_path / "shards"
    _shards_with_nan_row(folder)
    assert main(["--verbose", *_train_args(tmp_path, folder)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert _last_line(err).startswith("presto-ray train-teacher: error: shard file part-00000.parquet: row id 'r005'")


def test_ray_wrappers_give_back_the_original_error(ray_cluster):
    import ray
    from ray.train import WorkerGroupError

    @ray.remote
    def bad(key: str):
        raise KeyError(key)

    with pytest.raises(Exception) as caught:
        ray.get(bad.remote("model.depth"))
    assert type(user_error(caught.value)) is KeyError and user_error(caught.value).args == ("model.depth",)
    # a Train worker group's failure: the lowest failed rank's error, itself unwrapped
    group = WorkerGroupError("rank 1 failed", {1: caught.value, 3: RuntimeError("other")})
    assert type(user_error(group)) is KeyError
    plain = ValueError("ours")
    assert user_error(plain) is plain


def test_missing_bucket_refused_before_any_data_work(s3_endpoint, ray_cluster, tmp_path, capsys):
    args = _train_args(tmp_path, tmp_path / "no-shards-here")
    args[args.index("--storage-path") + 1] = "s3://no-such-bucket/runs"
    assert main(args) == 2
    line = _last_line(capsys.readouterr().err)
    assert line.startswith("presto-ray train-teacher: error: run storage (run.storage_path) "
                           "'s3://no-such-bucket/runs': bucket 'no-such-bucket' does not exist"), line
    assert "no-shards-here" not in line  # the data folder (absent too) was never looked at


def test_prepare_refuses_a_missing_bucket_before_loading_any_model(s3_endpoint, capsys):
    assert main(["prepare", "--out", "s3://no-such-bucket/data", "--items", "4"]) == 2
    line = _last_line(capsys.readouterr().err)
    assert line.startswith("presto-ray prepare: error: prepare output (--out) 's3://no-such-bucket/data': "
                           "bucket 'no-such-bucket' does not exist"), line
