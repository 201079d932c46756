"""Generation: TrainedModel on Magenta's checkpoints (greedy parity), import-magenta, music_vae_generate.

Fixtures: ../shared/fixtures/magenta-checkpoints (tiny models trained a few steps by Magenta; see its
README). `greedy_samples` are Magenta's decodes from z = μ with every sampler at its τ → 0 limit, which
is our temperature=None; `greedy_rt_*` are the notes its 'infer'-mode converter made of them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from musicvae import cli
from musicvae.cli_generate import main as generate_main
from musicvae.configs import get_config
from musicvae.generate import (
    MultipleExtractedExamplesError,
    NoExtractedExamplesError,
    TrainedModel,
    import_magenta,
    inference_converter,
    slerp,
)
from musicvae.magenta_checkpoint import CheckpointError
from musicvae.train import load_model
from tests.model.test_magenta_checkpoint import CKPTS, STEPS, requires_ckpts

MEL = "cat-mel_2bar_small"
MEL_TAR = CKPTS / MEL / f"{MEL}.tar"
GROOVE = ("groovae_2bar_humanize", "groovae_2bar_hits_control_tfds")
DATE = r"\d{4}-\d{2}-\d{2}_\d{6}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prefix(model: str) -> Path:
    return CKPTS / model / "checkpoint_no_adam" / f"model.ckpt-{STEPS[model]}"


def expected(model: str) -> dict[str, np.ndarray]:
    with np.load(CKPTS / model / "expected.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def mel() -> TrainedModel:
    return TrainedModel.from_checkpoint(MEL_TAR, MEL, max_batch_size=3)


def melody(pitches: list[int], program: int = 0) -> pretty_midi.PrettyMIDI:
    """Eighth notes at 120 qpm (0 = rest): 16 of them make one 2-bar window."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program)
    inst.notes = [pretty_midi.Note(80, p, i * 0.25, (i + 1) * 0.25) for i, p in enumerate(pitches) if p]
    pm.instruments.append(inst)
    return pm


def drums(bars: int, pattern: dict[int, list[int]]) -> pretty_midi.PrettyMIDI:
    """GM drums at 120 qpm: pattern {pitch: 16th steps within a bar}, repeated for `bars` bars."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(0, is_drum=True)
    for bar in range(bars):
        for pitch, steps in pattern.items():
            for s in steps:
                t = bar * 2.0 + s * 0.125
                inst.notes.append(pretty_midi.Note(100 - 3 * s, pitch, t, t + 0.1))
    pm.instruments.append(inst)
    return pm


SCALE = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 0]
ARPEGGIO = [72, 0, 67, 0, 64, 0, 67, 0, 72, 76, 79, 76, 72, 0, 0, 0]
BEAT = {36: [0, 8], 38: [4, 12], 42: list(range(0, 16, 2))}


def write(pm: pretty_midi.PrettyMIDI, path: Path) -> str:
    pm.write(str(path))
    return str(path)


def notes(pm: pretty_midi.PrettyMIDI) -> list[tuple[int, int, float, float, bool]]:
    return [(n.pitch, n.velocity, round(n.start, 6), round(n.end, 6), i.is_drum) for i in pm.instruments for n in i.notes]


# --- Magenta parity: greedy decodes from z = μ -----------------------------------------------------------


def _assert_notes_equal(sequences, e: dict[str, np.ndarray], time_tol: float) -> None:
    rows = [
        (n.pitch, n.velocity, n.program, n.instrument, n.start_time, n.end_time, n.is_drum, w)
        for w, ns in enumerate(sequences)
        for n in ns.notes
    ]
    assert len(rows) == len(e["greedy_rt_pitch"])
    cols = [np.array(c) for c in zip(*rows)]
    for k, name in enumerate(("pitch", "velocity", "program", "instrument")):
        np.testing.assert_array_equal(cols[k], e[f"greedy_rt_{name}"], err_msg=name)
    np.testing.assert_allclose(cols[4], e["greedy_rt_start"], rtol=0, atol=time_tol)
    np.testing.assert_allclose(cols[5], e["greedy_rt_end"], rtol=0, atol=time_tol)
    np.testing.assert_array_equal(cols[6], e["greedy_rt_is_drum"])
    np.testing.assert_array_equal(cols[7], e["greedy_rt_window"])
    np.testing.assert_allclose([ns.qpm for ns in sequences], e["greedy_rt_qpm"])


@requires_ckpts
@pytest.mark.parametrize("model", list(STEPS))
def test_greedy_decode_reproduces_magenta(model):
    # max_batch_size 3 with 4 examples: the last batch is padded.
    tm = TrainedModel.from_checkpoint(prefix(model), model, max_batch_size=3)
    assert tm.converter.is_inferring
    e, n = expected(model), int(expected(model)["num_examples"])
    controls = e["controls"] if e["controls"].shape[-1] else None
    _, mu, sigma = tm.encode_tensors(list(e["inputs"]), e["lengths"], None if controls is None else list(controls))
    np.testing.assert_allclose(mu, e["trained_model_mu"], rtol=0, atol=1e-4 * np.abs(e["trained_model_mu"]).max())
    np.testing.assert_allclose(sigma, e["trained_model_sigma"], rtol=1e-4)

    # Each hits-control example is decoded with its own control sequence, as the fixture was.
    samples = tm.decode_to_tensors(e["mu"][:n], temperature=None, c_input=controls)
    greedy = e["greedy_samples"]
    if model in GROOVE:
        hits = slice(0, 9)
        np.testing.assert_array_equal(samples[..., hits], greedy[..., hits])
        np.testing.assert_allclose(samples[..., 9:], greedy[..., 9:], rtol=0, atol=1e-6)
        time_tol = 1e-6  # onsets move with the offsets
    else:
        np.testing.assert_array_equal(samples, greedy)
        time_tol = 1e-9
    _assert_notes_equal(tm.converter.to_sequences(list(samples)), e, time_tol)


@requires_ckpts
def test_hits_control_c_input_is_shared_by_the_batch_as_in_magenta():
    model = "groovae_2bar_hits_control_tfds"
    tm = TrainedModel.from_checkpoint(prefix(model), model)
    e = expected(model)
    shared = tm.decode_to_tensors(np.repeat(e["mu"][1:2], 2, 0), temperature=None, c_input=e["controls"][1])
    np.testing.assert_allclose(shared, e["greedy_samples"][[1, 1]], atol=1e-6)
    with pytest.raises(ValueError, match="conditioned on 9-d controls"):
        tm.sample(1)


@requires_ckpts
def test_tar_directory_and_adam_checkpoint_load_the_same_weights(mel):
    e = expected(MEL)
    for source in (CKPTS / MEL / "checkpoint", prefix(MEL)):
        other = TrainedModel.from_checkpoint(source, MEL)
        for (k, a), b in zip(mel.model.state_dict().items(), other.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # layer sizes come from the checkpoint, the rest from the config
    hp = mel.config.hparams
    assert (hp.enc_rnn_size, hp.dec_rnn_size, hp.z_size) == ((32,), (16, 16), 8)
    assert hp.max_beta == get_config(MEL).hparams.max_beta
    _, mu, _ = mel.encode_tensors(list(e["inputs"]), e["lengths"])
    np.testing.assert_allclose(mu, e["trained_model_mu"], atol=1e-5)


@requires_ckpts
def test_misfitting_checkpoint_is_refused_with_the_list():
    with pytest.raises(CheckpointError) as err:
        TrainedModel.from_checkpoint(MEL_TAR, "cat-drums_2bar_small")
    message = str(err.value)
    assert "does not fit config 'cat-drums_2bar_small'" in message
    assert "wrong shapes" in message and "encoder/cell_0/bidirectional_rnn/fw" in message
    with pytest.raises(CheckpointError, match=r"(?s)missing variables.*hierarchical_level_0.*unexpected variables"):
        TrainedModel.from_checkpoint(MEL_TAR, "hierdec-mel_16bar")
    with pytest.raises(ValueError, match="name its config"):
        TrainedModel.from_checkpoint(MEL_TAR)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        TrainedModel.from_checkpoint(CKPTS / "nowhere.tar", MEL)


# --- import-magenta ------------------------------------------------------------------------------------


@requires_ckpts
def test_import_magenta_round_trip(tmp_path, mel, capsys):
    out = tmp_path / "run" / "train" / "ckpt-5.pt"
    assert cli.main(["import-magenta", f"--config={MEL}", f"--checkpoint_file={MEL_TAR}", f"--output={out}"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config, model, step = load_model(out)
    assert (config.name, step, config.hparams.z_size) == (MEL, 5, 8)

    e = expected(MEL)
    z = e["mu"][:4]
    for source in (out, tmp_path / "run"):  # the file, or a run dir (latest in train/)
        imported = TrainedModel.from_checkpoint(source, MEL)
        for tm in (mel, imported):
            assert tm.config.hparams == imported.config.hparams
        np.testing.assert_array_equal(
            imported.encode_tensors(list(e["inputs"]), e["lengths"])[1], mel.encode_tensors(list(e["inputs"]), e["lengths"])[1]
        )
        np.testing.assert_array_equal(imported.decode_to_tensors(z, temperature=None), e["greedy_samples"])
    with pytest.raises(CheckpointError, match=f"holds a {MEL} model, not cat-drums_2bar_small"):
        TrainedModel.from_checkpoint(out, "cat-drums_2bar_small")


@requires_ckpts
def test_import_magenta_refuses_a_misfit(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert import_magenta(MEL, prefix(MEL), out) == out
    code = cli.main(["import-magenta", "--config=cat-drums_2bar_small", f"--checkpoint_file={MEL_TAR}", f"--output={tmp_path / 'y.pt'}"])
    assert code == 1
    assert "checkpoint does not fit config 'cat-drums_2bar_small'" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()


# --- interpolation -------------------------------------------------------------------------------------


def test_slerp_endpoints_and_great_circle():
    p0, p1 = np.array([3.0, 0.0, 0.0]), np.array([0.0, 3.0, 0.0])
    path = slerp(p0, p1, 5)
    assert np.array_equal(path[0], p0) and np.array_equal(path[-1], p1)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 3.0)  # stays on the sphere, unlike a line
    np.testing.assert_allclose(path[2], 3.0 * np.array([1.0, 1.0, 0.0]) / np.sqrt(2))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=8), rng.normal(size=8)
    ends = slerp(a, b, 3)
    assert np.array_equal(ends[0], a) and np.array_equal(ends[-1], b)


@pytest.mark.parametrize("p1", [np.array([2.0, 4.0]), np.array([-1.0, -2.0]), np.array([0.0, 0.0])])
def test_slerp_of_parallel_or_zero_vectors_is_linear(p1):
    p0 = np.array([1.0, 2.0])
    path = slerp(p0, p1, 4)
    assert np.isfinite(path).all()
    np.testing.assert_allclose(path, [p0 + t * (p1 - p0) for t in np.linspace(0, 1, 4)])


@requires_ckpts
def test_interpolation_endpoints_are_the_posterior_means(mel, tmp_path):
    a, b = write(melody(SCALE), tmp_path / "a.mid"), write(melody(ARPEGGIO), tmp_path / "b.mid")
    _, mu, _ = mel.encode([a, b])
    z = mel.interpolation_z(a, b, 5)
    assert z.shape == (5, 8)
    np.testing.assert_array_equal(z[0], mu[0])
    np.testing.assert_array_equal(z[-1], mu[1])
    assert len(mel.interpolate(a, b, 5, seed=0)) == 5


# --- encode, sample, decode ----------------------------------------------------------------------------


@requires_ckpts
def test_encode_needs_exactly_one_window(mel, tmp_path):
    long = write(melody([60 + (i * 5) % 13 for i in range(64)]), tmp_path / "long.mid")
    with pytest.raises(MultipleExtractedExamplesError) as err:
        mel.encode(long)
    assert err.value.count == 7 and "7 valid inputs extracted" in str(err.value)
    with pytest.raises(NoExtractedExamplesError, match="Could not extract any valid inputs from `<PrettyMIDI>`"):
        mel.encode([drums(2, BEAT)])
    z, mu, sigma = mel.encode(write(melody(SCALE), tmp_path / "one.mid"))
    assert z.shape == mu.shape == sigma.shape == (1, 8)


@requires_ckpts
def test_seeds_make_sampling_reproducible_without_touching_the_global_rng(mel):
    state = torch.get_rng_state()
    first = [notes(m) for m in mel.sample(5, temperature=1.0, seed=3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert [notes(m) for m in mel.sample(5, temperature=1.0, seed=3)] == first
    assert [notes(m) for m in mel.sample(5, temperature=1.0, seed=4)] != first
    assert len(first) == 5 and any(first)
    # one z for all, decoded greedily: identical outputs
    same = mel.sample(4, temperature=None, same_z=True, seed=1)
    assert all(notes(m) == notes(same[0]) for m in same)
    z, _, _ = mel.encode_tensors(list(expected(MEL)["inputs"]), expected(MEL)["lengths"], seed=2)
    np.testing.assert_array_equal(z, mel.encode_tensors(list(expected(MEL)["inputs"]), expected(MEL)["lengths"], seed=2)[0])


@requires_ckpts
def test_hierarchical_and_trio_decode_to_midi():
    trio = TrainedModel.from_checkpoint(prefix("hierdec-trio_16bar"), "hierdec-trio_16bar")
    (midi,) = trio.sample(1, seed=0)
    assert {(i.program, i.is_drum) for i in midi.instruments} <= {(0, False), (33, False), (0, True)}
    with pytest.raises(ValueError, match="16×16 steps"):
        trio.decode_to_tensors(np.zeros((1, 8)), length=32)


# --- GrooVAE -------------------------------------------------------------------------------------------


@requires_ckpts
def test_groovae_humanize_and_groove_transfer():
    humanizer = TrainedModel.from_checkpoint(prefix("groovae_2bar_humanize"), "groovae_2bar_humanize")
    (out,) = humanizer.humanize(drums(2, BEAT), seed=0)
    assert out.instruments and all(i.is_drum for i in out.instruments)
    assert len(humanizer.humanize(drums(4, BEAT), seed=0)) == 2  # one output per 2-bar window
    with pytest.raises(ValueError, match="tapify"):
        humanizer.tap_to_drums(drums(2, BEAT))
    with pytest.raises(ValueError, match="add_instruments"):
        humanizer.add_closed_hh(drums(2, BEAT))

    model = "groovae_2bar_hits_control_tfds"
    transfer = TrainedModel.from_checkpoint(prefix(model), model)
    score = drums(4, {36: [0, 6, 10], 38: [4, 12]})
    outputs = transfer.transfer_groove(drums(2, BEAT), score, temperature=None, seed=0)
    assert len(outputs) == 2
    # z from the groove, the score's hits as controls
    z, _, _ = transfer.encode(drums(2, BEAT), seed=0)
    windows = transfer.converter.to_tensors(score)
    for out, controls in zip(outputs, windows.controls):
        (expected_midi,) = transfer.decode(z, temperature=None, c_input=controls)
        assert notes(out) == notes(expected_midi)
    # a groove encoded once, played over the score: what transfer_groove gives
    assert [notes(m) for m in transfer.play_with_groove(z, score, temperature=None, seed=0)] == [notes(m) for m in outputs]
    with pytest.raises(ValueError, match="hits as controls"):
        humanizer.transfer_groove(drums(2, BEAT), score)
    with pytest.raises(ValueError, match="hits as controls"):
        humanizer.play_with_groove(z, score)


# --- music_vae_generate --------------------------------------------------------------------------------


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = generate_main([f"--config={MEL}", "--log=WARNING", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@requires_ckpts
def test_cli_sample_writes_named_midi_files_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, f"--checkpoint_file={MEL_TAR}", "--num_outputs=3", "--max_batch_size=2",
                       f"--output_dir={out}", "--seed=7", "--plot")
    assert code == 0, err
    mids = sorted(out.glob("*.mid"))
    assert len(mids) == 3
    for i, path in enumerate(mids):
        assert re.fullmatch(rf"{MEL}_sample_{DATE}-{i:03d}-of-003\.mid", path.name)
        pretty_midi.PrettyMIDI(str(path))
        png = path.with_suffix(".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = tmp_path / "again"
    assert run(capsys, f"--checkpoint_file={MEL_TAR}", "--num_outputs=3", "--max_batch_size=2", f"--output_dir={again}", "--seed=7")[0] == 0
    first = [notes(pretty_midi.PrettyMIDI(str(p))) for p in mids]
    assert [notes(pretty_midi.PrettyMIDI(str(p))) for p in sorted(again.glob("*.mid"))] == first


@requires_ckpts
def test_cli_interpolate_starts_and_ends_at_the_inputs_reconstructions(tmp_path, capsys, mel):
    a, b = write(melody(SCALE), tmp_path / "a.mid"), write(melody(ARPEGGIO), tmp_path / "b.mid")
    out = tmp_path / "out"
    # τ = 1e-6 samples the argmax, so the ends are the greedy decodes of the inputs' posterior means.
    code, _, err = run(capsys, f"--checkpoint_file={MEL_TAR}", "--mode=interpolate", "--num_outputs=4",
                       f"--input_midi_1={a}", f"--input_midi_2={b}", f"--output_dir={out}", "--temperature=1e-6")
    assert code == 0, err
    mids = sorted(out.glob("*.mid"))
    assert [re.fullmatch(rf"{MEL}_interpolate_{DATE}-{i:03d}-of-004\.mid", p.name) is not None for i, p in enumerate(mids)] == [True] * 4
    _, mu, _ = mel.encode([a, b])
    ends = mel.decode(mu, temperature=None)
    assert notes(pretty_midi.PrettyMIDI(str(mids[0]))) == notes(ends[0])
    assert notes(pretty_midi.PrettyMIDI(str(mids[-1]))) == notes(ends[1])


def test_cli_writes_every_extraction_and_stops_before_loading_the_model(tmp_path, capsys):
    long = write(melody([60 + (i * 5) % 13 for i in range(64)]), tmp_path / "long.mid")
    one = write(melody(SCALE), tmp_path / "one.mid")
    out = tmp_path / "out"
    # The checkpoint does not exist: the run must stop before it is needed.
    code, stdout, _ = run(capsys, f"--checkpoint_file={tmp_path / 'absent.tar'}", "--mode=interpolate",
                          f"--input_midi_1={one}", f"--input_midi_2={long}", f"--output_dir={out}")
    assert code == 1
    written = sorted(out.glob("*.mid"))
    assert len(written) == 7  # more than Magenta's cap of 5
    for i, path in enumerate(written):
        assert re.fullmatch(rf"{MEL}_input2-extractions_{DATE}-{i:03d}-of-007\.mid", path.name)
    conv = inference_converter(get_config(MEL))
    windows = conv.to_tensors(long).outputs
    for path, window in zip(written, windows):
        np.testing.assert_array_equal(conv.to_tensors(str(path)).outputs[0], window)
    assert f"7 valid inputs extracted from `{long}`" in stdout and "Call script again with one of these" in stdout


def test_cli_input_without_windows_gets_the_clear_message(tmp_path, capsys):
    beat = write(drums(2, BEAT), tmp_path / "beat.mid")
    one = write(melody(SCALE), tmp_path / "one.mid")
    code, stdout, _ = run(capsys, f"--checkpoint_file={tmp_path / 'absent.tar'}", "--mode=interpolate",
                          f"--input_midi_1={beat}", f"--input_midi_2={one}", f"--output_dir={tmp_path}")
    assert code == 1
    assert stdout.strip() == (
        "MusicVAE configs have very specific input requirements. Could not extract any valid inputs from "
        f"`{beat}`. Try another MIDI file."
    )


@requires_ckpts
def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--config=no-such-config", f"--checkpoint_file={MEL_TAR}"])
    assert exit_.value.code == 2 and "unknown config 'no-such-config'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate_main([f"--config={MEL}"])
    assert "give --checkpoint_file or --run_dir" in capsys.readouterr().err

    code, _, err = run(capsys, f"--checkpoint_file={tmp_path / 'absent.tar'}", f"--output_dir={tmp_path}")
    assert code == 1 and "no checkpoint at" in err
    code = generate_main(["--config=cat-drums_2bar_small", f"--checkpoint_file={MEL_TAR}", f"--output_dir={tmp_path}"])
    assert code == 1 and "does not fit config 'cat-drums_2bar_small'" in capsys.readouterr().err
    missing = tmp_path / "missing.mid"
    code, _, err = run(capsys, f"--checkpoint_file={MEL_TAR}", "--mode=interpolate", f"--input_midi_1={missing}",
                       f"--output_dir={tmp_path}")
    assert code == 1 and "input MIDI 1 not found" in err


@requires_ckpts
def test_cli_run_dir_with_a_magenta_checkpoint(tmp_path, capsys):
    train = tmp_path / "run" / "train"
    shutil.copytree(CKPTS / MEL / "checkpoint_no_adam", train)
    code, _, err = run(capsys, f"--run_dir={tmp_path / 'run'}", "--num_outputs=2", f"--output_dir={tmp_path / 'out'}")
    assert code == 0, err
    assert len(list((tmp_path / "out").glob("*.mid"))) == 2
