"""gate: does the evaluated model earn a place in the model store? (`musicvae gate`)

The rules are the pipeline's `gate` parameter, laid out as params.yaml's `gate` section (thresholds per config,
tolerance, compare_to_champion); the champion is the model in the BentoML store for this config, if any.
Returns `passed`, which the pipeline's `dsl.If` reads; the decision (a reason per rule) is an artifact.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(metrics: Input[Metrics], config: str, gate_params: dict, decision: Output[Artifact]) -> bool:
    """Apply the gate to the eval metrics (the Metrics artifact's file is eval/metrics.json)."""
    import argparse
    import json
    import logging
    import tempfile
    from pathlib import Path

    import yaml

    from musicvae.gate import add_gate_parser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = Path(tempfile.mkdtemp(prefix="musicvae-gate-")) / "params.yaml"
    params.write_text(yaml.safe_dump({"gate": gate_params}))
    # `musicvae gate`'s own parser and entry function (not the whole CLI with its plug-ins).
    parser = argparse.ArgumentParser(prog="musicvae")
    add_gate_parser(parser.add_subparsers(required=True))
    argv = ["gate", "--config", config, "--metrics", metrics.path, "--params", str(params), "--output", decision.path]
    args = parser.parse_args(argv)
    if args.func(args) != 0:
        raise RuntimeError(f"musicvae {' '.join(argv)} failed (see the log above)")
    doc = json.loads(Path(decision.path).read_text())
    decision.metadata.update(config=config, passed=bool(doc["passed"]), reasons=doc["reasons"])
    return bool(doc["passed"])
