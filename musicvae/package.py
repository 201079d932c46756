"""Packaging: a trained, gated checkpoint into the BentoML model store, and back out as a `TrainedModel`.

    lineage = Lineage.collect("runs/dvc/cat-mel_2bar_small/run", "cat-mel_2bar_small",
                              examples_path="runs/dvc/shards/cat-mel_2bar_small/train")
    tag = package_model("runs/dvc/cat-mel_2bar_small/run", metrics, lineage, gate=decision)
    tm = load_packaged("cat-mel_2bar_small")          # or load_packaged(tag)
    promote(tag)                                      # stage=champion (what `musicvae retrain` does)

One BentoML model per config, named `bento_model_name(config)` = `musicvae-<config>`; each packaged
checkpoint is a version of it. The model directory holds `checkpoint.pt`, our checkpoint format
(loads with `weights_only=True`) without the optimiser/RNG/data-position state that only resuming
needs, its attribute vectors `checkpoint.pt.attributes.npz` when the checkpoint has them (so that
`/attribute` works on packaged models), plus `metrics.json`, `lineage.json` and `gate.json`; the same three are in the model's metadata
(`bentoml models get musicvae-<config>:latest`) with `None` values left out (BentoML metadata has no null).
Labels: `config=<config>` and `stage`, which is `candidate` when packaged, `champion` after `promote`,
`retired` once a newer champion of the same config is promoted.

The champion of a config, the model serving loads and the gate compares against, is its newest
model labelled stage=champion. `load_packaged(<config>)` returns the champion, or the newest model of
the config when none has been promoted yet.

The store is `$BENTOML_HOME/models` (default `~/bentoml/models`), read from the environment at each
call so that tests and pipelines can point it elsewhere; a missing or unwritable one reads as empty.
Inside a bento's container (`$BENTO_PATH` set), the models the bento packs, `$BENTO_PATH/models`, are
found too (after the home store's): `musicvae serve` there needs no copy into `$BENTOML_HOME`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bentoml import Model

    from musicvae.gate import GateDecision
    from musicvae.generate import TrainedModel

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
NAME_PREFIX = "musicvae-"
STAGE_CANDIDATE, STAGE_CHAMPION, STAGE_RETIRED = "candidate", "champion", "retired"
EXIT_GATE_FAILED = 3  # `musicvae package` on a decision with passed=false (without --skip-failed)
EXIT_BAD_CHECKPOINT = 4  # missing or unreadable checkpoint, or one that disagrees with the lineage/metrics

__all__ = [
    "Lineage",
    "PackageError",
    "GateFailedError",
    "bento_model_name",
    "package_model",
    "resolve_model",
    "load_packaged",
    "champion",
    "champion_metrics",
    "champion_tag",
    "promote",
    "packaged_models",
    "bento_models_dir",
    "add_package_parser",
]


class PackageError(RuntimeError):
    """A model that may not be packaged, or a reference that is not in the store."""


class GateFailedError(PackageError):
    """The gate decision says the model did not pass."""


def bento_model_name(config_name: str) -> str:
    """The model store name of a config's models (BentoML names are lowercase)."""
    return f"{NAME_PREFIX}{config_name}".lower()


# --- lineage ----------------------------------------------------------------------------------------


def _git_commit(repo_dir: str | Path) -> str:
    """HEAD's sha, with '+dirty' when tracked files differ from it; 'unknown' outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def _data_version(examples_path: str | Path | None, repo_dir: str | Path) -> str:
    """What identifies the training data: the shards' fingerprint, else data.dvc's md5, else 'unknown'."""
    if examples_path is not None:
        index = Path(examples_path) / "index.json"
        if index.is_file():
            doc = json.loads(index.read_text())
            if doc.get("fingerprint"):
                return f"shards:{doc['fingerprint']}"
            return f"shards-index-sha256:{hashlib.sha256(index.read_bytes()).hexdigest()}"
    dvc_file = Path(repo_dir) / "data.dvc"
    if dvc_file.is_file():
        import yaml

        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        if outs[0].get("md5"):
            return f"data.dvc:{outs[0]['md5']}"
    return "unknown"


@dataclasses.dataclass
class Lineage:
    data_version: str  # shards:<fingerprint of the training shards' index.json>, or data.dvc:<md5>
    git_commit: str  # sha of the code that trained it ('+dirty': uncommitted changes to tracked files)
    config: str  # the config name the model must be
    params: dict[str, Any]  # what trained it: hparams overrides, num_steps, ... (params.yaml's train section)
    run_dir: str

    @classmethod
    def collect(
        cls,
        run_dir: str | Path,
        config: str,
        params: Mapping[str, Any] | None = None,
        examples_path: str | Path | None = None,
        repo_dir: str | Path = ".",
    ) -> Lineage:
        return cls(
            data_version=_data_version(examples_path, repo_dir),
            git_commit=_git_commit(repo_dir),
            config=config,
            params=dict(params or {}),
            run_dir=str(run_dir),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the model store --------------------------------------------------------------------------------


def _store() -> Any:
    """The model store under $BENTOML_HOME as it is now (BentoML's own default is fixed at first use)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    home = os.environ.get("BENTOML_HOME")
    if not home:
        return BentoMLContainer.model_store.get()
    models = Path(home).expanduser() / "models"
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only or blocked: an empty store to read; packaging into it will fail loudly
        log.debug("cannot create the model store %s (%s): reading it as empty", models, e)
    return ModelStore(models)


def bento_models_dir() -> Path | None:
    """`$BENTO_PATH/models` inside a bento's container: the models `bentoml build` packed (None elsewhere)."""
    bento = os.environ.get("BENTO_PATH")
    if not bento:
        return None
    models = Path(bento).expanduser() / "models"
    return models if models.is_dir() else None


def _store_dir(store: Any) -> Path:
    return Path(store._path)


def _stores() -> list[Any]:
    """The stores models are read from: $BENTOML_HOME's, then the bento's own when in its container."""
    from bentoml._internal.models.model import ModelStore

    stores = [_store()]
    bento = bento_models_dir()
    if bento is not None and bento.resolve() != _store_dir(stores[0]).resolve():
        stores.append(ModelStore(bento))
    return stores


def _list(store: Any, name: str | None = None) -> list[Model]:
    """The store's models (of one name), [] for a store whose directory does not exist (yet)."""
    import bentoml

    if not _store_dir(store).is_dir():
        return []
    try:
        return bentoml.models.list(name, _model_store=store)
    except bentoml.exceptions.NotFound:
        return []


def _plain(x: Any) -> Any:
    """JSON-like data without None values, which BentoML metadata refuses."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items() if v is not None}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x if v is not None]
    return x


def packaged_models(config_name: str | None = None) -> list[Model]:
    """musicvae models in the store (of one config, or all), oldest first."""
    found: dict[str, Model] = {}
    for store in _stores():
        for m in _list(store, None if config_name is None else bento_model_name(config_name)):
            if m.tag.name.startswith(NAME_PREFIX):
                found.setdefault(str(m.tag), m)  # the home store's copy first
    return sorted(found.values(), key=lambda m: m.info.creation_time)


def _store_listing() -> str:
    stores = _stores()
    models = [m for store in stores for m in _list(store)]
    where = " and ".join(str(_store_dir(store)) for store in stores)
    if not models:
        return f"the model store ({where}) is empty: package a model first (`musicvae package`, or `dvc repro`)"
    rows = [f"  {m.tag}  stage={m.info.labels.get('stage', '-')}  created {m.info.creation_time:%Y-%m-%d %H:%M:%S}" for m in models]
    return f"the model store ({where}) holds:\n" + "\n".join(rows)


def champion(config_name: str) -> Model | None:
    """The config's newest model labelled stage=champion, or None."""
    champions = [m for m in packaged_models(config_name) if m.info.labels.get("stage") == STAGE_CHAMPION]
    return champions[-1] if champions else None


def champion_metrics(config_name: str) -> dict[str, Any] | None:
    """The eval metrics the champion was packaged with (what the gate compares against), or None."""
    m = champion(config_name)
    return dict(m.info.metadata.get("metrics", {})) if m is not None else None


def champion_tag(config_name: str) -> str | None:
    m = champion(config_name)
    return str(m.tag) if m is not None else None


def resolve_model(ref: str) -> Model:
    """A store model from a tag (`musicvae-<config>:<version>`, `...:latest`), a model name or a config name.

    A bare config or model name means the config's champion, or its newest model when none is promoted.
    """
    import bentoml

    if ":" in ref:
        for store in _stores():
            if not _store_dir(store).is_dir():
                continue
            try:
                return bentoml.models.get(ref, _model_store=store)
            except (bentoml.exceptions.BentoMLException, ValueError):  # not found, or not a valid tag
                continue
        raise PackageError(f"no model {ref} in the store; {_store_listing()}")
    config_name = ref[len(NAME_PREFIX):] if ref.startswith(NAME_PREFIX) else ref
    models = packaged_models(config_name)
    if not models:
        raise PackageError(f"no packaged model for {ref!r}; {_store_listing()}")
    return champion(config_name) or models[-1]


def load_packaged(ref: str, device: str = "cpu", max_batch_size: int = 8) -> TrainedModel:
    """The `TrainedModel` of a packaged model (see `resolve_model` for `ref`); `.bento_tag` names it."""
    from musicvae.generate import TrainedModel

    model = resolve_model(ref)
    tm = TrainedModel.from_checkpoint(model.path_of(CHECKPOINT_FILE), device=device, max_batch_size=max_batch_size)
    tm.bento_tag = str(model.tag)
    return tm


def _our_checkpoint(path: Path) -> Path:
    """The checkpoint file `path` names: a ckpt-N.pt, a train dir or a run dir (its latest)."""
    from musicvae.train import TRAIN_DIR, latest_checkpoint

    if path.is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path / TRAIN_DIR) or latest_checkpoint(path)
        if found is not None:
            return found
        raise PackageError(f"no checkpoint (ckpt-N.pt) in {path} or {path / TRAIN_DIR}")
    raise PackageError(f"no checkpoint at {path}")


def package_model(
    checkpoint: str | Path,
    metrics: Mapping[str, Any],
    lineage: Lineage,
    gate: GateDecision | Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Register a checkpoint (a file, or a run dir's latest) as a new version of `musicvae-<config>`.

    Refused with PackageError: a missing or unreadable checkpoint, one whose embedded config is not
    `lineage.config` or whose weights do not fit it, eval metrics of another step than the checkpoint's,
    and (GateFailedError) a gate decision with passed=false or about another config.
    Returns the new tag, e.g. 'musicvae-cat-mel_2bar_small:abc123'.
    """
    import bentoml
    import torch

    from musicvae.attributes import attributes_path, load_attribute_vectors
    from musicvae.generate import TrainedModel
    from musicvae.train import CHECKPOINT_FORMAT, CheckpointError, config_from_dict, load_checkpoint

    path = _our_checkpoint(Path(checkpoint).expanduser())
    try:
        payload = load_checkpoint(path)
    except CheckpointError as e:
        raise PackageError(str(e)) from e
    embedded = payload["config"]["name"]
    if embedded != lineage.config:
        raise PackageError(f"{path} holds a {embedded} model, but the lineage says {lineage.config}: refusing to package it")
    try:
        config = config_from_dict(payload["config"])
        net = config.build_model()
        net.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise PackageError(f"{path}: its weights do not fit its own config {embedded}: {e}") from e
    vectors = attributes_path(path)
    if vectors.is_file():  # `musicvae attributes compute` output: refused if computed for other weights
        try:
            load_attribute_vectors(vectors, TrainedModel(config, net.eval()))
        except (OSError, ValueError) as e:
            raise PackageError(f"{vectors}: {e}") from e
    step = int(payload["step"])
    if "step" in metrics and int(metrics["step"]) != step:
        raise PackageError(
            f"the eval metrics are for step {metrics['step']} but {path} is step {step}: evaluate this checkpoint first"
        )
    gate_doc: dict[str, Any] | None = None
    if gate is not None:
        gate_doc = gate.to_dict() if hasattr(gate, "to_dict") else dict(gate)
        if gate_doc.get("config") != lineage.config:
            raise GateFailedError(f"the gate decision is about {gate_doc.get('config')}, not {lineage.config}")
        if not gate_doc.get("passed"):
            reasons = "\n  - ".join(gate_doc.get("reasons") or ["(no reasons given)"])
            raise GateFailedError(f"{lineage.config} did not pass the eval gate; not packaged:\n  - {reasons}")

    all_labels = {"config": lineage.config, "stage": STAGE_CANDIDATE, **(labels or {})}
    metadata = _plain({
        "config": lineage.config,
        "step": step,
        "checkpoint_format": CHECKPOINT_FORMAT,
        "source_checkpoint": str(path),
        "metrics": dict(metrics),
        "lineage": lineage.to_dict(),
        "gate": gate_doc,
    })  # fmt: skip
    slim = {k: payload[k] for k in ("format", "step", "config", "model")}  # no optimiser/RNG/data state
    with bentoml.models.create(
        bento_model_name(lineage.config), labels=all_labels, metadata=metadata, _model_store=_store()
    ) as model:
        torch.save(slim, model.path_of(CHECKPOINT_FILE))
        if vectors.is_file():
            shutil.copyfile(vectors, attributes_path(model.path_of(CHECKPOINT_FILE)))
        for name, doc in (("metrics.json", dict(metrics)), ("lineage.json", lineage.to_dict()), ("gate.json", gate_doc)):
            Path(model.path_of(name)).write_text(json.dumps(doc, indent=1) + "\n")
    log.info("packaged %s (step %d) as %s", path, step, model.tag)
    return str(model.tag)


def promote(tag: str) -> str:
    """Label `tag` stage=champion and retire the config's previous champions; returns the tag."""
    model = resolve_model(tag)
    config_name = model.info.labels.get("config") or model.tag.name[len(NAME_PREFIX):]
    for other in packaged_models(config_name):
        if other.tag != model.tag and other.info.labels.get("stage") == STAGE_CHAMPION:
            other.info.labels["stage"] = STAGE_RETIRED
            other.flush()
    model.info.labels["stage"] = STAGE_CHAMPION
    model.flush()
    log.info("promoted %s to champion of %s", model.tag, config_name)
    return str(model.tag)


# --- `musicvae package` -----------------------------------------------------------------------------


def _train_params(params_path: str | None, config_name: str) -> dict[str, Any]:
    if not params_path or not Path(params_path).is_file():
        return {}
    import yaml

    train = (yaml.safe_load(Path(params_path).read_text()) or {}).get("train") or {}
    configs = train.get("configs") or {}
    return dict(configs.get(config_name) or {})


def _write_output(path: str, doc: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=p.parent, delete=False, suffix=".tmp") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
    os.replace(f.name, p)


def run_package(args: argparse.Namespace) -> int:
    from musicvae.gate import GateDecision

    try:
        metrics = json.loads(Path(args.metrics).read_text())
        decision = GateDecision.load(args.decision)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 2
    config_name = args.config or decision.config
    out = {"config": config_name, "packaged": False, "tag": None, "passed": decision.passed,
           "reasons": decision.reasons, "metrics": metrics}  # fmt: skip
    if not decision.passed and args.skip_failed:
        print(f"{config_name} did not pass the eval gate: not packaged (--skip-failed)", file=sys.stderr)
        _write_output(args.output, out)
        return 0
    lineage = Lineage.collect(
        args.run_dir, config_name, _train_params(args.params, config_name), args.examples_path, args.repo_dir
    )
    try:
        tag = package_model(args.run_dir, metrics, lineage, gate=decision,
                            labels=dict(kv.split("=", 1) for kv in args.label))  # fmt: skip
    except GateFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except PackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CHECKPOINT
    out.update(packaged=True, tag=tag, lineage=lineage.to_dict(), bentoml_home=os.environ.get("BENTOML_HOME", "~/bentoml"))
    _write_output(args.output, out)
    print(tag)
    return 0


def add_package_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "package",
        help="register a gated checkpoint in the BentoML model store as musicvae-<config>:<version>",
        description="Package the latest checkpoint of --run_dir with its eval metrics, lineage (data version, "
                    "git commit, params) and gate decision into the BentoML model store ($BENTOML_HOME, "
                    "default ~/bentoml) as musicvae-<config>, labelled stage=candidate. Writes --output "
                    "(JSON: packaged, tag, metrics, lineage). Exit codes: 0 packaged (or skipped with "
                    f"--skip-failed); 2 usage errors; {EXIT_GATE_FAILED} the gate decision did not pass; "
                    f"{EXIT_BAD_CHECKPOINT} a missing/unreadable checkpoint or one that disagrees with the "
                    "decision's config or the metrics' step.",
    )
    parser.add_argument("--run_dir", required=True, help="run directory (or a ckpt-N.pt): its latest checkpoint is packaged")
    parser.add_argument("--metrics", required=True, help="eval metrics.json of that checkpoint")
    parser.add_argument("--decision", required=True, help="the `musicvae gate` decision JSON")
    parser.add_argument("--output", required=True, help="where to write the result JSON (tag, lineage)")
    parser.add_argument("--config", help="expected config name (default: the decision's)")
    parser.add_argument("--examples_path", help="the training shards directory, whose index.json fingerprint is the data version")
    parser.add_argument("--params", default="params.yaml", help="params file; train.configs.<config> goes into the lineage")
    parser.add_argument("--repo_dir", default=".", help="git checkout for the lineage's commit (default: .)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="extra model label (repeatable); stage=... overrides the default stage=candidate")
    parser.add_argument("--skip-failed", action="store_true",
                        help=f"a failed gate decision writes packaged=false to --output and exits 0 instead of {EXIT_GATE_FAILED}")
    parser.set_defaults(func=run_package)
    return parser
