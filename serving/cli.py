"""`musicvae serve`: the BentoML HTTP service and the gRPC server together, on one machine.

    musicvae serve --port 3000 --grpc_port 50051                     # packaged models (model store)
    musicvae serve --checkpoint_file runs/mel2/train/ckpt-2000.pt    # a checkpoint, no store needed
    musicvae serve --service sampling --port 3000 --no_grpc          # one HTTP service only (k8s: one per pod)
    musicvae serve --service sampling --grpc --port 50051            # the gRPC server only

HTTP runs as `bentoml serve serving.service:<Service>` in a child process, gRPC in this one; SIGINT or
SIGTERM stops both (gRPC drains for a few seconds, BentoML gets SIGTERM, then SIGKILL after 20 s), and
if either dies the other is stopped too. Plugged into the `musicvae` CLI through the
`musicvae.commands` entry point (pyproject.toml).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # so that `serving.service` imports in the child
SERVICE_CLASSES = {"all": "MusicVAE", "sampling": "Sampling", "interpolation": "Interpolation"}


def model_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment the services read their models from (see serving/service.py)."""
    env = {}
    if args.checkpoint_file:
        env["MUSICVAE_CHECKPOINTS"] = ",".join(f"{args.config}={c}" if args.config else c for c in args.checkpoint_file)
    else:
        env["MUSICVAE_MODELS"] = args.models or args.config or os.environ.get("MUSICVAE_MODELS", "cat-mel_2bar_small")
    return env


def _refs(env: dict[str, str]) -> list[str]:
    return [r for r in (env.get("MUSICVAE_CHECKPOINTS") or env["MUSICVAE_MODELS"]).split(",") if r.strip()]


def http_command(service: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", f"serving.service:{SERVICE_CLASSES[service]}",
            "--host", host, "--port", str(port), "--working-dir", str(ROOT)]


def run_serve(args: argparse.Namespace) -> int:
    from serving.grpc_server import GrpcServer, metrics_port_from_env
    from serving.operations import ModelRegistry, Operations

    from musicvae.nn.sampler import DECODE_THREADS_ENV

    env = model_env(args)
    # torch's own ops stay on one thread (OMP_NUM_THREADS=1 below: OpenMP's wake-ups cost these small ops
    # more than they gain), while a batched decode, one native call, splits its rows over every core.
    os.environ.setdefault(DECODE_THREADS_ENV, str(len(os.sched_getaffinity(0))))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    grpc_server = None
    grpc_port = args.port if args.grpc else args.grpc_port
    if args.grpc or not args.no_grpc:
        try:
            metrics_port = args.grpc_metrics_port if args.grpc_metrics_port is not None else metrics_port_from_env()
            grpc_server = GrpcServer(Operations(ModelRegistry.load(_refs(env))), grpc_port, args.host, metrics_port=metrics_port)
        except Exception as e:  # a bad model ref or a busy port: say so, exit non-zero
            print(f"musicvae serve: error: {e}", file=sys.stderr)
            return 2
        print(f"gRPC   {args.host}:{grpc_server.port}  (musicvae.v1.MusicVAE, grpc.health.v1, reflection)", flush=True)
        if grpc_server.metrics_port is not None:
            print(f"gRPC metrics  http://{args.host}:{grpc_server.metrics_port}/metrics", flush=True)

    child = None
    if not args.grpc:
        child_env = {**os.environ, **env, "MUSICVAE_WORKERS": str(args.workers), "BENTOML_DO_NOT_TRACK": "true"}
        child_env.setdefault("OMP_NUM_THREADS", "1")
        # BentoML records an OpenTelemetry span tree per request even when it samples none (RECORD_ONLY), and
        # pending timers keep them alive: CPU and longer GC pauses for nothing. Tracing users set it to false.
        child_env.setdefault("OTEL_SDK_DISABLED", "true")
        child = subprocess.Popen(http_command(args.service, args.host, args.port), env=child_env, start_new_session=True)
        print(f"HTTP   http://{args.host}:{args.port}  (serving.service:{SERVICE_CLASSES[args.service]}; /docs, /readyz, /metrics)",
              flush=True)

        def watch() -> None:  # the HTTP server exiting on its own stops everything
            child.wait()
            stop.set()

        threading.Thread(target=watch, daemon=True).start()

    stop.wait()
    code = 0
    if child is not None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        else:
            code = child.returncode or 0
            log.error("the HTTP server exited with code %s", child.returncode)
    if grpc_server is not None:
        grpc_server.stop(grace=5.0)
    return code


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve models over HTTP (BentoML) and gRPC on this machine",
        description="Start the BentoML HTTP service and the gRPC server (same operations, same models) until "
        "SIGINT/SIGTERM. Models: --models (model store tags or config names, the default) or --checkpoint_file.",
    )
    p.add_argument("--service", choices=sorted(SERVICE_CLASSES), default="all",
                   help="which HTTP service: all endpoints (default), sampling (/sample, /decode) or interpolation")
    p.add_argument("--host", default="127.0.0.1", help="address for both servers (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000); with --grpc, the gRPC port")
    p.add_argument("--grpc_port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--grpc_metrics_port", type=int, default=None,
                   help="serve the gRPC server's Prometheus /metrics on this port (0: a free one; default "
                   "$MUSICVAE_GRPC_METRICS_PORT, else none; the HTTP service has its own /metrics)")
    p.add_argument("--grpc", action="store_true", help="run only the gRPC server, on --port")
    p.add_argument("--no_grpc", action="store_true", help="run only the HTTP service")
    p.add_argument("--models", default=None,
                   help="comma-separated model store tags (musicvae-<config>:<version>) or config names "
                   "(its champion, else its newest); default $MUSICVAE_MODELS or cat-mel_2bar_small")
    p.add_argument("--checkpoint_file", action="append", default=[],
                   help="serve this checkpoint (ckpt-N.pt, a run dir, or a Magenta checkpoint with --config) "
                   "instead of packaged models; repeatable")
    p.add_argument("--config", default=None, help="config name: of a Magenta --checkpoint_file, or the packaged model to serve")
    p.add_argument("--workers", type=int, default=int(os.environ.get("MUSICVAE_WORKERS", 1)),
                   help="BentoML worker processes, each with its own GIL (default $MUSICVAE_WORKERS or 1; "
                   "on 2 cores one gave more req/s and a lower p99 than two)")
    p.set_defaults(func=run_serve)
    return p
