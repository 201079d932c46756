"""Reading Magenta's TF V2 checkpoints (tensor bundles) without TensorFlow."""

from __future__ import annotations

import io
import os
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from musicvae import magenta_checkpoint as mc
from musicvae.magenta_checkpoint import CheckpointError, list_variables, read_checkpoint

FIXTURES = Path(os.environ.get("MUSICVAE_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
CKPTS = FIXTURES / "magenta-checkpoints"
requires_ckpts = pytest.mark.skipif(not CKPTS.is_dir(), reason=f"checkpoint fixtures not found at {CKPTS}")

# model dir -> global step (README table)
STEPS = {
    "cat-drums_2bar_small": 5,
    "cat-mel_2bar_small": 5,
    "groovae_2bar_hits_control_tfds": 5,
    "groovae_2bar_humanize": 5,
    "hierdec-mel_16bar": 4,
    "hierdec-trio_16bar": 4,
    "nade-drums_2bar_full": 5,
}
LSTM = "multi_rnn_cell/cell_0/lstm_cell"


def prefix(model: str, sub: str = "checkpoint") -> Path:
    return CKPTS / model / sub / f"model.ckpt-{STEPS[model]}"


# --- CRC-32C ------------------------------------------------------------------------------------


def test_crc32c_known_values():
    assert mc.crc32c(b"") == 0
    assert mc.crc32c(b"123456789") == 0xE3069283
    assert mc.crc32c(bytes(32)) == 0x8A9136AA
    assert mc.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert mc.crc32c(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("n", [1, 5, 4095, 4096, 4097, 3 * 1024 + 7, 70001])
def test_crc32c_vectorised_matches_bytewise(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert mc.crc32c(data) == mc._crc0_scalar(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def test_crc32c_across_block_boundary(monkeypatch):
    monkeypatch.setattr(mc, "_BLOCK", 8192)  # force several vectorised passes + a ragged tail
    data = np.random.default_rng(3).integers(0, 256, 3 * 8192 + 1234, dtype=np.uint8).tobytes()
    assert mc.crc32c(data) == mc._crc0_scalar(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


# --- fixtures -----------------------------------------------------------------------------------


@requires_ckpts
@pytest.mark.parametrize("model", sorted(STEPS))
@pytest.mark.parametrize("sub", ["checkpoint", "checkpoint_no_adam"])
def test_every_fixture_reads(model, sub):
    v = read_checkpoint(prefix(model, sub))
    assert v["global_step"].dtype == np.int64 and v["global_step"].shape == ()
    assert int(v["global_step"]) == STEPS[model]
    assert all(a.dtype == np.float32 for k, a in v.items() if k != "global_step")
    listed = list_variables(prefix(model, sub))
    assert set(listed) == set(v)
    for k, (dtype, shape) in listed.items():
        assert shape == v[k].shape and dtype == str(v[k].dtype)
    if sub == "checkpoint":
        assert any("/Adam" in k for k in v) and "beta1_power" in v and "beta2_power" in v
    else:
        assert not any("Adam" in k for k in v) and "beta1_power" not in v


@requires_ckpts
def test_cat_mel_names_and_shapes():
    v = list_variables(prefix("cat-mel_2bar_small", "checkpoint_no_adam"))
    enc = "encoder/cell_0/bidirectional_rnn"
    expected = {
        f"{enc}/fw/{LSTM}/kernel": ("float32", (90 + 32, 4 * 32)),
        f"{enc}/fw/{LSTM}/bias": ("float32", (4 * 32,)),
        f"{enc}/bw/{LSTM}/kernel": ("float32", (90 + 32, 4 * 32)),
        f"{enc}/bw/{LSTM}/bias": ("float32", (4 * 32,)),
        "encoder/mu/kernel": ("float32", (64, 8)),
        "encoder/mu/bias": ("float32", (8,)),
        "encoder/sigma/kernel": ("float32", (64, 8)),
        "encoder/sigma/bias": ("float32", (8,)),
        "decoder/z_to_initial_state/kernel": ("float32", (8, 2 * 2 * 16)),
        "decoder/z_to_initial_state/bias": ("float32", (64,)),
        "decoder/multi_rnn_cell/cell_0/lstm_cell/kernel": ("float32", (90 + 8 + 16, 4 * 16)),
        "decoder/multi_rnn_cell/cell_1/lstm_cell/kernel": ("float32", (16 + 16, 4 * 16)),
        "decoder/multi_rnn_cell/cell_1/lstm_cell/bias": ("float32", (64,)),
        "decoder/output_projection/kernel": ("float32", (16, 90)),
        "decoder/output_projection/bias": ("float32", (90,)),
        "global_step": ("int64", ()),
    }
    assert v == expected | {"decoder/multi_rnn_cell/cell_0/lstm_cell/bias": ("float32", (64,))}


@requires_ckpts
def test_hierdec_trio_names_and_shapes():
    v = list_variables(prefix("hierdec-trio_16bar", "checkpoint_no_adam"))
    assert v["encoder/cell_0/bidirectional_rnn/fw/multi_rnn_cell/cell_0/lstm_cell/kernel"] == ("float32", (692 + 16, 64))
    assert v["encoder/cell_1/bidirectional_rnn/bw/multi_rnn_cell/cell_0/lstm_cell/kernel"] == ("float32", (32 + 16, 64))
    assert v["encoder/mu/kernel"] == ("float32", (32, 8))
    assert v["decoder/hierarchical_level_0/initial_state/kernel"] == ("float32", (8, 64))
    assert v["decoder/hierarchical_level_0/cell_0/lstm_cell/kernel"] == ("float32", (1 + 16, 64))
    assert v["decoder/hierarchical_level_0/cell_1/lstm_cell/kernel"] == ("float32", (16 + 16, 64))
    for i, depth in enumerate((90, 90, 512)):
        core = f"core_decoder/core_decoder_{i}/decoder"
        assert v[f"{core}/output_projection/kernel"] == ("float32", (16, depth))
        assert v[f"{core}/z_to_initial_state/kernel"] == ("float32", (16, 64))
        assert v[f"{core}/multi_rnn_cell/cell_0/lstm_cell/kernel"] == ("float32", (depth + 16 + 16, 64))
    assert len(v) == 43


@requires_ckpts
def test_hierdec_mel_and_nade_names():
    v = list_variables(prefix("hierdec-mel_16bar", "checkpoint_no_adam"))
    assert v["core_decoder/decoder/multi_rnn_cell/cell_0/lstm_cell/kernel"] == ("float32", (90 + 16 + 16, 64))
    assert v["core_decoder/decoder/z_to_initial_state/kernel"] == ("float32", (16, 64))
    n = list_variables(prefix("nade-drums_2bar_full", "checkpoint_no_adam"))
    assert n["decoder/nade/w_enc"] == ("float32", (61, 1, 128))
    assert n["decoder/nade/w_dec_t"] == ("float32", (61, 128, 1))
    assert n["decoder/output_projection/kernel"] == ("float32", (16, 128 + 61))


@requires_ckpts
@pytest.mark.parametrize("model", sorted(STEPS))
def test_no_adam_has_same_weights(model):
    full = read_checkpoint(prefix(model))
    slim = read_checkpoint(prefix(model, "checkpoint_no_adam"))
    weights = {k: a for k, a in full.items() if "Adam" not in k and not k.startswith(("beta1_power", "beta2_power"))}
    assert set(weights) == set(slim)
    for k in slim:
        np.testing.assert_array_equal(weights[k], slim[k], err_msg=k)
    assert full["encoder/mu/bias/Adam_1"].shape == slim["encoder/mu/bias"].shape


@requires_ckpts
def test_directory_and_index_paths():
    p = prefix("cat-mel_2bar_small", "checkpoint_no_adam")
    ref = read_checkpoint(p)
    for form in (p.parent, str(p) + ".index", str(p)):
        got = read_checkpoint(form)
        assert set(got) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])


def _copy_ckpt(src_prefix: Path, dest_dir: Path, step: int | None = None) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = src_prefix.name if step is None else f"model.ckpt-{step}"
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(str(src_prefix) + suffix, dest_dir / (name + suffix))
        os.chmod(dest_dir / (name + suffix), 0o644)
    return dest_dir / name


@requires_ckpts
def test_directory_picks_latest(tmp_path):
    _copy_ckpt(prefix("cat-mel_2bar_small", "checkpoint_no_adam"), tmp_path, step=9)
    _copy_ckpt(prefix("cat-drums_2bar_small", "checkpoint_no_adam"), tmp_path, step=10)
    assert mc.resolve_checkpoint(tmp_path).name == "model.ckpt-10"  # numerically highest, not lexically
    assert read_checkpoint(tmp_path)["decoder/output_projection/bias"].shape == (512,)
    # a `checkpoint` state file wins (an absolute path from another machine falls back to the basename)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/train/dir/model.ckpt-9"\n'
                                         'all_model_checkpoint_paths: "/train/dir/model.ckpt-9"\n')
    assert mc.resolve_checkpoint(tmp_path).name == "model.ckpt-9"
    assert read_checkpoint(tmp_path)["decoder/output_projection/bias"].shape == (90,)


@requires_ckpts
def test_tar_bundle_matches_prefix():
    from_tar = read_checkpoint(CKPTS / "cat-mel_2bar_small" / "cat-mel_2bar_small.tar")
    ref = read_checkpoint(prefix("cat-mel_2bar_small"))
    assert set(from_tar) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(from_tar[k], ref[k], err_msg=k)
    assert list_variables(CKPTS / "cat-mel_2bar_small" / "cat-mel_2bar_small.tar") == list_variables(prefix("cat-mel_2bar_small"))


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.mark.parametrize("bad", ["../evil.index", "/abs/evil.index", "sub/../../evil.index"])
def test_tar_rejects_unsafe_paths(tmp_path, bad):
    info = tarfile.TarInfo(bad)
    info.size = 3
    tar = _tar_with(tmp_path / "b.tar", [(info, b"abc")])
    with pytest.raises(CheckpointError, match="unsafe member path"):
        read_checkpoint(tar)
    assert not (tmp_path / "evil.index").exists()


def test_tar_rejects_links_and_empty(tmp_path):
    link = tarfile.TarInfo("model.ckpt-1.index")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(_tar_with(tmp_path / "l.tar", [(link, None)]))
    other = tarfile.TarInfo("README")
    other.size = 2
    with pytest.raises(CheckpointError, match="no .index"):
        read_checkpoint(_tar_with(tmp_path / "e.tar", [(other, b"hi")]))


# --- corruption ---------------------------------------------------------------------------------


@requires_ckpts
def test_flipped_data_byte_is_a_crc_error(tmp_path):
    p = _copy_ckpt(prefix("cat-mel_2bar_small", "checkpoint_no_adam"), tmp_path)
    data_file = Path(str(p) + ".data-00000-of-00001")
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch for tensor"):
        read_checkpoint(p)
    assert len(read_checkpoint(p, verify=False)) == 17  # verification can be turned off
    list_variables(p)  # the index is intact


@requires_ckpts
@pytest.mark.parametrize("keep", [0, 10, 47, 300, -1])
def test_truncated_index_is_a_clear_error(tmp_path, keep):
    p = _copy_ckpt(prefix("cat-mel_2bar_small", "checkpoint_no_adam"), tmp_path)
    index = Path(str(p) + ".index")
    raw = index.read_bytes()
    index.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(CheckpointError, match="truncated|bad table magic"):
        read_checkpoint(p)


@requires_ckpts
def test_corrupt_index_block_and_truncated_data(tmp_path):
    p = _copy_ckpt(prefix("cat-mel_2bar_small", "checkpoint_no_adam"), tmp_path)
    index = Path(str(p) + ".index")
    raw = bytearray(index.read_bytes())
    raw[20] ^= 1  # inside the data block: a tensor name
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch in data block"):
        read_checkpoint(p)
    q = _copy_ckpt(prefix("cat-mel_2bar_small", "checkpoint_no_adam"), tmp_path / "t")
    data_file = Path(str(q) + ".data-00000-of-00001")
    data_file.write_bytes(data_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is truncated"):
        read_checkpoint(q)
    Path(str(q) + ".data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="data file missing"):
        read_checkpoint(q)


def test_missing_and_non_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path)
    (tmp_path / "model.ckpt-1.index").write_bytes(b"x" * 100)
    with pytest.raises(CheckpointError, match="bad table magic"):
        read_checkpoint(tmp_path)


# --- synthetic bundles (dtypes, compression, layouts TF can write) --------------------------------


def _vint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(num: int, wire: int, value: int | bytes) -> bytes:
    key = _vint(num << 3 | wire)
    if wire == 0:
        return key + _vint(value)
    if wire == 5:
        return key + struct.pack("<I", value)
    return key + _vint(len(value)) + value


def _snappy_literal(data: bytes) -> bytes:
    """A valid snappy stream holding `data` as literals (60-byte pieces, exercising both tag forms)."""
    out = bytearray(_vint(len(data)))
    for i in range(0, len(data), 200):
        piece = data[i : i + 200]
        L = len(piece) - 1
        out += bytes([L << 2]) if L < 60 else bytes([60 << 2, L])
        out += piece
    return bytes(out)


def test_snappy_copies():
    # literal "abcd", copy-1 (len 8, offset 4: overlapping), copy-2 (len 3, offset 12), literal "!"
    stream = bytes([16, 3 << 2]) + b"abcd" + bytes([((8 - 4) << 2) | 1, 4]) + bytes([((3 - 1) << 2) | 2, 12, 0])
    stream += bytes([0]) + b"!"
    stream = _vint(16) + stream[1:]
    assert mc._snappy_decompress(stream) == b"abcdabcdabcdabc!"
    with pytest.raises(CheckpointError):
        mc._snappy_decompress(_vint(5) + bytes([((8 - 4) << 2) | 1, 4]))


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    out = bytearray()
    restarts = []
    prev = b""
    for i, (k, v) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        out += _vint(shared) + _vint(len(k) - shared) + _vint(len(v)) + k[shared:] + v
        prev = k
    for r in restarts or [0]:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def _write_bundle(prefix_path: Path, tensors: dict[str, np.ndarray], *, big_endian: bool = False,
                  snappy: bool = False, dtype_override: dict[str, int] | None = None, blocks: int = 2) -> None:
    enums = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3, np.dtype("int64"): 9,
             np.dtype("bool"): 10, np.dtype("float16"): 19, np.dtype("uint8"): 4}
    data = bytearray()
    kv = [(b"", _field(1, 0, 1) + _field(2, 0, int(big_endian)) + _field(3, 2, _field(1, 0, 1)))]
    for name in sorted(tensors):
        arr = np.array(tensors[name], order="C")  # (ascontiguousarray would make scalars 1-d)
        raw = arr.astype(arr.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in arr.shape)
        dtype = (dtype_override or {}).get(name, enums[arr.dtype])
        entry = (_field(1, 0, dtype) + (_field(2, 2, shape) if shape else b"") + _field(4, 0, len(data))
                 + _field(5, 0, len(raw)) + _field(6, 5, mc.masked_crc32c(raw)))
        if len(data) == 0:
            entry = _field(1, 0, dtype) + _field(2, 2, shape) + _field(5, 0, len(raw)) + _field(6, 5, mc.masked_crc32c(raw))
        kv.append((name.encode(), entry))
        data += raw
    Path(f"{prefix_path}.data-00000-of-00001").write_bytes(bytes(data))
    # split into `blocks` data blocks
    out = bytearray()
    handles = []
    per = -(-len(kv) // blocks)
    for i in range(0, len(kv), per):
        contents = _block(kv[i : i + per])
        ctype = 0
        if snappy:
            contents, ctype = _snappy_literal(contents), 1
        handles.append((kv[min(i + per, len(kv)) - 1][0], len(out), len(contents)))
        out += contents + bytes([ctype]) + struct.pack("<I", mc.masked_crc32c(contents + bytes([ctype])))
    meta_off = len(out)
    meta = _block([])
    out += meta + b"\0" + struct.pack("<I", mc.masked_crc32c(meta + b"\0"))
    index_off = len(out)
    index = _block([(k, _vint(off) + _vint(size)) for k, off, size in handles], restart_interval=1)
    out += index + b"\0" + struct.pack("<I", mc.masked_crc32c(index + b"\0"))
    footer = _vint(meta_off) + _vint(len(meta)) + _vint(index_off) + _vint(len(index))
    footer += bytes(40 - len(footer)) + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix_path}.index").write_bytes(bytes(out + footer))


def _sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a/f32": rng.standard_normal((3, 5)).astype(np.float32),
        "a/f16": rng.standard_normal((4,)).astype(np.float16),
        "a/f64": rng.standard_normal((2, 2, 2)),
        "a/i32": rng.integers(-5, 5, (7,), dtype=np.int32),
        "b/bool": np.array([True, False, True]),
        "b/empty": np.zeros((0, 4), np.float32),
        "global_step": np.array(123456789012, dtype=np.int64),
        "z/long_name_" + "x" * 200: np.arange(6, dtype=np.float32).reshape(2, 3),
    }


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("snappy", [False, True])
def test_synthetic_bundle_dtypes(tmp_path, big_endian, snappy):
    tensors = _sample_tensors()
    _write_bundle(tmp_path / "model.ckpt-3", tensors, big_endian=big_endian, snappy=snappy)
    got = read_checkpoint(tmp_path)
    assert list(got) == sorted(tensors)
    for k, a in tensors.items():
        assert got[k].dtype == a.dtype.newbyteorder("=") and got[k].shape == a.shape, k
        np.testing.assert_array_equal(got[k], a)
    assert list_variables(tmp_path)["a/f16"] == ("float16", (4,))
    assert list_variables(tmp_path)["global_step"] == ("int64", ())


def test_synthetic_unknown_dtype(tmp_path):
    _write_bundle(tmp_path / "model.ckpt-1", {"s": np.zeros(3, np.uint8)}, dtype_override={"s": 7})
    assert list_variables(tmp_path) == {"s": ("string", (3,))}
    with pytest.raises(CheckpointError, match="unsupported dtype string"):
        read_checkpoint(tmp_path)
