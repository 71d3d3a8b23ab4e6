"""Checks of a latent-shard folder against its ``manifest.json``, and of a manifest against a model.

:func:`inspect_shards` reads every listed file once: presence, size and sha256, that it parses as
Parquet, schema and shapes, row counts, and (``check_rows``) finite latents / text states,
non-empty captions, unique ids and the manifest's per-channel statistics. It returns a
:class:`ShardReport` with one :class:`FileCheck` per file (``presto-ray validate`` prints it as a
table); :func:`validate_shards` raises when anything is wrong. Every problem names the file (and
the row index and id where there is one); all problems are reported together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from presto_ray.data import storage
from presto_ray.data.shards import MANIFEST_NAME, Manifest, fixed_values, read_manifest, stats_from_sums

__all__ = ["FileCheck", "Manifest", "ShardReport", "ShardValidationError", "inspect_shards", "validate_shards",
           "check_against_model"]


class ShardValidationError(ValueError):
    """A shard folder disagrees with its manifest; ``problems`` lists each finding."""

    def __init__(self, uri: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"shards at {uri} failed validation ({len(problems)} problems):\n  - "
                         + "\n  - ".join(problems))


@dataclass
class FileCheck:
    """What validation found in one shard file. ``sha256``: "ok", "differs" or "missing"; ``schema``:
    "ok", "differs" (columns, types or fixed shapes) or "unreadable"; ``rows``, ``nan_rows`` (rows
    with NaN/Inf in latent or text_states) and ``empty_captions`` are None where not read."""

    name: str
    bytes: int | None = None
    sha256: str = "missing"
    schema: str = "unreadable"
    rows: int | None = None
    nan_rows: int | None = None
    empty_captions: int | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ShardReport:
    """The result of :func:`inspect_shards`: per-file checks and every problem (per-file ones and
    those of the set: row totals, statistics, ids repeated across files, an early stop)."""

    uri: str
    manifest: Manifest
    files: list[FileCheck]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """One line per file (file, bytes, sha256, schema, rows, NaN rows, empty captions, problems)
        under a header, then a summary line."""
        head = ("file", "bytes", "sha256", "schema", "rows", "nan_rows", "empty_captions", "problems")
        cell = lambda v: "-" if v is None else str(v)  # noqa: E731
        lines = [head] + [(f.name, cell(f.bytes), f.sha256, f.schema, cell(f.rows), cell(f.nan_rows),
                           cell(f.empty_captions), str(len(f.problems))) for f in self.files]
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        verdict = "clean" if self.ok else f"{len(self.problems)} problems"
        out.append(f"{len(self.files)} of {len(self.manifest.files)} files checked, "
                   f"{self.manifest.num_rows} rows in the manifest: {verdict}")
        return "\n".join(out)


def _schema_problems(name: str, got: pa.Schema, want: pa.Schema) -> list[str]:
    problems = []
    got_types = {f.name: f.type for f in got}
    for f in want:
        if f.name not in got_types:
            problems.append(f"{name}: column '{f.name}' is missing")
        elif got_types[f.name] != f.type:
            problems.append(f"{name}: column '{f.name}' has type {got_types[f.name]}, the manifest implies {f.type}")
    extra = sorted(set(got_types) - set(want.names))
    if extra:
        problems.append(f"{name}: unexpected columns {extra}")
    return problems


def _row_problems(check: FileCheck, table: pa.Table, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Row-level findings in one file (added to ``check``), and its per-channel latent sum and sum
    of squares [C]."""
    name, ids = check.name, table.column("id").to_pylist()
    latent = fixed_values(table.column("latent"), "latent", manifest.latent_shape)  # [N, C, T]
    states = fixed_values(table.column("text_states"), "text_states", manifest.text_shape)  # [N, L, Dt]
    any_bad = np.zeros(len(ids), dtype=bool)
    for col, values in (("latent", latent), ("text_states", states)):
        bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
        any_bad |= bad
        check.problems += [f"{name}: row {i} (id '{ids[i]}'): {col} has NaN/Inf values" for i in np.flatnonzero(bad)]
    empty = [i for i, c in enumerate(table.column("caption").to_pylist()) if c is None or not c.strip()]
    check.problems += [f"{name}: row {i} (id '{ids[i]}'): empty caption" for i in empty]
    check.nan_rows, check.empty_captions = int(any_bad.sum()), len(empty)
    lat64 = np.where(np.isfinite(latent), latent, 0).astype(np.float64)
    return lat64.sum(axis=(0, 2)), np.square(lat64).sum(axis=(0, 2))


def _check_file(uri: str, entry, manifest: Manifest, want_schema: pa.Schema,
                check_rows: bool) -> tuple[FileCheck, pa.Table | None]:
    """One file read once: its FileCheck and, when its rows were read, the table."""
    name = entry.name
    check = FileCheck(name)
    try:
        data = storage.read_bytes(storage.join(uri, name))
    except FileNotFoundError:
        check.problems.append(f"{name}: listed in {MANIFEST_NAME} but missing")
        return check, None
    check.bytes = len(data)
    if len(data) != entry.bytes:
        check.problems.append(f"{name}: {len(data)} bytes, the manifest says {entry.bytes} (truncated or replaced)")
    check.sha256 = "ok" if hashlib.sha256(data).hexdigest() == entry.sha256 else "differs"
    if check.sha256 != "ok":
        check.problems.append(f"{name}: sha256 differs from the manifest (corrupt or changed file)")
    table = None
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        found = _schema_problems(name, pf.schema_arrow, want_schema)
        check.schema, check.rows = ("differs" if found else "ok"), pf.metadata.num_rows
        check.problems += found
        if pf.metadata.num_rows != entry.rows:
            check.problems.append(f"{name}: {pf.metadata.num_rows} rows, the manifest says {entry.rows}")
        if check_rows and not found:
            table = pf.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        check.schema = "unreadable"
        check.problems.append(f"{name}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})")
    return check, table


def inspect_shards(uri: str, *, check_rows: bool = True, max_problems: int = 100) -> ShardReport:
    """Check the shard folder ``uri`` (local, ``file://`` or ``s3://``) against its manifest, each
    file read once (whole, into memory, one at a time); stops reading files after ``max_problems``
    problems. Raises FileNotFoundError / ValueError only when ``manifest.json`` is missing or
    unparseable; everything else is in the report."""
    manifest = read_manifest(uri)
    want_schema = manifest.schema()
    problems: list[str] = []
    files: list[FileCheck] = []
    ids_seen: dict[str, str] = {}
    total_rows = 0
    sums = np.zeros(manifest.latent_shape[0])
    sumsqs = np.zeros(manifest.latent_shape[0])
    for entry in manifest.files:
        check, table = _check_file(uri, entry, manifest, want_schema, check_rows)
        files.append(check)
        total_rows += check.rows or 0
        if table is not None:
            s, ss = _row_problems(check, table, manifest)
            sums, sumsqs = sums + s, sumsqs + ss
            for i, rid in enumerate(table.column("id").to_pylist()):
                if rid in ids_seen:
                    check.problems.append(f"{check.name}: row {i}: id '{rid}' also in {ids_seen[rid]}")
                ids_seen[rid] = check.name
        problems += check.problems
        if len(problems) >= max_problems and len(files) < len(manifest.files):
            left = len(manifest.files) - len(files)
            problems.append(f"stopped after {max_problems} problems; {left} files not checked")
            return ShardReport(uri, manifest, files, problems)
    if sum(f.rows for f in manifest.files) != manifest.num_rows:
        problems.append(f"{MANIFEST_NAME}: num_rows {manifest.num_rows} differs from the sum over its files "
                        f"{sum(f.rows for f in manifest.files)}")
    if total_rows != manifest.num_rows:
        problems.append(f"{MANIFEST_NAME}: num_rows {manifest.num_rows}, the files hold {total_rows}")
    if check_rows and not problems:
        mean, std = stats_from_sums(sums, sumsqs, total_rows * manifest.latent_shape[1])
        for key, got in (("latent_mean", mean), ("latent_std", std)):
            if not np.allclose(getattr(manifest, key), got, rtol=1e-5, atol=1e-6):
                problems.append(f"{MANIFEST_NAME}: {key} disagrees with the data "
                                f"(max difference {np.abs(np.asarray(getattr(manifest, key)) - got).max():.3g})")
    return ShardReport(uri, manifest, files, problems)


def validate_shards(uri: str, *, check_rows: bool = True, max_problems: int = 100) -> Manifest:
    """:func:`inspect_shards`, returning the Manifest when the folder is clean and raising
    ShardValidationError (a ValueError) listing every problem otherwise."""
    report = inspect_shards(uri, check_rows=check_rows, max_problems=max_problems)
    if not report.ok:
        raise ShardValidationError(uri, report.problems)
    return report.manifest


def check_against_model(manifest: Manifest, latent_channels: int, latent_frames: int, text_tokens: int,
                        text_dim: int) -> None:
    """Raise ValueError naming the first manifest key that disagrees with the model config:
    latent_shape [C, T] vs (model.latent_channels, model.latent_frames), text_shape [L, Dt] vs
    (text.max_tokens, model.text_dim)."""
    checks = [("latent_shape[0]", manifest.latent_shape[0], latent_channels, "model.latent_channels"),
              ("latent_shape[1]", manifest.latent_shape[1], latent_frames, "model.latent_frames"),
              ("text_shape[0]", manifest.text_shape[0], text_tokens, "text.max_tokens"),
              ("text_shape[1]", manifest.text_shape[1], text_dim, "model.text_dim")]
    for key, got, want, config_key in checks:
        if int(got) != int(want):
            raise ValueError(f"shard manifest {key} = {got} but the model expects {config_key} = {want}")

