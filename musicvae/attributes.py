"""Attribute vectors (MusicVAE paper, spec §3.9): latent directions for five melody attributes.

    values = melody_attributes(windows)                     # [n, 5], columns in ATTRIBUTES order
    vectors = compute_attribute_vectors(tm, windows)        # {name: v [z_size]}
    save_attribute_vectors(vectors, tm, attributes_path(tm.checkpoint))
    z = tm.apply_attribute(z, "note_density", 1.5)          # z + 1.5 v, vectors read beside the checkpoint

Magenta publishes no attribute-vector code, so the definitions follow the paper's descriptions. A
melody window is a sequence of 16th-note steps whose step 0 is a bar's downbeat (every converter
window starts on a bar); an onset is a step holding a note-on. Over the onsets of one window:

- ``c_diatonic``: fraction of onsets whose pitch class is in the C major scale {C D E F G A B}.
- ``note_density``: onsets per step (onsets / window length); 1 means a new note every 16th.
- ``average_interval``: mean |pitch_{i+1} − pitch_i| in semitones over consecutive onsets (rests
  between them do not break the pair).
- ``syncopation_16th``: fraction of onsets on odd 16th steps (step % 2 = 1), i.e. off the 8th grid.
- ``syncopation_8th``: fraction of onsets on off-beat 8ths (step % 4 = 2), the "and" of each beat.

An attribute that is undefined for a window (no onsets; fewer than two for the interval) is NaN
and leaves that window out of that attribute's statistics. The vector of an attribute is
v = E[μ | a ≥ Q3] − E[μ | a ≤ Q1] over the posterior means μ of the windows (spec §3.9).

Vectors are stored beside the checkpoint they belong to, as ``<checkpoint>.attributes.npz`` (plain
arrays, read with allow_pickle=False): this works for Magenta checkpoints as well as ours and leaves
training checkpoints untouched. The file records a fingerprint of the model's μ layer, so vectors
computed for other weights are refused rather than silently applied.

The command line of both `musicvae attributes` and `musicvae constraints` is here: this module does
not import torch, so `musicvae` builds its parser quickly.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from musicvae.data.note_sequence import NoteSequence

if TYPE_CHECKING:
    from musicvae.generate import TrainedModel

log = logging.getLogger(__name__)

ATTRIBUTES: tuple[str, ...] = ("c_diatonic", "note_density", "average_interval", "syncopation_16th", "syncopation_8th")
C_MAJOR_PITCH_CLASSES = (0, 2, 4, 5, 7, 9, 11)
MELODY_MIN_PITCH = 21  # class 2 of the melody one-hot is MIDI pitch 21 (musicvae.data.melody)
SUFFIX = ".attributes.npz"
_FINGERPRINT_KEY = "__fingerprint__"
_ENCODE_CHUNK = 4096  # windows stacked to float32 at a time by encode_tensors: bounds peak memory

__all__ = [
    "ATTRIBUTES",
    "melody_attributes",
    "sequence_attributes",
    "quartile_vector",
    "compute_attribute_vectors",
    "encode_means",
    "melody_min_pitch",
    "latent_fingerprint",
    "attributes_path",
    "save_attribute_vectors",
    "load_attribute_vectors",
    "add_attributes_parser",
    "add_constraints_parser",
]


# --- definitions ------------------------------------------------------------------------------------


def _from_onsets(onset: np.ndarray, pitch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, 5] attributes from an onset mask [n, T], pitches [n, T] (read at onsets) and lengths [n]."""
    n, t = onset.shape
    step = np.arange(t)
    count = onset.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # no onsets: 0/0 = NaN, as documented
        diatonic = (onset & np.isin(pitch % 12, C_MAJOR_PITCH_CLASSES)).sum(axis=1) / count
        density = count / lengths
        sync16 = (onset & (step % 2 == 1)).sum(axis=1) / count
        sync8 = (onset & (step % 4 == 2)).sum(axis=1) / count
        # Consecutive onsets of the same row are neighbours in the row-major flattening.
        rows, cols = np.nonzero(onset)
        p = pitch[rows, cols]
        same_row = rows[1:] == rows[:-1]
        jumps = np.bincount(rows[1:][same_row], np.abs(np.diff(p))[same_row], minlength=n)
        interval = jumps / (count - 1)
    interval[count < 2] = np.nan
    return np.stack([diatonic, density, interval, sync16, sync8], axis=1)


def melody_attributes(
    windows: np.ndarray | Sequence[np.ndarray],
    lengths: Sequence[int] | np.ndarray | None = None,
    min_pitch: int = MELODY_MIN_PITCH,
) -> np.ndarray:
    """[n, 5] attributes (ATTRIBUTES order) of melody windows: one-hots [n, T, D] or classes [n, T].

    Classes are the melody converter's (0 hold, 1 note-off, 2 + pitch − min_pitch note-on); steps at
    or beyond a window's length (padding) are ignored.
    """
    x = np.asarray(windows)
    classes = x.argmax(axis=-1) if x.ndim == 3 else x.astype(np.int64)
    if classes.ndim != 2:
        raise ValueError(f"windows must be one-hot [n, T, D] or classes [n, T], got shape {x.shape}")
    n, t = classes.shape
    lens = np.full(n, t) if lengths is None else np.asarray(lengths, np.int64)
    onset = (classes >= 2) & (np.arange(t) < lens[:, None])
    return _from_onsets(onset, classes - 2 + min_pitch, lens)


def sequence_attributes(sequences: Sequence[NoteSequence], num_steps: int, steps_per_quarter: int = 4) -> np.ndarray:
    """[n, 5] attributes of NoteSequences (e.g. decoded outputs) over their first `num_steps` steps.

    Unquantised sequences are quantised first. Of notes starting on the same step the highest counts
    (the melody converter's top-line choice), so a decoded melody gives its window's values.
    """
    from musicvae.data.sequences import quantize

    onset = np.zeros((len(sequences), num_steps), bool)
    pitch = np.zeros((len(sequences), num_steps), np.int64)
    for i, ns in enumerate(sequences):
        qns = ns if ns.is_quantized else quantize(ns, steps_per_quarter)
        for note in qns.notes:
            s = note.quantized_start_step
            if s < num_steps and not note.is_drum:
                pitch[i, s] = max(pitch[i, s], note.pitch) if onset[i, s] else note.pitch
                onset[i, s] = True
    return _from_onsets(onset, pitch, np.full(len(sequences), num_steps))


def quartile_vector(mu: np.ndarray, values: np.ndarray) -> np.ndarray:
    """E[μ | a ≥ Q3] − E[μ | a ≤ Q1] over the rows whose attribute value is defined (not NaN)."""
    keep = ~np.isnan(values)
    mu, values = np.asarray(mu, np.float64)[keep], values[keep]
    if len(values) < 2:
        raise ValueError(f"an attribute vector needs at least 2 windows with the attribute defined, got {len(values)}")
    q1, q3 = np.quantile(values, [0.25, 0.75])
    if q1 == q3:
        log.warning("Q1 = Q3 = %g: the high and low sets overlap; the vector is weak", q1)
    return (mu[values >= q3].mean(axis=0) - mu[values <= q1].mean(axis=0)).astype(np.float32)


# --- vectors for a model ----------------------------------------------------------------------------


def melody_min_pitch(model: TrainedModel) -> int:
    """The converter's lowest pitch (class 2); refuses models that are not one-hot melody models."""
    from musicvae.data.melody import OneHotMelodyConverter

    if not isinstance(model.converter, OneHotMelodyConverter):
        raise ValueError(f"melody attributes need a melody config (cat-mel_*, *-mel_16bar), not {model.config.name}")
    return model.converter.min_pitch


def encode_means(model: TrainedModel, windows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ), each [n, z_size], of encoder input windows [n, T, D], encoded a chunk at a time."""
    parts = [model.encode_tensors(windows[i : i + _ENCODE_CHUNK], lengths[i : i + _ENCODE_CHUNK])
             for i in range(0, len(windows), _ENCODE_CHUNK)]  # fmt: skip
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def compute_attribute_vectors(
    model: TrainedModel, windows: np.ndarray, lengths: Sequence[int] | np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """{attribute: v [z_size]} from melody windows [n, T, D] (the model's encoder inputs)."""
    min_pitch = melody_min_pitch(model)
    windows = np.asarray(windows)
    lens = np.full(len(windows), windows.shape[1]) if lengths is None else np.asarray(lengths)
    values = melody_attributes(windows, lens, min_pitch)
    mu, _ = encode_means(model, windows, lens)
    return {name: quartile_vector(mu, values[:, k]) for k, name in enumerate(ATTRIBUTES)}


# --- storage ----------------------------------------------------------------------------------------


def latent_fingerprint(model: TrainedModel) -> str:
    """A short hash of the μ layer's weights: names the latent space that vectors and constraints live in."""
    h = hashlib.sha256()
    for tensor in (model.model.mu.weight, model.model.mu.bias):
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def attributes_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's vectors live: `<checkpoint>.attributes.npz` beside it."""
    p = Path(checkpoint)
    return p.with_name(p.name + SUFFIX)


def save_attribute_vectors(vectors: dict[str, np.ndarray], model: TrainedModel, path: str | Path) -> Path:
    """Write `vectors` with `model`'s latent fingerprint to `path` (exactly: np.savez would append .npz)."""
    out = Path(path)
    arrays = {name: np.asarray(v, np.float32) for name, v in vectors.items()}
    with open(out, "wb") as f:
        np.savez(f, **arrays, **{_FINGERPRINT_KEY: np.array(latent_fingerprint(model))})
    return out


def load_attribute_vectors(path: str | Path, model: TrainedModel) -> dict[str, np.ndarray]:
    """The vectors in `path`, refused unless they were computed for `model`'s weights."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no attribute vectors at {p}: compute them with `musicvae attributes compute`")
    with np.load(p, allow_pickle=False) as f:
        found = {k: f[k] for k in f.files}
    if str(found.pop(_FINGERPRINT_KEY, "")) != latent_fingerprint(model):
        raise ValueError(f"{p} was computed for another model's weights; recompute it for this checkpoint")
    return found


# --- command line -----------------------------------------------------------------------------------


def load_windows(
    model: TrainedModel, examples_path: Sequence[str], data_dir: str, split: str | None, num_workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encoder input windows and lengths from shards, MIDI or the corpus (the corpus's train split by default).

    MIDI is converted in the converter's 'eval' mode: deterministic windows, no transposition.
    """
    from musicvae.train import open_source

    corpus = not examples_path or (len(examples_path) == 1 and (Path(examples_path[0]) / "manifest.csv").is_file())
    split = split or ("train" if corpus else None)
    source = open_source(model.config, examples_path, data_dir, split, mode="eval", seed=0, num_workers=num_workers)
    examples = source.examples(0)
    return examples.inputs, examples.lengths


def add_examples_arguments(p: argparse.ArgumentParser) -> None:
    """The model and data flags shared by `musicvae attributes` and `musicvae constraints`."""
    p.add_argument("--checkpoint", required=True,
                   help="our checkpoint (ckpt-N.pt or a run dir) or Magenta's (with --config)")
    p.add_argument("--config", help="config name; needed for Magenta checkpoints")
    p.add_argument("--examples_path", action="append", default=[],
                   help="converted shard directories, or MIDI files/directories/globs/tars (repeatable); default: the "
                   "corpus under --data_dir")
    p.add_argument("--data_dir", default="data", help="corpus directory when --examples_path is absent (default: data)")
    p.add_argument("--split", choices=("train", "heldout"), help="corpus split (default: train)")
    p.add_argument("--batch_size", type=int, default=256, help="windows encoded at once (default: 256)")
    p.add_argument("--num_workers", type=int, default=2, help="MIDI conversion workers (default: 2)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def open_model_and_windows(args: argparse.Namespace) -> tuple[TrainedModel, np.ndarray, np.ndarray]:
    from musicvae.generate import TrainedModel

    model = TrainedModel.from_checkpoint(args.checkpoint, args.config, args.device, args.batch_size)
    melody_min_pitch(model)  # refuse a drum or trio model before converting any data
    examples = [part for value in args.examples_path for part in value.split(",") if part]
    windows, lengths = load_windows(model, examples, args.data_dir, args.split, args.num_workers)
    return model, windows, lengths


def _compute_command(args: argparse.Namespace) -> int:
    from musicvae.magenta_checkpoint import CheckpointError
    from musicvae.train import TrainingError

    try:
        model, windows, lengths = open_model_and_windows(args)
        vectors = compute_attribute_vectors(model, windows, lengths)
        out = save_attribute_vectors(vectors, model, args.output or attributes_path(model.checkpoint))
    except (CheckpointError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"musicvae attributes: error: {e}", file=sys.stderr)
        return 1
    values = melody_attributes(windows, lengths, model.converter.min_pitch)
    print(f"{len(windows)} windows -> {out}")
    for k, name in enumerate(ATTRIBUTES):
        q1, q3 = np.nanquantile(values[:, k], [0.25, 0.75])
        print(f"  {name:17s} Q1 {q1:7.3f}  Q3 {q3:7.3f}  |v| {np.linalg.norm(vectors[name]):.3f}")
    return 0


def add_attributes_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "attributes",
        help="attribute vectors: latent directions for note density, syncopation, ...",
        description="Attribute vectors (MusicVAE paper): v = mean μ of the windows in an attribute's top quartile − "
        f"mean μ of its bottom quartile, for {', '.join(ATTRIBUTES)}. Apply them with music_vae_generate "
        "--attribute NAME --attribute_strength X or TrainedModel.apply_attribute.",
    )
    sub = p.add_subparsers(dest="attributes_command", required=True)
    c = sub.add_parser("compute", help="compute the vectors of a melody model and store them beside its checkpoint")
    add_examples_arguments(c)
    c.add_argument("--output", help=f"file to write (default: <checkpoint>{SUFFIX}, where generation looks)")
    c.set_defaults(func=_compute_command)
    return p


def _train_constraint_command(args: argparse.Namespace) -> int:
    from musicvae.constraints import save_constraint, train_latent_constraint
    from musicvae.magenta_checkpoint import CheckpointError
    from musicvae.train import TrainingError

    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
        model, windows, lengths = open_model_and_windows(args)
        constraint = train_latent_constraint(
            model, windows, args.attribute, lengths, steps=args.steps, batch_size=args.train_batch_size, hidden=hidden,
            learning_rate=args.learning_rate, distance_penalty=args.distance_penalty,
            gradient_penalty=args.gradient_penalty, seed=args.seed,
        )  # fmt: skip
        out = save_constraint(constraint, args.output or f"{model.checkpoint}.{args.attribute}.constraint.pt")
    except (CheckpointError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"musicvae constraints: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def add_constraints_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`musicvae constraints train` (musicvae.constraints); here so that building the parser needs no torch.

    The defaults repeat train_latent_constraint's (a test keeps them equal).
    """
    p = subparsers.add_parser(
        "constraints",
        help="latent constraints: an actor-critic that moves z toward high or low values of an attribute",
        description="Latent constraints (Engel, Hoffman & Roberts 2018) on a frozen melody model: a critic learns which "
        "z are encodings of windows with a high (>= Q3) or low (<= Q1) attribute value, an actor learns to move "
        "prior samples there. Sample with music_vae_generate --constraint FILE --constraint_target high|low.",
    )
    sub = p.add_subparsers(dest="constraints_command", required=True)
    t = sub.add_parser("train", help="train a constraint for one attribute of a melody model")
    add_examples_arguments(t)
    t.add_argument("--attribute", required=True, choices=ATTRIBUTES, help="the attribute to condition on")
    t.add_argument("--output", help="file to write (default: <checkpoint>.<attribute>.constraint.pt)")
    t.add_argument("--steps", type=int, default=5000, help="actor and critic updates (default: 5000)")
    t.add_argument("--train_batch_size", type=int, default=128, help="latents per update (default: 128)")
    t.add_argument("--hidden", default="256,256,256,256",
                   help="MLP layer sizes of actor and critic (default: 256,256,256,256)")
    t.add_argument("--learning_rate", type=float, default=3e-4, help="Adam learning rate (default: 3e-4)")
    t.add_argument("--distance_penalty", type=float, default=0.1,
                   help="λ_dist of the actor's log(1 + (z'-z)²)/σ̄² penalty (default: 0.1)")
    t.add_argument("--gradient_penalty", type=float, default=10.0,
                   help="λ of the critic's gradient penalty (default: 10)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and sampling (default: 0)")
    t.set_defaults(func=_train_constraint_command)
    return p
