"""Generation: `TrainedModel`, the one facade the CLI, the pipeline and the services use (Magenta's
`trained_model.TrainedModel`), plus `music_vae_generate`'s work and `musicvae import-magenta`.

    tm = TrainedModel.from_checkpoint("runs/mel2")                    # run dir, ckpt-N.pt,
    tm = TrainedModel.from_checkpoint("cat-mel_2bar_small.tar", "cat-mel_2bar_small")   # or Magenta's
    midis = tm.sample(4, temperature=0.5, seed=1)                      # list of PrettyMIDI
    seqs = tm.sample(4, as_sequences=True)                             # NoteSequences: sequence_to_midi_bytes
    z, mu, sigma = tm.encode(["a.mid", "b.mid"])                       # each file: exactly one window
    midis = tm.decode(mu, temperature=None)                            # None: greedy (τ → 0 limit)
    midis = tm.interpolate("a.mid", "b.mid", num_steps=5)              # slerp between posterior means
    tm.humanize("beat.mid"); tm.transfer_groove("groove.mid", "score.mid")   # GrooVAE configs

As in Magenta, `encode` returns z sampled from q(z|x) with μ and σ, the converter works in 'infer'
mode, z for `sample` is N(0, I) and temperature divides the logits only (spec §3.7). Unlike Magenta,
every window of an input is extracted: its converter's cap is lifted (Magenta's generate script tried
and set a misspelt attribute, spec §4). Batches hold `max_batch_size` rows; the last one is padded
by repeating its last row so that every call sees the same shapes (Magenta pads likewise), and the
padding rows are dropped. `seed` makes z, the posterior noise and the decoder's sampling reproducible
without touching the global RNG.

Magenta checkpoints: the config names the model; the layer sizes and z size are read from the
checkpoint's variable shapes (released checkpoints and our tiny fixtures differ from configs.py there,
spec §1.3), everything else comes from the config, and a checkpoint that still does not fit is refused
with the list of missing, unexpected and mis-shaped variables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pretty_midi

from musicvae.configs import Config, get_config
from musicvae.data.converter import DataConverter
from musicvae.data.groove import GrooveConverter
from musicvae.data.midi_io import MidiSource, sequence_to_midi_bytes, sequence_to_pretty_midi
from musicvae.data.note_sequence import NoteSequence
from musicvae.magenta_checkpoint import CheckpointError, load_magenta_weights, read_checkpoint

if TYPE_CHECKING:  # torch is imported where it is used, so that `musicvae configs` & co. start fast
    import torch

    from musicvae.nn.vae import MusicVAE

log = logging.getLogger(__name__)

LatentTransform = Callable[[np.ndarray], np.ndarray]  # z [n, z_size] -> z' [n, z_size]
Decoded = Union[list[pretty_midi.PrettyMIDI], list[NoteSequence]]  # what the generating methods return (as_sequences)

DEFAULT_TEMPERATURE = 0.5  # music_vae_generate's and the MusicVAE colab's
GROOVE_TEMPERATURE = 1.0  # the GrooVAE colab's

__all__ = [
    "TrainedModel",
    "ExtractionError",
    "NoExtractedExamplesError",
    "MultipleExtractedExamplesError",
    "GenerateOptions",
    "generate",
    "import_magenta",
    "inference_converter",
    "slerp",
    "add_import_parser",
]


# --- errors -----------------------------------------------------------------------------------------


class ExtractionError(ValueError):
    """An input MIDI file does not give exactly one window for the model."""


class NoExtractedExamplesError(ExtractionError):
    def __init__(self, source: str) -> None:
        super().__init__(
            "MusicVAE configs have very specific input requirements. Could not extract any valid inputs from "
            f"`{source}`. Try another MIDI file."
        )
        self.source = source


class MultipleExtractedExamplesError(ExtractionError):
    def __init__(self, source: str, count: int, written_as: str | None = None) -> None:
        message = f"{count} valid inputs extracted from `{source}`."
        if written_as:
            message += f" Outputting these potential inputs as `{written_as}`. Call script again with one of these instead."
        else:
            message += " Exactly one per input is needed (music_vae_generate --mode=interpolate writes them all)."
        super().__init__(message)
        self.source, self.count, self.written_as = source, count, written_as


def describe(source: MidiSource) -> str:
    """How an input is named in messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of MIDI>"
    return f"<{type(source).__name__}>"


# --- helpers ----------------------------------------------------------------------------------------


def inference_converter(config: Config) -> DataConverter:
    """The config's converter in 'infer' mode, keeping every window of a file (no per-file cap)."""
    converter = config.new_converter()
    converter.set_mode("infer")
    converter.max_tensors_per_notesequence = None
    return converter


def slerp(p0: np.ndarray, p1: np.ndarray, num_steps: int) -> np.ndarray:
    """`num_steps` points from p0 to p1, both included, along the great circle (Magenta's `_slerp`).

    Parallel or anti-parallel vectors (sin ω = 0, where Magenta divides by zero) and zero vectors
    fall back to linear interpolation.
    """
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    t = np.linspace(0.0, 1.0, num_steps)[:, None]
    norms = np.linalg.norm(p0) * np.linalg.norm(p1)
    omega = np.arccos(np.clip(np.dot(p0, p1) / norms, -1.0, 1.0)) if norms > 0 else 0.0
    so = np.sin(omega)
    if abs(so) < 1e-7:
        return (1.0 - t) * p0 + t * p1
    # Evaluated as Magenta does; sin(ω)/sin(ω) is exactly 1, so the endpoints are p0 and p1 exactly.
    return np.sin((1.0 - t) * omega) / so * p0 + np.sin(t * omega) / so * p1


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Repeat the last row until x has `rows` rows (the padded rows' results are discarded)."""
    import torch

    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])]) if len(x) < rows else x


def _stack(arrays: Sequence[np.ndarray], depth: int) -> np.ndarray:
    """Ragged [T_i, depth] arrays zero-padded in time to [n, max T_i, depth] float32."""
    out = np.zeros((len(arrays), max((len(a) for a in arrays), default=0), depth), np.float32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


# --- checkpoints ------------------------------------------------------------------------------------

_ENC_LSTM = re.compile(r"encoder/(?:hierarchical_level_0/)?cell_(\d+)/bidirectional_rnn/fw/multi_rnn_cell/cell_0/lstm_cell/kernel")
_DEC_LSTM = re.compile(r"decoder/(?:multi_rnn_cell|hierarchical_level_0)/cell_(\d+)/lstm_cell/kernel")


def _lstm_sizes(shapes: dict[str, tuple[int, ...]], pattern: re.Pattern[str]) -> tuple[int, ...] | None:
    """Units of layers 0, 1, ... of the LSTM stack whose kernels [in + n, 4n] `pattern` names."""
    sizes = {int(m.group(1)): shape[1] // 4 for name, shape in shapes.items() if (m := pattern.fullmatch(name))}
    if not sizes or sorted(sizes) != list(range(len(sizes))):
        return None  # no such stack (or a gap): leave the config's value, the loader reports the misfit
    return tuple(sizes[k] for k in range(len(sizes)))


def checkpoint_sizes(variables: dict[str, np.ndarray]) -> dict[str, Any]:
    """z_size, enc_rnn_size, dec_rnn_size as a Magenta checkpoint's variable shapes give them."""
    shapes = {name: tuple(np.shape(v)) for name, v in variables.items()}
    found: dict[str, Any] = {}
    if len(shapes.get("encoder/mu/kernel", ())) == 2:
        found["z_size"] = shapes["encoder/mu/kernel"][1]
    for key, pattern in (("enc_rnn_size", _ENC_LSTM), ("dec_rnn_size", _DEC_LSTM)):
        if sizes := _lstm_sizes(shapes, pattern):
            found[key] = sizes
    return found


def load_magenta_model(config: Config, checkpoint: str | Path, hparams: str | None = None) -> tuple[Config, MusicVAE, int]:
    """(config with the checkpoint's sizes, model in eval mode, global step) from a Magenta checkpoint."""
    variables = read_checkpoint(checkpoint)
    sizes = checkpoint_sizes(variables)
    changed = {k: v for k, v in sizes.items() if getattr(config.hparams, k) != v}
    if changed:
        log.info("%s: layer sizes from the checkpoint: %s (config %s: %s)", checkpoint, changed, config.name,
                 {k: getattr(config.hparams, k) for k in changed})
    config = config.with_hparams(sizes)
    if hparams:
        config = config.with_hparams(hparams)
    model = config.build_model()
    load_magenta_weights(model, variables, config)
    step = int(np.asarray(variables.get("global_step", 0)))
    return config, model.eval(), step


def _our_checkpoint(path: Path) -> Path | None:
    """Our `.pt` checkpoint that `path` names (a file, a train dir or a run dir), or None."""
    from musicvae.train import TRAIN_DIR, latest_checkpoint

    if path.is_file():
        return path if path.suffix == ".pt" else None
    if path.is_dir():
        return latest_checkpoint(path / TRAIN_DIR) or latest_checkpoint(path)
    return None


def _magenta_location(path: Path) -> Path:
    """A Magenta run dir holds its checkpoints in train/, as `--run_dir` expects."""
    from musicvae.train import TRAIN_DIR

    return path / TRAIN_DIR if path.is_dir() and (path / TRAIN_DIR).is_dir() else path


# --- the facade -------------------------------------------------------------------------------------


class TrainedModel:
    """A trained MusicVAE with its config and an 'infer'-mode converter: encode, decode, sample, interpolate."""

    def __init__(self, config: Config, model: MusicVAE, max_batch_size: int = 8, device: str | torch.device = "cpu") -> None:
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        import torch

        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.converter = inference_converter(config)
        self.max_batch_size = max_batch_size
        self.checkpoint: Path | None = None  # set by from_checkpoint: attribute vectors are stored beside it
        self.cuda_graphs = True  # on CUDA, replay each decode shape from a captured CUDA graph
        self._graphs: dict[tuple, Any] = {}
        self._graph_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config_name: str | None = None,
        device: str | torch.device = "cpu",
        max_batch_size: int = 8,
        hparams: str | None = None,
    ) -> TrainedModel:
        """Load our checkpoint (`ckpt-N.pt`, or the latest in `<run_dir>/train`) or a Magenta one.

        Magenta checkpoints (a prefix, a directory or a `.tar` bundle) need `config_name`; `hparams`
        (Magenta-style `k=v,...`) overrides the config's hparams for them. Our checkpoints carry
        their config: a different `config_name` is refused.
        """
        from musicvae.train import load_model

        p = Path(path).expanduser()
        if not p.exists() and not Path(f"{p}.index").is_file():
            raise FileNotFoundError(f"no checkpoint at {p}")
        ours = _our_checkpoint(p)
        if ours is not None:
            if hparams:
                raise ValueError(f"{ours} carries its hparams; --hparams applies to Magenta checkpoints only")
            config, model, _ = load_model(ours, device)
            if config_name is not None and config_name != config.name:
                raise CheckpointError(f"{ours} holds a {config.name} model, not {config_name}")
            log.info("loaded %s (%s)", ours, config.name)
        else:
            if config_name is None:
                raise ValueError(f"{p} is a Magenta checkpoint: name its config (--config)")
            config, model, _ = load_magenta_model(get_config(config_name), _magenta_location(p), hparams)
            log.info("loaded Magenta checkpoint %s as %s", p, config.name)
        trained = cls(config, model, max_batch_size, device)
        trained.checkpoint = ours or p
        return trained

    # --- plumbing -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _rng(self, seed: int | None) -> Iterator[None]:
        """Seed the CPU RNG (and the model's CUDA device's) for the block and restore them afterwards; no-op
        without a seed. Only the generators forked here are seeded: `torch.manual_seed` would also seed every
        other device, queueing a lazy seed for an uninitialised CUDA (with a stack trace: ~1 ms a call)."""
        import torch

        if seed is None:
            yield
            return
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)  # torch.manual_seed's CPU part: the same stream
            if cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            yield

    def _batches(self, n: int) -> Iterator[slice]:
        return (slice(i, min(i + self.max_batch_size, n)) for i in range(0, n, self.max_batch_size))

    def _controls(self, c_input: np.ndarray | None, n: int) -> np.ndarray | None:
        """Controls per example, [n, T, C]: a [T, C] `c_input` is used for every example, as in Magenta."""
        depth = self.converter.control_depth
        if c_input is None:
            if depth:
                raise ValueError(f"{self.config.name} is conditioned on {depth}-d controls: pass c_input")
            return None
        c = np.asarray(c_input, np.float32)
        c = np.broadcast_to(c, (n, *c.shape)) if c.ndim == 2 else c
        if c.ndim != 3 or c.shape[0] != n or c.shape[2] != depth:
            raise ValueError(f"c_input must be [T, {depth}] or [{n}, T, {depth}], got {list(np.shape(c_input))}")
        return c

    # --- encoding -----------------------------------------------------------------------------------

    def encode_tensors(
        self,
        inputs: Sequence[np.ndarray] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        controls: Sequence[np.ndarray] | np.ndarray | None = None,
        seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z ~ q(z|x), μ, σ), each [n, z_size] float32, for converter input windows."""
        import torch

        n = len(inputs)
        if n == 0:
            raise ValueError("nothing to encode")
        x = torch.from_numpy(_stack(inputs, self.converter.input_depth))
        c = None if controls is None or not self.converter.control_depth else torch.from_numpy(_stack(controls, self.converter.control_depth))
        lens = torch.as_tensor(np.asarray(lengths), dtype=torch.long)
        mus, sigmas = [], []
        with torch.no_grad():
            for s in self._batches(n):
                rows = self.max_batch_size
                mu, sigma = self.model.encode(
                    _pad_rows(x[s], rows).to(self.device),
                    _pad_rows(lens[s], rows).to(self.device),
                    None if c is None else _pad_rows(c[s], rows).to(self.device),
                )
                mus.append(mu[: s.stop - s.start].float().cpu())
                sigmas.append(sigma[: s.stop - s.start].float().cpu())
        mu, sigma = torch.cat(mus), torch.cat(sigmas)
        with self._rng(seed):
            z = mu + sigma * torch.randn(mu.shape)
        return z.numpy(), mu.numpy(), sigma.numpy()

    def encode(self, midis: MidiSource | Sequence[MidiSource], seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z, μ, σ) of MIDI inputs (paths, bytes, PrettyMIDI), one row each.

        Every input must give exactly one window: NoExtractedExamplesError for none,
        MultipleExtractedExamplesError (with `.count`) for several.
        """
        sources = [midis] if isinstance(midis, (str, Path, bytes, pretty_midi.PrettyMIDI)) else list(midis)
        return self.encode_windows([self.single_window(m) for m in sources], seed)

    def encode_windows(
        self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]], seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z, μ, σ) of converter windows, each (inputs, controls, length) as `converter.to_tensors` gives them."""
        inputs, controls, lengths = zip(*windows)
        return self.encode_tensors(inputs, lengths, controls if self.converter.control_depth else None, seed)

    def single_window(self, midi: MidiSource) -> tuple[np.ndarray, np.ndarray, int]:
        """The input's one window (inputs, controls, length): NoExtractedExamplesError for none,
        MultipleExtractedExamplesError (with `.count`) for several."""
        tensors = self.converter.to_tensors(midi)
        if len(tensors) == 0:
            raise NoExtractedExamplesError(describe(midi))
        if len(tensors) > 1:
            raise MultipleExtractedExamplesError(describe(midi), len(tensors))
        return tensors.inputs[0], tensors.controls[0], tensors.lengths[0]

    # --- decoding -----------------------------------------------------------------------------------

    def decode_to_tensors(
        self,
        z: np.ndarray,
        length: int | None = None,
        temperature: float | None = DEFAULT_TEMPERATURE,
        c_input: np.ndarray | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Decoded output tensors [n, length, output_depth] for z [n, z_size]; temperature None is greedy.

        `c_input`: controls [T, C] shared by every example (Magenta's), or [n, T, C] per example.
        """
        import torch

        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be positive (or None for greedy), got {temperature}")
        zt = torch.as_tensor(np.asarray(z, np.float32))
        if zt.ndim != 2 or zt.shape[1] != self.config.hparams.z_size:
            raise ValueError(f"z must be [n, {self.config.hparams.z_size}], got {list(zt.shape)}")
        n = len(zt)
        length = length or self.config.hparams.max_seq_len
        controls = self._controls(c_input, n)
        if controls is not None and controls.shape[1] < length:
            raise ValueError(f"c_input has {controls.shape[1]} steps, fewer than the {length} to decode")
        c = None if controls is None else torch.tensor(controls[:, :length])  # a copy: c_input may be a read-only view
        out = []
        with torch.inference_mode(), self._rng(seed):
            for s in self._batches(n):
                rows = self.max_batch_size
                samples = self._decode_batch(
                    _pad_rows(zt[s], rows).to(self.device),
                    length,
                    temperature,
                    None if c is None else _pad_rows(c[s], rows).to(self.device),
                )
                out.append(samples[: s.stop - s.start].float().cpu())
        return torch.cat(out).numpy()

    def _decode_batch(self, z: torch.Tensor, length: int, temperature: float | None, controls: torch.Tensor | None) -> torch.Tensor:
        """`model.decode(...).samples` of one padded batch; on CUDA a CUDA graph captured per shape and replayed.

        The graphs (`cuda_graphs`, on by default) read the weights as they were at capture: a TrainedModel's
        weights are fixed. A decode that cannot be captured runs eagerly, with a warning.
        """
        if self.device.type != "cuda" or not self.cuda_graphs:
            return self.model.decode(z, length, temperature, controls).samples
        from musicvae.nn.sampler import CudaGraphDecode

        key = (len(z), length, temperature, None if controls is None else tuple(controls.shape[1:]))
        with self._graph_lock:  # one capture per shape, also when a server calls from several threads
            if key not in self._graphs:
                try:
                    self._graphs[key] = CudaGraphDecode(self.model, len(z), length, temperature, key[3])
                except RuntimeError as e:
                    log.warning("decoding eagerly: CUDA graph capture failed (%s)", e)
                    self._graphs[key] = None
        graph = self._graphs[key]
        return self.model.decode(z, length, temperature, controls).samples if graph is None else graph(z, controls)

    def decode(
        self,
        z: np.ndarray,
        length: int | None = None,
        temperature: float | None = DEFAULT_TEMPERATURE,
        c_input: np.ndarray | None = None,
        seed: int | None = None,
        as_sequences: bool = False,
    ) -> Decoded:
        """z [n, z_size] -> n MIDI files, through the converter's from_tensors.

        `as_sequences`: NoteSequences instead of PrettyMIDI objects (every generating method takes it), for
        callers that only want bytes (`sequence_to_midi_bytes`, much cheaper than PrettyMIDI.write) or notes.
        """
        samples = self.decode_to_tensors(z, length, temperature, c_input, seed)
        controls = self._controls(c_input, len(samples))
        seqs = self.converter.to_sequences(list(samples), None if controls is None else list(controls))
        return seqs if as_sequences else [sequence_to_pretty_midi(ns) for ns in seqs]

    def sample(
        self,
        n: int,
        length: int | None = None,
        temperature: float | None = DEFAULT_TEMPERATURE,
        same_z: bool = False,
        c_input: np.ndarray | None = None,
        seed: int | None = None,
        transform: LatentTransform | None = None,
        as_sequences: bool = False,
    ) -> Decoded:
        """n sequences decoded from z ~ N(0, I) (one z for all of them with `same_z`).

        `transform` maps the drawn z [n, z_size] before decoding (an attribute shift, a latent constraint).
        """
        import torch

        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        with self._rng(seed):
            z = torch.randn(1 if same_z else n, self.config.hparams.z_size).expand(n, -1).numpy()
            return self.decode(transform(z) if transform else z, length, temperature, c_input, as_sequences=as_sequences)

    def interpolate(
        self,
        start: MidiSource,
        end: MidiSource,
        num_steps: int,
        length: int | None = None,
        temperature: float | None = DEFAULT_TEMPERATURE,
        seed: int | None = None,
        transform: LatentTransform | None = None,
        as_sequences: bool = False,
    ) -> Decoded:
        """`num_steps` sequences along the slerp between the posterior means of two inputs, both ends included.

        `transform` maps the interpolation's points before decoding, as in `sample`.
        """
        z = self.interpolation_z(start, end, num_steps)
        return self.decode(transform(z) if transform else z, length, temperature, seed=seed, as_sequences=as_sequences)

    def interpolation_z(self, start: MidiSource, end: MidiSource, num_steps: int) -> np.ndarray:
        """The latent points `interpolate` decodes: slerp(μ_start, μ_end), [num_steps, z_size]."""
        if num_steps < 2:
            raise ValueError(f"an interpolation needs num_steps >= 2 (both ends), got {num_steps}")
        _, mu, _ = self.encode([start, end])
        return slerp(mu[0], mu[1], num_steps).astype(np.float32)

    # --- attribute vectors (musicvae.attributes) -----------------------------------------------------

    @functools.cached_property
    def attribute_vectors(self) -> dict[str, np.ndarray]:
        """{name: v} stored beside the checkpoint by `musicvae attributes compute`; assignable."""
        from musicvae.attributes import attributes_path, load_attribute_vectors

        if self.checkpoint is None:
            raise FileNotFoundError("this model was not loaded from a checkpoint: assign attribute_vectors")
        return load_attribute_vectors(attributes_path(self.checkpoint), self)

    def apply_attribute(self, z: np.ndarray, name: str, strength: float = 1.0) -> np.ndarray:
        """z + strength · v_name: more of the attribute for strength > 0, less for strength < 0."""
        vectors = self.attribute_vectors
        if name not in vectors:
            raise ValueError(f"no attribute vector {name!r}; known: {', '.join(vectors)}")
        return (np.asarray(z, np.float32) + np.float32(strength) * vectors[name]).astype(np.float32)

    # --- GrooVAE ------------------------------------------------------------------------------------

    def humanize(
        self, midi: MidiSource, temperature: float | None = GROOVE_TEMPERATURE, seed: int | None = None, as_sequences: bool = False
    ) -> Decoded:
        """Add timing and dynamics to a quantized drum pattern (groovae_2bar_humanize); one output per window."""
        return self._regroove(midi, "humanize", temperature, seed, as_sequences)

    def tap_to_drums(
        self, midi: MidiSource, temperature: float | None = GROOVE_TEMPERATURE, seed: int | None = None, as_sequences: bool = False
    ) -> Decoded:
        """A drum performance from a rhythm tapped on any drum (groovae_2bar_tap_fixed_velocity*)."""
        return self._regroove(midi, "tapify", temperature, seed, as_sequences)

    def add_closed_hh(
        self, midi: MidiSource, temperature: float | None = GROOVE_TEMPERATURE, seed: int | None = None, as_sequences: bool = False
    ) -> Decoded:
        """Add (or replace) the closed hi-hats of a drum performance (groovae_2bar_add_closed_hh)."""
        return self._regroove(midi, "add_instruments", temperature, seed, as_sequences)

    def _regroove(self, midi: MidiSource, transform: str, temperature: float | None, seed: int | None, as_sequences: bool) -> Decoded:
        # The converter applies the transform to the encoder input; the model was trained to undo it.
        if not (isinstance(self.converter, GrooveConverter) and getattr(self.converter, transform)):
            raise ValueError(f"{self.config.name} was not trained with GrooVAE's {transform} input transform")
        windows = self.converter.to_tensors(midi)
        if len(windows) == 0:
            raise NoExtractedExamplesError(describe(midi))
        z, _, _ = self.encode_tensors(windows.inputs, windows.lengths, seed=seed)
        return self.decode(z, temperature=temperature, seed=seed, as_sequences=as_sequences)

    def transfer_groove(
        self,
        groove_midi: MidiSource,
        score_midi: MidiSource,
        temperature: float | None = GROOVE_TEMPERATURE,
        seed: int | None = None,
        as_sequences: bool = False,
    ) -> Decoded:
        """Play each window of `score_midi` with the groove of `groove_midi` (hits-control configs).

        z comes from the groove (one window); the hits of each score window are the decoder's controls.
        """
        self._require_hits_control()
        z, _, _ = self.encode([groove_midi], seed=seed)
        return self.play_with_groove(z, score_midi, temperature, seed, as_sequences)

    def play_with_groove(
        self,
        z: np.ndarray,
        score_midi: MidiSource,
        temperature: float | None = GROOVE_TEMPERATURE,
        seed: int | None = None,
        as_sequences: bool = False,
    ) -> Decoded:
        """`transfer_groove` from a groove already encoded: z [1, z_size] decoded once per score window."""
        self._require_hits_control()
        score = self.converter.to_tensors(score_midi)
        if len(score) == 0:
            raise NoExtractedExamplesError(describe(score_midi))
        n = len(score)
        return self.decode(np.repeat(z, n, axis=0), temperature=temperature, c_input=np.stack(score.controls), seed=seed, as_sequences=as_sequences)

    def _require_hits_control(self) -> None:
        if not (isinstance(self.converter, GrooveConverter) and self.converter.hits_as_controls):
            raise ValueError(f"{self.config.name} does not take hits as controls (use groovae_2bar_hits_control_tfds)")


# --- music_vae_generate -----------------------------------------------------------------------------


@dataclasses.dataclass
class GenerateOptions:
    config: str
    checkpoint_file: str | None = None
    run_dir: str | None = None  # takes priority over checkpoint_file, as in Magenta
    mode: str = "sample"  # sample | interpolate
    num_outputs: int = 5
    max_batch_size: int = 8
    temperature: float = DEFAULT_TEMPERATURE
    input_midi_1: str | None = None
    input_midi_2: str | None = None
    output_dir: str = str(Path(tempfile.gettempdir()) / "music_vae" / "generated")
    seed: int | None = None
    plot: bool = False
    hparams: str | None = None
    device: str = "cpu"
    attribute: str | None = None  # shift z along this attribute vector (musicvae attributes compute)
    attribute_strength: float = 1.0
    constraint: str | None = None  # latent constraint file (musicvae constraints train)
    constraint_target: str = "high"


def _write(seqs: Sequence[NoteSequence], pattern: Path, plot: bool) -> list[Path]:
    """Write sequences as `pattern` with `*` replaced by 000, 001, ... (Magenta's naming)."""
    paths = []
    for i, ns in enumerate(seqs):
        path = pattern.with_name(pattern.name.replace("*", f"{i:03d}"))
        path.write_bytes(sequence_to_midi_bytes(ns))
        if plot:
            plot_piano_roll(sequence_to_pretty_midi(ns), path.with_suffix(".png"))
        paths.append(path)
    return paths


def plot_piano_roll(midi: pretty_midi.PrettyMIDI, path: Path) -> None:
    """A piano roll: one bar per note (pitch against seconds), a colour per instrument."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for k, inst in enumerate(midi.instruments):
        notes = inst.notes
        label = "drums" if inst.is_drum else pretty_midi.program_to_instrument_name(inst.program)
        ax.barh([n.pitch for n in notes], [n.end - n.start for n in notes], left=[n.start for n in notes],
                height=0.8, color=f"C{k}", label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    if midi.instruments:
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _check_input(converter: DataConverter, path: str, number: int, opts: GenerateOptions, stamp: str) -> None:
    """Magenta's _check_extract_examples: one window, or none (error), or several (all written, error)."""
    outputs = converter.to_tensors(path).outputs
    if not outputs:
        raise NoExtractedExamplesError(path)
    if len(outputs) > 1:
        pattern = Path(opts.output_dir) / f"{opts.config}_input{number}-extractions_{stamp}-*-of-{len(outputs):03d}.mid"
        _write(converter.to_sequences(outputs), pattern, opts.plot)
        raise MultipleExtractedExamplesError(path, len(outputs), str(pattern))


def latent_transform(model: TrainedModel, opts: GenerateOptions) -> LatentTransform | None:
    """The z hook of --constraint and --attribute (None without them); the constraint goes first, so that
    the attribute shift starts from the realistic point it maps z to."""
    if not (opts.constraint or opts.attribute):
        return None
    constraint = None
    if opts.constraint:
        from musicvae.constraints import load_constraint

        constraint = load_constraint(opts.constraint, model)

    def transform(z: np.ndarray) -> np.ndarray:
        if constraint is not None:
            z = constraint.apply(z, opts.constraint_target)
        if opts.attribute:
            z = model.apply_attribute(z, opts.attribute, opts.attribute_strength)
        return z

    return transform


def generate(opts: GenerateOptions) -> list[Path]:
    """music_vae_generate: sample or interpolate, write `<config>_<mode>_<date>-NNN-of-NNN.mid` files.

    Interpolation inputs are checked before the model loads: NoExtractedExamplesError for an input
    without a valid window, MultipleExtractedExamplesError after writing all windows of one with several.
    """
    config = get_config(opts.config)
    if opts.mode not in ("sample", "interpolate"):
        raise ValueError(f"unknown mode {opts.mode!r}; expected sample or interpolate")
    if opts.num_outputs <= 0:
        raise ValueError(f"num_outputs must be positive, got {opts.num_outputs}")
    checkpoint = opts.run_dir or opts.checkpoint_file
    if not checkpoint:
        raise ValueError("give --checkpoint_file or --run_dir")
    out_dir = Path(opts.output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = dataclasses.replace(opts, output_dir=str(out_dir))
    stamp = time.strftime("%Y-%m-%d_%H%M%S")
    if opts.mode == "interpolate":
        converter = inference_converter(config)
        for number, path in ((1, opts.input_midi_1), (2, opts.input_midi_2)):
            if not path or not Path(path).is_file():
                raise FileNotFoundError(f"input MIDI {number} not found: {path}")
            _check_input(converter, path, number, opts, stamp)

    log.info("loading %s", checkpoint)
    model = TrainedModel.from_checkpoint(
        checkpoint, opts.config, opts.device, min(opts.max_batch_size, opts.num_outputs), opts.hparams
    )
    length = model.config.hparams.max_seq_len
    transform = latent_transform(model, opts)
    if opts.mode == "sample":
        seqs = model.sample(opts.num_outputs, length, opts.temperature, seed=opts.seed, transform=transform, as_sequences=True)
    else:
        seqs = model.interpolate(
            opts.input_midi_1,
            opts.input_midi_2,
            opts.num_outputs,
            length,
            opts.temperature,
            seed=opts.seed,
            transform=transform,
            as_sequences=True,
        )
    pattern = out_dir / f"{opts.config}_{opts.mode}_{stamp}-*-of-{opts.num_outputs:03d}.mid"
    paths = _write(seqs, pattern, opts.plot)
    log.info("wrote %d files to %s", len(paths), out_dir)
    return paths


# --- musicvae import-magenta ------------------------------------------------------------------------


def import_magenta(config_name: str, checkpoint_file: str | Path, output: str | Path, hparams: str | None = None) -> Path:
    """Convert a Magenta checkpoint (prefix, directory or .tar) into our checkpoint at `output`.

    The result has train.py's layout (fresh optimiser, data position 0, Magenta's global step), so
    `load_model`, `TrainedModel.from_checkpoint` and a resumed `music_vae_train` all read it.
    """
    import torch

    from musicvae.train import CHECKPOINT_FORMAT, config_to_dict, make_optimizer, save_checkpoint

    config, model, step = load_magenta_model(get_config(config_name), _magenta_location(Path(checkpoint_file)), hparams)
    params = [p for p in model.parameters() if p.requires_grad]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "optimizer": make_optimizer(params, config.hparams, torch.device("cpu")).state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "data": {"seed": 0, "epoch": 0, "batch": 0},
    }
    out = Path(output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(payload, out)
    return out


def _import_command(args: argparse.Namespace) -> int:
    try:
        out = import_magenta(args.config, args.checkpoint_file, args.output, args.hparams or None)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"musicvae import-magenta: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def add_import_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import-magenta",
        help="convert a Magenta MusicVAE checkpoint into ours",
        description="Read a Magenta (TensorFlow) MusicVAE checkpoint without TensorFlow and write it as our "
        "checkpoint (ckpt .pt), for music_vae_generate --checkpoint_file, TrainedModel and fine-tuning. "
        "Layer sizes come from the checkpoint, the rest from --config; a checkpoint that does not fit the "
        "config is refused with the list of misfitting variables.",
    )
    p.add_argument("--config", required=True, help="config name from CONFIG_MAP the checkpoint was trained with")
    p.add_argument("--checkpoint_file", required=True,
                   help="Magenta checkpoint: a .tar bundle, a prefix (model.ckpt-N) or a directory")
    p.add_argument("--output", required=True, help="our checkpoint to write, e.g. runs/mel2/train/ckpt-0.pt")
    p.add_argument("--hparams", default="", help="hparam overrides, Magenta style (k=v,...), applied last")
    p.set_defaults(func=_import_command)
    return p
