"""BentoML services over `serving.operations` (and through it `musicvae.generate.TrainedModel`).

Three service classes share the endpoints below:

- `Sampling`: POST /sample (JSON) and /decode; adaptive batching of concurrent sample requests.
- `Interpolation`: POST /interpolate (two MIDI uploads), /interpolate_notes (two note lists), /encode,
  /attribute, /groove (GrooVAE humanize, tap_to_drums, add_closed_hh), /transfer_groove.
- `MusicVAE`: all of them in one server (what `musicvae serve` runs by default).

Each also has POST /models, and BentoML's /livez, /readyz (ready once the models are loaded),
/metrics (Prometheus) and /docs (OpenAPI with example requests).

Models: `MUSICVAE_MODELS` (comma-separated model store tags or config names; default
cat-mel_2bar_small) become `BentoModel` class attributes, so `bentoml build` packs them into the Bento;
a config name means its champion, or its newest model (`musicvae.package.resolve_model`).
`MUSICVAE_CHECKPOINTS` (comma-separated `[config=]path`) serves checkpoints straight from disk instead
(development; nothing to pack). Inside a bento's container (`$BENTO_PATH/models` exists) the models come
from the bento's own store, as `bentoml serve <bento>` does, whatever `$BENTOML_HOME` holds.

    bentoml serve serving.service:MusicVAE --host 127.0.0.1 --port 3000
    curl -X POST 127.0.0.1:3000/sample -H 'content-type: application/json' -d '{"num_outputs": 1}' -o s.mid
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.models import BentoModel
from bentoml.validators import ContentType
from pydantic import Field
from starlette.responses import JSONResponse, Response

from serving.operations import (
    Generated,
    ModelRegistry,
    Operations,
    ServingError,
    TimedOut,
    TooLarge,
    freeze_heap,
    translated,
)
from serving.schemas import (
    DEFAULT_CONFIG,
    EXAMPLE_NOTES_1,
    EXAMPLE_NOTES_2,
    EXAMPLE_TEMPERATURE,
    MAX_UPLOAD_BYTES,
    ConfigName,
    DecodeRequest,
    Format,
    GrooveOperation,
    InterpolateRequest,
    Length,
    NoteList,
    NumOutputs,
    NumSteps,
    OutputFormat,
    SampleRequest,
    Seed,
    Strength,
    Temperature,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = float(os.environ.get("MUSICVAE_REQUEST_TIMEOUT", 30))
MAX_CONCURRENCY = int(os.environ.get("MUSICVAE_MAX_CONCURRENCY", 128))  # per server: more get 429 at once
WORKERS = int(os.environ.get("MUSICVAE_WORKERS", 1))
ACCESS_LOG = os.environ.get("MUSICVAE_ACCESS_LOG", "1") not in ("0", "false", "no")  # one line per request
MAX_JSON_BYTES = 4 * MAX_UPLOAD_BYTES  # note lists of MAX_NOTES notes fit
MAX_MULTIPART_BYTES = 2 * MAX_UPLOAD_BYTES + 64 * 1024  # two uploads and the form fields
MidiFile = Annotated[Path, ContentType("audio/midi")]  # documented answer type (zip and JSON too: see each docstring)


# --- models named at class level --------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def use_bento_store() -> None:
    """Point BentoML's model store at `$BENTO_PATH/models` when it exists (in the bento's container).

    `bentoml serve <bento>` does this itself; `bentoml serve serving.service:<Service>` (what `musicvae serve`
    runs) would resolve the BentoModels in `$BENTOML_HOME/models`, an empty scratch dir in k8s."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    from musicvae.package import bento_models_dir

    models = bento_models_dir()
    if models is not None:
        BentoMLContainer.model_store.set(ModelStore(models))
        log.info("models from the bento's store %s", models)


def store_tags() -> list[str]:
    """The model store tags the services pack and load (empty when serving checkpoints)."""
    if _split(os.environ.get("MUSICVAE_CHECKPOINTS", "")):
        return []
    from musicvae.package import PackageError, bento_model_name, resolve_model

    tags = []
    for ref in _split(os.environ.get("MUSICVAE_MODELS", DEFAULT_CONFIG)):
        try:
            tags.append(str(resolve_model(ref).tag))
        except PackageError:  # not in this store (yet): BentoML reports it when serving or building
            tags.append(ref if ":" in ref else f"{bento_model_name(ref)}:latest")
    return tags


use_bento_store()
STORE_TAGS = store_tags()


_BATCH_HISTOGRAM = None


def batch_histogram() -> Any:
    """musicvae_batch_requests: requests answered per model call (adaptive batching at work), in /metrics.

    Created when the service starts, in its worker process, after BentoML has set up prometheus_client's
    multiprocess mode; one per process."""
    global _BATCH_HISTOGRAM
    if _BATCH_HISTOGRAM is None:
        from prometheus_client import Histogram

        _BATCH_HISTOGRAM = Histogram(
            "musicvae_batch_requests", "Requests answered by one model call (adaptive batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
    return _BATCH_HISTOGRAM


# --- HTTP guard: content types and body sizes, before BentoML parses anything ---------------------


class RequestGuard:
    """ASGI middleware: 415 for a POST with the wrong content type, 413 for an oversized body.

    Bodies without a Content-Length (chunked) are read up to the limit and replayed, so a large
    upload costs at most the limit in memory and a lying client cannot make the server read more.
    Multipart bodies are read (up to the limit) and their form parsed once before BentoML sees them.
    """

    def __init__(self, app: Any, json_routes: frozenset[str], upload_routes: dict[str, str]) -> None:
        self.app = app
        self.json_routes = json_routes
        self.upload_routes = upload_routes  # route -> what to upload (for the message)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in self.json_routes:
            expected, limit, what = "application/json", MAX_JSON_BYTES, "a JSON body"
        elif path in self.upload_routes:
            expected, limit, what = "multipart/form-data", MAX_MULTIPART_BYTES, f"a multipart form ({self.upload_routes[path]})"
        else:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if ctype != expected:
            got = ctype or "no content type"
            return await _reply(send, 415, f"POST {path} takes {what} with content-type {expected}; got {got}")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length header")
            if size > limit:
                return await _reply(send, 413, f"request body of {size} bytes is over the {limit}-byte limit for POST {path}")
            if expected == "application/json":
                return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _reply(send, 413, f"request body over the {limit}-byte limit for POST {path}")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        def replayer() -> Callable:
            sent = False

            async def replay() -> dict:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return replay

        if expected == "multipart/form-data":
            # Parse the (size-checked) form once here with BentoML's parser and limits: a broken one
            # (no boundary, a field over 1 MiB, ...) is a 400 here instead of a 500 inside BentoML.
            from starlette.requests import Request

            try:
                form = await Request(scope, replayer()).form()
                await form.close()
            except Exception as e:  # starlette's HTTPException(400) or the parser's own errors
                reason = getattr(e, "detail", None) or str(e) or type(e).__name__
                return await _reply(send, 400, f"malformed multipart body: {reason}")
        await self.app(scope, replayer(), send)


async def _reply(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def error_response(err: ServingError) -> JSONResponse:
    headers = {"retry-after": "1"} if err.http_status in (429, 503) else None
    return JSONResponse({"error": err.message}, status_code=err.http_status, headers=headers)


def read_upload(path: Path, name: str) -> bytes:
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise TooLarge(f"{name}: {size} bytes is over the {MAX_UPLOAD_BYTES}-byte limit for one MIDI file")
    return path.read_bytes()


# --- endpoints --------------------------------------------------------------------------------------


class _Base:
    """Loads the models (class-level BentoModels, or MUSICVAE_CHECKPOINTS) and answers through Operations."""

    def __init__(self) -> None:
        from musicvae.package import CHECKPOINT_FILE

        refs = _split(os.environ.get("MUSICVAE_CHECKPOINTS", ""))
        sources = {}
        for i in range(len(STORE_TAGS)):
            stored = getattr(self, f"model_{i}")  # resolved by BentoML: the store's copy, or the Bento's
            refs.append(stored.path_of(CHECKPOINT_FILE))
            sources[refs[-1]] = str(stored.tag)
        # The event loop and the model worker thread take turns with the GIL (the worker between torch ops
        # and native decodes); a short switch interval keeps either from waiting long for the other. 5 ms
        # by default; 0.1 ms gave the most req/s and the lowest p99 (benchmarks/RESULTS.md, Serving).
        sys.setswitchinterval(float(os.environ.get("MUSICVAE_SWITCH_INTERVAL", 0.0001)))
        registry = ModelRegistry.load(refs)
        registry.sources = {name: sources.get(src, src) for name, src in registry.sources.items()}
        self.ops = Operations(registry, on_batch=batch_histogram().observe)
        self.ops.warm_up()  # before /readyz says ready
        freeze_heap()

    async def _answer(self, submit: Callable[[], Future]) -> Response:
        try:
            with translated():
                future = submit()
            async with asyncio.timeout(REQUEST_TIMEOUT):  # unlike wait_for, no extra task per request
                out = await asyncio.wrap_future(future)
        except TimeoutError:
            return error_response(TimedOut(f"no answer within {REQUEST_TIMEOUT:.0f} s; the server is busy, retry later"))
        except ServingError as e:
            return error_response(e)
        if isinstance(out, Generated):
            body, media_type, headers = out.http_body()
            return Response(body, media_type=media_type, headers=headers)
        return JSONResponse(out)

    @bentoml.api(route="/models")
    async def models(self) -> dict:
        """The served models (config, source: model store tag, z_size, max_seq_len, operations, attributes), queue and threads."""
        return self.ops.models()


class _SamplingAPI:
    @bentoml.api(route="/sample")
    async def sample(
        self,
        config: ConfigName = DEFAULT_CONFIG,
        num_outputs: NumOutputs = 1,
        temperature: Temperature = EXAMPLE_TEMPERATURE,
        length: Length = None,
        seed: Seed = None,
        format: Format = OutputFormat.midi,
    ) -> MidiFile:
        """Sample `num_outputs` sequences from the prior (music_vae_generate --mode=sample).

        Returns audio/midi (format=midi, one output), application/zip (format=zip) or JSON note lists
        (format=notes). The same request with the same `seed` gives the same notes.
        """
        req = SampleRequest(config=config, num_outputs=num_outputs, temperature=temperature, length=length, seed=seed, format=format)
        return await self._answer(lambda: self.ops.sample(req))

    @bentoml.api(route="/decode")
    async def decode(
        self,
        z: Annotated[list[list[float]], Field(min_length=1, description="Latent vectors [n, z_size], e.g. from /encode.")],
        config: ConfigName = DEFAULT_CONFIG,
        temperature: Temperature = EXAMPLE_TEMPERATURE,
        length: Length = None,
        seed: Seed = None,
        format: Format = OutputFormat.notes,
    ) -> MidiFile:
        """Decode latent vectors into sequences (MIDI, zip or JSON note lists)."""
        req = DecodeRequest(config=config, z=z, temperature=temperature, length=length, seed=seed, format=format)
        return await self._answer(lambda: self.ops.decode(req))


class _InterpolationAPI:
    @bentoml.api(route="/interpolate")
    async def interpolate(
        self,
        input_midi_1: Annotated[Path, Field(description="Start: a MIDI file with exactly one window for the model.")],
        input_midi_2: Annotated[Path, Field(description="End: a MIDI file with exactly one window for the model.")],
        config: ConfigName = DEFAULT_CONFIG,
        num_outputs: NumSteps = 5,
        temperature: Temperature = EXAMPLE_TEMPERATURE,
        length: Length = None,
        seed: Seed = None,
        format: Format = OutputFormat.zip,
    ) -> MidiFile:
        """Interpolate between two uploaded MIDI files (music_vae_generate --mode=interpolate).

        multipart/form-data: files input_midi_1, input_midi_2; fields config, num_outputs (steps, both ends
        included), temperature, length, seed, format. Returns a zip of .mid files (or note lists).
        """
        req = InterpolateRequest(config=config, num_outputs=num_outputs, temperature=temperature, length=length, seed=seed, format=format)
        return await self._answer(
            lambda: self.ops.interpolate(req, read_upload(input_midi_1, "input_midi_1"), read_upload(input_midi_2, "input_midi_2"))
        )

    @bentoml.api(route="/interpolate_notes")
    async def interpolate_notes(
        self,
        input_midi_1: Annotated[NoteList, Field(examples=[EXAMPLE_NOTES_1])],
        input_midi_2: Annotated[NoteList, Field(examples=[EXAMPLE_NOTES_2])],
        config: ConfigName = DEFAULT_CONFIG,
        num_outputs: NumSteps = 5,
        temperature: Temperature = EXAMPLE_TEMPERATURE,
        length: Length = None,
        seed: Seed = None,
        format: Format = OutputFormat.notes,
    ) -> MidiFile:
        """Interpolate between two note lists (JSON); returns note lists (or a zip of .mid files)."""
        req = InterpolateRequest(config=config, num_outputs=num_outputs, temperature=temperature, length=length, seed=seed, format=format)
        return await self._answer(lambda: self.ops.interpolate(req, input_midi_1, input_midi_2))

    @bentoml.api(route="/encode")
    async def encode(
        self,
        input_midi: Annotated[Path, Field(description="A MIDI file with exactly one window for the model.")],
        config: ConfigName = DEFAULT_CONFIG,
        seed: Seed = None,
    ) -> dict:
        """Encode an uploaded MIDI file: {"z": [[...]], "mu": [[...]], "sigma": [[...]]}."""
        return await self._answer(lambda: self.ops.encode(config, [read_upload(input_midi, "input_midi")], seed))

    @bentoml.api(route="/attribute")
    async def attribute(
        self,
        input_midi: Annotated[Path, Field(description="A MIDI file with exactly one window for the model.")],
        attribute: Annotated[str, Field(description="Attribute vector name (see /models), e.g. note_density.", examples=["note_density"])],
        config: ConfigName = DEFAULT_CONFIG,
        strength: Strength = 1.0,
        temperature: Temperature = EXAMPLE_TEMPERATURE,
        seed: Seed = None,
        format: Format = OutputFormat.midi,
    ) -> MidiFile:
        """Encode, add `strength` times an attribute vector, decode (models with attribute vectors)."""
        return await self._answer(
            lambda: self.ops.attribute(config, read_upload(input_midi, "input_midi"), attribute, strength, temperature, seed, format)
        )

    @bentoml.api(route="/groove")
    async def groove(
        self,
        input_midi: Annotated[Path, Field(description="A 2-bar drum pattern (or tapped rhythm).")],
        operation: Annotated[GrooveOperation, Field(description="humanize, tap_to_drums or add_closed_hh")],
        config: Annotated[str, Field(description="A GrooVAE config trained for the operation.", examples=["groovae_2bar_humanize"])],
        temperature: Annotated[float, Field(gt=0.0, le=10.0, description="GrooVAE's default is 1.")] = 1.0,
        seed: Seed = None,
        format: Format = OutputFormat.zip,
    ) -> MidiFile:
        """GrooVAE: humanize a quantized pattern, turn a tapped rhythm into drums, or add closed hi-hats."""
        return await self._answer(
            lambda: self.ops.groove(config, operation, read_upload(input_midi, "input_midi"), temperature, seed, format)
        )

    @bentoml.api(route="/transfer_groove")
    async def transfer_groove(
        self,
        groove_midi: Annotated[Path, Field(description="The groove: a 2-bar drum performance.")],
        score_midi: Annotated[Path, Field(description="The score whose hits are played with that groove.")],
        config: Annotated[str, Field(examples=["groovae_2bar_hits_control_tfds"])] = "groovae_2bar_hits_control_tfds",
        temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0,
        seed: Seed = None,
        format: Format = OutputFormat.zip,
    ) -> MidiFile:
        """GrooVAE groove transfer (hits-control models): each window of the score, played with the groove."""
        return await self._answer(
            lambda: self.ops.transfer_groove(
                config, read_upload(groove_midi, "groove_midi"), read_upload(score_midi, "score_midi"), temperature, seed, format
            )
        )


JSON_ROUTES = frozenset({"/sample", "/decode", "/interpolate_notes"})
UPLOAD_ROUTES = {
    "/interpolate": "files input_midi_1, input_midi_2",
    "/encode": "file input_midi",
    "/attribute": "file input_midi",
    "/groove": "file input_midi",
    "/transfer_groove": "files groove_midi, score_midi",
}


def _service(name: str, doc: str, *bases: type) -> Any:
    cls = type(name, (_Base, *bases), {"__doc__": doc, "__module__": __name__})
    for i, tag in enumerate(STORE_TAGS):
        setattr(cls, f"model_{i}", BentoModel(tag))
    svc = bentoml.service(
        name=f"musicvae-{name.lower()}",
        workers=WORKERS,
        traffic={"timeout": REQUEST_TIMEOUT + 5, "max_concurrency": MAX_CONCURRENCY},
        resources={"cpu": "2", "memory": "2Gi"},
        envs=[{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "MUSICVAE_DECODE_THREADS", "value": "2"},  # = cpu
              {"name": "OTEL_SDK_DISABLED", "value": "true"}],  # see serving/cli.py
        logging={"access": {"enabled": ACCESS_LOG}},
    )(cls)
    routes = {"/" + api.route.strip("/") for api in svc.apis.values()}
    svc.add_asgi_middleware(
        RequestGuard,
        json_routes=JSON_ROUTES & routes,
        upload_routes={r: what for r, what in UPLOAD_ROUTES.items() if r in routes},
    )
    return svc


Sampling = _service("Sampling", "MusicVAE sampling: /sample, /decode.", _SamplingAPI)
Interpolation = _service(
    "Interpolation", "MusicVAE interpolation and editing: /interpolate, /encode, /attribute, GrooVAE.", _InterpolationAPI
)
MusicVAE = _service("MusicVAE", "All MusicVAE operations in one server.", _SamplingAPI, _InterpolationAPI)
SERVICES = {"sampling": Sampling, "interpolation": Interpolation, "all": MusicVAE}
