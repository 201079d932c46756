"""The converter contract shared by every model family (Magenta's BaseNoteSequenceConverter).

`to_tensors(midi)` turns one MIDI file into zero or more training windows; `from_tensors(outputs)`
turns decoded windows back into MIDI. Modes follow Magenta: 'train' samples windows at random and
enables input augmentation, 'eval' keeps the first N, 'infer' is what generation uses (GrooVAE
switches pitch maps there).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pretty_midi

from musicvae.data.midi_io import MidiSource, read_midi, sequence_to_pretty_midi
from musicvae.data.note_sequence import NoteSequence
from musicvae.data.sequences import RawPiece, split_on_time_changes, split_pieces

MODES = ("train", "eval", "infer")
OUTPUT_VELOCITY = 80  # velocity of every decoded melody/drum note, as in Magenta


@dataclass
class ConverterTensors:
    """Windows extracted from one MIDI file; item i of each list belongs to window i."""

    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    controls: list[np.ndarray] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.lengths:
            self.lengths = [len(x) for x in self.inputs]
        if not self.controls:
            self.controls = [np.zeros((n, 0)) for n in self.lengths]

    def __len__(self) -> int:
        return len(self.inputs)

    def items(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        return list(zip(self.inputs, self.outputs, self.controls, self.lengths))

    @classmethod
    def from_items(cls, items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, int]]) -> ConverterTensors:
        if not items:
            return cls()
        inputs, outputs, controls, lengths = (list(x) for x in zip(*items))
        return cls(inputs, outputs, controls, lengths)


def maybe_sample_items(items: list, sample_size: int | None, rng: np.random.Generator | None) -> list:
    """Keep at most `sample_size` items: a random subset when `rng` is given, else the first ones.

    The random subset is returned in the iteration order of a set of indices, as Magenta does.
    """
    if not sample_size or len(items) <= sample_size:
        return items
    if rng is not None:
        indices = set(int(i) for i in rng.choice(len(items), size=sample_size, replace=False))
        return [items[i] for i in indices]
    return items[:sample_size]


def np_onehot(indices: Sequence[int], depth: int, dtype: type = bool) -> np.ndarray:
    onehot = np.zeros((len(indices), depth), dtype=dtype)
    onehot[np.arange(len(indices)), np.asarray(indices, dtype=np.int64)] = 1
    return onehot


class DataConverter(abc.ABC):
    """Base class; subclasses implement `_to_tensors_fn` (one time-change piece) and `to_sequences`."""

    def __init__(
        self,
        input_depth: int,
        output_depth: int,
        control_depth: int = 0,
        end_token: int | None = None,
        max_tensors_per_notesequence: int | None = None,
        presplit_on_time_changes: bool = True,
    ) -> None:
        self.input_depth = input_depth
        self.output_depth = output_depth
        self.control_depth = control_depth
        self.end_token = end_token
        self.max_tensors_per_notesequence = max_tensors_per_notesequence
        self.presplit_on_time_changes = presplit_on_time_changes
        self._mode: str | None = None
        self.rng = np.random.default_rng()

    # --- modes ---------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"invalid mode {mode!r}; expected one of {', '.join(MODES)}")
        self._mode = mode

    @property
    def mode(self) -> str | None:
        return self._mode

    @property
    def is_training(self) -> bool:
        return self._mode == "train"

    @property
    def is_inferring(self) -> bool:
        return self._mode == "infer"

    def seed(self, seed: int | None) -> None:
        """Seed the generator used for random window selection and input transforms in training."""
        self.rng = np.random.default_rng(seed)

    @property
    def _sampling_rng(self) -> np.random.Generator | None:
        return self.rng if self.is_training else None

    # --- conversion ----------------------------------------------------------------------
    def to_tensors(self, midi: MidiSource) -> ConverterTensors:
        """Convert a MIDI file (path, bytes, PrettyMIDI or NoteSequence) into windows."""
        return self.sequence_to_tensors(read_midi(midi))

    def sequence_to_tensors(self, ns: NoteSequence) -> ConverterTensors:
        return split_process_and_combine(
            ns,
            self.presplit_on_time_changes,
            self.max_tensors_per_notesequence,
            self._sampling_rng,
            self._to_tensors_fn,
            self._raw_piece_to_tensors,
        )

    def _raw_piece_to_tensors(self, raw: RawPiece) -> ConverterTensors | None:
        """`_to_tensors_fn(raw.shifted())` without copying the notes first, or None to have that
        called; converters that move the notes while reading them anyway override this."""
        return None

    @abc.abstractmethod
    def _to_tensors_fn(self, ns: NoteSequence) -> ConverterTensors:
        """Convert one piece with a single tempo and meter."""

    @abc.abstractmethod
    def to_sequences(self, samples: Sequence[np.ndarray], controls: Sequence[np.ndarray] | None = None) -> list[NoteSequence]:
        """Decode output tensors (one [T, output_depth] array per window) into note sequences."""

    def from_tensors(self, samples: Sequence[np.ndarray], controls: Sequence[np.ndarray] | None = None) -> list[pretty_midi.PrettyMIDI]:
        """Decode output tensors into MIDI, one PrettyMIDI per window."""
        return [sequence_to_pretty_midi(ns) for ns in self.to_sequences(samples, controls)]


def split_process_and_combine(
    ns: NoteSequence,
    split: bool,
    sample_size: int | None,
    rng: np.random.Generator | None,
    to_tensors_fn: Callable[[NoteSequence], ConverterTensors],
    raw_to_tensors_fn: Callable[[RawPiece], ConverterTensors | None] | None = None,
) -> ConverterTensors:
    """Convert each time-change piece, cap each piece's windows, then cap the combination.

    `raw_to_tensors_fn`, when given, is tried first on each piece before its notes are moved
    (sequences.split_pieces); None from it means "call to_tensors_fn on the moved piece".
    """
    raw_pieces = split_pieces(ns) if split and raw_to_tensors_fn is not None else None
    if raw_pieces is None:
        pieces = split_on_time_changes(ns) if split else [ns]
    else:
        pieces = raw_pieces
    combined: list = []
    result = None
    for piece in pieces:  # convert and sample piece by piece: converters may draw from rng too
        if raw_pieces is None:
            result = to_tensors_fn(piece)
        else:
            result = raw_to_tensors_fn(piece)
            if result is None:
                result = to_tensors_fn(piece.shifted())
        combined.extend(maybe_sample_items(result.items(), sample_size, rng))
    if len(pieces) == 1 and (not sample_size or len(result) <= sample_size):
        return result  # one piece, nothing sampled: the same windows, not rebuilt
    return ConverterTensors.from_items(maybe_sample_items(combined, sample_size, rng))
