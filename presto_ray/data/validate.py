"""Checks of a latent-shard folder against its ``manifest.json``, and of a manifest against a model.

:func:`validate_shards` reads every listed file once: presence, size and sha256, that it parses as
Parquet, schema and shapes, row counts, and (``check_rows``) finite latents / text states,
non-empty captions, unique ids and the manifest's per-channel statistics. Every problem names the
file (and the row index and id where there is one); all problems are reported together.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from presto_ray.data import storage
from presto_ray.data.shards import MANIFEST_NAME, Manifest, fixed_values, read_manifest, stats_from_sums

__all__ = ["Manifest", "ShardValidationError", "validate_shards", "check_against_model"]


class ShardValidationError(ValueError):
    """A shard folder disagrees with its manifest; ``problems`` lists each finding."""

    def __init__(self, uri: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"shards at {uri} failed validation ({len(problems)} problems):\n  - "
                         + "\n  - ".join(problems))


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


def _row_problems(name: str, table: pa.Table, manifest: Manifest) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Row-level findings in one file, plus its per-channel latent sum and sum of squares [C]."""
    problems = []
    ids = table.column("id").to_pylist()
    latent = fixed_values(table.column("latent"), "latent", manifest.latent_shape)  # [N, C, T]
    states = fixed_values(table.column("text_states"), "text_states", manifest.text_shape)  # [N, L, Dt]
    for col, values in (("latent", latent), ("text_states", states)):
        bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
        problems += [f"{name}: row {i} (id '{ids[i]}'): {col} has NaN/Inf values" for i in np.flatnonzero(bad)]
    for i, caption in enumerate(table.column("caption").to_pylist()):
        if caption is None or not caption.strip():
            problems.append(f"{name}: row {i} (id '{ids[i]}'): empty caption")
    lat64 = np.where(np.isfinite(latent), latent, 0).astype(np.float64)
    return problems, lat64.sum(axis=(0, 2)), np.square(lat64).sum(axis=(0, 2))


def validate_shards(uri: str, *, check_rows: bool = True, max_problems: int = 100) -> Manifest:
    """Validate the shard folder ``uri`` (local, ``file://`` or ``s3://``) against its manifest and
    return the Manifest; raises ShardValidationError (a ValueError) listing what is wrong, or
    FileNotFoundError / ValueError when ``manifest.json`` is missing or unparseable."""
    manifest = read_manifest(uri)
    want_schema = manifest.schema()
    problems: list[str] = []
    ids_seen: dict[str, str] = {}
    total_rows = 0
    sums = np.zeros(manifest.latent_shape[0])
    sumsqs = np.zeros(manifest.latent_shape[0])
    for entry in manifest.files:
        name = entry.name
        try:
            data = storage.read_bytes(storage.join(uri, name))
        except FileNotFoundError:
            problems.append(f"{name}: listed in {MANIFEST_NAME} but missing")
            continue
        if len(data) != entry.bytes:
            problems.append(f"{name}: {len(data)} bytes, the manifest says {entry.bytes} (truncated or replaced)")
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            problems.append(f"{name}: sha256 differs from the manifest (corrupt or changed file)")
        try:
            pf = pq.ParquetFile(pa.BufferReader(data))
            found = _schema_problems(name, pf.schema_arrow, want_schema)
            problems += found
            if pf.metadata.num_rows != entry.rows:
                problems.append(f"{name}: {pf.metadata.num_rows} rows, the manifest says {entry.rows}")
            total_rows += pf.metadata.num_rows
            if check_rows and not found:
                table = pf.read()
                row_found, s, ss = _row_problems(name, table, manifest)
                problems += row_found
                sums, sumsqs = sums + s, sumsqs + ss
                for i, rid in enumerate(table.column("id").to_pylist()):
                    if rid in ids_seen:
                        problems.append(f"{name}: row {i}: id '{rid}' also in {ids_seen[rid]}")
                    ids_seen[rid] = name
        except (pa.ArrowException, OSError, ValueError) as exc:
            problems.append(f"{name}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})")
        if len(problems) >= max_problems:
            raise ShardValidationError(uri, problems + [f"stopped after {max_problems} problems"])
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
    if problems:
        raise ShardValidationError(uri, problems)
    return manifest


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

