"""Object-storage URIs -> pyarrow filesystems (local paths, ``file://``, ``s3://``).

S3 uses the standard AWS credential chain; an endpoint override (MinIO, any S3-compatible store,
the loopback test server) comes from ``PRESTO_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``, the region from
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Credentials are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme not in ("", "file")


def local_path(uri: str) -> Path:
    """Absolute local path of a plain path or ``file://`` URI."""
    parsed = urlparse(str(uri))
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"'{uri}' is not a local path")
    return Path(parsed.path if parsed.scheme == "file" else str(uri)).expanduser().resolve()


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("PRESTO_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a local path, ``file://`` or ``s3://`` URI."""
    parsed = urlparse(str(uri))
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), str(local_path(uri))
    if parsed.scheme == "s3":
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    raise ValueError(f"unsupported storage URI '{uri}': use a local path, file:// or s3://")


def list_dir(uri: str) -> list[str]:
    """Names directly under ``uri`` (empty when it does not exist)."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(Path(i.path).name for i in infos)


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def fetch_dir(uri: str, into: Path) -> Path:
    """A local folder holding ``uri``'s files: the folder itself when local, else a copy in ``into``."""
    if not is_remote(uri):
        return local_path(uri)
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"'{uri}' does not exist")
    into.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(into), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return into


def write_text(uri: str, text: str) -> None:
    """Write a small text file (local or object storage); local writes are atomic (temp + rename)."""
    if not is_remote(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
