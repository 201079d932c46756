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

from musicvae.data.converter import ConverterTensors, DataConverter, maybe_sample_items
from musicvae.data.drums import DrumsConverter
from musicvae.data.melody import OneHotMelodyConverter
from musicvae.data.note_sequence import NoteSequence
from musicvae.data.sequences import (
    QuantizationError,
    RawPiece,
    _smf,
    extract_instrument,
    quantize,
    quantize_piece,
    quantize_to_step,
    steps_per_bar,
)

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
# PROGRAM_TYPES as a table over programs 0..39 (every other program is INVALID)
_PROGRAM_TYPE_TABLE = np.array([int(PROGRAM_TYPES[p]) for p in range(max(PROGRAM_TYPES) + 1)], dtype=np.int64)


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
        result = self._from_quantized(ns, qns)
        return self._to_tensors_slow(ns, qns) if result is None else result

    def _raw_piece_to_tensors(self, raw: RawPiece) -> ConverterTensors | None:
        try:
            qns = quantize_piece(raw, raw.notes, self.steps_per_quarter)
        except QuantizationError:
            return ConverterTensors()
        return None if qns is None else self._from_quantized(raw.piece, qns)

    def _from_quantized(self, ns: NoteSequence, qns: NoteSequence) -> ConverterTensors | None:
        """The windows of quantised piece `qns` (of `ns`, of which only the tempo is read), with
        array coverage and the sub-converters on the quantised notes; None when the C helpers
        decline (the caller then takes _to_tensors_slow). Draws from rng only at the end."""
        if steps_per_bar(qns) != self.steps_per_bar:
            return ConverterTensors()
        columns = _smf.note_columns(qns.notes) if _smf is not None else None
        if columns is None:
            return None
        instrument, program, is_drum, start, end = (np.frombuffer(c, dtype=np.int64) for c in columns)
        if len(instrument) and instrument.min() < 0:  # Python's negative indexing: keep the reference
            return None
        bar = self.steps_per_bar
        total_bars = min(-(-qns.total_quantized_steps // bar), self.max_bars)
        n_inst = MAX_INSTRUMENT_NUMBER + 1

        # Type of every instrument: the type of all its notes, INVALID when they disagree.
        keep = instrument <= MAX_INSTRUMENT_NUMBER
        inst = instrument[keep]
        known = (program >= 0) & (program < len(_PROGRAM_TYPE_TABLE))
        inferred = np.where(known, _PROGRAM_TYPE_TABLE[np.where(known, program, 0)], int(InstrumentType.INVALID))
        inferred = np.where(is_drum != 0, int(InstrumentType.DRUMS), inferred)[keep]
        lowest = np.full(n_inst, 127, dtype=np.int64)
        highest = np.full(n_inst, -1, dtype=np.int64)
        np.minimum.at(lowest, inst, inferred)
        np.maximum.at(highest, inst, inferred)
        types = np.where(lowest == highest, lowest, int(InstrumentType.INVALID))
        types[highest < 0] = int(InstrumentType.UNKNOWN)

        # Bars covered by each instrument: [start bar, ceil(end / bar)) clipped to the piece.
        start_bar, end_bar = start[keep] // bar, np.minimum(-(-end[keep] // bar), total_bars)
        marked = (start_bar < total_bars) & (end_bar > start_bar)
        size = (total_bars + 1) * n_inst
        delta = np.bincount(start_bar[marked] * n_inst + inst[marked], minlength=size)
        delta -= np.bincount(end_bar[marked] * n_inst + inst[marked], minlength=size)
        coverage = np.cumsum(delta.reshape(total_bars + 1, n_inst)[:total_bars], axis=0) > 0

        mel, bass, drums = (
            np.flatnonzero(types == int(wanted)).tolist()
            for wanted in (InstrumentType.MEL, InstrumentType.BASS, InstrumentType.DRUMS)
        )
        if not (mel and bass and drums):
            return ConverterTensors()

        # Each instrument's (already quantised) notes, in order.
        order = np.argsort(instrument, kind="stable")
        bounds = np.searchsorted(instrument[order], np.arange(n_inst + 1))
        notes = qns.notes

        def notes_of(i: int) -> list:
            return [notes[k] for k in order[bounds[i] : bounds[i + 1]].tolist()]

        # Encode each instrument over a total time of whole bars, so every encoding has the same
        # length (Magenta sets total_time on the sequence itself; same arithmetic order here),
        # from the notes quantised above: the sub-converters would quantise them identically.
        padded_total_time = total_bars * bar * 60 / ns.qpm / self.steps_per_quarter
        steps_per_second = self.steps_per_quarter * qns.tempos[0].qpm / 60.0
        padded_steps = quantize_to_step(padded_total_time, steps_per_second)
        encoded: dict[int, np.ndarray] = {}
        mel_conv, drums_conv = self.melody_converter, self.drums_converter
        for i in mel + bass + drums:
            inst_notes = notes_of(i)
            if i in drums:
                onsets = drums_conv.onsets_from_quantized(NoteSequence(notes=inst_notes))
                if onsets is None:
                    return None
                total_steps = max([padded_steps, *(n.quantized_end_step for n in inst_notes)])
                outputs = drums_conv.tensors_from_onsets(*onsets, total_steps).outputs
            else:
                lo, hi = mel_conv.min_pitch, mel_conv.max_pitch
                kept = [n for n in inst_notes if lo <= n.pitch <= hi]
                total_steps = max([padded_steps, *(n.quantized_end_step for n in kept)])
                outputs = mel_conv.tensors_from_quantized(
                    NoteSequence(
                        notes=kept,
                        tempos=qns.tempos,
                        time_signatures=qns.time_signatures,
                        total_time=padded_total_time,
                        ticks_per_quarter=qns.ticks_per_quarter,
                        steps_per_quarter=qns.steps_per_quarter,
                        total_quantized_steps=total_steps,
                    )
                ).outputs
            if outputs:
                encoded[i] = outputs[0]
            else:
                coverage[:, i] = False

        # Tolerate up to gap_bars empty bars on either side of a covered bar.
        g = self.gap_bars
        counts = np.zeros((total_bars + 1, n_inst), dtype=np.int64)
        np.cumsum(coverage, axis=0, out=counts[1:])
        rows = np.arange(total_bars)
        coverage = (counts[np.minimum(total_bars, rows + g + 1)] - counts[np.maximum(0, rows - g)]) > 0
        return self._windows(coverage, mel, bass, drums, encoded, total_bars)

    def _windows(self, coverage, mel, bass, drums, encoded, total_bars) -> ConverterTensors:
        """Every (group, first bar) whose slice_bars bars all play, capped as the caller would cap
        them (the same sampling call on the same list length), then only those kept are built."""
        g, bar, width = self.gap_bars, self.steps_per_bar, self.slice_bars
        candidates = []
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
            if total_bars - width + 1 <= 0:
                continue
            gaps = np.zeros(total_bars + 1, dtype=np.int64)
            np.cumsum(~group_coverage, out=gaps[1:])
            starts = np.flatnonzero(gaps[width:] == gaps[: total_bars - width + 1])
            candidates.extend((group, j) for j in starts.tolist())
        kept = maybe_sample_items(candidates, self.max_tensors_per_notesequence, self._sampling_rng)
        seqs = [
            np.concatenate([encoded[i][j * bar : (j + width) * bar] for i in group], axis=-1) for group, j in kept
        ]
        return ConverterTensors(inputs=seqs, outputs=seqs)

    def _to_tensors_slow(self, ns: NoteSequence, qns: NoteSequence) -> ConverterTensors:
        """The reference: note-by-note coverage, sub-converters on each instrument's notes."""
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
        return self._windows(coverage, mel, bass, drums, encoded, total_bars)

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
