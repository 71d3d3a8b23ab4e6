"""Object-storage URIs -> pyarrow filesystems (local paths, ``file://``, ``s3://``).

S3 uses the standard AWS credential chain; an endpoint override (MinIO, any S3-compatible store,
the loopback test server) comes from ``PRESTO_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``, the region from
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Credentials are never logged.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

T = TypeVar("T")


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


def absolute(uri: str) -> str:
    """``uri`` as every process and folder reads it alike: an object-store URI unchanged, a local
    path or ``file://`` URI as an absolute path."""
    return str(uri) if is_remote(uri) else str(local_path(uri))


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


def check_reachable(uri: str, what: str = "storage") -> None:
    """Refuse ``uri`` before any work is done when it cannot be reached: for ``s3://`` its bucket
    must exist and answer (one request; transient errors retried); a local path needs nothing, its
    folders are created. Raises FileNotFoundError (missing bucket) or OSError naming ``what`` and ``uri``."""
    if not is_remote(uri):
        return
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    info = with_retries(lambda: fs.get_file_info(bucket), uri, what=f"reaching {what}")
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{what} '{uri}': bucket '{bucket}' does not exist (or these credentials cannot see it)")


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


# --- retries for object-storage calls -------------------------------------------------------------

log = logging.getLogger("presto_ray.data")

# Substrings of pyarrow/AWS SDK error messages. Permanent ones are checked first: a 403 or a missing
# bucket does not heal by waiting, so it fails at once; throttling, 5xx and dropped connections do.
_PERMANENT = ("ACCESS_DENIED", "AccessDenied", "NO_SUCH_BUCKET", "NoSuchBucket", "INVALID_ACCESS_KEY_ID",
              "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "HTTP status 403",
              "HTTP status 404", "HTTP status 400")
_TRANSIENT = ("NETWORK_CONNECTION", "Connection reset", "connection reset", "Broken pipe", "curlCode",
              "SLOW_DOWN", "SlowDown", "THROTTLING", "Throttling", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNAVAILABLE",
              "ServiceUnavailable", "INTERNAL_FAILURE", "InternalError", "REQUEST_TIMEOUT", "RequestTimeout",
              "HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504", "timed out")


def is_transient_error(exc: BaseException) -> bool:
    """True for errors worth retrying: dropped connections, timeouts, throttling, HTTP 5xx. Missing
    files, access denied (403) and missing buckets are permanent."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    text = str(exc)
    if any(s in text for s in _PERMANENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and any(s in text for s in _TRANSIENT)


def redact(text: str) -> str:
    """``text`` with any secret from the environment's AWS credentials masked."""
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(key)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def with_retries(fn: Callable[[], T], uri: str, *, what: str, attempts: int | None = None,
                 base_delay: float = 0.5, max_delay: float = 8.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn()``; transient errors (:func:`is_transient_error`) are retried with exponential
    backoff (base_delay * 2**k, capped at max_delay, with jitter) up to ``attempts`` calls in all
    (default ``PRESTO_S3_RETRIES`` or 5). A permanent error, or the last transient one, is raised as
    an ``OSError`` (``FileNotFoundError`` kept as such) whose message names ``what`` and ``uri``;
    credentials are never part of it."""
    attempts = attempts or int(os.environ.get("PRESTO_S3_RETRIES", "5"))
    for k in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            transient = is_transient_error(exc)
            if transient and k + 1 < attempts:
                delay = min(max_delay, base_delay * 2 ** k) * (0.5 + random.random() / 2)
                log.warning("%s '%s' failed (%s); retry %d/%d in %.2fs", what, uri,
                            redact(str(exc)).splitlines()[0][:200], k + 1, attempts - 1, delay)
                sleep(delay)
                continue
            kind = FileNotFoundError if isinstance(exc, FileNotFoundError) else OSError
            note = f" after {attempts} attempts" if transient else ""
            raise kind(f"{what} '{uri}' failed{note}: {redact(str(exc))}") from exc
    raise AssertionError("unreachable")


# --- small I/O helpers (retrying, atomic) ---------------------------------------------------------

STAGING_DIR = "_staging"  # S3 uploads land here first, then a server-side copy publishes them


def read_bytes(uri: str) -> bytes:
    """The whole object/file at ``uri``; transient S3 errors retried, others name the URI."""
    fs, path = resolve(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return with_retries(read, uri, what="reading")


def sha256(uri: str, chunk_bytes: int = 4 << 20) -> str:
    """Hex sha256 of the object/file at ``uri``, streamed in ``chunk_bytes`` pieces (memory: one
    chunk, whatever the file's size); transient S3 errors retried (the hash restarts)."""
    import hashlib

    fs, path = resolve(uri)

    def digest() -> str:
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(chunk_bytes):
                h.update(chunk)
        return h.hexdigest()

    return with_retries(digest, uri, what="hashing")


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that ``uri`` shows either its old state or all of ``data``, never a part:
    local: temporary name in the same folder + fsync + rename; S3: upload to ``_staging/`` next to
    it, size check, server-side copy to the final key, delete the staged object."""
    if not is_remote(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = resolve(uri)
    folder, name = path.rsplit("/", 1)
    staged = f"{folder}/{STAGING_DIR}/{name}.{uuid.uuid4().hex[:12]}"

    def upload() -> None:
        with fs.open_output_stream(staged) as f:
            f.write(data)
        size = fs.get_file_info(staged).size
        if size != len(data):
            raise ConnectionError(f"staged upload has {size} bytes, expected {len(data)}")

    with_retries(upload, uri, what="uploading")
    with_retries(lambda: fs.copy_file(staged, path), uri, what="publishing")
    try:
        with_retries(lambda: fs.delete_file(staged), uri, what="removing the staged copy of")
    except FileNotFoundError:
        pass


def delete_if_present(uri: str) -> None:
    """Delete the file/object at ``uri`` if it exists (retrying transient errors)."""
    fs, path = resolve(uri)
    try:
        with_retries(lambda: fs.delete_file(path), uri, what="deleting")
    except FileNotFoundError:
        pass


def read_json_record(path: str | Path) -> dict:
    """The JSON object in the local file ``path``, or {} when the file is missing or does not hold
    complete JSON: for a run's own records (metrics.json, latency.json, curve.json) that a
    resumed stage reads to decide what is left to do."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}

