"""Conversion at scale: MIDI files -> checksummed tensor shards that training reads (`musicvae convert`).

Files are sorted by name and cut into fixed-size chunks of `shard_size` files; chunk i becomes
`shard-0000i.npz`. Because a shard depends only on its own files, the config (with its drum map),
the mode and (seed, i), shards are byte-identical whatever the number of workers, and each can be skipped on
restart when its sidecar `shard-0000i.json` says it was built from the same inputs and the file
still has the recorded sha256. `index.json` is written last; `load_shards` refuses a directory
without it, so a killed run is never mistaken for a finished one.

A file that cannot be read or converted never stops the run: it is counted and listed in
`errors.csv` (name, error_type, message).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import fnmatch
import glob
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from musicvae.configs import add_drum_map_argument, get_config
from musicvae.data.converter import MODES
from musicvae.data.corpus import read_manifest
from musicvae.data.midi_io import MAX_MIDI_BYTES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
ERRORS_NAME = "errors.csv"
DEFAULT_SHARD_SIZE = (
    64  # 0.5-1 s of work per shard: enough shards to balance 16 workers on a few thousand files
)
ARRAY_KEYS = ("inputs", "outputs", "controls", "lengths", "sources")
MIDI_SUFFIXES = (".mid", ".midi")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Fixed zip timestamp (the earliest a zip entry can carry) for byte-identical zips: np.savez, and
# zipfile's writestr with a name, stamp the current time into every member. Served zips use it too.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# Which corpus family feeds which config (first matching pattern wins).
FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("groovae*", "groove"),
    ("*-trio_16bar*", "trio"),
    ("cat-drums*", "drums"),
    ("nade-drums*", "drums"),
    ("cat-mel*", "melody"),
    ("*-mel_16bar*", "melody"),
)


def config_family(config_name: str) -> str:
    for pattern, family in FAMILY_PATTERNS:
        if fnmatch.fnmatchcase(config_name, pattern):
            return family
    raise ValueError(f"no corpus family is known for config {config_name!r}")


def _dtypes(family: str) -> dict[str, np.dtype]:
    # Fixed per family (not taken from the data) so an empty shard has the same dtypes as a full one.
    io_dtype = np.dtype(np.float64) if family == "groove" else np.dtype(np.bool_)
    return {
        "inputs": io_dtype,
        "outputs": io_dtype,
        "controls": np.dtype(np.bool_),
        "lengths": np.dtype(np.int32),
    }


# --- input discovery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    name: str  # what shards and errors.csv call it; also the sort key
    path: str  # a MIDI file, or the archive holding `member`
    member: str | None = None


def _is_midi(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def _is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def _tar_inputs(path: str, prefix: str, members: set[str] | None = None) -> list[_Input]:
    with tarfile.open(path) as tar:
        found = [
            m.name
            for m in tar.getmembers()
            if m.isfile() and (_is_midi(m.name) if members is None else m.name in members)
        ]
    return [_Input(f"{prefix}{m}", path, m) for m in found]


def _corpus_inputs(data_dir: Path, family: str, split: str | None) -> list[_Input]:
    """Members of `data/<family>.tar` listed for that family (and split) in `data/manifest.csv`."""
    wanted = {
        row["member"]
        for row in read_manifest(data_dir)
        if row["family"] == family and (split is None or row["split"] == split)
    }
    inputs = _tar_inputs(str(data_dir / f"{family}.tar"), "", wanted)
    missing = wanted - {i.name for i in inputs}
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} manifest members are not in {family}.tar, e.g. {min(missing)!r}"
        )
    return inputs


def _user_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[_Input]:
    found: list[_Input] = []
    for raw in paths:
        spec = os.fspath(raw)
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches or not os.path.exists(matches[0]):
            raise FileNotFoundError(f"no such file, directory or glob match: {spec}")
        for match in matches:
            path = os.path.normpath(match)
            if os.path.isdir(path):
                for root, dirs, files in os.walk(path):
                    dirs.sort()
                    found += [
                        _Input(os.path.join(root, f), os.path.join(root, f)) for f in files if _is_midi(f)
                    ]
            elif _is_tar(path):
                found += _tar_inputs(path, path + "/")
            else:  # named explicitly (or matched by a glob): taken whatever its suffix
                found.append(_Input(path, path))
    return found


def discover_inputs(
    config_name: str, inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], split: str | None
) -> list[_Input]:
    """Sorted, de-duplicated inputs: a corpus dir (has manifest.csv) or MIDI files/dirs/globs/tars."""
    specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if len(specs) == 1 and (Path(specs[0]) / "manifest.csv").is_file():
        found = _corpus_inputs(Path(specs[0]), config_family(config_name), split)
    elif split is not None:
        raise ValueError(
            "split selects from the corpus manifest; it needs a corpus data dir as the only input"
        )
    else:
        found = _user_inputs(specs)
    unique = {i.name: i for i in found}
    if not unique:
        raise ValueError(
            f"no MIDI files found in {', '.join(os.fspath(s) for s in specs)} (a corpus dir needs manifest.csv)"
        )
    return [unique[name] for name in sorted(unique)]


class _Reader:
    """Reads input bytes, keeping each archive open across members."""

    def __init__(self) -> None:
        self._tars: dict[str, tarfile.TarFile] = {}

    def read(self, item: _Input) -> bytes:
        if item.member is None:
            with open(item.path, "rb") as f:
                # Capped read: a huge non-MIDI file must not be loaded only to be rejected by the parser.
                return f.read(MAX_MIDI_BYTES + 1)
        if item.path not in self._tars:
            self._tars[item.path] = tarfile.open(item.path)  # noqa: SIM115 - open across members, see close()
        extracted = self._tars[item.path].extractfile(item.member)
        assert extracted is not None  # members were listed with isfile()
        return extracted.read(MAX_MIDI_BYTES + 1)

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()


# --- one shard (runs in a worker process) -------------------------------------------------------


@dataclass(frozen=True)
class _ShardJob:
    config_name: str
    mode: str
    seed: int
    index: int
    output_dir: str
    key: str  # identifies the settings and input bytes this shard is built from
    files: tuple[tuple[str, bytes], ...]
    drum_map: str | None = None  # GrooVAE's pitch map (Config.drum_map)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def _sidecar_path(output_dir: Path, index: int) -> Path:
    return output_dir / f"shard-{index:05d}.json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    # Deflate: the one-hot arrays shrink 30-100x for a few ms per shard (conversion costs seconds).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key in ARRAY_KEYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arrays[key], allow_pickle=False)
    return buf.getvalue()


def _pad(x: np.ndarray, length: int, dtype: np.dtype, what: str) -> np.ndarray:
    if len(x) > length:
        raise ValueError(f"{what}: a window of {len(x)} steps exceeds max_seq_len={length}")
    # Empty controls come as float64 from ConverterTensors; any non-empty array must cast losslessly.
    if x.size and not np.can_cast(x.dtype, dtype):
        raise TypeError(f"{what}: converter produced {x.dtype}, expected {dtype}")
    out = np.zeros((length, x.shape[1]), dtype=dtype)
    out[: len(x)] = x
    return out


def _convert_shard(job: _ShardJob) -> dict[str, Any]:
    cfg = get_config(job.config_name).with_drum_map(job.drum_map)
    converter = cfg.new_converter()
    converter.set_mode(job.mode)
    converter.seed(int(np.random.SeedSequence((job.seed, job.index)).generate_state(1)[0]))
    dtypes = _dtypes(config_family(job.config_name))
    depths = {
        "inputs": converter.input_depth,
        "outputs": converter.output_depth,
        "controls": converter.control_depth,
    }
    length = cfg.hparams.max_seq_len
    columns: dict[str, list[np.ndarray]] = {k: [] for k in depths}
    lengths: list[int] = []
    sources: list[str] = []
    errors: list[list[str]] = []
    no_windows = 0
    for name, midi in job.files:
        try:
            tensors = converter.to_tensors(midi)
        except Exception as e:  # noqa: BLE001 - one odd file must not end a long run; it is listed instead
            errors.append([name, type(e).__name__, str(e)])
            continue
        no_windows += len(tensors) == 0
        for key, windows in (
            ("inputs", tensors.inputs),
            ("outputs", tensors.outputs),
            ("controls", tensors.controls),
        ):
            columns[key] += [_pad(x, length, dtypes[key], f"{name} {key}") for x in windows]
        lengths += tensors.lengths
        sources += [name] * len(tensors)
    arrays = {
        key: np.stack(columns[key]) if columns[key] else np.zeros((0, length, depths[key]), dtypes[key])
        for key in depths
    }
    arrays["lengths"] = np.asarray(lengths, dtype=np.int32)
    arrays["sources"] = np.asarray(sources, dtype=str)
    out = Path(job.output_dir)
    payload = _npz_bytes(arrays)
    _atomic_write(out / shard_name(job.index), payload)
    sidecar = {
        "key": job.key,
        "file": shard_name(job.index),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "windows": len(lengths),
        "files": len(job.files),
        "files_no_windows": no_windows,
        "errors": errors,
    }
    _atomic_write(_sidecar_path(out, job.index), json.dumps(sidecar, indent=1).encode())
    return sidecar


# --- the run ------------------------------------------------------------------------------------


@dataclass
class ConversionSummary:
    output_dir: str
    num_shards: int
    shards_built: int
    shards_skipped: int
    num_windows: int
    files_total: int
    files_with_windows: int
    files_no_windows: int
    files_failed: int
    fingerprint: str
    seconds: float


def _chunks(items: list[_Input], size: int) -> Iterator[list[_Input]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reusable_sidecar(output_dir: Path, index: int, key: str) -> dict[str, Any] | None:
    """The shard's sidecar when the shard was built from these exact inputs and is intact."""
    try:
        sidecar = json.loads(_sidecar_path(output_dir, index).read_text())
        shard = output_dir / shard_name(index)
        if sidecar.get("key") == key and shard.is_file() and _sha256_file(shard) == sidecar.get("sha256"):
            return sidecar
    except (OSError, ValueError):
        pass  # missing or torn sidecar: rebuild
    return None


def _remove_stale(output_dir: Path, num_shards: int) -> None:
    """Drop the old index, temp files and shards beyond this run's count (left by a larger input)."""
    (output_dir / INDEX_NAME).unlink(missing_ok=True)
    for path in output_dir.glob("shard-[0-9][0-9][0-9][0-9][0-9]*"):
        stem = path.name.split(".")[0]
        if path.name.endswith(".tmp") or int(stem.split("-")[1]) >= num_shards:
            path.unlink()


def convert(
    config_name: str,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    split: str | None = None,
    mode: str = "eval",
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    seed: int = 0,
    resume: bool = True,
    drum_map: str | None = None,
) -> ConversionSummary:
    """Convert MIDI into shards under `output_dir` (see the module docstring); returns what was done.

    `drum_map` picks GrooVAE's pitch map ('roland', the default, or 'gm'; see `configs.DRUM_MAPS`).
    """
    started = time.perf_counter()
    cfg = get_config(config_name).with_drum_map(drum_map)
    family = config_family(config_name)
    if mode not in MODES:
        raise ValueError(f"invalid mode {mode!r}; expected one of {', '.join(MODES)}")
    if split not in (None, "train", "heldout"):
        raise ValueError(f"invalid split {split!r}; expected train or heldout")
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    items = discover_inputs(config_name, inputs, split)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_shards = -(-len(items) // shard_size)
    # Each spawned worker costs ~0.5 s of imports; more workers than shards would only add that.
    workers = max(1, min(workers or os.cpu_count() or 1, num_shards))
    _remove_stale(out, num_shards)
    log.info(
        "%s: %d files -> %d shards in %s (%d workers)", config_name, len(items), num_shards, out, workers
    )

    fingerprint = hashlib.sha256()
    sidecars: dict[int, dict[str, Any]] = {}
    skipped = 0
    reader = _Reader()
    pool = (
        cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 1
        else None
    )
    pending: dict[cf.Future[dict[str, Any]], int] = {}
    progress = tqdm(total=len(items), unit="file", desc=config_name, disable=None)

    def collect(futures: Iterable[cf.Future[dict[str, Any]]]) -> None:
        for future in futures:
            sidecars[pending.pop(future)] = result = future.result()
            progress.update(result["files"])

    try:
        for index, chunk in enumerate(_chunks(items, shard_size)):
            files = tuple((item.name, reader.read(item)) for item in chunk)
            settings = [FORMAT_VERSION, config_name, mode, seed, index] + ([cfg.drum_map] if cfg.drum_map else [])
            key_hash = hashlib.sha256(json.dumps(settings).encode())
            for name, data in files:
                entry = f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode()
                fingerprint.update(entry)
                key_hash.update(entry)
            key = key_hash.hexdigest()
            reused = _reusable_sidecar(out, index, key) if resume else None
            if reused is not None:
                sidecars[index] = reused
                skipped += 1
                progress.update(len(chunk))
                continue
            job = _ShardJob(config_name, mode, seed, index, str(out), key, files, cfg.drum_map)
            if pool is None:
                sidecars[index] = _convert_shard(job)
                progress.update(len(chunk))
                continue
            pending[pool.submit(_convert_shard, job)] = index
            # Bounded in flight, so the main process never holds more than a few chunks of MIDI bytes.
            while len(pending) >= 2 * workers:
                collect(cf.wait(pending, return_when=cf.FIRST_COMPLETED).done)
        collect(cf.as_completed(list(pending)))
    finally:
        progress.close()
        reader.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    shards = [sidecars[i] for i in range(num_shards)]
    errors = [row for s in shards for row in s["errors"]]
    no_windows = sum(s["files_no_windows"] for s in shards)
    with open(out / ERRORS_NAME, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "error_type", "message"])
        writer.writerows(errors)
    converter = cfg.new_converter()
    index_doc = {
        "format": FORMAT_VERSION,
        "config": config_name,
        "family": family,
        "mode": mode,
        "seed": seed,
        "drum_map": cfg.drum_map,
        "shard_size": shard_size,
        "input_depth": converter.input_depth,
        "output_depth": converter.output_depth,
        "control_depth": converter.control_depth,
        "max_seq_len": cfg.hparams.max_seq_len,
        "dtypes": {k: v.str for k, v in _dtypes(family).items()},
        "fingerprint": fingerprint.hexdigest(),
        "num_windows": sum(s["windows"] for s in shards),
        "files": {
            "total": len(items),
            "with_windows": len(items) - no_windows - len(errors),
            "no_windows": no_windows,
            "failed": len(errors),
        },
        "shards": [
            {"file": s["file"], "sha256": s["sha256"], "windows": s["windows"], "files": s["files"]}
            for s in shards
        ],
    }
    _atomic_write(out / INDEX_NAME, json.dumps(index_doc, indent=1).encode())
    if errors:
        log.warning("%d of %d files failed to convert; see %s", len(errors), len(items), out / ERRORS_NAME)
    unmapped = sum(row[1] == "UnmappedDrumPitchError" for row in errors)
    if unmapped:
        log.warning(
            "%d files have drum pitches outside the --drum_map=%s pitch map; for General MIDI data use --drum_map=gm",
            unmapped, cfg.drum_map,
        )
    summary = ConversionSummary(
        output_dir=str(out),
        num_shards=num_shards,
        shards_built=num_shards - skipped,
        shards_skipped=skipped,
        num_windows=index_doc["num_windows"],
        files_total=len(items),
        files_with_windows=index_doc["files"]["with_windows"],
        files_no_windows=no_windows,
        files_failed=len(errors),
        fingerprint=index_doc["fingerprint"],
        seconds=time.perf_counter() - started,
    )
    log.info("done: %s", summary)
    return summary


class ShardError(RuntimeError):
    """A converted output directory is incomplete or its shards do not match index.json."""


def load_shards(output_dir: str | os.PathLike[str], verify: bool = True) -> dict[str, np.ndarray]:
    """All windows of a converted directory, concatenated in shard order (keys: ARRAY_KEYS)."""
    out = Path(output_dir)
    try:
        index = json.loads((out / INDEX_NAME).read_text())
    except FileNotFoundError:
        raise ShardError(
            f"{out}: no {INDEX_NAME}; the conversion did not finish (run `musicvae convert` again)"
        ) from None
    entries = index["shards"]
    missing = [e["file"] for e in entries if not (out / e["file"]).is_file()]
    if missing:
        raise ShardError(
            f"{out}: {len(missing)} shard(s) missing, e.g. {missing[0]}; re-run `musicvae convert`"
        )
    total = index["num_windows"]
    length = index["max_seq_len"]
    depths = {
        "inputs": index["input_depth"],
        "outputs": index["output_depth"],
        "controls": index["control_depth"],
    }
    # Preallocated, so peak memory is the dataset once rather than shards plus their concatenation.
    result = {k: np.empty((total, length, d), dtype=np.dtype(index["dtypes"][k])) for k, d in depths.items()}
    result["lengths"] = np.empty(total, dtype=np.int32)
    sources: list[np.ndarray] = []
    start = 0
    for entry in entries:
        path = out / entry["file"]
        if verify and _sha256_file(path) != entry["sha256"]:
            raise ShardError(
                f"{path}: sha256 does not match {INDEX_NAME}; the shard is corrupt or stale, re-run `musicvae convert`"
            )
        with np.load(path, allow_pickle=False) as shard:
            count = len(shard["lengths"])
            if count != entry["windows"]:
                raise ShardError(f"{path}: {count} windows, {INDEX_NAME} says {entry['windows']}")
            for key in ("inputs", "outputs", "controls", "lengths"):
                result[key][start : start + count] = shard[key]
            sources.append(shard["sources"])
        start += count
    result["sources"] = np.concatenate(sources) if sources else np.zeros(0, dtype=str)
    return result


# --- command line -------------------------------------------------------------------------------


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert MIDI into tensor shards for training",
        description="Convert MIDI files into checksummed tensor shards (shard-NNNNN.npz + index.json) that "
        "training reads. Inputs are the corpus under --data_dir (the config's family, filtered by --split) "
        "unless --examples_path is given. Files that fail are listed in errors.csv and do not stop the run.",
    )
    p.add_argument("--config", required=True, help="config name from CONFIG_MAP, e.g. cat-mel_2bar_small")
    p.add_argument(
        "--examples_path",
        action="append",
        default=[],
        help="MIDI files, directories (searched recursively for .mid/.midi), globs or .tar archives; "
        "repeat the flag or separate with commas. Replaces --data_dir",
    )
    p.add_argument(
        "--data_dir",
        default="data",
        help="corpus directory with manifest.csv and <family>.tar (default: data)",
    )
    p.add_argument(
        "--split", choices=("train", "heldout"), help="corpus split to convert (default: all); corpus only"
    )
    p.add_argument("--output_dir", required=True, help="where shards, index.json and errors.csv are written")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="eval",
        help="converter mode: eval keeps the first windows of each file (deterministic), train samples windows "
        "at random (seeded per shard), infer uses inference pitch maps (GrooVAE). Default: eval. Shards freeze "
        "what the conversion drew (windows, GrooVAE note dropout): train GrooVAE's dropout config from MIDI, "
        "where music_vae_train --nocache_dataset draws them again every epoch",
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="worker processes (default: all cores)"
    )
    p.add_argument(
        "--shard_size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"MIDI files per shard, the unit of parallel work and of resuming (default: {DEFAULT_SHARD_SIZE})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed: window sampling in --mode train, note dropout in GrooVAE configs (default: 0)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="rebuild every shard (default: keep shards whose inputs and checksum are unchanged)",
    )
    add_drum_map_argument(p)
    p.set_defaults(func=run_convert)
    return p


def run_convert(args: argparse.Namespace) -> int:
    try:  # --drum_map on a config that has none
        get_config(args.config).with_drum_map(args.drum_map)
    except (KeyError, ValueError) as e:
        print(f"musicvae convert: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    examples = [part for value in args.examples_path for part in value.split(",") if part]
    summary = convert(
        args.config,
        examples or args.data_dir,
        args.output_dir,
        split=args.split,
        mode=args.mode,
        workers=args.workers,
        shard_size=args.shard_size,
        seed=args.seed,
        resume=args.resume,
        drum_map=args.drum_map,
    )
    print(json.dumps(asdict(summary), indent=1))
    return 0
