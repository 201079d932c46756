"""Reading and writing MIDI: the one place where bytes become a `NoteSequence` and back.

Parsing follows Magenta's `note_seq.midi_io.midi_to_note_sequence` exactly (instruments are
numbered in pretty_midi's order), because every converter's output depends on it. Bytes and paths
go through `_smf`, a C reader that yields the very NoteSequence the pretty_midi path yields (same
notes, order, instruments, bit-identical times, same accepted/refused files; see
tests/data/test_fast_reader.py) at a small fraction of the cost; PrettyMIDI objects still go
through `pretty_midi_to_sequence`. Unlike note_seq, the work per file is bounded: the byte size is
capped and pretty_midi's own tick ceiling (1e7) is kept, so a corrupt header cannot allocate
gigabytes.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Union

import pretty_midi

from musicvae.data.note_sequence import DEFAULT_QPM, Note, NoteSequence, Tempo, TimeSignature

MAX_MIDI_BYTES = 16 * 1024 * 1024  # far above any real song; keeps per-file work bounded
# Converters build per-step event lists, so a file claiming days of music (tiny resolution, huge
# ticks) would cost gigabytes; four hours is far beyond any piece MusicVAE windows come from.
MAX_DURATION_SECONDS = 4 * 3600.0

try:
    from musicvae.data import _smf
except ImportError:  # extension not built: the (slower) pretty_midi path gives the same result
    _smf = None
else:
    _smf.set_note_type(Note)

# mido checks a time signature's denominator 2**k with math.log(2**k, 2) == int(...), which is
# inexact for some k: such files are refused there, so they are here too.
_BAD_DENOMINATORS = bytes(math.log(2**k, 2) != int(math.log(2**k, 2)) for k in range(256))

MidiSource = Union[str, os.PathLike, bytes, pretty_midi.PrettyMIDI, NoteSequence]


class MidiReadError(ValueError):
    """A MIDI file could not be read (corrupt, empty, too large, absurd timing)."""


def read_midi_bytes(path: str | os.PathLike, max_bytes: int = MAX_MIDI_BYTES) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise MidiReadError(f"{p}: cannot read file ({e.strerror or e})") from e
    if size > max_bytes:
        raise MidiReadError(f"{p}: {size} bytes exceeds the {max_bytes}-byte limit for a MIDI file")
    return p.read_bytes()


def _check_bytes(data: bytes, name: str, max_bytes: int) -> None:
    if not data:
        raise MidiReadError(f"{name}: empty file")
    if len(data) > max_bytes:
        raise MidiReadError(f"{name}: {len(data)} bytes exceeds the {max_bytes}-byte limit for a MIDI file")
    if not data.startswith(b"MThd"):
        raise MidiReadError(f"{name}: not a Standard MIDI File (no MThd header)")


def parse_midi(data: bytes, name: str = "<bytes>", max_bytes: int = MAX_MIDI_BYTES) -> pretty_midi.PrettyMIDI:
    _check_bytes(data, name, max_bytes)
    try:
        with warnings.catch_warnings():
            # pretty_midi warns about meta events on non-zero tracks; they are still honoured.
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as e:  # mido/pretty_midi raise many unrelated types for corrupt files
        raise MidiReadError(f"{name}: corrupt MIDI ({type(e).__name__}: {e})") from e


def pretty_midi_to_sequence(midi: pretty_midi.PrettyMIDI) -> NoteSequence:
    """Magenta's midi_to_note_sequence: notes grouped by pretty_midi instrument, in its order."""
    ns = NoteSequence(ticks_per_quarter=int(midi.resolution))
    for ts in midi.time_signature_changes:
        ns.time_signatures.append(TimeSignature(float(ts.time), int(ts.numerator), int(ts.denominator)))
    times, qpms = midi.get_tempo_changes()
    for t, q in zip(times, qpms):
        ns.tempos.append(Tempo(float(t), float(q)))
    total = 0.0
    for index, inst in enumerate(midi.instruments):
        program, is_drum = int(inst.program), bool(inst.is_drum)
        for n in inst.notes:
            start, end = float(n.start), float(n.end)
            ns.notes.append(Note(int(n.pitch), int(n.velocity), start, end, index, program, is_drum))
            if end > total:
                total = end
    ns.total_time = total
    _check_duration(total)
    return ns


def _check_duration(total: float) -> None:
    if total > MAX_DURATION_SECONDS:
        raise MidiReadError(f"notes run to {total:.0f} s, beyond the {MAX_DURATION_SECONDS:.0f}-second limit (absurd timing?)")


def bytes_to_sequence(data: bytes, name: str = "<bytes>", max_bytes: int = MAX_MIDI_BYTES) -> NoteSequence:
    """Standard MIDI File bytes -> NoteSequence, exactly as `pretty_midi_to_sequence(parse_midi(data))`."""
    if _smf is None:
        return pretty_midi_to_sequence(parse_midi(data, name, max_bytes))
    _check_bytes(data, name, max_bytes)
    try:
        resolution, tempos, time_signatures, notes, total = _smf.parse(data, _BAD_DENOMINATORS)
    except _smf.SmfError as e:
        raise MidiReadError(f"{name}: corrupt MIDI ({e})") from None
    ns = NoteSequence(
        notes=notes,
        tempos=[Tempo(t, q) for t, q in tempos],
        time_signatures=[TimeSignature(t, n, 1 << k) for t, n, k in time_signatures],
        total_time=total,
        ticks_per_quarter=resolution,
    )
    _check_duration(total)
    return ns


def read_midi(source: MidiSource, max_bytes: int = MAX_MIDI_BYTES) -> NoteSequence:
    """Read a path, raw bytes, a PrettyMIDI object or a NoteSequence into a NoteSequence.

    Raises MidiReadError with the reason for anything that is not a readable MIDI file.
    """
    if isinstance(source, NoteSequence):
        return source
    if isinstance(source, pretty_midi.PrettyMIDI):
        return pretty_midi_to_sequence(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes_to_sequence(bytes(source), max_bytes=max_bytes)
    if isinstance(source, (str, os.PathLike)):
        return bytes_to_sequence(read_midi_bytes(source, max_bytes), str(source), max_bytes)
    raise TypeError(f"cannot read MIDI from {type(source).__name__}")


def sequence_to_pretty_midi(ns: NoteSequence) -> pretty_midi.PrettyMIDI:
    """Magenta's note_sequence_to_pretty_midi: one pretty_midi instrument per (instrument, program, drum)."""
    initial = next((t.qpm for t in ns.tempos if t.time == 0), DEFAULT_QPM)
    pm = pretty_midi.PrettyMIDI(resolution=ns.ticks_per_quarter or 220, initial_tempo=initial)
    for ts in ns.time_signatures:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(ts.numerator, ts.denominator, ts.time))
    later = sorted((t for t in ns.tempos if t.time != 0), key=lambda t: t.time)
    if later:
        # pretty_midi has no public API for tempo changes; rebuild its tick scales as note_seq does.
        for t in later:
            tick = pm.time_to_tick(t.time)
            pm._tick_scales.append((tick, 60.0 / (t.qpm * pm.resolution)))
            pm._update_tick_to_time(tick)
    instruments: dict[tuple[int, int, bool], pretty_midi.Instrument] = {}
    for n in ns.notes:
        key = (n.instrument, n.program, n.is_drum)
        if key not in instruments:
            instruments[key] = pretty_midi.Instrument(program=n.program, is_drum=n.is_drum)
        instruments[key].notes.append(pretty_midi.Note(n.velocity, n.pitch, n.start_time, n.end_time))
    pm.instruments.extend(instruments[k] for k in sorted(instruments))
    return pm


# --- writing -----------------------------------------------------------------------------------------
# `sequence_to_midi_bytes` writes the very bytes `sequence_to_pretty_midi(ns).write(...)` writes (a
# timing track, then one track per instrument; the same channels, event order, running status and
# end-of-track deltas), from event lists built directly: no PrettyMIDI or mido objects, ~20x cheaper
# per decoded 2-bar file. tests/data/test_midi_writer.py checks the bytes against pretty_midi's.

_ORDER_TEMPO, _ORDER_METER, _ORDER_PROGRAM, _ORDER_NOTE = 1 << 16, 2 << 16, 6 << 16, 10 << 16
_END_OF_TRACK = b"\xff\x2f\x00"


def _varlen(value: int, out: bytearray) -> None:
    """A MIDI variable-length quantity (delta times), as mido's encode_variable_int."""
    if value < 0x80:
        out.append(value)
        return
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append((value & 0x7F) | 0x80)
        value >>= 7
    out.extend(reversed(groups))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """An MTrk chunk from (tick, sort key, message bytes); pretty_midi's order, mido's running status."""
    events.sort(key=lambda e: (e[0], e[1]))  # stable, as pretty_midi's cmp sort
    data = bytearray()
    tick = running = 0
    for t, _, msg in events:
        _varlen(t - tick, data)
        tick = t
        if msg[0] == 0xFF:
            data += msg
            running = 0
        elif msg[0] == running:
            data += msg[1:]
        else:
            data += msg
            running = msg[0]
    data.append(1)  # end of track one tick after the last event, as pretty_midi puts it
    data += _END_OF_TRACK
    return b"MTrk" + len(data).to_bytes(4, "big") + bytes(data)


def _byte(value: int, what: str) -> int:
    if not 0 <= value <= 127:
        raise ValueError(f"{what} {value} is outside MIDI's 0-127")
    return value


def sequence_to_midi_bytes(ns: NoteSequence) -> bytes:
    """Standard MIDI File bytes for `ns`: the bytes `sequence_to_pretty_midi(ns).write(...)` gives."""
    if any(t.time != 0 for t in ns.tempos):  # tempo changes: pretty_midi's tick grid (rare for decoded music)
        buf = io.BytesIO()
        sequence_to_pretty_midi(ns).write(buf)
        return buf.getvalue()
    resolution = ns.ticks_per_quarter or 220
    qpm = next((t.qpm for t in ns.tempos), DEFAULT_QPM)
    scale = 60.0 / (qpm * resolution)  # seconds per tick, as pretty_midi's _tick_scales

    def tick(time: float) -> int:
        return int(round(time / scale)) if time > 0 else 0  # pretty_midi's time_to_tick on one tempo

    tempo = int(6e7 / (60.0 / (scale * resolution)))
    if not 0 <= tempo <= 0xFFFFFF:
        raise ValueError(f"tempo {qpm} qpm cannot be written to MIDI")
    timing = []
    if not ns.time_signatures or min(ts.time for ts in ns.time_signatures) > 0.0:
        timing.append((0, _ORDER_METER, b"\xff\x58\x04\x04\x02\x18\x08"))
    timing.append((0, _ORDER_TEMPO, b"\xff\x51\x03" + tempo.to_bytes(3, "big")))
    for ts in ns.time_signatures:
        den = ts.denominator
        if den <= 0 or den & (den - 1) or not 0 <= ts.numerator <= 255:
            raise ValueError(f"time signature {ts.numerator}/{den} cannot be written to MIDI")
        timing.append((tick(ts.time), _ORDER_METER, bytes((0xFF, 0x58, 4, ts.numerator, den.bit_length() - 1, 24, 8))))
    tracks = [_track(timing)]

    groups: dict[tuple[int, int, bool], list] = {}
    for n in ns.notes:
        groups.setdefault((n.instrument, n.program, n.is_drum), []).append(n)
    melodic = [c for c in range(16) if c != 9]
    for index, key in enumerate(sorted(groups)):
        _, program, is_drum = key
        channel = 9 if is_drum else melodic[index % len(melodic)]
        on = 0x90 | channel
        events = [(0, _ORDER_PROGRAM, bytes((0xC0 | channel, _byte(program, "program"))))]
        for n in groups[key]:
            pitch, velocity = _byte(n.pitch, "pitch"), _byte(n.velocity, "velocity")
            events.append((tick(n.start_time), _ORDER_NOTE + (pitch << 8) + velocity, bytes((on, pitch, velocity))))
            events.append((tick(n.end_time), _ORDER_NOTE + (pitch << 8), bytes((on, pitch, 0))))
        tracks.append(_track(events))
    header = b"MThd\x00\x00\x00\x06\x00\x01" + len(tracks).to_bytes(2, "big") + resolution.to_bytes(2, "big")
    return header + b"".join(tracks)


def write_midi(ns: NoteSequence, path: str | os.PathLike) -> None:
    Path(path).write_bytes(sequence_to_midi_bytes(ns))
