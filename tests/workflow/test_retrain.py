"""`musicvae retrain` on the DVC path, for real: a copy of the repository with a tiny params.yaml, real
`dvc repro`, gate, packaging into a temporary BentoML store and promotion; then a no-op rerun, a
`dvc exp run -S ...`, and a gate that fails (nothing promoted, exit 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from musicvae.package import EXIT_GATE_FAILED
from musicvae.retrain import _data_version
from tests.pipeline.kfp_server import CLIENT_ENV, KfpApiServer

from .conftest import CONFIG, ROOT, TINY

pytestmark = pytest.mark.slow
MUSICVAE = [sys.executable, "-m", "musicvae.cli"]
DVC = [sys.executable, "-m", "dvc"]


def _copy_repo(dest: Path) -> None:
    """The checkout's files (tracked, and untracked but not ignored) in a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _tiny_params(path: Path) -> None:
    params = yaml.safe_load(path.read_text())
    params["corpus"]["limit"] = 2
    params["train"]["log_every_steps"] = 2
    params["train"]["configs"] = {CONFIG: {"hparams": TINY, "num_steps": 4}}
    params["evaluate"]["eval_num_batches"] = 2
    params["gate"]["tolerance"] = 1.0
    params["gate"]["thresholds"] = {CONFIG: {"min_accuracy": 0.0, "max_r_loss": 1e9}}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("retrain")
    repo = tmp / "repo"
    _copy_repo(repo)
    _tiny_params(repo / "params.yaml")
    env = {
        **os.environ,
        # as after `source .venv/bin/activate`: the stages call musicvae and music_vae_train
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc_site_cache"),
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }  # fmt: skip
    env.pop("KFP_HOST", None)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    return repo, env


def _champion(env: dict[str, str]) -> str | None:
    code = "from musicvae.package import champion_tag; print(champion_tag(%r))" % CONFIG
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_retrain_with_dvc_promotes_only_gated_models(repo: tuple[Path, dict[str, str]]):
    root, env = repo
    summary = root / "runs" / "summary.json"

    first = _run([*MUSICVAE, "retrain", "--summary", str(summary)], root, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (result,) = json.loads(summary.read_text())
    assert result["config"] == CONFIG and result["passed"] and result["promoted"]
    assert result["tag"].startswith("musicvae-cat-mel_2bar_small:")
    assert _champion(env) == result["tag"]
    assert f"promoted {result['tag']} to champion" in first.stdout
    # the outputs stay out of git: only dvc.lock changed
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert [line[3:] for line in status.splitlines()] == ["dvc.lock"], status
    metrics = json.loads(_run([*DVC, "metrics", "show", "--json"], root, env).stdout)
    assert "accuracy" in json.dumps(metrics) and "passed" in json.dumps(metrics)
    assert _run([*DVC, "plots", "show", "-o", str(root / "runs" / "plots")], root, env).returncode == 0
    assert (root / "runs" / "plots" / "index.html").is_file()

    # nothing changed: a no-op
    again = _run([*MUSICVAE, "retrain", "--summary", str(summary)], root, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Stage 'train@{CONFIG}' didn't change, skipping" in again.stdout
    assert json.loads(summary.read_text())[0]["tag"] == result["tag"]

    # an experiment with one parameter changed retrains that config
    for cmd in (["git", "add", "dvc.lock"], ["git", "commit", "-q", "-m", "lock"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    exp = _run([*DVC, "exp", "run", "-S", f"train.configs.{CONFIG}.num_steps=6"], root, env)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert (root / "runs" / "dvc" / "models" / CONFIG / "train" / "ckpt-6.pt").is_file()
    shown = json.dumps(json.loads(_run([*DVC, "exp", "show", "--json"], root, env).stdout))
    assert "num_steps" in shown and "accuracy" in shown

    # a gate nobody can pass: nothing is packaged or promoted, exit 3, the champion stays
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"]["thresholds"][CONFIG]["min_accuracy"] = 2.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = _run([*MUSICVAE, "retrain", "--summary", str(summary)], root, env)
    assert failed.returncode == EXIT_GATE_FAILED, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert f"Stage 'train@{CONFIG}' didn't change, skipping" in failed.stdout  # thresholds never retrain
    (result_failed,) = json.loads(summary.read_text())
    assert result_failed["passed"] is False and not result_failed["promoted"] and result_failed["tag"] is None
    assert any("min_accuracy): FAILED" in r for r in result_failed["reasons"])
    assert "no config passed the eval gate" in failed.stderr
    assert _champion(env) == result["tag"]


def test_retrain_submits_to_kubeflow_when_a_host_is_set(tmp_path: Path):
    """The KFP path runs `musicvae pipeline submit --host H --data_uri U --promote`, for real, against a
    Kubeflow Pipelines API on 127.0.0.1 (tests/pipeline/kfp_server.py); without a data URI it is a usage
    error; a host nobody listens on is a failed submission."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV and k != "KFP_DATA_URI"}
    env["HOME"] = str(tmp_path)  # no ~/.config/kfp/context.json of this machine
    env["KFP_HOST"] = "http://127.0.0.1:9"
    out = subprocess.run([*MUSICVAE, "retrain", "--repo_dir", str(ROOT)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "needs --data_uri or $KFP_DATA_URI" in out.stderr

    with KfpApiServer() as server:
        for extra, promote in (([], True), (["--no-promote"], False)):
            cmd = [*MUSICVAE, "retrain", "--repo_dir", str(ROOT), "--kfp_host", server.url, "--data_uri",
                   "s3://bucket/corpus", "--submit-arg=--num_steps=7", "--submit-arg=--timeout=60", *extra]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            run = server.runs[-1]
            assert f"submitted run {run['run_id']} to {server.url}" in out.stdout
            assert f"submitted to {server.url}: the run gates, packages" in out.stdout
            parameters = run["runtime_config"]["parameters"]
            assert parameters["promote"] is promote, extra
            assert parameters["data_uri"] == "s3://bucket/corpus"
            assert parameters["data_version"] == _data_version(ROOT) != ""  # data.dvc's md5
            assert {r["num_steps"] for r in parameters["runs"]} == {7}
            assert "exec-train" in run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
        assert [e["display_name"] for e in server.experiments] == ["musicvae"]

    env["KFP_DATA_URI"] = "s3://nowhere/corpus"
    out = subprocess.run([*MUSICVAE, "retrain", "--repo_dir", str(ROOT)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "`musicvae pipeline submit` failed" in out.stderr, out.stderr[-2000:]
    assert "musicvae pipeline submit: error: cannot reach http://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr
