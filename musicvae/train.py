"""Training and evaluation: Magenta's `music_vae_train`, as a plain loop.

Optimisation follows Magenta's `base_model.train` (spec §0 facts 2-3, §1.1): Adam with TF1's
defaults, LR(step) = (lr - min_lr)·decay_rate^step + min_lr, gradients clipped to the global norm
`grad_clip` (or by value with clip_mode=value) and all set to zero when the global norm reaches
`grad_norm_clip_to_zero`; the Adam step runs even then. The global step (number of updates done so
far) goes to the model for β and scheduled sampling.

Data (`open_source`) comes from converted shards (`musicvae convert`, checksums verified) or from MIDI
converted on the fly in DataLoader workers: a directory, glob or tar of MIDI files, or the corpus
under `data/` filtered by split. Training conversion uses the converter's 'train' mode (random window
choice) and Magenta's transposition augmentation; like Magenta's `cache_dataset` (on by default) the
first conversion is kept and every later epoch reshuffles it. Each epoch is a seeded permutation cut
into full batches (Magenta's padded_batch with drop_remainder).

GrooVAE's input transforms (humanize, tap, fixed velocities, closed hi-hat removal, note dropout) are
the converter's: they change the encoder input only, the target stays the full groove. From MIDI they
are applied during conversion in the workers; note dropout is drawn from the per-file seeded rng, so
with --nocache_dataset it is drawn again every epoch (with the cache, as in Magenta, once per run).
Shards freeze whatever their conversion drew, so the dropout config should train from MIDI. The
converter's drum map (`--drum_map`, `Config.drum_map`) is recorded in checkpoints and must match the
one in the shards' index.json.

Checkpoints (`<run_dir>/train/ckpt-<step>.pt`) hold only tensors and plain containers, so they load
with `weights_only=True`: weights, the full config, optimiser state, RNG states and the data
position. They are written atomically; rerunning the same command after a crash or SIGKILL resumes
from the latest one and reaches the weights an uninterrupted run would (bit for bit on CPU).

Eval (`evaluate`) differs from Magenta's in two documented ways: it evaluates the latest checkpoint
once instead of polling for new ones, and it keeps the last partial batch so every held-out example
counts.
"""

from __future__ import annotations

import copy
import csv
import glob
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from musicvae.configs import CONFIG_MAP, Config, HParams, ModelSpec, get_config
from musicvae.convert import INDEX_NAME, _Reader, config_family, discover_inputs, load_shards
from musicvae.data.augment import augment_sequence
from musicvae.data.converter import DataConverter
from musicvae.data.midi_io import read_midi
from musicvae.nn.decoders import sampling_probability
from musicvae.nn.metrics import EvalMetrics

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
TRAIN_DIR = "train"
EVAL_DIR = "eval"
ADAM_BETAS = (0.9, 0.999)  # TF1 AdamOptimizer defaults
ADAM_EPSILON = 1e-8
LOG_FIELDS = (
    "step", "loss", "r_loss", "kl_loss", "kl_bits", "kl_beta",
    "learning_rate", "global_norm", "sampling_probability", "seq_per_s",
)  # fmt: skip
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_FILES_PER_WORKER_BATCH = 16  # MIDI files per worker round trip: amortises IPC, keeps workers balanced


class TrainingError(RuntimeError):
    """A user-facing problem with the data or the run directory (the CLI prints it without a traceback)."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be read or does not fit this run."""


class EmptyDatasetError(TrainingError):
    """Conversion produced too few examples to train or evaluate."""


# --- optimisation (Magenta base_model.train) -----------------------------------------------------


def learning_rate(hp: HParams, step: int) -> float:
    """LR for the update made at global step `step` (0 for the first update)."""
    return (hp.learning_rate - hp.min_learning_rate) * hp.decay_rate**step + hp.min_learning_rate


def make_optimizer(params: Sequence[nn.Parameter], hp: HParams, device: torch.device) -> torch.optim.Adam:
    return torch.optim.Adam(
        params, lr=hp.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPSILON, fused=device.type == "cuda"
    )


def set_optimizer_step(optimizer: torch.optim.Optimizer, hp: HParams, step: int) -> None:
    """Set the LR, and an ε that makes PyTorch's Adam update exactly TF1's, for the update at `step`.

    TF1 computes lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m/(√v + ε); PyTorch computes lr/(1-β₁ᵗ) · m/(√v/√(1-β₂ᵗ) + ε').
    They agree when ε' = ε/√(1-β₂ᵗ) (t = step + 1), which matters in the first few thousand steps.
    """
    t = step + 1
    eps = ADAM_EPSILON / math.sqrt(1.0 - ADAM_BETAS[1] ** t)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(hp, step)
        group["eps"] = eps


def process_gradients(params: Sequence[nn.Parameter], hp: HParams) -> torch.Tensor:
    """Clip gradients in place as Magenta does; returns the global norm before clipping.

    global_norm mode: scale by grad_clip / max(norm, grad_clip), or set every gradient to zero when
    norm >= grad_norm_clip_to_zero (also when it is NaN: TF's `norm < limit` is false then).
    value mode: clip each element to ±grad_clip, no zeroing (Magenta's value branch has none).
    Computed on the device without a host sync.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if hp.clip_mode == "value":
        torch._foreach_clamp_min_(grads, -hp.grad_clip)
        torch._foreach_clamp_max_(grads, hp.grad_clip)
        return norm
    keep = norm < hp.grad_norm_clip_to_zero
    torch._foreach_mul_(grads, hp.grad_clip / torch.clamp(norm, min=hp.grad_clip))
    for g in grads:  # masked_fill, not a multiply by 0, so inf/NaN gradients become exact zeros too
        g.masked_fill_(~keep, 0.0)
    return norm


def optimisation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    hp: HParams,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    step: int,
    autocast: Any,
) -> tuple[Any, torch.Tensor]:
    """One training step as Magenta takes it; returns the model output and the logged statistics.

    The statistics are [loss, mean r_loss, mean kl_cost, mean KL in bits, global norm] as one device
    tensor, so callers can accumulate them without a host sync. `musicvae.train` and
    `benchmarks/train.py` both step through here, so the benchmark measures exactly what training does.
    """
    inputs, outputs, controls, lengths = batch
    set_optimizer_step(optimizer, hp, step)
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        result = model(inputs, outputs, controls, lengths, step=step)
    result.loss.backward()
    norm = process_gradients(params, hp)
    optimizer.step()
    stats = torch.stack([
        result.loss.detach().float(), result.r_loss.detach().float().mean(),
        result.kl_cost.detach().float().mean(), result.kl.detach().float().mean() / math.log(2), norm.float(),
    ])  # fmt: skip
    return result, stats


# --- examples ---------------------------------------------------------------------------------------


def _array_dtypes(family: str) -> tuple[np.dtype, np.dtype]:
    """(inputs/outputs dtype, controls dtype): one-hot/multi-hot as bool, GrooVAE's floats as float32."""
    return (np.dtype(np.float32) if family == "groove" else np.dtype(np.bool_)), np.dtype(np.bool_)


@dataclass
class Examples:
    """Windows padded to max_seq_len, as host arrays (bool one-hots are cast to float on the device)."""

    inputs: np.ndarray  # [N, T, input_depth]
    outputs: np.ndarray  # [N, T, output_depth]
    controls: np.ndarray  # [N, T, control_depth]
    lengths: np.ndarray  # [N]

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(inputs, outputs, controls or None without controls, lengths) on `device`; pinned + non_blocking on CUDA."""
        arrays = [self.inputs, self.outputs] + ([self.controls] if self.controls.shape[-1] else [])
        host = [torch.from_numpy(self.lengths[index].astype(np.int64))]
        host += [torch.from_numpy(np.ascontiguousarray(a[index])) for a in arrays]
        if device.type == "cuda":
            host = [t.pin_memory() for t in host]
        # Transferred in their narrow dtype (bool is 1/4 of float32's bytes), widened on the device.
        lengths, inputs, outputs, *controls = (t.to(device, non_blocking=True) for t in host)
        return inputs.float(), outputs.float(), controls[0].float() if controls else None, lengths

    @classmethod
    def concatenate(cls, parts: Sequence[Examples], like: Examples) -> Examples:
        if not parts:
            return like
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("inputs", "outputs", "controls", "lengths")))


def _stack(windows: Sequence[np.ndarray], length: int, depth: int, dtype: np.dtype, what: str) -> np.ndarray:
    out = np.zeros((len(windows), length, depth), dtype=dtype)
    for i, w in enumerate(windows):
        if len(w) > length:
            raise ValueError(f"{what}: a window of {len(w)} steps exceeds max_seq_len={length}")
        out[i, : len(w)] = w
    return out


class _FileWindows(torch.utils.data.Dataset):
    """MIDI file i -> its windows, converted in a DataLoader worker.

    Everything random (window choice, transposition) is seeded by (seed, pass, i), so the result does
    not depend on the number of workers or on which worker gets which file.
    """

    def __init__(
        self,
        config_name: str,
        max_seq_len: int,
        files: Sequence[tuple[str, bytes]],
        mode: str,
        transpose_range: tuple[int, int] | None,
        seed: int,
        conversion_pass: int,
        drum_map: str | None = None,
    ) -> None:
        self.config_name, self.max_seq_len, self.files, self.drum_map = config_name, max_seq_len, files, drum_map
        self.mode, self.transpose_range = mode, transpose_range
        self.seed, self.conversion_pass = seed, conversion_pass
        self.dtypes = _array_dtypes(config_family(config_name))
        self._converter: DataConverter | None = None  # built in the worker: converters need not pickle

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, Examples | None, str | None]:
        name, midi = self.files[i]
        if self._converter is None:
            self._converter = get_config(self.config_name).with_drum_map(self.drum_map).new_converter()
            self._converter.set_mode(self.mode)
        converter = self._converter
        converter.rng = rng = np.random.default_rng([self.seed, 2, self.conversion_pass, i])
        try:
            ns = read_midi(midi)
            if self.transpose_range is not None:
                ns = augment_sequence(ns, self.transpose_range, rng)
            t = converter.sequence_to_tensors(ns)
            io_dtype, control_dtype = self.dtypes
            examples = Examples(
                _stack(t.inputs, self.max_seq_len, converter.input_depth, io_dtype, name),
                _stack(t.outputs, self.max_seq_len, converter.output_depth, io_dtype, name),
                _stack(t.controls, self.max_seq_len, converter.control_depth, control_dtype, name),
                np.asarray(t.lengths, dtype=np.int32),
            )
        except Exception as e:  # noqa: BLE001 - one odd file must not end a long run; it is reported instead
            return name, None, f"{type(e).__name__}: {e}"
        return name, examples, None


def _as_list(items: list) -> list:
    return items


def _empty_examples(config: Config) -> Examples:
    conv = config.data_converter
    io_dtype, control_dtype = _array_dtypes(config_family(config.name))
    t = config.hparams.max_seq_len
    return Examples(
        np.zeros((0, t, conv.input_depth), io_dtype),
        np.zeros((0, t, conv.output_depth), io_dtype),
        np.zeros((0, t, conv.control_depth), control_dtype),
        np.zeros(0, np.int32),
    )


class ExampleSource(Protocol):
    def examples(self, epoch: int) -> Examples: ...


class ShardSource:
    """Windows from `musicvae convert` output directories (fixed across epochs, no augmentation)."""

    def __init__(self, config: Config, dirs: Sequence[str]) -> None:
        conv = config.data_converter
        parts = []
        for d in dirs:
            index = json.loads((Path(d) / INDEX_NAME).read_text())
            got = (index["input_depth"], index["output_depth"], index["control_depth"], index["max_seq_len"])
            want = (conv.input_depth, conv.output_depth, conv.control_depth, config.hparams.max_seq_len)
            if got != want:
                raise TrainingError(
                    f"{d} was converted for {index['config']} (input, output, control depth, max_seq_len = {got}); "
                    f"{config.name} needs {want}. Convert with --config={config.name}."
                )
            # Same depths do not mean same tensors: the 2-bar GrooVAE configs differ only in the encoder-input
            # transform (humanize, tap, hi-hat removal), so the converter itself must match.
            made_for = CONFIG_MAP.get(index["config"])
            if made_for is None or made_for.converter_factory != config.converter_factory:
                raise TrainingError(
                    f"{d} was converted for {index['config']}, whose converter differs from {config.name}'s; "
                    f"convert with --config={config.name}."
                )
            # index.json without drum_map: converted before the option existed, i.e. with the default map.
            made_with = index.get("drum_map", get_config(config.name).drum_map)
            if made_with != config.drum_map:
                raise TrainingError(
                    f"{d} was converted with --drum_map={made_with}, but this run uses --drum_map={config.drum_map}; "
                    f"convert again with --drum_map={config.drum_map} or train with --drum_map={made_with}"
                )
            arrays = load_shards(d, verify=True)
            io_dtype, control_dtype = _array_dtypes(config_family(config.name))
            parts.append(Examples(
                arrays["inputs"].astype(io_dtype, copy=False),
                arrays["outputs"].astype(io_dtype, copy=False),
                arrays["controls"].astype(control_dtype, copy=False),
                arrays["lengths"],
            ))  # fmt: skip
        self._examples = Examples.concatenate(parts, _empty_examples(config))
        log.info("%d examples from %d shard director%s", len(self._examples), len(dirs), "y" if len(dirs) == 1 else "ies")

    def examples(self, epoch: int) -> Examples:
        return self._examples


class MidiSource:
    """Windows converted on the fly from MIDI files with the config's converter, in worker processes."""

    def __init__(
        self,
        config: Config,
        files: list[tuple[str, bytes]],
        mode: str,
        augment: bool,
        seed: int,
        num_workers: int,
        cache: bool,
    ) -> None:
        self.config, self.files, self.mode, self.seed = config, files, mode, seed
        self.transpose_range = config.transpose_range if augment else None
        self.num_workers, self.cache = num_workers, cache
        self._pass: int | None = None
        self._examples = _empty_examples(config)

    def examples(self, epoch: int) -> Examples:
        conversion_pass = 0 if self.cache or self.mode != "train" else epoch
        if conversion_pass != self._pass:
            self._examples = self._convert(conversion_pass)
            self._pass = conversion_pass
        return self._examples

    def _convert(self, conversion_pass: int) -> Examples:
        dataset = _FileWindows(
            self.config.name, self.config.hparams.max_seq_len, self.files, self.mode,
            self.transpose_range, self.seed, conversion_pass, self.config.drum_map,
        )  # fmt: skip
        workers = min(self.num_workers, -(-len(self.files) // _FILES_PER_WORKER_BATCH))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=_FILES_PER_WORKER_BATCH,
            num_workers=workers,
            collate_fn=_as_list,
            # Own generator: the DataLoader draws a base seed from it, which would otherwise advance the
            # global torch RNG and make a resumed run's model sampling differ from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
        parts, errors, no_windows = [], [], 0
        with tqdm(total=len(self.files), desc=f"converting ({self.mode})", unit="file", disable=None, leave=False) as bar:
            for items in loader:
                for name, examples, error in items:
                    if error is not None:
                        errors.append((name, error))
                    elif len(examples) == 0:
                        no_windows += 1
                    else:
                        parts.append(examples)
                bar.update(len(items))
        result = Examples.concatenate(parts, _empty_examples(self.config))
        log.info(
            "converted %d files (%s mode) -> %d examples; %d files gave none, %d failed",
            len(self.files), self.mode, len(result), no_windows, len(errors),
        )  # fmt: skip
        for name, error in errors[:5]:
            log.warning("could not convert %s: %s", name, error)
        unmapped = sum(error.startswith("UnmappedDrumPitchError") for _, error in errors)
        if unmapped:
            log.warning(
                "%d of %d files have drum pitches outside the --drum_map=%s pitch map and were skipped; "
                "for General MIDI data use --drum_map=gm", unmapped, len(self.files), self.config.drum_map,
            )  # fmt: skip
        if len(result) == 0:
            first_error = f" First failure: {errors[0][0]}: {errors[0][1]}." if errors else ""
            raise EmptyDatasetError(
                f"no examples from {len(self.files)} MIDI files ({no_windows} gave no windows, {len(errors)} failed)."
                f"{first_error} MusicVAE configs have very specific input requirements: {_requirements(self.config.name)}"
            )
        return result


def _requirements(config_name: str) -> str:
    family = config_family(config_name)
    needs = {
        "melody": "monophonic (or top-line) melodies in 4/4 on programs 0-31 (2-bar) or any program (16-bar), "
        "pitches 21-108, at least as long as the window (2 or 16 bars) without a bar-long gap",
        "drums": "drum tracks (MIDI channel 10) in 4/4, at least 2 bars long",
        "trio": "4/4 pieces with a melody (programs 0-31), a bass line (programs 32-39) and drums playing together "
        "for 16 bars",
        "groove": "drum performances in 4/4 on the Groove MIDI Dataset's Roland TD-11 pitches, or on General MIDI "
        "drum pitches with --drum_map=gm",
    }[family]
    return f"{config_name} needs {needs}. `musicvae validate` reports what each file offers."


def _read_files(items: Sequence[Any]) -> list[tuple[str, bytes]]:
    reader = _Reader()  # convert.py's reader: plain files, and tar members without extracting
    try:
        return [(item.name, reader.read(item)) for item in items]
    finally:
        reader.close()


def _expand(specs: Sequence[str]) -> list[str]:
    paths: list[str] = []
    for spec in map(os.path.expanduser, specs):
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches or not os.path.exists(matches[0]):
            raise TrainingError(f"--examples_path: no such file, directory or glob match: {spec}")
        paths += matches
    return paths


def open_source(
    config: Config,
    examples_path: Sequence[str],
    data_dir: str,
    split: str | None,
    mode: str,
    seed: int,
    num_workers: int,
    cache: bool = True,
) -> ExampleSource:
    """Shards when every path is a converted directory, else MIDI (files/dirs/globs/tars or the corpus).

    `split` picks from a corpus (a directory with manifest.csv); it defaults to 'train' for training
    and 'heldout' for evaluation there, and must be None for anything else.
    """
    if examples_path:
        paths = _expand(examples_path)
        shards = [p for p in paths if (Path(p) / INDEX_NAME).is_file()]
        if shards and len(shards) != len(paths):
            raise TrainingError("--examples_path mixes converted shard directories and MIDI; pass one kind")
        if shards:
            if split is not None:
                raise TrainingError("--split selects from the corpus; shard directories are already one split")
            return ShardSource(config, shards)
        inputs: Sequence[str] = paths
    else:
        if not (Path(data_dir) / "manifest.csv").is_file():
            raise TrainingError(
                f"no --examples_path given and no corpus at {data_dir}/ (manifest.csv missing): build it with "
                "scripts/build_corpus.py or `dvc pull`, or pass --examples_path (MIDI files, a directory, glob or tar, "
                "or `musicvae convert` output)"
            )
        inputs = [data_dir]
    if split is None and len(inputs) == 1 and (Path(inputs[0]) / "manifest.csv").is_file():
        split = "train" if mode == "train" else "heldout"
    try:
        items = discover_inputs(config.name, inputs, split)
    except FileNotFoundError as e:
        raise TrainingError(str(e)) from None
    except ValueError as e:
        raise EmptyDatasetError(str(e)) from None
    files = _read_files(items)
    log.info("%d MIDI files from %s", len(files), ", ".join(inputs))
    return MidiSource(config, files, mode, augment=mode == "train", seed=seed, num_workers=num_workers, cache=cache)


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded permutation cut into full batches (the remainder is dropped, as Magenta's training)."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(num_examples)
    return [order[i : i + batch_size] for i in range(0, num_examples - batch_size + 1, batch_size)]


# --- checkpoints ------------------------------------------------------------------------------------


def config_to_dict(config: Config) -> dict[str, Any]:
    """Everything needed to rebuild the model without the command line: name, hparams, model spec."""
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config.model).items()}
    return {
        "name": config.name,
        "hparams": config.hparams.to_dict(),
        "model": spec,
        "transpose_range": list(config.transpose_range) if config.transpose_range else None,
        "drum_map": config.drum_map,  # GrooVAE's converter pitch map; None for other configs
    }


def config_from_dict(d: dict[str, Any]) -> Config:
    """The inverse of `config_to_dict`; the data converter comes from CONFIG_MAP[name]."""
    # Checkpoints from before drum_map was recorded used the default map.
    config = copy.copy(get_config(d["name"]).with_drum_map(d.get("drum_map")))
    config.hparams = HParams().override(**d["hparams"])
    config.model = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()})
    config.transpose_range = tuple(d["transpose_range"]) if d["transpose_range"] else None
    return config


def checkpoint_steps(train_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `train_dir`, oldest first."""
    d = Path(train_dir)
    found = [(int(m.group(1)), d / m.group(0)) for m in map(_CKPT_RE.match, os.listdir(d) if d.is_dir() else []) if m]
    return sorted(found)


def latest_checkpoint(train_dir: str | os.PathLike[str]) -> Path | None:
    steps = checkpoint_steps(train_dir)
    return steps[-1][1] if steps else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash leaves the previous checkpoint set intact, never a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, loaded with weights_only=True (no pickled objects)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {e}). It is corrupt or not a musicvae checkpoint; "
            "delete it to resume from the previous one."
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a musicvae checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return payload


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Config, nn.Module, int]:
    """(config, model in eval mode, step) rebuilt from a checkpoint alone."""
    payload = load_checkpoint(path)
    config = config_from_dict(payload["config"])
    model = config.build_model()
    model.load_state_dict(payload["model"])
    return config, model.to(device).eval(), int(payload["step"])


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# --- metrics files ----------------------------------------------------------------------------------


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl and metrics.csv (one row per logging step, for `dvc plots`) and metrics.json (latest)."""

    def __init__(self, directory: Path, resume_step: int) -> None:
        self.jsonl, self.csv, self.latest = (directory / f"metrics.{ext}" for ext in ("jsonl", "csv", "json"))
        rows = []
        if self.jsonl.exists():  # rows logged after the checkpoint we resume from will be logged again
            rows = [r for r in map(json.loads, self.jsonl.read_text().splitlines()) if r["step"] <= resume_step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with open(self.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, float]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
        _write_json(self.latest, row)


# --- the loops --------------------------------------------------------------------------------------


@dataclass
class TrainOptions:
    config: str
    run_dir: str
    examples_path: Sequence[str] = ()
    data_dir: str = "data"
    split: str | None = None  # corpus split; None: 'train' when training, 'heldout' when evaluating
    hparams: str = ""
    num_steps: int = 200_000
    eval_num_batches: int | None = None  # None: all held-out examples
    checkpoints_to_keep: int = 5
    checkpoint_every_secs: float = 60.0
    log_every_steps: int = 100
    device: str = "auto"
    num_workers: int = 2
    seed: int = 0
    cache_dataset: bool = True
    compile: bool = False
    drum_map: str | None = None  # GrooVAE only; None: the config's default (train) or the checkpoint's (eval)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _precision(device: torch.device) -> torch.autocast:
    """bf16 autocast with TF32 matmuls on CUDA; full fp32 elsewhere."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _prune(train_dir: Path, keep: int) -> None:
    for _, path in checkpoint_steps(train_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def train(opts: TrainOptions) -> Path:
    """Train (or resume) `opts.config` until `opts.num_steps`; returns the last checkpoint's path."""
    config = get_config(opts.config).with_hparams(opts.hparams).with_drum_map(opts.drum_map)
    hp = config.hparams
    device = resolve_device(opts.device)
    autocast = _precision(device)
    train_dir = Path(opts.run_dir) / TRAIN_DIR
    train_dir.mkdir(parents=True, exist_ok=True)
    for stale in train_dir.glob(".ckpt-*.pt.tmp"):  # left by a kill during a save
        stale.unlink()

    torch.manual_seed(opts.seed)
    net = config.build_model().to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, hp, device)
    step, epoch, batch_in_epoch, seed = 0, 0, 0, opts.seed
    resume_from = latest_checkpoint(train_dir)
    if resume_from is not None:
        payload = load_checkpoint(resume_from)
        if config_to_dict(config_from_dict(payload["config"])) != config_to_dict(config):
            raise CheckpointError(
                f"{resume_from} was trained with a different config ({payload['config']['name']}, "
                f"hparams {payload['config']['hparams']}, drum_map {payload['config'].get('drum_map')}); rerun with "
                "the same --config/--hparams/--drum_map or use a new --run_dir"
            )
        net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        _set_rng_state(payload["rng"], device)
        step = int(payload["step"])
        epoch, batch_in_epoch, seed = (int(payload["data"][k]) for k in ("epoch", "batch", "seed"))
        if seed != opts.seed:
            log.warning("resuming with the checkpoint's data seed %d (not --seed=%d)", seed, opts.seed)
        log.info("resuming from %s (step %d)", resume_from, step)
    if step >= opts.num_steps:
        log.info("already at step %d >= --num_steps=%d", step, opts.num_steps)
        return resume_from  # type: ignore[return-value]

    source = open_source(
        config, opts.examples_path, opts.data_dir, opts.split, "train", seed, opts.num_workers, opts.cache_dataset
    )
    model = torch.compile(net) if opts.compile else net
    net.train()
    metrics = MetricsLog(train_dir, step)

    def save() -> Path:
        path = train_dir / f"ckpt-{step}.pt"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "config": config_to_dict(config),
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(device),
            "data": {"seed": seed, "epoch": epoch, "batch": batch_in_epoch},
        }
        save_checkpoint(payload, path)
        _prune(train_dir, opts.checkpoints_to_keep)
        return path

    # Losses are summed on the device and read back only at logging steps, so the GPU never waits on the host.
    sums = torch.zeros(5, device=device)
    since, interval_start, last_save = 0, time.perf_counter(), time.monotonic()
    bar = tqdm(total=opts.num_steps, initial=step, unit="step", desc=config.name, disable=None, dynamic_ncols=True)
    with logging_redirect_tqdm(), bar:
        while step < opts.num_steps:
            examples = source.examples(epoch)
            batches = epoch_batches(len(examples), hp.batch_size, seed, epoch)
            if not batches:
                raise EmptyDatasetError(
                    f"only {len(examples)} training examples, fewer than one batch of {hp.batch_size}; "
                    "add data or lower it with --hparams=batch_size=N"
                )
            for index in batches[batch_in_epoch:]:
                result, stats = optimisation_step(model, optimizer, params, hp, examples.batch(index, device), step, autocast)
                sums += stats
                step, since, batch_in_epoch = step + 1, since + 1, batch_in_epoch + 1
                bar.update()
                if step % opts.log_every_steps == 0 or step == opts.num_steps:
                    elapsed = time.perf_counter() - interval_start
                    loss, r_loss, kl_loss, kl_bits, global_norm = (sums / since).tolist()
                    row = {
                        "step": step, "loss": loss, "r_loss": r_loss, "kl_loss": kl_loss, "kl_bits": kl_bits,
                        "kl_beta": float(result.beta), "learning_rate": learning_rate(hp, step - 1),
                        "global_norm": global_norm, "sampling_probability": float(result.sampling_probability),
                        "seq_per_s": since * hp.batch_size / elapsed,
                    }  # fmt: skip
                    metrics.write(row)
                    bar.set_postfix(loss=f"{loss:.3f}", kl_bits=f"{kl_bits:.1f}", seq_s=f"{row['seq_per_s']:.0f}")
                    log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
                    sums.zero_()
                    since, interval_start = 0, time.perf_counter()
                if step >= opts.num_steps:
                    break
                if time.monotonic() - last_save >= opts.checkpoint_every_secs:
                    save()
                    last_save = time.monotonic()
            if batch_in_epoch == len(batches):
                epoch, batch_in_epoch = epoch + 1, 0
    final = save()
    log.info("trained to step %d; checkpoint %s", step, final)
    return final


def _short_name(name: str) -> str:
    """Magenta's summary names without their scope: losses/r_loss -> r_loss, metrics/accuracy -> accuracy."""
    return name.replace("losses/", "").replace("metrics/", "")


def evaluate(opts: TrainOptions) -> dict[str, Any]:
    """Magenta's `--mode=eval` on the latest checkpoint: writes and returns `<run_dir>/eval/metrics.json`."""
    train_dir = Path(opts.run_dir) / TRAIN_DIR
    path = latest_checkpoint(train_dir)
    if path is None:
        raise CheckpointError(f"no checkpoint in {train_dir}; train first (--mode=train)")
    doc = evaluate_checkpoint(path, opts)
    eval_dir = Path(opts.run_dir) / EVAL_DIR
    eval_dir.mkdir(parents=True, exist_ok=True)
    _write_json(eval_dir / "metrics.json", doc)
    log.info("eval at step %d on %d examples: %s", doc["step"], doc["num_examples"], json.dumps(doc))
    return doc


def evaluate_checkpoint(path: Path, opts: TrainOptions) -> dict[str, Any]:
    """Magenta's eval metrics of one checkpoint on `opts`' held-out examples (`opts.config` must be its config)."""
    payload = load_checkpoint(path)
    if payload["config"]["name"] != opts.config:
        raise CheckpointError(f"{path} is a {payload['config']['name']} checkpoint, not {opts.config}")
    # --hparams may override eval-only settings, e.g. sampling_schedule=constant,sampling_rate=0 for
    # teacher-forced accuracy on a scheduled-sampling config (spec §5).
    config = config_from_dict(payload["config"]).with_hparams(opts.hparams)
    if opts.drum_map is not None and opts.drum_map != config.drum_map:
        raise CheckpointError(f"{path} was trained with --drum_map={config.drum_map}, not --drum_map={opts.drum_map}")
    device = resolve_device(opts.device)
    autocast = _precision(device)
    torch.manual_seed(opts.seed)  # z is sampled from q(z|x) and SS configs sample their inputs
    model = config.build_model()
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    step = int(payload["step"])

    source = open_source(
        config, opts.examples_path, opts.data_dir, opts.split, "eval", opts.seed, opts.num_workers
    )
    examples = source.examples(0)
    bs = config.hparams.batch_size
    batches = [np.arange(i, min(i + bs, len(examples))) for i in range(0, len(examples), bs)]
    if opts.eval_num_batches is not None:
        batches = batches[: opts.eval_num_batches]
    if not batches:
        raise EmptyDatasetError("no eval examples")
    stats = EvalMetrics()  # Magenta's streaming means (tf.metrics.mean and friends)
    with torch.no_grad(), autocast:
        for index in tqdm(batches, desc=f"eval step {step}", unit="batch", disable=None, leave=False):
            stats.update(model(*examples.batch(index, device), step=step).metrics)
    doc: dict[str, Any] = {_short_name(name): value for name, value in stats.compute().items()}
    doc.update(step=step, checkpoint=str(path), num_examples=int(sum(len(b) for b in batches)), num_batches=len(batches),
               sampling_probability=sampling_probability(config.hparams, step, training=False))  # 1: fully sampled
    return doc
