"""`musicvae serve` itself: given checkpoints (no model store), clean shutdown of both servers on SIGTERM,
a clear error for a model it cannot load."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest

from serving.client import MusicVAEClient
from tests.serving.conftest import CONFIG, MUSICVAE, ROOT, server_env, start_serve


def test_serve_a_checkpoint_then_stop_both_on_sigterm(checkpoint: Path, tmp_path: Path):
    srv = start_serve(tmp_path / "empty_home", tmp_path / "serve.log", ["--checkpoint_file", str(checkpoint), "--service", "sampling"])
    try:
        r = httpx.post(f"{srv.url}/sample", json={"format": "notes"}, timeout=30)
        assert r.status_code == 200 and r.json()["config"] == CONFIG
        # torch's ops on one thread (OMP_NUM_THREADS=1), a batched decode on every core
        assert httpx.post(f"{srv.url}/models", timeout=30).json()["decode_threads"] == len(os.sched_getaffinity(0))
        assert httpx.post(f"{srv.url}/interpolate", timeout=30).status_code == 404  # the sampling service only
        with MusicVAEClient(srv.grpc_target) as c:
            assert c.health() == "SERVING" and len(c.sample()) == 1
    finally:
        assert srv.stop() == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{srv.url}/readyz", timeout=2)
    with grpc.insecure_channel(srv.grpc_target) as channel:
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=1)
    log = srv.log.read_text()
    assert "Traceback" not in log, log[-2000:]


def test_serve_refuses_a_model_it_cannot_find(bentoml_home: Path):
    out = subprocess.run(
        [str(MUSICVAE), "serve", "--port", "0", "--models", "cat-drums_2bar_small"],
        env=server_env(bentoml_home), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "no packaged model for 'cat-drums_2bar_small'" in out.stderr


def test_bentoml_build_packs_the_model_and_the_bento_serves(bentoml_home: Path, tmp_path: Path):
    """`bentoml build` offline into the temporary store, then `bentoml serve <bento>` answers /sample."""
    import shutil
    import sys
    import time

    from tests.serving.conftest import Server, free_port

    home = tmp_path / "home"
    shutil.copytree(bentoml_home, home)
    env = server_env(home, MUSICVAE_MODELS=CONFIG)
    bentoml = [sys.executable, "-m", "bentoml"]
    out = subprocess.run([*bentoml, "build", "-f", "serving/bentofile.yaml", "--output", "tag", "."], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("musicvae:")
    (bento_yaml,) = (home / "bentos" / "musicvae").glob("*/bento.yaml")
    assert "musicvae-cat-mel_2bar_small" in bento_yaml.read_text()  # the model is part of the Bento

    port = free_port()
    log = (tmp_path / "bento.log").open("wb")
    proc = subprocess.Popen([*bentoml, "serve", tag, "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    srv = Server(proc, port, 0, tmp_path / "bento.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{srv.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        r = httpx.post(f"{srv.url}/sample", json={}, timeout=30)
        assert r.status_code == 200 and r.content.startswith(b"MThd"), srv.log.read_text()[-2000:]
    finally:
        srv.stop()
