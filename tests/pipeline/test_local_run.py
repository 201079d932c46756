"""The whole pipeline, for real, through kfp.local's SubprocessRunner (`musicvae pipeline run --local`): a tiny
corpus with two corrupt files, a tiny model trained for a few steps, a packaged model at the end; a rerun reuses
every finished task; a run killed mid-training resumes; a corpus with nothing valid stops before training."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from musicvae.cli import main
from tests.components.corpus import CORRUPT, TINY_HPARAMS, write_corpus

CONFIG = "cat-mel_2bar_small"
GATE = {"thresholds": {CONFIG: {"min_accuracy": 0.0, "max_r_loss": 1e6}}, "tolerance": 0.02,
        "compare_to_champion": True}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in {"OMP_NUM_THREADS": "1", "BENTOML_HOME": str(tmp_path / "bentoml"),
                       "BENTOML_DO_NOT_TRACK": "true", "TMPDIR": str(tmp_path / "tmp")}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # kfp.local's per-task folders go under TMPDIR
    train = {"seed": 0, "configs": {CONFIG: {"hparams": TINY_HPARAMS, "num_steps": 4}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gate": GATE, "train": train}))
    return tmp_path


def _run(tmp: Path, data: Path, *extra: str) -> int:
    return main(["pipeline", "run", "--local", "--data_dir", str(data), "--pipeline_root", str(tmp / "root"),
                 "--params", str(tmp / "params.yaml"), *extra])


@pytest.mark.slow
def test_local_run_quarantines_trains_gates_and_packages_then_reuses_finished_work(
    env: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
):
    from musicvae.package import resolve_model

    data = write_corpus(env / "data", corrupt=True)
    assert _run(env, data) == 0
    summary = json.loads((env / "root" / "summary.json").read_text())
    quarantined = Path(summary["validation_quarantine"]).read_text()
    assert all(name in quarantined for name in CORRUPT)
    result = summary["configs"][CONFIG]
    assert result["passed"] is True and Path(result["checkpoint"]).is_file()
    stored = resolve_model(result["tag"])
    assert stored.info.metadata["step"] == 4
    assert stored.info.metadata["lineage"]["data_version"].startswith("sha256:")
    assert Path(result["checkpoint"]).is_relative_to(env / "bentoml")
    first = capfd.readouterr()
    assert "pipeline finished" in first.out and result["tag"] in first.out

    caplog.clear()
    caplog.set_level(logging.INFO)
    assert _run(env, data) == 0  # the same run again: every task comes from the cache
    log = caplog.text
    for task in ("validate", "convert", "convert-2", "train", "evaluate", "gate"):
        assert f"Task {task} cache hit" in log, task


@pytest.mark.slow
def test_local_run_stops_before_training_when_no_file_is_valid(env: Path, capfd: pytest.CaptureFixture[str]):
    data = write_corpus(env / "data", n_train=0, n_heldout=0, corrupt=True)
    assert _run(env, data) == 1
    out = capfd.readouterr()
    assert "no valid melody file" in out.out + out.err
    assert "Inner task failed: 'validate'" in out.err and "did not pass validation; report:" in out.err
    assert not list((env / "root").glob("*/for-loop-*/train"))  # nothing was trained


def test_run_refuses_a_missing_corpus_and_unknown_configs(env: Path, capsys: pytest.CaptureFixture[str]):
    assert _run(env, env / "nowhere") == 2
    assert "manifest.csv not found" in capsys.readouterr().err
    data = write_corpus(env / "data")
    assert _run(env, data, "--config", "no-such-config", "--num_steps", "3") == 2
    assert "no-such-config" in capsys.readouterr().err
    assert _run(env, data, "--config", "hierdec-mel_16bar") == 2
    assert "--num_steps is needed for hierdec-mel_16bar" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_local_run_resumes_without_redoing_finished_work(env: Path):
    data = write_corpus(env / "data")
    cmd = [sys.executable, "-m", "musicvae.cli", "pipeline", "run", "--local", "--data_dir", str(data),
           "--pipeline_root", str(env / "root"), "--params", str(env / "params.yaml"), "--num_steps", "400",
           "--checkpoint_every_secs", "0"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def cached_tasks() -> list[set[str]]:
        """Output names of each task in the local cache (written by the orchestrator after the task's own
        executor_output.json, so a task is only "finished" for a rerun once it is here)."""
        return [set(json.loads(p.read_text())) for p in (env / "root" / ".kfp_cache").glob("*.json")]

    try:
        deadline = time.monotonic() + 180
        # Kill once training has written a checkpoint. The local runner runs one task at a time, and in a
        # loop body whose order varies from run to run (the compiled spec's task map): the heldout
        # conversion may have run before training or not yet.
        while True:
            tasks = cached_tasks()
            assert not any("model" in t for t in tasks), "training finished before the kill: raise --num_steps"
            if list((env / "root").glob("checkpoints/*/train/ckpt-*.pt")):
                converted = sum("shards" in t for t in tasks)
                break
            assert first.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and its task processes, mid-training
        first.wait()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    executed = re.findall(r"Executing task \S*'([\w-]+)'", log)
    # validate and the training split's convert: cached. The heldout convert, if it had not finished, runs
    # again, before or after train (the loop body's order varies from run to run).
    assert [t for t in executed if t not in ("convert", "convert-2")] == ["importer", "train", "evaluate", "gate", "package"], executed
    assert converted >= 1 and executed.count("convert") + executed.count("convert-2") == 2 - converted, (converted, executed)
    assert re.search(r"resuming from \S+ckpt-([1-9]\d*)\.pt", log)
    assert json.loads((env / "root" / "summary.json").read_text())["configs"][CONFIG]["passed"] is True
