"""Each component's function called directly (`.python_func`) on a tiny corpus of real MIDI files: the same code
that runs in a pipeline task, without the KFP executor around it."""

import csv
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

from components.convert.component import convert
from components.evaluate.component import evaluate
from components.gate.component import gate
from components.image import IMAGE
from components.package.component import package
from components.train.component import train
from components.validate.component import validate
from tests.components.corpus import CORRUPT, TINY_HPARAMS, write_corpus

CONFIG = "cat-mel_2bar_small"
LOOSE_GATE = {"thresholds": {CONFIG: {"min_accuracy": 0.0, "max_r_loss": 1e6}}, "tolerance": 0.02,
              "compare_to_champion": True}


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory):
    """One thread, and the model store and temporary files in this test's directory."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK", "TMPDIR")}
    scratch = str(tmp_path_factory.mktemp("tmp"))  # the components' own temporary folders
    os.environ.update(OMP_NUM_THREADS="1", BENTOML_HOME=str(tmp_path_factory.mktemp("bentoml")),
                      BENTOML_DO_NOT_TRACK="true", TMPDIR=scratch)
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, scratch
    yield
    tempfile.tempdir = saved_tempdir
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _validate(data: Path, out: Path, family: str = "melody") -> dict:
    outputs = {"corpus": Dataset(uri=str(out / "corpus")), "report": HTML(uri=str(out / "report")),
               "quarantine": Dataset(uri=str(out / "quarantine")), "summary": Metrics(uri=str(out / "summary"))}
    kept = validate.python_func(data=Dataset(uri=str(data), metadata={"data_version": "v1"}), family=family, **outputs)
    return {"kept": kept, **outputs}


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("validate")
    return _validate(write_corpus(root / "data", corrupt=True), root)


def test_components_run_in_the_project_image():
    for component in (validate, convert, train, evaluate, gate, package):
        container = component.component_spec.implementation.container
        assert container.image == IMAGE
        assert "pip install" not in " ".join(container.command)  # install_kfp_package=False: the image has it


def test_validate_quarantines_corrupt_files_and_hands_on_the_rest(validated: dict):
    assert validated["kept"] == 13
    with open(validated["quarantine"].path, newline="") as f:
        rejected = {row["member"]: row["reason"] for row in csv.DictReader(f)}
    assert set(rejected) == set(CORRUPT)
    assert "MThd" in rejected["bad/random.mid"] and "truncated" in rejected["bad/truncated.mid"]
    corpus = Path(validated["corpus"].path)
    with open(corpus / "manifest.csv", newline="") as f:
        members = [row["member"] for row in csv.DictReader(f)]
    with tarfile.open(corpus / "melody.tar") as tar:
        assert sorted(tar.getnames()) == sorted(members)
    assert len(members) == 13 and not set(members) & set(CORRUPT)
    assert validated["corpus"].metadata == {"family": "melody", "files": 13, "quarantined": 2, "train": 10,
                                            "heldout": 3, "data_version": "v1"}
    assert "bad/random.mid" in Path(validated["report"].path).read_text()
    metrics = validated["summary"].metadata
    assert (metrics["files"], metrics["accepted"], metrics["quarantined"]) == (15, 13, 2)
    assert json.loads(Path(validated["summary"].path).read_text())["n_quarantined"] == 2


@pytest.mark.parametrize("kind", ["empty", "all invalid"])
def test_validate_stops_on_a_corpus_with_nothing_to_train_on(kind: str, tmp_path: Path):
    data = write_corpus(tmp_path / "data", n_train=0, n_heldout=0, corrupt=kind == "all invalid")
    with pytest.raises(ValueError, match="no valid melody file in .*nothing to train on"):
        _validate(data, tmp_path)


def test_validate_stops_without_held_out_files(tmp_path: Path):
    data = write_corpus(tmp_path / "data", n_train=4, n_heldout=0)
    with pytest.raises(ValueError, match="heldout split"):
        _validate(data, tmp_path)


def test_validate_says_what_a_corpus_directory_is(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="manifest.csv and melody.tar"):
        _validate(tmp_path, tmp_path)


@pytest.fixture(scope="module")
def shards(validated: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for split in ("train", "heldout"):
        out[split] = Dataset(uri=str(root / split))
        windows = convert.python_func(corpus=validated["corpus"], config=CONFIG, split=split, shards=out[split])
        assert windows == out[split].metadata["windows"] > 0
    return out


def test_convert_writes_checksummed_shards_of_one_split(shards: dict[str, Dataset]):
    for split, expected_files in (("train", 10), ("heldout", 3)):
        index = json.loads((Path(shards[split].path) / "index.json").read_text())
        assert index["config"] == CONFIG and index["files"]["total"] == expected_files
        assert shards[split].metadata["fingerprint"] == index["fingerprint"]


@pytest.fixture(scope="module")
def trained(shards: dict[str, Dataset], tmp_path_factory: pytest.TempPathFactory) -> Model:
    model = Model(uri=str(tmp_path_factory.mktemp("train") / "model"))
    step = train.python_func(shards=shards["train"], config=CONFIG, model=model, hparams=TINY_HPARAMS,
                             num_steps=4, device="cpu", log_every_steps=1)
    assert step == 4
    return model


def test_train_writes_a_run_directory_with_its_checkpoint(trained: Model):
    assert sorted(p.name for p in (Path(trained.path) / "train").glob("ckpt-*.pt")) == ["ckpt-4.pt"]
    assert trained.metadata["checkpoint"] == "train/ckpt-4.pt" and trained.metadata["config"] == CONFIG


def test_train_retry_resumes_from_the_checkpoint_of_the_failed_attempt(
    shards: dict[str, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import musicvae.train

    real_step, calls = musicvae.train.optimisation_step, []

    def flaky_step(*args, **kwargs):  # the first attempt dies in its 5th step, as a preempted pod would
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("node preempted")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(musicvae.train, "optimisation_step", flaky_step)
    kwargs = dict(shards=shards["train"], config=CONFIG, hparams=TINY_HPARAMS, num_steps=6, device="cpu",
                  work_dir=str(tmp_path / "checkpoints"), checkpoint_every_secs=0.0, log_every_steps=1)
    with pytest.raises(RuntimeError, match="node preempted"):
        train.python_func(model=Model(uri=str(tmp_path / "attempt1")), **kwargs)
    calls.clear()
    retried = Model(uri=str(tmp_path / "attempt2"))  # a retry gets a fresh output directory
    assert train.python_func(model=retried, **kwargs) == 6
    assert len(calls) == 2  # steps 5 and 6 only: steps 1-4 came from the first attempt's checkpoint
    rows = (Path(retried.path) / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in (Path(retried.path) / "train").glob("ckpt-*.pt")] == ["ckpt-6.pt"]


@pytest.fixture(scope="module")
def evaluated(trained: Model, shards: dict[str, Dataset], tmp_path_factory: pytest.TempPathFactory) -> Metrics:
    metrics = Metrics(uri=str(tmp_path_factory.mktemp("eval") / "metrics"))
    metrics.metadata.clear()
    accuracy = evaluate.python_func(model=trained, shards=shards["heldout"], config=CONFIG, metrics=metrics,
                                    device="cpu")
    assert accuracy == metrics.metadata["accuracy"]
    return metrics


def test_evaluate_logs_held_out_metrics_and_keeps_the_input_untouched(evaluated: Metrics, trained: Model):
    doc = json.loads(Path(evaluated.path).read_text())
    assert doc["step"] == 4 and doc["checkpoint"] == "train/ckpt-4.pt" and doc["num_examples"] > 0
    assert {"loss", "r_loss", "kl_bits", "accuracy"} <= set(evaluated.metadata)
    assert not (Path(trained.path) / "eval").exists()


def test_gate_fails_a_model_below_its_thresholds(evaluated: Metrics, tmp_path: Path):
    strict = {"thresholds": {CONFIG: {"min_accuracy": 1.01}}, "tolerance": 0.0, "compare_to_champion": False}
    decision = Artifact(uri=str(tmp_path / "decision"))
    assert gate.python_func(metrics=evaluated, config=CONFIG, gate_params=strict, decision=decision) is False
    assert any("FAILED" in r for r in json.loads(Path(decision.path).read_text())["reasons"])


def test_gate_then_package_registers_the_model_with_its_lineage(
    evaluated: Metrics, trained: Model, validated: dict, tmp_path: Path
):
    from musicvae.package import load_packaged, resolve_model

    decision = Artifact(uri=str(tmp_path / "decision"))
    assert gate.python_func(metrics=evaluated, config=CONFIG, gate_params=LOOSE_GATE, decision=decision) is True
    record = Artifact(uri=str(tmp_path / "record"))
    tag = package.python_func(model=trained, metrics=evaluated, decision=decision, corpus=validated["corpus"],
                              config=CONFIG, record=record, hparams=TINY_HPARAMS, num_steps=4, seed=0,
                              git_commit="abc123")
    stored = resolve_model(tag)
    lineage = stored.info.metadata["lineage"]
    assert lineage["data_version"] == "v1" and lineage["git_commit"] == "abc123" and lineage["config"] == CONFIG
    assert lineage["params"] == {"hparams": TINY_HPARAMS, "num_steps": 4, "seed": 0}
    assert stored.info.metadata["metrics"]["accuracy"] == evaluated.metadata["accuracy"]
    assert stored.info.metadata["gate"]["passed"] is True
    assert json.loads(Path(record.path).read_text())["tag"] == tag == record.metadata["tag"]
    assert load_packaged(tag).bento_tag == tag
    assert stored.info.labels["stage"] == "candidate"


def test_package_can_promote_the_model_to_champion(evaluated: Metrics, trained: Model, validated: dict,
                                                   tmp_path: Path):
    from musicvae.package import champion_tag

    decision = Artifact(uri=str(tmp_path / "decision"))
    assert gate.python_func(metrics=evaluated, config=CONFIG, gate_params=LOOSE_GATE, decision=decision) is True
    tag = package.python_func(model=trained, metrics=evaluated, decision=decision, corpus=validated["corpus"],
                              config=CONFIG, record=Artifact(uri=str(tmp_path / "record")), promote=True)
    assert champion_tag(CONFIG) == tag
    # the next gate compares with it: the same metrics are within the tolerance
    again = Artifact(uri=str(tmp_path / "again"))
    assert gate.python_func(metrics=evaluated, config=CONFIG, gate_params=LOOSE_GATE, decision=again) is True
    assert json.loads(Path(again.path).read_text())["champion_tag"] == tag
