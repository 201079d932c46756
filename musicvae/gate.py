"""The eval gate: does a trained model's held-out score earn it a place in the model store?

    decision = decide("cat-mel_2bar_small", metrics, {"min_accuracy": 0.3, "max_r_loss": 80}, champion, 0.02)
    decision.passed, decision.reasons     # True, ['accuracy 0.57 >= 0.3 (min_accuracy)', ...]

Two kinds of rules, and every one must hold:

* thresholds, per config (params.yaml `gate.thresholds.<config>`): `min_<metric>: v` (metric >= v) and
  `max_<metric>: v` (metric <= v) on the names of `music_vae_train --mode eval`'s `eval/metrics.json`
  (loss, r_loss, kl_loss, kl_bits, kl_beta, accuracy, mean_per_class_accuracy). A metric that is
  missing or not finite fails its rule.
* no regression against the champion (the model now served for this config, `package.champion_metrics`)
  on the primary metrics (`PRIMARY_METRICS`: accuracy, higher is better; r_loss, lower is better) beyond
  `tolerance`, a fraction of the champion's value: with tolerance 0.02 accuracy may drop to 98 % of
  the champion's and r_loss may rise to 102 %. Without a champion the rule is skipped (said in the reasons).

`musicvae gate` writes the decision as JSON and exits 0 whether it passed or not, so that the other
configs of a pipeline go on; `musicvae package` is where a failed decision stops (see package.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# metric -> +1 when higher is better, -1 when lower is better
PRIMARY_METRICS: dict[str, int] = {"accuracy": +1, "r_loss": -1}

__all__ = ["GateDecision", "PRIMARY_METRICS", "decide", "load_gate_params", "add_gate_parser"]


@dataclasses.dataclass
class GateDecision:
    config: str
    passed: bool
    reasons: list[str]  # one human-readable line per rule, passed or failed
    metrics: dict[str, Any]  # the candidate's eval metrics
    champion: dict[str, Any] | None  # the champion's eval metrics, None when there was none to compare
    thresholds: dict[str, float]
    tolerance: float = 0.0
    champion_tag: str | None = None  # the champion's model store tag, when it came from the store

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateDecision:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"config", "passed", "reasons"} - set(d)
        if missing:
            raise ValueError(f"not a gate decision: missing {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GateDecision:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        head = f"gate {'PASSED' if self.passed else 'FAILED'} for {self.config}"
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _value(metrics: Mapping[str, Any], name: str) -> float | None:
    v = metrics.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def decide(
    config_name: str,
    metrics: Mapping[str, Any],
    thresholds: Mapping[str, float],
    champion_metrics: Mapping[str, Any] | None = None,
    tolerance: float = 0.0,
    champion_tag: str | None = None,
) -> GateDecision:
    """Apply every threshold and the no-regression rule; the decision lists a reason for each rule."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not thresholds:
        raise ValueError(f"no gate thresholds for {config_name}: a gate that checks nothing passes anything")
    reasons: list[str] = []
    passed = True
    for key, bound in sorted(thresholds.items()):
        kind, _, name = key.partition("_")
        if kind not in ("min", "max") or not name:
            raise ValueError(f"gate threshold {key!r}: expected min_<metric> or max_<metric>")
        v = _value(metrics, name)
        if v is None:
            passed = False
            reasons.append(f"{name} is missing or not a finite number, needed for {key}={_fmt(bound)}")
            continue
        ok = v >= bound if kind == "min" else v <= bound
        passed &= ok
        op = (">=" if ok else "<") if kind == "min" else ("<=" if ok else ">")
        reasons.append(f"{name} {_fmt(v)} {op} {_fmt(bound)} ({key}){'' if ok else ': FAILED'}")

    if champion_metrics is None:
        reasons.append("no champion to compare with: regression check skipped")
    else:
        who = f"champion {champion_tag}" if champion_tag else "champion"
        for name, direction in PRIMARY_METRICS.items():
            v, c = _value(metrics, name), _value(champion_metrics, name)
            if c is None:
                reasons.append(f"{who} has no {name}: regression check on it skipped")
                continue
            if v is None:
                passed = False
                reasons.append(f"{name} is missing or not a finite number, needed to compare with the {who}")
                continue
            # the worst value still accepted: tolerance is a fraction of the champion's value
            limit = c - direction * tolerance * abs(c)
            ok = v >= limit if direction > 0 else v <= limit
            passed &= ok
            better = "higher" if direction > 0 else "lower"
            verdict = "ok" if ok else "REGRESSION: FAILED"
            reasons.append(
                f"{name} {_fmt(v)} vs {who} {_fmt(c)} ({better} is better, tolerance {tolerance:.0%}, "
                f"limit {_fmt(limit)}): {verdict}"
            )
    return GateDecision(
        config=config_name,
        passed=bool(passed),
        reasons=reasons,
        metrics=dict(metrics),
        champion=dict(champion_metrics) if champion_metrics is not None else None,
        thresholds={k: float(v) for k, v in thresholds.items()},
        tolerance=float(tolerance),
        champion_tag=champion_tag,
    )


def load_gate_params(params_path: str | Path, config_name: str) -> tuple[dict[str, float], float, bool]:
    """(thresholds, tolerance, compare_to_champion) for a config from params.yaml's `gate` section."""
    import yaml

    doc = yaml.safe_load(Path(params_path).read_text()) or {}
    gate = doc.get("gate")
    if not isinstance(gate, dict):
        raise ValueError(f"{params_path}: no `gate` section")
    per_config = gate.get("thresholds") or {}
    if config_name not in per_config:
        raise ValueError(
            f"{params_path}: no gate.thresholds for {config_name} (configured: {', '.join(sorted(per_config)) or 'none'})"
        )
    return dict(per_config[config_name]), float(gate.get("tolerance", 0.0)), bool(gate.get("compare_to_champion", True))


# --- `musicvae gate` ------------------------------------------------------------------------------------


def _champion_from_file(path: str) -> tuple[dict[str, Any], str | None]:
    """A champion's metrics from JSON: eval metrics.json, a gate decision or a `musicvae package` tag file."""
    doc = json.loads(Path(path).read_text())
    if isinstance(doc.get("metrics"), dict):
        return doc["metrics"], doc.get("tag")
    return doc, None


def run_gate(args: argparse.Namespace) -> int:
    try:
        metrics = json.loads(Path(args.metrics).read_text())
        thresholds, tolerance, compare = load_gate_params(args.params, args.config)
        if args.tolerance is not None:
            tolerance = args.tolerance
        champion, champion_tag = None, None
        if args.champion:
            champion, champion_tag = _champion_from_file(args.champion)
        elif compare and not args.no_champion:
            from musicvae.package import champion_metrics, champion_tag as store_champion_tag

            try:
                champion = champion_metrics(args.config)
                champion_tag = store_champion_tag(args.config) if champion is not None else None
            except ImportError:
                log.warning("bentoml is not installed: no champion to compare with")
        decision = decide(args.config, metrics, thresholds, champion, tolerance, champion_tag)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 2
    decision.save(args.output)
    print(decision.summary())
    return 0


def add_gate_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gate",
        help="decide whether an evaluated model may be packaged (thresholds + no regression vs the champion)",
        description="Apply params.yaml's gate.thresholds.<config> (min_<metric>/max_<metric> on eval "
                    "metrics.json) and the no-regression rule against the champion (accuracy and r_loss "
                    "within gate.tolerance, a fraction of the champion's value). Writes the decision as "
                    "JSON with a reason per rule. Exit code 0 whether the gate passed or not (read "
                    "`passed` in the output; `musicvae package` refuses a failed decision); 2 on usage errors.",
    )
    parser.add_argument("--config", required=True, help="config name from CONFIG_MAP, e.g. cat-mel_2bar_small")
    parser.add_argument("--metrics", required=True, help="the candidate's eval metrics (<run_dir>/eval/metrics.json)")
    parser.add_argument("--params", default="params.yaml", help="params file with the `gate` section (default: params.yaml)")
    parser.add_argument("--output", required=True, help="where to write the decision JSON")
    parser.add_argument("--tolerance", type=float, help="override gate.tolerance (a fraction, e.g. 0.02)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--champion", metavar="FILE",
                     help="the champion's metrics: eval metrics.json, a decision or a `musicvae package` tag file. "
                          "Default: the champion in the BentoML model store ($BENTOML_HOME), if any")
    who.add_argument("--no-champion", action="store_true", help="skip the regression check")
    parser.set_defaults(func=run_gate)
    return parser
