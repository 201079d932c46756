"""Shared workflow fixtures: a tiny cat-mel_2bar_small trained and evaluated here by the real trainer,
and a temporary BentoML model store per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from musicvae.cli_train import main as train_main
from tests.model.test_train import _write_melodies

CONFIG = "cat-mel_2bar_small"
TINY = "batch_size=8,enc_rnn_size=[32],dec_rnn_size=[32],z_size=8"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test module here runs torch on one thread (tests/conftest.py)."""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store: musicvae.package reads $BENTOML_HOME at every call."""
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    return home


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir with train/ckpt-6.pt and eval/metrics.json (6 steps on generated melodies)."""
    midi = _write_melodies(tmp_path_factory.mktemp("midi"), count=10)
    run = tmp_path_factory.mktemp("run")
    common = [f"--config={CONFIG}", f"--run_dir={run}", f"--examples_path={midi}", "--num_workers=0", "--device=cpu"]
    assert train_main([*common, f"--hparams={TINY}", "--num_steps=6", "--log_every_steps=3"]) == 0
    assert train_main([*common, "--mode=eval"]) == 0
    return run


@pytest.fixture(scope="session")
def eval_metrics(trained_run: Path) -> dict:
    return json.loads((trained_run / "eval" / "metrics.json").read_text())
