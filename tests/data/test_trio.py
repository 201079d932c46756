"""Trio converter: parity with Magenta's tensors, and behaviour on MIDI written here."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from musicvae.data.midi_io import read_midi
from musicvae.data.trio import TrioConverter
from tests.parity import assert_round_trip_equal, assert_tensors_equal, fixtures_for, requires_parity

CASES = fixtures_for("hierdec-trio_16bar")
STEP = 0.125  # one 16th note at 120 qpm, in seconds
MEL, BASS = 90, 180  # block boundaries: [mel 0:90 | bass 90:180 | drums 180:692]
BASS_PITCH = 36


def _converter(**overrides) -> TrioConverter:
    conv = TrioConverter(**{"slice_bars": 16, "gap_bars": 2, **overrides})
    conv.set_mode("eval")
    return conv


@requires_parity
@pytest.mark.parametrize("fixture", CASES, ids=[fx.id for fx in CASES])
def test_matches_magenta(fixture):
    expected = fixture.load()
    assert "error" not in expected  # no trio fixture is an error case
    conv = _converter()
    assert conv.input_depth == conv.output_depth == int(expected["output_depth"]) == 692
    result = conv.to_tensors(fixture.midi)
    assert_tensors_equal(result, expected)
    assert_round_trip_equal(conv.to_sequences(result.outputs), expected)


def _mel_pitch(bar: int) -> int:
    return 48 + bar  # a different pitch in every bar, so a window's first row names its bar


def _trio(bars, parts=("mel", "bass", "drums"), silent=None, mel_program=0, numerator=4, extra_mel=False):
    """`bars` bars of melody (program `mel_program`), bass (program 33) and drums.

    silent: {part: bars in which that part does not play}.
    """
    silent = silent or {}
    bar_steps = 4 * numerator
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0))

    def add(program, notes, is_drum=False):
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
        inst.notes = [pretty_midi.Note(100, p, s * STEP, e * STEP) for p, s, e in notes]
        pm.instruments.append(inst)

    def playing(part):
        return [b for b in range(bars) if b not in silent.get(part, ())]

    if "mel" in parts:
        add(mel_program, [(_mel_pitch(b), b * bar_steps + k, b * bar_steps + k + 8) for b in playing("mel") for k in (0, 8)])
    if extra_mel:
        add(1, [(80, b * bar_steps, b * bar_steps + 4) for b in range(bars)])
    if "bass" in parts:
        add(33, [(BASS_PITCH, b * bar_steps, (b + 1) * bar_steps) for b in playing("bass")])
    if "drums" in parts:
        hits = [(36, 0), (42, 4), (38, 8), (42, 12)]
        add(0, [(p, b * bar_steps + s, b * bar_steps + s + 1) for b in playing("drums") for p, s in hits], is_drum=True)
    return pm


def _start_bar(window: np.ndarray) -> int:
    return int(window[0, :MEL].argmax()) - 2 + 21 - 48


def test_depths_and_required_slice_bars():
    conv = _converter()
    assert conv.split_depths == (90, 90, 512) and conv.input_depth == 692
    with pytest.raises(ValueError):
        TrioConverter()


def test_window_layout_is_mel_bass_drums_three_hot():
    t = _converter().to_tensors(_trio(16))
    assert len(t) == 1 and t.lengths == [256]
    (w,) = t.outputs
    assert w.shape == (256, 692) and w.dtype == bool
    np.testing.assert_array_equal(t.inputs[0], w)
    for block in (w[:, :MEL], w[:, MEL:BASS], w[:, BASS:]):
        assert block.sum(axis=1).tolist() == [1] * 256
    mel, bass, drums = w[:, :MEL].argmax(-1), w[:, MEL:BASS].argmax(-1), w[:, BASS:].argmax(-1)
    assert mel[0] == 2 + 48 - 21 and mel[1] == 0 and mel[8] == 2 + 48 - 21 and mel[16] == 2 + 49 - 21
    assert bass[0] == bass[16] == 2 + BASS_PITCH - 21 and bass[1] == 0
    assert drums[:16].tolist() == [1, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0]  # kick, hi-hat, snare, hi-hat


def test_round_trip_assigns_instruments_and_programs():
    conv = _converter()
    (decoded,) = conv.to_sequences(conv.to_tensors(_trio(16)).outputs)
    by_instrument = {}
    for n in decoded.notes:
        by_instrument.setdefault((n.instrument, n.program, n.is_drum), []).append(n)
    assert sorted(by_instrument) == [(0, 0, False), (1, 33, False), (9, 0, True)]
    mel = by_instrument[(0, 0, False)]
    assert [(n.pitch, round(n.start_time / STEP), round(n.end_time / STEP)) for n in mel[:3]] == [
        (48, 0, 8),
        (48, 8, 16),
        (49, 16, 24),
    ]
    assert len(mel) == 32 and len(by_instrument[(1, 33, False)]) == 16
    assert {n.pitch for n in by_instrument[(1, 33, False)]} == {BASS_PITCH}
    assert {n.pitch for n in by_instrument[(9, 0, True)]} == {36, 38, 42}
    assert len(by_instrument[(9, 0, True)]) == 64
    assert all(n.velocity == 80 for n in decoded.notes)
    assert decoded.total_time == pytest.approx(32.0)  # 16 bars of 2 s
    assert len(conv.from_tensors(conv.to_tensors(_trio(16)).outputs)[0].instruments) == 3


def test_needs_all_three_parts():
    conv = _converter()
    assert len(conv.to_tensors(_trio(18))) == 3
    for missing in ("mel", "bass", "drums"):
        parts = tuple(p for p in ("mel", "bass", "drums") if p != missing)
        assert len(conv.to_tensors(_trio(18, parts=parts))) == 0, missing
    # strings (program 40) are neither melody nor bass
    assert len(conv.to_tensors(_trio(18, mel_program=40))) == 0
    # an instrument seen with both a melody and a bass program is invalid
    ns = read_midi(_trio(18))
    ns.notes[5].program = 33
    assert len(conv.to_tensors(ns)) == 0
    # too short for a 16-bar window
    assert len(conv.to_tensors(_trio(15))) == 0


def test_three_four_gives_no_windows():
    assert len(_converter().to_tensors(_trio(24, numerator=3))) == 0


def test_one_bar_gap_is_filled():
    t = _converter().to_tensors(_trio(18, silent={"bass": [8]}))
    assert len(t) == 3
    bass = t.outputs[0][:, MEL:BASS].argmax(-1)
    assert bass[128] == 1 and bass[129:144].tolist() == [0] * 15  # note-off, then rest through bar 8
    assert bass[144] == 2 + BASS_PITCH - 21


def test_long_gaps_split_the_windows():
    conv = _converter(max_tensors_per_notesequence=None)
    assert len(conv.to_tensors(_trio(40))) == 25
    # gaps are filled from both sides, so a 4-bar internal gap is still bridged ...
    assert len(conv.to_tensors(_trio(40, silent={"bass": range(16, 20)}))) == 25
    # ... but in a 5-bar gap the middle bar (18) is uncovered: no window may contain it
    split = conv.to_tensors(_trio(40, silent={"bass": range(16, 21)}))
    assert [_start_bar(w) for w in split.outputs] == [0, 1, 2, 19, 20, 21, 22, 23, 24]


def test_windows_capped_in_order():
    t = _converter().to_tensors(_trio(40))
    assert [_start_bar(w) for w in t.outputs] == [0, 1, 2, 3, 4]


def test_cross_product_of_instruments():
    conv = _converter()
    t = conv.to_tensors(_trio(16, extra_mel=True))
    assert len(t) == 2  # (mel 0, bass, drums) and (mel 1, bass, drums)
    first, second = (w[:, :MEL].argmax(-1) for w in t.outputs)
    assert first[0] == 2 + 48 - 21 and second[0] == 2 + 80 - 21
    np.testing.assert_array_equal(t.outputs[0][:, MEL:], t.outputs[1][:, MEL:])


def test_parts_may_be_missing_near_either_end():
    conv = _converter()
    # filling alone covers bars 14-15 of a bass that stops after bar 13; bars 16-17 count as
    # covered only because the other parts play there (Magenta's end leniency)
    assert len(conv.to_tensors(_trio(18, silent={"bass": range(14, 18)}))) == 3
    assert len(conv.to_tensors(_trio(18, silent={"bass": range(4)}))) == 3
    # bar 15 lies outside both the filling and the last two bars: no 16-bar window survives
    assert len(conv.to_tensors(_trio(18, silent={"bass": range(13, 18)}))) == 0
