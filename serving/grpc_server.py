"""The gRPC server: `musicvae.v1.MusicVAE` (serving/musicvae.proto) over `serving.operations`, plus the
standard health service (grpc.health.v1) and server reflection.

BentoML 1.4 cannot serve gRPC for `@bentoml.service` classes, so this is a plain grpcio server that
calls the very code the HTTP service calls; `musicvae serve` runs both, `musicvae serve --grpc` this
one alone. Limits: `max_concurrent_rpcs` calls in flight (more get RESOURCE_EXHAUSTED at once, from
grpcio itself), messages up to two uploads plus 64 KiB (more: RESOURCE_EXHAUSTED), and each call waits
at most its deadline (or `REQUEST_TIMEOUT`) for the model.

    python -m serving.grpc_server --models cat-mel_2bar_small --port 50051 --metrics_port 9091

Metrics: with a metrics port (`--metrics_port`, `musicvae serve --grpc_metrics_port`, or
`MUSICVAE_GRPC_METRICS_PORT`), Prometheus text on `http://<host>:<port>/metrics`: calls answered by
method and status code (`musicvae_grpc_requests_total`), their latency (`musicvae_grpc_request_duration_seconds`),
calls in flight (`musicvae_grpc_requests_in_progress`) and requests per model call
(`musicvae_batch_requests`, as the HTTP service's /metrics has it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import musicvae_pb2 as pb
from serving import musicvae_pb2_grpc as pb_grpc
from serving.operations import (
    Generated,
    InvalidInput,
    MidiInput,
    ModelRegistry,
    Operations,
    ServingError,
    freeze_heap,
    thaw_heap,
    result,
    validate,
)
from serving.schemas import (
    DEFAULT_CONFIG,
    EXAMPLE_TEMPERATURE,
    MAX_UPLOAD_BYTES,
    DecodeRequest,
    GrooveOperation,
    InterpolateRequest,
    NoteList,
    OutputFormat,
    SampleRequest,
)

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MusicVAE"].full_name  # musicvae.v1.MusicVAE
REQUEST_TIMEOUT = float(os.environ.get("MUSICVAE_REQUEST_TIMEOUT", 30))
MAX_MESSAGE_BYTES = 2 * MAX_UPLOAD_BYTES + 64 * 1024


# --- messages <-> operations -------------------------------------------------------------------------


def _opt(msg: Any, field: str, default: Any = None) -> Any:
    return getattr(msg, field) if msg.HasField(field) else default


def _format(value: int) -> OutputFormat:
    return OutputFormat.notes if value == pb.NOTES else OutputFormat.midi


def _midi_input(msg: pb.MidiInput, name: str) -> MidiInput:
    kind = msg.WhichOneof("input")
    if kind == "midi":
        return msg.midi
    if kind == "notes":
        notes = [
            {"pitch": n.pitch, "velocity": n.velocity or 80, "start_time": n.start_time, "end_time": n.end_time,
             "instrument": n.instrument, "program": n.program, "is_drum": n.is_drum}
            for n in msg.notes.notes
        ]
        return validate(NoteList, notes=notes, qpm=msg.notes.qpm or 120.0)
    raise InvalidInput(f"{name}: missing (set midi or notes)")


def _sequences(out: Generated) -> pb.Sequences:
    reply = pb.Sequences(config=out.config)
    if out.format is OutputFormat.notes:
        for doc in out.notes:
            reply.notes.append(pb.NoteList(qpm=doc["qpm"], notes=[pb.Note(**n) for n in doc["notes"]]))
    else:
        reply.midi.extend(out.midi)
    return reply


def _vectors(rows: list[list[float]]) -> list[pb.Vector]:
    return [pb.Vector(values=r) for r in rows]


class MusicVAEServicer(pb_grpc.MusicVAEServicer):
    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    def _run(self, context: grpc.ServicerContext, work: Callable[[], Any]) -> Any:
        """Run an operation; ServingError -> its status code and message, anything else -> INTERNAL."""
        timeout = context.time_remaining()
        timeout = REQUEST_TIMEOUT if timeout is None else min(timeout, REQUEST_TIMEOUT)
        try:
            return result(work(), timeout) if callable(work) else work
        except ServingError as e:
            code, message = getattr(grpc.StatusCode, e.grpc_code), e.message
        except Exception:
            log.exception("gRPC call failed")
            code, message = grpc.StatusCode.INTERNAL, "an unexpected error occurred; see the server log"
        context.abort(code, message)

    def Sample(self, request: pb.SampleRequest, context: grpc.ServicerContext) -> pb.Sequences:
        def work():
            req = validate(
                SampleRequest,
                config=request.config or DEFAULT_CONFIG,
                num_outputs=request.num_outputs or 1,
                temperature=_opt(request, "temperature", EXAMPLE_TEMPERATURE),
                length=_opt(request, "length"),
                seed=_opt(request, "seed"),
                format=_format(request.format),
            )
            if req.format is OutputFormat.midi and req.num_outputs > 1:
                req = req.model_copy(update={"format": OutputFormat.zip})  # repeated bytes: one file each
            return self.ops.sample(req)

        return _sequences(self._run(context, work))

    def Interpolate(self, request: pb.InterpolateRequest, context: grpc.ServicerContext) -> pb.Sequences:
        def work():
            fmt = _format(request.format)
            req = validate(
                InterpolateRequest,
                config=request.config or DEFAULT_CONFIG,
                num_outputs=request.num_outputs or 5,
                temperature=_opt(request, "temperature", EXAMPLE_TEMPERATURE),
                length=_opt(request, "length"),
                seed=_opt(request, "seed"),
                format=OutputFormat.zip if fmt is OutputFormat.midi else fmt,
            )
            return self.ops.interpolate(
                req, _midi_input(request.input_midi_1, "input_midi_1"), _midi_input(request.input_midi_2, "input_midi_2")
            )

        return _sequences(self._run(context, work))

    def Encode(self, request: pb.EncodeRequest, context: grpc.ServicerContext) -> pb.EncodeReply:
        def work():
            inputs = [_midi_input(x, f"inputs[{i}]") for i, x in enumerate(request.inputs)]
            return self.ops.encode(request.config or DEFAULT_CONFIG, inputs, _opt(request, "seed"))

        doc = self._run(context, work)
        return pb.EncodeReply(config=doc["config"], z=_vectors(doc["z"]), mu=_vectors(doc["mu"]), sigma=_vectors(doc["sigma"]))

    def Decode(self, request: pb.DecodeRequest, context: grpc.ServicerContext) -> pb.Sequences:
        def work():
            fmt = _format(request.format)
            req = validate(
                DecodeRequest,
                config=request.config or DEFAULT_CONFIG,
                z=[list(v.values) for v in request.z],
                temperature=_opt(request, "temperature", EXAMPLE_TEMPERATURE),
                length=_opt(request, "length"),
                seed=_opt(request, "seed"),
                format=OutputFormat.zip if fmt is OutputFormat.midi else fmt,
            )
            return self.ops.decode(req)

        return _sequences(self._run(context, work))

    def Attribute(self, request: pb.AttributeRequest, context: grpc.ServicerContext) -> pb.Sequences:
        def work():
            fmt = _format(request.format)
            strength = _opt(request, "strength", 1.0)
            temperature = _opt(request, "temperature", EXAMPLE_TEMPERATURE)
            _check_range("strength", strength, -10.0, 10.0)
            _check_temperature(temperature)
            return self.ops.attribute(
                request.config or DEFAULT_CONFIG, _midi_input(request.input_midi, "input_midi"), request.attribute,
                strength, temperature, _opt(request, "seed"), OutputFormat.zip if fmt is OutputFormat.midi else fmt,
            )

        return _sequences(self._run(context, work))

    def Groove(self, request: pb.GrooveRequest, context: grpc.ServicerContext) -> pb.Sequences:
        def work():
            try:
                op = GrooveOperation(request.operation)
            except ValueError:
                raise InvalidInput(
                    f"operation: {request.operation!r} is not one of {', '.join(o.value for o in GrooveOperation)}"
                ) from None
            fmt = _format(request.format)
            temperature = _opt(request, "temperature", 1.0)
            _check_temperature(temperature)
            return self.ops.groove(
                request.config, op, _midi_input(request.input_midi, "input_midi"), temperature, _opt(request, "seed"),
                OutputFormat.zip if fmt is OutputFormat.midi else fmt,
            )

        return _sequences(self._run(context, work))

    def TransferGroove(self, request: pb.TransferGrooveRequest, context: grpc.ServicerContext) -> pb.Sequences:
        def work():
            fmt = _format(request.format)
            temperature = _opt(request, "temperature", 1.0)
            _check_temperature(temperature)
            return self.ops.transfer_groove(
                request.config, _midi_input(request.groove_midi, "groove_midi"), _midi_input(request.score_midi, "score_midi"),
                temperature, _opt(request, "seed"), OutputFormat.zip if fmt is OutputFormat.midi else fmt,
            )

        return _sequences(self._run(context, work))

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsReply:
        return pb.ListModelsReply(models=[pb.ModelInfo(**m) for m in self.ops.models()["models"]])


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be in [{low}, {high}], got {value}")


def _check_temperature(value: float) -> None:
    from serving.schemas import MAX_TEMPERATURE

    if not 0.0 < value <= MAX_TEMPERATURE:
        raise InvalidInput(f"temperature: must be in (0, {MAX_TEMPERATURE}], got {value}")


# --- the server ---------------------------------------------------------------------------------------


# --- metrics ----------------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GrpcMetrics(grpc.ServerInterceptor):
    """Prometheus metrics of the unary calls, in a registry of their own (not BentoML's multiprocess one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("musicvae_grpc_requests", "gRPC calls answered, by method and status code.",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("musicvae_grpc_request_duration_seconds", "Time to answer a gRPC call, by method.",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_progress = Gauge("musicvae_grpc_requests_in_progress", "gRPC calls being answered, by method.",
                                 ["method"], registry=self.registry)
        self.batch = Histogram("musicvae_batch_requests", "Requests answered by one model call (adaptive batching).",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self._http: Any = None

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:  # reflection streams: not counted
            return handler
        method, behavior = details.method.lstrip("/"), handler.unary_unary
        in_progress, latency = self.in_progress.labels(method), self.latency.labels(method)

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            in_progress.inc()
            start = time.perf_counter()
            failed = False
            try:
                return behavior(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                code = context.code()  # set by abort / set_code; None for a plain return
                name = code.name if code is not None else ("UNKNOWN" if failed else "OK")
                self.requests.labels(method, name).inc()
                latency.observe(time.perf_counter() - start)
                in_progress.dec()

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def serve(self, port: int, host: str) -> int:
        """Serve /metrics on host:port (0: a free port) in a daemon thread; returns the bound port."""
        from prometheus_client import start_http_server

        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


# --- the server -------------------------------------------------------------------------------------


def metrics_port_from_env() -> int | None:
    value = os.environ.get("MUSICVAE_GRPC_METRICS_PORT", "").strip()
    return int(value) if value else None


class GrpcServer:
    """A started server: `.port` (the bound one), `.stop(grace)`; health says SERVING until stopped.

    `metrics_port` (None: no metrics): Prometheus /metrics on host:metrics_port (0 picks a free one;
    `.metrics_port` is the bound one)."""

    def __init__(
        self,
        ops: Operations,
        port: int = 50051,
        host: str = "127.0.0.1",
        max_concurrent_rpcs: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        limit = max_concurrent_rpcs or int(os.environ.get("MUSICVAE_GRPC_MAX_CONCURRENCY", 128))
        self.ops = ops
        self.metrics = GrpcMetrics() if metrics_port is not None else None
        self.metrics_port: int | None = None
        if self.metrics is not None:
            ops.worker.on_batch = self.metrics.batch.observe
        ops.warm_up()  # before health says SERVING
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="grpc"),
            interceptors=[self.metrics] if self.metrics is not None else None,
            maximum_concurrent_rpcs=limit,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a second listener
            ],
        )
        pb_grpc.add_MusicVAEServicer_to_server(MusicVAEServicer(ops), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port} (in use?)")
        self.server.start()
        freeze_heap()
        if self.metrics is not None:
            try:
                self.metrics_port = self.metrics.serve(metrics_port, host)
            except OSError as e:
                self.server.stop(None)
                raise OSError(f"cannot serve gRPC metrics on {host}:{metrics_port} ({e})") from e
            log.info("gRPC metrics on http://%s:%d/metrics", host, self.metrics_port)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server on %s:%d (%s, health, reflection)", host, self.port, SERVICE_NAME)

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.stop()
        self.ops.close()
        thaw_heap()  # what the server held may be garbage now (tests start and stop servers in one process)

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    refs: Sequence[str], port: int, host: str = "127.0.0.1", stop_event: threading.Event | None = None,
    metrics_port: int | None = None,
) -> int:
    """Load the models, serve until SIGINT/SIGTERM (or `stop_event`), stop gracefully."""
    ops = Operations(ModelRegistry.load(refs))
    server = GrpcServer(ops, port, host, metrics_port=metrics_port)
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("gRPC server stopping")
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MusicVAE gRPC server (serving/musicvae.proto) with health and reflection.")
    parser.add_argument("--models", default=os.environ.get("MUSICVAE_MODELS", DEFAULT_CONFIG),
                        help="comma-separated model store tags or config names, or [config=]checkpoint paths")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port (default 50051)")
    parser.add_argument("--metrics_port", type=int, default=metrics_port_from_env(),
                        help="serve Prometheus /metrics on this port (0: a free one; default $MUSICVAE_GRPC_METRICS_PORT, else none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return serve(args.models.split(","), args.port, args.host, metrics_port=args.metrics_port)


if __name__ == "__main__":
    raise SystemExit(main())
