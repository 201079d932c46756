"""`musicvae retrain`: retrain every config, then promote only the models that passed the eval gate.

What CI runs when data.dvc, params.yaml, dvc.yaml or the library change (.github/workflows/retrain.yml):

* With a Kubeflow Pipelines host (`--kfp_host` or $KFP_HOST) it submits the training pipeline by running
  `musicvae pipeline submit --host H --data_uri U --promote ...` (pipelines/ plugs that command into the CLI;
  the library never imports it). Gating, packaging and promotion then happen in the cluster's run: its package
  task makes each model that passed the gate its config's champion (--no-promote submits without --promote).
* Otherwise it runs `dvc repro` here (with the interpreter's bin/ first on PATH, so the stages find
  `musicvae` and `music_vae_train`), reads each config's gate decision and package result from the
  paths dvc.yaml declares for the `gate@<config>` and `package@<config>` stages, and promotes each
  packaged model that passed: label stage=champion in the BentoML model store (`package.promote`),
  the previous champion of that config becoming stage=retired. Failed configs are reported, never promoted.

Exit codes: 0 done (at least one config promoted, or submitted to KFP); 1 `dvc repro` or the submission
failed; 2 usage errors; 3 no config passed the gate (with --strict: any config failed it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from musicvae.package import EXIT_GATE_FAILED

log = logging.getLogger(__name__)

__all__ = ["RetrainResult", "retrain_dvc", "submit_kfp", "collect_results", "add_retrain_parser"]


@dataclass
class RetrainResult:
    config: str
    passed: bool | None  # None: no gate decision was found
    tag: str | None  # the packaged model, if any
    promoted: bool
    reasons: list[str]


def _env() -> dict[str, str]:
    """The environment for child commands: this interpreter's bin/ first on PATH, analytics off."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def _data_version(repo_dir: Path) -> str:
    from musicvae.package import _data_version as data_version

    version = data_version(None, repo_dir)
    return version.split(":", 1)[1] if version.startswith("data.dvc:") else ""


def submit_kfp(host: str, data_uri: str, repo_dir: Path, extra: list[str], promote: bool = True) -> int:
    """`musicvae pipeline submit` as a child process; its exit code.

    promote: pass --promote, so the run's package task makes the gated models champions (the DVC path
    promotes them here).
    """
    cmd = [sys.executable, "-m", "musicvae.cli", "pipeline", "submit", "--host", host, "--data_uri", data_uri]
    if promote and "--promote" not in extra:
        cmd.append("--promote")
    if "--data_version" not in extra and (version := _data_version(repo_dir)):
        cmd += ["--data_version", version]
    cmd += extra
    log.info("submitting to Kubeflow Pipelines: %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=repo_dir, env=_env()).returncode


def retrain_dvc(repo_dir: Path, pull: bool = False, force: bool = False, targets: list[str] | None = None) -> int:
    """`dvc repro` in repo_dir; its exit code."""
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--pull"] if pull else []), *(["--force"] if force else []), *(targets or [])]
    log.info("running %s in %s", " ".join(cmd), repo_dir)
    return subprocess.run(cmd, cwd=repo_dir, env=_env()).returncode


def _stage_files(repo_dir: Path) -> dict[str, dict[str, Path]]:
    """{config: {"gate": decision path, "package": result path}} from dvc.yaml's gate@ and package@ stages."""
    from dvc.repo import Repo

    found: dict[str, dict[str, Path]] = {}
    with Repo(str(repo_dir)) as repo:
        for stage in repo.index.stages:
            kind, sep, config = (getattr(stage, "name", None) or "").partition("@")
            if sep and kind in ("gate", "package") and stage.outs:
                found.setdefault(config, {})[kind] = repo_dir / stage.outs[0].def_path
    return found


def collect_results(repo_dir: Path, promote_winners: bool = True) -> list[RetrainResult]:
    """Each config's gate decision and package result; promotes the packaged models that passed."""
    from musicvae.package import promote

    results = []
    for config, files in sorted(_stage_files(repo_dir).items()):
        gate_file, package_file = files.get("gate"), files.get("package")
        if gate_file is None or not gate_file.is_file():
            results.append(RetrainResult(config, None, None, False, [f"no gate decision ({gate_file})"]))
            continue
        decision = json.loads(gate_file.read_text())
        packaged = json.loads(package_file.read_text()) if package_file is not None and package_file.is_file() else {}
        tag = packaged.get("tag") if packaged.get("packaged") else None
        passed = bool(decision.get("passed"))
        promoted = False
        if passed and tag and promote_winners:
            promote(tag)
            promoted = True
        results.append(RetrainResult(config, passed, tag, promoted, list(decision.get("reasons") or [])))
    return results


def _print_summary(results: list[RetrainResult]) -> None:
    print("retrain summary:")
    for r in results:
        verdict = {True: "PASSED", False: "FAILED", None: "NO DECISION"}[r.passed]
        action = f"promoted {r.tag} to champion" if r.promoted else (f"packaged {r.tag}" if r.tag else "not packaged")
        print(f"  {r.config}: gate {verdict}; {action}")
        for reason in r.reasons:
            print(f"      - {reason}")


def run_retrain(args: argparse.Namespace) -> int:
    repo_dir = Path(args.repo_dir).resolve()
    host = args.kfp_host or os.environ.get("KFP_HOST")
    if host:
        data_uri = args.data_uri or os.environ.get("KFP_DATA_URI")
        if not data_uri:
            print("musicvae retrain: error: submitting to Kubeflow needs --data_uri or $KFP_DATA_URI", file=sys.stderr)
            return 2
        rc = submit_kfp(host, data_uri, repo_dir, list(args.submit_arg), promote=not args.no_promote)
        if rc != 0:
            print(f"musicvae retrain: `musicvae pipeline submit` failed (exit {rc})", file=sys.stderr)
            return 1
        print(f"submitted to {host}: the run gates, packages" + ("" if args.no_promote else " and promotes")
              + " in the cluster")
        return 0

    if not (repo_dir / "dvc.yaml").is_file():
        print(f"musicvae retrain: error: no dvc.yaml in {repo_dir}", file=sys.stderr)
        return 2
    rc = retrain_dvc(repo_dir, pull=args.pull, force=args.force)
    if rc != 0:
        print(f"musicvae retrain: `dvc repro` failed (exit {rc})", file=sys.stderr)
        return 1
    results = collect_results(repo_dir, promote_winners=not args.no_promote)
    _print_summary(results)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    passed = [r for r in results if r.passed]
    if not passed or (args.strict and len(passed) < len(results)):
        print("musicvae retrain: " + ("no config passed the eval gate" if not passed else "a config failed the eval gate"),
              file=sys.stderr)
        return EXIT_GATE_FAILED
    return 0


def add_retrain_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "retrain",
        help="retrain (Kubeflow if a host is set, else dvc repro) and promote the models that passed the gate",
        description="With --kfp_host or $KFP_HOST: submit the Kubeflow pipeline (`musicvae pipeline submit`). "
                    "Otherwise: `dvc repro`, then label each packaged model whose gate passed stage=champion "
                    "in the BentoML model store ($BENTOML_HOME, default ~/bentoml). Exit codes: 0 done; 1 the "
                    f"repro or submission failed; 2 usage errors; {EXIT_GATE_FAILED} no config passed the gate "
                    "(with --strict: any config failed it).",
    )
    parser.add_argument("--repo_dir", default=".", help="repository root with dvc.yaml (default: .)")
    parser.add_argument("--kfp_host", help="Kubeflow Pipelines endpoint (default: $KFP_HOST; unset: run dvc here)")
    parser.add_argument("--data_uri", help="corpus URI the cluster can read, for `pipeline submit` (default: $KFP_DATA_URI)")
    parser.add_argument("--submit-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `musicvae pipeline submit` (repeatable), e.g. --submit-arg=--namespace=ml")
    parser.add_argument("--pull", action="store_true", help="dvc repro --pull: fetch missing inputs and cached outputs from the DVC remote")
    parser.add_argument("--force", action="store_true", help="dvc repro --force: run every stage again")
    parser.add_argument("--no-promote", action="store_true", help="report the gate results without relabelling models "
                        "(with a Kubeflow host: submit without --promote)")
    parser.add_argument("--strict", action="store_true", help=f"exit {EXIT_GATE_FAILED} when any config fails the gate")
    parser.add_argument("--summary", help="write the per-config results as JSON here")
    parser.set_defaults(func=run_retrain)
    return parser
