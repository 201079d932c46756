"""Serving speed under load: req/s and p50/p99 latency of sampling and interpolation, HTTP and gRPC,
at several client concurrencies (issue 7, item 5).

    python benchmarks/serve.py                                   # full-size cat-mel_2bar_small, random weights
    python benchmarks/serve.py --checkpoint_file runs/mel2 --workers 2 --json out.json
    python benchmarks/serve.py --models cat-mel_2bar_small       # a packaged model ($BENTOML_HOME)
    python benchmarks/serve.py --url http://127.0.0.1:3000 --grpc_target 127.0.0.1:50051   # a running server

Without --url the script starts `musicvae serve` on free ports on 127.0.0.1 (HTTP and gRPC in one
deployment), waits for /readyz, runs every cell and stops it. Without a model it builds a
cat-mel_2bar_small with the config's full sizes and random weights: sampling costs the same whatever
the weights (fixed length, same layers), so the figures hold for a trained model of that config.

Each cell (protocol × operation × concurrency) sends at most --requests requests and runs at most
--duration seconds after a short warm-up; C clients each send their next request when the previous
answer arrives (closed loop). Sampling: `POST /sample` {"config", "num_outputs": 1} -> one .mid
(gRPC: Sample). Interpolation: `POST /interpolate` with two 2-bar MIDI uploads, num_outputs=5
(Magenta's default; gRPC: Interpolate) -> a zip of 5 .mid. `--format notes` asks for JSON note lists
instead, which skips writing MIDI files (about 0.1 ms per file since midi_io's direct writer). Latency is per request, client side; 4xx/5xx and gRPC errors
are counted, not timed. The load generator (HttpPool below, grpc.aio; on uvloop) runs in this process on the same
machine, so it competes with the server for the cores: the 1-minute load average before and after
each cell is in the table. "cpu ms/req" is the CPU time (user + system) the server's processes used
during the cell per answered request, which the load on the machine changes little: 1000 × cores /
(cpu ms/req) is the most the server could answer per second on idle cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def melody_bytes(pitches: list[int]) -> bytes:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(80, p, i * 0.25, (i + 1) * 0.25) for i, p in enumerate(pitches)]
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


MIDI_1 = [60, 62, 64, 65, 67, 69, 71, 72, 74, 72, 71, 69, 67, 65, 64, 62]
MIDI_2 = [72, 71, 69, 67, 65, 64, 62, 60, 59, 60, 62, 64, 65, 67, 69, 71]


def random_checkpoint(config_name: str, directory: Path) -> Path:
    """A checkpoint of `config_name` at its full sizes with random weights, in our format."""
    import torch

    from musicvae.configs import get_config
    from musicvae.train import CHECKPOINT_FORMAT, config_to_dict, save_checkpoint

    torch.manual_seed(0)
    config = get_config(config_name)
    path = directory / "ckpt-0.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "step": 0, "config": config_to_dict(config),
                     "model": config.build_model().state_dict()}, path)
    return path


class Served:
    """`musicvae serve` in a child process; `stop()` sends SIGTERM."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        cmd = [str(Path(sys.executable).with_name("musicvae")), "serve", "--port", str(self.http_port),
               "--grpc_port", str(self.grpc_port), "--workers", str(args.workers)]
        if args.models:
            cmd += ["--models", args.models]
        else:
            ckpt = args.checkpoint_file or str(random_checkpoint(args.config, workdir))
            cmd += ["--checkpoint_file", ckpt]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "BENTOML_DO_NOT_TRACK": "true",
               "MUSICVAE_MAX_BATCH_ROWS": str(args.max_batch_rows)}
        env.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
        self.log = (workdir / "serve.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self._wait_ready(workdir / "serve.log")

    def _wait_ready(self, log: Path, timeout: float = 180) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"musicvae serve exited ({self.proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"musicvae serve not ready in {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server's processes (HTTP workers, gRPC)."""
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- load generation ----------------------------------------------------------------------------------


async def run_cell(call, concurrency: int, requests: int, duration: float, warmup: int, cpu=None) -> dict:
    """Closed loop: `concurrency` clients, each sending its next call when the last one is answered."""
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + duration

    async def client() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            t = time.perf_counter()
            status = await call()
            if status == "ok":
                latencies.append(time.perf_counter() - t)
            else:
                errors[status] = errors.get(status, 0) + 1

    load_before = os.getloadavg()[0]
    cpu_before = cpu() if cpu else None
    start, own_before = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall, own = time.perf_counter() - start, time.process_time() - own_before
    cpu_ms = None
    if cpu and latencies:
        cpu_ms = round((cpu() - cpu_before) * 1e3 / len(latencies), 2)
    lat = np.asarray(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": sent,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "req_per_s": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "server_cpu_ms_per_req": cpu_ms,
        "client_cpu_ms_per_req": round(own * 1e3 / len(latencies), 2) if latencies else None,
    }


class HttpPool:
    """Keep-alive HTTP/1.1 connections that send fixed, prebuilt requests and read status and body.

    The load generator shares the two cores with the server, so its own CPU per call is taken from the
    figures: aiohttp cost about 1 ms of CPU per call here, this about 0.15 ms (the "client cpu"
    column). It handles what the server sends: Content-Length or chunked bodies, and `Connection: close`.
    """

    def __init__(self, url: str) -> None:
        host_port = url.removeprefix("http://").rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def request(self, path: str, content_type: str, body: bytes) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """(status, body); a broken connection raises ConnectionError and is dropped."""
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers = {k.strip().lower(): v.strip().lower() for k, v in (line.split(b":", 1) for line in lines[1:] if b":" in line)}
            if headers.get(b"transfer-encoding") == b"chunked":
                chunks = []
                while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
                    chunks.append(await reader.readexactly(size + 2))
                await reader.readuntil(b"\r\n")
                body = b"".join(c[:-2] for c in chunks)
            else:
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            writer.close()
            raise ConnectionError(type(e).__name__) from e
        if headers.get(b"connection") == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data upload."""
    boundary = "musicvae-benchmark-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.mid"\r\n'
                     f"Content-Type: audio/midi\r\n\r\n".encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def http_calls(pool: HttpPool, config: str, notes: bool):
    midi_1, midi_2 = melody_bytes(MIDI_1), melody_bytes(MIDI_2)
    fmt = "notes" if notes else "midi"
    sample_body = json.dumps({"config": config, "num_outputs": 1, "temperature": 0.5, "format": fmt}).encode()
    sample_req = pool.request("/sample", "application/json", sample_body)
    form_type, form = multipart({"config": config, "num_outputs": "5", "format": "notes" if notes else "zip"},
                                {"input_midi_1": midi_1, "input_midi_2": midi_2})
    interp_req = pool.request("/interpolate", form_type, form)

    async def call(request: bytes, expect: bytes) -> str:
        try:
            status, body = await pool.call(request)
        except ConnectionError as e:
            return f"http {e}"
        return "ok" if status == 200 and body.startswith(expect) else f"http {status}"

    return {"sample": lambda: call(sample_req, b"{" if notes else b"MThd"),
            "interpolate": lambda: call(interp_req, b"{" if notes else b"PK")}


def grpc_calls(channel, config: str, notes: bool):
    import grpc

    from serving import musicvae_pb2 as pb
    from serving import musicvae_pb2_grpc as pb_grpc

    stub = pb_grpc.MusicVAEStub(channel)
    midi_1, midi_2 = melody_bytes(MIDI_1), melody_bytes(MIDI_2)
    fmt = pb.NOTES if notes else pb.MIDI
    sample_req = pb.SampleRequest(config=config, num_outputs=1, temperature=0.5, format=fmt)
    interp_req = pb.InterpolateRequest(config=config, input_midi_1=pb.MidiInput(midi=midi_1),
                                       input_midi_2=pb.MidiInput(midi=midi_2), num_outputs=5, format=fmt)

    async def call(method, req, n: int) -> str:
        try:
            reply = await method(req, timeout=60)
        except grpc.aio.AioRpcError as e:
            return f"grpc {e.code().name}"
        return "ok" if len(reply.notes if notes else reply.midi) == n else "grpc short reply"

    return {"sample": lambda: call(stub.Sample, sample_req, 1), "interpolate": lambda: call(stub.Interpolate, interp_req, 5)}


async def bench(args: argparse.Namespace, url: str, grpc_target: str, cpu=None) -> list[dict]:
    import grpc

    rows = []
    # The load generator's own full collections (its imports alone are ~200k objects) would stall every
    # call in flight and be counted as server latency: keep its start-up heap out of the collector.
    gc.collect()
    gc.freeze()
    pool = HttpPool(url)
    channel = grpc.aio.insecure_channel(grpc_target)
    try:
        notes = args.format == "notes"
        calls = {"http": http_calls(pool, args.config, notes), "grpc": grpc_calls(channel, args.config, notes)}
        for protocol in args.protocols:
            for op in args.ops:
                for c in args.concurrency:
                    row = await run_cell(calls[protocol][op], c, args.requests, args.duration, args.warmup, cpu)
                    pool.close()  # idle connections would outlive uvicorn's 5 s keep-alive between cells
                    row = {"protocol": protocol, "operation": op, "format": args.format, **row}
                    rows.append(row)
                    print(format_row(row), flush=True)
    finally:
        pool.close()
        await channel.close()
    return rows


def uvloop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


HEADER = (f"{'protocol':8} {'operation':12} {'clients':>7} {'requests':>8} {'ok':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu ms/req':>10} {'client cpu':>10}  load  errors")


def format_row(r: dict) -> str:
    errors = ",".join(f"{k}:{v}" for k, v in r["errors"].items()) or "-"
    load = f"{r['load_1min'][0]:.1f}->{r['load_1min'][1]:.1f}"
    return (f"{r['protocol']:8} {r['operation']:12} {r['concurrency']:>7} {r['requests']:>8} {r['ok']:>6} {r['req_per_s']:>7.1f} "
            f"{r['p50_ms'] or float('nan'):>7.1f} {r['p99_ms'] or float('nan'):>7.1f} "
            f"{r['server_cpu_ms_per_req'] or float('nan'):>10.2f} {r['client_cpu_ms_per_req'] or float('nan'):>10.2f}  {load}  {errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:7]))
    parser.add_argument("--config", default="cat-mel_2bar_small", help="config to request (and to build without a model)")
    parser.add_argument("--checkpoint_file", help="serve this checkpoint (default: the config at full size, random weights)")
    parser.add_argument("--models", help="serve these packaged models (model store tags or config names) instead")
    parser.add_argument("--url", help="benchmark a running HTTP server instead of starting one (with --grpc_target)")
    parser.add_argument("--grpc_target", help="host:port of a running gRPC server (with --url)")
    parser.add_argument("--workers", type=int, default=1, help="BentoML worker processes of the started server (default 1)")
    parser.add_argument("--max_batch_rows", type=int, default=32, help="rows per batched decode in the started server (default 32, the service default)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64], help="client counts (default 1 8 32 64)")
    parser.add_argument("--requests", type=int, default=600, help="at most this many requests per cell (default 600)")
    parser.add_argument("--duration", type=float, default=10.0, help="at most this many seconds per cell (default 10)")
    parser.add_argument("--warmup", type=int, default=5, help="sequential warm-up requests per cell (default 5)")
    parser.add_argument("--protocols", nargs="+", choices=["http", "grpc"], default=["http", "grpc"])
    parser.add_argument("--ops", nargs="+", choices=["sample", "interpolate"], default=["sample", "interpolate"])
    parser.add_argument("--format", choices=["midi", "notes"], default="midi",
                        help="answers as MIDI files (default; a zip for interpolation) or JSON note lists")
    parser.add_argument("--json", help="also write the rows and the setup to this JSON file")
    args = parser.parse_args(argv)
    for host in filter(None, [args.url, args.grpc_target]):
        if "127.0.0.1" not in host and "localhost" not in host:
            parser.error("benchmarks run against 127.0.0.1 only")
    if bool(args.url) != bool(args.grpc_target):
        parser.error("give both --url and --grpc_target, or neither")

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        served = None if args.url else Served(args, Path(tmp))
        url = args.url or served.url
        target = args.grpc_target or served.grpc_target
        setup = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "config": args.config, "workers": args.workers, "format": args.format, "max_batch_rows": args.max_batch_rows,
                 "model": args.models or args.checkpoint_file or "random weights, full size",
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        print(f"# {setup}\n{HEADER}", flush=True)
        try:
            # uvloop (pinned with the server's stack) roughly halves the load generator's own CPU per call,
            # which it takes from the cores the server is measured on.
            with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
                rows = runner.run(bench(args, url, target, served.cpu_seconds if served else None))
        finally:
            if served is not None:
                served.stop()
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
