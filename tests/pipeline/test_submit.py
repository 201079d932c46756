"""`musicvae pipeline submit` with the real kfp.Client, against a Kubeflow Pipelines API on 127.0.0.1
(tests/pipeline/kfp_server.py): what goes over the wire, and how a failing or silent host ends."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from musicvae.cli import main
from pipelines.cli import git_commit
from pipelines.settings import GPU_NODE_SELECTOR, GPU_RESOURCE, GPU_TOLERATION

from .kfp_server import API, CLIENT_ENV, KfpApiServer

CONFIG = "cat-mel_2bar_small"


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"gate": {"thresholds": {CONFIG: {"min_accuracy": 0.3}}},
                                    "train": {"configs": {CONFIG: {"num_steps": 5000}}}}))
    return path


def _submit(server: KfpApiServer, params: Path, *extra: str) -> int:
    return main(["pipeline", "submit", "--host", server.url, "--data_uri", "s3://bucket/musicvae/data",
                 "--data_version", "abc", "--params", str(params), "--timeout", "60", *extra])


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of a pipeline spec by name: the root DAG's, the loop's and the condition's."""
    return {name: task for component in [spec["root"], *spec["components"].values()]
            for name, task in component.get("dag", {}).get("tasks", {}).items()}


def test_submit_sends_the_compiled_pipeline_and_its_parameters(kfp_server: KfpApiServer, params: Path,
                                                                capsys: pytest.CaptureFixture[str]):
    assert _submit(kfp_server, params, "--num_steps", "20000", "--promote") == 0
    out = capsys.readouterr().out
    # single-user: healthz from the constructor, the experiment looked up by name, created, then the run
    assert kfp_server.calls() == [("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"),
                                  ("POST", f"{API}/experiments"), ("POST", f"{API}/runs")]
    lookup = kfp_server.requests[1].query
    assert json.loads(lookup["filter"])["predicates"] == [{"operation": 1, "key": "display_name",
                                                           "stringValue": "musicvae"}]
    (experiment,) = kfp_server.experiments
    assert experiment["display_name"] == "musicvae"
    (run,) = kfp_server.runs
    assert f"submitted run {run['run_id']} to {kfp_server.url}" in out
    assert f"{kfp_server.url}/#/runs/details/{run['run_id']}" in out  # kfp's own link

    body = kfp_server.run_request()
    assert body["experiment_id"] == experiment["experiment_id"]
    assert body["display_name"].startswith("musicvae-training ")
    parameters = body["runtime_config"]["parameters"]
    assert parameters["data_uri"] == "s3://bucket/musicvae/data" and parameters["data_version"] == "abc"
    assert parameters["runs"] == [{"config": CONFIG, "hparams": "", "num_steps": 20000}]
    assert parameters["promote"] is True and parameters["device"] == "auto"
    assert parameters["git_commit"] == git_commit()  # the lineage's commit of this checkout

    # the compiled IR and its Kubernetes platform spec, as the cluster gets them
    spec, platform = body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "musicvae-training"
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == GPU_RESOURCE
    assert int(resources["accelerator"]["resourceCount"]) == 1
    others = [e["container"] for n, e in spec["deploymentSpec"]["executors"].items()
              if n != "exec-train" and "container" in e]  # (importer executors have none)
    assert others and not any("accelerator" in c.get("resources", {}) for c in others)
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert GPU_TOLERATION in train["tolerations"]
    assert train["nodeSelector"]["labels"] == dict([GPU_NODE_SELECTOR])
    # params.yaml's values are the parameters' defaults; --num_steps overrides them for this run only
    assert spec["root"]["inputDefinitions"]["parameters"]["runs"]["defaultValue"][0]["num_steps"] == 5000
    tasks = _tasks(spec)
    assert all(tasks[name]["cachingOptions"]["enableCache"] is True
               for name in ("validate", "convert", "train", "evaluate", "gate", "package"))

    # again without caching: the experiment is found by name, not created twice; promote off by default
    assert _submit(kfp_server, params, "--no-cache") == 0
    assert kfp_server.calls()[4:] == [("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"),
                                      ("POST", f"{API}/runs")]
    second = kfp_server.runs[1]
    assert second["experiment_id"] == experiment["experiment_id"] and len(kfp_server.experiments) == 1
    assert second["runtime_config"]["parameters"]["promote"] is False
    assert "runs" not in second["runtime_config"]["parameters"]  # params.yaml's default
    # caching off for every task, those in the loop and the condition too (proto3 JSON leaves out false)
    tasks = _tasks(second["pipeline_spec"]["pipeline_spec"])
    assert {"validate", "convert", "train", "evaluate", "gate", "package"} <= tasks.keys()
    assert all(t["cachingOptions"].get("enableCache", False) is False for t in tasks.values())
    assert second["pipeline_spec"]["platform_spec"] == body["pipeline_spec"]["platform_spec"]
    assert f"submitted run {second['run_id']}" in capsys.readouterr().out


def test_submit_to_a_namespace_and_experiment(kfp_server: KfpApiServer, params: Path):
    """Multi-user installs: with --namespace the client skips healthz and scopes the experiment."""
    assert _submit(kfp_server, params, "--namespace", "ml", "--experiment", "nightly", "--run-name", "r1") \
        == 0
    assert kfp_server.calls() == [("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
                                  ("POST", f"{API}/runs")]
    assert kfp_server.requests[0].query["namespace"] == "ml"
    (experiment,) = kfp_server.experiments
    assert (experiment["display_name"], experiment["namespace"]) == ("nightly", "ml")
    assert kfp_server.run_request()["display_name"] == "r1"


def test_a_failing_host_exits_1_with_its_answer(kfp_server: KfpApiServer, params: Path, tmp_path: Path):
    """The real CLI process: HTTP 500 is one request and one line on stderr, no traceback, no retries."""
    kfp_server.status = 500
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["HOME"] = str(tmp_path / "home")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "musicvae.cli", "pipeline", "submit", "--host",
                          kfp_server.url, "--data_uri", "s3://b/d", "--params", str(params), "--timeout", "60"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert (f"musicvae pipeline submit: error: {kfp_server.url} answered HTTP 500 Internal Server Error: "
            "the test server fails every request") in out.stderr
    assert "Traceback" not in out.stderr and "submitted run" not in out.stdout
    assert kfp_server.calls() == [("GET", f"{API}/healthz")]
    assert time.monotonic() - started < 60


def test_an_unreachable_host_exits_1(kfp_client_env: Path, params: Path, capsys: pytest.CaptureFixture[str]):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    assert main(["pipeline", "submit", "--host", host, "--data_uri", "s3://b/d", "--params", str(params),
                 "--timeout", "60"]) == 1
    err = capsys.readouterr().err
    assert f"musicvae pipeline submit: error: cannot reach {host}: " in err and "Connection refused" in err
    assert "Traceback" not in err


def test_a_silent_host_times_out(kfp_client_env: Path, params: Path, capsys: pytest.CaptureFixture[str]):
    """A host that takes the connection and never answers: exit 1 after --timeout, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody reads or answers
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code = main(["pipeline", "submit", "--host", host, "--data_uri", "s3://b/d", "--params", str(params),
                     "--timeout", "2"])
        waited = time.monotonic() - started
    assert code == 1
    err = capsys.readouterr().err
    assert f"musicvae pipeline submit: error: no answer from {host} within 2 s (--timeout)" in err
    assert 2 <= waited < 30  # compiling the pipeline comes first, outside the deadline
