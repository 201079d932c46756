"""Monophonic melodies and the 90-class one-hot melody converter (Magenta's OneHotMelodyConverter).

Events per 16th-note step: a MIDI pitch (note-on), NOTE_OFF (-1, start of silence) or NO_EVENT
(-2, hold the note or the rest). Classes: 0 = NO_EVENT, 1 = NOTE_OFF, 2 + (pitch - 21) = note-on.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter
from typing import Sequence

import numpy as np

from musicvae.data.converter import OUTPUT_VELOCITY, ConverterTensors, DataConverter, maybe_sample_items, np_onehot
from musicvae.data.note_sequence import DEFAULT_QPM, Note, NoteSequence, Tempo
from musicvae.data.sequences import QuantizationError, RawPiece, _smf, quantize, quantize_piece, steps_per_bar

NOTE_OFF = -1
NO_EVENT = -2
PIANO_MIN_PITCH = 21
PIANO_MAX_PITCH = 108
STANDARD_PPQ = 220


class Melody:
    """A quantised event list starting at `start_step` (always a bar boundary)."""

    __slots__ = ("events", "start_step", "steps_per_bar", "steps_per_quarter")

    def __init__(self, events: list[int] | None = None, start_step: int = 0, steps_per_bar: int = 16, steps_per_quarter: int = 4):
        self.events = list(events or [])
        self.start_step = start_step
        self.steps_per_bar = steps_per_bar
        self.steps_per_quarter = steps_per_quarter

    def __len__(self) -> int:
        return len(self.events)

    @property
    def end_step(self) -> int:
        return self.start_step + len(self.events)

    def set_length(self, steps: int, from_left: bool = False) -> None:
        """Pad with NO_EVENT or truncate; extending on the right ends a sustained last note."""
        old_len = len(self.events)
        if steps > old_len:
            pad = [NO_EVENT] * (steps - old_len)
            self.events = pad + self.events if from_left else self.events + pad
        elif from_left:
            del self.events[0 : old_len - steps]
        else:
            del self.events[steps:]
        if from_left:
            self.start_step = self.start_step + old_len - steps
        elif steps > old_len:
            for i in range(old_len - 1, -1, -1):
                if self.events[i] == NOTE_OFF:
                    break
                if self.events[i] != NO_EVENT:
                    self.events[old_len] = NOTE_OFF
                    break

    def _add_note(self, pitch: int, start: int, end: int) -> None:
        self.set_length(end + 1)
        self.events[start] = pitch
        self.events[end] = NOTE_OFF
        for i in range(start + 1, end):
            self.events[i] = NO_EVENT

    def _last_on_off(self) -> tuple[int, int]:
        last_off = len(self.events)
        for i in range(len(self.events) - 1, -1, -1):
            if self.events[i] == NOTE_OFF:
                last_off = i
            if self.events[i] >= 0:
                return i, last_off
        raise ValueError("no events in the melody")

    def to_sequence(self, velocity: int = 100, instrument: int = 0, program: int = 0, qpm: float = DEFAULT_QPM) -> NoteSequence:
        seconds_per_step = 60.0 / qpm / self.steps_per_quarter
        ns = NoteSequence(tempos=[Tempo(0.0, qpm)], ticks_per_quarter=STANDARD_PPQ)
        offset = self.start_step * seconds_per_step
        current: Note | None = None
        for step, event in enumerate(self.events):
            if 0 <= event <= 127:
                if current is not None:
                    current.end_time = step * seconds_per_step + offset
                current = Note(event, velocity, step * seconds_per_step + offset, 0.0, instrument, program)
                ns.notes.append(current)
            elif event == NOTE_OFF and current is not None:
                current.end_time = step * seconds_per_step + offset
                current = None
        if current is not None:
            current.end_time = len(self.events) * seconds_per_step + offset
        if ns.notes:
            ns.total_time = ns.notes[-1].end_time
        return ns


def _clean_leading_note_offs(events: list[int]) -> list[int]:
    """A window that starts in a rest starts with NO_EVENT, never NOTE_OFF.

    Magenta gets this from building each window as a new Melody, whose constructor rewrites
    every NOTE_OFF before the first note; the tensors (and window dedupe) depend on it.
    """
    for i, event in enumerate(events):
        if event >= 0:
            break
        events[i] = NO_EVENT
    return events


def _melody_order(n: Note) -> tuple[int, int]:
    return n.quantized_start_step, -n.pitch


_quantized_start = attrgetter("quantized_start_step")
_pitch = attrgetter("pitch")
_instrument = attrgetter("instrument")


def melody_from_quantized(
    qns: NoteSequence,
    instrument: int,
    search_start_step: int,
    gap_bars: float,
    pad_end: bool,
    bar_steps: int,
    *,
    ordered_notes: list[Note] | None = None,
) -> Melody:
    """The first melody of `instrument` from `search_start_step`; highest pitch wins on shared onsets.

    `ordered_notes`, when given, must be the instrument's notes stably sorted by (start, -pitch);
    extract_melodies passes them so repeated searches need not filter and sort again.
    """
    melody = Melody(steps_per_bar=bar_steps, steps_per_quarter=qns.steps_per_quarter)
    if ordered_notes is None:
        notes = sorted(
            (n for n in qns.notes if n.instrument == instrument and n.quantized_start_step >= search_start_step),
            key=_melody_order,
        )
        begin = 0
    else:
        notes = ordered_notes
        begin = bisect_left(ordered_notes, search_start_step, key=_quantized_start)
    if begin == len(notes):
        melody.start_step = search_start_step
        return melody
    first = notes[begin].quantized_start_step
    start_step = first - (first - search_start_step) % bar_steps
    gap_steps = gap_bars * bar_steps
    fast = None
    exact_gap = type(gap_steps) is float or (type(gap_steps) is int and abs(gap_steps) < 2**53)
    if _smf is not None and type(start_step) is int and exact_gap:
        fast = _smf.melody_events(notes, begin, start_step, float(gap_steps))
    if fast is not None:
        events = melody.events = fast
    else:
        events = _melody_loop(melody, notes, begin, start_step, gap_steps)
    if not events:
        melody.start_step = search_start_step
        return melody
    melody.start_step = start_step
    if events[-1] == NOTE_OFF:
        del events[-1]
    length = len(events)
    if pad_end:
        length += -length % bar_steps
    melody.set_length(length)
    return melody


def _melody_loop(melody: Melody, notes: list[Note], begin: int, start_step: int, gap_steps: float) -> list[int]:
    """The note loop of melody_from_quantized (the reference for _smf.melody_events)."""
    events = melody.events
    last_on = last_off = 0
    for note in notes[begin:]:
        if note.is_drum or not note.velocity:
            continue
        start = note.quantized_start_step - start_step
        end = note.quantized_end_step - start_step
        if events:
            if start == last_on:
                continue  # sorted by descending pitch: the note already here is the highest
            if start - last_off >= gap_steps:
                break
        if end > start:
            # Melody._add_note, knowing the events end in NOTE_OFF (so padding adds no NOTE_OFF)
            n = len(events)
            if end + 1 > n:
                events.extend([NO_EVENT] * (end + 1 - n))
            elif end + 1 < n:
                del events[end + 1 :]
            events[start] = note.pitch
            if end - start > 1:
                events[start + 1 : end] = [NO_EVENT] * (end - start - 1)
            events[end] = NOTE_OFF
            last_on, last_off = start, end
        else:  # not produced by quantize; keep the general code path and its errors
            melody._add_note(note.pitch, start, end)
            events = melody.events
            last_on, last_off = melody._last_on_off()
    return events


def extract_melodies(qns: NoteSequence, gap_bars: float, max_steps_truncate: int | None, pad_end: bool = True) -> list[Melody]:
    """melody_pipelines.extract_melodies with MusicVAE's settings (min 1 bar, 1 unique pitch)."""
    bar_steps = int(steps_per_bar(qns))
    melodies = []
    # One stable sort by (start, -pitch), done as two stable C-keyed sorts (pitch descending,
    # then start); each instrument's notes keep that order (as filtering then sorting would).
    ordered_all = _smf.melody_order(qns.notes) if _smf is not None else None
    if ordered_all is None:
        ordered_all = sorted(qns.notes, key=_pitch, reverse=True)
        ordered_all.sort(key=_quantized_start)
    instruments = set(map(_instrument, qns.notes))
    by_instrument: dict[int, list[Note]] = {}
    if len(instruments) == 1:
        for instrument in instruments:
            by_instrument[instrument] = ordered_all
    else:
        for n in ordered_all:
            by_instrument.setdefault(n.instrument, []).append(n)
    # A Python set, iterated as Magenta iterates it: the instrument order decides window order.
    for instrument in instruments:
        ordered = by_instrument[instrument]
        search = 0
        while True:
            melody = melody_from_quantized(qns, instrument, search, gap_bars, pad_end, bar_steps, ordered_notes=ordered)
            search = melody.end_step + (0 - melody.end_step) % bar_steps
            if not melody.events:
                break
            if len(melody) < bar_steps:
                continue
            if max_steps_truncate is not None and len(melody) > max_steps_truncate:
                truncated = max_steps_truncate
                if pad_end:
                    truncated -= max_steps_truncate % bar_steps
                melody.set_length(truncated)
            if not any(e >= 0 for e in melody.events):
                continue
            melodies.append(melody)
    return melodies


class OneHotMelodyConverter(DataConverter):
    """Melody windows as 90-class one-hot tensors (input == output)."""

    def __init__(
        self,
        min_pitch: int = PIANO_MIN_PITCH,
        max_pitch: int = PIANO_MAX_PITCH,
        valid_programs: Sequence[int] | None = None,
        skip_polyphony: bool = False,
        max_bars: int | None = None,
        slice_bars: int | None = None,
        gap_bars: float | None = 1.0,
        steps_per_quarter: int = 4,
        quarters_per_bar: int = 4,
        pad_to_total_time: bool = False,
        max_tensors_per_notesequence: int | None = 5,
        presplit_on_time_changes: bool = True,
    ) -> None:
        if skip_polyphony:
            raise ValueError("skip_polyphony=True is not used by any MusicVAE config and is not supported")
        self.min_pitch = min_pitch
        self.max_pitch = max_pitch
        self.valid_programs = frozenset(valid_programs) if valid_programs is not None else None
        self.steps_per_quarter = steps_per_quarter
        self.steps_per_bar = steps_per_quarter * quarters_per_bar
        self.max_steps_truncate = self.steps_per_bar * max_bars if max_bars else None
        self.slice_steps = self.steps_per_bar * slice_bars if slice_bars else None
        self.gap_bars = gap_bars or float("inf")
        self.pad_to_total_time = pad_to_total_time
        self._eye: np.ndarray | None = None  # one-hot rows, built on first use
        depth = max_pitch - min_pitch + 1 + 2
        super().__init__(
            input_depth=depth,
            output_depth=depth,
            max_tensors_per_notesequence=max_tensors_per_notesequence,
            presplit_on_time_changes=presplit_on_time_changes,
        )

    def encode_event(self, event: int) -> int:
        return event - self.min_pitch + 2 if event >= 0 else event + 2

    def decode_event(self, index: int) -> int:
        event = int(index) - 2
        return event + self.min_pitch if event >= 0 else event

    def _is_valid(self, note: Note) -> bool:
        if self.valid_programs is not None and note.program not in self.valid_programs:
            return False
        return self.min_pitch <= note.pitch <= self.max_pitch

    def _to_tensors_fn(self, ns: NoteSequence) -> ConverterTensors:
        lo, hi, programs = self.min_pitch, self.max_pitch, self.valid_programs
        kept = _smf.filter_notes(ns.notes, lo, hi, programs) if _smf is not None else None
        if kept is not None:
            ns = ns.with_notes(kept)
        elif programs is None:
            ns = ns.with_notes([n for n in ns.notes if lo <= n.pitch <= hi])
        else:
            ns = ns.with_notes([n for n in ns.notes if n.program in programs and lo <= n.pitch <= hi])
        try:
            qns = quantize(ns, self.steps_per_quarter)
        except QuantizationError:
            # Magenta returns nothing for bad meters and negative times, and lets tempo/meter
            # changes escape only when it did not presplit; both mean "no windows" here.
            return ConverterTensors()
        return self.tensors_from_quantized(qns)

    def _raw_piece_to_tensors(self, raw: RawPiece) -> ConverterTensors | None:
        # _to_tensors_fn with the notes filtered before they are moved, then moved and quantised
        # in one copy.
        if _smf is None:
            return None
        kept = _smf.filter_notes(raw.notes, self.min_pitch, self.max_pitch, self.valid_programs)
        if kept is None:
            return None
        try:
            qns = quantize_piece(raw, kept, self.steps_per_quarter)
        except QuantizationError:
            return ConverterTensors()
        return None if qns is None else self.tensors_from_quantized(qns)

    def tensors_from_quantized(self, qns: NoteSequence) -> ConverterTensors:
        """The windows of a quantised piece whose notes are already filtered (pitch, program)."""
        if steps_per_bar(qns) != self.steps_per_bar:
            return ConverterTensors()
        melodies = extract_melodies(qns, self.gap_bars, self.max_steps_truncate)
        if self.pad_to_total_time:
            for m in melodies:
                m.set_length(len(m) + m.start_step, from_left=True)
                m.set_length(qns.total_quantized_steps)
        # Magenta dedupes tuples of 1-tuples (its event/chord zip); the set's iteration order,
        # which follows the hashes of exactly these objects, decides which windows are kept.
        unique = None
        if self.slice_steps and _smf is not None:  # the same tuples, cut and deduped in C
            unique = _smf.melody_windows([m.events for m in melodies], self.slice_steps, self.steps_per_bar)
        if unique is None:
            if self.slice_steps:
                windows = [
                    _clean_leading_note_offs(m.events[i - self.slice_steps : i])
                    for m in melodies
                    for i in range(self.slice_steps, len(m) + 1, self.steps_per_bar)
                ]
            else:
                windows = [m.events for m in melodies]
            unique = list(set(tuple(zip(w)) for w in windows))
        unique = [t for t in maybe_sample_items(unique, self.max_tensors_per_notesequence, self._sampling_rng) if t]
        seqs = self._one_hot_windows(unique)
        return ConverterTensors(inputs=seqs, outputs=seqs)

    def _one_hot_windows(self, windows: list[tuple[tuple[int], ...]]) -> list[np.ndarray]:
        """One [T, depth] one-hot per window (a tuple of 1-tuples of events)."""
        codes = _smf.melody_codes(windows, self.min_pitch) if _smf is not None and windows else None
        if codes is None:
            offset = self.min_pitch - 2
            return [np_onehot([e - offset if e >= 0 else e + 2 for (e,) in t], self.output_depth) for t in windows]
        # Equal-length windows: rows of an identity matrix taken in one call, a view per window.
        eye = self._eye
        if eye is None or eye.shape[0] != self.output_depth:
            eye = self._eye = np.eye(self.output_depth, dtype=bool)
        onehot = eye.take(np.frombuffer(codes, dtype=np.int64), axis=0)
        return list(onehot.reshape(len(windows), len(windows[0]), self.output_depth))

    def to_sequences(self, samples: Sequence[np.ndarray], controls: Sequence[np.ndarray] | None = None) -> list[NoteSequence]:
        sequences = []
        for sample in samples:
            events = [self.decode_event(i) for i in np.argmax(sample, axis=-1)]
            melody = Melody(events, steps_per_bar=self.steps_per_bar, steps_per_quarter=self.steps_per_quarter)
            sequences.append(melody.to_sequence(velocity=OUTPUT_VELOCITY, qpm=DEFAULT_QPM))
        return sequences
