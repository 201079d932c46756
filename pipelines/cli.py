"""`musicvae pipeline compile | run --local | submit`: the pipelines of pipelines/ from the command line.

Plugged into `musicvae` through the `musicvae.commands` entry point (pyproject.toml); kfp is imported only
when a pipeline command runs, so `musicvae --help` stays fast.
"""

import argparse
import datetime
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.settings import PARAMS_FILE

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = "runs/pipeline"


# --- shared -----------------------------------------------------------------------------------------


def data_version(data_dir: str | Path, family: str) -> str:
    """A content hash of what the pipeline reads from a corpus directory (manifest.csv and <family>.tar).

    It keys KFP's cache (an edited corpus at the same path is validated again) and goes into the lineage.
    """
    h = hashlib.sha256()
    for name in ("manifest.csv", f"{family}.tar"):
        path = Path(data_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a corpus directory holds manifest.csv and <family>.tar "
                                    "(scripts/build_corpus.py builds one; `dvc pull` fetches data/)")
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()}"


def git_commit() -> str:
    """The commit of this checkout, as the package lineage records it ('unknown' outside git)."""
    from musicvae.package import Lineage

    return Lineage.collect(run_dir="", config="", repo_dir=REPO).git_commit


def _defaults(params_file: str) -> dict[str, Any]:
    from pipelines.training import read_defaults

    return read_defaults(params_file)


def _runs(args: argparse.Namespace, defaults: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The `runs` parameter from --runs (JSON) or --config/--hparams/--num_steps; None keeps params.yaml's.

    A --config that params.yaml's train.configs lists takes its hparams and num_steps from there unless given.
    """
    if args.runs:
        text = args.runs if args.runs.lstrip()[:1] in "[{" else Path(args.runs).read_text()
        runs = json.loads(text)
        if not isinstance(runs, list) or not all(isinstance(r, dict) and {"config", "num_steps"} <= r.keys()
                                                 for r in runs):
            raise ValueError("--runs: a JSON list of {config, hparams, num_steps} objects")
        return [{"hparams": "", **r} for r in runs]
    if not args.config and args.hparams is None and args.num_steps is None:
        return None
    known = {r["config"]: r for r in defaults["runs"]}
    runs = []
    for config in args.config or list(known):
        run = {"config": config, "hparams": "", **known.get(config, {})}
        if args.hparams is not None:
            run["hparams"] = args.hparams
        if args.num_steps is not None:
            run["num_steps"] = args.num_steps
        if "num_steps" not in run:
            raise ValueError(f"--num_steps is needed for {config} (params.yaml's train.configs does not list it)")
        runs.append(run)
    return runs


def _check_configs(runs: list[dict[str, Any]] | None) -> None:
    from musicvae.configs import get_config

    for r in runs or []:
        get_config(r["config"]).with_hparams(r.get("hparams", ""))  # unknown names, bad hparams: before any work


# --- compile -----------------------------------------------------------------------------------------


def _node_selector(text: str) -> tuple[str, str] | None:
    if text.lower() == "none":
        return None
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE or none, got {text!r}")
    return key, value


def run_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.training import make_training_pipeline

    try:
        _defaults(args.params)
    except (OSError, ValueError) as e:
        print(f"musicvae pipeline compile: error: {e}", file=sys.stderr)
        return 2
    pipeline = make_training_pipeline(
        checkpoint_pvc=args.checkpoint_pvc or None, gpu_node_selector=args.gpu_node_selector,
        model_store_pvc=args.model_store_pvc or None, params_file=args.params,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    print(f"compiled {args.pipeline} pipeline to {out}")
    return 0


# --- run --local ---------------------------------------------------------------------------------------


def _newest(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


def summarize(root: Path, configs: list[str]) -> dict[str, Any]:
    """Where a local run's results landed: the newest validation outputs and, per config, the gate decision
    and the packaged model (outputs of cached tasks stay where the run that made them wrote them)."""
    from musicvae.package import CHECKPOINT_FILE, packaged_models

    found: dict[str, Any] = {"pipeline_root": str(root)}
    for name in ("report", "quarantine"):
        paths = _newest(root, f"*/validate/{name}")
        found[f"validation_{name}"] = str(paths[0]) if paths else None
    results = {}
    for config in configs:
        result: dict[str, Any] = {"decision": None, "passed": None, "model": None}
        for path in _newest(root, "*/*/gate/decision"):
            doc = json.loads(path.read_text())
            if doc.get("config") == config:
                result.update(decision=str(path), passed=doc["passed"], reasons=doc["reasons"])
                break
        for path in _newest(root, "*/*/train/model"):
            done = path.parent / "executor_output.json"  # absent when that attempt was killed
            if not done.is_file():
                continue
            meta = json.loads(done.read_text())
            if meta["artifacts"]["model"]["artifacts"][0]["metadata"].get("config") == config:
                result["model"] = str(path)
                break
        if result["passed"]:
            mine = [m for m in packaged_models(config)
                    if str(m.info.metadata.get("lineage", {}).get("run_dir", "")).startswith(str(root))]
            if mine:
                result.update(tag=str(mine[-1].tag), checkpoint=mine[-1].path_of(CHECKPOINT_FILE))
        results[config] = result
    found["configs"] = results
    found["bentoml_home"] = os.environ.get("BENTOML_HOME", str(Path("~/bentoml").expanduser()))
    return found


def run_local(args: argparse.Namespace) -> int:
    from kfp import local

    from pipelines.training import make_training_pipeline

    try:
        defaults = _defaults(args.params)
        runs = _runs(args, defaults)
        _check_configs(runs)
        family = args.family or defaults["family"]
        version = data_version(args.data_dir, family)
    except (OSError, ValueError, KeyError) as e:
        print(f"musicvae pipeline run: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    root = Path(args.pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # The cache lives in <root>/.kfp_cache: a rerun after a kill skips every task that finished, and the
    # train task resumes from the checkpoints under <root>/checkpoints.
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=not args.no_cache)
    pipeline = make_training_pipeline(checkpoint_pvc=None, model_store_pvc=None, params_file=args.params)
    arguments: dict[str, Any] = {
        "data_uri": str(Path(args.data_dir).resolve()), "data_version": version, "git_commit": git_commit(),
        "family": family, "device": args.device, "work_dir": str(root / "checkpoints"),
    }  # fmt: skip
    if runs is not None:
        arguments["runs"] = runs
    if args.seed is not None:
        arguments["seed"] = args.seed
    if args.promote:
        arguments["promote"] = True
    if args.checkpoint_every_secs is not None:
        arguments["checkpoint_every_secs"] = args.checkpoint_every_secs
    started = time.monotonic()
    try:
        pipeline(**arguments)
    except RuntimeError as e:  # a task failed: its own message is in the log above
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # kfp colours task names
        print(f"musicvae pipeline run: {message}\nThe failing task's error is in the log above; rerun the same "
              f"command to resume (finished tasks are cached under {root}/.kfp_cache).", file=sys.stderr)
        if "'validate'" in message:  # the data stopped the run before training
            reports = _newest(root, "*/validate/report")
            if reports:
                print(f"The corpus did not pass validation; report: {reports[0]}", file=sys.stderr)
        return 1
    configs = [r["config"] for r in (runs or defaults["runs"])]
    summary = summarize(root, configs)
    summary["seconds"] = round(time.monotonic() - started, 1)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _print_summary(summary, root / "summary.json")
    return 0


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    print(f"\npipeline finished in {summary['seconds']} s; outputs under {summary['pipeline_root']}")
    print(f"  validation report   {summary['validation_report']}")
    print(f"  quarantined files   {summary['validation_quarantine']}")
    for config, r in summary["configs"].items():
        print(f"  {config}:")
        print(f"    trained model     {r['model']}")
        print(f"    gate              {'passed' if r['passed'] else 'FAILED'} ({r['decision']})")
        for reason in r.get("reasons", []):
            print(f"                        {reason}")
        if r.get("tag"):
            print(f"    packaged          {r['tag']} in {summary['bentoml_home']}")
            print(f"    checkpoint        {r['checkpoint']}")
    print(f"  summary             {path}")


# --- submit ------------------------------------------------------------------------------------------


DEFAULT_TIMEOUT = 120.0


class SubmitError(Exception):
    """The submission failed, for the reason its message says (the host's answer, none, no connection)."""


def _kfp_client(host: str, namespace: str | None) -> Any:
    """kfp.Client that checks the server's health once.

    kfp.Client's constructor asks /healthz when no namespace is set, and kfp tries that five times, 5 s apart,
    logging each failure with its traceback; one answer is enough to know the host is down or failing.
    """
    import kfp

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            return self._healthz_api.healthz_service_get_healthz()

    return Client(host=host, namespace=namespace)


def _call_with_deadline(fn: Any, host: str, timeout: float) -> Any:
    """fn() in a worker thread, waiting at most timeout seconds; its failures as SubmitError.

    kfp.Client sets no timeout on its requests, so a host that takes the connection and never answers would
    block forever; the worker is a daemon thread the process leaves behind.
    """
    import kfp_server_api
    import urllib3

    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller, never printed by the thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="kfp-submit", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise SubmitError(f"no answer from {host} within {timeout:g} s (--timeout); the run may have been "
                          "created: check the Kubeflow Pipelines UI before submitting again")
    error = outcome.get("error")
    if error is None:
        return outcome["value"]
    if isinstance(error, kfp_server_api.ApiException):
        if not error.status:  # the client's own wrapping of a connection failure
            raise SubmitError(f"cannot talk to {host}: {error.reason}") from error
        detail = _api_error_message(error.body)
        raise SubmitError(f"{host} answered HTTP {error.status} {error.reason or ''}".rstrip()
                          + (f": {detail}" if detail else "")) from error
    if isinstance(error, urllib3.exceptions.HTTPError):
        reason = getattr(error, "reason", None) or error
        raise SubmitError(f"cannot reach {host}: {reason}") from error
    if isinstance(error, (OSError, ValueError)):  # e.g. no route, several experiments by that name
        raise SubmitError(f"submitting to {host} failed: {error}") from error
    raise error


def _api_error_message(body: Any) -> str:
    """The message in a KFP API error body ({"error": ..., "message": ...}), else the body's start."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        return " ".join(str(body).split())[:300]
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("error") or doc)[:300]
    return str(doc)[:300]


def _disable_caching(package: Path) -> None:
    """Caching off for every task of a compiled pipeline, those inside the loop and the condition too.

    kfp.Client's enable_caching=False rewrites only the root DAG's tasks (validate, the loop), so train,
    evaluate, gate and package would still reuse cached results.
    """
    import yaml

    docs = list(yaml.safe_load_all(package.read_text()))
    spec = docs[0]
    for component in [spec["root"], *spec.get("components", {}).values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = False
    package.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def run_submit(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.training import make_training_pipeline

    try:
        defaults = _defaults(args.params)
        runs = _runs(args, defaults)
        _check_configs(runs)
    except (OSError, ValueError, KeyError) as e:
        print(f"musicvae pipeline submit: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("musicvae pipeline submit: error: --timeout must be positive", file=sys.stderr)
        return 2
    pipeline = make_training_pipeline(checkpoint_pvc=args.checkpoint_pvc or None,
                                      gpu_node_selector=args.gpu_node_selector,
                                      model_store_pvc=args.model_store_pvc or None, params_file=args.params)
    arguments: dict[str, Any] = {"data_uri": args.data_uri, "data_version": args.data_version,
                                 "git_commit": git_commit(), "device": args.device, "promote": args.promote}
    if runs is not None:
        arguments["runs"] = runs
    if args.family:
        arguments["family"] = args.family
    run_name = args.run_name or f"{pipeline.name} {datetime.datetime.now():%Y-%m-%d %H-%M-%S}"
    with tempfile.TemporaryDirectory(prefix="musicvae-submit-") as tmp:
        # compiled here, as kfp.Client.create_run_from_pipeline_func would, so that --timeout bounds only the
        # conversation with the cluster (a worker left waiting finds no file later: an error nobody prints)
        package = str(Path(tmp) / "pipeline.yaml")
        compiler.Compiler().compile(pipeline, package)
        if args.no_cache:
            _disable_caching(Path(package))

        def submit() -> str:
            client = _kfp_client(args.host, args.namespace)
            result = client.create_run_from_pipeline_package(
                package, arguments=arguments, run_name=run_name, experiment_name=args.experiment,
                enable_caching=not args.no_cache,
            )
            return result.run_id

        try:
            run_id = _call_with_deadline(submit, args.host, args.timeout)
        except SubmitError as e:
            print(f"musicvae pipeline submit: error: {e}", file=sys.stderr)
            return 1
    print(f"submitted run {run_id} to {args.host}")
    return 0


# --- parser ------------------------------------------------------------------------------------------


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", help="corpus family to validate and train on (default: params.yaml's validate.family)")
    p.add_argument("--config", action="append", help="config to train (repeatable; default: every config in "
                   "params.yaml's train.configs)")
    p.add_argument("--hparams", help="hparam overrides for every config, Magenta style (default: params.yaml's)")
    p.add_argument("--num_steps", type=int, help="training steps for every config (default: params.yaml's)")
    p.add_argument("--runs", help="the runs parameter as JSON (or a JSON file): "
                   '[{"config": ..., "hparams": ..., "num_steps": ...}, ...]; replaces --config')
    p.add_argument("--params", default=str(PARAMS_FILE), help="params file with the pipeline's defaults: "
                   "train.configs (runs), train.seed, validate.family and the gate section "
                   "(default: the repository's)")
    p.add_argument("--promote", action="store_true", help="make each packaged model its config's champion "
                   "(stage=champion; the previous one retired), what the gate compares later candidates with")
    p.add_argument("--no-cache", action="store_true", help="run every task again instead of reusing finished ones")


def _add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.settings import CHECKPOINT_PVC, GPU_NODE_SELECTOR, MODEL_STORE_MOUNT, MODEL_STORE_PVC

    p.add_argument("--checkpoint-pvc", default=CHECKPOINT_PVC,
                   help=f"PVC mounted into the train task for its checkpoints, so a retry resumes; '' for none "
                   f"(default: {CHECKPOINT_PVC})")
    p.add_argument("--model-store-pvc", default=MODEL_STORE_PVC,
                   help=f"PVC mounted at {MODEL_STORE_MOUNT} (the image's BENTOML_HOME) into the gate and package "
                   f"tasks: the model store they share; '' for none (default: {MODEL_STORE_PVC})")
    p.add_argument("--gpu-node-selector", type=_node_selector, default=GPU_NODE_SELECTOR, metavar="KEY=VALUE",
                   help=f"node label the train task is pinned to, or none (default: {'='.join(GPU_NODE_SELECTOR)})")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`musicvae pipeline ...` (the musicvae.commands entry point)."""
    parser = subparsers.add_parser("pipeline", help="compile, run locally or submit the Kubeflow training pipeline",
                                   description="The Kubeflow training pipeline (pipelines/training.py): validate -> "
                                   "for each config: convert, train (GPU), evaluate, gate -> package the winners.")
    sub = parser.add_subparsers(dest="pipeline_command", required=True)

    p = sub.add_parser("compile", help="write the pipeline's KFP YAML (generated; never edit it)")
    p.add_argument("--pipeline", default="training", choices=["training"], help="pipeline to compile")
    p.add_argument("--output", required=True, help="YAML file to write")
    p.add_argument("--params", default=str(PARAMS_FILE), help="params file whose train.configs, train.seed, "
                   "validate.family and gate section become the parameters' defaults (default: the repository's)")
    _add_cluster_arguments(p)
    p.set_defaults(func=run_compile)

    p = sub.add_parser("run", help="run the pipeline here with kfp.local (no cluster, no Docker)",
                       description="Run the whole pipeline in this virtual environment with kfp.local's "
                       "SubprocessRunner. Finished tasks are cached under the pipeline root, so rerunning the same "
                       "command after a kill resumes; training resumes from its checkpoints. Packaged models go to "
                       "the BentoML store ($BENTOML_HOME, default ~/bentoml).")
    p.add_argument("--local", action="store_true", required=True, help="run locally (the only mode of `run`)")
    p.add_argument("--data_dir", default="data", help="corpus directory: manifest.csv + <family>.tar (default: data)")
    p.add_argument("--pipeline_root", default=DEFAULT_ROOT, help=f"where outputs, checkpoints and the cache go "
                   f"(default: {DEFAULT_ROOT})")
    p.add_argument("--device", default="cpu", help="torch device for training and evaluation (default: cpu)")
    p.add_argument("--seed", type=int, help="training seed (default: params.yaml's train.seed)")
    p.add_argument("--checkpoint_every_secs", type=float,
                   help="seconds between training checkpoints, what a killed run resumes from (default: 60)")
    _add_run_arguments(p)
    p.set_defaults(func=run_local)

    p = sub.add_parser("submit", help="submit a run to a Kubeflow Pipelines cluster",
                       description="Compile the pipeline and start a run on a Kubeflow Pipelines endpoint. The "
                       "components run in the project image (components/image.py; Dockerfile), which the "
                       "cluster must be able to pull.")
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument("--data_uri", required=True, help="corpus directory URI the cluster can read, e.g. "
                   "s3://bucket/musicvae/data or gs://...")
    p.add_argument("--data_version", default="", help="its version for caching and lineage, e.g. data.dvc's md5")
    p.add_argument("--device", default="auto", help="torch device in the pods (default: auto, the GPU)")
    p.add_argument("--experiment", default="musicvae", help="KFP experiment name (default: musicvae)")
    p.add_argument("--run-name", help="run name (default: the pipeline's name and the time)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the Kubeflow "
                   "Pipelines API to take the run before giving up with exit 1 "
                   f"(default: {DEFAULT_TIMEOUT:g})")
    _add_run_arguments(p)
    _add_cluster_arguments(p)
    p.set_defaults(func=run_submit)
    return parser
