"""What the services do, in one place: the HTTP service (`serving/service.py`) and the gRPC server
(`serving/grpc_server.py`) both validate through `serving.schemas`, call `Operations` and map its
`ServingError`s onto their status codes; neither touches `TrainedModel` directly.

    registry = ModelRegistry.load(["cat-mel_2bar_small"])     # packaged models (BentoML store) or checkpoints
    ops = Operations(registry)
    out = ops.sample(SampleRequest(num_outputs=4, format="zip")).result()   # Generated
    body, media_type, headers = out.http_body()

Every model call runs on one worker thread per process (`ModelWorker`), fed by a bounded queue: the
callers (the HTTP event loop, gRPC's handler threads) only wait on a future, a full queue is refused at
once (`Overloaded`: HTTP 429, gRPC RESOURCE_EXHAUSTED) instead of piling up memory, and sampling
requests that agree on (config, temperature, length) and carry no seed are decoded together in one
batch as they queue up (adaptive batching: one request alone is decoded alone, a burst is decoded as
one batch of up to `max_batch_rows` sequences). A seeded request is decoded on its own, in batches of
min(8, num_outputs) rows as `music_vae_generate --seed` does, so it gives the same notes as that
command with the same checkpoint.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import io
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Union

import numpy as np
import pretty_midi
import pydantic

from musicvae.convert import ZIP_DATE
from musicvae.data.midi_io import MidiReadError, sequence_to_midi_bytes
from musicvae.data.note_sequence import Note as SeqNote
from musicvae.data.note_sequence import NoteSequence, Tempo, TimeSignature
from musicvae.generate import ExtractionError, MultipleExtractedExamplesError, NoExtractedExamplesError, TrainedModel, slerp
from musicvae.nn import sampler

from serving.schemas import (
    MAX_UPLOAD_BYTES,
    DecodeRequest,
    GrooveOperation,
    InterpolateRequest,
    NoteList,
    OutputFormat,
    SampleRequest,
)

log = logging.getLogger(__name__)
_DEFAULT_GC_THRESHOLDS = gc.get_threshold()

MidiInput = Union[bytes, NoteList]  # an uploaded Standard MIDI File or a note list

SEEDED_BATCH_ROWS = 8  # music_vae_generate's --max_batch_size default


# --- errors: one class per client-visible outcome, with its HTTP status and gRPC code ----------------


class ServingError(Exception):
    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """Unreadable MIDI, out-of-range parameters, malformed fields."""

    http_status, grpc_code = 400, "INVALID_ARGUMENT"


class Unsupported(ServingError):
    """The operation exists but the named model cannot do it (humanize on a melody model, ...)."""

    http_status, grpc_code = 400, "FAILED_PRECONDITION"


class ModelNotFound(ServingError):
    http_status, grpc_code = 404, "NOT_FOUND"


class TooLarge(ServingError):
    http_status, grpc_code = 413, "RESOURCE_EXHAUSTED"


class Unprocessable(ServingError):
    """A readable input without exactly one window the model can take (Magenta's extraction errors)."""

    http_status, grpc_code = 422, "INVALID_ARGUMENT"


class Overloaded(ServingError):
    http_status, grpc_code = 429, "RESOURCE_EXHAUSTED"


class TimedOut(ServingError):
    http_status, grpc_code = 503, "DEADLINE_EXCEEDED"


def validation_message(err: pydantic.ValidationError) -> str:
    """'num_outputs: Input should be less than or equal to 64; ...' from a pydantic error."""
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e.get("loc", ())) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def validate(model: type[pydantic.BaseModel], **fields: Any) -> Any:
    """Build a request model from loose fields (gRPC), as InvalidInput with pydantic's reasons."""
    try:
        return model(**fields)
    except pydantic.ValidationError as e:
        raise InvalidInput(validation_message(e)) from None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Library exceptions -> ServingError; anything else stays a 500 (and is logged by the caller)."""
    try:
        yield
    except ServingError:
        raise
    except MidiReadError as e:
        raise InvalidInput(f"malformed MIDI: {e}") from None
    except (NoExtractedExamplesError, MultipleExtractedExamplesError, ExtractionError) as e:
        raise Unprocessable(str(e)) from None
    except pydantic.ValidationError as e:
        raise InvalidInput(validation_message(e)) from None
    except KeyError as e:  # get_config's unknown-name error
        raise ModelNotFound(str(e.args[0]) if e.args else "not found") from None
    except ValueError as e:
        raise InvalidInput(str(e)) from None


# --- inputs and outputs -----------------------------------------------------------------------------


def midi_source(data: MidiInput, name: str) -> bytes | NoteSequence:
    """An upload as something `TrainedModel` reads: bytes (size-checked) or a NoteSequence."""
    if isinstance(data, NoteList):
        return note_list_to_sequence(data)
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidInput(f"{name}: expected MIDI bytes or a note list")
    if len(data) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"{name}: {len(data)} bytes is over the {MAX_UPLOAD_BYTES}-byte limit for one MIDI file")
    if not data:
        raise InvalidInput(f"malformed MIDI: {name} is empty")
    if not bytes(data[:4]) == b"MThd":
        raise InvalidInput(f"malformed MIDI: {name} is not a Standard MIDI File (no MThd header)")
    return bytes(data)


def note_list_to_sequence(notes: NoteList) -> NoteSequence:
    seq = [
        SeqNote(n.pitch, n.velocity, n.start_time, n.end_time, n.instrument, n.program, n.is_drum)
        for n in sorted(notes.notes, key=lambda n: (n.start_time, n.pitch))
    ]
    total = max((n.end_time for n in seq), default=0.0)
    return NoteSequence(notes=seq, tempos=[Tempo(0.0, notes.qpm)], time_signatures=[TimeSignature(0.0, 4, 4)], total_time=total)


def sequence_to_notes(ns: NoteSequence) -> dict[str, Any]:
    """A decoded NoteSequence as a note list (NoteList's JSON shape): instruments numbered as in its MIDI file."""
    resolution = ns.ticks_per_quarter or 220
    qpm = next((t.qpm for t in ns.tempos if t.time == 0), 120.0)
    qpm = 60.0 / (60.0 / (qpm * resolution) * resolution)  # as pretty_midi's get_tempo_changes reports it
    index = {key: i for i, key in enumerate(sorted({(n.instrument, n.program, n.is_drum) for n in ns.notes}))}
    notes = [
        {
            "pitch": int(n.pitch),
            "velocity": int(n.velocity),
            "start_time": round(float(n.start_time), 6),
            "end_time": round(float(n.end_time), 6),
            "instrument": index[(n.instrument, n.program, n.is_drum)],
            "program": int(n.program),
            "is_drum": bool(n.is_drum),
        }
        for n in ns.notes
    ]
    notes.sort(key=lambda n: (n["start_time"], n["instrument"], n["pitch"]))
    return {"qpm": qpm, "notes": notes}


def midi_bytes(midi: NoteSequence | pretty_midi.PrettyMIDI) -> bytes:
    if isinstance(midi, NoteSequence):
        return sequence_to_midi_bytes(midi)
    buf = io.BytesIO()
    midi.write(buf)
    return buf.getvalue()


@dataclasses.dataclass
class Generated:
    """Decoded sequences, rendered in the requested format on the worker thread."""

    config: str
    mode: str
    format: OutputFormat
    midi: list[bytes] = dataclasses.field(default_factory=list)  # format midi / zip
    notes: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # format notes

    @classmethod
    def render(cls, seqs: Sequence[NoteSequence], config: str, mode: str, fmt: OutputFormat) -> Generated:
        if fmt is OutputFormat.notes:
            return cls(config, mode, fmt, notes=[sequence_to_notes(ns) for ns in seqs])
        return cls(config, mode, fmt, midi=[midi_bytes(ns) for ns in seqs])

    def filenames(self) -> list[str]:
        n = len(self.midi)
        return [f"{self.config}_{self.mode}-{i + 1:03d}-of-{n:03d}.mid" for i in range(n)]

    def http_body(self) -> tuple[bytes, str, dict[str, str]]:
        """(body, media type, extra headers) for the HTTP response."""
        if self.format is OutputFormat.notes:
            body = json.dumps({"config": self.config, "outputs": self.notes}, separators=(",", ":")).encode()
            return body, "application/json", {}
        names = self.filenames()
        if self.format is OutputFormat.midi:
            return self.midi[0], "audio/midi", {"content-disposition": f'attachment; filename="{names[0]}"'}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for name, data in zip(names, self.midi):
                # A fixed date: a seeded request must give the same bytes, not ones that vary with the clock.
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        zip_name = f"{self.config}_{self.mode}.zip"
        return buf.getvalue(), "application/zip", {"content-disposition": f'attachment; filename="{zip_name}"'}


# --- models -----------------------------------------------------------------------------------------


class ModelRegistry:
    """The served models by config name, each with batch-size views sharing its weights."""

    def __init__(self, models: dict[str, TrainedModel]) -> None:
        if not models:
            raise ValueError("no models to serve")
        self.models = models
        self.sources: dict[str, str] = {}
        self._views: dict[tuple[str, int], TrainedModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, refs: Sequence[str], device: str = "cpu") -> ModelRegistry:
        """Load each ref: a checkpoint path (`[config=]path`, config needed for Magenta checkpoints), or a
        BentoML model tag / config name resolved in the model store by `musicvae.package.load_packaged`."""
        models: dict[str, TrainedModel] = {}
        sources: dict[str, str] = {}
        for ref in refs:
            ref = ref.strip()
            if not ref:
                continue
            config, _, path = ref.rpartition("=")
            if Path(path).expanduser().exists() or Path(f"{path}.index").exists():
                tm = TrainedModel.from_checkpoint(path, config or None, device=device)
            else:
                from musicvae.package import load_packaged

                tm = load_packaged(ref, device=device)
            if tm.config.name in models:
                raise ValueError(f"two models for config {tm.config.name}: {sources[tm.config.name]} and {ref}")
            models[tm.config.name], sources[tm.config.name] = tm, ref
            log.info("serving %s from %s", tm.config.name, ref)
        registry = cls(models)
        registry.sources = sources
        return registry

    @property
    def default_config(self) -> str:
        return next(iter(self.models))

    def get(self, config: str) -> TrainedModel:
        try:
            return self.models[config]
        except KeyError:
            from musicvae.configs import CONFIG_MAP

            served = ", ".join(sorted(self.models))
            if config not in CONFIG_MAP:
                raise ModelNotFound(f"unknown config {config!r}; this server has: {served}") from None
            raise ModelNotFound(f"config {config!r} is not served here; this server has: {served}") from None

    def view(self, config: str, rows: int) -> TrainedModel:
        """The model of `config` decoding in batches of `rows` (padding shorter batches to it)."""
        key = (config, rows)
        with self._lock:
            if key not in self._views:
                base = self.get(config)
                view = TrainedModel(base.config, base.model, max_batch_size=rows, device=base.device)
                view.checkpoint = base.checkpoint
                self._views[key] = view
            return self._views[key]

    def operations_of(self, config: str) -> list[str]:
        generic, groove = self._converter_operations(config)
        return generic + (["attribute"] if self.attribute_names(config) else []) + groove

    def can(self, config: str, operation: str) -> bool:
        # Only an attribute shift looks for the vectors' file: a sample request must not stat the disk.
        if operation == "attribute":
            return bool(self.attribute_names(config))
        generic, groove = self._converter_operations(config)
        return operation in generic or operation in groove

    def _converter_operations(self, config: str) -> tuple[list[str], list[str]]:
        """(generic, GrooVAE) operations the model's converter allows, whatever attribute vectors it has."""
        from musicvae.data.groove import GrooveConverter

        conv = self.get(config).converter
        generic = ["encode", "decode"] + ([] if conv.control_depth else ["sample", "interpolate"])
        groove = []
        if isinstance(conv, GrooveConverter):
            groove = [op for op, flag in (("humanize", conv.humanize), ("tap_to_drums", conv.tapify), ("add_closed_hh", conv.add_instruments)) if flag]
            if conv.hits_as_controls:
                groove.append("transfer_groove")
        return generic, groove

    def attribute_names(self, config: str) -> list[str]:
        try:
            return sorted(self.get(config).attribute_vectors)
        except (FileNotFoundError, ValueError, OSError):
            return []

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "config": name,
                "source": self.sources.get(name, ""),
                "z_size": tm.config.hparams.z_size,
                "max_seq_len": tm.config.hparams.max_seq_len,
                "operations": self.operations_of(name),
                "attributes": self.attribute_names(name),
            }
            for name, tm in self.models.items()
        ]


# --- the worker: one thread runs every model call, batching compatible sample requests ---------------


@dataclasses.dataclass
class _Job:
    run: Callable[[list[_Job]], list[Any]]  # runs a batch of jobs, one result per job
    key: Hashable | None  # jobs with the same key may run as one batch; None: alone
    rows: int
    payload: Any
    future: Future = dataclasses.field(default_factory=Future)
    queued_at: float = dataclasses.field(default_factory=time.monotonic)


class ModelWorker:
    """One thread runs the model jobs; jobs with the same key run as one batch of up to `max_batch_rows` rows.

    `max_wait` (seconds): when fewer rows are queued than the last batch had, wait up to this long for
    more before starting. Closed-loop clients send their next requests a few ms apart once their answers
    arrive; without the wait the first of them would start a small batch and the others would queue
    behind it, so batch sizes (and latencies) swing. With one client the last batch had one row: no wait.
    """

    def __init__(
        self, max_queue: int = 256, max_batch_rows: int = 32, on_batch: Callable[[int], None] | None = None,
        max_wait: float = 0.0,
    ) -> None:
        self.max_queue = max_queue
        self.on_batch = on_batch  # called with the number of requests in each model call (metrics)
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait
        self._last_rows = 1
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0  # model calls made (for tests and /models)
        self.batched_jobs = 0
        self._thread = threading.Thread(target=self._loop, name="musicvae-model-worker", daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[list[_Job]], list[Any]], payload: Any, key: Hashable | None = None, rows: int = 1) -> Future:
        job = _Job(run, key, rows, payload)
        with self._cv:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise Overloaded(f"server busy: {len(self._jobs)} requests queued; retry shortly")
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    def queued(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cv.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Overloaded("the server is shutting down"))
        # Joined, not left as a daemon: a thread still inside torch while the interpreter finalises
        # aborts the process ("terminate called without an active exception").
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _take(self) -> list[_Job] | None:
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if not self._closed and self.max_wait > 0 and self._jobs[0].key is not None:
                target = min(self._last_rows, self.max_batch_rows)
                deadline = time.monotonic() + self.max_wait
                while not self._closed and sum(job.rows for job in self._jobs) < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            if self._closed:
                return None
            first = self._jobs.popleft()
            batch, rows = [first], first.rows
            if first.key is not None:
                for job in list(self._jobs):
                    if job.key == first.key and rows + job.rows <= self.max_batch_rows:
                        self._jobs.remove(job)
                        batch.append(job)
                        rows += job.rows
            self._last_rows = rows
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batches += 1
            self.batched_jobs += len(live)
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                with translated():
                    results = live[0].run(live)
            except Exception as e:  # delivered to every waiting caller
                if not isinstance(e, ServingError):
                    log.exception("model call failed")
                for job in live:
                    job.future.set_exception(e)
                continue
            for job, result in zip(live, results):  # a batch may fail some of its jobs alone (their bad input)
                if isinstance(result, ServingError):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)


# --- the operations -----------------------------------------------------------------------------------


def _bucket(rows: int, cap: int) -> int:
    """Batch rows for a decode of `rows` sequences: all of them, up to `cap` (TrainedModel pads a short
    batch up to its batch size, which on the CPU would be work thrown away)."""
    return max(1, min(rows, cap))


class Operations:
    """Sample, interpolate, encode, decode, attribute shifts and GrooVAE's operations, as futures."""

    def __init__(
        self, registry: ModelRegistry, max_queue: int | None = None, max_batch_rows: int | None = None,
        on_batch: Callable[[int], None] | None = None, max_wait: float | None = None,
    ) -> None:
        self.registry = registry
        self.worker = ModelWorker(
            max_queue or int(os.environ.get("MUSICVAE_MAX_QUEUE", 256)),
            max_batch_rows or int(os.environ.get("MUSICVAE_MAX_BATCH_ROWS", 32)),
            on_batch,
            max_wait if max_wait is not None else float(os.environ.get("MUSICVAE_BATCH_WAIT_MS", 10)) / 1000,
        )

    def close(self) -> None:
        self.worker.close()

    # --- checks done before queueing (cheap, so a bad request never waits behind good ones) ---------

    def _model(self, config: str, operation: str) -> TrainedModel:
        tm = self.registry.get(config)
        if not self.registry.can(config, operation):
            can = ", ".join(self.registry.operations_of(config))
            raise Unsupported(f"{config} cannot {operation}; it can: {can}")
        return tm

    @staticmethod
    def _length(tm: TrainedModel, length: int | None) -> int:
        max_len = tm.config.hparams.max_seq_len
        if length is None:
            return max_len
        if length > max_len:
            raise InvalidInput(f"length {length} is over {tm.config.name}'s max_seq_len ({max_len})")
        return length

    @staticmethod
    def _format(fmt: OutputFormat, n: int) -> None:
        if fmt is OutputFormat.midi and n != 1:
            raise InvalidInput(f"format 'midi' returns one file; for {n} outputs ask for 'zip' or 'notes'")

    # --- sampling -------------------------------------------------------------------------------------

    def sample(self, req: SampleRequest) -> Future:
        tm = self._model(req.config, "sample")
        length = self._length(tm, req.length)
        self._format(req.format, req.num_outputs)
        key = None if req.seed is not None else ("sample", req.config, req.temperature, length)
        return self.worker.submit(self._sample_batch, (req, length), key=key, rows=req.num_outputs)

    def _sample_batch(self, jobs: list[_Job]) -> list[Generated]:
        first, length = jobs[0].payload
        counts = [job.payload[0].num_outputs for job in jobs]
        total = sum(counts)
        if first.seed is not None:  # alone (key None): as music_vae_generate --seed would
            tm = self.registry.view(first.config, min(SEEDED_BATCH_ROWS, total))
            seqs = tm.sample(total, length, first.temperature, seed=first.seed, as_sequences=True)
        else:
            tm = self.registry.view(first.config, _bucket(total, self.worker.max_batch_rows))
            seqs = tm.sample(total, length, first.temperature, as_sequences=True)
        out, start = [], 0
        for job, n in zip(jobs, counts):
            req = job.payload[0]
            out.append(Generated.render(seqs[start : start + n], req.config, "sample", req.format))
            start += n
        return out

    # --- interpolation, encode, decode ----------------------------------------------------------------

    def interpolate(self, req: InterpolateRequest, input_midi_1: MidiInput, input_midi_2: MidiInput) -> Future:
        tm = self._model(req.config, "interpolate")
        length = self._length(tm, req.length)
        self._format(req.format, req.num_outputs)
        a, b = midi_source(input_midi_1, "input_midi_1"), midi_source(input_midi_2, "input_midi_2")
        key = None if req.seed is not None else ("interpolate", req.config, req.temperature, length)
        return self.worker.submit(self._interpolate_batch, (req, length, a, b), key=key, rows=req.num_outputs)

    def _interpolate_batch(self, jobs: list[_Job]) -> list[Generated | ServingError]:
        """Interpolations that arrived together: every input encoded in one batch, every point decoded in one.

        A job whose input has no single window fails alone; the others go on.
        """
        first, length = jobs[0].payload[:2]
        tm = self.registry.get(first.config)
        out: list[Generated | ServingError | None] = []  # None: not done yet
        windows = []
        for job in jobs:
            _, _, a, b = job.payload
            try:
                windows += [self._one_window(tm, a, "input_midi_1"), self._one_window(tm, b, "input_midi_2")]
                out.append(None)
            except ServingError as e:
                out.append(e)
        ok = [i for i, result in enumerate(out) if result is None]
        if not ok:
            return out
        cap = self.worker.max_batch_rows
        _, mu, _ = self.registry.view(first.config, _bucket(len(windows), cap)).encode_windows(windows)
        counts = [jobs[i].payload[0].num_outputs for i in ok]
        z = np.concatenate([slerp(mu[2 * k], mu[2 * k + 1], n) for k, n in enumerate(counts)]).astype(np.float32)
        view = self.registry.view(first.config, _bucket(len(z), cap))
        seqs = view.decode(z, length, first.temperature, seed=first.seed, as_sequences=True)
        start = 0
        for i, n in zip(ok, counts):
            req = jobs[i].payload[0]
            out[i] = Generated.render(seqs[start : start + n], req.config, "interpolate", req.format)
            start += n
        return out

    @staticmethod
    def _one_window(tm: TrainedModel, source: bytes | NoteSequence, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """The input's one window (inputs, controls, length), or an error that names the input (the library
        says `<N bytes of MIDI>`)."""
        try:
            return tm.single_window(source)
        except MidiReadError as e:
            raise InvalidInput(f"{name}: malformed MIDI: {e}") from None
        except NoExtractedExamplesError:
            raise Unprocessable(
                f"{name}: no valid input for {tm.config.name} could be extracted (MusicVAE configs have very specific "
                "input requirements: e.g. a 2-bar melody model needs 2 bars of monophonic notes in 4/4)"
            ) from None
        except MultipleExtractedExamplesError as e:
            raise Unprocessable(f"{name}: {e.count} valid inputs extracted; exactly one is needed (trim it to one window)") from None

    def encode(self, config: str, inputs: Sequence[MidiInput], seed: int | None = None) -> Future:
        tm = self._model(config, "encode")
        if not inputs:
            raise InvalidInput("nothing to encode: upload at least one MIDI file")
        if len(inputs) > 64:
            raise InvalidInput(f"{len(inputs)} inputs; at most 64 per request")
        sources = [midi_source(x, f"input {i + 1}") for i, x in enumerate(inputs)]

        def run(jobs: list[_Job]) -> list[dict[str, Any]]:
            windows = [self._one_window(tm, s, f"input {i + 1}") for i, s in enumerate(sources)]
            z, mu, sigma = tm.encode_windows(windows, seed=seed)
            return [{"config": config, "z": z.tolist(), "mu": mu.tolist(), "sigma": sigma.tolist()}]

        return self.worker.submit(run, None)

    def decode(self, req: DecodeRequest) -> Future:
        tm = self._model(req.config, "decode")
        length = self._length(tm, req.length)
        self._format(req.format, len(req.z))
        z_size = tm.config.hparams.z_size
        z = np.asarray(req.z, np.float32) if all(len(r) == z_size for r in req.z) else None
        if z is None:
            raise InvalidInput(f"z: every row must have {z_size} values (z_size of {req.config})")
        if tm.converter.control_depth:
            raise Unsupported(f"{req.config} decodes with controls; use transfer_groove")

        def run(jobs: list[_Job]) -> list[Generated]:
            view = self.registry.view(req.config, min(SEEDED_BATCH_ROWS, len(z)))
            seqs = view.decode(z, length, req.temperature, seed=req.seed, as_sequences=True)
            return [Generated.render(seqs, req.config, "decode", req.format)]

        return self.worker.submit(run, None)

    # --- attribute vectors and GrooVAE ----------------------------------------------------------------

    def attribute(
        self, config: str, input_midi: MidiInput, attribute: str, strength: float, temperature: float,
        seed: int | None, fmt: OutputFormat,
    ) -> Future:
        tm = self._model(config, "attribute")
        names = self.registry.attribute_names(config)
        if attribute not in names:
            raise InvalidInput(f"unknown attribute {attribute!r}; {config} has: {', '.join(names)}")
        source = midi_source(input_midi, "input_midi")

        def run(jobs: list[_Job]) -> list[Generated]:
            _, mu, _ = tm.encode_windows([self._one_window(tm, source, "input_midi")])
            seqs = tm.decode(tm.apply_attribute(mu, attribute, strength), temperature=temperature, seed=seed, as_sequences=True)
            return [Generated.render(seqs, config, f"{attribute}", fmt)]

        return self.worker.submit(run, None)

    def groove(
        self, config: str, operation: GrooveOperation, input_midi: MidiInput, temperature: float, seed: int | None,
        fmt: OutputFormat,
    ) -> Future:
        tm = self._model(config, operation.value)
        source = midi_source(input_midi, "input_midi")
        call = {"humanize": tm.humanize, "tap_to_drums": tm.tap_to_drums, "add_closed_hh": tm.add_closed_hh}[operation.value]

        def run(jobs: list[_Job]) -> list[Generated]:
            seqs = call(source, temperature=temperature, seed=seed, as_sequences=True)
            self._format(fmt, len(seqs))
            return [Generated.render(seqs, config, operation.value, fmt)]

        return self.worker.submit(run, None)

    def transfer_groove(
        self, config: str, groove_midi: MidiInput, score_midi: MidiInput, temperature: float, seed: int | None,
        fmt: OutputFormat,
    ) -> Future:
        tm = self._model(config, "transfer_groove")
        groove, score = midi_source(groove_midi, "groove_midi"), midi_source(score_midi, "score_midi")

        def run(jobs: list[_Job]) -> list[Generated]:
            z, _, _ = tm.encode_windows([self._one_window(tm, groove, "groove_midi")], seed=seed)
            seqs = tm.play_with_groove(z, score, temperature=temperature, seed=seed, as_sequences=True)
            self._format(fmt, len(seqs))
            return [Generated.render(seqs, config, "transfer_groove", fmt)]

        return self.worker.submit(run, None)

    def warm_up(self) -> None:
        """One small sample per model that can sample, so that the first request is not the slow one."""
        for config in self.registry.models:
            if "sample" in self.registry.operations_of(config):
                result(self.sample(SampleRequest(config=config, format=OutputFormat.midi)), 120)

    def models(self) -> dict[str, Any]:
        w = self.worker
        return {"models": self.registry.describe(), "queued": w.queued(), "model_calls": w.batches, "requests_served": w.batched_jobs,
                "decode_threads": sampler.decode_threads()}


# Young-generation collections every 10,000 net allocations instead of 700. Under load a request's
# objects (and BentoML's per-request 35 s timeout timers, which it never cancels) live through many
# 700-allocation collections and reach the old generations, whose collections then scan them all again:
# 30-70 ms pauses every 1-2 s at 450 req/s (benchmarks/RESULTS.md, Serving).
GC_THRESHOLDS = (10_000, 10, 10)


def freeze_heap() -> None:
    """Hide what a started server holds (modules, models, weight layouts) from the cyclic collector, and
    collect the young generation less often (`GC_THRESHOLDS`).

    It lives as long as the server does. Otherwise every full collection walks the whole heap: 80-200 ms
    with the model worker stopped, every 1-3 s under load, which set the p99 latency (benchmarks/RESULTS.md).
    Frozen, a full collection scans only what requests allocated. `thaw_heap()` undoes it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def thaw_heap() -> None:
    """Undo `freeze_heap` (tests start and stop servers in one process)."""
    gc.unfreeze()
    gc.set_threshold(*_DEFAULT_GC_THRESHOLDS)


def result(future: Future, timeout: float) -> Any:
    """Wait for an operation (gRPC handler threads, tests): TimedOut past `timeout` seconds."""
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise TimedOut(f"no answer within {timeout:.0f} s; the server is busy, retry later") from None
