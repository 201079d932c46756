"""music_vae_train on the drum and GrooVAE configs: real CPU training and eval per decoder kind, the
GrooVAE input transforms applied on the fly, and the `--drum_map` converter option (Roland vs General MIDI)
shared by `musicvae convert` and training, recorded in checkpoints and index.json."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from musicvae.cli import main as musicvae_main
from musicvae.cli_train import main
from musicvae.configs import GM_DRUM_MAP, get_config
from musicvae.convert import convert
from musicvae.data.drums import REDUCED_DRUM_PITCH_CLASSES
from musicvae.train import config_from_dict, config_to_dict, load_model, open_source

TINY = "batch_size=8,enc_rnn_size=[32],dec_rnn_size=[16,16],z_size=8"
STEPS = 80
GROOVE = "groovae_2bar_humanize"
# config -> (extra flags, eval metrics of its decoder kind)
RUNS = {
    "cat-drums_2bar_small": ([], ("accuracy", "mean_per_class_accuracy")),
    "nade-drums_2bar_reduced": ([], ("accuracy", "recall", "precision")),
    GROOVE: (["--drum_map=gm"], ("hits_loss", "velocities_loss", "offsets_loss")),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- data -------------------------------------------------------------------------------------------


# One-bar patterns, 16 steps: General MIDI pitch -> steps. 35 (acoustic kick) and 39 (hand clap) are GM
# pitches that the Roland TD-11 map lacks; in the GM map they are kick and snare.
_PATTERNS = [
    {36: [0, 8], 38: [4, 12], 42: list(range(0, 16, 2))},
    {35: [0, 6, 10], 39: [4, 12], 42: list(range(16)), 46: [14]},
    {36: [0, 3, 8, 11], 38: [4, 12, 15], 51: list(range(0, 16, 4)), 49: [0]},
    {35: [0, 8], 38: [4, 7, 12], 45: [13], 48: [14], 50: [15], 42: list(range(0, 12, 2))},
]


def _write_drums(directory: Path, count: int = 12, bars: int = 8) -> Path:
    """Drum loops on channel 10 at 120 qpm with timing jitter and velocity accents; every file has pitch 35."""
    rng = np.random.default_rng(7)
    directory.mkdir(parents=True, exist_ok=True)
    step = 0.125  # a 16th note at 120 qpm
    for i in range(count):
        pm = pretty_midi.PrettyMIDI(initial_tempo=120)
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        a, b = _PATTERNS[i % 4], _PATTERNS[(i + 1 + i // 4) % 4]
        for bar in range(bars):
            pattern = a if bar % 2 == 0 else b
            for pitch, steps in pattern.items():
                for s in steps:
                    start = max(0.0, (bar * 16 + s) * step + float(rng.normal(0.0, 0.012)))
                    velocity = int(np.clip((110 if s % 4 == 0 else 70) + rng.normal(0, 8), 1, 127))
                    kit.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=start, end=start + 0.1))
        kit.notes.append(pretty_midi.Note(velocity=90, pitch=35, start=0.0, end=0.1))
        pm.instruments.append(kit)
        pm.write(str(directory / f"drums-{i:02d}.mid"))
    return directory


@pytest.fixture(scope="module")
def midi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_drums(tmp_path_factory.mktemp("drum_midi"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def _train_args(config: str, run: Path, data: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [f"--config={config}", f"--run_dir={run}", f"--examples_path={data}", f"--hparams={TINY}",
            f"--num_steps={steps}", "--log_every_steps=1", "--num_workers=0", "--seed=1", "--device=cpu", *extra]


def _error(args: list[str], capsys: pytest.CaptureFixture[str], entry=main) -> str:
    capsys.readouterr()
    assert entry(args) == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(midi: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for config, (extra, _) in RUNS.items():
        run = tmp_path_factory.mktemp(config.replace(".", "_"))
        assert main(_train_args(config, run, midi, *extra)) == 0
        out[config] = run
    return out


# --- training and eval per decoder kind -------------------------------------------------------------


@pytest.mark.parametrize("config", list(RUNS))
def test_training_lowers_the_loss(runs: dict[str, Path], config: str):
    rows = _rows(runs[config])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = (np.mean([r["loss"] for r in part]) for part in (rows[:10], rows[-10:]))
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert last < 0.8 * first, (first, last)


@pytest.mark.parametrize("config", list(RUNS))
def test_eval_writes_the_decoder_kinds_metrics(runs: dict[str, Path], midi: Path, config: str):
    run = runs[config]
    # No --drum_map: eval rebuilds the converter from the checkpoint (for GrooVAE the GM map, without
    # which these files, full of pitch 35, would all fail).
    assert main([f"--config={config}", f"--run_dir={run}", "--mode=eval", f"--examples_path={midi}",
                 "--num_workers=0", "--device=cpu"]) == 0
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    for key in ("loss", "r_loss", "kl_loss", "kl_bits", "kl_beta", *RUNS[config][1]):
        assert math.isfinite(doc[key]), key
    assert doc["step"] == STEPS and doc["num_examples"] > 0
    if config == GROOVE:
        assert "accuracy" not in doc
        assert all(doc[k] > 0.0 for k in RUNS[config][1])
    else:
        assert 0.0 < doc["accuracy"] <= 1.0
    if config.startswith("nade"):
        assert 0.0 < doc["recall"] <= 1.0 and 0.0 < doc["precision"] <= 1.0


def test_checkpoint_records_the_drum_map_and_eval_and_generation_rebuild_it(runs: dict[str, Path]):
    payload = torch.load(runs[GROOVE] / "train" / f"ckpt-{STEPS}.pt", weights_only=True)
    assert payload["config"]["drum_map"] == "gm"
    assert config_to_dict(config_from_dict(payload["config"])) == payload["config"]
    config, _, _ = load_model(runs[GROOVE] / "train" / f"ckpt-{STEPS}.pt")
    assert config.drum_map == "gm"
    for mode in ("train", "eval", "infer"):  # generation decodes with the same map as training
        conv = config.new_converter()
        conv.set_mode(mode)
        assert [list(c) for c in conv.pitch_classes] == REDUCED_DRUM_PITCH_CLASSES
        assert conv.drop_unmapped_pitches
    # Generation (TrainedModel / music_vae_generate) reads the map from the checkpoint alone too.
    from musicvae.generate import TrainedModel

    trained = TrainedModel.from_checkpoint(runs[GROOVE] / "train" / f"ckpt-{STEPS}.pt")
    assert trained.config.drum_map == "gm" and trained.converter.drop_unmapped_pitches
    cat = torch.load(runs["cat-drums_2bar_small"] / "train" / f"ckpt-{STEPS}.pt", weights_only=True)
    assert cat["config"]["drum_map"] is None
    # A checkpoint from before drum_map was recorded means the default (Roland) map.
    legacy = {k: v for k, v in payload["config"].items() if k != "drum_map"}
    assert config_from_dict(legacy).drum_map == "roland"


def test_drum_map_mismatches_fail_clearly(runs: dict[str, Path], midi: Path, capsys: pytest.CaptureFixture[str]):
    run = runs[GROOVE]
    err = _error([f"--config={GROOVE}", f"--run_dir={run}", "--mode=eval", f"--examples_path={midi}",
                  "--num_workers=0", "--device=cpu", "--drum_map=roland"], capsys)
    assert "trained with --drum_map=gm" in err
    # Resuming with another map (here the default) is refused before any work.
    err = _error(_train_args(GROOVE, run, midi, steps=STEPS + 5), capsys)
    assert "drum_map gm" in err and "--drum_map" in err
    err = _error(_train_args("cat-drums_2bar_small", run.parent / "x", midi, "--drum_map=gm"), capsys)
    assert "GrooVAE configs only" in err


# --- the Roland map on General MIDI data -------------------------------------------------------------


def test_roland_map_refuses_general_midi_pitches_clearly(midi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    err = _error(_train_args(GROOVE, tmp_path / "run", midi, steps=2), capsys)
    assert "12 failed" in err
    assert "UnmappedDrumPitchError: drum pitch 35 is not in the Roland pitch-class map" in err
    assert "--drum_map=gm" in err


def test_roland_map_skips_general_midi_files_with_a_clear_warning(
    midi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # Files on Roland-mapped pitches only (patterns 0 and 2) train; the GM ones are counted and named.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted(midi.glob("*.mid"))[:3]:
        (mixed / f.name).write_bytes(f.read_bytes())
    for i in range(4):
        pm = pretty_midi.PrettyMIDI(initial_tempo=120)
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        for bar in range(8):
            for pitch, steps in _PATTERNS[2 * ((bar + i) % 2)].items():
                kit.notes += [pretty_midi.Note(velocity=100, pitch=pitch, start=(bar * 16 + s) * 0.125,
                                               end=(bar * 16 + s) * 0.125 + 0.1) for s in steps]
        pm.instruments.append(kit)
        pm.write(str(mixed / f"roland-{i}.mid"))
    with caplog.at_level(logging.INFO, logger="musicvae.train"):
        assert main(_train_args(GROOVE, tmp_path / "run", mixed, steps=1)) == 0
    assert "7 files (train mode) -> 16 examples; 0 files gave none, 3 failed" in caplog.text
    assert "3 of 7 files have drum pitches outside the --drum_map=roland pitch map" in caplog.text
    assert "use --drum_map=gm" in caplog.text


# --- shards and options -------------------------------------------------------------------------------


def test_shards_record_the_drum_map_and_training_checks_it(midi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    roland = convert(GROOVE, midi, tmp_path / "roland", workers=1)
    assert roland.files_failed == 12 and roland.num_windows == 0
    assert json.loads((tmp_path / "roland" / "index.json").read_text())["drum_map"] == "roland"
    gm = convert(GROOVE, midi, tmp_path / "gm", workers=1, mode="train", drum_map="gm")
    assert gm.files_failed == 0 and gm.num_windows == 48
    assert json.loads((tmp_path / "gm" / "index.json").read_text())["drum_map"] == "gm"
    # Same files, other map: the shards are rebuilt, not reused.
    again = convert(GROOVE, midi, tmp_path / "gm", workers=1, mode="train", drum_map="roland")
    assert again.shards_skipped == 0 and again.files_failed == 12
    convert(GROOVE, midi, tmp_path / "gm", workers=1, mode="train", drum_map="gm")

    err = _error(_train_args(GROOVE, tmp_path / "run", tmp_path / "gm", steps=2), capsys)
    assert "converted with --drum_map=gm, but this run uses --drum_map=roland" in err
    assert main(_train_args(GROOVE, tmp_path / "run", tmp_path / "gm", "--drum_map=gm", steps=2)) == 0
    assert torch.load(tmp_path / "run" / "train" / "ckpt-2.pt", weights_only=True)["config"]["drum_map"] == "gm"
    # Same depths, other encoder-input transform: humanize shards cannot train the tap model.
    err = _error(_train_args("groovae_2bar_tap_fixed_velocity", tmp_path / "tap", tmp_path / "gm", "--drum_map=gm", steps=2),
                 capsys)
    assert f"converted for {GROOVE}, whose converter differs from groovae_2bar_tap_fixed_velocity's" in err
    # The hits-control alias shares its converter with Magenta's _tfds name, so its shards are accepted.
    hits = convert("groovae_2bar_hits_control_tfds", midi, tmp_path / "hits", workers=1, mode="train", drum_map="gm")
    assert hits.num_windows == 48
    assert main(_train_args("groovae_2bar_hits_control", tmp_path / "hits-run", tmp_path / "hits", "--drum_map=gm",
                            steps=1)) == 0

    # The flag is the same one on `musicvae convert`; configs without a drum map refuse it.
    assert musicvae_main(["convert", f"--config={GROOVE}", f"--examples_path={midi}", "--workers=1",
                          f"--output_dir={tmp_path / 'cli'}", "--drum_map=gm"]) == 0
    assert json.loads((tmp_path / "cli" / "index.json").read_text())["drum_map"] == "gm"
    err = _error(["convert", "--config=cat-drums_2bar_small", f"--examples_path={midi}",
                  f"--output_dir={tmp_path / 'no'}", "--drum_map=gm"], capsys, musicvae_main)
    assert "GrooVAE configs only" in err


# --- GrooVAE transforms on the fly --------------------------------------------------------------------


def test_groove_transforms_change_the_encoder_input_only(midi: Path):
    config = get_config(GROOVE).with_drum_map("gm")
    ex = open_source(config, [str(midi)], "data", None, "train", seed=0, num_workers=0).examples(0)
    hits, velocities, offsets = np.split(ex.outputs, 3, axis=-1)
    assert velocities.any() and offsets.any()
    in_hits, in_velocities, in_offsets = np.split(ex.inputs, 3, axis=-1)
    np.testing.assert_array_equal(in_hits, hits)  # humanize: hits kept, velocities and offsets removed
    assert not in_velocities.any() and not in_offsets.any()
    # The training converter is the GM one: the same windows as GM_DRUM_MAP in eval mode.
    conv = get_config(GROOVE).new_converter(**GM_DRUM_MAP)
    conv.set_mode("eval")
    first = conv.to_tensors((midi / "drums-00.mid").read_bytes())
    assert len(ex) == 48
    assert any(np.array_equal(ex.outputs[i], first.outputs[0].astype(np.float32)) for i in range(len(ex)))


def test_note_dropout_is_seeded_and_drawn_again_each_epoch_without_the_cache(midi: Path):
    config = get_config("groovae_2bar_tap_fixed_velocity_note_dropout").with_drum_map("gm")

    def source(cache: bool, seed: int = 0):
        return open_source(config, [str(midi)], "data", None, "train", seed=seed, num_workers=0, cache=cache)

    fresh = source(cache=False)
    e0, e1 = fresh.examples(0).inputs.copy(), fresh.examples(1)
    assert not np.array_equal(e0, e1.inputs)  # dropout drawn again
    np.testing.assert_array_equal(fresh.examples(1).outputs, source(cache=False).examples(0).outputs)  # target fixed
    np.testing.assert_array_equal(source(cache=False).examples(0).inputs, e0)  # seeded: reproducible
    cached = source(cache=True)
    np.testing.assert_array_equal(cached.examples(0).inputs, cached.examples(3).inputs)  # Magenta's cache_dataset
    # Tap input: every hit on the open hi-hat column only, velocities fixed to 0; the target keeps the groove.
    hits, velocities, _ = np.split(e1.inputs, 3, axis=-1)
    assert not np.delete(hits, 3, axis=-1).any() and not velocities.any()
    assert np.delete(np.split(e1.outputs, 3, axis=-1)[0], 3, axis=-1).any()
