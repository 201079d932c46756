"""The eval gate: thresholds, no regression against the champion, reasons, and `musicvae gate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from musicvae.cli import main
from musicvae.gate import GateDecision, decide, load_gate_params

from .conftest import CONFIG, ROOT

METRICS = {"loss": 55.0, "r_loss": 54.0, "kl_bits": 90.0, "accuracy": 0.56, "step": 200}
THRESHOLDS = {"min_accuracy": 0.35, "max_r_loss": 75.0, "min_kl_bits": 1.0}


def test_passes_when_every_threshold_holds_and_says_why():
    d = decide(CONFIG, METRICS, THRESHOLDS)
    assert d.passed and d.config == CONFIG
    assert "accuracy 0.56 >= 0.35 (min_accuracy)" in d.reasons
    assert "r_loss 54 <= 75 (max_r_loss)" in d.reasons
    assert any("no champion" in r for r in d.reasons)
    assert not any("FAILED" in r for r in d.reasons)
    assert d.metrics == METRICS and d.champion is None and d.thresholds == THRESHOLDS


@pytest.mark.parametrize(
    ("metrics", "failing"),
    [
        ({**METRICS, "accuracy": 0.2}, "accuracy 0.2 < 0.35 (min_accuracy): FAILED"),
        ({**METRICS, "r_loss": 80.0}, "r_loss 80 > 75 (max_r_loss): FAILED"),
        ({**METRICS, "kl_bits": 0.0}, "kl_bits 0 < 1 (min_kl_bits): FAILED"),
    ],
)
def test_one_failed_threshold_fails_the_gate(metrics: dict, failing: str):
    d = decide(CONFIG, metrics, THRESHOLDS)
    assert not d.passed
    assert failing in d.reasons
    assert sum("FAILED" in r for r in d.reasons) == 1  # the other rules still report, and pass


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, "0.9", True])
def test_a_missing_or_non_numeric_metric_fails(bad):
    metrics = {k: v for k, v in METRICS.items() if k != "accuracy"}
    if bad is not None:
        metrics["accuracy"] = bad
    d = decide(CONFIG, metrics, THRESHOLDS)
    assert not d.passed
    assert any(r.startswith("accuracy is missing or not a finite number") for r in d.reasons)


def test_regression_limit_is_a_fraction_of_the_champions_value():
    champion = {**METRICS, "accuracy": 0.60, "r_loss": 50.0}
    within = decide(CONFIG, {**METRICS, "accuracy": 0.575, "r_loss": 51.0}, THRESHOLDS, champion, tolerance=0.05)
    assert within.passed, within.reasons
    worse_accuracy = decide(CONFIG, {**METRICS, "accuracy": 0.56, "r_loss": 51.0}, THRESHOLDS, champion, 0.05, "musicvae-x:v1")
    assert not worse_accuracy.passed
    assert ("accuracy 0.56 vs champion musicvae-x:v1 0.6 (higher is better, tolerance 5%, limit 0.57): "
            "REGRESSION: FAILED") in worse_accuracy.reasons
    assert worse_accuracy.champion == champion and worse_accuracy.champion_tag == "musicvae-x:v1"
    worse_r_loss = decide(CONFIG, {**METRICS, "accuracy": 0.6, "r_loss": 53.0}, THRESHOLDS, champion, 0.05)
    assert not worse_r_loss.passed
    assert any(r.startswith("r_loss 53 vs champion 50 (lower is better") and r.endswith("REGRESSION: FAILED")
               for r in worse_r_loss.reasons)
    better = decide(CONFIG, {**METRICS, "accuracy": 0.7, "r_loss": 40.0}, THRESHOLDS, champion, 0.0)
    assert better.passed and sum(r.endswith(": ok") for r in better.reasons) == 2


def test_a_champion_without_a_metric_skips_that_comparison():
    d = decide(CONFIG, METRICS, THRESHOLDS, {"accuracy": 0.5})
    assert d.passed
    assert "champion has no r_loss: regression check on it skipped" in d.reasons


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="min_<metric> or max_<metric>"):
        decide(CONFIG, METRICS, {"accuracy": 0.3})
    with pytest.raises(ValueError, match="checks nothing"):
        decide(CONFIG, METRICS, {})
    with pytest.raises(ValueError, match="tolerance"):
        decide(CONFIG, METRICS, THRESHOLDS, None, -0.1)


def test_decision_round_trips_through_json(tmp_path: Path):
    d = decide(CONFIG, METRICS, THRESHOLDS, {**METRICS}, 0.02, "musicvae-x:v1")
    d.save(tmp_path / "d" / "decision.json")
    assert GateDecision.load(tmp_path / "d" / "decision.json") == d
    assert d.summary().splitlines()[0] == f"gate PASSED for {CONFIG}"
    with pytest.raises(ValueError, match="not a gate decision"):
        GateDecision.from_dict({"metrics": {}})


def test_the_repositorys_params_have_thresholds_on_real_eval_metric_names(eval_metrics: dict):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for config in params["train"]["configs"]:
        thresholds, tolerance, _ = load_gate_params(ROOT / "params.yaml", config)
        assert thresholds and 0 <= tolerance < 1
        for key in thresholds:
            assert key.split("_", 1)[1] in eval_metrics, key
        decide(config, eval_metrics, thresholds)  # well-formed rules


# --- the command ---------------------------------------------------------------------------------------


def _params(tmp_path: Path, **thresholds: float) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"gate": {"tolerance": 0.02, "compare_to_champion": True,
                                          "thresholds": {CONFIG: thresholds or THRESHOLDS}}}))
    return p


def test_gate_command_writes_a_failed_decision_and_exits_0(tmp_path: Path, store: Path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({**METRICS, "accuracy": 0.1}))
    out = tmp_path / "out" / "decision.json"
    assert main(["gate", "--config", CONFIG, "--metrics", str(metrics), "--params", str(_params(tmp_path)),
                 "--output", str(out)]) == 0
    d = GateDecision.load(out)
    assert not d.passed and d.champion is None  # the (empty) model store has no champion
    assert f"gate FAILED for {CONFIG}" in capsys.readouterr().out


def test_gate_command_compares_with_a_champion_file(tmp_path: Path):
    metrics, champion = tmp_path / "metrics.json", tmp_path / "champion.json"
    metrics.write_text(json.dumps(METRICS))
    champion.write_text(json.dumps({"tag": "musicvae-x:v9", "metrics": {**METRICS, "accuracy": 0.9}}))
    out = tmp_path / "decision.json"
    args = ["gate", "--config", CONFIG, "--metrics", str(metrics), "--params", str(_params(tmp_path)), "--output", str(out)]
    assert main([*args, "--champion", str(champion)]) == 0
    d = GateDecision.load(out)
    assert not d.passed and d.champion_tag == "musicvae-x:v9"
    assert main([*args, "--champion", str(champion), "--tolerance", "0.5"]) == 0
    assert GateDecision.load(out).passed
    assert main([*args, "--no-champion"]) == 0
    assert GateDecision.load(out).passed and GateDecision.load(out).champion is None


def test_gate_command_usage_errors_exit_2(tmp_path: Path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    out = tmp_path / "decision.json"
    assert main(["gate", "--config", "cat-mel_2bar_big", "--metrics", str(metrics), "--params",
                 str(_params(tmp_path)), "--output", str(out)]) == 2  # no thresholds for that config
    assert main(["gate", "--config", CONFIG, "--metrics", str(tmp_path / "nope.json"), "--params",
                 str(_params(tmp_path)), "--output", str(out)]) == 2
    assert not out.exists()
