"""The C MIDI reader (`musicvae.data._smf`) against the pretty_midi path it replaces.

For every input, both paths must agree exactly: the same NoteSequence (notes in the same order,
instrument numbers, programs, drum flags, bit-identical float times, tempos, time signatures,
total time, resolution), or both refuse the file with MidiReadError. Inputs: the parity fixtures,
the corpus tars under data/ when present, hand-written edge cases, and thousands of mutated files.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import mido
import pytest

from musicvae.data import midi_io
from musicvae.data.midi_io import MidiReadError, bytes_to_sequence, parse_midi, pretty_midi_to_sequence, read_midi
from tests.parity import MIDI_DIR

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
FIXTURE_FILES = sorted(MIDI_DIR.glob("*.mid")) if MIDI_DIR.is_dir() else []


def _exact(x):
    """A comparable form that tells -0.0 from 0.0 and int from bool/numpy scalars."""
    if isinstance(x, float):
        return ("f", x.hex()) if type(x) is float else ("bad type", type(x).__name__)
    if isinstance(x, bool):
        return ("b", x)
    if isinstance(x, int):
        return ("i", x) if type(x) is int else ("bad type", type(x).__name__)
    return ("bad type", type(x).__name__)


def _key(ns):
    notes = [
        tuple(_exact(getattr(n, f)) for f in ("pitch", "velocity", "start_time", "end_time", "instrument", "program",
                                              "is_drum", "quantized_start_step", "quantized_end_step"))
        for n in ns.notes
    ]
    return (
        notes,
        [(_exact(t.time), _exact(t.qpm)) for t in ns.tempos],
        [(_exact(t.time), _exact(t.numerator), _exact(t.denominator)) for t in ns.time_signatures],
        _exact(ns.total_time),
        _exact(ns.ticks_per_quarter),
        ns.steps_per_quarter,
        ns.total_quantized_steps,
    )


def _reference(data: bytes):
    try:
        return _key(pretty_midi_to_sequence(parse_midi(data)))
    except MidiReadError:
        return "refused"


def _fast(data: bytes):
    try:
        return _key(bytes_to_sequence(data))
    except MidiReadError:
        return "refused"


def assert_same(data: bytes, what: str = "") -> None:
    ref, fast = _reference(data), _fast(data)
    if ref != fast:
        if "refused" in (ref, fast):
            pytest.fail(f"{what}: pretty_midi path {'refused' if ref == 'refused' else 'accepted'} the file, "
                        f"the fast reader {'refused' if fast == 'refused' else 'accepted'} it")
        for part, (a, b) in zip(("notes", "tempos", "time_signatures", "total_time", "resolution"), zip(ref, fast)):
            assert a == b, f"{what}: {part} differ"
        assert ref == fast


def _save(mid: mido.MidiFile) -> bytes:
    out = io.BytesIO()
    mid.save(file=out)
    return out.getvalue()


def _file(*tracks, ticks_per_beat=480, type=1) -> bytes:
    mid = mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat)
    for messages in tracks:
        mid.tracks.append(mido.MidiTrack(messages))
    return _save(mid)


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + len(body).to_bytes(4, "big") + body


def _raw(*track_bodies: bytes, division: int = 96, ntracks: int | None = None) -> bytes:
    n = len(track_bodies) if ntracks is None else ntracks
    header = _chunk(b"MThd", (1).to_bytes(2, "big") + n.to_bytes(2, "big", signed=True) + division.to_bytes(2, "big", signed=True))
    return header + b"".join(_chunk(b"MTrk", b) for b in track_bodies)


M, Meta = mido.Message, mido.MetaMessage


def test_extension_is_built():
    assert midi_io._smf is not None, "musicvae.data._smf is not built: pip install --no-build-isolation -e ."
    assert midi_io._smf.set_note_type(midi_io.Note) is True  # slots are filled directly


@pytest.mark.skipif(not FIXTURE_FILES, reason="parity fixtures absent")
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
def test_fixture_files_read_identically(path):
    data = path.read_bytes()
    assert_same(data, path.name)
    # paths, bytes and bytearrays all take the fast reader
    assert _key(read_midi(path)) == _key(read_midi(bytearray(data))) == _fast(data)


def _corpus_members():
    for tar_path in sorted(DATA_DIR.glob("*.tar")):
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".mid", ".midi")):
                    yield f"{tar_path.name}:{member.name}", tar.extractfile(member).read()


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.skipif(not list(DATA_DIR.glob("*.tar")), reason="corpus not built under data/")
def test_corpus_files_read_identically():
    limit = int(os.environ.get("MUSICVAE_FAST_READER_CORPUS_LIMIT", "0")) or None
    checked = 0
    for name, data in _corpus_members():
        assert_same(data, name)
        checked += 1
        if limit and checked >= limit:
            break
    assert checked > 0


EDGE_CASES = {
    "overlapping same pitch closed by one note-off": _file([
        M("note_on", note=60, velocity=50, time=0), M("note_on", note=60, velocity=70, time=10),
        M("note_off", note=60, time=10), Meta("end_of_track", time=5)]),
    "note-off and note-on on the same tick": _file([
        M("note_on", note=60, velocity=50, time=0), M("note_off", note=60, time=96),
        M("note_on", note=60, velocity=51, time=0), M("note_on", note=60, velocity=52, time=0),
        M("note_off", note=60, time=0), M("note_off", note=60, time=96)]),
    "only same-tick notes open: all dropped": _file([
        M("note_on", note=60, velocity=50, time=10), M("note_off", note=60, time=0),
        M("note_off", note=60, time=50), M("note_on", note=61, velocity=50, time=0),
        M("note_off", note=61, time=30)]),
    "note-on velocity 0 ends a note": _file([
        M("note_on", note=64, velocity=90, time=0), M("note_on", note=64, velocity=0, time=48),
        M("note_on", note=65, velocity=90, time=0), M("note_on", note=65, velocity=0, time=48)]),
    "program change mid-track, program read at note-off": _file([
        M("program_change", program=5, time=0), M("note_on", note=60, velocity=90, time=0),
        M("program_change", program=40, time=10), M("note_off", note=60, time=10),
        M("note_on", note=62, velocity=90, time=0), M("note_off", note=62, time=10),
        M("program_change", program=5, time=0), M("note_on", note=63, velocity=90, time=0),
        M("note_off", note=63, time=10)]),
    "tracks, channels and drums": _file(
        [Meta("set_tempo", tempo=400000, time=0), Meta("time_signature", numerator=3, denominator=8, time=0)],
        [M("note_on", channel=9, note=36, velocity=100, time=0), M("note_on", channel=1, note=50, velocity=80, time=0),
         M("note_off", channel=9, note=36, time=12), M("note_off", channel=1, note=50, time=40),
         M("program_change", channel=9, program=25, time=0), M("note_on", channel=9, note=38, velocity=7, time=0),
         M("note_off", channel=9, note=38, time=3)],
        [M("note_on", channel=1, note=50, velocity=80, time=5), M("note_off", channel=1, note=50, time=40),
         M("note_on", channel=0, note=52, velocity=80, time=5), M("note_off", channel=0, note=52, time=40)]),
    "tempo changes on track 0 (repeats dropped) and track 1 (ignored)": _file(
        [Meta("set_tempo", tempo=500000, time=0), Meta("set_tempo", tempo=600000, time=0),
         Meta("set_tempo", tempo=450000, time=333), Meta("set_tempo", tempo=450000, time=100),
         Meta("set_tempo", tempo=300001, time=1), Meta("set_tempo", tempo=300002, time=0),
         Meta("time_signature", numerator=6, denominator=8, time=7), Meta("key_signature", key="F#m", time=0),
         Meta("time_signature", numerator=4, denominator=4, time=0)],
        [Meta("set_tempo", tempo=1000000, time=100), Meta("time_signature", numerator=5, denominator=4, time=0)]
        + [m for i in range(40) for m in (M("note_on", note=40 + i, velocity=1 + i, time=17 * i % 29),
                                          M("note_off", note=40 + i, time=1 + 31 * i % 37))]),
    "sysex, system common and odd metas": _file([
        M("sysex", data=[1, 2, 3], time=0), M("songpos", pos=100, time=0), M("quarter_frame", frame_type=1, time=0),
        Meta("sequence_number", number=7), Meta("smpte_offset", hours=1),
        Meta("text", text="hi"), Meta("lyrics", text="la"), Meta("track_name", name="x"),
        Meta("sequencer_specific", data=(1, 2)), Meta("midi_port", port=3), Meta("channel_prefix", channel=2),
        M("note_on", note=70, velocity=30, time=3), M("pitchwheel", pitch=-100, time=2),
        M("control_change", control=64, value=127, time=1), M("aftertouch", value=3), M("polytouch", note=70, value=3),
        M("note_off", note=70, time=9), Meta("end_of_track", time=0),
        M("note_on", note=71, velocity=30, time=3), M("note_off", note=71, time=9)]),
    "type 0 file": _file([
        Meta("set_tempo", tempo=700000), M("note_on", note=60, velocity=90, channel=3, time=0),
        M("note_on", note=67, velocity=90, channel=9, time=0), M("note_off", note=60, channel=3, time=100),
        M("note_off", note=67, channel=9, time=100)], type=0),
    "type 2 file": _file([M("note_on", note=60, velocity=9), M("note_off", note=60, time=5)],
                         [M("note_on", note=61, velocity=9), M("note_off", note=61, time=5)], type=2),
    "unclosed and spurious notes": _file([
        M("note_off", note=60, time=5), M("note_on", note=60, velocity=9, time=5), M("note_on", note=61, velocity=9)]),
    "resolution 1": _file([M("note_on", note=60, velocity=9), M("note_off", note=60, time=5)], ticks_per_beat=1),
    "negative (SMPTE) division without notes": _file([Meta("set_tempo", tempo=123456), Meta("text", text="x", time=9),
                                                      M("note_on", note=60, velocity=9)], ticks_per_beat=-7000),
    "negative (SMPTE) division with a note is refused": _file([Meta("set_tempo", tempo=123456), M("note_on", note=60, velocity=9),
                                        M("note_off", note=60, time=5)], ticks_per_beat=-7000),
    "zero division is refused": _file([M("note_on", note=60, velocity=9), M("note_off", note=60, time=5)], ticks_per_beat=0),
    "zero tempo on track 0 is refused": _file([Meta("set_tempo", tempo=0), M("note_on", note=60, velocity=9)]),
    "zero tempo on track 1 is ignored": _file([M("note_on", note=60, velocity=9), M("note_off", note=60, time=5)],
                                              [Meta("set_tempo", tempo=0, time=3)]),
    "empty track is refused": _raw(b"\x00\x90\x3c\x40\x10\x80\x3c\x00", b""),
    "no tracks is refused": _file(),
    "large ticks": _file([M("note_on", note=60, velocity=9, time=9_999_000), M("note_off", note=60, time=999)],
                         ticks_per_beat=30000),
    "tick 1e7 is refused": _file([M("note_on", note=60, velocity=9, time=9_999_000), M("note_off", note=60, time=1000)]),
    # hand-written bytes
    "running status after sysex drops the data byte": _raw(
        b"\x00\xf0\x02\x01\xf7" + b"\x00\x05\x01\x02" + b"\x00\x90\x3c\x40\x10\x3c\x00\x00\xff\x2f\x00"),
    "one-byte system messages": _raw(b"\x00\xf6\x00\xf8\x00\xfe\x00\x90\x3c\x40\x10\x80\x3c\x00"),
    "running status on a one-byte message is refused": _raw(b"\x00\xf6\x00\x10"),
    "running status across meta events": _raw(b"\x00\x90\x3c\x40\x00\xff\x01\x00\x10\x3c\x00"),
    "running status without status is refused": _raw(b"\x00\x3c\x40"),
    "undefined status is refused": _raw(b"\x00\xf4"),
    "data byte above 127 is refused": _raw(b"\x00\x90\x3c\x80"),
    "sysex data above 127 is refused": _raw(b"\x00\xf0\x03\x01\x80\xf7"),
    "sysex f0 f7 wrapping is stripped": _raw(b"\x00\xf0\x04\xf0\x01\x02\xf7\x00\xf7\x01\x7f"),
    "unknown meta events do not move the clock (mido drops their delta)": _raw(
        b"\x00\x90\x3c\x40\x30\xff\x60\x00\x10\x80\x3c\x00\x10\xff\x51\x03\x07\xa1\x20\x20\xff\x60\x00"),
    "unknown meta": _raw(b"\x00\xff\x60\x03abc\x00\xff\xe0\x00\x00\x90\x3c\x40\x10\x80\x3c\x00"),
    "short set_tempo is refused": _raw(b"\x00\xff\x51\x02\x07\xa1"),
    "short set_tempo on track 1 is refused too": _raw(b"\x00\x90\x3c\x40", b"\x00\xff\x51\x02\x07\xa1"),
    "one-byte sequence number is refused": _raw(b"\x00\xff\x00\x01\x05"),
    "empty sequence number is fine": _raw(b"\x00\xff\x00\x00\x00\x90\x3c\x40\x10\x80\x3c\x00"),
    "empty channel prefix is refused": _raw(b"\x00\xff\x20\x00"),
    "bad smpte offset is refused": _raw(b"\x00\xff\x54\x05\x01\x3c\x00\x00\x00"),
    "bad key signature is refused": _raw(b"\x00\xff\x59\x02\x08\x00"),
    "zero numerator on track 0 is refused": _raw(b"\x00\xff\x58\x04\x00\x02\x18\x08"),
    "zero numerator on track 1 is fine": _raw(b"\x00\x90\x3c\x40\x10\x80\x3c\x00", b"\x00\xff\x58\x04\x00\x02\x18\x08"),
    "denominator 2**29 is refused (mido's math.log check)": _raw(b"\x00\xff\x58\x04\x04\x1d\x18\x08"),
    "denominator 2**200 is accepted": _raw(b"\x00\xff\x58\x04\x04\xc8\x18\x08\x00\x90\x3c\x40\x10\x80\x3c\x00"),
    "meta after end of track is read": _raw(b"\x00\xff\x2f\x00\x00\x90\x3c\x40\x10\x80\x3c\x00"),
    "long delta varint": _raw(b"\x80\x80\x80\x80\x00\x90\x3c\x40\x80\x80\x10\x80\x3c\x00"),
    "huge delta varint is refused": _raw(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f\x90\x3c\x40"),
    "meta length above 1e6 is refused": _raw(b"\x00\xff\x01\x84\x80\x80\x00"),
    "message straddling the chunk end is refused": _raw(b"\x00\x90\x3c") + b"\x40\x00\x00",
    "chunk longer than the file is refused": _raw(b"\x00\x90\x3c\x40")[:-2],
    "trailing garbage after the last track is ignored": _raw(b"\x00\x90\x3c\x40\x10\x80\x3c\x00") + b"junk",
    "unknown chunk where a track should be is refused": _raw(b"\x00\x90\x3c\x40").replace(b"MTrk", b"XTrk"),
    "long header chunk": (b"MThd\x00\x00\x00\x08\x00\x01\x00\x01\x00\x60\xaa\xbb"
                          + _chunk(b"MTrk", b"\x00\x90\x3c\x40\x10\x80\x3c\x00")),
    "short header chunk is refused": b"MThd\x00\x00\x00\x04\x00\x01\x00\x01" + _chunk(b"MTrk", b"\x00\x90\x3c\x40"),
    "header claims more tracks than present is refused": _raw(b"\x00\x90\x3c\x40", ntracks=2),
    "header claims fewer tracks: rest ignored": _raw(b"\x00\x90\x3c\x40\x10\x80\x3c\x00", b"\x00\x91\x3c\x40\x10\x81\x3c\x00",
                                                    ntracks=1),
    "negative track count is refused": _raw(b"\x00\x90\x3c\x40", ntracks=-1),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases_read_identically(name):
    assert_same(EDGE_CASES[name], name)


def test_edge_cases_cover_both_outcomes():
    outcomes = {name: _fast(data) == "refused" for name, data in EDGE_CASES.items()}
    for name, refused in outcomes.items():
        assert refused == ("refused" in name), name


def _mutations(seed: int, count: int):
    rng = random.Random(seed)
    sources = [p.read_bytes() for p in FIXTURE_FILES] + list(EDGE_CASES.values())
    for _ in range(count):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
            op = rng.randrange(7)
            i = rng.randrange(len(data)) if data else 0
            if op == 0 and data:  # flip a byte
                data[i] = rng.randrange(256)
            elif op == 1:  # insert bytes
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
            elif op == 2 and data:  # delete a run
                del data[i : i + rng.randrange(1, 8)]
            elif op == 3:  # truncate
                del data[rng.randrange(len(data) + 1) :]
            elif op == 4 and len(data) > 14:  # corrupt a header field or a chunk length
                j = rng.choice((4, 8, 10, 12, 18)) + rng.randrange(4)
                if j < len(data):
                    data[j] = rng.choice((0, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            elif op == 5 and data:  # plant a data byte / status byte / varint continuation
                data[i] = rng.choice((0x00, 0x7F, 0x80, 0x90, 0xF0, 0xF7, 0xFF, 0x51, 0x58, 0x2F))
            elif op == 6 and len(data) > 30:  # duplicate a slice
                j = rng.randrange(14, len(data))
                data[j:j] = data[i : i + rng.randrange(1, 40)]
        yield bytes(data)


@pytest.mark.skipif(not FIXTURE_FILES, reason="parity fixtures absent")
@pytest.mark.timeout(600)
def test_mutated_files_read_identically():
    """Differential fuzzing: both readers accept the same mutants and read them the same way."""
    accepted = 0
    seed = int(os.environ.get("MUSICVAE_FUZZ_SEED", "1234"))
    for k, data in enumerate(_mutations(seed=seed, count=int(os.environ.get("MUSICVAE_FUZZ_DIFF", "1500")))):
        assert_same(data, f"mutant {k}")
        accepted += _fast(data) != "refused"
    assert accepted > 100  # the mutants exercise the accepting paths too


@pytest.mark.timeout(300)
def test_random_bytes_never_crash_the_fast_reader():
    """Many more mutants and pure noise through the C reader alone: a result or MidiReadError."""
    rng = random.Random(99)
    inputs = list(_mutations(seed=4321, count=int(os.environ.get("MUSICVAE_FUZZ_FAST", "20000"))))
    for _ in range(3000):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        inputs.append(_raw(body, division=rng.randrange(-(2**15), 2**15)))
        inputs.append(b"MThd" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))))
    for data in inputs:
        try:
            ns = bytes_to_sequence(data)
        except MidiReadError:
            continue
        assert all(type(n.start_time) is float and type(n.pitch) is int for n in ns.notes)


def _random_sequences(seed: int, count: int):
    from musicvae.data.note_sequence import Note, NoteSequence, Tempo, TimeSignature

    rng = random.Random(seed)
    for _ in range(count):
        notes = []
        for _ in range(rng.randrange(0, 40)):
            start = rng.choice((0.0, -0.0, rng.uniform(0, 30), rng.uniform(-0.2, 0.1), float(rng.randrange(20)) / 8))
            end = start + rng.choice((0.0, rng.uniform(0, 3), 1e-12, 0.125))
            notes.append(Note(rng.randrange(128), rng.randrange(128), start, end, rng.randrange(3), rng.randrange(128)))
        tempos = [Tempo(0.0, rng.choice((120.0, 90.0, 133.7)))] + [
            Tempo(rng.uniform(0, 30), rng.choice((120.0, 60.0, 200.0))) for _ in range(rng.randrange(3))]
        meters = [TimeSignature(rng.uniform(0, 30), rng.choice((4, 3)), 4) for _ in range(rng.randrange(3))]
        total = max([0.0] + [n.end_time for n in notes])
        yield NoteSequence(notes=notes, tempos=tempos, time_signatures=meters, total_time=total)


def test_c_note_helpers_match_the_python_code(monkeypatch):
    """split_on_time_changes and quantize give identical sequences with and without the C helpers."""
    from musicvae.data import sequences

    def run(ns):
        out = []
        for piece in sequences.split_on_time_changes(ns) + [ns]:
            try:
                q = sequences.quantize(piece)
            except sequences.QuantizationError as e:
                q = type(e).__name__
            out.append((_key(piece), q if isinstance(q, str) else _key(q)))
        return out

    seqs = list(_random_sequences(7, 400)) + [read_midi(p) for p in FIXTURE_FILES]
    fast = [run(ns) for ns in seqs]
    monkeypatch.setattr(sequences, "_smf", None)
    slow = [run(ns) for ns in seqs]
    assert fast == slow


def test_c_melody_loop_matches_the_python_code(monkeypatch):
    """extract_melodies gives identical melodies with and without _smf.melody_events."""
    from musicvae.data import melody, sequences

    def run(ns):
        out = []
        for piece in sequences.split_on_time_changes(ns):
            try:
                q = sequences.quantize(piece)
            except sequences.QuantizationError:
                continue
            for gap in (1.0, float("inf"), 2):
                for m in melody.extract_melodies(q, gap, 64):
                    out.append((gap, m.start_step, list(m.events)))
        return out

    seqs = list(_random_sequences(11, 300)) + [read_midi(p) for p in FIXTURE_FILES]
    for ns in seqs[:150]:  # some drums and silent notes too
        for n in ns.notes[::3]:
            n.is_drum, n.velocity = True, n.velocity
        for n in ns.notes[1::5]:
            n.velocity = 0
    fast = [run(ns) for ns in seqs]
    assert sum(map(len, fast)) > 300
    monkeypatch.setattr(melody, "_smf", None)
    assert [run(ns) for ns in seqs] == fast
