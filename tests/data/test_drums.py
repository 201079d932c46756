"""Drums converter: parity with Magenta's tensors, and behaviour on MIDI written here."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from musicvae.data.drums import (
    FULL_DRUM_PITCH_CLASSES,
    REDUCED_DRUM_PITCH_CLASSES,
    DrumsConverter,
    DrumTrack,
    extract_drum_tracks,
)
from musicvae.data.midi_io import read_midi
from musicvae.data.sequences import quantize
from tests.parity import assert_round_trip_equal, assert_tensors_equal, fixtures_for, requires_parity

DRUM_CONFIGS = {
    "cat-drums_2bar_small": dict(max_bars=100, slice_bars=2, roll_input=True),
    "nade-drums_2bar_reduced": dict(max_bars=100, slice_bars=2, roll_input=True, roll_output=True),
    "nade-drums_2bar_full": dict(
        max_bars=100, slice_bars=2, roll_input=True, roll_output=True, pitch_classes=FULL_DRUM_PITCH_CLASSES
    ),
}
DEPTHS = {"cat-drums_2bar_small": (10, 512), "nade-drums_2bar_reduced": (10, 9), "nade-drums_2bar_full": (62, 61)}
CASES = [fx for name in DRUM_CONFIGS for fx in fixtures_for(name)]

STEP = 0.125  # one 16th note at 120 qpm, in seconds
KICK, SNARE, CLOSED_HH, OPEN_HH, LOW_TOM, MID_TOM, HIGH_TOM, CRASH, RIDE = range(9)


def _converter(config: str, **overrides) -> DrumsConverter:
    conv = DrumsConverter(**{**DRUM_CONFIGS[config], **overrides})
    conv.set_mode("eval")
    return conv


@requires_parity
@pytest.mark.parametrize("fixture", CASES, ids=[fx.id for fx in CASES])
def test_matches_magenta(fixture):
    expected = fixture.load()
    assert "error" not in expected  # no drum fixture is an error case
    conv = _converter(fixture.config)
    assert (conv.input_depth, conv.output_depth) == (int(expected["input_depth"]), int(expected["output_depth"]))
    if fixture.suffix == "__all":
        conv.max_tensors_per_notesequence = None
    result = conv.to_tensors(fixture.midi)
    assert_tensors_equal(result, expected)
    assert_round_trip_equal(conv.to_sequences(result.outputs), expected)


def _midi(hits, numerator=4, other_notes=(), offset=0.0):
    """hits: (pitch, step) on a drum instrument; other_notes: (pitch, step) on a piano."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0))
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    for pitch, step in hits:
        start = step * STEP + offset
        drums.notes.append(pretty_midi.Note(100, pitch, start, start + 0.05))
    pm.instruments.append(drums)
    if other_notes:
        piano = pretty_midi.Instrument(program=0)
        for pitch, step in other_notes:
            piano.notes.append(pretty_midi.Note(100, pitch, step * STEP, (step + 2) * STEP))
        pm.instruments.append(piano)
    return pm


def _rock_bar(bar):
    """Kick on 1 and 3 (as GM 35 on 3), snare on 2 and 4, closed hi-hat (42, or 44) on 8ths."""
    s = 16 * bar
    return [(36, s), (35, s + 8), (38, s + 4), (38, s + 12)] + [(42 if i % 4 else 44, s + i) for i in range(0, 16, 2)]


def test_pitch_class_tables():
    assert len(REDUCED_DRUM_PITCH_CLASSES) == 9 and len(FULL_DRUM_PITCH_CLASSES) == 61
    assert [c[0] for c in REDUCED_DRUM_PITCH_CLASSES] == [36, 38, 42, 46, 45, 48, 50, 49, 51]
    # current note_seq map: 43 is a low tom, 52 a crash, 22/26 are hi-hats
    assert 43 in REDUCED_DRUM_PITCH_CLASSES[LOW_TOM] and 52 in REDUCED_DRUM_PITCH_CLASSES[CRASH]
    assert 22 in REDUCED_DRUM_PITCH_CLASSES[CLOSED_HH] and 26 in REDUCED_DRUM_PITCH_CLASSES[OPEN_HH]
    full = [c[0] for c in FULL_DRUM_PITCH_CLASSES]
    assert sorted(full) == list(range(27, 88))
    assert full[:3] == [36, 35, 38] and full[-1] == 82
    for name, (input_depth, output_depth) in DEPTHS.items():
        conv = DrumsConverter(**DRUM_CONFIGS[name])
        assert (conv.input_depth, conv.output_depth) == (input_depth, output_depth)


def test_drum_loop_round_trip_recovers_quantised_hits():
    hits = _rock_bar(0) + _rock_bar(1)
    conv = _converter("cat-drums_2bar_small")
    # 20 ms late: still the same 16th step after quantisation
    t = conv.to_tensors(_midi(hits, offset=0.02))
    assert len(t) == 1 and t.lengths == [32]
    assert t.inputs[0].shape == (32, 10) and t.outputs[0].shape == (32, 512)
    (decoded,) = conv.to_sequences(t.outputs)
    got = sorted((round(n.start_time / STEP), n.pitch) for n in decoded.notes)
    # each class comes back as its exemplar: 35 -> 36, 44 -> 42
    exemplar = {36: 36, 35: 36, 38: 38, 42: 42, 44: 42}
    assert got == sorted((step, exemplar[pitch]) for pitch, step in hits)
    for n in decoded.notes:
        assert (n.velocity, n.instrument, n.program, n.is_drum) == (80, 9, 0, True)
        assert n.end_time - n.start_time == pytest.approx(STEP)
    assert decoded.total_time == pytest.approx(31 * STEP)  # last hit (hi-hat on step 30) + 1 step
    midi = conv.from_tensors(t.outputs)[0]
    assert len(midi.instruments) == 1 and midi.instruments[0].is_drum


def test_one_hot_index_is_sum_of_class_bits():
    hits = [(36, 0), (38, 0), (42, 0), (51, 3), (49, 5), (46, 5), (50, 9), (45, 9), (48, 9), (40, 20), (40, 31)]
    conv = _converter("cat-drums_2bar_small")
    (out,) = conv.to_tensors(_midi(hits)).outputs
    labels = out.argmax(-1)
    assert labels[0] == 1 + 2 + 4  # kick + snare + closed hi-hat
    assert labels[3] == 256  # ride (class 8)
    assert labels[5] == 128 + 8  # crash (7) + open hi-hat (3)
    assert labels[9] == 16 + 32 + 64  # low, mid and high tom
    assert labels[20] == labels[31] == 2  # 40 is a snare
    assert out.sum() == 32 and all(labels[i] == 0 for i in range(32) if i not in (0, 3, 5, 9, 20, 31))
    (decoded,) = conv.to_sequences([out])
    assert sorted((round(n.start_time / STEP), n.pitch) for n in decoded.notes)[:3] == [(0, 36), (0, 38), (0, 42)]


def test_roll_and_nothing_hit_bit():
    hits = [(36, 0), (42, 0), (38, 4), (42, 17), (82, 30)]
    conv = _converter("nade-drums_2bar_reduced")
    t = conv.to_tensors(_midi(hits))
    (inp,), (out,) = t.inputs, t.outputs
    assert inp.shape == (32, 10) and out.shape == (32, 9) and inp.dtype == out.dtype == bool
    np.testing.assert_array_equal(inp[:, :9], out)
    hit_steps = {0, 4, 17, 30}
    np.testing.assert_array_equal(inp[:, 9], [s not in hit_steps for s in range(32)])
    assert np.flatnonzero(out[0]).tolist() == [KICK, CLOSED_HH]
    assert np.flatnonzero(out[30]).tolist() == [RIDE]  # 82 (shaker) is a ride


def test_unmapped_pitches_vanish():
    hits = _rock_bar(0) + _rock_bar(1)
    unmapped = [(13, 1), (25, 3), (90, 5), (127, 7), (100, 20)]
    for config in DRUM_CONFIGS:
        conv = _converter(config)
        clean, noisy = conv.to_tensors(_midi(hits)), conv.to_tensors(_midi(hits + unmapped))
        assert len(clean) == len(noisy) == 1
        np.testing.assert_array_equal(noisy.inputs[0], clean.inputs[0])
        np.testing.assert_array_equal(noisy.outputs[0], clean.outputs[0])
    assert len(_converter("cat-drums_2bar_small").to_tensors(_midi(unmapped))) == 0
    # 35 is its own class in the full map, but merged with 36 in the reduced one
    full = _converter("nade-drums_2bar_full").to_tensors(_midi([(35, 0), (36, 1), (36, 16), (36, 31)]))
    assert np.flatnonzero(full.outputs[0][0]).tolist() == [1] and np.flatnonzero(full.outputs[0][1]).tolist() == [0]


def test_non_drum_notes_are_ignored():
    hits = _rock_bar(0) + _rock_bar(1)
    conv = _converter("cat-drums_2bar_small")
    alone = conv.to_tensors(_midi(hits))
    # piano notes on drum pitches, some beyond the drums, which extend the piece but not the track
    mixed = conv.to_tensors(_midi(hits, other_notes=[(36, 1), (38, 2), (42, 3), (60, 40), (64, 70)]))
    assert len(alone) == len(mixed) == 1
    np.testing.assert_array_equal(mixed.outputs[0], alone.outputs[0])
    assert len(conv.to_tensors(_midi([], other_notes=[(36, 0), (38, 16)]))) == 0


def test_three_four_gives_no_windows():
    hits = [(36, 12 * bar) for bar in range(8)] + [(42, 12 * bar + 6) for bar in range(8)]
    assert len(_converter("cat-drums_2bar_small").to_tensors(_midi(hits, numerator=3))) == 0
    assert len(_converter("cat-drums_2bar_small").to_tensors(_midi(hits, numerator=4))) > 0


def test_windows_hop_one_bar_dedupe_and_cap():
    conv = _converter("cat-drums_2bar_small")
    same = [h for bar in range(4) for h in _rock_bar(bar)]
    assert len(conv.to_tensors(_midi(same))) == 1  # windows at bars 0, 1, 2 are identical
    # a different marker hit in each of 8 bars: 7 distinct 2-bar windows
    varied = same + [h for bar in range(4, 8) for h in _rock_bar(bar)] + [(50, 16 * bar + bar) for bar in range(8)]
    assert len(conv.to_tensors(_midi(varied))) == 5
    conv.max_tensors_per_notesequence = None
    assert len(conv.to_tensors(_midi(varied))) == 7


def test_extraction_gap_bars_and_padding():
    # hits up to step 20, then 30 silent steps (>= 1 bar), then one hit at step 3 of bar 3
    hits = [(36, 0), (42, 14), (38, 20), (42, 51)]
    # piano notes are not drums, even on drum pitches
    qns = quantize(read_midi(_midi(hits, other_notes=[(38, 30), (40, 44)])))
    tracks = extract_drum_tracks(qns, gap_bars=1.0, max_steps_truncate=None)
    assert [(t.start_step, len(t)) for t in tracks] == [(0, 32), (48, 16)]
    assert tracks[1].events[3] == frozenset({42}) and tracks[0].events[20] == frozenset({38})
    (one,) = extract_drum_tracks(qns, gap_bars=float("inf"), max_steps_truncate=None)
    assert (one.start_step, len(one)) == (0, 64)
    (cut, _) = extract_drum_tracks(qns, gap_bars=1.0, max_steps_truncate=20)
    assert len(cut) == 16  # truncation keeps whole bars


def test_pad_to_total_time_aligns_tracks_to_the_piece():
    track = DrumTrack([frozenset({0})] + [frozenset()] * 15, start_step=32)
    track.set_length(len(track) + track.start_step, from_left=True)
    assert (track.start_step, len(track), track.events[32]) == (0, 48, frozenset({0}))
    track.set_length(64)
    assert (track.start_step, track.end_step) == (0, 64)
    conv = DrumsConverter(gap_bars=None, pad_to_total_time=True, presplit_on_time_changes=False, max_tensors_per_notesequence=None)
    (out,) = conv.to_tensors(_midi([(36, 35), (38, 40)], other_notes=[(60, 62)])).outputs
    # the track starts at bar 2 but is padded back to step 0 and on to the piece's end (step 64)
    assert out.shape == (64, 512) and out.argmax(-1)[35] == 1 and out.argmax(-1)[40] == 2
    assert out.argmax(-1)[:35].tolist() == [0] * 35
