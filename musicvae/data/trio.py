"""Melody + bass + drums windows (Magenta's TrioConverter, without chord/key conditioning).

Every instrument gets a type from its notes (drums, melody program 0-31, bass program 32-39;
anything else or a mix is invalid). Each melody/bass instrument is encoded with a 90-class melody
converter and each drum instrument with a 512-class one-hot drums converter, all padded to the
piece's length. For every (melody, bass, drums) combination, each window of `slice_bars` bars
where all three play (allowing `gap_bars` silent bars) becomes [mel 90 | bass 90 | drums 512].
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import replace
from typing import Sequence

import numpy as np

from musicvae.data.converter import ConverterTensors, DataConverter
from musicvae.data.drums import DrumsConverter
from musicvae.data.melody import OneHotMelodyConverter
from musicvae.data.note_sequence import NoteSequence
from musicvae.data.sequences import QuantizationError, extract_instrument, quantize, steps_per_bar

MAX_INSTRUMENT_NUMBER = 127
MEL_PROGRAMS = range(0, 32)  # piano, chromatic percussion, organ, guitar
BASS_PROGRAMS = range(32, 40)
ELECTRIC_BASS_PROGRAM = 33
BASS_INSTRUMENT = 1


class InstrumentType(enum.IntEnum):
    UNKNOWN = 0  # no note seen yet
    MEL = 1
    BASS = 2
    DRUMS = 3
    INVALID = 4


PROGRAM_TYPES = {
    **{p: InstrumentType.MEL for p in MEL_PROGRAMS},
    **{p: InstrumentType.BASS for p in BASS_PROGRAMS},
}


class TrioConverter(DataConverter):
    """Trio windows as 692-dim three-hot tensors (input == output)."""

    def __init__(
        self,
        slice_bars: int | None = None,
        gap_bars: int = 2,
        max_bars: int = 1024,
        steps_per_quarter: int = 4,
        quarters_per_bar: int = 4,
        max_tensors_per_notesequence: int | None = 5,
    ) -> None:
        if slice_bars is None:
            # Magenta accepts None here but then fails in to_tensors; fail where it is visible.
            raise ValueError("TrioConverter needs slice_bars")
        # Sub-converters as Magenta builds them: whole-piece tracks (no gap limit, no slicing,
        # no cap), padded to the piece length so that bar j sits at the same rows everywhere.
        self.melody_converter = OneHotMelodyConverter(
            gap_bars=None,
            steps_per_quarter=steps_per_quarter,
            pad_to_total_time=True,
            presplit_on_time_changes=False,
            max_tensors_per_notesequence=None,
        )
        self.drums_converter = DrumsConverter(
            gap_bars=None,
            steps_per_quarter=steps_per_quarter,
            pad_to_total_time=True,
            presplit_on_time_changes=False,
            max_tensors_per_notesequence=None,
        )
        self.slice_bars = slice_bars
        self.gap_bars = gap_bars
        self.max_bars = max_bars
        self.steps_per_quarter = steps_per_quarter
        self.steps_per_bar = steps_per_quarter * quarters_per_bar
        self.split_depths = (
            self.melody_converter.output_depth,
            self.melody_converter.output_depth,
            self.drums_converter.output_depth,
        )
        depth = sum(self.split_depths)
        super().__init__(
            input_depth=depth,
            output_depth=depth,
            max_tensors_per_notesequence=max_tensors_per_notesequence,
            presplit_on_time_changes=True,
        )

    def _to_tensors_fn(self, ns: NoteSequence) -> ConverterTensors:
        try:
            qns = quantize(ns, self.steps_per_quarter)
        except QuantizationError:
            return ConverterTensors()
        if steps_per_bar(qns) != self.steps_per_bar:
            return ConverterTensors()
        bar = self.steps_per_bar
        total_bars = min(-(-qns.total_quantized_steps // bar), self.max_bars)

        # Type and per-bar coverage of every instrument; a second type makes it INVALID.
        types = [InstrumentType.UNKNOWN] * (MAX_INSTRUMENT_NUMBER + 1)
        coverage = np.zeros((total_bars, MAX_INSTRUMENT_NUMBER + 1), dtype=bool)
        for note in qns.notes:
            i = note.instrument
            if i > MAX_INSTRUMENT_NUMBER:
                continue
            if note.is_drum:
                inferred = InstrumentType.DRUMS
            else:
                inferred = PROGRAM_TYPES.get(note.program, InstrumentType.INVALID)
            if types[i] == InstrumentType.UNKNOWN:
                types[i] = inferred
            elif types[i] != inferred:
                types[i] = InstrumentType.INVALID
            start_bar = note.quantized_start_step // bar
            if start_bar < total_bars:
                coverage[start_bar : min(-(-note.quantized_end_step // bar), total_bars), i] = True

        mel, bass, drums = (
            [i for i, t in enumerate(types) if t == wanted]
            for wanted in (InstrumentType.MEL, InstrumentType.BASS, InstrumentType.DRUMS)
        )
        if not (mel and bass and drums):
            return ConverterTensors()

        # Encode each instrument over a total time of whole bars, so every encoding has the same
        # length (Magenta sets total_time on the sequence itself; same arithmetic order here).
        padded = replace(ns, total_time=total_bars * bar * 60 / ns.qpm / self.steps_per_quarter)
        encoded: dict[int, np.ndarray] = {}
        for instruments, converter in ((mel + bass, self.melody_converter), (drums, self.drums_converter)):
            for i in instruments:
                outputs = converter.sequence_to_tensors(extract_instrument(padded, i)).outputs
                if outputs:
                    encoded[i] = outputs[0]
                else:
                    coverage[:, i] = False

        # Tolerate up to gap_bars empty bars on either side of a covered bar.
        original = coverage.copy()
        g = self.gap_bars
        for j in range(total_bars):
            coverage[j] = original[max(0, j - g) : min(total_bars, j + g) + 1].any(axis=0)

        seqs = []
        for group in itertools.product(mel, bass, drums):
            if not all(i in encoded for i in group):
                continue
            cols = list(group)
            group_coverage = coverage[:, cols].all(axis=1)
            # In the first and last gap_bars bars, any part covering any of those bars covers
            # them all (Magenta's leniency for re-encoded slices); numpy's slicing, quirks at
            # small sizes included, is kept on purpose.
            group_coverage[:g] = coverage[:g, cols].any()
            group_coverage[-g:] = coverage[-g:, cols].any()
            for j in range(total_bars - self.slice_bars + 1):
                if group_coverage[j : j + self.slice_bars].all():
                    rows = slice(j * bar, (j + self.slice_bars) * bar)
                    seqs.append(np.concatenate([encoded[i][rows] for i in group], axis=-1))
        return ConverterTensors(inputs=seqs, outputs=seqs)

    def to_sequences(
        self, samples: Sequence[np.ndarray], controls: Sequence[np.ndarray] | None = None
    ) -> list[NoteSequence]:
        mel_end, bass_end, _ = np.cumsum(self.split_depths)
        sequences = []
        for sample in samples:
            ns = self.melody_converter.to_sequences([sample[:, :mel_end]])[0]
            bass = self.melody_converter.to_sequences([sample[:, mel_end:bass_end]])[0]
            drums = self.drums_converter.to_sequences([sample[:, bass_end:]])[0]  # already instrument 9
            for note in bass.notes:
                note.instrument = BASS_INSTRUMENT
                note.program = ELECTRIC_BASS_PROGRAM
            ns.notes.extend(bass.notes + drums.notes)
            ns.total_time = max(ns.total_time, bass.total_time, drums.total_time)
            sequences.append(ns)
        return sequences
