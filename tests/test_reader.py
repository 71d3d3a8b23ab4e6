"""The training reader: shards written locally or to a loopback S3 server stream back through Ray Data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from presto_ray.data.batch import TRAIN_COLUMNS
from presto_ray.data.reader import BadRowCounter, shuffled_files, training_dataset
from presto_ray.data.shards import ShardWriter
from test_shards import _edit_row, _nan_latent  # noqa: E402 (shared shard-editing helpers)

C, T, L, DT = 32, 128, 32, 384


def make_rows(n: int, seed: int = 1) -> list[dict]:
    """n synthetic rows: latent [C, T] float16, text_states [L, Dt] float16, text_mask [L] bool."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        mask = np.zeros(L, dtype=bool)
        mask[: 3 + i % 9] = True
        latent = rng.normal(size=(C, T)) + np.arange(C)[:, None] / 4
        rows.append({"id": f"r{i:03d}", "latent": latent.astype(np.float16),
                     "caption": f"caption number {i}", "text_states": rng.normal(size=(L, DT)).astype(np.float16),
                     "text_mask": mask, "bpm": np.float32(70 + i), "seconds_start": np.float32(i),
                     "seconds_total": np.float32(30.0)})
    return rows


def write(uri: str, rows: list[dict], rows_per_shard: int = 4):
    w = ShardWriter(uri, rows_per_shard=rows_per_shard, latent_shape=(C, T), text_shape=(L, DT),
                    codec_identity={"name": "mel"}, text_identity={"name": "minilm"})
    w.add_rows(rows)
    return w.close()


def test_shuffle_deterministic_per_seed_and_epoch():
    names = [f"part-{i:05d}.parquet" for i in range(10)]
    a = shuffled_files(names, seed=3, epoch=0)
    assert a == shuffled_files(names, seed=3, epoch=0) and sorted(a) == names
    orders = {tuple(shuffled_files(names, seed=3, epoch=e)) for e in range(5)}
    assert len(orders) == 5  # every epoch its own order
    assert shuffled_files(names, seed=4, epoch=0) != a


@pytest.mark.parametrize("where", ["local", "s3"])
def test_round_trip_through_ray_data(ray_cluster, s3_endpoint, tmp_path, where):
    uri = str(tmp_path / "shards") if where == "local" else "s3://presto/reader/roundtrip"
    rows = make_rows(10)
    written = write(uri, rows)
    lat = np.stack([r["latent"] for r in rows]).astype(np.float64)
    np.testing.assert_allclose(written.latent_mean, lat.mean(axis=(0, 2)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(written.latent_std, lat.transpose(1, 0, 2).reshape(C, -1).std(axis=1, ddof=1),
                               rtol=1e-9)

    # training columns as torch batches with the right shapes and dtypes; the latents are the written ones
    ds, manifest = training_dataset(uri, seed=0, epoch=0)
    assert manifest == written
    got = {}
    for batch in ds.iter_torch_batches(batch_size=4):
        assert set(batch) == set(TRAIN_COLUMNS)
        b = batch["latent"].shape[0]
        assert batch["latent"].shape == (b, C, T) and batch["latent"].dtype == torch.float16
        assert batch["text_states"].shape == (b, L, DT) and batch["text_mask"].shape == (b, L)
        assert batch["text_mask"].dtype == torch.bool and batch["bpm"].dtype == torch.float32
        for j in range(b):
            got[int(batch["bpm"][j])] = (batch["latent"][j].numpy(), batch["text_states"][j].numpy(),
                                         batch["text_mask"][j].numpy())
    assert sorted(got) == [70 + i for i in range(10)]
    for i, r in enumerate(rows):
        latent, states, mask = got[70 + i]
        np.testing.assert_array_equal(latent, r["latent"])
        np.testing.assert_array_equal(states, r["text_states"])
        np.testing.assert_array_equal(mask, r["text_mask"])

    # ids and captions in the (seed, epoch) file order
    order = shuffled_files([f.name for f in manifest.files], seed=0, epoch=1)
    ds, _ = training_dataset(uri, seed=0, epoch=1, columns=["id", "caption", "latent"], preserve_order=True)
    out = {k: [] for k in ("id", "caption", "latent")}
    for batch in ds.iter_batches(batch_size=5, batch_format="numpy"):
        for k in out:
            out[k] += list(batch[k])
    by_file = {f"part-{k:05d}.parquet": [f"r{i:03d}" for i in range(4 * k, min(4 * k + 4, 10))] for k in range(3)}
    assert out["id"] == [rid for name in order for rid in by_file[name]]
    index = {r["id"]: r for r in rows}
    assert out["caption"] == [index[i]["caption"] for i in out["id"]]
    for rid, latent in zip(out["id"], out["latent"]):
        np.testing.assert_array_equal(latent, index[rid]["latent"])


def test_each_pass_reads_the_next_epochs_file_order_and_a_resume_continues_it(ray_cluster, tmp_path):
    """Ray Train runs a worker's shard (a streaming split) once per epoch: pass e reads the files in
    shuffled_files(seed, e) order, and a dataset built to resume at epoch 2 starts with that order."""
    uri = str(tmp_path / "shards")
    manifest = write(uri, make_rows(24), rows_per_shard=4)  # 6 files
    first_ids = {f"r{4 * k:03d}": f"part-{k:05d}.parquet" for k in range(6)}
    names = [f.name for f in manifest.files]

    def file_orders(first_epoch: int, passes: int) -> list[list[str]]:
        ds, _ = training_dataset(uri, seed=7, epoch=first_epoch, columns=["id"], preserve_order=True)
        (shard,) = ds.streaming_split(1)
        return [[first_ids[i] for i in (r["id"] for r in shard.iter_rows()) if i in first_ids] for _ in range(passes)]

    orders = file_orders(0, 3)
    assert orders == [shuffled_files(names, 7, e) for e in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    assert file_orders(2, 1) == [orders[2]]


def test_a_relaunched_run_reads_its_checkpoint_epochs_file_order_first(ray_cluster, tmp_path):
    """training_data() resumes the file-order epochs at the newest finished checkpoint's epoch, and
    the driver's checks read a separate probe dataset, so the workers' first pass is that epoch."""
    from presto_ray.config import load_config
    from presto_ray.train.teacher import resume_epoch, training_data

    uri = str(tmp_path / "shards")
    manifest = write(uri, make_rows(24), rows_per_shard=4)
    cfg = load_config("tiny", ["data.source=shards", f"data.uri={uri}", f"run.storage_path={tmp_path / 'runs'}",
                               "run.name=r", "train.seed=7", "text.max_tokens=32"])
    assert resume_epoch(cfg) == 0  # a new run
    run = tmp_path / "runs" / "r"
    (run / "step_00000005").mkdir(parents=True)
    (run / "step_00000005" / "meta.json").write_text(json.dumps({"step": 5, "epoch": 2}))
    (run / "step_00000009").mkdir()  # being written when the run was killed: no meta.json yet
    assert resume_epoch(cfg) == 2

    data = training_data(cfg)
    assert data.probe is not data.dataset
    assert len(data.probe.take(4)) == 4  # the driver's checks do not advance the workers' epochs
    data.dataset.context.execution_options.preserve_order = True
    (shard,) = data.dataset.streaming_split(1)
    by_bpm = {70 + i: f"part-{i // 4:05d}.parquet" for i in range(24)}
    seen = list(dict.fromkeys(by_bpm[int(r["bpm"])] for r in shard.iter_rows()))
    assert seen == shuffled_files([f.name for f in manifest.files], 7, 2)


def _blank_caption(r: dict) -> None:
    r["caption"] = "  "


@pytest.mark.parametrize("spoil, file, row, bad_id, message", [
    (_nan_latent, "part-00001.parquet", 2, "r006", "has NaN/Inf"),
    # the caption is not a training column, yet an empty one is found
    (_blank_caption, "part-00002.parquet", 1, "r009", "has an empty caption"),
])
def test_bad_rows_raise_or_skip_and_count(ray_cluster, tmp_path, spoil, file, row, bad_id, message):
    """A row with NaN/Inf in its arrays, or with an empty caption: on_bad_rows=raise stops the read
    naming the file and row id; skip drops that row alone and counts it by file."""
    folder = tmp_path / "s"
    write(str(folder), make_rows(10))
    assert _edit_row(folder, file, row, spoil) == bad_id

    ds, _ = training_dataset(str(folder), seed=0, epoch=0, on_bad_rows="raise")
    with pytest.raises(ValueError, match=rf"{file}: row id '{bad_id}' {message}"):
        for _ in ds.iter_torch_batches(batch_size=4):
            pass

    counter = BadRowCounter()
    ds, _ = training_dataset(str(folder), seed=0, epoch=0, columns=[*TRAIN_COLUMNS, "id"], on_bad_rows="skip",
                             bad_rows=counter)
    ids = [i for b in ds.iter_batches(batch_size=4, batch_format="numpy") for i in b["id"]]
    assert sorted(ids) == [f"r{i:03d}" for i in range(10) if f"r{i:03d}" != bad_id]
    assert counter.count() == 1 and counter.by_file() == {file: 1}


def test_reader_fails_fast_on_missing_file_and_unknown_column(ray_cluster, tmp_path):
    folder = tmp_path / "s"
    write(str(folder), make_rows(6))
    with pytest.raises(ValueError, match=r"columns \['tempo'\] are not in the shards"):
        training_dataset(str(folder), seed=0, epoch=0, columns=["latent", "tempo"])
    (folder / "part-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="part-00001.parquet"):
        training_dataset(str(folder), seed=0, epoch=0)


def test_checksums_verified_on_the_read_path_or_sizes_only_counted(ray_cluster, tmp_path, caplog):
    folder = tmp_path / "s"
    manifest = write(str(folder), make_rows(10))
    path = folder / "part-00001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: a size check cannot see it
    path.write_bytes(bytes(data))
    digest = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(ValueError) as err:
        training_dataset(str(folder), seed=0, epoch=0)  # data.verify defaults to checksum
    assert str(err.value).startswith(f"shard file part-00001.parquet in {folder}: sha256 {digest}, "
                                     f"the manifest says {manifest.files[1].sha256}")
    with caplog.at_level("WARNING", logger="presto_ray.data"):
        training_dataset(str(folder), seed=0, epoch=0, verify="size")
    assert f"data.verify=size: 3 shard files of {folder} not checksum-verified" in caplog.text
    training_dataset(str(folder), seed=0, epoch=0, verify="off")
    with pytest.raises(ValueError, match="data.verify must be one of"):
        training_dataset(str(folder), seed=0, epoch=0, verify="sha1")


def test_training_reads_follow_data_verify(ray_cluster, tmp_path):
    from presto_ray.config import ConfigError, load_config
    from presto_ray.train.teacher import shard_dataset

    folder = tmp_path / "s"
    write(str(folder), make_rows(6))
    doc = json.loads((folder / "manifest.json").read_text())
    doc["files"][0]["sha256"] = "0" * 64  # a manifest whose checksum no longer matches its (intact) file
    (folder / "manifest.json").write_text(json.dumps(doc))
    shapes = ["model.latent_channels=32", "model.latent_frames=128", "text.max_tokens=32", "model.text_dim=384",
              "data.source=shards", f"data.uri={folder}"]
    cfg = load_config("tiny", shapes)
    assert cfg.data.verify == "checksum"
    with pytest.raises(ValueError, match=f"part-00000.parquet .*the manifest says {'0' * 64}"):
        shard_dataset(cfg)
    ds, _ = shard_dataset(load_config("tiny", [*shapes, "data.verify=size"]))
    assert ds.count() == 6
    with pytest.raises(ConfigError, match="data.verify"):
        load_config("tiny", ["data.verify=sha1"])
