"""GrooVAE's hit/velocity/offset drum tensors (Magenta's GrooveConverter).

Each 16th-note step holds, for every drum category, three blocks of features:
[hits | velocities | offsets], each `num_drums` wide (27 values with 9 categories):

* hit: 1.0 when the category is struck on the step, else 0.0;
* velocity: velocity / 127 of the loudest note of the category on the step (0.0 when silent);
* offset: 2 * (grid time - onset) / step length, in [-1, 1]; positive means played EARLY.

Deliberate differences from Magenta:

* Only drum notes (`is_drum`) are read. Magenta looks up every note's pitch, so a melodic
  note raises KeyError when its pitch is not in the map and silently becomes a drum hit when it
  is (e.g. any pitch 27-87 with the General MIDI map used in 'infer' mode).
* `drop_unmapped_pitches=True` skips drum notes whose pitch is not in the active map, for
  training on General MIDI corpora. By default such a pitch raises `UnmappedDrumPitchError`,
  a KeyError (as in Magenta) that is also a ValueError and names the pitch and the map.

General MIDI data: the Roland TD-11 map (`ROLAND_DRUM_PITCH_CLASSES`) stays the default because
the Groove MIDI Dataset is recorded on that kit. For General MIDI corpora pass
`pitch_classes=REDUCED_DRUM_PITCH_CLASSES`; the inference map then defaults to the same table.

Like Magenta, the whole sequence is converted at once: it is not split at tempo or meter
changes (such a sequence cannot be quantised and gives no windows) and the number of windows is
not capped (`max_tensors_per_notesequence` is accepted for config parity but unused).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from musicvae.data.converter import ConverterTensors, DataConverter
from musicvae.data.drums import REDUCED_DRUM_PITCH_CLASSES
from musicvae.data.note_sequence import DEFAULT_QPM, Note, NoteSequence, Tempo
from musicvae.data.sequences import QuantizationError, quantize, steps_per_bar

PitchClasses = Sequence[Sequence[int]]

# Roland TD-11 pitches of the Groove MIDI Dataset; the first pitch of each class is written on decoding.
ROLAND_DRUM_PITCH_CLASSES: list[list[int]] = [
    [36],  # kick
    [38, 37, 40],  # snare
    [42, 22, 44],  # closed hi-hat
    [46, 26],  # open hi-hat
    [43, 58],  # low tom
    [47, 45],  # mid tom
    [50, 48],  # high tom
    [49, 52, 55, 57],  # crash
    [51, 53, 59],  # ride
]

TAP_CATEGORY = 3  # tapify squashes every step onto the open hi-hat, as Magenta does
DRUM_INSTRUMENT = 9


class UnmappedDrumPitchError(KeyError, ValueError):
    """A drum note's pitch is not in the converter's pitch-class map.

    A KeyError like Magenta's (`args == (pitch,)`) and a ValueError like our other data errors.
    """

    def __init__(self, pitch: int, map_name: str) -> None:
        super().__init__(pitch)
        self.pitch = pitch
        self.map_name = map_name

    def __str__(self) -> str:
        return (
            f"drum pitch {self.pitch} is not in the {self.map_name}; "
            "pass drop_unmapped_pitches=True to skip such notes"
        )


def _map_name(classes: PitchClasses) -> str:
    as_lists = [list(c) for c in classes]
    if as_lists == ROLAND_DRUM_PITCH_CLASSES:
        return "Roland pitch-class map (ROLAND_DRUM_PITCH_CLASSES)"
    if as_lists == REDUCED_DRUM_PITCH_CLASSES:
        return "General MIDI pitch-class map (REDUCED_DRUM_PITCH_CLASSES)"
    return f"custom {len(as_lists)}-class pitch-class map"


def _class_map(classes: PitchClasses) -> dict[int, int]:
    # A pitch listed twice belongs to its last class, as in Magenta's dict construction.
    return {pitch: index for index, pitches in enumerate(classes) for pitch in pitches}


class GrooveConverter(DataConverter):
    """Drum performances as [T, 3 * num_drums] hit/velocity/offset tensors, cut into windows.

    The decoder target is always the full groove; `humanize`, `tapify`, `fixed_velocities`,
    `add_instruments` (category indices) and note dropout change only the encoder input.
    `hits_as_controls` adds the target's hits as a bool control tensor [T, num_drums].
    """

    def __init__(
        self,
        split_bars: int | None = None,
        steps_per_quarter: int = 4,
        quarters_per_bar: int = 4,
        max_tensors_per_notesequence: int | None = 8,
        pitch_classes: PitchClasses | None = None,
        inference_pitch_classes: PitchClasses | None = None,
        humanize: bool = False,
        tapify: bool = False,
        add_instruments: Sequence[int] | None = None,
        hits_as_controls: bool = False,
        fixed_velocities: bool = False,
        max_note_dropout_probability: float | None = None,
        drop_unmapped_pitches: bool = False,
    ) -> None:
        self.split_bars = split_bars
        self.steps_per_quarter = steps_per_quarter
        self.steps_per_bar = steps_per_quarter * quarters_per_bar
        self._train_classes: PitchClasses = pitch_classes or ROLAND_DRUM_PITCH_CLASSES
        self._infer_classes: PitchClasses = inference_pitch_classes or self._train_classes
        if len(self._train_classes) != len(self._infer_classes):
            raise ValueError(
                "training and inference pitch-class maps must have the same number of classes, "
                f"got {len(self._train_classes)} and {len(self._infer_classes)}"
            )
        self._train_map = _class_map(self._train_classes)
        self._infer_map = _class_map(self._infer_classes)
        self.num_drums = len(self._train_classes)
        self.humanize = humanize
        self.tapify = tapify
        self.add_instruments = list(add_instruments or [])
        self.hits_as_controls = hits_as_controls
        self.fixed_velocities = fixed_velocities
        self.max_note_dropout_probability = max_note_dropout_probability
        self.drop_unmapped_pitches = drop_unmapped_pitches
        depth = 3 * self.num_drums
        super().__init__(
            input_depth=depth,
            output_depth=depth,
            control_depth=self.num_drums if hits_as_controls else 0,
            max_tensors_per_notesequence=max_tensors_per_notesequence,
            presplit_on_time_changes=False,
        )

    @property
    def pitch_classes(self) -> PitchClasses:
        """The active map: the inference map in 'infer' mode, the training map otherwise."""
        return self._infer_classes if self.is_inferring else self._train_classes

    @property
    def pitch_class_map(self) -> dict[int, int]:
        return self._infer_map if self.is_inferring else self._train_map

    def sequence_to_tensors(self, ns: NoteSequence) -> ConverterTensors:
        # Magenta converts the whole sequence: no split at time changes, no cap on windows.
        return self._to_tensors_fn(ns)

    def _to_tensors_fn(self, ns: NoteSequence) -> ConverterTensors:
        class_map = self.pitch_class_map
        drums = [n for n in ns.notes if n.is_drum]
        if self.drop_unmapped_pitches:
            drums = [n for n in drums if n.pitch in class_map]
        try:
            qns = quantize(ns.with_notes(drums), self.steps_per_quarter)
        except QuantizationError:
            return ConverterTensors()
        if steps_per_bar(qns) != self.steps_per_bar:
            return ConverterTensors()
        # Magenta looks every pitch up before it checks for notes or windows, so an unmapped
        # pitch raises even when the sequence would give no window.
        for note in qns.notes:
            if note.pitch not in class_map:
                raise UnmappedDrumPitchError(note.pitch, _map_name(self.pitch_classes))
        if not qns.notes:
            return ConverterTensors()

        hits, velocities, offsets = self._groove(qns, class_map)
        in_hits, in_velocities, in_offsets = self._encoder_input(hits, velocities, offsets)
        outputs = np.concatenate([hits, velocities, offsets], axis=1)
        inputs = np.concatenate([in_hits, in_velocities, in_offsets], axis=1)
        controls = hits.astype(bool) if self.hits_as_controls else None
        return self._windows(inputs, outputs, controls)

    def _groove(
        self, qns: NoteSequence, class_map: dict[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target hits, velocities and offsets, [steps, num_drums] each, padded to whole bars."""
        step_length = 60.0 / qns.tempos[0].qpm / self.steps_per_quarter
        last_onset = max(n.quantized_start_step for n in qns.notes)
        num_steps = self.steps_per_bar * -(-(last_onset + 1) // self.steps_per_bar)
        # The loudest note of a category on a step wins; on a tie the first in sequence order.
        loudest: dict[tuple[int, int], Note] = {}
        for note in qns.notes:
            key = (note.quantized_start_step, class_map[note.pitch])
            if key not in loudest or note.velocity > loudest[key].velocity:
                loudest[key] = note
        hits = np.zeros((num_steps, self.num_drums))
        velocities = np.zeros((num_steps, self.num_drums))
        offsets = np.zeros((num_steps, self.num_drums))
        for (step, drum), note in loudest.items():
            hits[step, drum] = 1.0
            velocities[step, drum] = note.velocity / 127.0
            # Evaluated in Magenta's order so that the floats match bit for bit.
            offsets[step, drum] = (step_length * step - note.start_time) / step_length * 2
        return hits, velocities, offsets

    def _encoder_input(
        self, hits: np.ndarray, velocities: np.ndarray, offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply the input transforms in Magenta's order to copies of the target blocks."""
        in_hits, in_velocities, in_offsets = hits.copy(), velocities.copy(), offsets.copy()
        # Magenta applies note dropout in every mode once it is configured (it does not check
        # is_training), so eval and inference inputs are thinned too.
        if self.max_note_dropout_probability is not None:
            probability = self.rng.uniform(0.0, self.max_note_dropout_probability)
            # Quieter notes are dropped more often.
            weights = np.maximum(0.2, 1 - in_velocities)
            keep = 1 - self.rng.binomial(1, weights * probability)
            in_hits *= keep
            in_velocities *= keep
            in_offsets *= keep
        if self.tapify:
            # The loudest surviving category picks the step's values, read from the full groove;
            # an empty step picks category 0.
            chosen = np.argmax(in_velocities, axis=1)
            steps = np.arange(len(hits))
            for block, source in ((in_hits, hits), (in_velocities, velocities), (in_offsets, offsets)):
                block[:] = 0.0
                block[:, TAP_CATEGORY] = source[steps, chosen]
        if self.humanize:
            in_velocities[:] = 0.0
            in_offsets[:] = 0.0
        if self.fixed_velocities:
            in_velocities[:] = 0.0
        if self.add_instruments:
            for block in (in_hits, in_velocities, in_offsets):
                block[:, self.add_instruments] = 0.0
        return in_hits, in_velocities, in_offsets

    def _windows(
        self, inputs: np.ndarray, outputs: np.ndarray, controls: np.ndarray | None
    ) -> ConverterTensors:
        """Non-overlapping windows of `split_bars` bars; a shorter remainder is dropped."""
        if not self.split_bars:
            return ConverterTensors([inputs], [outputs], [controls] if controls is not None else [])
        size = self.steps_per_bar * self.split_bars
        starts = range(0, len(outputs) - size + 1, size)
        return ConverterTensors(
            inputs=[inputs[i : i + size] for i in starts],
            outputs=[outputs[i : i + size] for i in starts],
            controls=[controls[i : i + size] for i in starts] if controls is not None else [],
        )

    def to_sequences(
        self, samples: Sequence[np.ndarray], controls: Sequence[np.ndarray] | None = None
    ) -> list[NoteSequence]:
        """One drum NoteSequence per window at 120 qpm; controls are ignored, as in Magenta.

        A hit above 0.5 becomes a one-step note on the class's first pitch, starting at
        (step - offset / 2) steps with velocity round(127 * v). total_time stays 0 as in Magenta.
        """
        step_length = 60.0 / DEFAULT_QPM / self.steps_per_quarter
        first_pitches = [pitches[0] for pitches in self.pitch_classes]
        sequences = []
        for sample in samples:
            hits, velocities, offsets = np.split(np.asarray(sample), 3, axis=1)
            ns = NoteSequence(tempos=[Tempo(0.0, DEFAULT_QPM)])
            for step, drum in zip(*np.nonzero(hits > 0.5)):
                velocity = int(np.clip(np.round(velocities[step, drum] * 127), 0, 127))
                offset = float(np.clip(offsets[step, drum] / 2, -0.5, 0.5))
                start = (int(step) - offset) * step_length
                ns.notes.append(
                    Note(
                        pitch=first_pitches[drum],
                        velocity=velocity,
                        start_time=start,
                        end_time=start + step_length,
                        instrument=DRUM_INSTRUMENT,
                        is_drum=True,
                    )
                )
            sequences.append(ns)
        return sequences
