"""The training reader: latent shards -> a Ray Dataset of fixed-shape arrays.

``ray.data.read_parquet`` reads exactly the files listed in ``manifest.json`` (never whatever else
lies in the folder), through the pyarrow filesystem of :func:`presto_ray.data.storage.resolve`, so
local folders and ``s3://`` (endpoint override included) work alike. The file order is a
permutation drawn from (seed, epoch), drawn anew at every execution of the dataset: Ray Train
executes a worker's shard once per epoch, so epoch e reads the files in ``shuffled_files(names,
seed, e)`` order, and a relaunch that resumes at epoch e (``first_epoch=e``) reads them exactly as
the uninterrupted run would have. The per-row shuffle is left to the consumer's local shuffle buffer
(``iter_torch_batches(local_shuffle_buffer_size=...)``).

Bad rows (NaN/Inf in ``latent`` or ``text_states``, or an empty caption) either stop the read with
the file and row id named (``on_bad_rows="raise"``), or are dropped (``"skip"``): each dropped row is logged on the
worker and counted in a :class:`BadRowCounter` (a small Ray actor) the caller may pass in, since the
filtering runs in Ray tasks and a plain Python counter there would not reach the caller.

Before the dataset is built, :func:`check_files` checks the files against the manifest as
``verify`` (``data.verify``) says: ``checksum`` (sizes and sha256, the default), ``size`` or ``off``.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
from ray.data import FileShuffleConfig
from ray.exceptions import UserCodeException

from presto_ray.data import storage
from presto_ray.data.batch import TRAIN_COLUMNS
from presto_ray.data.shards import CORE_COLUMNS, Manifest, fixed_values, read_manifest

log = logging.getLogger("presto_ray.data")

PATH_COLUMN = "path"  # added by read_parquet(include_paths=True)


@ray.remote(num_cpus=0)
class _Tally:
    def __init__(self) -> None:
        self.by_file: dict[str, int] = {}

    def add(self, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            self.by_file[name] = self.by_file.get(name, 0) + n

    def get(self) -> dict[str, int]:
        return dict(self.by_file)


class BadRowCounter:
    """Counts rows dropped by ``on_bad_rows="skip"``, per shard file, across Ray tasks."""

    def __init__(self) -> None:
        self._actor = _Tally.remote()

    def add(self, counts: dict[str, int]) -> None:
        ray.get(self._actor.add.remote(counts))

    def by_file(self) -> dict[str, int]:
        """{shard file name: rows dropped}."""
        return ray.get(self._actor.get.remote())

    def count(self) -> int:
        """Rows dropped so far."""
        return sum(self.by_file().values())


def epoch_seed(seed: int, epoch: int) -> np.random.SeedSequence:
    """The seed of epoch ``epoch``'s file order."""
    return np.random.SeedSequence([int(seed), int(epoch)])


def shuffled_files(names: Sequence[str], seed: int, epoch: int) -> list[str]:
    """``names`` in an order fixed by (seed, epoch): the same pair always gives the same order, and
    it is the order :class:`EpochFileShuffle` makes Ray Data read them in at that epoch."""
    order = list(names)
    np.random.default_rng(epoch_seed(seed, epoch)).shuffle(order)
    return order


class EpochFileShuffle(FileShuffleConfig):
    """Ray Data's file shuffle with one order per epoch: execution i of the dataset (Ray Train runs
    one per epoch on each worker's shard) reads files in ``shuffled_files(names, seed, first_epoch + i)``
    order (Ray shuffles the file list with ``np.random.default_rng(get_seed(i))``)."""

    def __init__(self, seed: int, first_epoch: int = 0):
        super().__init__(seed=int(seed), reseed_after_execution=True)
        self.first_epoch = int(first_epoch)

    def get_seed(self, execution_idx: int = 0) -> np.random.SeedSequence:
        return epoch_seed(self.seed, self.first_epoch + execution_idx)


class BadRowError(ValueError, UserCodeException):
    """A bad shard row, named by file and row id. To our CLI a ValueError (one line, exit 2); to Ray
    Data a UserCodeException, so that, with ``raise_original_map_exception`` set on the reader's
    datasets, it arrives as itself (not as a UserCodeException whose cause is lost in transit) and
    without an internal-error traceback. ``str()`` is the message as raised: Ray appends its retry
    advice to ``args``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _decode_batch(batch: pa.Table, *, shapes: dict[str, tuple[int, ...]], columns: list[str], on_bad_rows: str,
                  counter: BadRowCounter | None) -> dict[str, np.ndarray]:
    """Arrow batch of shard columns -> numpy columns: latent [B, C, T] float16, text_states
    [B, L, Dt] float16, text_mask [B, L] bool, bpm [B] float32 ...; bad rows (NaN/Inf, empty
    caption) raise or are dropped."""
    out = {}
    for col in columns:
        if col in shapes:
            out[col] = fixed_values(batch.column(col), col, shapes[col])
        else:
            out[col] = batch.column(col).to_numpy(zero_copy_only=False)
    n = batch.num_rows
    nonfinite = np.zeros(n, dtype=bool)
    for col in ("latent", "text_states"):
        if col in out:
            nonfinite |= ~np.isfinite(out[col].reshape(n, -1)).all(axis=1)
    empty = np.array([not (c or "").strip() for c in batch.column("caption").to_pylist()], dtype=bool)
    bad = nonfinite | empty
    if not bad.any():
        return out
    files = [p.rsplit("/", 1)[-1] for p in batch.column(PATH_COLUMN).to_pylist()]
    ids = batch.column("id").to_pylist()
    reasons = np.where(nonfinite, "NaN/Inf in latent or text_states", "an empty caption")
    if on_bad_rows == "raise":
        i = int(np.flatnonzero(bad)[0])
        raise BadRowError(f"shard file {files[i]}: row id '{ids[i]}' has {reasons[i]} "
                         "(on_bad_rows='raise'; use 'skip' to drop such rows)")
    counts: dict[str, int] = {}
    for i in np.flatnonzero(bad):
        counts[files[i]] = counts.get(files[i], 0) + 1
        log.warning("skipping row id '%s' of %s: %s", ids[i], files[i], reasons[i])
    if counter is not None:
        counter.add(counts)
    return {k: v[~bad] for k, v in out.items()}


VERIFY_MODES = ("checksum", "size", "off")


@ray.remote(num_cpus=1)
def _sha256(uri: str) -> str:
    return storage.sha256(uri)


def check_files(uri: str, manifest: Manifest, verify: Literal["checksum", "size", "off"] = "checksum") -> None:
    """Check the files of ``manifest`` at ``uri`` as ``verify`` says; errors name the file.

    ``size``: every file exists with its recorded size (one listing); how many files were not
    checksum-verified is logged. ``checksum``: that, then each file's sha256 against the manifest (a
    mismatch raises ValueError with the file and both digests). ``off``: nothing.

    Checksums are computed once per file before use, not while Ray Data reads: its Parquet reader
    fetches the footer and the byte ranges of the projected columns only, so the bytes it reads are
    not the whole file and cannot be hashed as they pass. Each file is instead streamed through
    sha256 in fixed-size chunks (:func:`storage.sha256`: one chunk in memory, never a whole file) by
    a Ray task of its own, in parallel and on the cluster's nodes rather than through the driver. The
    cost is one sequential read of the set per run (not per epoch); docs/benchmarks.md measures it.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"data.verify must be one of {VERIFY_MODES}, got {verify!r}")
    if verify == "off":
        return
    fs, base = storage.resolve(uri)
    paths = [f"{base}/{f.name}" for f in manifest.files]
    infos = storage.with_retries(lambda: fs.get_file_info(paths), uri, what="listing")
    for entry, info in zip(manifest.files, infos):
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"shard file {entry.name} listed in {uri}/manifest.json is missing")
        if info.size != entry.bytes:
            raise ValueError(f"shard file {entry.name} in {uri} has {info.size} bytes, the manifest says {entry.bytes}")
    if verify == "size":
        log.warning("data.verify=size: %d shard files of %s not checksum-verified (sizes only)",
                    len(manifest.files), uri)
        return
    digests = ray.get([_sha256.remote(storage.join(uri, f.name)) for f in manifest.files])
    for entry, digest in zip(manifest.files, digests):
        if digest != entry.sha256:
            raise ValueError(f"shard file {entry.name} in {uri}: sha256 {digest}, the manifest says {entry.sha256} "
                             "(corrupt or changed file; `presto-ray validate` checks the whole set)")
    log.info("data.verify=checksum: %d shard files of %s match the manifest's sha256", len(manifest.files), uri)


def training_dataset(uri: str, *, seed: int, epoch: int, columns: Sequence[str] = TRAIN_COLUMNS,
                     on_bad_rows: Literal["raise", "skip"] = "raise", bad_rows: BadRowCounter | None = None,
                     preserve_order: bool = False, verify: Literal["checksum", "size", "off"] = "checksum",
                     ) -> tuple[ray.data.Dataset, "Manifest"]:
    """(Dataset, Manifest) of the shards at ``uri`` with only ``columns``: latent [C, T] float16,
    text_states [L, Dt] float16, text_mask [L] bool, bpm float32 (and any other shard column asked
    for), so ``iter_torch_batches`` yields latent [B, C, T], text_states [B, L, Dt], text_mask [B, L].

    The first execution reads files in :func:`shuffled_files` order for (seed, epoch), each later
    execution in the next epoch's order (:class:`EpochFileShuffle`); ``preserve_order`` keeps that
    order in the output (otherwise blocks come as tasks finish). Files are checked here as
    ``verify`` says (:func:`check_files`), failing with the file named. Bad rows: see the module
    docstring; ``bad_rows`` counts the skips.
    Check the manifest against the model with ``validate.check_against_model`` before training."""
    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}")
    columns = list(columns)
    manifest = read_manifest(uri)
    known = set(CORE_COLUMNS) | set(manifest.metadata_columns)
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the shards at {uri} (they hold {sorted(known)})")
    check_files(uri, manifest, verify)
    fs, base = storage.resolve(uri)
    read_columns = list(dict.fromkeys([*columns, "id", "caption"]))  # id names bad rows; caption: empty ones
    ds = ray.data.read_parquet([f"{base}/{f.name}" for f in manifest.files], filesystem=fs, columns=read_columns,
                               include_paths=True, file_extensions=None, shuffle=EpochFileShuffle(seed, epoch))
    if preserve_order:
        ds.context.execution_options.preserve_order = True
    shapes = {"latent": tuple(manifest.latent_shape), "text_states": tuple(manifest.text_shape),
              "text_mask": (manifest.text_shape[0],)}
    decode = functools.partial(_decode_batch, shapes=shapes, columns=columns, on_bad_rows=on_bad_rows,
                               counter=bad_rows)
    ds = ds.map_batches(decode, batch_format="pyarrow", zero_copy_batch=True)
    ds.context.raise_original_map_exception = True  # a BadRowError reaches the caller as itself
    return ds, manifest
