"""Melody converter: parity with Magenta's tensors, and behaviour on MIDI written here."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from musicvae.data.melody import NO_EVENT, NOTE_OFF, OneHotMelodyConverter
from tests.parity import assert_round_trip_equal, assert_tensors_equal, fixtures_for, requires_parity

MELODY_CONFIGS = {
    "cat-mel_2bar_small": dict(valid_programs=range(32), max_bars=100, slice_bars=2),
    "hierdec-mel_16bar": dict(max_bars=100, slice_bars=16),
}
CASES = [fx for name in MELODY_CONFIGS for fx in fixtures_for(name)]


@requires_parity
@pytest.mark.parametrize("fixture", CASES, ids=[fx.id for fx in CASES])
def test_matches_magenta(fixture):
    expected = fixture.load()
    conv = OneHotMelodyConverter(**MELODY_CONFIGS[fixture.config])
    conv.set_mode("eval")
    if fixture.suffix == "__all":
        conv.max_tensors_per_notesequence = None
    result = conv.to_tensors(fixture.midi)
    assert_tensors_equal(result, expected)
    assert_round_trip_equal(conv.to_sequences(result.outputs), expected)


def _midi(notes, program=0, numerator=4, denominator=4, qpm=120.0):
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, denominator, 0))
    inst = pretty_midi.Instrument(program=program)
    step = 60.0 / qpm / 4
    for pitch, start, end in notes:
        inst.notes.append(pretty_midi.Note(100, pitch, start * step, end * step))
    pm.instruments.append(inst)
    return pm


def _events(conv, tensor):
    return [conv.decode_event(i) for i in tensor.argmax(-1)]


def test_classes_follow_the_spec():
    conv = OneHotMelodyConverter()
    assert conv.input_depth == conv.output_depth == 90
    assert conv.encode_event(NO_EVENT) == 0
    assert conv.encode_event(NOTE_OFF) == 1
    assert conv.encode_event(21) == 2
    assert conv.encode_event(108) == 89


def test_two_bar_round_trip_recovers_notes():
    notes = [(60, 0, 4), (62, 4, 8), (64, 10, 16), (65, 16, 24), (67, 24, 32)]
    conv = OneHotMelodyConverter(slice_bars=2, max_bars=100)
    conv.set_mode("eval")
    t = conv.to_tensors(_midi(notes))
    assert len(t) == 1 and t.lengths == [32]
    ev = _events(conv, t.outputs[0])
    assert ev[0] == 60 and ev[4] == 62 and ev[8] == NOTE_OFF and ev[10] == 64
    assert ev[1:4] == [NO_EVENT] * 3
    decoded = conv.from_tensors(t.outputs)[0]
    got = [(n.pitch, round(n.start * 8), round(n.end * 8)) for n in decoded.instruments[0].notes]
    assert got == notes  # 120 qpm: one 16th = 1/8 s
    assert all(n.velocity == 80 for n in decoded.instruments[0].notes)


def test_highest_pitch_wins_on_simultaneous_onsets():
    conv = OneHotMelodyConverter(slice_bars=1)
    conv.set_mode("eval")
    t = conv.to_tensors(_midi([(60, 0, 8), (64, 0, 8), (55, 8, 16)]))
    assert _events(conv, t.outputs[0])[0] == 64


def test_windows_hop_one_bar_and_duplicates_removed():
    bar = [(60, 0, 4), (62, 4, 8), (64, 8, 12), (65, 12, 16)]
    # four identical bars: the 2-bar windows at hops 0,1,2 are all the same window
    notes = [(p, s + 16 * b, e + 16 * b) for b in range(4) for p, s, e in bar]
    conv = OneHotMelodyConverter(slice_bars=2)
    conv.set_mode("eval")
    assert len(conv.to_tensors(_midi(notes))) == 1
    # make bar 2 different: windows (0,1), (1,2), (2,3) become 3 distinct ones
    notes[8] = (67, 32, 36)
    assert len(conv.to_tensors(_midi(notes))) == 3


def test_gap_of_one_bar_ends_a_melody():
    notes = [(60, 0, 16), (62, 48, 64)]  # two bars of silence in between
    conv = OneHotMelodyConverter(slice_bars=2, max_tensors_per_notesequence=None)
    conv.set_mode("eval")
    t = conv.to_tensors(_midi(notes))
    # each 1-bar melody is too short for a 2-bar window
    assert len(t) == 0
    assert len(OneHotMelodyConverter(slice_bars=1).to_tensors(_midi(notes))) == 2


def test_valid_programs_and_pitch_range_filter_notes():
    conv = OneHotMelodyConverter(valid_programs=range(32), slice_bars=1)
    assert len(conv.to_tensors(_midi([(60, 0, 16)], program=40))) == 0
    assert len(conv.to_tensors(_midi([(60, 0, 16)], program=0))) == 1
    t = conv.to_tensors(_midi([(15, 0, 8), (60, 8, 16)]))
    assert _events(conv, t.outputs[0])[:9] == [NO_EVENT] * 8 + [60]


@pytest.mark.parametrize("meter", [(3, 4), (6, 8)])
def test_meters_without_16_steps_per_bar_give_nothing(meter):
    conv = OneHotMelodyConverter(slice_bars=1)
    assert len(conv.to_tensors(_midi([(60, i * 4, i * 4 + 4) for i in range(12)], numerator=meter[0], denominator=meter[1]))) == 0


def test_cap_keeps_first_windows_in_eval_and_samples_in_train():
    pitches = np.random.default_rng(1).integers(55, 80, size=64)
    notes = [(int(p), i * 4, i * 4 + 4) for i, p in enumerate(pitches)]
    conv = OneHotMelodyConverter(slice_bars=2, max_tensors_per_notesequence=None)
    conv.set_mode("eval")
    everything = conv.to_tensors(_midi(notes))
    conv.max_tensors_per_notesequence = 5
    first = conv.to_tensors(_midi(notes))
    assert len(everything) > 5 and len(first) == 5
    assert all(np.array_equal(a, b) for a, b in zip(first.outputs, everything.outputs[:5]))
    conv.set_mode("train")
    conv.seed(0)
    sampled = conv.to_tensors(_midi(notes))
    assert len(sampled) == 5
    pool = {a.tobytes() for a in everything.outputs}
    assert all(a.tobytes() in pool for a in sampled.outputs)


def test_invalid_mode_is_rejected():
    with pytest.raises(ValueError, match="invalid mode"):
        OneHotMelodyConverter().set_mode("training")
