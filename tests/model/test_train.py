"""music_vae_train: optimiser details, augmentation, real CPU training, eval, checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from musicvae.cli_train import main
from musicvae.configs import get_config
from musicvae.data.augment import augment_sequence, transpose_sequence
from musicvae.data.note_sequence import Note, NoteSequence
from musicvae.convert import convert
from musicvae.train import (
    ADAM_EPSILON,
    TrainingError,
    config_from_dict,
    config_to_dict,
    learning_rate,
    load_model,
    make_optimizer,
    open_source,
    process_gradients,
    set_optimizer_step,
)

CONFIG = "cat-mel_2bar_small"
TINY = "batch_size=8,enc_rnn_size=[32],dec_rnn_size=[32,32],z_size=8"
# One intra-op thread, here and in the subprocesses: tiny LSTMs gain nothing from two, two threads
# crawl when other jobs share the cores, and the resume test compares runs bit for bit.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- optimisation ------------------------------------------------------------------------------------


def test_learning_rate_decays_exponentially_to_the_floor():
    hp = get_config(CONFIG).hparams
    assert learning_rate(hp, 0) == pytest.approx(1e-3)
    assert learning_rate(hp, 1) == pytest.approx((1e-3 - 1e-5) * 0.9999 + 1e-5)
    assert learning_rate(hp, 10_000) == pytest.approx((1e-3 - 1e-5) * 0.9999**10_000 + 1e-5)
    assert learning_rate(hp, 10**7) == pytest.approx(1e-5)


def test_adam_update_is_tf1s():
    """TF1: θ -= lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m/(√v + ε), with ε outside the bias correction."""
    hp = get_config(CONFIG).hparams
    p = torch.nn.Parameter(torch.tensor([0.5, -0.25, 1e-9], dtype=torch.float64))
    opt = make_optimizer([p], hp, torch.device("cpu"))
    theta, m, v = p.detach().clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for step in range(4):
        g = torch.tensor([1e-3, -2.0, 1e-9], dtype=torch.float64) * (step + 1)
        p.grad = g.clone()
        set_optimizer_step(opt, hp, step)
        opt.step()
        t = step + 1
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr_t = learning_rate(hp, step) * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        theta = theta - lr_t * m / (v.sqrt() + ADAM_EPSILON)
        torch.testing.assert_close(p.detach(), theta, rtol=1e-12, atol=0)


def _params(*grads: list[float]) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    return params


def test_gradients_clipped_to_global_norm():
    hp = get_config(CONFIG).hparams
    params = _params([3.0, 0.0], [0.0, 4.0])  # global norm 5
    norm = process_gradients(params, hp)
    assert norm.item() == pytest.approx(5.0)
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.0]) and params[1].grad.tolist() == pytest.approx([0.0, 0.8])
    small = _params([0.3, 0.4])
    process_gradients(small, hp)
    assert small[0].grad.tolist() == pytest.approx([0.3, 0.4])  # below grad_clip: untouched


@pytest.mark.parametrize("huge", [1e4, 1e6, float("inf"), float("nan")])
def test_all_gradients_zeroed_at_huge_norm_and_adam_still_steps(huge: float):
    hp = get_config(CONFIG).hparams
    params = _params([huge, 1.0], [2.0])
    opt = make_optimizer(params, hp, torch.device("cpu"))
    norm = process_gradients(params, hp)
    assert not norm.item() < hp.grad_norm_clip_to_zero
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    opt.step()
    assert all(opt.state[p]["step"].item() == 1 for p in params)  # the step counter moved, as in TF
    # With a non-zero first moment the parameters keep moving on zero gradients.
    params[1].grad = torch.tensor([1.0])
    params[0].grad = torch.zeros(2)
    opt.step()
    params[1].grad = torch.tensor([1e12])
    before = params[1].detach().clone()
    process_gradients(params, hp)
    opt.step()
    assert not torch.equal(params[1].detach(), before)


def test_clip_by_value_has_no_zeroing():
    hp = get_config(CONFIG).hparams.override(clip_mode="value", grad_clip=0.5)
    params = _params([2e4, -3.0, 0.1])
    process_gradients(params, hp)
    assert params[0].grad.tolist() == pytest.approx([0.5, -0.5, 0.1])


# --- augmentation ------------------------------------------------------------------------------------


def _sequence() -> NoteSequence:
    notes = [
        Note(pitch=60, velocity=90, start_time=0.0, end_time=0.5),
        Note(pitch=125, velocity=90, start_time=0.5, end_time=3.0),  # leaves the MIDI range when shifted up
        Note(pitch=36, velocity=90, start_time=0.0, end_time=0.1, instrument=9, is_drum=True),
        Note(pitch=2, velocity=90, start_time=1.0, end_time=1.5),  # leaves it when shifted down
    ]
    return NoteSequence(notes=notes, total_time=3.0)


def test_transpose_moves_pitched_notes_deletes_out_of_range_and_never_moves_drums():
    ns = _sequence()
    up, deleted = transpose_sequence(ns, 5)
    assert deleted == 1
    assert [(n.pitch, n.is_drum) for n in up.notes] == [(65, False), (36, True), (7, False)]
    assert up.total_time == 1.5  # the deleted note was the last to sound
    down, deleted = transpose_sequence(ns, -5)
    assert deleted == 1 and [n.pitch for n in down.notes] == [55, 120, 36]
    assert [n.pitch for n in ns.notes] == [60, 125, 36, 2]  # the input is untouched


def test_augment_draws_uniform_integers_from_the_inclusive_range():
    ns = NoteSequence(notes=[Note(pitch=60, velocity=90, start_time=0.0, end_time=1.0),
                             Note(pitch=38, velocity=90, start_time=0.0, end_time=1.0, is_drum=True)], total_time=1.0)
    rng = np.random.default_rng(0)
    shifts = [augment_sequence(ns, (-5, 5), rng).notes[0].pitch - 60 for _ in range(2000)]
    counts = np.bincount(np.asarray(shifts) + 5)
    assert len(counts) == 11 and counts.min() > 120  # every amount in [-5, 5], roughly uniform
    assert {augment_sequence(ns, (-5, 5), rng).notes[1].pitch for _ in range(50)} == {38}


def test_only_melody_configs_transpose():
    assert get_config("cat-mel_2bar_small").transpose_range == (-5, 5)
    assert get_config("cat-drums_2bar_small").transpose_range is None
    assert get_config("hierdec-trio_16bar").transpose_range is None


# --- end to end ----------------------------------------------------------------------------------------


def _write_melodies(directory: Path, count: int = 14, bars: int = 8) -> Path:
    """Folk-like 4/4 lines: scale runs and arpeggios with rests, so the model has structure to learn."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pm = pretty_midi.PrettyMIDI(initial_tempo=120)
        inst = pretty_midi.Instrument(program=0)
        t, pitch = 0.0, int(rng.integers(55, 70))
        while t < bars * 2.0 - 1e-9:
            dur = float(rng.choice([0.125, 0.25, 0.25, 0.5]))
            if rng.random() > 0.1:
                inst.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=t, end=t + dur))
            pitch = int(np.clip(pitch + rng.choice([-2, -1, 1, 2, 4, -3]), 48, 84))
            t += dur
        pm.instruments.append(inst)
        pm.write(str(directory / f"melody-{i:02d}.mid"))
    return directory


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def midi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_melodies(tmp_path_factory.mktemp("midi"))


@pytest.fixture(scope="module")
def trained(midi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    args = [f"--config={CONFIG}", f"--run_dir={run}", f"--examples_path={midi}", f"--hparams={TINY}",
            "--num_steps=80", "--log_every_steps=1", "--num_workers=2", "--seed=3", "--device=cpu"]
    assert main(args) == 0
    return run


def test_training_lowers_the_loss(trained: Path):
    rows = _rows(trained)
    assert [r["step"] for r in rows] == list(range(1, 81))
    first, last = (np.mean([r["loss"] for r in part]) for part in (rows[:10], rows[-10:]))
    assert last < 0.8 * first, (first, last)
    assert rows[0]["learning_rate"] == pytest.approx(1e-3)
    assert rows[0]["kl_beta"] == 0.0 and rows[-1]["kl_beta"] == pytest.approx(0.2 * (1 - 0.99999**79))
    assert all(0.0 <= r["sampling_probability"] < 0.2 for r in rows)
    header = (trained / "train" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "loss", "r_loss", "kl_loss", "kl_bits", "kl_beta", "learning_rate",
                      "global_norm", "sampling_probability", "seq_per_s"]
    assert json.loads((trained / "train" / "metrics.json").read_text())["step"] == 80


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(trained: Path):
    path = trained / "train" / "ckpt-80.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 80 and payload["config"]["name"] == CONFIG
    assert payload["config"]["hparams"]["dec_rnn_size"] == [32, 32]
    assert config_to_dict(config_from_dict(payload["config"])) == payload["config"]
    assert {"state", "param_groups"} <= set(payload["optimizer"])
    config, model, step = load_model(path)
    assert step == 80 and config.hparams.z_size == 8 and not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, payload["model"][name])


def test_eval_writes_magenta_metrics(trained: Path, midi: Path):
    assert main([f"--config={CONFIG}", f"--run_dir={trained}", "--mode=eval", f"--examples_path={midi}",
                 "--num_workers=0", "--device=cpu"]) == 0
    doc = json.loads((trained / "eval" / "metrics.json").read_text())
    for key in ("loss", "r_loss", "kl_loss", "kl_bits", "kl_beta", "accuracy", "mean_per_class_accuracy"):
        assert math.isfinite(doc[key]), key
    assert doc["step"] == 80 and doc["num_examples"] == 70
    assert 0.0 < doc["accuracy"] <= 1.0
    assert doc["sampling_probability"] == 1.0  # a scheduled-sampling config's eval samples every input (Magenta)


def test_card_releases_half_precision_weights_with_teacher_forced_and_sampled_accuracy(trained: Path, midi: Path, tmp_path: Path):
    from musicvae.cli import main as musicvae_main
    from musicvae.generate import TrainedModel

    out = tmp_path / "models" / "mel"
    assert musicvae_main(["card", f"--checkpoint_file={trained}", f"--examples_path={midi}", f"--output_dir={out}",
                          "--name=mel-tiny", "--device=cpu", "--num_workers=0"]) == 0
    weights = out / "mel-tiny.pt"
    payload = torch.load(weights, weights_only=True)
    assert set(payload) == {"format", "step", "config", "model"} and payload["step"] == 80
    assert all(v.dtype == torch.float16 for v in payload["model"].values())
    assert weights.stat().st_size < 0.3 * (trained / "train" / "ckpt-80.pt").stat().st_size  # no Adam state, fp16
    doc = json.loads((out / "metrics.json").read_text())
    heldout = doc["heldout"]
    assert (heldout["teacher_forced"]["sampling_probability"], heldout["sampled"]["sampling_probability"]) == (0.0, 1.0)
    tf, sampled = (heldout[p]["accuracy"] for p in ("teacher_forced", "sampled"))
    assert 0.0 < sampled <= tf + 0.05 and tf <= 1.0  # free-running compounds its errors (this tiny model barely)
    assert doc["heldout"]["teacher_forced"]["num_examples"] == 70
    assert doc["paper_accuracy"] == {"melody": {"teacher_forced": 0.986, "sampled": 0.951}}
    card = (out / "README.md").read_text()
    assert f"| accuracy | {tf:.4f} | {sampled:.4f} |" in card and "| melody | 0.986 | 0.951 |" in card
    model = TrainedModel.from_checkpoint(weights)  # what music_vae_generate and musicvae serve load
    assert model.config.name == CONFIG and len(model.sample(2, seed=0, as_sequences=True)) == 2


def test_card_refuses_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from musicvae.cli import main as musicvae_main

    assert musicvae_main(["card", f"--checkpoint_file={tmp_path}", "--examples_path=x", f"--output_dir={tmp_path}/o"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def _latest_step(run: Path) -> int:
    return max((int(p.stem.split("-")[1]) for p in (run / "train").glob("ckpt-*.pt")), default=-1)


def _train_cmd(run: Path, midi: Path, steps: int) -> list[str]:
    exe = Path(sys.executable).with_name("music_vae_train")
    # Teacher forcing keeps it quick; z is still sampled, so the RNG state must survive the kill.
    hparams = f"{TINY},sampling_schedule=constant,sampling_rate=0"
    return [str(exe), f"--config={CONFIG}", f"--run_dir={run}", f"--examples_path={midi}", f"--hparams={hparams}",
            f"--num_steps={steps}", "--checkpoint_every_secs=0", "--checkpoints_to_keep=2", "--log_every_steps=1",
            "--num_workers=1", "--seed=5", "--device=cpu"]


def test_resume_after_sigkill_reaches_the_uninterrupted_weights(
    midi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    steps, kill_after = 24, 10  # 8 batches an epoch: killed mid-epoch, in the second one or later
    reference = tmp_path / "reference"
    assert main(_train_cmd(reference, midi, steps)[1:]) == 0

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, midi, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and _latest_step(run) < kill_after:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(run)
    assert kill_after <= killed_at < steps, f"killed at step {killed_at}"

    with caplog.at_level(logging.INFO, logger="musicvae.train"):
        assert main(_train_cmd(run, midi, steps)[1:]) == 0  # the same command again
    assert f"(step {killed_at})" in caplog.text

    ref = torch.load(reference / "train" / f"ckpt-{steps}.pt", weights_only=True)
    got = torch.load(run / "train" / f"ckpt-{steps}.pt", weights_only=True)
    assert got["step"] == steps and got["data"] == ref["data"]
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    for key, state in ref["optimizer"]["state"].items():
        for slot, value in state.items():
            assert torch.equal(got["optimizer"]["state"][key][slot], value), (key, slot)
    assert torch.equal(got["rng"]["torch"], ref["rng"]["torch"])
    assert [r["step"] for r in _rows(run)] == list(range(1, steps + 1))  # no duplicated rows after the resume
    assert [r["loss"] for r in _rows(run)] == [r["loss"] for r in _rows(reference)]
    assert sorted(p.name for p in (run / "train").glob("ckpt-*.pt")) == [f"ckpt-{steps - 1}.pt", f"ckpt-{steps}.pt"]


# --- data sources ---------------------------------------------------------------------------------------


def test_on_the_fly_conversion_matches_musicvae_convert_and_ignores_worker_count(midi: Path, tmp_path: Path):
    config = get_config(CONFIG).with_hparams(TINY)
    convert(CONFIG, [midi], tmp_path / "shards", workers=1)
    shards = open_source(config, [str(tmp_path / "shards")], "data", None, "eval", 0, 0).examples(0)
    on_the_fly = open_source(config, [str(midi)], "data", None, "eval", 0, 2).examples(0)
    for key in ("inputs", "outputs", "controls", "lengths"):
        np.testing.assert_array_equal(getattr(shards, key), getattr(on_the_fly, key))
    train_0, train_2 = (open_source(config, [str(midi)], "data", None, "train", 7, w).examples(0) for w in (0, 2))
    np.testing.assert_array_equal(train_0.outputs, train_2.outputs)
    assert not np.array_equal(train_0.outputs, on_the_fly.outputs)  # random windows, transposed
    with pytest.raises(TrainingError, match="converted for"):
        open_source(get_config("cat-drums_2bar_small"), [str(tmp_path / "shards")], "data", None, "train", 0, 0)

    run = tmp_path / "run"
    assert main([f"--config={CONFIG}", f"--run_dir={run}", f"--examples_path={tmp_path / 'shards'}",
                 f"--hparams={TINY}", "--num_steps=3", "--device=cpu"]) == 0
    assert main([f"--config={CONFIG}", f"--run_dir={run}", "--mode=eval", f"--examples_path={tmp_path / 'shards'}",
                 "--eval_num_batches=2", "--device=cpu"]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["num_examples"] == 16


def test_corpus_split_defaults_to_train_when_training_and_heldout_when_evaluating(midi: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    names = sorted(p.name for p in midi.glob("*.mid"))
    with tarfile.open(data_dir / "melody.tar", "w") as tar:
        for name in names:
            tar.add(midi / name, arcname=f"folk/{name}")
    with open(data_dir / "manifest.csv", "w") as f:
        f.write("family,member,source,collection,piece,split,licence\n")
        for i, name in enumerate(names):
            f.write(f"melody,folk/{name},test,folk,{name},{'heldout' if i < 2 else 'train'},CC0\n")
    config = get_config(CONFIG)
    sizes = {mode: len(open_source(config, [], str(data_dir), None, mode, 0, 0).files) for mode in ("train", "eval")}
    assert sizes == {"train": len(names) - 2, "eval": 2}
    assert len(open_source(config, [], str(data_dir), "heldout", "train", 0, 0).files) == 2


# --- errors ---------------------------------------------------------------------------------------------


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


def test_clear_errors(midi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = f"--run_dir={tmp_path / 'run'}"
    assert "hierdec-mel_16bar" in _error(["--config=mel_2bar", run], capsys)  # lists the known names
    assert "unknown hparam" in _error([f"--config={CONFIG}", run, "--hparams=z=1"], capsys)
    assert "no such file" in _error([f"--config={CONFIG}", run, f"--examples_path={tmp_path / 'nope'}"], capsys)
    assert "manifest.csv" in _error([f"--config={CONFIG}", run, f"--data_dir={tmp_path}"], capsys)

    drums = tmp_path / "drums"
    drums.mkdir()
    pm = pretty_midi.PrettyMIDI()
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    kit.notes += [pretty_midi.Note(velocity=90, pitch=36, start=i * 0.25, end=i * 0.25 + 0.1) for i in range(32)]
    pm.instruments.append(kit)
    pm.write(str(drums / "kit.mid"))
    assert "very specific input requirements" in _error([f"--config={CONFIG}", run, f"--examples_path={drums}"], capsys)
    assert "fewer than one batch" in _error(
        [f"--config={CONFIG}", run, f"--examples_path={midi / 'melody-00.mid'}", "--num_workers=0"], capsys
    )

    (tmp_path / "run" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "train" / "ckpt-7.pt").write_bytes(b"not a checkpoint")
    assert "ckpt-7.pt: cannot read checkpoint" in _error([f"--config={CONFIG}", run, f"--examples_path={midi}"], capsys)
    assert "no checkpoint" in _error([f"--config={CONFIG}", f"--run_dir={tmp_path / 'empty'}", "--mode=eval"], capsys)
