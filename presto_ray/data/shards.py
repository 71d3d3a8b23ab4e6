"""Latent shards: the Parquet schema, the shard writer and ``manifest.json`` (DESIGN.md, "Contracts").

Layout of a shard folder (local path, ``file://`` or ``s3://`` URI)::

    part-00000.parquet ...        the shards, each holding up to rows_per_shard rows
    _parts/part-00000.parquet.json one sidecar per finished shard: rows, bytes, sha256, row ids,
                                   per-channel latent sum / sum of squares, writer identity
    manifest.json                  written LAST by ShardWriter.close(); its presence means "complete"

Columns. Fixed-shape arrays are stored one value per row as Arrow ``fixed_size_binary`` columns
(Parquet FIXED_LEN_BYTE_ARRAY) holding the row's array in C order, little-endian; the shape and
dtype live in the manifest and in each field's metadata, and :func:`fixed_values` turns a column
back into [N, *shape] without a copy: ``latent`` float16 [C, T], ``text_states`` float16 [L, Dt],
``text_mask`` bool [L] (one byte, 0 or 1, per token); ``id`` and ``caption`` strings; ``bpm``,
``seconds_start``, ``seconds_total`` float32; optional string metadata columns (``split``,
``piece_id``, ``source`` ...) named when the writer is made. (Schema version 1 stored the arrays
as ``fixed_size_list`` columns; Parquet keeps a repetition and a definition level per element of a
list, which made reading them ~10x slower, see docs/benchmarks.md. Version 1 sets are refused with
a message to run ``prepare`` again.)

Atomicity. A shard is serialised in memory and written whole: locally to a hidden temporary name
in the same folder, fsync'ed and renamed; on S3 uploaded under ``_staging/``, its size checked, then
server-side copied (CopyObject is all-or-nothing) to its final key. A half-written object therefore
never appears under a ``part-*.parquet`` name. Sidecars and the manifest are written the same way.

Resumability. A shard counts as finished when its sidecar exists and the shard file has the
recorded size (and, with ``verify``, sha256); see :func:`completed_files`. A new
:class:`ShardWriter` on the same URI refuses a folder whose finished shards were written with a
different identity (schema version, codec, text encoder, shapes, metadata columns), removes
``manifest.json`` (the set is about to change), keeps finished shards, deletes its own unfinished
leftovers (shards without a valid sidecar, temporaries, staged uploads) and writes new rows under
unused part numbers. ``writer.completed_ids`` tells the caller which row
ids are already stored so that it can skip that work; adding one of them again is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from presto_ray.data import storage
from presto_ray.data.stats import LatentStats

log = logging.getLogger("presto_ray.data")

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
PARTS_DIR = "_parts"
STAGING_DIR = storage.STAGING_DIR
CORE_COLUMNS = ("id", "latent", "caption", "text_states", "text_mask", "bpm", "seconds_start", "seconds_total")
FIXED_DTYPES = {"latent": np.dtype("<f2"), "text_states": np.dtype("<f2"), "text_mask": np.dtype(np.bool_)}


def fixed_field(name: str, shape: Sequence[int]) -> pa.Field:
    """The Arrow field of the fixed-shape column ``name`` (a key of FIXED_DTYPES) holding [*shape]
    arrays: fixed_size_binary of prod(shape) * itemsize bytes, shape and dtype in its metadata."""
    dtype = FIXED_DTYPES[name]
    width = int(np.prod(shape)) * dtype.itemsize
    return pa.field(name, pa.binary(width), nullable=False,
                    metadata={"shape": json.dumps([int(s) for s in shape]), "dtype": dtype.str})


def fixed_column(name: str, values: np.ndarray) -> pa.FixedSizeBinaryArray:
    """[N, *shape] array -> the fixed_size_binary column ``name`` (one row's bytes per value)."""
    values = np.ascontiguousarray(values, dtype=FIXED_DTYPES[name])
    width = int(np.prod(values.shape[1:])) * values.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values.tobytes())])


def fixed_values(column: pa.ChunkedArray | pa.Array, name: str, shape: Sequence[int]) -> np.ndarray:
    """A fixed_size_binary column of N rows -> read-only numpy [N, *shape] of FIXED_DTYPES[name],
    viewing Arrow's buffer (no copy unless the column is chunked)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dtype, shape = FIXED_DTYPES[name], tuple(int(s) for s in shape)
    width = int(np.prod(shape)) * dtype.itemsize
    if not pa.types.is_fixed_size_binary(arr.type) or arr.type.byte_width != width:
        raise ValueError(f"column '{name}' has type {arr.type}, expected fixed_size_binary[{width}] for {list(shape)}")
    if arr.null_count:
        raise ValueError(f"column '{name}' holds {arr.null_count} nulls")
    if len(arr) == 0:
        return np.zeros((0, *shape), dtype)
    data = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=len(arr) * width, offset=arr.offset * width)
    return data.view(dtype).reshape((len(arr), *shape))


def shard_schema(latent_shape: Sequence[int], text_shape: Sequence[int],
                 metadata_columns: Sequence[str] = ()) -> pa.Schema:
    """The Arrow schema of a shard: latent [C, T] and text_states [L, Dt] float16 and text_mask [L]
    bool as fixed-size binary values (:func:`fixed_field`), metadata as strings."""
    (c, t), (length, dt) = latent_shape, text_shape
    fields = [
        pa.field("id", pa.string(), nullable=False),
        fixed_field("latent", (c, t)),
        pa.field("caption", pa.string(), nullable=False),
        fixed_field("text_states", (length, dt)),
        fixed_field("text_mask", (length,)),
        pa.field("bpm", pa.float32(), nullable=False),
        pa.field("seconds_start", pa.float32(), nullable=False),
        pa.field("seconds_total", pa.float32(), nullable=False),
    ] + [pa.field(name, pa.string()) for name in metadata_columns]
    return pa.schema(fields, metadata={"presto_ray.schema_version": str(SCHEMA_VERSION)})


@dataclass
class ShardFile:
    """One shard in the manifest: file name (relative to the folder), rows, size and sha256."""

    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """``manifest.json``: latent_shape [C, T], text_shape [L, Dt], latent_mean / latent_std [C]
    (raw codec latents, over every value of the data, std with n - 1), latent_min / latent_max [C]
    (the range of each channel; empty in manifests written before they were recorded), files in
    name order."""

    schema_version: int
    codec: dict
    text_encoder: dict
    latent_shape: list[int]
    text_shape: list[int]
    latent_mean: list[float]
    latent_std: list[float]
    num_rows: int
    files: list[ShardFile]
    metadata_columns: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    latent_min: list[float] = field(default_factory=list)
    latent_max: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        """The manifest as indented JSON text (the content of ``manifest.json``)."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """Parse; a missing or ill-typed key is a ValueError that names it."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError("manifest is not a JSON object")
        want = {"schema_version": int, "codec": dict, "text_encoder": dict, "latent_shape": list,
                "text_shape": list, "latent_mean": list, "latent_std": list, "num_rows": int, "files": list}
        for key, typ in want.items():
            if key not in d:
                raise ValueError(f"manifest lacks key '{key}'")
            if not isinstance(d[key], typ):
                raise ValueError(f"manifest key '{key}' should be {typ.__name__}, got {type(d[key]).__name__}")
        if d["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"manifest key 'schema_version' is {d['schema_version']}, "
                             f"this code reads {SCHEMA_VERSION}: run `presto-ray prepare` again into a new folder")
        for key, n in (("latent_shape", 2), ("text_shape", 2)):
            if len(d[key]) != n or not all(isinstance(v, int) and v > 0 for v in d[key]):
                raise ValueError(f"manifest key '{key}' should be {n} positive integers, got {d[key]}")
        channels = d["latent_shape"][0]
        for key in ("latent_min", "latent_max"):
            if not isinstance(d.get(key, []), list):
                raise ValueError(f"manifest key '{key}' should be list, got {type(d[key]).__name__}")
        for key in ("latent_mean", "latent_std", *(k for k in ("latent_min", "latent_max") if d.get(k))):
            if len(d[key]) != channels:
                raise ValueError(f"manifest key '{key}' has {len(d[key])} values, "
                                 f"latent_shape says {channels} channels")
        try:
            files = [ShardFile(name=str(f["name"]), rows=int(f["rows"]), bytes=int(f["bytes"]), sha256=str(f["sha256"]))
                     for f in d["files"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest key 'files' has an entry without {exc}") from None
        return cls(schema_version=d["schema_version"], codec=d["codec"], text_encoder=d["text_encoder"],
                   latent_shape=list(d["latent_shape"]), text_shape=list(d["text_shape"]),
                   latent_mean=[float(v) for v in d["latent_mean"]], latent_std=[float(v) for v in d["latent_std"]],
                   num_rows=d["num_rows"], files=files, metadata_columns=list(d.get("metadata_columns", [])),
                   extra=dict(d.get("extra", {})), latent_min=[float(v) for v in d.get("latent_min", [])],
                   latent_max=[float(v) for v in d.get("latent_max", [])])

    def schema(self) -> pa.Schema:
        """The Arrow schema its shards must have (:func:`shard_schema`)."""
        return shard_schema(self.latent_shape, self.text_shape, self.metadata_columns)

    def latent_stats(self, sigma_data: float) -> LatentStats:
        """Per-channel mean/std [C] (std floored at 1e-6, as LatentStats.from_latents does) and the
        per-channel range where the manifest records one."""
        import torch

        ranged = bool(self.latent_min and self.latent_max)
        return LatentStats(mean=torch.tensor(self.latent_mean, dtype=torch.float32),
                           std=torch.tensor(self.latent_std, dtype=torch.float32).clamp_min(1e-6),
                           sigma_data=float(sigma_data),
                           low=torch.tensor(self.latent_min, dtype=torch.float32) if ranged else None,
                           high=torch.tensor(self.latent_max, dtype=torch.float32) if ranged else None)


def read_manifest(uri: str) -> Manifest:
    """The Manifest of the shard folder ``uri``; FileNotFoundError / ValueError name the URI."""
    murl = storage.join(uri, MANIFEST_NAME)
    text = storage.read_bytes(murl).decode("utf-8", errors="replace")
    try:
        return Manifest.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{murl}: {exc}") from None


def _file_infos(uri: str, subdir: str | None = None) -> dict[str, pafs.FileInfo]:
    fs, path = storage.resolve(storage.join(uri, subdir) if subdir else uri)
    sel = pafs.FileSelector(path, allow_not_found=True)
    infos = storage.with_retries(lambda: fs.get_file_info(sel), uri, what="listing")
    return {i.path.rsplit("/", 1)[-1]: i for i in infos if i.type == pafs.FileType.File}


# --- resumability ---------------------------------------------------------------------------------

def _completed_parts(uri: str, identity: dict | None, verify: bool) -> dict[str, dict]:
    files = _file_infos(uri)
    parts: dict[str, dict] = {}
    for side in sorted(_file_infos(uri, PARTS_DIR)):
        if not side.endswith(".parquet.json"):
            continue
        try:
            info = json.loads(storage.read_bytes(storage.join(uri, PARTS_DIR, side)))
            name = info["name"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable sidecar %s/%s/%s", uri, PARTS_DIR, side)
            continue
        if identity is not None and info.get("identity") != identity:
            continue
        if name not in files or files[name].size != info["bytes"]:
            continue
        if verify and storage.sha256(storage.join(uri, name)) != info["sha256"]:
            log.warning("shard %s/%s does not match its recorded sha256; it will be rewritten", uri, name)
            continue
        parts[name] = info
    return parts


def completed_files(uri: str, *, identity: dict | None = None, verify: bool = True) -> set[str]:
    """Names of finished shards under ``uri``: a sidecar in ``_parts/`` exists, its writer identity
    equals ``identity`` (when given), and the shard has the recorded size and (``verify``) sha256.
    Empty when the folder does not exist."""
    return set(_completed_parts(uri, identity, verify))


def writer_identity(*, latent_shape: Sequence[int], text_shape: Sequence[int], codec_identity: dict,
                    text_identity: dict, metadata_columns: Sequence[str] = ()) -> dict:
    """What every shard of one set must share (recorded in each sidecar): schema version, codec and
    text-encoder identity, latent_shape [C, T], text_shape [L, Dt], metadata columns. JSON-normalised
    (tuples -> lists) so it compares equal to what sidecars hold; not serialisable fails here."""
    identity = {"schema_version": SCHEMA_VERSION, "codec": dict(codec_identity), "text_encoder": dict(text_identity),
                "latent_shape": [int(v) for v in latent_shape], "text_shape": [int(v) for v in text_shape],
                "metadata_columns": list(metadata_columns)}
    return json.loads(json.dumps(identity))


def open_folder(uri: str, identity: dict, *, verify: bool = True, prefix: str | None = None) -> dict[str, dict]:
    """Make the shard folder ``uri`` ready for more shards of ``identity`` and return its finished
    shards ({name: sidecar info}). Refuses (ValueError naming a file and the differing keys) a
    folder whose finished shards have another identity; removes ``manifest.json`` (the file set is
    about to change); deletes unfinished leftovers (shards without a valid sidecar, temporaries,
    staged uploads) of writer ``prefix``, or of every writer when ``prefix`` is None: only safe
    while no writer is at work in the folder."""
    storage.check_reachable(uri, "shard folder")
    parts = _completed_parts(uri, None, verify)
    for name, info in parts.items():
        if info.get("identity") != identity:
            keys = sorted(k for k in identity if (info.get("identity") or {}).get(k) != identity[k])
            raise ValueError(f"{uri} already holds {name} written with different {keys}; "
                             "write to a new folder or delete the old shards")
    storage.delete_if_present(storage.join(uri, MANIFEST_NAME))
    _remove_leftovers(uri, set(parts), prefix)
    return parts


def _remove_leftovers(uri: str, finished: set[str], prefix: str | None) -> None:
    """Delete unfinished shards, their sidecars, temporaries and staged uploads of writer ``prefix``
    (every writer when None) under ``uri``; ``finished`` names the shards to keep."""
    mine = re.escape(prefix) if prefix is not None else r"[A-Za-z0-9][A-Za-z0-9_.-]*"
    shard = re.compile(rf"{mine}-\d{{5}}\.parquet")
    temporary = re.compile(rf"\.{mine}-.*\.tmp-.*")
    for name in _file_infos(uri):
        if temporary.fullmatch(name) or (shard.fullmatch(name) and name not in finished):
            log.info("removing unfinished %s/%s", uri, name)
            storage.delete_if_present(storage.join(uri, name))
    for name in _file_infos(uri, PARTS_DIR):
        stem = name.removesuffix(".json")
        if temporary.fullmatch(name) or (shard.fullmatch(stem) and stem not in finished):
            storage.delete_if_present(storage.join(uri, PARTS_DIR, name))
    for staging in (STAGING_DIR, f"{PARTS_DIR}/{STAGING_DIR}"):
        for name in _file_infos(uri, staging):
            if prefix is None or name.startswith(f"{prefix}-"):
                storage.delete_if_present(storage.join(uri, staging, name))


# --- the writer -----------------------------------------------------------------------------------

class ShardWriter:
    """Write rows (id, latent [C, T], caption, text_states [L, Dt], text_mask [L], bpm,
    seconds_start, seconds_total, metadata columns) as Parquet shards of ``rows_per_shard`` rows,
    then ``manifest.json`` on :meth:`close`. Bad rows are refused with a ValueError naming the id.

    A new writer opens the folder with :func:`open_folder` (refusing another identity, keeping
    finished shards, removing its own prefix's leftovers). Several writers may fill one folder at
    once when each has its own ``prefix``: the coordinator calls :func:`open_folder` once, gives
    each writer a fresh prefix and ``scan_existing=False`` (no listing, nothing deleted), each
    writer ends with ``close(finalize=False)``, and the coordinator runs :func:`write_manifest`.
    """

    def __init__(self, uri: str, *, rows_per_shard: int, latent_shape: Sequence[int], text_shape: Sequence[int],
                 codec_identity: dict, text_identity: dict, metadata_columns: Sequence[str] = (),
                 prefix: str = "part", verify_existing: bool = True, scan_existing: bool = True,
                 compression: str = "zstd"):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        if len(latent_shape) != 2 or len(text_shape) != 2:
            raise ValueError(f"latent_shape [C, T] and text_shape [L, Dt] expected, got {latent_shape}, {text_shape}")
        clash = set(metadata_columns) & set(CORE_COLUMNS)
        if clash:
            raise ValueError(f"metadata columns {sorted(clash)} clash with the shard columns")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix) or prefix.startswith(("_", ".")):
            raise ValueError(f"prefix '{prefix}' must be letters, digits, '-', '_' or '.', "
                             "not starting with '_' or '.'")
        self.uri = storage.local_path(uri).as_posix() if not storage.is_remote(uri) else str(uri).rstrip("/")
        self.rows_per_shard = int(rows_per_shard)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.text_shape = tuple(int(v) for v in text_shape)
        self.metadata_columns = list(metadata_columns)
        self.prefix = prefix
        self.compression = compression
        self.identity = writer_identity(latent_shape=self.latent_shape, text_shape=self.text_shape,
                                        codec_identity=codec_identity, text_identity=text_identity,
                                        metadata_columns=self.metadata_columns)
        self.schema = shard_schema(self.latent_shape, self.text_shape, self.metadata_columns)
        if scan_existing:
            self._parts = open_folder(self.uri, self.identity, verify=verify_existing, prefix=prefix)
        else:  # the caller opened the folder (open_folder) and gave this writer a prefix of its own
            storage.check_reachable(self.uri, "shard folder")
            self._parts = {}
        self._id_file = {rid: name for name, info in self._parts.items() for rid in info["ids"]}
        if self._parts:
            log.info("resuming shards in %s: %d finished files, %d rows kept", self.uri, len(self._parts),
                     len(self._id_file))
        self._buffer: list[dict] = []
        self._buffer_ids: set[str] = set()
        self._next_index = 0
        self._closed = False

    # which work is already done
    @property
    def completed(self) -> set[str]:
        """Names of finished shard files (kept from earlier runs or written by this writer)."""
        return set(self._parts)

    @property
    def completed_ids(self) -> set[str]:
        """Row ids stored in finished shard files."""
        return set(self._id_file)

    # rows in
    def check_row(self, row: dict) -> dict:
        """Normalised copy of ``row`` (latent [C, T] float16, text_states [L, Dt] float16,
        text_mask [L] bool, floats as float32); ValueError naming the row id if anything is off."""
        rid = row.get("id")
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"a row has no usable 'id' (got {rid!r})")
        missing = [c for c in CORE_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row '{rid}': missing columns {missing}")
        out = {"id": rid}
        for col, shape in (("latent", self.latent_shape), ("text_states", self.text_shape)):
            value = np.asarray(row[col])
            if value.shape != shape:
                raise ValueError(f"row '{rid}': {col} has shape {value.shape}, expected {shape}")
            if not np.issubdtype(value.dtype, np.number):
                raise ValueError(f"row '{rid}': {col} has dtype {value.dtype}, expected numbers")
            with np.errstate(over="ignore", invalid="ignore"):
                half = value.astype(np.float16)
            bad = int((~np.isfinite(half)).sum())
            if bad:
                raise ValueError(f"row '{rid}': {col} holds {bad} NaN/Inf values (after conversion to float16)")
            out[col] = half
        mask = np.asarray(row["text_mask"])
        if mask.shape != self.text_shape[:1]:
            raise ValueError(f"row '{rid}': text_mask has shape {mask.shape}, expected {self.text_shape[:1]}")
        if mask.dtype != np.bool_:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError(f"row '{rid}': text_mask holds values other than 0/1")
            mask = mask.astype(bool)
        out["text_mask"] = mask
        caption = row["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"row '{rid}': empty caption")
        out["caption"] = caption
        for col in ("bpm", "seconds_start", "seconds_total"):
            try:
                value = float(row[col])
            except (TypeError, ValueError):
                raise ValueError(f"row '{rid}': {col} is not a number ({row[col]!r})") from None
            if not math.isfinite(value) and not (col == "bpm" and math.isnan(value)):  # NaN bpm = unknown tempo
                raise ValueError(f"row '{rid}': {col} is {value}")
            out[col] = value
        for col in self.metadata_columns:
            value = row.get(col)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"row '{rid}': metadata column {col} should be a string, got {type(value).__name__}")
            out[col] = value
        return out

    def add(self, row: dict) -> None:
        """Buffer one row (checked with :meth:`check_row`); a full buffer becomes a shard."""
        if self._closed:
            raise RuntimeError(f"the ShardWriter for {self.uri} is closed")
        clean = self.check_row(row)
        rid = clean["id"]
        if rid in self._id_file:
            raise ValueError(f"row '{rid}': id already stored in {self._id_file[rid]} "
                             "(skip ids in writer.completed_ids)")
        if rid in self._buffer_ids:
            raise ValueError(f"row '{rid}': id added twice")
        self._buffer.append(clean)
        self._buffer_ids.add(rid)
        if len(self._buffer) >= self.rows_per_shard:
            self.flush()

    def add_rows(self, rows: Iterable[dict]) -> None:
        """:meth:`add` each row in turn (stops at the first refused row)."""
        for row in rows:
            self.add(row)

    def _table(self, rows: list[dict]) -> tuple[pa.Table, np.ndarray]:
        n = len(rows)
        latent = np.stack([r["latent"] for r in rows])  # [N, C, T] float16
        text_states = np.stack([r["text_states"] for r in rows])  # [N, L, Dt]
        text_mask = np.stack([r["text_mask"] for r in rows])  # [N, L]

        columns = {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "latent": fixed_column("latent", latent),
            "caption": pa.array([r["caption"] for r in rows], pa.string()),
            "text_states": fixed_column("text_states", text_states),
            "text_mask": fixed_column("text_mask", text_mask),
            **{c: pa.array([r[c] for r in rows], pa.float32()) for c in ("bpm", "seconds_start", "seconds_total")},
            **{c: pa.array([r[c] for r in rows], pa.string()) for c in self.metadata_columns},
        }
        assert all(len(v) == n for v in columns.values())
        return pa.Table.from_arrays(list(columns.values()), schema=self.schema), latent

    def _next_name(self) -> str:
        while True:
            name = f"{self.prefix}-{self._next_index:05d}.parquet"
            self._next_index += 1
            if name not in self._parts:
                return name

    def flush(self) -> str | None:
        """Write the buffered rows (if any) as one shard now; returns its name."""
        if not self._buffer:
            return None
        rows, self._buffer, self._buffer_ids = self._buffer, [], set()
        table, latent = self._table(rows)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=self.compression, row_group_size=min(len(rows), 1024))
        data = sink.getvalue().to_pybytes()
        lat64 = latent.astype(np.float64)
        name = self._next_name()
        info = {"name": name, "rows": len(rows), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "ids": [r["id"] for r in rows], "channel_sum": lat64.sum(axis=(0, 2)).tolist(),
                "channel_sumsq": np.square(lat64).sum(axis=(0, 2)).tolist(),
                "channel_min": lat64.min(axis=(0, 2)).tolist(), "channel_max": lat64.max(axis=(0, 2)).tolist(),
                "identity": self.identity}
        storage.write_bytes_atomic(storage.join(self.uri, name), data)  # the shard first, its sidecar after
        storage.write_bytes_atomic(storage.join(self.uri, PARTS_DIR, f"{name}.json"), json.dumps(info).encode())
        self._parts[name] = info
        self._id_file.update({r["id"]: name for r in rows})
        log.info("wrote %s/%s (%d rows, %d bytes)", self.uri, name, len(rows), len(data))
        return name

    def close(self, *, extra: dict | None = None, finalize: bool = True) -> Manifest | None:
        """Flush the last (possibly short) shard and, unless told not to, write ``manifest.json``
        from every finished shard of this identity in the folder; returns the Manifest."""
        self.flush()
        self._closed = True
        if not finalize:
            return None
        return write_manifest(self.uri, identity=self.identity, extra=extra)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()  # on an error the finished shards stay (resumable) and no manifest is written


def stats_from_sums(channel_sum: np.ndarray, channel_sumsq: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (n - 1) [C] from float64 sums over ``count`` values per channel."""
    mean = channel_sum / count
    var = (channel_sumsq - count * mean**2) / max(count - 1, 1)
    return mean, np.sqrt(np.maximum(var, 0.0))


def write_manifest(uri: str, *, identity: dict, extra: dict | None = None, verify: bool = False) -> Manifest:
    """Build ``manifest.json`` from the finished shards (sidecars) of ``identity`` under ``uri``
    and write it atomically; ValueError when there are none."""
    parts = _completed_parts(uri, identity, verify)
    if not parts:
        raise ValueError(f"no finished shards under {uri}: nothing to put in a manifest")
    names = sorted(parts)
    rows = sum(parts[n]["rows"] for n in names)
    count = rows * int(identity["latent_shape"][1])
    mean, std = stats_from_sums(np.sum([parts[n]["channel_sum"] for n in names], axis=0),
                                np.sum([parts[n]["channel_sumsq"] for n in names], axis=0), count)
    ranged = all("channel_min" in parts[n] for n in names)  # sidecars written before the range lack it
    manifest = Manifest(schema_version=SCHEMA_VERSION, codec=identity["codec"], text_encoder=identity["text_encoder"],
                        latent_shape=list(identity["latent_shape"]), text_shape=list(identity["text_shape"]),
                        latent_mean=mean.tolist(), latent_std=std.tolist(), num_rows=rows,
                        files=[ShardFile(n, parts[n]["rows"], parts[n]["bytes"], parts[n]["sha256"]) for n in names],
                        metadata_columns=list(identity.get("metadata_columns", [])), extra=dict(extra or {}),
                        latent_min=np.min([parts[n]["channel_min"] for n in names], axis=0).tolist() if ranged else [],
                        latent_max=np.max([parts[n]["channel_max"] for n in names], axis=0).tolist() if ranged else [])
    storage.write_bytes_atomic(storage.join(uri, MANIFEST_NAME), manifest.to_json().encode())
    log.info("wrote %s/%s: %d files, %d rows", uri, MANIFEST_NAME, len(names), rows)
    return manifest
