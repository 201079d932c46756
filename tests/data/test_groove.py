"""GrooveConverter: parity with Magenta's GrooVAE fixtures and hand-checked transforms.

Files with drum notes only must match Magenta exactly. Files with melodic notes differ on
purpose (ours reads drum notes only, Magenta reads every note as a drum hit); their tests assert
that the difference is exactly that one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pretty_midi
import pytest

from musicvae.data.converter import ConverterTensors
from musicvae.data.drums import REDUCED_DRUM_PITCH_CLASSES
from musicvae.data.groove import ROLAND_DRUM_PITCH_CLASSES, GrooveConverter, UnmappedDrumPitchError
from musicvae.data.midi_io import read_midi
from musicvae.data.note_sequence import Note, NoteSequence
from musicvae.data.sequences import quantize
from tests.parity import (
    MIDI_DIR,
    PARITY,
    Fixture,
    assert_round_trip_equal,
    assert_tensors_equal,
    fixtures_for,
    requires_parity,
    windows,
)

CONFIGS: dict[str, dict] = {
    "groovae_4bar": dict(split_bars=4),
    "groovae_2bar_humanize": dict(split_bars=2, humanize=True),
    "groovae_2bar_tap_fixed_velocity": dict(split_bars=2, tapify=True, fixed_velocities=True),
    "groovae_2bar_add_closed_hh": dict(split_bars=2, add_instruments=[2]),
    "groovae_2bar_hits_control_tfds": dict(split_bars=2, hits_as_controls=True),
}
FIXTURES = [fx for config in CONFIGS for fx in fixtures_for(config)]
MODES = {"": "eval", "__infer": "infer"}


def make_converter(config: str, mode: str, **overrides) -> GrooveConverter:
    conv = GrooveConverter(
        pitch_classes=ROLAND_DRUM_PITCH_CLASSES,
        inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES,
        max_tensors_per_notesequence=20,
        **{**CONFIGS[config], **overrides},
    )
    conv.set_mode(mode)
    return conv


def first_unmapped(notes: list[Note], class_map: dict[int, int]) -> Note | None:
    return next((n for n in notes if n.pitch not in class_map), None)


def assert_same_outcome(conv: GrooveConverter, source, expected: dict) -> None:
    """Our conversion of `source` reproduces the fixture: same error, or same tensors and decoding."""
    if "error" in expected:
        assert str(expected["error_type"]) == "KeyError"
        with pytest.raises(UnmappedDrumPitchError) as raised:
            conv.to_tensors(source)
        assert raised.value.args == (int(expected["error_message"]),)
        return
    result = conv.to_tensors(source)
    assert_tensors_equal(result, expected)
    assert_round_trip_equal(conv.to_sequences(result.outputs, result.controls), expected)


def assert_melodic_notes_were_hits(
    conv: GrooveConverter, config: str, ns: NoteSequence, expected: dict
) -> None:
    """Magenta's windows equal ours except where melodic notes landed: it counted them as hits."""
    n_drums = conv.num_drums
    size = conv.steps_per_bar * conv.split_bars
    theirs_out = np.concatenate(windows(expected, "outputs") or [np.zeros((0, 3 * n_drums))])
    theirs_in = np.concatenate(windows(expected, "inputs") or [np.zeros((0, 3 * n_drums))])
    theirs_ctl = np.concatenate(windows(expected, "controls") or [np.zeros((0, conv.control_depth))])
    length = len(theirs_out)

    # Our groove over the whole file (unsplit), cut or padded with silence to Magenta's length.
    whole = make_converter(config, conv.mode, split_bars=None).to_tensors(ns)
    ours_out, ours_in, ours_ctl = (np.zeros_like(a) for a in (theirs_out, theirs_in, theirs_ctl))
    for padded, full in zip((ours_out, ours_in, ours_ctl), (whole.outputs, whole.inputs, whole.controls)):
        if full:
            padded[: min(length, len(full[0]))] = full[0][:length]
    # Our windows are that groove's whole windows; melodic notes can only make Magenta's longer.
    result = conv.to_tensors(ns)
    assert len(result) == (whole.lengths[0] // size if len(whole) else 0) <= int(expected["num_windows"])
    for i, window in enumerate(result.outputs):
        np.testing.assert_array_equal(window, ours_out[i * size : (i + 1) * size])

    # Where the melodic notes fall, with the map Magenta used.
    melodic = quantize(ns.with_notes([n for n in ns.notes if not n.is_drum]), conv.steps_per_quarter)
    melodic_cells = np.zeros((length, n_drums), bool)
    for note in melodic.notes:
        if note.quantized_start_step < length:
            melodic_cells[note.quantized_start_step, conv.pitch_class_map[note.pitch]] = True
    assert melodic_cells.any(), "the melodic notes should fall inside Magenta's windows"
    for block in range(3):
        cols = slice(block * n_drums, (block + 1) * n_drums)
        np.testing.assert_array_equal(theirs_out[:, cols][~melodic_cells], ours_out[:, cols][~melodic_cells])
    assert (theirs_out[:, :n_drums][melodic_cells] == 1.0).all()
    theirs_vel = theirs_out[:, n_drums : 2 * n_drums][melodic_cells]
    ours_vel = ours_out[:, n_drums : 2 * n_drums][melodic_cells]
    assert (theirs_vel >= ours_vel).all(), "the loudest note of a cell wins"
    assert not np.array_equal(theirs_out, ours_out)
    # The encoder input and the controls mix a step's categories (tapify), so compare whole steps.
    quiet_steps = ~melodic_cells.any(axis=1)
    np.testing.assert_array_equal(theirs_in[quiet_steps], ours_in[quiet_steps])
    np.testing.assert_array_equal(theirs_ctl[quiet_steps], ours_ctl[quiet_steps])


@requires_parity
@pytest.mark.parametrize("fx", FIXTURES, ids=lambda fx: fx.id)
def test_parity(fx: Fixture) -> None:
    expected = fx.load()
    conv = make_converter(fx.config, MODES[fx.suffix])
    assert (conv.input_depth, conv.output_depth, conv.control_depth) == tuple(
        int(expected[k]) for k in ("input_depth", "output_depth", "control_depth")
    )
    ns = read_midi(fx.midi)
    drums = [n for n in ns.notes if n.is_drum]
    if len(drums) == len(ns.notes) or ("error" not in expected and int(expected["num_windows"]) == 0):
        # Drum-only files, and files Magenta gave no window for (time changes, odd meters,
        # no notes): exact parity.
        assert_same_outcome(conv, fx.midi, expected)
        return

    class_map = conv.pitch_class_map
    if "error" in expected:
        # Magenta raised on the first note (in sequence order) whose pitch is not in the map.
        culprit = first_unmapped(ns.notes, class_map)
        assert culprit is not None and culprit.pitch == int(expected["error_message"])
        if culprit.is_drum:
            assert_same_outcome(conv, fx.midi, expected)
            return
        # Documented difference: the melodic note is ignored, so the file converts as its drum-only copy.
        drum_culprit = first_unmapped(drums, class_map)
        if drum_culprit is not None:
            with pytest.raises(UnmappedDrumPitchError) as raised:
                conv.to_tensors(fx.midi)
            assert raised.value.pitch == drum_culprit.pitch
            return
        ours = conv.to_tensors(fx.midi)
        if not drums:
            assert len(ours) == 0
        copy = conv.to_tensors(ns.with_notes(drums))
        assert len(ours) == len(copy)
        for a, b in zip(ours.items(), copy.items()):
            for x, y in zip(a[:3], b[:3]):
                np.testing.assert_array_equal(x, y)
        return

    # Magenta converted: every melodic pitch was in the map and became a drum hit.
    assert first_unmapped(ns.notes, class_map) is None
    assert_melodic_notes_were_hits(conv, fx.config, ns, expected)
    # Decoding does not depend on the input notes: ours decodes Magenta's windows exactly as it did.
    decoded = conv.to_sequences(windows(expected, "outputs"), windows(expected, "controls"))
    assert_round_trip_equal(decoded, expected)


# Mixed files whose drum track was exported on its own as another fixture file (first 60 s;
# `drumtrack-roland-` kept only Roland pitches, which is what drop_unmapped_pitches does in 'eval').
DRUM_ONLY_COPIES = [
    ("multi-freedoom1-D-E1M1", "drumtrack-freedoom1-D-E1M1", False, ("", "__infer")),
    ("mma-stdlib-rb", "drumtrack-mma-stdlib-rb", False, ("", "__infer")),
    ("multi-freedoom2-D-COUNTD", "drumtrack-roland-freedoom2-D-COUNTD", True, ("",)),
]


@requires_parity
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize(
    "mixed,drum_copy,drop,suffixes", DRUM_ONLY_COPIES, ids=[c[0] for c in DRUM_ONLY_COPIES]
)
def test_mixed_file_converts_like_magenta_on_its_drum_track(config, mixed, drum_copy, drop, suffixes) -> None:
    for suffix in suffixes:
        path = PARITY / "tensors" / config / f"{drum_copy}{suffix}.npz"
        expected = Fixture(config, MIDI_DIR / f"{drum_copy}.mid", suffix, path).load()
        conv = make_converter(config, MODES[suffix], drop_unmapped_pitches=drop)
        source = MIDI_DIR / f"{mixed}.mid"
        if "error" in expected:
            assert_same_outcome(conv, source, expected)
            continue
        # The drum copy stops at 60 s: compare the windows it has.
        n = int(expected["num_windows"])
        result = conv.to_tensors(source)
        assert n > 0 and len(result) >= n
        head = ConverterTensors.from_items(result.items()[:n])
        assert_tensors_equal(head, expected)
        assert_round_trip_equal(conv.to_sequences(head.outputs, head.controls), expected)


def test_every_fixture_is_covered() -> None:
    if not PARITY.is_dir():
        pytest.skip("parity fixtures not found")
    # 47 MIDI files x 5 configs x 2 modes.
    assert len(FIXTURES) == 470
    assert {fx.suffix for fx in FIXTURES} == set(MODES)


# --- hand-made grooves ------------------------------------------------------------------------

STEP = 0.125  # seconds per 16th note at 120 qpm
KICK, SNARE, CLOSED_HH, OPEN_HH = 0, 1, 2, 3
N = 9


NoteSpec = tuple[int, int, float]  # pitch, velocity, start in seconds


def groove_midi(drums: list[NoteSpec], melodic: Sequence[NoteSpec] = ()) -> pretty_midi.PrettyMIDI:
    """(pitch, velocity, start seconds) drum notes (and piano notes) at 120 qpm, 4/4."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    for notes, is_drum in ((drums, True), (melodic, False)):
        if notes:
            inst = pretty_midi.Instrument(program=0, is_drum=is_drum)
            inst.notes = [pretty_midi.Note(v, p, t, t + STEP / 2) for p, v, t in notes]
            pm.instruments.append(inst)
    return pm


def one_bar() -> pretty_midi.PrettyMIDI:
    return groove_midi(
        [
            (36, 127, 0.0),  # kick on the grid
            *[(42, 80, s * STEP) for s in range(0, 16, 2)],  # closed hats on 8ths
            (38, 64, 4 * STEP - STEP / 4),  # snare a quarter step early...
            (37, 100, 4 * STEP + STEP / 4),  # ...and a louder snare-class note a quarter step late
            (46, 90, 6 * STEP),  # open hat, louder than the closed hat on the same step
        ]
    )


def convert(midi, mode: str = "eval", **kwargs) -> ConverterTensors:
    conv = GrooveConverter(**kwargs)
    conv.set_mode(mode)
    return conv.to_tensors(midi)


def expected_one_bar() -> np.ndarray:
    out = np.zeros((16, 3 * N))
    hits, vel, off = out[:, :N], out[:, N : 2 * N], out[:, 2 * N :]
    hits[0, KICK], vel[0, KICK] = 1, 1.0
    for s in range(0, 16, 2):
        hits[s, CLOSED_HH], vel[s, CLOSED_HH] = 1, 80 / 127
    hits[4, SNARE], vel[4, SNARE], off[4, SNARE] = 1, 100 / 127, -0.5  # the loud, late note wins
    hits[6, OPEN_HH], vel[6, OPEN_HH] = 1, 90 / 127
    return out


def test_target_features_velocity_offset_sign_and_loudest_note() -> None:
    result = convert(one_bar())
    assert len(result) == 1 and result.lengths == [16]
    out = result.outputs[0]
    assert out.dtype == np.float64 and result.inputs[0].dtype == np.float64
    np.testing.assert_allclose(out, expected_one_bar(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.inputs[0], out)  # no transform: the encoder sees the target
    assert result.controls[0].shape == (16, 0)

    # Alone, the early snare shows that playing early gives a positive offset.
    early = convert(groove_midi([(38, 64, 4 * STEP - STEP / 4)])).outputs[0]
    assert early[4, SNARE] == 1 and early[4, 2 * N + SNARE] == pytest.approx(0.5)
    assert early[4, N + SNARE] == pytest.approx(64 / 127)


def test_tapify_puts_the_loudest_category_on_the_open_hat() -> None:
    result = convert(one_bar(), tapify=True)
    inp, out = result.inputs[0], result.outputs[0]
    np.testing.assert_allclose(out, expected_one_bar(), atol=1e-12)  # target untouched
    expected = np.zeros((16, 3 * N))
    tap = expected[:, [OPEN_HH, N + OPEN_HH, 2 * N + OPEN_HH]]
    tap[0] = 1, 1.0, 0  # kick (127) beats the closed hat (80)
    for s in (2, 8, 10, 12, 14):
        tap[s] = 1, 80 / 127, 0  # closed hat alone
    tap[4] = 1, 100 / 127, -0.5  # snare (100) beats the hat, with the snare's offset
    tap[6] = 1, 90 / 127, 0  # open hat (90) beats the closed hat
    expected[:, [OPEN_HH, N + OPEN_HH, 2 * N + OPEN_HH]] = tap
    np.testing.assert_allclose(inp, expected, atol=1e-12)

    fixed = convert(one_bar(), tapify=True, fixed_velocities=True).inputs[0]
    assert not fixed[:, N : 2 * N].any()
    np.testing.assert_array_equal(fixed[:, :N], inp[:, :N])
    np.testing.assert_array_equal(fixed[:, 2 * N :], inp[:, 2 * N :])


def test_humanize_keeps_only_the_hits() -> None:
    result = convert(one_bar(), humanize=True)
    inp, out = result.inputs[0], result.outputs[0]
    np.testing.assert_allclose(out, expected_one_bar(), atol=1e-12)
    np.testing.assert_array_equal(inp[:, :N], out[:, :N])
    assert not inp[:, N:].any()


def test_add_closed_hh_hides_category_2_from_the_encoder() -> None:
    result = convert(one_bar(), add_instruments=[CLOSED_HH])
    inp, out = result.inputs[0], result.outputs[0]
    np.testing.assert_allclose(out, expected_one_bar(), atol=1e-12)
    hidden = [CLOSED_HH, N + CLOSED_HH, 2 * N + CLOSED_HH]
    assert out[:, CLOSED_HH].sum() == 8 and not inp[:, hidden].any()
    others = [c for c in range(3 * N) if c not in hidden]
    np.testing.assert_array_equal(inp[:, others], out[:, others])


def test_hits_as_controls_are_the_target_hits() -> None:
    conv = GrooveConverter(hits_as_controls=True)
    assert conv.control_depth == N
    result = conv.to_tensors(one_bar())
    control = result.controls[0]
    assert control.dtype == bool and control.shape == (16, N)
    np.testing.assert_array_equal(control, expected_one_bar()[:, :N] == 1)
    np.testing.assert_array_equal(result.inputs[0], result.outputs[0])


def dense_groove() -> pretty_midi.PrettyMIDI:
    """Two bars with every 16th struck on kick, snare and closed hat at assorted velocities."""
    notes = [
        (pitch, 20 + (7 * step + 31 * i) % 100, step * STEP)
        for step in range(32)
        for i, pitch in enumerate((36, 38, 42))
    ]
    return groove_midi(notes)


def test_note_dropout_thins_the_encoder_input_only() -> None:
    plain = convert(dense_groove())
    conv = GrooveConverter(max_note_dropout_probability=0.8)
    conv.set_mode("train")
    conv.seed(3)
    result = conv.to_tensors(dense_groove())
    inp, out = result.inputs[0], result.outputs[0]
    np.testing.assert_array_equal(out, plain.outputs[0])  # target untouched
    kept, target_hits = inp[:, :N] == 1, out[:, :N] == 1
    assert (kept <= target_hits).all() and 0 < kept.sum() < target_hits.sum() == 96
    # A dropped note loses its velocity and offset too; a kept one keeps them.
    mask = np.tile(kept, 3)
    np.testing.assert_array_equal(inp[mask], out[mask])
    assert not inp[~mask].any()
    # Same seed, same dropout.
    conv.seed(3)
    np.testing.assert_array_equal(conv.to_tensors(dense_groove()).inputs[0], inp)


def test_tapify_after_dropout_reads_the_full_groove() -> None:
    # Dropout only decides which category is loudest; the tapped values come from the full
    # groove. A step whose only note (a kick) was dropped picks category 0 by argmax, so the
    # kick still reaches the encoder (Magenta's behaviour).
    quiet_kicks = groove_midi([(36, 10, s * STEP) for s in range(32)])
    dropout = GrooveConverter(max_note_dropout_probability=0.8)
    dropout.seed(0)
    assert dropout.to_tensors(quiet_kicks).inputs[0][:, KICK].sum() == 16  # half the kicks dropped
    tap = GrooveConverter(max_note_dropout_probability=0.8, tapify=True)
    tap.seed(0)
    inp = tap.to_tensors(quiet_kicks).inputs[0]
    np.testing.assert_array_equal(inp[:, OPEN_HH], np.ones(32))
    np.testing.assert_allclose(inp[:, N + OPEN_HH], np.full(32, 10 / 127))
    assert np.count_nonzero(inp) == 64


def test_note_dropout_is_not_limited_to_training_as_in_magenta() -> None:
    # Magenta's GrooveConverter drops notes whenever max_note_dropout_probability is set; it does
    # not look at the mode, so eval and inference inputs are thinned too.
    for mode in ("eval", "infer"):
        conv = GrooveConverter(max_note_dropout_probability=0.8)
        conv.set_mode(mode)
        conv.seed(3)
        result = conv.to_tensors(dense_groove())
        assert result.inputs[0][:, :N].sum() < result.outputs[0][:, :N].sum() == 96
    # Without the option nothing is ever dropped.
    conv = GrooveConverter()
    conv.set_mode("train")
    result = conv.to_tensors(dense_groove())
    np.testing.assert_array_equal(result.inputs[0], result.outputs[0])


def test_windows_cover_whole_bars_and_drop_a_short_remainder() -> None:
    # Last onset in bar 3 of a 2-bar split: the groove is 3 bars, one full window is kept.
    result = convert(groove_midi([(36, 100, 0.0), (38, 100, 40 * STEP)]), split_bars=2)
    assert result.lengths == [32] and result.outputs[0][0, KICK] == 1
    # A groove of one bar gives no 2-bar window.
    assert len(convert(groove_midi([(36, 100, 15 * STEP)]), split_bars=2)) == 0
    # split_bars=None: one tensor padded to the end of the last bar.
    assert convert(groove_midi([(36, 100, 17 * STEP)])).lengths == [32]


def test_melodic_notes_are_ignored() -> None:
    # Magenta would raise KeyError(60) with the Roland map and count pitch 60 as a mid tom
    # with the General MIDI map; ours reads drum notes only.
    midi = groove_midi([(36, 100, 0.0)], melodic=[(60, 100, 0.0), (60, 100, 20 * STEP)])
    for mode in ("eval", "infer"):
        result = convert(midi, mode, inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES)
        assert result.lengths == [16]
        hits = result.outputs[0][:, :N]
        assert hits.sum() == 1 and hits[0, KICK] == 1
    assert len(convert(groove_midi([], melodic=[(60, 100, 0.0)]))) == 0


def test_unmapped_drum_pitch_raises_a_typed_error_or_is_dropped() -> None:
    midi = groove_midi([(36, 100, 0.0), (35, 90, 2 * STEP)])  # 35 is GM's second kick, not Roland
    with pytest.raises(UnmappedDrumPitchError) as raised:
        convert(midi)
    error = raised.value
    assert isinstance(error, KeyError) and isinstance(error, ValueError)
    assert error.pitch == 35 and error.args == (35,)
    assert "35" in str(error) and "ROLAND_DRUM_PITCH_CLASSES" in str(error)

    kept = convert(midi, drop_unmapped_pitches=True).outputs[0]
    assert kept[:, :N].sum() == 1 and kept[0, KICK] == 1

    # In 'infer' mode the General MIDI map applies: 35 is a kick there.
    infer = convert(midi, "infer", inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES).outputs[0]
    assert infer[0, KICK] == 1 and infer[2, KICK] == 1 and infer[2, N + KICK] == pytest.approx(90 / 127)
    with pytest.raises(UnmappedDrumPitchError, match="REDUCED_DRUM_PITCH_CLASSES"):
        convert(groove_midi([(90, 100, 0.0)]), "infer", inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES)


def test_general_midi_training_map() -> None:
    # For General MIDI corpora: train (and, by default, infer) on the reduced 9-class map.
    conv = GrooveConverter(pitch_classes=REDUCED_DRUM_PITCH_CLASSES)
    assert conv.pitch_classes == REDUCED_DRUM_PITCH_CLASSES
    conv.set_mode("infer")
    assert conv.pitch_classes == REDUCED_DRUM_PITCH_CLASSES
    conv.set_mode("train")
    out = conv.to_tensors(groove_midi([(35, 100, 0.0), (41, 70, STEP), (54, 60, 2 * STEP)])).outputs[0]
    assert out[0, KICK] == 1 and out[1, 4] == 1 and out[2, CLOSED_HH] == 1
    # Decoding writes each class's first pitch of the active map.
    assert [n.pitch for n in conv.to_sequences([out])[0].notes] == [36, 45, 42]
    with pytest.raises(ValueError, match="same number of classes"):
        GrooveConverter(inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES[:8])


def test_decoding() -> None:
    sample = np.zeros((3, 3 * N))
    sample[0, [KICK, N + KICK, 2 * N + KICK]] = 0.9, 0.5, 3.0  # offset clipped to +0.5 step (early)
    sample[1, [SNARE, N + SNARE, 2 * N + SNARE]] = 0.51, 1.2, -0.5  # velocity clipped to 127
    sample[2, [SNARE, 4]] = 0.5, 1.0  # 0.5 is not a hit; low tom hit with velocity 0
    for mode, tom in (("eval", 43), ("infer", 45)):
        conv = GrooveConverter(inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES)
        conv.set_mode(mode)
        (ns,) = conv.to_sequences([sample])
        rows = [(n.pitch, n.velocity, n.start_time, n.end_time, n.instrument, n.is_drum) for n in ns.notes]
        assert rows == [
            (36, 64, -0.5 * STEP, 0.5 * STEP, 9, True),  # round(63.5) = 64
            (38, 127, 1.25 * STEP, 2.25 * STEP, 9, True),  # a late note starts after its step
            (tom, 0, 2 * STEP, 3 * STEP, 9, True),
        ]
        assert ns.qpm == 120.0 and ns.total_time == 0.0
