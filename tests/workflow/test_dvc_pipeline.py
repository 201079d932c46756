"""dvc.yaml and params.yaml agree: stages, params keys, outputs under runs/dvc, configs; `dvc stage list` works.
Plus the retraining workflow file: GitHub's schema (check-jsonschema's vendored copy, offline) and its triggers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from musicvae.configs import CONFIG_MAP

from .conftest import ROOT

STAGES = ["corpus", "validate", "convert", "train", "evaluate", "gate", "package"]
PER_CONFIG = {"convert", "train", "evaluate", "gate", "package"}
WORKFLOW = ROOT / ".github" / "workflows" / "retrain.yml"
_VAR = re.compile(r"\$\{([^}]+)\}")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _paths(entries: list[Any]) -> list[str]:
    """Paths of a stage's outs/metrics/plots/deps list (strings or {path: options})."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _instances(stages: dict[str, Any], params: dict[str, Any]):
    """(name, key, item, body) of every stage, foreach stages once per config."""
    for name in STAGES:
        stage = stages[name]
        if "foreach" in stage:
            assert stage["foreach"] == "${train.configs}", name
            for key, item in params["train"]["configs"].items():
                yield name, key, item, stage["do"]
        else:
            yield name, None, None, stage


def _render(text: str, key: str | None, item: dict[str, Any] | None, params: dict[str, Any]) -> str:
    def value(m: re.Match[str]) -> str:
        var = m.group(1)
        if var == "key":
            return str(key)
        if var.startswith("item."):
            return str(_lookup(item or {}, var[len("item."):]))
        return str(_lookup(params, var))

    return _VAR.sub(value, text)


def test_stages_in_order_and_one_chain_per_config():
    dvc, params = _load("dvc.yaml"), _load("params.yaml")
    assert list(dvc["stages"]) == STAGES
    assert {n for n in STAGES if "foreach" in dvc["stages"][n]} == PER_CONFIG
    assert set(params) == {"corpus", "validate", "convert", "train", "evaluate", "gate", "package"}
    for config, item in params["train"]["configs"].items():
        assert config in CONFIG_MAP and "." not in config
        assert set(item) == {"hparams", "num_steps"} and item["num_steps"] > 0
        CONFIG_MAP[config].with_hparams(item["hparams"])  # the hparams parse
        assert config in params["gate"]["thresholds"], f"no gate thresholds for {config}"


def test_every_params_key_exists_and_every_interpolated_key_is_declared():
    dvc, params = _load("dvc.yaml"), _load("params.yaml")
    for name, key, item, body in _instances(dvc["stages"], params):
        declared = [_render(p, key, item, params) for p in body.get("params", [])]
        for p in declared:
            _lookup(params, p)  # raises KeyError for a missing key
        deps = " ".join(body.get("deps", []))
        for var in _VAR.findall(body["cmd"]):
            if var == "key" or var.startswith("item."):
                continue
            # a value the command reads is a declared param (or a prefix of one), or part of a dep path
            covered = any(var == d or var.startswith(d + ".") for d in declared) or f"${{{var}}}" in deps
            assert covered, f"{name}@{key}: ${{{var}}} is used but not declared in params"
        # and nothing declared that the stage does not read (so e.g. a gate threshold never retrains)
        read = [f"train.configs.{key}.{v[5:]}" if v.startswith("item.") else v for v in _VAR.findall(body["cmd"])]
        if name in ("gate", "package"):  # `musicvae gate`/`package` read params.yaml themselves
            read += [f"gate.thresholds.{key}", "gate.tolerance", "gate.compare_to_champion", f"train.configs.{key}"]
        for p in declared:
            assert any(v == p or v.startswith(p + ".") or p.startswith(v + ".") for v in read), f"{name}: {p} is not read"
        rendered = _render(body["cmd"], key, item, params)
        assert "${" not in rendered


def test_outputs_are_under_runs_dvc_and_git_ignored():
    dvc, params = _load("dvc.yaml"), _load("params.yaml")
    outs = []
    for _, key, item, body in _instances(dvc["stages"], params):
        for section in ("outs", "metrics", "plots"):
            outs += [_render(p, key, item, params) for p in _paths(body.get(section, []))]
    assert outs and all(p.startswith("runs/dvc/") for p in outs), outs
    assert not any(p == "data" or p.startswith("data/") for p in outs)  # data/ is data.dvc's
    ignored = subprocess.run(["git", "check-ignore", *outs], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(outs)


def test_metrics_and_plots_are_declared():
    stages = _load("dvc.yaml")["stages"]
    assert _paths(stages["evaluate"]["do"]["metrics"]) == ["runs/dvc/models/${key}/eval/metrics.json"]
    assert _paths(stages["gate"]["do"]["metrics"]) == ["runs/dvc/gate/${key}.json"]
    plot = stages["train"]["do"]["plots"][0]
    assert list(plot) == ["runs/dvc/models/${key}/train/metrics.csv"] and plot[next(iter(plot))]["x"] == "step"
    assert any(p.endswith(".pt") for p in _paths(stages["train"]["do"]["outs"]))


def test_dvc_stage_list(tmp_path: Path):
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "site_cache"), "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    configs = list(_load("params.yaml")["train"]["configs"])
    assert names == ["corpus", "validate", *(f"{s}@{c}" for s in STAGES[2:] for c in configs)]


# --- .github/workflows/retrain.yml -------------------------------------------------------------------------


def test_workflow_is_valid_against_githubs_schema():
    pytest.importorskip("check_jsonschema")
    out = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                          str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflow_triggers_and_steps():
    doc = yaml.safe_load(WORKFLOW.read_text())
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads the key `on` as True
    assert on["push"]["branches"] == ["main"]
    assert set(on["push"]["paths"]) == {"data.dvc", "params.yaml", "dvc.yaml", "musicvae/**"}
    assert "workflow_dispatch" in on
    (job,) = doc["jobs"].values()
    runs = [step.get("run", "") for step in job["steps"]]
    assert any("bash scripts/bootstrap.sh" in r for r in runs)
    assert any(r.startswith(".venv/bin/musicvae retrain") for r in runs)
    assert runs.index(next(r for r in runs if "bootstrap" in r)) < runs.index(next(r for r in runs if "retrain" in r))
    assert job["env"]["KFP_HOST"] == "${{ vars.KFP_HOST }}"
    assert job["timeout-minutes"] <= 90


def test_deps_are_repository_files_or_outputs_of_earlier_stages():
    dvc, params = _load("dvc.yaml"), _load("params.yaml")
    produced: list[str] = []
    for name, key, item, body in _instances(dvc["stages"], params):
        for dep in (_render(d, key, item, params) for d in body.get("deps", [])):
            if dep.startswith("runs/"):
                assert any(dep == p or dep.startswith(p + "/") for p in produced), f"{name}@{key}: {dep} is made by no earlier stage"
            else:
                assert (ROOT / dep).exists(), f"{name}@{key}: {dep} does not exist"
        for section in ("outs", "metrics", "plots"):
            produced += [_render(p, key, item, params) for p in _paths(body.get(section, []))]
