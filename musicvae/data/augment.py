"""Training-time augmentation of note sequences (Magenta's `NoteSequenceAugmenter`, transposition only).

Magenta applies it to each NoteSequence before `to_tensors`, in training only, for the configs that
set a `transpose_range` (the cat-mel_2bar configs, ±5): one amount per sequence, drawn uniformly from
the inclusive integer range; pitched notes move by it, notes that would leave the MIDI range are
deleted, drum notes never move. No config uses Magenta's time stretching, so it is not here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from musicvae.data.note_sequence import NoteSequence

MIN_MIDI_PITCH = 0
MAX_MIDI_PITCH = 127


def transpose_sequence(
    ns: NoteSequence, amount: int, min_pitch: int = MIN_MIDI_PITCH, max_pitch: int = MAX_MIDI_PITCH
) -> tuple[NoteSequence, int]:
    """A transposed copy of `ns` and the number of notes deleted (note_seq's transpose_note_sequence).

    As in note_seq, total_time becomes the end of the last kept note, because deleted notes may have
    been the last to sound.
    """
    kept = []
    for note in ns.notes:
        if note.is_drum:
            kept.append(dataclasses.replace(note))
        elif min_pitch <= note.pitch + amount <= max_pitch:
            kept.append(dataclasses.replace(note, pitch=note.pitch + amount))
    out = ns.with_notes(kept)
    out.total_time = max((n.end_time for n in kept), default=0.0)
    return out, len(ns.notes) - len(kept)


def augment_sequence(ns: NoteSequence, transpose_range: tuple[int, int], rng: np.random.Generator) -> NoteSequence:
    """Transpose by a uniform integer amount in the inclusive `transpose_range` (Magenta's augment)."""
    low, high = transpose_range
    if low > high:
        raise ValueError(f"empty transpose_range {transpose_range}")
    if not ns.notes:  # note_seq leaves an empty sequence untouched and draws no amount
        return ns
    return transpose_sequence(ns, int(rng.integers(low, high + 1)))[0]
