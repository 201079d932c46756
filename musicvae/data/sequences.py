"""Splitting and quantising note sequences, with note_seq's exact semantics.

Every converter quantises at 4 steps per quarter and keeps only sections whose bars have 16
steps; those that split do so first at tempo and time-signature changes (each piece then has a
single tempo and meter, which quantisation requires).
"""

from __future__ import annotations

from dataclasses import replace
from operator import attrgetter
from typing import NamedTuple

from musicvae.data.note_sequence import DEFAULT_QPM, Note, NoteSequence, Tempo, TimeSignature

try:  # C helpers that copy notes without dataclasses.replace; None falls back to the Python code
    from musicvae.data import _smf
except ImportError:
    _smf = None
else:
    _smf.set_note_type(Note)

_start_time = attrgetter("start_time")
_end_time = attrgetter("end_time")
_time = attrgetter("time")

QUANTIZE_CUTOFF = 0.5


class QuantizationError(ValueError):
    """Base class: the sequence cannot be quantised relative to its tempo."""


class MultipleTimeSignatureError(QuantizationError):
    pass


class MultipleTempoError(QuantizationError):
    pass


class BadTimeSignatureError(QuantizationError):
    pass


class NegativeTimeError(QuantizationError):
    pass


def _moved(event: Tempo | TimeSignature, time: float) -> Tempo | TimeSignature:
    """dataclasses.replace(event, time=time), constructed directly for the two known types."""
    if type(event) is Tempo:
        return Tempo(time, event.qpm)
    if type(event) is TimeSignature:
        return TimeSignature(time, event.numerator, event.denominator)
    return replace(event, time=time)


def _extract_subsequences(ns: NoteSequence, split_times: list[float], raw: bool = False):
    """Cut at `split_times`, shifting each piece to time 0 and carrying the active tempo/meter.

    Notes are reordered by start time (a stable sort), as note_seq does; converters that
    break ties by order depend on it. With `raw`, see split_pieces (None without the C helper).
    """
    n_parts = len(split_times) - 1
    parts = [NoteSequence(ticks_per_quarter=ns.ticks_per_quarter) for _ in range(n_parts)]
    # Assign the (start-sorted) notes to pieces, then copy them moved to the piece's origin.
    members: list[list[Note]] = [[] for _ in range(n_parts)]
    index = -1
    ordered = sorted(ns.notes, key=_start_time)
    fast = _smf.split_notes(ordered, split_times, not raw) if _smf is not None else None
    if raw and fast is None:
        return None
    raw_pieces = []
    if fast is not None:  # the note loops below, in C
        for index, (part, (notes, total)) in enumerate(zip(parts, fast)):
            part.total_time = total
            if raw:
                raw_pieces.append(RawPiece(part, notes, split_times[index], split_times[index + 1]))
            else:
                part.notes = notes
        ordered = members = []
    elif n_parts == 1:  # the common case, the loop below specialised (members[-1] is members[0])
        first, last = split_times
        append = members[0].append
        for note in ordered:
            t = note.start_time
            if t < first:
                continue
            if t >= last:
                break
            append(note)
        ordered = []
    for note in ordered:
        if note.start_time < split_times[0]:
            continue
        while index < n_parts and note.start_time >= split_times[index + 1]:
            index += 1
            if index == n_parts:
                break
        if index == n_parts:
            break
        members[index].append(note)
    for index, (part, notes) in enumerate(zip(parts, members)):
        offset, limit = split_times[index], split_times[index + 1]
        shifted = _smf.shift_notes(notes, offset, limit) if _smf is not None else None
        if shifted is None:
            shifted = [
                replace(n, start_time=n.start_time - offset, end_time=min(n.end_time, limit) - offset) for n in notes
            ]
        part.notes = shifted
        total = part.total_time
        for end in map(_end_time, shifted):
            if end > total:
                total = end
        part.total_time = total

    # Stateful events: the one in force at a boundary is repeated at time 0 of the next piece.
    for events, attr in ((ns.time_signatures, "time_signatures"), (ns.tempos, "tempos")):
        previous = None
        index = -1
        for event in sorted(events, key=_time):
            if event.time <= split_times[0]:
                previous = event
                continue
            while index < n_parts and event.time > split_times[index + 1]:
                index += 1
                if index == n_parts:
                    break
                if previous is not None:
                    getattr(parts[index], attr).append(_moved(previous, 0.0))
            if index == n_parts:
                break
            if event.time < split_times[index + 1]:
                getattr(parts[index], attr).append(_moved(event, event.time - split_times[index]))
            previous = event
        while index < n_parts - 1:
            index += 1
            if previous is not None:
                getattr(parts[index], attr).append(_moved(previous, 0.0))
    return raw_pieces if raw else parts


class RawPiece(NamedTuple):
    """A piece of split_on_time_changes before its notes are moved: `piece` has everything but
    its notes (tempos, meters, total time); `notes` are the piece's notes of the original
    sequence, which the piece holds moved by -offset with ends clipped at `limit`."""

    piece: NoteSequence
    notes: list[Note]
    offset: float
    limit: float

    def shifted(self) -> NoteSequence:
        """The piece with its notes, as split_on_time_changes returns it."""
        offset, limit = self.offset, self.limit
        notes = _smf.shift_notes(self.notes, offset, limit) if _smf is not None else None
        if notes is None:
            notes = [
                replace(n, start_time=n.start_time - offset, end_time=min(n.end_time, limit) - offset)
                for n in self.notes
            ]
        return self.piece.with_notes(notes)


def split_pieces(ns: NoteSequence) -> list[RawPiece] | None:
    """split_on_time_changes without copying the notes (converters that read them once move
    them as they go), or None when the C helper cannot do it."""
    split_times = _split_times(ns)
    if len(split_times) < 2:
        return []
    return _extract_subsequences(ns, split_times, raw=True)


def split_on_time_changes(ns: NoteSequence) -> list[NoteSequence]:
    """note_seq.split_note_sequence_on_time_changes (never skipping splits inside notes)."""
    split_times = _split_times(ns)
    if len(split_times) < 2:
        return []
    return _extract_subsequences(ns, split_times)


def _split_times(ns: NoteSequence) -> list[float]:
    numerator, denominator, qpm = 4, 4, DEFAULT_QPM
    changes: list[TimeSignature | Tempo] = sorted(
        [*ns.time_signatures, *ns.tempos], key=lambda e: e.time
    )
    split_times = [0.0]
    for change in changes:
        if change.time >= ns.total_time:
            continue
        if isinstance(change, TimeSignature):
            if (change.numerator, change.denominator) == (numerator, denominator):
                continue
        elif change.qpm == qpm:
            continue
        if change.time > split_times[-1]:
            split_times.append(change.time)
        if isinstance(change, TimeSignature):
            numerator, denominator = change.numerator, change.denominator
        else:
            qpm = change.qpm
    if ns.total_time > split_times[-1]:
        split_times.append(ns.total_time)
    return split_times


def quantize_to_step(seconds: float, steps_per_second: float) -> int:
    return int(seconds * steps_per_second + (1 - QUANTIZE_CUTOFF))


def _is_power_of_2(x: int) -> bool:
    return x > 0 and not x & (x - 1)


def _quantized(
    source: NoteSequence, notes: list[Note], tempo: Tempo, meter: TimeSignature, steps_per_quarter: int, total_steps: int
) -> NoteSequence:
    """The quantised sequence: `source`'s timing header with its single tempo and meter, and `notes`."""
    return NoteSequence(
        notes=notes,
        tempos=[tempo],
        time_signatures=[meter],
        total_time=source.total_time,
        ticks_per_quarter=source.ticks_per_quarter,
        steps_per_quarter=steps_per_quarter,
        total_quantized_steps=total_steps,
    )


def quantize(ns: NoteSequence, steps_per_quarter: int = 4) -> NoteSequence:
    """note_seq.quantize_note_sequence: a quantised copy, or a typed QuantizationError."""
    tempo, meter, steps_per_second = quantize_params(ns, steps_per_quarter)
    total_steps = quantize_to_step(ns.total_time, steps_per_second)
    fast = _smf.quantize_notes(ns.notes, steps_per_second) if _smf is not None else None
    if fast is not None:
        notes, max_end = fast
        if max_end is not None and max_end > total_steps:
            total_steps = max_end
        return _quantized(ns, notes, tempo, meter, steps_per_quarter, total_steps)
    notes = []
    for note in ns.notes:
        start = quantize_to_step(note.start_time, steps_per_second)
        end = quantize_to_step(note.end_time, steps_per_second)
        if end == start:
            end += 1
        if start < 0 or end < 0:
            raise NegativeTimeError(f"negative note time: start step {start}, end step {end}")
        if end > total_steps:
            total_steps = end
        notes.append(replace(note, quantized_start_step=start, quantized_end_step=end))
    return _quantized(ns, notes, tempo, meter, steps_per_quarter, total_steps)


def quantize_piece(raw: RawPiece, notes: list[Note], steps_per_quarter: int = 4) -> NoteSequence | None:
    """quantize(piece) for the piece of `raw` holding `notes` (some of raw.notes, in order), moving
    and quantising the notes in one copy; raises as quantize does, or returns None when the C
    helper declines (unusual notes, negative times: quantize(raw.shifted()...) then decides)."""
    tempo, meter, steps_per_second = quantize_params(raw.piece, steps_per_quarter)
    fast = _smf.quantize_notes(notes, steps_per_second, raw.offset, raw.limit) if _smf is not None else None
    if fast is None:
        return None
    notes, max_end = fast
    total_steps = quantize_to_step(raw.piece.total_time, steps_per_second)
    if max_end is not None and max_end > total_steps:
        total_steps = max_end
    return _quantized(raw.piece, notes, tempo, meter, steps_per_quarter, total_steps)


def quantize_params(ns: NoteSequence, steps_per_quarter: int = 4) -> tuple[Tempo, TimeSignature, float]:
    """The checks of `quantize` on tempos and meters: (tempo, meter, steps per second) or its error."""
    time_signatures = sorted(ns.time_signatures, key=lambda t: t.time)
    if time_signatures:
        first = time_signatures[0]
        if first.time != 0 and (first.numerator, first.denominator) != (4, 4):
            raise MultipleTimeSignatureError(
                f"implicit change from 4/4 to {first.numerator}/{first.denominator} at {first.time:.2f} s"
            )
        original_first = ns.time_signatures[0]
        for ts in time_signatures[1:]:
            if (ts.numerator, ts.denominator) != (original_first.numerator, original_first.denominator):
                raise MultipleTimeSignatureError(
                    f"time signature changes to {ts.numerator}/{ts.denominator} at {ts.time:.2f} s"
                )
        meter = TimeSignature(0.0, original_first.numerator, original_first.denominator)
    else:
        meter = TimeSignature(0.0, 4, 4)
    if not _is_power_of_2(meter.denominator):
        raise BadTimeSignatureError(f"denominator is not a power of 2: {meter.numerator}/{meter.denominator}")
    if meter.numerator == 0:
        raise BadTimeSignatureError(f"numerator is 0: {meter.numerator}/{meter.denominator}")

    tempos = sorted(ns.tempos, key=lambda t: t.time)
    if tempos:
        if tempos[0].time != 0 and tempos[0].qpm != DEFAULT_QPM:
            raise MultipleTempoError(f"implicit tempo change from 120 to {tempos[0].qpm:.1f} qpm")
        for t in tempos[1:]:
            if t.qpm != ns.tempos[0].qpm:
                raise MultipleTempoError(f"tempo changes to {t.qpm:.1f} qpm at {t.time:.2f} s")
        tempo = Tempo(0.0, ns.tempos[0].qpm)
    else:
        tempo = Tempo(0.0, DEFAULT_QPM)

    return tempo, meter, steps_per_quarter * tempo.qpm / 60.0


def steps_per_bar(qns: NoteSequence) -> float:
    meter = qns.time_signatures[0]
    return qns.steps_per_quarter * (4.0 / meter.denominator) * meter.numerator


def extract_instrument(ns: NoteSequence, instrument: int) -> NoteSequence:
    return ns.with_notes([n for n in ns.notes if n.instrument == instrument])


__all__ = [
    "BadTimeSignatureError",
    "MultipleTempoError",
    "MultipleTimeSignatureError",
    "NegativeTimeError",
    "Note",
    "QuantizationError",
    "extract_instrument",
    "quantize",
    "quantize_params",
    "quantize_piece",
    "quantize_to_step",
    "split_on_time_changes",
    "split_pieces",
    "steps_per_bar",
]
