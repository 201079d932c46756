"""Every pipeline compiles, and the compiled YAML carries the train task's GPU request and Kubernetes settings."""

from pathlib import Path

import pytest
import yaml

from components.image import IMAGE
from musicvae.cli import main
from pipelines.settings import (
    CHECKPOINT_MOUNT,
    CHECKPOINT_PVC,
    GPU_NODE_SELECTOR,
    GPU_RESOURCE,
    MODEL_STORE_MOUNT,
    MODEL_STORE_PVC,
    TRAIN_RETRIES,
)

GATE = {"thresholds": {"cat-mel_2bar_small": {"min_accuracy": 0.5}}, "tolerance": 0.02, "compare_to_champion": True}
TRAIN = {"seed": 7, "configs": {"cat-mel_2bar_small": {"hparams": "z_size=64", "num_steps": 123},
                                "hierdec-mel_16bar": {"hparams": "", "num_steps": 50000}}}


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"gate": GATE, "train": TRAIN, "validate": {"family": "melody"}}))
    return path


def _compile(tmp_path: Path, params: Path, *extra: str) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "--output", str(out), "--params", str(params), *extra]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform


def _train_executor(spec: dict) -> tuple[str, dict]:
    names = [n for n in spec["deploymentSpec"]["executors"] if n == "exec-train"]
    assert names, spec["deploymentSpec"]["executors"].keys()
    return names[0], spec["deploymentSpec"]["executors"][names[0]]


def test_every_pipeline_compiles(tmp_path: Path):
    from kfp import compiler

    from pipelines.training import pipelines

    for name, pipeline in pipelines().items():  # with the repository's params.yaml
        compiler.Compiler().compile(pipeline, str(tmp_path / f"{name}.yaml"))
        assert yaml.safe_load_all((tmp_path / f"{name}.yaml").read_text())


def test_compiled_yaml_requests_a_gpu_and_carries_the_kubernetes_settings(tmp_path: Path, params: Path):
    spec, platform = _compile(tmp_path, params)
    name, executor = _train_executor(spec)
    accelerator = executor["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == GPU_RESOURCE and accelerator["resourceCount"] == "1"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    assert k8s["nodeSelector"]["labels"] == {GPU_NODE_SELECTOR[0]: GPU_NODE_SELECTOR[1]}
    assert k8s["pvcMount"][0]["mountPath"] == CHECKPOINT_MOUNT
    assert k8s["pvcMount"][0]["constant"] == CHECKPOINT_PVC
    # only training asks for the GPU
    others = [e for n, e in spec["deploymentSpec"]["executors"].items() if n != name and "container" in e]
    assert others and not any("accelerator" in e["container"].get("resources", {}) for e in others)
    for task in ("exec-gate", "exec-package"):  # one model store: the champion the gate reads, where package writes
        mount = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][task]["pvcMount"][0]
        assert (mount["constant"], mount["mountPath"]) == (MODEL_STORE_PVC, MODEL_STORE_MOUNT)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {IMAGE}


def test_compiled_yaml_holds_the_graph_and_the_defaults(tmp_path: Path, params: Path):
    spec, _ = _compile(tmp_path, params)
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert {"convert", "convert-2", "train", "evaluate", "gate", "condition-2"} <= set(loop)
    assert loop["train"]["retryPolicy"]["maxRetryCount"] == TRAIN_RETRIES
    assert "gate-Output" in loop["condition-2"]["triggerPolicy"]["condition"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    # read from the params file at compile time
    assert inputs["gate_params"]["defaultValue"] == GATE
    assert inputs["runs"]["defaultValue"] == [
        {"config": "cat-mel_2bar_small", "hparams": "z_size=64", "num_steps": 123},
        {"config": "hierdec-mel_16bar", "hparams": "", "num_steps": 50000},
    ]
    assert inputs["seed"]["defaultValue"] == 7 and inputs["family"]["defaultValue"] == "melody"
    assert inputs["work_dir"]["defaultValue"] == CHECKPOINT_MOUNT


def test_cluster_settings_can_be_switched_off(tmp_path: Path, params: Path):
    spec, platform = _compile(tmp_path, params, "--checkpoint-pvc", "", "--gpu-node-selector", "none",
                              "--model-store-pvc", "")
    name, _ = _train_executor(spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "pvcMount" not in executors[name] and "nodeSelector" not in executors[name] and executors[name]["tolerations"]
    assert "exec-gate" not in executors and "exec-package" not in executors
    assert spec["root"]["inputDefinitions"]["parameters"]["work_dir"]["defaultValue"] == ""


def test_compile_without_a_params_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    missing = str(tmp_path / "x.yaml")
    assert main(["pipeline", "compile", "--output", str(tmp_path / "p.yaml"), "--params", missing]) == 2
    assert "x.yaml not found: the pipeline's defaults (configs, steps, gate)" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
