"""The direct MIDI writer (`midi_io.sequence_to_midi_bytes`) against pretty_midi's, which it replaces.

On decoded outputs of small random models of melody, drum, trio and groove configs, and on hand-made
edge cases, the writer must give the bytes `sequence_to_pretty_midi(ns).write()` gives; and both
files must read back (with pretty_midi and with our reader) to the same notes, programs, drum flags,
tempo and time signatures. The serving note list built from a NoteSequence must equal the one built
from its PrettyMIDI.
"""

from __future__ import annotations

import io

import numpy as np
import pretty_midi
import pytest
import torch

from musicvae.configs import get_config
from musicvae.data.midi_io import bytes_to_sequence, sequence_to_midi_bytes, sequence_to_pretty_midi, write_midi
from musicvae.data.note_sequence import Note, NoteSequence, Tempo, TimeSignature
from musicvae.generate import TrainedModel

TINY = "enc_rnn_size=[16],dec_rnn_size=[16],z_size=4"
CONFIGS = ["cat-mel_2bar_small", "cat-drums_2bar_small.lokl", "hierdec-trio_16bar", "groovae_2bar_humanize"]


def pretty_midi_bytes(ns: NoteSequence) -> bytes:
    buf = io.BytesIO()
    sequence_to_pretty_midi(ns).write(buf)
    return buf.getvalue()


def read_back_pretty_midi(data: bytes) -> tuple:
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    notes = [
        (i, inst.program, inst.is_drum, n.pitch, n.velocity, n.start, n.end)
        for i, inst in enumerate(pm.instruments)
        for n in inst.notes
    ]
    meters = [(ts.numerator, ts.denominator, ts.time) for ts in pm.time_signature_changes]
    times, qpms = pm.get_tempo_changes()
    return notes, meters, list(times), list(qpms)


def read_back_ours(data: bytes) -> tuple:
    ns = bytes_to_sequence(data)
    return ns.notes, ns.tempos, ns.time_signatures, ns.total_time, ns.ticks_per_quarter


def assert_same_file(ns: NoteSequence) -> None:
    ours, theirs = sequence_to_midi_bytes(ns), pretty_midi_bytes(ns)
    assert read_back_pretty_midi(ours) == read_back_pretty_midi(theirs)
    assert read_back_ours(ours) == read_back_ours(theirs)
    assert ours == theirs


@pytest.fixture(scope="module", params=CONFIGS)
def decoded(request) -> list[NoteSequence]:
    config = get_config(request.param).with_hparams(TINY)
    torch.manual_seed(0)
    tm = TrainedModel(config, config.build_model().eval(), max_batch_size=4)
    z = np.random.default_rng(0).standard_normal((4, config.hparams.z_size)).astype(np.float32) * 3
    controls = None
    if tm.converter.control_depth:  # hits-control configs: any hits will do
        controls = np.ones((config.hparams.max_seq_len, tm.converter.control_depth), np.float32)
    seqs = tm.decode(z, temperature=2.0, c_input=controls, seed=1, as_sequences=True)
    assert any(ns.notes for ns in seqs)
    return seqs


def test_decoded_outputs_write_as_pretty_midi_writes_them(decoded):
    for ns in decoded:
        assert_same_file(ns)


def test_generating_methods_agree_on_both_outputs():
    config = get_config("cat-mel_2bar_small").with_hparams(TINY)
    torch.manual_seed(0)
    tm = TrainedModel(config, config.build_model().eval(), max_batch_size=4)
    pms = tm.sample(3, temperature=1.0, seed=5)
    seqs = tm.sample(3, temperature=1.0, seed=5, as_sequences=True)
    buf = io.BytesIO()
    for pm, ns in zip(pms, seqs):
        buf.seek(0)
        buf.truncate()
        pm.write(buf)
        assert sequence_to_midi_bytes(ns) == buf.getvalue()


def note(pitch, start, end, instrument=0, program=0, is_drum=False, velocity=80):
    return Note(pitch, velocity, start, end, instrument, program, is_drum)


EDGE_CASES = {
    "empty": NoteSequence(),
    "no tempo, no meter": NoteSequence(notes=[note(60, 0.0, 0.5)]),
    "3/4 at 0 and 6/8 later": NoteSequence(
        notes=[note(60, 0.0, 0.5), note(62, 0.5, 3.0)],
        tempos=[Tempo(0.0, 90.0)],
        time_signatures=[TimeSignature(0.0, 3, 4), TimeSignature(2.0, 6, 8)],
    ),
    "meter only after 0": NoteSequence(notes=[note(60, 0.0, 0.5)], time_signatures=[TimeSignature(1.0, 3, 4)]),
    "chords, repeats, zero length, same tick": NoteSequence(
        notes=[note(60, 0.0, 0.5), note(64, 0.0, 0.5, velocity=90), note(60, 0.5, 1.0), note(67, 0.25, 0.25), note(60, 0.5, 0.5001)],
        tempos=[Tempo(0.0, 133.7)],
    ),
    "seventeen instruments and drums": NoteSequence(
        notes=[note(40 + i, i * 0.1, i * 0.1 + 1, instrument=i, program=i * 7 % 128) for i in range(17)]
        + [note(36, 0.0, 0.1, instrument=17, is_drum=True), note(42, 0.0, 0.1, instrument=2, program=5, is_drum=True)],
        tempos=[Tempo(0.0, 120.0)],
        ticks_per_quarter=480,
    ),
    "long and fine": NoteSequence(
        notes=[note(60 + i % 12, i * 0.0123, i * 0.0123 + 7.3, velocity=1 + i % 127) for i in range(300)],
        tempos=[Tempo(0.0, 61.0)],
        ticks_per_quarter=960,
    ),
    "negative start": NoteSequence(notes=[note(60, -0.25, 0.5)]),
    "tempo change (pretty_midi's grid)": NoteSequence(
        notes=[note(60, 0.0, 0.5), note(62, 1.0, 2.5)], tempos=[Tempo(0.0, 120.0), Tempo(1.0, 60.0)]
    ),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_write_as_pretty_midi_writes_them(name):
    assert_same_file(EDGE_CASES[name])


def test_write_midi_writes_the_bytes(tmp_path):
    ns = EDGE_CASES["chords, repeats, zero length, same tick"]
    write_midi(ns, tmp_path / "x.mid")
    assert (tmp_path / "x.mid").read_bytes() == pretty_midi_bytes(ns)


@pytest.mark.parametrize(
    "ns",
    [
        NoteSequence(notes=[note(128, 0.0, 1.0)]),
        NoteSequence(notes=[note(60, 0.0, 1.0, velocity=200)]),
        NoteSequence(notes=[note(60, 0.0, 1.0, program=128)]),
        NoteSequence(notes=[note(60, 0.0, 1.0)], time_signatures=[TimeSignature(0.0, 4, 3)]),
    ],
)
def test_what_midi_cannot_hold_is_refused(ns):
    with pytest.raises(ValueError):
        sequence_to_midi_bytes(ns)


def test_note_list_from_a_sequence_is_the_one_from_its_pretty_midi(decoded):
    from serving.operations import sequence_to_notes

    for ns in [*decoded, *EDGE_CASES.values()]:
        if any(t.time for t in ns.tempos):
            continue
        pm = sequence_to_pretty_midi(ns)
        notes = [
            {
                "pitch": n.pitch,
                "velocity": n.velocity,
                "start_time": round(n.start, 6),
                "end_time": round(n.end, 6),
                "instrument": i,
                "program": inst.program,
                "is_drum": inst.is_drum,
            }
            for i, inst in enumerate(pm.instruments)
            for n in inst.notes
        ]
        notes.sort(key=lambda n: (n["start_time"], n["instrument"], n["pitch"]))
        assert sequence_to_notes(ns) == {"qpm": float(pm.get_tempo_changes()[1][0]), "notes": notes}
