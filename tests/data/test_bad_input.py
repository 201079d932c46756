"""Bad MIDI gets a clear typed error or an empty result, never a crash or a hang."""

from __future__ import annotations

import io

import mido
import pretty_midi
import pytest

from musicvae.configs import CONFIG_MAP
from musicvae.data.midi_io import MAX_MIDI_BYTES, MidiReadError, read_midi

CONFIG_NAMES = sorted(CONFIG_MAP)


def _melody_bytes(numerator=4, denominator=4, pitches=(60, 62, 64, 65, 67, 69, 71, 72), tempo_change=None, drums=False):
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, denominator, 0))
    inst = pretty_midi.Instrument(program=0)
    for i in range(32):
        inst.notes.append(pretty_midi.Note(90, pitches[i % len(pitches)], i * 0.5, i * 0.5 + 0.45))
    pm.instruments.append(inst)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes += [pretty_midi.Note(100, 36 if i % 4 == 0 else 42, i * 0.125, i * 0.125 + 0.1) for i in range(128)]
        pm.instruments.append(kit)
    buf = io.BytesIO()
    pm.write(buf)
    data = buf.getvalue()
    if tempo_change is None:
        return data
    # pretty_midi writes a single tempo; add a change with mido on track 0
    mid = mido.MidiFile(file=io.BytesIO(data))
    mid.tracks[0].insert(1, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_change), time=mid.ticks_per_beat * 16))
    out = io.BytesIO()
    mid.save(file=out)
    return out.getvalue()


def _raw_midi(resolution: int, note_off_delta: int) -> bytes:
    mid = mido.MidiFile(ticks_per_beat=resolution)
    track = mido.MidiTrack()
    track += [mido.Message("note_on", note=60, velocity=90, time=0), mido.Message("note_off", note=60, time=note_off_delta)]
    mid.tracks.append(track)
    out = io.BytesIO()
    mid.save(file=out)
    return out.getvalue()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"\x8f\x12random bytes that are not midi" * 10, "no MThd header"),
        (b"RIFF....WAVEfmt ", "no MThd header"),
    ],
)
def test_unreadable_bytes_raise_typed_error(data, reason):
    with pytest.raises(MidiReadError, match=reason):
        read_midi(data)


def test_truncated_file_raises_typed_error():
    data = _melody_bytes()
    with pytest.raises(MidiReadError, match="corrupt MIDI"):
        read_midi(data[: len(data) // 2])


@pytest.mark.timeout(60)
def test_absurd_tick_values_are_refused_quickly():
    with pytest.raises(MidiReadError, match="corrupt MIDI"):
        read_midi(_raw_midi(resolution=480, note_off_delta=2_000_000_000))
    # below pretty_midi's tick ceiling but months long at resolution 1
    with pytest.raises(MidiReadError, match="limit"):
        read_midi(_raw_midi(resolution=1, note_off_delta=9_000_000))


def test_oversized_file_is_refused_without_parsing(tmp_path):
    big = tmp_path / "big.mid"
    with open(big, "wb") as f:
        f.write(b"MThd")
        f.truncate(MAX_MIDI_BYTES + 1)
    with pytest.raises(MidiReadError, match="exceeds"):
        read_midi(big)


def test_missing_file_raises_typed_error(tmp_path):
    with pytest.raises(MidiReadError, match="cannot read"):
        read_midi(tmp_path / "nope.mid")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_converter_raises_typed_error_on_corrupt_input(name):
    with pytest.raises(MidiReadError):
        CONFIG_MAP[name].new_converter().to_tensors(b"MThd\x00\x00\x00\x06garbage")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_converter_gives_nothing_for_a_file_without_notes(name):
    pm = pretty_midi.PrettyMIDI()
    pm.instruments.append(pretty_midi.Instrument(program=0))
    result = CONFIG_MAP[name].new_converter().to_tensors(pm)
    assert len(result.inputs) == 0


@pytest.mark.parametrize("meter", [(3, 4), (6, 8)])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_converter_gives_nothing_for_non_16_step_bars(name, meter):
    result = CONFIG_MAP[name].new_converter().to_tensors(_melody_bytes(*meter, drums=True))
    assert len(result.inputs) == 0


def test_out_of_range_pitches_are_dropped_by_melody_converters():
    conv = CONFIG_MAP["cat-mel_2bar_small"].new_converter()
    conv.set_mode("eval")
    result = conv.to_tensors(_melody_bytes(pitches=(5, 60, 127, 64)))
    assert len(result.inputs) > 0
    decoded = conv.to_sequences(result.outputs)
    assert {n.pitch for ns in decoded for n in ns.notes} <= {60, 64}


def test_tempo_change_splits_and_both_sections_convert():
    conv = CONFIG_MAP["cat-mel_2bar_small"].new_converter()
    conv.set_mode("eval")
    conv.max_tensors_per_notesequence = None
    steady = conv.to_tensors(_melody_bytes())
    changed = conv.to_tensors(_melody_bytes(tempo_change=90))
    assert len(steady.inputs) > 0 and len(changed.inputs) > 0
    # GrooVAE does not split: a tempo change means no windows (as in Magenta)
    groove = CONFIG_MAP["groovae_2bar_humanize"].new_converter()
    groove.set_mode("infer")
    assert len(groove.to_tensors(_melody_bytes(tempo_change=90, drums=True)).inputs) == 0
