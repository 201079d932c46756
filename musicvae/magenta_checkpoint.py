"""Read Magenta's TensorFlow checkpoints without TensorFlow, and map them onto our PyTorch model.

Format (TensorFlow "V2" checkpoints, the tensor bundle of `tf.train.Saver` / `tf.train.Checkpoint`):

* `<prefix>.index` is an SSTable in LevelDB's table format. The file ends with a 48-byte footer: two
  block handles (metaindex, index; each a pair of varints offset/size), zero padding to 40 bytes and the
  little-endian fixed64 magic 0xdb4775248b80fb57. Every block is followed by a 5-byte trailer (1 byte
  compression type: 0 none, 1 snappy; 4 bytes masked crc32c of block contents + type byte). A block is a
  run of prefix-compressed entries (varint shared, varint non_shared, varint value_length, key suffix,
  value), then uint32 restart offsets and their uint32 count. The index block maps separator keys to the
  handles of the data blocks; data blocks map keys to values, keys sorted.
* The entry with the empty key is a `BundleHeaderProto` (num_shards=1, endianness=2 (0 little, 1 big),
  version=3). Every other key is a tensor name whose value is a `BundleEntryProto` (dtype=1,
  shape=2 (`TensorShapeProto`: repeated dim=2 {size=1, name=2}, unknown_rank=3), shard_id=3, offset=4,
  size=5, crc32c=6 (fixed32, masked), slices=7 (partitioned variables; not supported here)).
* The tensor bytes are in `<prefix>.data-<shard:05d>-of-<num_shards:05d>` at [offset, offset + size),
  row-major, in the header's endianness (TF writes little-endian).

The protobufs are decoded by a tiny wire-format parser below (no generated code, no TensorFlow).
Checksums use CRC-32C (Castagnoli) with LevelDB's mask ((crc >> 15 | crc << 17) + 0xa282ead8); the
tensor checksum is computed by a vectorised numpy implementation (≈ hundreds of MB/s), and can be
skipped with `verify=False`.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "CheckpointError",
    "TensorEntry",
    "CheckpointReader",
    "read_checkpoint",
    "list_variables",
    "resolve_checkpoint",
    "crc32c",
    "masked_crc32c",
    "load_magenta_weights",
    "magenta_variable_map",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, truncation, bad magic, bad checksum, unsupported content."""


# ------------------------------------------------------------------------------------------------
# CRC-32C
# ------------------------------------------------------------------------------------------------

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_tables(n: int = 8) -> np.ndarray:
    """Slicing-by-n tables: T[0] is the ordinary byte table, T[k][b] = byte table applied k more times."""
    t0 = np.zeros(256, dtype=np.uint32)
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t0[b] = c
    tables = np.zeros((n, 256), dtype=np.uint32)
    tables[0] = t0
    for k in range(1, n):
        prev = tables[k - 1]
        tables[k] = (prev >> np.uint32(8)) ^ t0[prev & np.uint32(0xFF)]
    return tables


_T = _make_tables(8)
_T0 = [int(v) for v in _T[0]]
_CHUNK = 1024  # bytes per independently-processed chunk in the vectorised path (multiple of 8)
_BLOCK = 16 << 20  # bytes processed per vectorised pass (bounds temporary memory)


def _crc0_scalar(data: bytes | memoryview, crc: int = 0) -> int:
    """Raw CRC register update (no pre/post inversion), one byte at a time. For small inputs."""
    t = _T0
    for b in bytes(data):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _crc0_chunks(words: np.ndarray) -> np.ndarray:
    """Raw CRC (zero initial register) of every row of `words` [n_chunks, chunk/8] (uint64, little-endian bytes)."""
    cols = np.ascontiguousarray(words.T)  # [chunk/8, n_chunks]: row j = j-th word of every chunk
    crc = np.zeros(cols.shape[1], dtype=np.uint32)
    t = _T
    m8 = np.uint32(0xFF)
    for j in range(cols.shape[0]):
        w = cols[j]
        lo = (w & np.uint64(0xFFFFFFFF)).astype(np.uint32) ^ crc
        hi = (w >> np.uint64(32)).astype(np.uint32)
        crc = (
            t[7][lo & m8]
            ^ t[6][(lo >> np.uint32(8)) & m8]
            ^ t[5][(lo >> np.uint32(16)) & m8]
            ^ t[4][lo >> np.uint32(24)]
            ^ t[3][hi & m8]
            ^ t[2][(hi >> np.uint32(8)) & m8]
            ^ t[1][(hi >> np.uint32(16)) & m8]
            ^ t[0][hi >> np.uint32(24)]
        )
    return crc


def _op_apply(op: list[int], x: int) -> int:
    """Apply a GF(2) linear map given by its 32 column images to the 32-bit vector x."""
    r = 0
    i = 0
    while x:
        if x & 1:
            r ^= op[i]
        x >>= 1
        i += 1
    return r


def _op_compose(a: list[int], b: list[int]) -> list[int]:
    """a ∘ b."""
    return [_op_apply(a, col) for col in b]


_ZERO_BYTE_OP = [_crc0_scalar(b"\x00", 1 << i) for i in range(32)]  # register after one zero byte
_shift_cache: dict[int, list[int]] = {}


def _shift_op(n: int) -> list[int]:
    """Linear map taking a raw CRC register to the register after n more zero bytes."""
    if n in _shift_cache:
        return _shift_cache[n]
    result = [1 << i for i in range(32)]
    power = _ZERO_BYTE_OP
    k = n
    while k:
        if k & 1:
            result = _op_compose(power, result)
        k >>= 1
        if k:
            power = _op_compose(power, power)
    if len(_shift_cache) < 64:
        _shift_cache[n] = result
    return result


def _op_tables(op: list[int]) -> np.ndarray:
    """Four 256-entry tables so that op(x) = T0[x&255] ^ T1[x>>8&255] ^ T2[..] ^ T3[x>>24]."""
    tabs = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        for b in range(256):
            tabs[k, b] = _op_apply(op, b << (8 * k))
    return tabs


_CHUNK_TABLES: dict[int, np.ndarray] = {}


def _combine_equal(crcs: np.ndarray, length: int) -> int:
    """Raw CRC of the concatenation of equal-length pieces whose raw CRCs are `crcs` (zero initial register)."""
    crcs = crcs.astype(np.uint32)
    m8 = np.uint32(0xFF)
    while crcs.size > 1:
        if crcs.size % 2:
            # Prepending a zero-byte piece leaves a zero-initialised raw CRC unchanged.
            crcs = np.concatenate([np.zeros(1, dtype=np.uint32), crcs])
        if length not in _CHUNK_TABLES:
            _CHUNK_TABLES[length] = _op_tables(_shift_op(length))
        t = _CHUNK_TABLES[length]
        left, right = crcs[0::2], crcs[1::2]
        shifted = t[0][left & m8] ^ t[1][(left >> np.uint32(8)) & m8] ^ t[2][(left >> np.uint32(16)) & m8] ^ t[3][left >> np.uint32(24)]
        crcs = shifted ^ right
        length *= 2
    return int(crcs[0]) if crcs.size else 0


def _crc0(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """Raw CRC-32C register (zero initial value, no final inversion) of `data`."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = buf.size
    if n < 4 * _CHUNK:
        return _crc0_scalar(buf.tobytes())
    crc = 0
    for start in range(0, n, _BLOCK):
        piece = buf[start : start + _BLOCK]
        size = piece.size
        pad = (-size) % _CHUNK
        if pad:  # leading zeros do not change a zero-initialised raw CRC
            piece = np.concatenate([np.zeros(pad, dtype=np.uint8), piece])
        words = piece.view("<u8").reshape(-1, _CHUNK // 8)
        block_crc = _combine_equal(_crc0_chunks(words), _CHUNK)
        crc = _op_apply(_shift_op(size), crc) ^ block_crc
    return crc


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """Standard CRC-32C (as `crc32c::Value` in LevelDB/TensorFlow)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    init = _op_apply(_shift_op(buf.size), 0xFFFFFFFF) if buf.size else 0xFFFFFFFF
    return (init ^ _crc0(buf)) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """LevelDB/TensorFlow masked CRC-32C (what checkpoints store)."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# Protobuf wire format
# ------------------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    end = len(buf) if end is None else end
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise CheckpointError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a serialized message; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise CheckpointError("truncated fixed64 field")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise CheckpointError("truncated length-delimited field")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise CheckpointError("truncated fixed32 field")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire} (field {num})")
        yield num, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# DataType enum (tensorflow/core/framework/types.proto) -> numpy dtype (little-endian)
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 8: "complex64",
                9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "float16", 20: "resource",
                21: "variant", 22: "uint32", 23: "uint64"}


@dataclass(frozen=True)
class TensorEntry:
    """A decoded `BundleEntryProto`."""

    name: str
    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES.get(self.dtype_enum, f"DataType({self.dtype_enum})")


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for num, wire, value in _fields(buf):
        if num == 2 and wire == 2:
            size = 0
            for n2, w2, v2 in _fields(value):
                if n2 == 1 and w2 == 0:
                    size = _signed64(v2)
            dims.append(size)
        elif num == 3 and wire == 0 and value:
            raise CheckpointError("tensor with unknown rank in checkpoint")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for num, wire, value in _fields(buf):
        if num == 1 and wire == 0:
            dtype = value
        elif num == 2 and wire == 2:
            shape = _parse_shape(value)
        elif num == 3 and wire == 0:
            shard = _signed64(value)
        elif num == 4 and wire == 0:
            offset = _signed64(value)
        elif num == 5 and wire == 0:
            size = _signed64(value)
        elif num == 6 and wire == 5:
            crc = value
        elif num == 7 and wire == 2:
            sliced = True
    return TensorEntry(name, dtype, shape, shard, offset, size, crc, sliced)


# ------------------------------------------------------------------------------------------------
# SSTable (LevelDB table format)
# ------------------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_TRAILER_SIZE = 5


def _snappy_decompress(data: bytes) -> bytes:
    """Raw snappy block decompression (TensorFlow writes uncompressed tables; this is for completeness)."""
    n, pos = _varint(data, 0)
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                nbytes = length - 59
                if pos + nbytes > end:
                    raise CheckpointError("truncated snappy literal")
                length = int.from_bytes(data[pos : pos + nbytes], "little")
                pos += nbytes
            length += 1
            if pos + length > end:
                raise CheckpointError("truncated snappy literal")
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            if pos >= end:
                raise CheckpointError("truncated snappy copy")
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            if pos + 2 > end:
                raise CheckpointError("truncated snappy copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            if pos + 4 > end:
                raise CheckpointError("truncated snappy copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise CheckpointError("corrupt snappy block (bad copy offset)")
        for _ in range(length):  # copies may overlap their own output
            out.append(out[-offset])
    if len(out) != n:
        raise CheckpointError(f"corrupt snappy block: expected {n} bytes, got {len(out)}")
    return bytes(out)


def _read_block(data: bytes, offset: int, size: int, what: str, verify: bool) -> bytes:
    if offset < 0 or size < 0 or offset + size + _TRAILER_SIZE > len(data):
        raise CheckpointError(f"index file truncated: {what} block [{offset}, {offset + size}) + trailer "
                              f"lies beyond the end of the file ({len(data)} bytes)")
    contents = data[offset : offset + size]
    ctype = data[offset + size]
    if verify:
        stored = struct.unpack_from("<I", data, offset + size + 1)[0]
        if masked_crc32c(data[offset : offset + size + 1]) != stored:
            raise CheckpointError(f"index file corrupt: checksum mismatch in {what} block at offset {offset}")
    if ctype == 0:
        return contents
    if ctype == 1:
        return _snappy_decompress(contents)
    raise CheckpointError(f"index file: unknown block compression type {ctype} in {what} block")


def _block_entries(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"index file corrupt: {what} block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"index file corrupt: bad restart count in {what} block")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos, limit)
        non_shared, pos = _varint(block, pos, limit)
        vlen, pos = _varint(block, pos, limit)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise CheckpointError(f"index file corrupt: bad entry in {what} block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + vlen]
        pos += vlen


def _read_table(path: Path, verify: bool) -> list[tuple[bytes, bytes]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint index {path}: {e}") from e
    if len(data) < _FOOTER_SIZE:
        raise CheckpointError(f"checkpoint index {path} is truncated ({len(data)} bytes, shorter than the "
                              f"{_FOOTER_SIZE}-byte table footer)")
    footer = data[-_FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, 40)[0]
    if magic != _TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow V2 checkpoint index (bad table magic "
                              f"{magic:#018x}, expected {_TABLE_MAGIC:#018x}); truncated or not an .index file?")
    _meta_off, p = _varint(footer, 0, 40)
    _meta_size, p = _varint(footer, p, 40)
    index_off, p = _varint(footer, p, 40)
    index_size, p = _varint(footer, p, 40)
    body = data[: len(data) - _FOOTER_SIZE]
    index = _read_block(body, index_off, index_size, "index", verify)
    entries: list[tuple[bytes, bytes]] = []
    for _sep, handle in _block_entries(index, "index"):
        off, q = _varint(handle, 0)
        size, _ = _varint(handle, q)
        entries.extend(_block_entries(_read_block(body, off, size, "data", verify), "data"))
    return entries


# ------------------------------------------------------------------------------------------------
# Locating checkpoints
# ------------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"-(\d+)$")


def _latest_in_dir(directory: Path) -> Path:
    state = directory / "checkpoint"
    if state.is_file():
        m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
        if m:
            p = Path(m.group(1).encode().decode("unicode_escape"))
            p = p if p.is_absolute() else directory / p
            if Path(str(p) + ".index").is_file():
                return p
            # The state file often holds an absolute path from the training machine: fall back to the basename.
            local = directory / p.name
            if Path(str(local) + ".index").is_file():
                return local
    indexes = sorted(directory.glob("*.index"))
    if not indexes:
        raise CheckpointError(f"no checkpoint (*.index) found in directory {directory}")

    def key(ix: Path) -> tuple[int, str]:
        m = _STEP_RE.search(ix.name[: -len(".index")])
        return (int(m.group(1)) if m else -1, ix.name)

    return max(indexes, key=key).with_suffix("")


def _safe_extract(tar_path: Path, dest: Path) -> None:
    try:
        with tarfile.open(tar_path) as tar:
            dest_resolved = dest.resolve()
            for member in tar.getmembers():
                name = member.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or (parts and ":" in parts[0]):
                    raise CheckpointError(f"refusing tar bundle {tar_path}: unsafe member path {name!r}")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise CheckpointError(f"refusing tar bundle {tar_path}: member {name!r} is not a regular file")
                target = (dest / name).resolve()
                if dest_resolved not in target.parents:
                    raise CheckpointError(f"refusing tar bundle {tar_path}: member {name!r} escapes the extraction dir")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise CheckpointError(f"cannot extract {name!r} from {tar_path}")
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except tarfile.TarError as e:
        raise CheckpointError(f"cannot read tar bundle {tar_path}: {e}") from e


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint prefix (`.../model.ckpt-5`) from a prefix, an `.index` file or a directory."""
    p = Path(path)
    if p.is_dir():
        return _latest_in_dir(p)
    if p.name.endswith(".index") and p.is_file():
        return p.with_suffix("")
    if Path(str(p) + ".index").is_file():
        return p
    raise CheckpointError(f"no checkpoint at {p} (expected a prefix with a .index file, a directory or a .tar bundle)")


class CheckpointReader:
    """Reads a tensor bundle. Use `read_checkpoint` / `list_variables` for the common cases."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self._tmp: tempfile.TemporaryDirectory | None = None
        p = Path(path)
        if p.is_file() and tarfile.is_tarfile(p) and not p.name.endswith((".index",)) and ".data-" not in p.name:
            self._tmp = tempfile.TemporaryDirectory(prefix="magenta-ckpt-")
            tmp = Path(self._tmp.name)
            _safe_extract(p, tmp)
            indexes = sorted(tmp.rglob("*.index"))
            if not indexes:
                self.close()
                raise CheckpointError(f"tar bundle {p} holds no .index file")
            dirs = {ix.parent for ix in indexes}
            if len(dirs) > 1:
                self.close()
                raise CheckpointError(f"tar bundle {p} holds checkpoints in several folders: {sorted(map(str, dirs))}")
            self.prefix = _latest_in_dir(dirs.pop())
        else:
            self.prefix = resolve_checkpoint(p)
        self.verify = verify
        table = _read_table(Path(str(self.prefix) + ".index"), verify)
        self.num_shards = 1
        self.big_endian = False
        self.entries: dict[str, TensorEntry] = {}
        header_seen = False
        for key, value in table:
            if key == b"":
                header_seen = True
                for num, wire, v in _fields(value):
                    if num == 1 and wire == 0:
                        self.num_shards = v
                    elif num == 2 and wire == 0:
                        self.big_endian = v == 1
                continue
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = _parse_entry(name, value)
        if not header_seen:
            raise CheckpointError(f"{self.prefix}.index has no bundle header entry (not a tensor bundle?)")
        if self.num_shards < 1:
            raise CheckpointError(f"{self.prefix}.index: bad num_shards {self.num_shards}")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def shard_path(self, shard_id: int) -> Path:
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def variables(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {name: (e.dtype_name, e.shape) for name, e in sorted(self.entries.items())}

    def _np_dtype(self, e: TensorEntry) -> np.dtype:
        if e.sliced:
            raise CheckpointError(f"tensor {e.name!r} is a partitioned (sliced) variable; not supported")
        dt = _DTYPES.get(e.dtype_enum)
        if dt is None:
            raise CheckpointError(f"tensor {e.name!r} has unsupported dtype {e.dtype_name}")
        return dt.newbyteorder(">") if self.big_endian and dt.itemsize > 1 else dt

    def read_all(self) -> dict[str, np.ndarray]:
        by_shard: dict[int, list[TensorEntry]] = {}
        for e in self.entries.values():
            by_shard.setdefault(e.shard_id, []).append(e)
        out: dict[str, np.ndarray] = {}
        for shard_id, entries in sorted(by_shard.items()):
            if not 0 <= shard_id < self.num_shards:
                raise CheckpointError(f"tensor {entries[0].name!r} refers to shard {shard_id} of {self.num_shards}")
            path = self.shard_path(shard_id)
            try:
                with open(path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    file_size = f.tell()
                    for e in sorted(entries, key=lambda e: e.offset):
                        out[e.name] = self._read_entry(f, e, file_size, path)
            except FileNotFoundError as err:
                raise CheckpointError(f"checkpoint data file missing: {path}") from err
        return dict(sorted(out.items()))

    def read(self, name: str) -> np.ndarray:
        e = self.entries.get(name)
        if e is None:
            raise KeyError(f"no tensor {name!r} in checkpoint {self.prefix}")
        path = self.shard_path(e.shard_id)
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                return self._read_entry(f, e, f.tell(), path)
        except FileNotFoundError as err:
            raise CheckpointError(f"checkpoint data file missing: {path}") from err

    def _read_entry(self, f: Any, e: TensorEntry, file_size: int, path: Path) -> np.ndarray:
        dt = self._np_dtype(e)
        count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        if count * dt.itemsize != e.size:
            raise CheckpointError(f"tensor {e.name!r}: {e.size} bytes stored but shape {list(e.shape)} of "
                                  f"{e.dtype_name} needs {count * dt.itemsize}")
        if e.offset < 0 or e.offset + e.size > file_size:
            raise CheckpointError(f"checkpoint data file {path} is truncated: tensor {e.name!r} needs bytes "
                                  f"[{e.offset}, {e.offset + e.size}) but the file has {file_size}")
        f.seek(e.offset)
        raw = bytearray(e.size)
        if f.readinto(raw) != e.size:
            raise CheckpointError(f"short read of tensor {e.name!r} from {path}")
        if self.verify and e.crc32c is not None:
            actual = masked_crc32c(raw)
            if actual != e.crc32c:
                raise CheckpointError(f"checksum mismatch for tensor {e.name!r} in {path} (stored masked crc32c "
                                      f"{e.crc32c:#010x}, computed {actual:#010x}): the data file is corrupt")
        arr = np.frombuffer(raw, dtype=dt).reshape(e.shape)
        if dt.byteorder == ">":
            arr = arr.astype(dt.newbyteorder("<"))
        if dt == np.dtype("?") and arr.size and arr.view(np.uint8).max() > 1:
            raise CheckpointError(f"tensor {e.name!r}: bool values other than 0/1")
        return arr


def read_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a TF V2 checkpoint, by variable name.

    `path`: a prefix (`.../model.ckpt-5`), its `.index` file, a directory (the checkpoint named by its
    `checkpoint` state file, else the highest-numbered `.index`) or a `.tar` bundle of `.index` + `.data`.
    `verify`: check every block and tensor CRC-32C (raises `CheckpointError` on mismatch).
    """
    with CheckpointReader(path, verify=verify) as reader:
        return reader.read_all()


def list_variables(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype name, shape)} of every tensor, without reading tensor data."""
    with CheckpointReader(path, verify=True) as reader:
        return reader.variables()


# ------------------------------------------------------------------------------------------------
# Mapping onto musicvae.nn.MusicVAE
# ------------------------------------------------------------------------------------------------

# Checkpoint entries that are not model weights: optimizer slots and counters.
_IGNORED = re.compile(r"(^|/)(global_step|beta1_power|beta2_power)$|/Adam(_\d+)?$")


def _is_ignored(name: str) -> bool:
    return bool(_IGNORED.search(name))


class _Plan:
    """TF variable name -> (expected TF shape, function copying the numpy value into the model)."""

    def __init__(self) -> None:
        self.targets: dict[str, tuple[tuple[int, ...], Any]] = {}
        self.unsupported: list[str] = []

    def add(self, name: str, shape: tuple[int, ...], copy: Any) -> None:
        if name in self.targets:
            raise RuntimeError(f"variable {name} mapped twice")
        self.targets[name] = (tuple(int(s) for s in shape), copy)

    def dense(self, scope: str, linear: Any) -> None:
        import torch

        def kernel(value: np.ndarray) -> None:
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(value.T)))

        def bias(value: np.ndarray) -> None:
            linear.bias.copy_(torch.from_numpy(value))

        out_features, in_features = linear.weight.shape
        self.add(f"{scope}/kernel", (in_features, out_features), kernel)
        self.add(f"{scope}/bias", (out_features,), bias)

    def lstm(self, scope: str, layer: Any) -> None:
        """One LSTMBlockCell: `<scope>/kernel` [in + n, 4n] and `<scope>/bias` [4n]."""
        import torch

        pending: dict[str, np.ndarray] = {}

        def part(which: str):
            def copy(value: np.ndarray) -> None:
                pending[which] = value
                if len(pending) == 2:  # load_tf_ wants kernel and bias together
                    layer.load_tf_(torch.from_numpy(pending["kernel"]), torch.from_numpy(pending["bias"]))

            return copy

        self.add(f"{scope}/kernel", (layer.input_size + layer.units, 4 * layer.units), part("kernel"))
        self.add(f"{scope}/bias", (4 * layer.units,), part("bias"))

    def lstm_stack(self, scope: str, stack: Any, multi_rnn_cell: bool = True) -> None:
        """`<scope>/[multi_rnn_cell/]cell_k/lstm_cell` for every layer k of an LstmStack."""
        inner = "multi_rnn_cell/" if multi_rnn_cell else ""
        for k, layer in enumerate(stack.layers):
            self.lstm(f"{scope}/{inner}cell_{k}/lstm_cell", layer)


def _plan_encoder(plan: _Plan, scope: str, encoder: Any) -> None:
    from musicvae.nn.encoders import BidirectionalLstmEncoder, HierarchicalLstmEncoder

    if isinstance(encoder, BidirectionalLstmEncoder):
        # stack_bidirectional_dynamic_rnn: <scope>/cell_ℓ/bidirectional_rnn/{fw,bw}/<MultiRNNCell of one layer>
        for ell, (fw, bw) in enumerate(zip(encoder.fw, encoder.bw)):
            for direction, stack in (("fw", fw), ("bw", bw)):
                plan.lstm_stack(f"{scope}/cell_{ell}/bidirectional_rnn/{direction}", stack)
    elif isinstance(encoder, HierarchicalLstmEncoder):
        for k, level in enumerate(encoder.levels):
            _plan_encoder(plan, f"{scope}/hierarchical_level_{k}", level)
    else:
        plan.unsupported.append(f"encoder {type(encoder).__name__}")


def _plan_decoder(plan: _Plan, scope: str, decoder: Any) -> None:
    """`scope` is the variable scope the decoder was built in ('' at the top level)."""
    from musicvae.nn.decoders import BaseLstmDecoder, HierarchicalLstmDecoder, SplitMultiOutDecoder

    prefix = f"{scope}/" if scope else ""
    if isinstance(decoder, HierarchicalLstmDecoder):
        # Conductor: scope decoder/hierarchical_level_0, the MultiRNNCell called with that scope
        # (so no multi_rnn_cell/ level), initial state dense named initial_state.
        level = f"{prefix}decoder/hierarchical_level_0"
        plan.dense(f"{level}/initial_state", decoder.conductor_initial_state)
        plan.lstm_stack(level, decoder.conductor, multi_rnn_cell=False)
        _plan_decoder(plan, f"{prefix}core_decoder", decoder.core)
    elif isinstance(decoder, SplitMultiOutDecoder):
        for i, core in enumerate(decoder.cores):
            _plan_decoder(plan, f"{prefix}core_decoder_{i}", core)
    elif isinstance(decoder, BaseLstmDecoder):
        # BaseLstmDecoder: dynamic_decode(scope='decoder') -> decoder/multi_rnn_cell/cell_k/lstm_cell,
        # decoder/output_projection; initial state dense named decoder/z_to_initial_state.
        plan.dense(f"{prefix}decoder/z_to_initial_state", decoder.z_to_initial_state)
        plan.lstm_stack(f"{prefix}decoder", decoder.lstm)
        plan.dense(f"{prefix}decoder/output_projection", decoder.output_projection)
        extra = getattr(decoder, "magenta_variables", None)  # decoder-specific extras (e.g. NADE), if any
        if callable(extra):
            for name, (shape, copy) in extra(f"{prefix}decoder").items():
                plan.add(name, shape, copy)
    else:
        plan.unsupported.append(f"decoder {type(decoder).__name__}")


def magenta_variable_map(model: Any) -> dict[str, tuple[int, ...]]:
    """{TF variable name: TF shape} that a checkpoint must hold to fill `model` (a MusicVAE)."""
    plan = _build_plan(model)
    return {name: shape for name, (shape, _) in sorted(plan.targets.items())}


def _build_plan(model: Any) -> _Plan:
    plan = _Plan()
    _plan_encoder(plan, "encoder", model.encoder)
    plan.dense("encoder/mu", model.mu)
    plan.dense("encoder/sigma", model.sigma)
    _plan_decoder(plan, "", model.decoder)
    if plan.unsupported:
        raise CheckpointError(f"cannot map Magenta weights onto {', '.join(plan.unsupported)} (not supported yet)")
    return plan


def _describe(config: Any) -> str:
    if config is None:
        return "the model"
    hp = getattr(config, "hparams", None)
    name = getattr(config, "name", "?")
    if hp is None:
        return f"config {name!r}"
    return (f"config {name!r} (enc_rnn_size={list(hp.enc_rnn_size)}, dec_rnn_size={list(hp.dec_rnn_size)}, "
            f"z_size={hp.z_size})")


def load_magenta_weights(model: Any, variables: dict[str, np.ndarray] | str | os.PathLike, config: Any = None) -> None:
    """Copy a Magenta MusicVAE checkpoint's weights into `model` (a `musicvae.nn.MusicVAE`).

    `variables`: `read_checkpoint(...)`'s dict, or anything `read_checkpoint` accepts. `config`: the
    `Config` the model was built from (used to explain mismatches). Optimizer slots (`*/Adam`,
    `*/Adam_1`), `beta1_power`, `beta2_power` and `global_step` are ignored. Every other variable
    must be consumed and every model weight must be present with the right shape; otherwise a
    `CheckpointError` lists the missing, unexpected and mis-shaped variables and nothing is copied.

    Mapping (TF scope -> module): see `musicvae.nn.vae`'s docstring. Dense kernels are transposed
    into `nn.Linear.weight`; LSTMBlockCell kernels/biases go through `LstmLayer.load_tf_` (gate
    reorder (i, j, f, o) -> (i, f, g, o), split into weight_ih / weight_hh; forget bias not stored).
    """
    import torch

    if not isinstance(variables, dict):
        variables = read_checkpoint(variables)
    plan = _build_plan(model)
    missing = sorted(set(plan.targets) - set(variables))
    unexpected = sorted(k for k in variables if k not in plan.targets and not _is_ignored(k))
    wrong = []
    for name, (shape, _) in sorted(plan.targets.items()):
        if name in variables:
            value = np.asarray(variables[name])
            if tuple(value.shape) != shape:
                wrong.append(f"{name}: checkpoint {list(value.shape)}, model expects {list(shape)}")
            elif not np.issubdtype(value.dtype, np.floating):
                wrong.append(f"{name}: dtype {value.dtype}, expected a float tensor")
    if missing or unexpected or wrong:
        lines = [f"checkpoint does not fit {_describe(config)}:"]
        for title, items in (("missing variables", missing), ("unexpected variables", unexpected),
                             ("wrong shapes", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for name, (_, copy) in plan.targets.items():
            copy(np.array(variables[name], copy=True))  # writable, so torch.from_numpy does not warn
