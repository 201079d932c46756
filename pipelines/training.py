"""The training pipeline: validate the corpus, then for every config in `runs` (dsl.ParallelFor) convert its
train and held-out splits, train, evaluate, gate, and package the models that pass the gate (dsl.If).

    corpus ─► validate ─► for each run: convert train ─► train (GPU) ─► evaluate ─► gate ─► if passed: package
                                        convert heldout ─────────────────┘

Compiled YAML is generated (`musicvae pipeline compile`), never edited. The train task asks for one
`nvidia.com/gpu`, tolerates the GPU nodes' taint, is pinned to them by a node selector, retries twice and keeps
its checkpoints on a persistent volume (`work_dir`), so a retried attempt resumes where the last one stopped.
Locally (`musicvae pipeline run --local`) the Kubernetes settings are ignored and training runs on the CPU.
"""

from pathlib import Path
from typing import Any, List

import yaml
from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from components.convert.component import convert
from components.evaluate.component import evaluate
from components.gate.component import gate
from components.package.component import package
from components.train.component import train
from components.validate.component import validate
from pipelines.settings import (
    CHECKPOINT_MOUNT,
    CHECKPOINT_PVC,
    GPU_NODE_SELECTOR,
    GPU_RESOURCE,
    GPU_TOLERATION,
    MODEL_STORE_MOUNT,
    MODEL_STORE_PVC,
    PARAMS_FILE,
    TRAIN_CPU_REQUEST,
    TRAIN_MEMORY_REQUEST,
    TRAIN_RETRIES,
)

PIPELINE_NAME = "musicvae-training"


def read_defaults(params_file: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The pipeline's defaults from params.yaml, read at compile time: `runs` from train.configs (config,
    hparams, num_steps), `seed` from train.seed, `family` from validate.family, `gate_params` = the gate section."""
    path = Path(params_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the pipeline's defaults (configs, steps, gate) come from its "
                                "train, validate and gate sections")
    doc = yaml.safe_load(path.read_text()) or {}
    gate = doc.get("gate")
    if not isinstance(gate, dict) or not gate.get("thresholds"):
        raise ValueError(f"{path}: no `gate.thresholds` section")
    train = doc.get("train") or {}
    runs = [{"config": name, "hparams": str(c.get("hparams") or ""), "num_steps": int(c["num_steps"])}
            for name, c in (train.get("configs") or {}).items()]
    if not runs:
        raise ValueError(f"{path}: no `train.configs` section (config -> hparams, num_steps)")
    return {"runs": runs, "gate_params": gate, "seed": int(train.get("seed", 0)),
            "family": str((doc.get("validate") or {}).get("family", "melody"))}


def make_training_pipeline(
    checkpoint_pvc: str | None = CHECKPOINT_PVC,
    gpu_node_selector: tuple[str, str] | None = GPU_NODE_SELECTOR,
    model_store_pvc: str | None = MODEL_STORE_PVC,
    params_file: str | Path = PARAMS_FILE,
    **overrides: Any,
) -> Any:
    """The pipeline, with its cluster settings: the PVC that holds checkpoints (None: no volume, retries then
    start over), the GPU nodes' label (None: no node selector) and the PVC of the BentoML model store that the
    gate and package tasks share (None: the pod's own disk). Parameter defaults come from `params_file` (see
    `read_defaults`); `overrides` (runs, gate_params, seed, family) replace them."""
    defaults = {**read_defaults(params_file), **overrides}
    default_work_dir = CHECKPOINT_MOUNT if checkpoint_pvc else ""

    @dsl.pipeline(name=PIPELINE_NAME, description="MusicVAE: validate, convert, train, evaluate, gate and package "
                  "each config of `runs`.")
    def training(
        data_uri: str,
        data_version: str = "",
        git_commit: str = "",
        family: str = defaults["family"],
        runs: List[dict] = defaults["runs"],
        gate_params: dict = defaults["gate_params"],
        seed: int = defaults["seed"],
        device: str = "auto",
        work_dir: str = default_work_dir,
        checkpoint_every_secs: float = 60.0,
        promote: bool = False,
    ):
        """data_uri: corpus directory (manifest.csv + <family>.tar); data_version: its DVC hash (keys caching and
        lineage); runs: [{config, hparams, num_steps}]; gate_params: params.yaml's `gate` section; promote: make
        each packaged model its config's champion (what the gate compares the next candidates with)."""
        data = dsl.importer(artifact_uri=data_uri, artifact_class=Dataset, reimport=False,
                            metadata={"data_version": data_version})
        data.set_display_name("corpus")
        checked = validate(data=data.output, family=family)
        with dsl.ParallelFor(items=runs) as run:
            train_shards = convert(corpus=checked.outputs["corpus"], config=run.config, split="train")
            train_shards.set_display_name("convert-train")
            heldout_shards = convert(corpus=checked.outputs["corpus"], config=run.config, split="heldout")
            heldout_shards.set_display_name("convert-heldout")

            trained = train(shards=train_shards.outputs["shards"], config=run.config, hparams=run.hparams,
                            num_steps=run.num_steps, seed=seed, device=device, work_dir=work_dir,
                            checkpoint_every_secs=checkpoint_every_secs)
            trained.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
            trained.set_cpu_request(TRAIN_CPU_REQUEST).set_memory_request(TRAIN_MEMORY_REQUEST)
            trained.set_retry(TRAIN_RETRIES, backoff_duration="30s")
            kubernetes.add_toleration(trained, **GPU_TOLERATION)
            if gpu_node_selector:
                key, value = gpu_node_selector
                kubernetes.add_node_selector(trained, label_key=key, label_value=value)
            if checkpoint_pvc:
                kubernetes.mount_pvc(trained, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)

            evaluated = evaluate(model=trained.outputs["model"], shards=heldout_shards.outputs["shards"],
                                 config=run.config, device=device, seed=seed)
            decided = gate(metrics=evaluated.outputs["metrics"], config=run.config, gate_params=gate_params)
            if model_store_pvc:
                kubernetes.mount_pvc(decided, pvc_name=model_store_pvc, mount_path=MODEL_STORE_MOUNT)
            # `== True` builds a KFP condition; it is not a Python comparison
            with dsl.If(decided.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                packaged = package(model=trained.outputs["model"], metrics=evaluated.outputs["metrics"],
                                   decision=decided.outputs["decision"], corpus=checked.outputs["corpus"],
                                   config=run.config, hparams=run.hparams, num_steps=run.num_steps, seed=seed,
                                   git_commit=git_commit, promote=promote)
                if model_store_pvc:
                    kubernetes.mount_pvc(packaged, pvc_name=model_store_pvc, mount_path=MODEL_STORE_MOUNT)

    return training


def pipelines(params_file: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Every pipeline of the project, by name (what the tests compile)."""
    return {"training": make_training_pipeline(params_file=params_file)}
