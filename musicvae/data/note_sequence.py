"""A minimal, typed stand-in for Magenta's `NoteSequence` protobuf.

Only the fields the MusicVAE converters read are kept. Times are seconds (float64, as in the
protobuf); quantised fields are filled by `musicvae.data.sequences.quantize`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

DEFAULT_QPM = 120.0


@dataclass(slots=True)
class Note:
    pitch: int
    velocity: int
    start_time: float
    end_time: float
    instrument: int = 0
    program: int = 0
    is_drum: bool = False
    quantized_start_step: int = 0
    quantized_end_step: int = 0


@dataclass(slots=True)
class Tempo:
    time: float
    qpm: float


@dataclass(slots=True)
class TimeSignature:
    time: float
    numerator: int = 4
    denominator: int = 4


@dataclass
class NoteSequence:
    notes: list[Note] = field(default_factory=list)
    tempos: list[Tempo] = field(default_factory=list)
    time_signatures: list[TimeSignature] = field(default_factory=list)
    total_time: float = 0.0
    ticks_per_quarter: int = 220
    # 0 means "not quantised"; set together with the notes' quantized_* fields.
    steps_per_quarter: int = 0
    total_quantized_steps: int = 0

    @property
    def is_quantized(self) -> bool:
        return self.steps_per_quarter > 0

    def copy(self) -> NoteSequence:
        return copy.deepcopy(self)

    def with_notes(self, notes: list[Note]) -> NoteSequence:
        """A shallow copy sharing everything but the note list (notes are not copied)."""
        return NoteSequence(
            notes=notes,
            tempos=self.tempos,
            time_signatures=self.time_signatures,
            total_time=self.total_time,
            ticks_per_quarter=self.ticks_per_quarter,
            steps_per_quarter=self.steps_per_quarter,
            total_quantized_steps=self.total_quantized_steps,
        )

    @property
    def qpm(self) -> float:
        return self.tempos[0].qpm if self.tempos else DEFAULT_QPM
