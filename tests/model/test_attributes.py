"""Attribute vectors and latent constraints (issue 5 items 3-4; spec §3.9-3.10).

Definitions are checked on hand-made melodies. The model tests train a tiny cat-mel_2bar_small
(enc [64], dec [64], z 8, teacher forcing, β 0.03) for 200 steps on synthetic 2-bar melodies whose
bars each have one note length, 16th to whole, so that note density varies from 2/32 to 1 and the
latent must carry it. The margins seen with SEED = 0-9 are noted at each assertion.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from musicvae import cli
from musicvae.attributes import (
    ATTRIBUTES,
    attributes_path,
    compute_attribute_vectors,
    encode_means,
    load_attribute_vectors,
    melody_attributes,
    quartile_vector,
    save_attribute_vectors,
    sequence_attributes,
)
from musicvae.cli_generate import main as generate_main
from musicvae.configs import get_config
from musicvae.constraints import constrained_sample, load_constraint, save_constraint, train_latent_constraint
from musicvae.data.midi_io import read_midi
from musicvae.generate import TrainedModel
from musicvae.train import CHECKPOINT_FORMAT, config_to_dict

MEL = "cat-mel_2bar_small"
HPARAMS = (
    "enc_rnn_size=[64],dec_rnn_size=[64],z_size=8,sampling_schedule=constant,sampling_rate=0,"
    "free_bits=0,max_beta=0.03,beta_rate=0,learning_rate=0.02"
)
SEED = 0
DENSITY = ATTRIBUTES.index("note_density")
C_MAJOR = [p for p in range(55, 90) if p % 12 in (0, 2, 4, 5, 7, 9, 11)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def classes(events: dict[int, int], steps: int = 32) -> np.ndarray:
    """Melody classes [steps]: {step: MIDI pitch, or -1 for a note-off}; every other step holds."""
    out = np.zeros(steps, np.int64)
    for step, event in events.items():
        out[step] = 1 if event == -1 else event - 21 + 2
    return out


def one_hot(c: np.ndarray) -> np.ndarray:
    return np.eye(90, dtype=np.float32)[c]


# --- definitions ------------------------------------------------------------------------------------

SCALE_QUARTERS = classes({4 * i: p for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])})
SYNCOPATED = classes({0: 60, 3: 61, 6: 66, 10: 67, 13: 64, 20: -1})


def test_attribute_definitions_on_hand_made_melodies():
    got = melody_attributes(one_hot(np.stack([SCALE_QUARTERS, SYNCOPATED])))
    # Quarter notes up the C major scale: all diatonic, 8 onsets, steps 2 2 1 2 2 2 1, all on beats.
    np.testing.assert_allclose(got[0], [1.0, 8 / 32, 12 / 7, 0.0, 0.0])
    # Onsets at 0 3 6 10 13: C C# F# G E (3 diatonic), jumps 1 5 1 3, odd 16ths 3 and 13, off-beat 8ths 6 and 10.
    np.testing.assert_allclose(got[1], [3 / 5, 5 / 32, 10 / 4, 2 / 5, 2 / 5])
    np.testing.assert_array_equal(melody_attributes(np.stack([SCALE_QUARTERS, SYNCOPATED])), got)  # classes too


def test_undefined_attributes_are_nan_and_padding_is_ignored():
    silent, single = classes({0: -1}), classes({5: 71})
    got = melody_attributes(np.stack([silent, single]))
    assert got[0, DENSITY] == 0 and np.isnan(np.delete(got[0], DENSITY)).all()
    np.testing.assert_allclose(got[1], [1.0, 1 / 32, np.nan, 1.0, 0.0])
    # Only the first 16 steps count: 4 onsets over 16 steps, the notes of bar 2 are padding.
    padded = melody_attributes(SCALE_QUARTERS[None], lengths=[16])
    np.testing.assert_allclose(padded[0], [1.0, 4 / 16, 5 / 3, 0.0, 0.0])


def test_sequence_attributes_match_the_tensor_ones_for_decoded_melodies():
    converter = get_config(MEL).new_converter()
    windows = one_hot(np.stack([SCALE_QUARTERS, SYNCOPATED, classes({0: -1})]))
    sequences = converter.to_sequences(list(windows))
    np.testing.assert_allclose(sequence_attributes(sequences, 32), melody_attributes(windows))


def test_quartile_vector_is_top_quartile_mean_minus_bottom_quartile_mean():
    values = np.array([0, 1, 2, 3, 4, 5, 6, 7, np.nan])  # Q1 = 1.75, Q3 = 5.25; the NaN row is left out
    mu = np.arange(18, dtype=np.float64).reshape(9, 2) ** 2
    expected = (mu[6] + mu[7]) / 2 - (mu[0] + mu[1]) / 2
    np.testing.assert_allclose(quartile_vector(mu, values), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        quartile_vector(mu[:2], np.array([1.0, np.nan]))


# --- a model that encodes note density ------------------------------------------------------------


def synthetic_melodies(n: int, rng: np.random.Generator) -> np.ndarray:
    """One-hot 2-bar melodies: each bar has one note length (16th ... whole), pitches walk the C major
    scale up or down from C4, G4 or C5."""
    out = np.zeros((n, 32), np.int64)
    for i in range(n):
        k, step = C_MAJOR.index(int(rng.choice([60, 67, 72]))), int(rng.choice([-1, 1]))
        for bar in (0, 16):
            length = int(rng.choice([1, 2, 4, 8, 16]))
            for t in range(bar, bar + 16, length):
                out[i, t] = C_MAJOR[k] - 21 + 2
                step = step if 0 <= k + step < len(C_MAJOR) else -step
                k += step
    return one_hot(out)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return synthetic_melodies(2048, np.random.default_rng(SEED))


@pytest.fixture(scope="module")
def model(data: np.ndarray) -> TrainedModel:
    """200 Adam steps of 64 windows, teacher-forced (10-25 s on one busy core)."""
    config = get_config(MEL).with_hparams(HPARAMS)
    rng = np.random.default_rng(SEED)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = config.build_model().train()
        optimizer = torch.optim.Adam(net.parameters(), lr=config.hparams.learning_rate)
        x, lengths = torch.from_numpy(data), torch.full((64,), 32)
        for step in range(200):
            batch = x[torch.from_numpy(rng.integers(0, len(data), 64))]
            loss = net(batch, batch, None, lengths, step=step).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
    return TrainedModel(config, net.eval(), max_batch_size=512)


@pytest.fixture(scope="module")
def vectors(model: TrainedModel, data: np.ndarray) -> dict[str, np.ndarray]:
    return compute_attribute_vectors(model, data)


def density(model: TrainedModel, z: np.ndarray) -> float:
    """Mean note density of greedy decodes of z."""
    return float(melody_attributes(model.decode_to_tensors(z, temperature=None))[:, DENSITY].mean())


def test_note_density_vector_raises_and_lowers_decoded_density(model: TrainedModel, vectors: dict[str, np.ndarray]):
    assert set(vectors) == set(ATTRIBUTES) and all(v.shape == (8,) for v in vectors.values())
    held_out = synthetic_melodies(64, np.random.default_rng(100 + SEED))
    mu, _ = encode_means(model, held_out, np.full(64, 32))
    model.attribute_vectors = vectors
    base = density(model, mu)
    more = density(model, model.apply_attribute(mu, "note_density", 1.0))
    less = density(model, model.apply_attribute(mu, "note_density", -1.0))
    # Seeds 0-9: base 0.25-0.42, +v 0.69-0.91 (base + 0.32 or more), -v 0.03-0.13 (base - 0.21 or less).
    assert more > base + 0.15, (less, base, more)
    assert less < base - 0.1, (less, base, more)
    with pytest.raises(ValueError, match="no attribute vector 'loudness'"):
        model.apply_attribute(mu, "loudness")


# --- storage and command line ---------------------------------------------------------------------


def write_checkpoint(model: TrainedModel, run_dir: Path) -> Path:
    """The model as our checkpoint: what load_model reads of train.py's layout."""
    path = run_dir / "train" / "ckpt-200.pt"
    path.parent.mkdir(parents=True)
    config = config_to_dict(model.config)
    payload = {"format": CHECKPOINT_FORMAT, "step": 200, "config": config, "model": model.model.state_dict()}
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def run_dir(model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    write_checkpoint(model, run)
    return run


@pytest.fixture(scope="module")
def midi_dir(model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 one-window MIDI files of the synthetic melodies."""
    out = tmp_path_factory.mktemp("midi")
    for i, pm in enumerate(model.converter.from_tensors(list(synthetic_melodies(96, np.random.default_rng(7))))):
        pm.write(str(out / f"m{i:03d}.mid"))
    return out


def densities_of(paths: list[Path]) -> np.ndarray:
    return sequence_attributes([read_midi(p) for p in paths], 32)[:, DENSITY]


def test_vectors_are_stored_beside_the_checkpoint_and_applied_by_music_vae_generate(
    model: TrainedModel, run_dir: Path, midi_dir: Path, tmp_path: Path
):
    args = ["attributes", "compute", f"--checkpoint={run_dir}", f"--examples_path={midi_dir}", "--num_workers=0"]
    assert cli.main(args) == 0
    ckpt = run_dir / "train" / "ckpt-200.pt"
    loaded = TrainedModel.from_checkpoint(run_dir)
    assert loaded.checkpoint == ckpt and attributes_path(ckpt).is_file()
    windows = np.stack([loaded.converter.to_tensors(str(p)).inputs[0] for p in sorted(midi_dir.iterdir())])
    expected = compute_attribute_vectors(loaded, windows)
    for name in ATTRIBUTES:
        np.testing.assert_allclose(loaded.attribute_vectors[name], expected[name], atol=1e-5)

    outputs = {}
    for strength in ("1.5", "-1.5"):
        out = tmp_path / strength
        args = [f"--config={MEL}", f"--run_dir={run_dir}", "--num_outputs=16", "--temperature=0.3", "--seed=1",
                "--attribute=note_density", f"--attribute_strength={strength}", f"--output_dir={out}"]
        assert generate_main(args) == 0
        outputs[strength] = densities_of(sorted(out.glob("*.mid")))
    # Seeds 0-9: +1.5 gives 0.81-1.0, -1.5 gives 0.01-0.16.
    assert len(outputs["1.5"]) == 16 and outputs["1.5"].mean() > outputs["-1.5"].mean() + 0.3, outputs

    unknown = [f"--config={MEL}", f"--run_dir={run_dir}", "--attribute=loudness", f"--output_dir={tmp_path}"]
    assert generate_main(unknown) == 1


def test_vectors_of_other_weights_and_non_melody_models_are_refused(
    model: TrainedModel, vectors: dict[str, np.ndarray], tmp_path: Path
):
    path = save_attribute_vectors(vectors, model, tmp_path / "v.npz")
    np.testing.assert_array_equal(load_attribute_vectors(path, model)["note_density"], vectors["note_density"])
    other = TrainedModel(model.config, model.config.build_model())
    with pytest.raises(ValueError, match="another model"):
        load_attribute_vectors(path, other)
    with pytest.raises(FileNotFoundError, match="musicvae attributes compute"):
        load_attribute_vectors(tmp_path / "missing.npz", model)
    drums = get_config("cat-drums_2bar_small").with_hparams("enc_rnn_size=[8],dec_rnn_size=[8],z_size=4")
    with pytest.raises(ValueError, match="need a melody config"):
        compute_attribute_vectors(TrainedModel(drums, drums.build_model()), np.zeros((4, 32, 512), np.float32))


# --- latent constraints ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def constraint(model: TrainedModel, data: np.ndarray):
    """800 updates of 64 latents with 2 × 64 MLPs (about 12 s). λ_dist is 0.02 rather than 0.1: this
    toy posterior is narrow (σ̄² ≈ 0.03), which makes the penalty, divided by σ̄², strong."""
    return train_latent_constraint(
        model, data, "note_density", steps=800, batch_size=64, hidden=(64, 64), learning_rate=1e-3,
        distance_penalty=0.02, seed=SEED,
    )  # fmt: skip


def test_constraint_moves_density_and_stays_realistic_by_the_critic(model: TrainedModel, data: np.ndarray, constraint):
    z = np.random.default_rng(SEED + 7).standard_normal((64, 8)).astype(np.float32)
    prior = density(model, z)
    high, low = density(model, constraint.apply(z, "high")), density(model, constraint.apply(z, "low"))
    # Seeds 0-9: prior 0.31-0.44, high 0.52-1.0 (prior + 0.21 or more), low 0.03-0.13 (prior - 0.23 or less).
    assert high > prior + 0.1 and low < prior - 0.1, (low, prior, high)

    values = melody_attributes(data)[:, DENSITY]
    q1, q3 = constraint.thresholds
    mu, sigma = encode_means(model, data, np.full(len(data), 32))
    encoded = mu + sigma * np.random.default_rng(1).standard_normal(mu.shape).astype(np.float32)
    for target, members in (("high", values >= q3), ("low", values <= q1)):
        real = constraint.realism(encoded[members], target).mean()
        moved = constraint.realism(constraint.apply(z, target), target).mean()
        unmoved = constraint.realism(z, target).mean()
        # Seeds 0-9: encoder samples 0.59-0.81, constrained 0.6-0.87 (0.95 x encoder or more), prior 0.08-0.32.
        assert moved > 0.8 * real and moved > unmoved + 0.2, (target, real, moved, unmoved)


def test_constraint_round_trip_and_generation(
    model: TrainedModel, run_dir: Path, midi_dir: Path, constraint, tmp_path: Path
):
    path = save_constraint(constraint, tmp_path / "density.pt")
    loaded = load_constraint(path, model)  # weights_only inside
    z = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.apply(z, "low"), constraint.apply(z, "low"))
    assert (loaded.attribute, loaded.thresholds) == ("note_density", constraint.thresholds)
    with pytest.raises(ValueError, match="another model"):
        load_constraint(path, TrainedModel(model.config, model.config.build_model()))
    midis = constrained_sample(model, loaded, 3, "high", seed=2)
    assert len(midis) == 3 and all(isinstance(m, pretty_midi.PrettyMIDI) for m in midis)
    with pytest.raises(ValueError, match="unknown constraint target"):
        constrained_sample(model, loaded, 3, "medium")

    # The CLI: train a (tiny, short) constraint beside the checkpoint, then sample with it.
    args = ["constraints", "train", f"--checkpoint={run_dir}", f"--examples_path={midi_dir}", "--num_workers=0",
            "--attribute=note_density", "--steps=5", "--hidden=16,16"]
    assert cli.main(args) == 0
    trained = run_dir / "train" / "ckpt-200.pt.note_density.constraint.pt"
    assert load_constraint(trained).hidden == (16, 16)
    out = tmp_path / "out"
    args = [f"--config={MEL}", f"--run_dir={run_dir}", "--num_outputs=4", f"--constraint={trained}",
            "--constraint_target=low", f"--output_dir={out}"]
    assert generate_main(args) == 0 and len(list(out.glob("*.mid"))) == 4


def test_constraints_cli_defaults_are_the_library_defaults():
    parser = cli.build_parser()
    args = parser.parse_args(["constraints", "train", "--checkpoint=x", "--attribute=note_density"])
    defaults = inspect.signature(train_latent_constraint).parameters
    flags = {"train_batch_size": "batch_size"}  # the rest have the parameter's name
    for flag in ("steps", "train_batch_size", "learning_rate", "distance_penalty", "gradient_penalty", "seed"):
        assert getattr(args, flag) == defaults[flags.get(flag, flag)].default, flag
    assert tuple(int(h) for h in args.hidden.split(",")) == defaults["hidden"].default
