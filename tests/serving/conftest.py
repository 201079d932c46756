"""Shared serving fixtures: a tiny cat-mel_2bar_small trained here by music_vae_train, packaged into a
temporary BentoML model store, and one `musicvae serve` (HTTP + gRPC on 127.0.0.1) per test session.

Every server runs with BENTOML_HOME in a temporary folder and free ports on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pretty_midi
import pytest

from tests.model.test_train import _write_melodies

CONFIG = "cat-mel_2bar_small"
TINY = "batch_size=8,enc_rnn_size=[32],dec_rnn_size=[32],z_size=8"
ROOT = Path(__file__).resolve().parents[2]
MUSICVAE = Path(sys.executable).with_name("musicvae")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test module here runs torch on one thread (tests/conftest.py)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def melody(pitches: list[int], qpm: float = 120.0) -> bytes:
    """Eighth notes (0 = rest) as MIDI bytes: 16 of them are one 2-bar window."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    inst = pretty_midi.Instrument(0)
    step = 60.0 / qpm / 2
    inst.notes = [pretty_midi.Note(80, p, i * step, (i + 1) * step) for i, p in enumerate(pitches) if p]
    pm.instruments.append(inst)
    return to_bytes(pm)


def to_bytes(pm: pretty_midi.PrettyMIDI) -> bytes:
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


UP = [60, 62, 64, 65, 67, 69, 71, 72, 74, 72, 71, 69, 67, 65, 64, 62]
DOWN = [72, 71, 69, 67, 65, 64, 62, 60, 59, 60, 62, 64, 65, 67, 69, 71]


@pytest.fixture(scope="session")
def midi_a() -> bytes:
    return melody(UP)


@pytest.fixture(scope="session")
def midi_b() -> bytes:
    return melody(DOWN)


@pytest.fixture(scope="session")
def midi_long() -> bytes:
    """Eight bars of different notes: several 2-bar windows, so not one interpolation input."""
    return melody([55 + (i * 5) % 24 for i in range(64)])


@pytest.fixture(scope="session")
def midi_drums() -> bytes:
    """Only drums: no melody window at all."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(0, is_drum=True)
    inst.notes = [pretty_midi.Note(100, 36, i * 0.25, i * 0.25 + 0.1) for i in range(16)]
    pm.instruments.append(inst)
    return to_bytes(pm)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cat-mel_2bar_small run: a few real optimisation steps on generated melodies."""
    from musicvae.cli_train import main

    midi = _write_melodies(tmp_path_factory.mktemp("midi"), count=6, bars=4)
    run = tmp_path_factory.mktemp("run")
    args = [f"--config={CONFIG}", f"--run_dir={run}", f"--examples_path={midi}", f"--hparams={TINY}",
            "--num_steps=4", "--num_workers=0", "--seed=3", "--device=cpu"]
    assert main(args) == 0
    return run


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """A temporary BentoML home whose model store holds the tiny model as musicvae-cat-mel_2bar_small."""
    from musicvae.package import Lineage, package_model

    home = tmp_path_factory.mktemp("bentoml_home")
    before = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        lineage = Lineage(data_version="test", git_commit="test", config=CONFIG, params={}, run_dir=str(checkpoint))
        package_model(checkpoint, {"step": 4}, lineage)
    finally:
        if before is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = before
    return home


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICVAE_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


class Server:
    def __init__(self, proc: subprocess.Popen, http_port: int, grpc_port: int, log: Path) -> None:
        self.proc, self.http_port, self.grpc_port, self.log = proc, http_port, grpc_port, log
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_serve(home: Path, log: Path, extra_args: list[str] = (), **env: str) -> Server:
    """`musicvae serve` on free ports; returns once /readyz answers 200 (or fails with the log).

    A port found free can be taken before the server binds it (other jobs share the machine): then
    it tries again on other ports, up to three times."""
    for _ in range(3):
        http_port, grpc_port = free_port(), free_port()
        out = log.open("wb")
        proc = subprocess.Popen(
            [str(MUSICVAE), "serve", "--port", str(http_port), "--grpc_port", str(grpc_port), *extra_args],
            env=server_env(home, **env), stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT),
        )
        server = Server(proc, http_port, grpc_port, log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        server.stop()
        text = log.read_text()
        if "Address already in use" not in text and "in use?" not in text:
            pytest.fail(f"musicvae serve exited with {proc.returncode} or was not ready in 120 s:\n{text[-3000:]}")
    pytest.fail(f"musicvae serve found no free ports in three tries:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def server(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`musicvae serve` with the packaged model: HTTP (all endpoints) and gRPC, shared by the session."""
    srv = start_serve(bentoml_home, tmp_path_factory.mktemp("logs") / "serve.log", MUSICVAE_MODELS=CONFIG)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def busy_server(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with tiny limits (2 requests in flight per protocol), for the overload tests."""
    srv = start_serve(
        bentoml_home, tmp_path_factory.mktemp("logs") / "busy.log", MUSICVAE_MODELS=CONFIG,
        MUSICVAE_MAX_CONCURRENCY="2", MUSICVAE_GRPC_MAX_CONCURRENCY="2", MUSICVAE_MAX_QUEUE="4",
    )
    yield srv
    srv.stop()
