"""Packaging into a temporary BentoML model store: round trip, refusals, champion and `musicvae package`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from musicvae.cli import main
from musicvae.gate import decide
from musicvae.package import (
    CHECKPOINT_FILE,
    EXIT_BAD_CHECKPOINT,
    EXIT_GATE_FAILED,
    GateFailedError,
    Lineage,
    PackageError,
    bento_model_name,
    champion_metrics,
    champion_tag,
    load_packaged,
    package_model,
    packaged_models,
    promote,
    resolve_model,
)
from musicvae.train import load_model

from .conftest import CONFIG, ROOT

PASS = {"min_accuracy": 0.0, "max_r_loss": 1e9}


def _lineage(run: Path, config: str = CONFIG) -> Lineage:
    return Lineage.collect(run, config, {"hparams": "tiny", "num_steps": 6}, repo_dir=ROOT)


def _package(run: Path, metrics: dict, **kw) -> str:
    return package_model(run, metrics, _lineage(run), gate=decide(CONFIG, metrics, PASS), **kw)


def test_bento_model_name():
    assert bento_model_name(CONFIG) == "musicvae-cat-mel_2bar_small"
    assert bento_model_name("GrooVAE_4bar") == "musicvae-groovae_4bar"


def test_lineage_records_data_version_commit_and_params(trained_run: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "index.json").write_text(json.dumps({"fingerprint": "abc123"}))
    lineage = Lineage.collect(trained_run, CONFIG, {"num_steps": 6}, shards, repo_dir=ROOT)
    assert lineage.data_version == "shards:abc123"
    assert len(lineage.git_commit.split("+")[0]) == 40
    assert lineage.params == {"num_steps": 6} and lineage.run_dir == str(trained_run)
    # without shards: data.dvc's md5; outside a checkout: unknown
    assert Lineage.collect(trained_run, CONFIG, repo_dir=ROOT).data_version.startswith("data.dvc:")
    assert Lineage.collect(trained_run, CONFIG, repo_dir=tmp_path).git_commit == "unknown"


def test_package_and_load_round_trip(trained_run: Path, eval_metrics: dict, store: Path):
    tag = _package(trained_run, eval_metrics, labels={"owner": "tests"})
    assert tag.startswith("musicvae-cat-mel_2bar_small:")
    model = resolve_model(tag)
    assert str(model.tag) == tag
    assert model.info.labels == {"config": CONFIG, "stage": "candidate", "owner": "tests"}
    meta = model.info.metadata
    assert meta["step"] == 6 and meta["metrics"]["accuracy"] == eval_metrics["accuracy"]
    assert meta["lineage"]["config"] == CONFIG and meta["gate"]["passed"] is True
    assert json.loads(Path(model.path_of("gate.json")).read_text())["passed"] is True
    assert (store / "models" / "musicvae-cat-mel_2bar_small").is_dir()

    # the stored checkpoint is ours, loads with weights_only=True, and holds no optimiser state
    payload = torch.load(model.path_of(CHECKPOINT_FILE), weights_only=True)
    assert set(payload) == {"format", "step", "config", "model"}

    _, reference, _ = load_model(trained_run / "train" / "ckpt-6.pt")
    for ref in (tag, CONFIG, bento_model_name(CONFIG), f"{bento_model_name(CONFIG)}:latest"):
        tm = load_packaged(ref, max_batch_size=3)
        assert tm.bento_tag == tag and tm.config.name == CONFIG and tm.max_batch_size == 3
        for name, value in reference.state_dict().items():
            assert torch.equal(tm.model.state_dict()[name], value), name
    midis = load_packaged(CONFIG).sample(2, temperature=0.5, seed=1)
    assert len(midis) == 2


def test_not_found_lists_the_store(trained_run: Path, eval_metrics: dict, store: Path):
    with pytest.raises(PackageError, match="is empty"):
        load_packaged(CONFIG)
    tag = _package(trained_run, eval_metrics)
    with pytest.raises(PackageError, match=f"no packaged model for 'cat-mel_2bar_big'.*holds:\n  {tag}  stage=candidate"):
        load_packaged("cat-mel_2bar_big")
    with pytest.raises(PackageError, match="no model musicvae-cat-mel_2bar_small:nope"):
        load_packaged("musicvae-cat-mel_2bar_small:nope")


def test_refuses_bad_checkpoints(trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path):
    gate = decide(CONFIG, eval_metrics, PASS)
    with pytest.raises(PackageError, match="no checkpoint at"):
        package_model(tmp_path / "missing.pt", eval_metrics, _lineage(trained_run), gate)
    with pytest.raises(PackageError, match="no checkpoint"):
        package_model(tmp_path, eval_metrics, _lineage(trained_run), gate)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PackageError, match="cannot read checkpoint"):
        package_model(junk, eval_metrics, _lineage(trained_run), gate)
    with pytest.raises(PackageError, match="holds a cat-mel_2bar_small model, but the lineage says cat-mel_2bar_big"):
        package_model(trained_run, eval_metrics, _lineage(trained_run, "cat-mel_2bar_big"))
    with pytest.raises(PackageError, match="metrics are for step 5 but .* is step 6"):
        package_model(trained_run, {**eval_metrics, "step": 5}, _lineage(trained_run), gate)
    # weights that do not fit the embedded config
    payload = torch.load(trained_run / "train" / "ckpt-6.pt", weights_only=True)
    payload["config"]["hparams"]["z_size"] = 16
    torch.save(payload, tmp_path / "ckpt-6.pt")
    with pytest.raises(PackageError, match="do not fit its own config"):
        package_model(tmp_path / "ckpt-6.pt", eval_metrics, _lineage(trained_run), gate)
    assert packaged_models() == []


def test_refuses_a_failed_gate(trained_run: Path, eval_metrics: dict, store: Path):
    failed = decide(CONFIG, eval_metrics, {"min_accuracy": 1.5})
    with pytest.raises(GateFailedError, match=r"did not pass the eval gate; not packaged:\n  - accuracy .* < 1.5"):
        package_model(trained_run, eval_metrics, _lineage(trained_run), gate=failed)
    other = decide("cat-mel_2bar_big", eval_metrics, PASS)
    with pytest.raises(GateFailedError, match="about cat-mel_2bar_big"):
        package_model(trained_run, eval_metrics, _lineage(trained_run), gate=other.to_dict())
    assert packaged_models(CONFIG) == []


def test_champion_is_the_newest_promoted_model(trained_run: Path, eval_metrics: dict, store: Path):
    first = _package(trained_run, eval_metrics)
    assert champion_metrics(CONFIG) is None and champion_tag(CONFIG) is None
    promote(first)
    assert champion_tag(CONFIG) == first and champion_metrics(CONFIG)["accuracy"] == eval_metrics["accuracy"]
    second = _package(trained_run, {**eval_metrics, "accuracy": 0.99})
    assert champion_tag(CONFIG) == first
    assert load_packaged(CONFIG).bento_tag == first  # a config name loads the champion, not the newest
    assert load_packaged(second).bento_tag == second
    promote(second)
    assert champion_tag(CONFIG) == second and champion_metrics(CONFIG)["accuracy"] == 0.99
    assert resolve_model(first).info.labels["stage"] == "retired"
    assert [str(m.tag) for m in packaged_models(CONFIG)] == [first, second]


# --- the command ---------------------------------------------------------------------------------------


def _files(tmp_path: Path, eval_metrics: dict, thresholds: dict, config: str = CONFIG) -> tuple[Path, Path]:
    metrics, decision = tmp_path / "metrics.json", tmp_path / "decision.json"
    metrics.write_text(json.dumps(eval_metrics))
    decide(config, eval_metrics, thresholds).save(decision)
    return metrics, decision


def test_package_command(trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path, capsys):
    metrics, decision = _files(tmp_path, eval_metrics, PASS)
    out = tmp_path / "out" / "tag.json"
    assert main(["package", "--run_dir", str(trained_run), "--metrics", str(metrics), "--decision", str(decision),
                 "--output", str(out), "--label", "source=tests", "--repo_dir", str(ROOT),
                 "--params", str(ROOT / "params.yaml")]) == 0
    doc = json.loads(out.read_text())
    assert doc["packaged"] and doc["tag"] == capsys.readouterr().out.strip()
    assert doc["lineage"]["params"]["num_steps"] > 0  # train.configs.<config> of params.yaml
    assert resolve_model(doc["tag"]).info.labels["source"] == "tests"


def test_package_command_on_a_failed_gate(trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path, capsys):
    metrics, decision = _files(tmp_path, eval_metrics, {"min_accuracy": 1.5})
    out = tmp_path / "tag.json"
    args = ["package", "--run_dir", str(trained_run), "--metrics", str(metrics), "--decision", str(decision), "--output", str(out)]
    assert main(args) == EXIT_GATE_FAILED
    assert "did not pass the eval gate" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--skip-failed"]) == 0
    doc = json.loads(out.read_text())
    assert doc["packaged"] is False and doc["tag"] is None and doc["passed"] is False
    assert packaged_models() == []


def test_package_command_on_a_wrong_checkpoint(trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path, capsys):
    metrics, decision = _files(tmp_path, eval_metrics, PASS, config="cat-mel_2bar_big")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    base = ["--metrics", str(metrics), "--decision", str(decision), "--output", str(tmp_path / "t.json")]
    assert main(["package", "--run_dir", str(trained_run), *base]) == EXIT_BAD_CHECKPOINT
    assert "lineage says cat-mel_2bar_big" in capsys.readouterr().err
    assert main(["package", "--run_dir", str(empty), *base]) == EXIT_BAD_CHECKPOINT
    shutil.rmtree(empty)


def test_an_invalid_tag_is_reported_as_not_found(store: Path):
    with pytest.raises(PackageError, match="no model Bad Tag:x in the store"):
        load_packaged("Bad Tag:x")


def _run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run's checkpoint, so that files written beside it stay in this test."""
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    shutil.copy(trained_run / "train" / "ckpt-6.pt", run / "train" / "ckpt-6.pt")
    return run


def test_attribute_vectors_are_packaged_with_the_checkpoint(trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path):
    import numpy as np

    from musicvae.attributes import ATTRIBUTES, attributes_path, save_attribute_vectors
    from musicvae.generate import TrainedModel
    from serving.operations import ModelRegistry, Operations, OutputFormat
    from tests.serving.conftest import UP, melody

    run = _run_copy(trained_run, tmp_path)
    ckpt = run / "train" / "ckpt-6.pt"
    tm = TrainedModel.from_checkpoint(ckpt)
    z_size = tm.config.hparams.z_size
    vectors = {name: np.full(z_size, k, np.float32) for k, name in enumerate(ATTRIBUTES)}
    save_attribute_vectors(vectors, tm, attributes_path(ckpt))
    tag = _package(run, eval_metrics)
    assert Path(resolve_model(tag).path_of(CHECKPOINT_FILE + ".attributes.npz")).is_file()
    packaged = load_packaged(tag)
    assert {k: v.tolist() for k, v in packaged.attribute_vectors.items()} == {k: v.tolist() for k, v in vectors.items()}

    # /attribute's operation on the packaged model
    ops = Operations(ModelRegistry.load([tag]))
    try:
        assert ops.registry.attribute_names(CONFIG) == sorted(ATTRIBUTES)
        out = ops.attribute(CONFIG, melody(UP), "note_density", 1.0, 0.5, 1, OutputFormat.midi).result(timeout=60)
        assert out.midi[0].startswith(b"MThd")
    finally:
        ops.close()

    # vectors computed for other weights are refused, not packaged
    other = TrainedModel(tm.config, tm.config.build_model())
    save_attribute_vectors(vectors, other, attributes_path(ckpt))
    with pytest.raises(PackageError, match="another model's weights"):
        _package(run, eval_metrics)


def test_a_model_without_vectors_packages_without_them(trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path):
    tag = _package(_run_copy(trained_run, tmp_path), eval_metrics)
    assert not Path(resolve_model(tag).path_of(CHECKPOINT_FILE + ".attributes.npz")).exists()
    with pytest.raises(FileNotFoundError):
        load_packaged(tag).attribute_vectors


def test_a_missing_store_reads_as_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("BENTOML_HOME", str(blocked))  # $BENTOML_HOME/models cannot be created
    monkeypatch.delenv("BENTO_PATH", raising=False)
    assert packaged_models() == [] and packaged_models(CONFIG) == []
    assert champion_tag(CONFIG) is None
    with pytest.raises(PackageError, match="is empty"):
        load_packaged(CONFIG)
    with pytest.raises(PackageError, match="no model musicvae-cat-mel_2bar_small:latest"):
        resolve_model("musicvae-cat-mel_2bar_small:latest")


def test_models_packed_in_a_bento_are_found_in_its_container(
    trained_run: Path, eval_metrics: dict, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    tag = _package(trained_run, eval_metrics)
    bento = tmp_path / "bento"
    bento.mkdir()
    shutil.move(store / "models", bento / "models")  # the bento's layout: $BENTO_PATH/models
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "scratch"))  # an empty writable home, as in k8s
    assert packaged_models(CONFIG) == []
    monkeypatch.setenv("BENTO_PATH", str(bento))
    assert [str(m.tag) for m in packaged_models(CONFIG)] == [tag]
    for ref in (CONFIG, tag, f"{bento_model_name(CONFIG)}:latest"):
        tm = load_packaged(ref)
        assert tm.bento_tag == tag and tm.config.name == CONFIG
    assert Path(resolve_model(tag).path).is_relative_to(bento)
