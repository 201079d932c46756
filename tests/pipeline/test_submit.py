"""`musicvae pipeline submit` against a stand-in for kfp.Client (no cluster here): what it sends."""

from pathlib import Path

import kfp
import pytest
import yaml

from musicvae.cli import main


class FakeClient:
    calls: list[dict] = []

    def __init__(self, host: str, namespace: str | None = None):
        self.host, self.namespace = host, namespace

    def create_run_from_pipeline_func(self, pipeline, arguments, run_name=None, experiment_name=None,
                                      enable_caching=None):
        FakeClient.calls.append({"host": self.host, "namespace": self.namespace, "pipeline": pipeline,
                                 "arguments": arguments, "experiment": experiment_name,
                                 "enable_caching": enable_caching})

        class Result:
            run_id = "run-123"

        return Result()


def test_submit_sends_the_pipeline_with_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]):
    from kfp import compiler

    monkeypatch.setattr(kfp, "Client", FakeClient)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gate": {"thresholds": {"cat-mel_2bar_small": {"min_accuracy": 0.3}}},
                                      "train": {"configs": {"cat-mel_2bar_small": {"num_steps": 5000}}}}))
    assert main(["pipeline", "submit", "--host", "http://kfp.example:8080", "--namespace", "ml",
                 "--data_uri", "s3://bucket/musicvae/data", "--data_version", "abc", "--params", str(params),
                 "--num_steps", "20000", "--promote"]) == 0
    assert "submitted run run-123 to http://kfp.example:8080" in capsys.readouterr().out
    call = FakeClient.calls[-1]
    assert (call["host"], call["namespace"], call["experiment"], call["enable_caching"]) == (
        "http://kfp.example:8080", "ml", "musicvae", True)
    args = call["arguments"]
    assert args["data_uri"] == "s3://bucket/musicvae/data" and args["data_version"] == "abc"
    assert args["runs"] == [{"config": "cat-mel_2bar_small", "hparams": "", "num_steps": 20000}]
    assert args["device"] == "auto" and args["git_commit"] and args["promote"] is True
    compiler.Compiler().compile(call["pipeline"], str(tmp_path / "submitted.yaml"))  # what the cluster gets
    spec = next(yaml.safe_load_all((tmp_path / "submitted.yaml").read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["runs"]["defaultValue"][0]["num_steps"] == 5000
