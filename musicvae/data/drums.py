"""Drum tracks and the drums converter (Magenta's DrumsConverter over note_seq's DrumTrack).

A drum track holds one event per 16th-note step: the frozenset of drum classes struck at that
step (empty = nothing). Pitches are mapped to class indices before extraction, so two pitches of
one class on the same step count once and unmapped pitches vanish. Encodings:
* roll: multi-hot over the classes (NADE outputs); roll inputs add a final "nothing hit" bit;
* one-hot: class set S -> index sum(2**c for c in S), i.e. 2**num_classes classes.
Decoding writes each class as its first ("exemplar") pitch, one step long.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

import numpy as np

from musicvae.data.converter import (
    OUTPUT_VELOCITY,
    ConverterTensors,
    DataConverter,
    maybe_sample_items,
    np_onehot,
)
from musicvae.data.note_sequence import DEFAULT_QPM, Note, NoteSequence, Tempo
from musicvae.data.sequences import (
    QuantizationError,
    RawPiece,
    _smf,
    quantize,
    quantize_params,
    quantize_to_step,
    steps_per_bar,
)

DRUM_INSTRUMENT = 9
STANDARD_PPQ = 220

# note_seq's DEFAULT_DRUM_TYPE_PITCHES (the current map, after commit a33262f5): the first pitch
# of each class is the one decoding writes.
REDUCED_DRUM_PITCH_CLASSES: list[list[int]] = [
    [36, 35],  # kick
    [38, 27, 28, 31, 32, 33, 34, 37, 39, 40, 56, 65, 66, 75, 85],  # snare
    [42, 44, 54, 68, 69, 70, 71, 73, 78, 80, 22],  # closed hi-hat
    [46, 67, 72, 74, 79, 81, 26],  # open hi-hat
    [45, 29, 41, 43, 61, 64, 84],  # low tom
    [48, 47, 60, 63, 77, 86, 87],  # mid tom
    [50, 30, 62, 76, 83],  # high tom
    [49, 52, 55, 57, 58],  # crash
    [51, 53, 59, 82],  # ride
]

# One class per General MIDI drum pitch 27-87, in Magenta's hard-coded order (grouped by the
# pre-2019 reduced classes, which is why 43 and 52 sit where they do and 22/26 are absent).
FULL_DRUM_PITCH_CLASSES: list[list[int]] = [
    [p]
    for p in (
        36, 35, 38, 27, 28, 31, 32, 33, 34, 37, 39, 40, 56, 65, 66, 75, 85, 42, 44, 54, 68,
        69, 70, 71, 73, 78, 80, 46, 67, 72, 74, 79, 81, 45, 29, 41, 61, 64, 84, 48, 47, 60,
        63, 77, 86, 87, 50, 30, 43, 62, 76, 83, 49, 55, 57, 58, 51, 52, 53, 59, 82,
    )
]

NO_DRUMS: frozenset[int] = frozenset()


class DrumTrack:
    """A quantised list of drum events starting at `start_step` (a bar boundary)."""

    __slots__ = ("events", "start_step", "steps_per_bar", "steps_per_quarter")

    def __init__(
        self,
        events: Sequence[frozenset[int]] | None = None,
        start_step: int = 0,
        steps_per_bar: int = 16,
        steps_per_quarter: int = 4,
    ) -> None:
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
        """Pad with empty events or truncate, on the right or (moving `start_step`) the left."""
        end_step = self.end_step
        missing = steps - len(self.events)
        if missing > 0:
            pad = [NO_DRUMS] * missing
            self.events = pad + self.events if from_left else self.events + pad
        elif from_left:
            del self.events[: len(self.events) - steps]
        else:
            del self.events[steps:]
        if from_left:
            self.start_step = end_step - steps

    def to_sequence(
        self,
        velocity: int = 100,
        instrument: int = DRUM_INSTRUMENT,
        program: int = 0,
        qpm: float = DEFAULT_QPM,
    ) -> NoteSequence:
        """Every hit becomes a one-step drum note; notes follow the events' own iteration order."""
        seconds_per_step = 60.0 / qpm / self.steps_per_quarter
        ns = NoteSequence(tempos=[Tempo(0.0, qpm)], ticks_per_quarter=STANDARD_PPQ)
        offset = self.start_step * seconds_per_step
        for step, event in enumerate(self.events):
            for pitch in event:
                start = step * seconds_per_step + offset
                end = (step + 1) * seconds_per_step + offset
                ns.notes.append(Note(pitch, velocity, start, end, instrument, program, is_drum=True))
        if ns.notes:
            ns.total_time = ns.notes[-1].end_time
        return ns


def drum_track_from_quantized(
    qns: NoteSequence, search_start_step: int, gap_bars: float, bar_steps: int
) -> DrumTrack:
    """The first drum track from `search_start_step`, ended by `gap_bars` bars without hits.

    Padded to a whole number of bars (MusicVAE always uses pad_end). Empty if nothing is found.
    """
    track = DrumTrack(steps_per_bar=bar_steps, steps_per_quarter=qns.steps_per_quarter)
    onsets: dict[int, list[Note]] = {}
    for note in qns.notes:
        if note.is_drum and note.velocity and note.quantized_start_step >= search_start_step:
            onsets.setdefault(note.quantized_start_step, []).append(note)
    if not onsets:
        return track
    steps = sorted(onsets)
    track_start = steps[0] - (steps[0] - search_start_step) % bar_steps
    gap_start = 0
    for step in steps:
        index = step - track_start
        if track.events and index - gap_start >= gap_bars * bar_steps:
            break
        track.set_length(index + 1)
        track.events[index] = frozenset(note.pitch for note in onsets[step])
        gap_start = index + 1
    track.start_step = track_start
    track.set_length(len(track) + -len(track) % bar_steps)
    return track


def extract_drum_tracks(
    qns: NoteSequence, gap_bars: float, max_steps_truncate: int | None
) -> list[DrumTrack]:
    """drum_pipelines.extract_drum_tracks with MusicVAE's settings (min 1 bar, pad_end).

    Padding makes every non-empty track at least one bar long, so the min-bars filter never fires.
    """
    bar_steps = int(steps_per_bar(qns))
    tracks = []
    search = 0
    while True:
        track = drum_track_from_quantized(qns, search, gap_bars, bar_steps)
        search = track.end_step + (search - track.end_step) % bar_steps
        if not track.events:
            return tracks
        if max_steps_truncate is not None and len(track) > max_steps_truncate:
            track.set_length(max_steps_truncate - max_steps_truncate % bar_steps)
        tracks.append(track)


def drum_tracks_from_onsets(
    steps: list[int],
    hits: list[frozenset[int]],
    gap_bars: float,
    bar_steps: int,
    max_steps_truncate: int | None,
    steps_per_quarter: int = 4,
) -> list[DrumTrack]:
    """extract_drum_tracks from the hits alone: the ascending onset steps of the drum notes (with a
    non-zero velocity) and the class set struck at each, as _smf.drum_onsets returns them."""
    tracks = []
    search = 0
    gap_steps = gap_bars * bar_steps
    n = len(steps)
    begin = bisect_left(steps, 0)
    while begin < n:
        first = steps[begin]
        track_start = first - (first - search) % bar_steps
        # the track runs until an onset comes gap_steps or more after the step ending the last one
        end = begin + 1
        previous = first
        while end < n:
            step = steps[end]
            if step - previous - 1 >= gap_steps:
                break
            previous = step
            end += 1
        length = previous - track_start + 1
        events = [NO_DRUMS] * (length + -length % bar_steps)
        for k in range(begin, end):
            events[steps[k] - track_start] = hits[k]
        track = DrumTrack(steps_per_bar=bar_steps, steps_per_quarter=steps_per_quarter)
        track.events = events
        track.start_step = track_start
        search = track.end_step + (search - track.end_step) % bar_steps
        if max_steps_truncate is not None and len(track) > max_steps_truncate:
            track.set_length(max_steps_truncate - max_steps_truncate % bar_steps)
        tracks.append(track)
        begin = bisect_left(steps, search, begin)
    return tracks


class DrumsConverter(DataConverter):
    """Drum windows as roll (multi-hot) or one-hot (2**classes) tensors."""

    def __init__(
        self,
        max_bars: int | None = None,
        slice_bars: int | None = None,
        gap_bars: float | None = 1.0,
        pitch_classes: Sequence[Sequence[int]] | None = None,
        steps_per_quarter: int = 4,
        quarters_per_bar: int = 4,
        pad_to_total_time: bool = False,
        roll_input: bool = False,
        roll_output: bool = False,
        max_tensors_per_notesequence: int | None = 5,
        presplit_on_time_changes: bool = True,
    ) -> None:
        self.pitch_classes = [list(c) for c in (pitch_classes or REDUCED_DRUM_PITCH_CLASSES)]
        # A pitch listed in two classes belongs to the later one, as in Magenta's dict update.
        self.pitch_class_map = {p: i for i, pitches in enumerate(self.pitch_classes) for p in pitches}
        self.num_classes = len(self.pitch_classes)
        self.steps_per_quarter = steps_per_quarter
        self.steps_per_bar = steps_per_quarter * quarters_per_bar
        self.max_steps_truncate = self.steps_per_bar * max_bars if max_bars else None
        self.slice_steps = self.steps_per_bar * slice_bars if slice_bars else None
        self.gap_bars = gap_bars or float("inf")
        self.pad_to_total_time = pad_to_total_time
        self.roll_input = roll_input
        self.roll_output = roll_output
        self._eye: np.ndarray | None = None  # one-hot rows, built on first use
        super().__init__(
            input_depth=self.num_classes + 1 if roll_input else 2**self.num_classes,
            output_depth=self.num_classes if roll_output else 2**self.num_classes,
            max_tensors_per_notesequence=max_tensors_per_notesequence,
            presplit_on_time_changes=presplit_on_time_changes,
        )

    def _roll(self, events: Sequence[frozenset[int]]) -> np.ndarray:
        roll = np.zeros((len(events), self.num_classes), dtype=bool)
        for step, classes in enumerate(events):
            roll[step, list(classes)] = True
        return roll

    def _one_hot(self, events: Sequence[frozenset[int]]) -> np.ndarray:
        return np_onehot([sum(2**c for c in classes) for classes in events], 2**self.num_classes)

    def _to_tensors_fn(self, ns: NoteSequence) -> ConverterTensors:
        result = self._fast_tensors(ns, ns.notes)
        return self._to_tensors_slow(ns) if result is None else result

    def _raw_piece_to_tensors(self, raw: RawPiece) -> ConverterTensors | None:
        return self._fast_tensors(raw.piece, raw.notes, raw.offset, raw.limit)

    def _fast_tensors(self, ns: NoteSequence, notes: list[Note], *shift: float) -> ConverterTensors | None:
        """The drum hits straight from the notes (moved by `shift` = (offset, limit) and quantised
        as split and `quantize` would, without copying a note), then the tracks from the hits
        alone; None when the C helper declines."""
        try:
            _, meter, steps_per_second = quantize_params(ns, self.steps_per_quarter)
        except QuantizationError:
            return ConverterTensors()
        fast = _smf.drum_onsets(notes, self.pitch_class_map, steps_per_second, *shift) if _smf is not None else None
        if fast is None:
            return None
        if self.steps_per_quarter * (4.0 / meter.denominator) * meter.numerator != self.steps_per_bar:
            return ConverterTensors()
        steps, hits, max_end = fast
        total_steps = quantize_to_step(ns.total_time, steps_per_second)
        if max_end is not None and max_end > total_steps:
            total_steps = max_end
        return self.tensors_from_onsets(steps, hits, total_steps)

    def onsets_from_quantized(self, qns: NoteSequence) -> tuple[list[int], list[frozenset[int]]] | None:
        """The hits of a quantised piece (see tensors_from_onsets), or None without the C helper."""
        fast = _smf.drum_onsets(qns.notes, self.pitch_class_map, 0.0) if _smf is not None else None
        return None if fast is None else fast[:2]

    def tensors_from_onsets(self, steps: list[int], hits: list[frozenset[int]], total_steps: int) -> ConverterTensors:
        """The windows of a piece given its drum hits: ascending onset steps and the class set
        struck at each (drum notes with a mapped pitch and a non-zero velocity), and its
        quantised length; the piece has the converter's bar length."""
        tracks = drum_tracks_from_onsets(
            steps, hits, self.gap_bars, self.steps_per_bar, self.max_steps_truncate, self.steps_per_quarter
        )
        return self._tensors_from_tracks(tracks, total_steps)

    def _to_tensors_slow(self, ns: NoteSequence) -> ConverterTensors:
        """The reference path: quantise, map pitches to classes, extract tracks note by note."""
        try:
            qns = quantize(ns, self.steps_per_quarter)
        except QuantizationError:
            # As in the melody converter: bad meters, negative times and (unsplit) time
            # changes all mean "no windows".
            return ConverterTensors()
        if steps_per_bar(qns) != self.steps_per_bar:
            return ConverterTensors()
        # Map to classes first, so extraction groups and dedupes classes rather than pitches.
        # total_quantized_steps keeps counting every note, as in Magenta.
        class_map = self.pitch_class_map
        # (Note(...) with every field is dataclasses.replace(n, pitch=...), ten times faster)
        qns = qns.with_notes(
            [
                Note(class_map[n.pitch], n.velocity, n.start_time, n.end_time, n.instrument, n.program, n.is_drum,
                     n.quantized_start_step, n.quantized_end_step)
                for n in qns.notes
                if n.is_drum and n.pitch in class_map
            ]
        )
        tracks = extract_drum_tracks(qns, self.gap_bars, self.max_steps_truncate)
        return self._tensors_from_tracks(tracks, qns.total_quantized_steps)

    def _tensors_from_tracks(self, tracks: list[DrumTrack], total_steps: int) -> ConverterTensors:
        if self.pad_to_total_time:
            for t in tracks:
                t.set_length(len(t) + t.start_step, from_left=True)
                t.set_length(total_steps)
        if self.slice_steps:
            windows = [
                tuple(t.events[i - self.slice_steps : i])
                for t in tracks
                for i in range(self.slice_steps, len(t) + 1, self.steps_per_bar)
            ]
        else:
            windows = [tuple(t.events) for t in tracks]
        # Tuples of frozensets, exactly as Magenta builds them: the set's iteration order,
        # which follows their hashes, decides which windows are kept.
        unique = maybe_sample_items(list(set(windows)), self.max_tensors_per_notesequence, self._sampling_rng)
        return self._encode(unique)

    def _encode(self, unique: list[tuple[frozenset[int], ...]]) -> ConverterTensors:
        """Roll / one-hot tensors of the kept windows."""
        width = len(unique[0]) if unique else 0
        if not unique or self.num_classes > 62 or any(len(t) != width for t in unique):
            rolls = [self._roll(t) for t in unique] if self.roll_input or self.roll_output else []
            one_hots = [self._one_hot(t) for t in unique] if not (self.roll_input and self.roll_output) else []
        else:
            # Every window at once: the class bits of each step (sum of 2**class), then rolls
            # as bit tests and one-hots as rows of an identity matrix, a view per window.
            code_of: dict[frozenset[int], int] = {}
            codes = []
            for t in unique:
                for classes in t:
                    code = code_of.get(classes)
                    if code is None:
                        code = code_of[classes] = sum(2**c for c in classes)
                    codes.append(code)
            codes = np.array(codes, dtype=np.int64)
            shape = (len(unique), width)
            rolls = one_hots = []
            if self.roll_input or self.roll_output:
                bits = (codes[:, None] >> np.arange(self.num_classes, dtype=np.int64)) & 1
                rolls = list(bits.astype(bool).reshape(*shape, self.num_classes))
            if not (self.roll_input and self.roll_output):
                depth = 2**self.num_classes
                if depth <= 4096:
                    eye = self._eye
                    if eye is None:
                        eye = self._eye = np.eye(depth, dtype=bool)
                    one_hots = list(eye.take(codes, axis=0).reshape(*shape, depth))
                else:
                    one_hots = [np_onehot(c, depth) for c in codes.reshape(shape)]
        if self.roll_input:
            inputs = [np.concatenate([r, ~r.any(axis=1, keepdims=True)], axis=1) for r in rolls]
        else:
            inputs = one_hots
        return ConverterTensors(inputs=inputs, outputs=rolls if self.roll_output else one_hots)

    def to_sequences(
        self, samples: Sequence[np.ndarray], controls: Sequence[np.ndarray] | None = None
    ) -> list[NoteSequence]:
        sequences = []
        for sample in samples:
            # Class sets are built in ascending order, as Magenta builds them; the exemplar set
            # below inherits that insertion order, which decides the order of decoded notes.
            if self.roll_output:
                class_sets = [frozenset(int(c) for c in np.flatnonzero(step)) for step in sample]
            else:
                class_sets = [
                    frozenset(c for c in range(index.bit_length()) if index >> c & 1)
                    for index in (int(i) for i in np.argmax(sample, axis=-1))
                ]
            events = [frozenset(self.pitch_classes[c][0] for c in classes) for classes in class_sets]
            track = DrumTrack(events, 0, self.steps_per_bar, self.steps_per_quarter)
            sequences.append(track.to_sequence(velocity=OUTPUT_VELOCITY))
        return sequences
