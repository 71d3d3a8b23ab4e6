"""Read a TensorFlow tensor-bundle checkpoint (``prefix.index`` + ``prefix.data-NNNNN-of-NNNNN``)
with numpy alone.

Format (TF ``tensor_bundle``, written by ``tf.train.Saver`` / ``tf.train.Checkpoint``):

* ``prefix.index`` is a LevelDB-format SSTable. Its last 48 bytes are the footer: two block handles
  (metaindex, index; each a pair of varint64 offset/size), zero padding to 40 bytes, then the 8-byte
  little-endian magic ``0xdb4775248b80fb57``. Every block is followed by a 5-byte trailer
  (compression type byte, masked CRC-32C of block + type byte). A block is a run of prefix-compressed
  entries ``varint shared, varint non_shared, varint value_len, key[non_shared], value`` followed by a
  restart-point array (``uint32`` each) and its ``uint32`` count. The index block maps keys to the
  handles of the data blocks; the data blocks map tensor names to serialized ``BundleEntryProto``
  messages (the empty key holds the ``BundleHeaderProto``).
* ``BundleEntryProto``: 1 dtype (enum), 2 shape (``TensorShapeProto``: repeated field 2 ``Dim``
  with field 1 size), 3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32), 7 slices (partitioned
  variables; not supported here). ``BundleHeaderProto``: 1 num_shards, 2 endianness (0 = little).
* ``prefix.data-{shard:05d}-of-{num_shards:05d}`` holds the raw tensor bytes at ``offset``.

Only what ``tf.compat.v1.train.Saver`` checkpoints of ordinary numeric variables need is supported;
anything else raises :class:`TFBundleError` naming the offending file.
"""

from __future__ import annotations

import os
import struct

import numpy as np

__all__ = ["TFBundleError", "read_tf_bundle", "list_tf_bundle"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER_LEN = 5

# tensorflow/core/framework/types.proto -> numpy dtype (little-endian).
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}
_DT_STRING = 7


class TFBundleError(ValueError):
    """A tensor-bundle checkpoint is missing, truncated, corrupt or uses an unsupported feature."""


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


class _Reader:
    """Bounds-checked varint / protobuf cursor over a bytes object; errors name ``path``."""

    def __init__(self, data: bytes, path: str, what: str):
        self.data, self.path, self.what = data, path, what
        self.pos = 0

    def fail(self, msg: str) -> TFBundleError:
        return TFBundleError(f"{self.path}: corrupt tensor-bundle index ({self.what}): {msg}")

    def varint(self) -> int:
        result = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise self.fail("varint runs past the end")
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.fail("varint longer than 10 bytes")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} bytes at {self.pos}, only {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def _parse_proto(data: bytes, path: str, what: str) -> dict[int, list]:
    """Wire-format protobuf -> {field number: [values]} (varints as int, others as bytes)."""
    r = _Reader(data, path, what)
    fields: dict[int, list] = {}
    while not r.at_end():
        key = r.varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = r.varint()
        elif wire == 1:
            value = struct.unpack("<Q", r.take(8))[0]
        elif wire == 2:
            value = r.take(r.varint())
        elif wire == 5:
            value = struct.unpack("<I", r.take(4))[0]
        else:
            raise r.fail(f"unsupported protobuf wire type {wire} (field {field})")
        fields.setdefault(field, []).append(value)
    return fields


def _read_block(index: bytes, offset: int, size: int, path: str) -> bytes:
    end = offset + size + _BLOCK_TRAILER_LEN
    if offset < 0 or end > len(index) - _FOOTER_LEN:
        raise TFBundleError(
            f"{path}: corrupt tensor-bundle index: block [{offset}, {end}) lies outside the "
            f"{len(index)}-byte file (truncated?)"
        )
    block = index[offset : offset + size]
    ctype = index[offset + size]
    (masked,) = struct.unpack("<I", index[offset + size + 1 : end])
    if _crc32c(index[offset : offset + size + 1]) != _unmask_crc(masked):
        raise TFBundleError(f"{path}: corrupt tensor-bundle index: CRC mismatch in block at {offset}")
    if ctype != 0:
        raise TFBundleError(
            f"{path}: tensor-bundle index block at {offset} is compressed (type {ctype}); "
            "only uncompressed tables are supported"
        )
    return block


def _block_entries(block: bytes, path: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise TFBundleError(f"{path}: corrupt tensor-bundle index: block of {len(block)} bytes")
    (num_restarts,) = struct.unpack("<I", block[-4:])
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TFBundleError(f"{path}: corrupt tensor-bundle index: bad restart count {num_restarts}")
    r = _Reader(block[:limit], path, "block entries")
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    while not r.at_end():
        shared, non_shared, value_len = r.varint(), r.varint(), r.varint()
        if shared > len(key):
            raise r.fail(f"entry shares {shared} bytes of a {len(key)}-byte previous key")
        key = key[:shared] + r.take(non_shared)
        entries.append((key, r.take(value_len)))
    return entries


def _read_table(index_path: str) -> list[tuple[bytes, bytes]]:
    try:
        with open(index_path, "rb") as f:
            index = f.read()
    except OSError as e:
        raise TFBundleError(f"{index_path}: cannot read tensor-bundle index: {e}") from e
    if len(index) < _FOOTER_LEN:
        raise TFBundleError(
            f"{index_path}: not a tensor-bundle index: {len(index)} bytes, shorter than the "
            f"{_FOOTER_LEN}-byte table footer (truncated?)"
        )
    footer = index[-_FOOTER_LEN:]
    (magic,) = struct.unpack("<Q", footer[-8:])
    if magic != _TABLE_MAGIC:
        raise TFBundleError(
            f"{index_path}: not a tensor-bundle index: bad table magic {magic:#018x} (truncated or "
            "not a TensorFlow checkpoint index?)"
        )
    r = _Reader(footer[:-8], index_path, "footer")
    r.varint(), r.varint()  # metaindex handle (unused: TF writes no filter/meta blocks we need)
    idx_off, idx_size = r.varint(), r.varint()
    entries: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(_read_block(index, idx_off, idx_size, index_path), index_path):
        hr = _Reader(handle, index_path, "block handle")
        off, size = hr.varint(), hr.varint()
        entries.extend(_block_entries(_read_block(index, off, size, index_path), index_path))
    return entries


def _index_path(prefix: str) -> str:
    prefix = os.fspath(prefix)
    return prefix if prefix.endswith(".index") else prefix + ".index"


def _entries(prefix: str) -> tuple[str, int, list[tuple[str, dict]]]:
    index_path = _index_path(prefix)
    num_shards = 1
    tensors: list[tuple[str, dict]] = []
    for key, value in _read_table(index_path):
        if key == b"":
            header = _parse_proto(value, index_path, "bundle header")
            num_shards = header.get(1, [1])[-1]
            if header.get(2, [0])[-1] != 0:
                raise TFBundleError(f"{index_path}: big-endian tensor bundles are not supported")
            continue
        name = key.decode("utf-8", errors="replace")
        entry = _parse_proto(value, index_path, f"entry {name!r}")
        if 7 in entry:
            raise TFBundleError(f"{index_path}: tensor {name!r} is partitioned (slices); not supported")
        shape: list[int] = []
        if 2 in entry:
            for dim in _parse_proto(entry[2][-1], index_path, f"shape of {name!r}").get(2, []):
                shape.append(_parse_proto(dim, index_path, f"dim of {name!r}").get(1, [0])[-1])
        tensors.append(
            (
                name,
                {
                    "dtype": entry.get(1, [0])[-1],
                    "shape": tuple(shape),
                    "shard": entry.get(3, [0])[-1],
                    "offset": entry.get(4, [0])[-1],
                    "size": entry.get(5, [0])[-1],
                },
            )
        )
    return index_path, num_shards, tensors


def list_tf_bundle(prefix: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (numpy dtype name or 'DT_<n>', shape)} of every tensor in the bundle, without data."""
    _, _, tensors = _entries(os.fspath(prefix))
    out = {}
    for name, e in tensors:
        dt = _DTYPES.get(e["dtype"])
        out[name] = (np.dtype(dt).name if dt is not None else f"DT_{e['dtype']}", e["shape"])
    return out


def read_tf_bundle(
    prefix: str | os.PathLike, names: list[str] | None = None, skip_unsupported: bool = True
) -> dict[str, np.ndarray]:
    """Read tensors of the checkpoint ``prefix`` (the path without ``.index``) as numpy arrays.

    ``names`` restricts the result to those tensors (KeyError-like TFBundleError for a missing one).
    Tensors of unsupported dtypes (strings, resources) are skipped when ``skip_unsupported``, else
    they raise. Raises :class:`TFBundleError` naming the file on a missing, truncated or corrupt
    index or data file.
    """
    prefix = os.fspath(prefix)
    if prefix.endswith(".index"):
        prefix = prefix[: -len(".index")]
    index_path, num_shards, tensors = _entries(prefix)
    if names is not None:
        known = {n for n, _ in tensors}
        missing = [n for n in names if n not in known]
        if missing:
            raise TFBundleError(f"{index_path}: tensors not in the checkpoint: {missing}")
        wanted = set(names)
        tensors = [(n, e) for n, e in tensors if n in wanted]

    shards: dict[int, tuple[str, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for name, e in tensors:
        dt = _DTYPES.get(e["dtype"])
        if dt is None:
            if skip_unsupported and names is None:
                continue
            kind = "string" if e["dtype"] == _DT_STRING else f"DataType {e['dtype']}"
            raise TFBundleError(f"{index_path}: tensor {name!r} has unsupported dtype ({kind})")
        shard = e["shard"]
        if shard not in shards:
            data_path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
            try:
                shards[shard] = (data_path, np.fromfile(data_path, dtype=np.uint8))
            except OSError as err:
                raise TFBundleError(f"{data_path}: cannot read tensor-bundle data: {err}") from err
        data_path, buf = shards[shard]
        count = int(np.prod(e["shape"], dtype=np.int64))
        itemsize = np.dtype(dt).itemsize
        if e["size"] != count * itemsize:
            raise TFBundleError(
                f"{index_path}: tensor {name!r} declares {e['size']} bytes but shape {e['shape']} "
                f"of {np.dtype(dt).name} needs {count * itemsize}"
            )
        start, end = e["offset"], e["offset"] + e["size"]
        if end > buf.size:
            raise TFBundleError(
                f"{data_path}: tensor {name!r} needs bytes [{start}, {end}) but the data file has "
                f"only {buf.size} bytes (truncated?)"
            )
        arr = buf[start:end].view(np.dtype(dt).newbyteorder("<")).reshape(e["shape"])
        out[name] = arr.astype(np.dtype(dt), copy=True)
    return out
