"""`musicvae serve` inside a bento's container: the models come from `$BENTO_PATH/models`.

The k8s manifests run `musicvae serve` in the bento image with `BENTOML_HOME` an empty writable dir;
the models the bento packs live under `$BENTO_PATH/models`. Both servers (BentoML's HTTP service with
its class-level BentoModels, and the gRPC server through `musicvae.package`) must find them there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from serving.client import MusicVAEClient
from tests.serving.conftest import CONFIG, start_serve


def test_serve_finds_the_models_packed_in_the_bento(bentoml_home: Path, tmp_path: Path):
    bento = tmp_path / "bento"
    shutil.copytree(bentoml_home / "models", bento / "models")  # the bento's layout
    scratch = tmp_path / "scratch"  # BENTOML_HOME in the container: empty
    srv = start_serve(scratch, tmp_path / "serve.log", MUSICVAE_MODELS=CONFIG, BENTO_PATH=str(bento))
    try:
        models = httpx.post(f"{srv.url}/models", timeout=30).json()["models"]
        assert [m["config"] for m in models] == [CONFIG]
        r = httpx.post(f"{srv.url}/sample", json={"num_outputs": 1, "seed": 1}, timeout=30)
        assert r.status_code == 200 and r.content.startswith(b"MThd")
        with MusicVAEClient(srv.grpc_target, timeout=30) as client:
            (midi,) = client.sample(CONFIG, num_outputs=1, seed=1)
        assert midi == r.content  # the same model, the same seed
    finally:
        srv.stop()
    assert not (scratch / "models").exists() or not any((scratch / "models").iterdir())
