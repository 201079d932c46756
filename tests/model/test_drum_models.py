"""Drum and GrooVAE models: the RNN-NADE and groove decoders (spec §3.5, §3.6).

Parameter counts against spec §1.4, the NADE's likelihood and sampling against a numpy hand
computation, the groove loss by hand, shapes, input dropout, parity with Magenta's nade-drums and
GrooVAE checkpoints beyond `test_magenta_parity` (KL, training loss, metrics, greedy decodes,
weight loading), and short real training runs whose loss falls.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pretty_midi
import pytest
import torch
import torch.nn.functional as F

from musicvae.configs import CONFIG_MAP, Config
from musicvae.magenta_checkpoint import load_magenta_weights, magenta_variable_map, read_checkpoint
from musicvae.nn import EvalMetrics
from musicvae.nn.encoders import BidirectionalLstmEncoder
from musicvae.nn.groove import GrooveLstmDecoder
from musicvae.nn.nade import MultiLabelRnnNadeDecoder, Nade
from tests.model.test_magenta_checkpoint import requires_ckpts
from tests.model.test_magenta_parity import NEXT_MODELS, TOL, Fixture, elementwise_rel_err, rel_err

# Spec §1.4, in millions, with the precision the table states.
SPEC_PARAMS = {
    "cat-drums_2bar_small": 4.64,
    "cat-drums_2bar_small.lokl": 4.64,
    "cat-drums_2bar_small.hikl": 4.64,
    "cat-drums_2bar_big": 137.6,
    "nade-drums_2bar_reduced": 13.8,
    "nade-drums_2bar_full": 14.4,
    "groovae_4bar": 4.09,
    "groovae_2bar_humanize": 4.09,
    "groovae_2bar_tap_fixed_velocity": 4.09,
    "groovae_2bar_tap_fixed_velocity_note_dropout": 4.09,
    "groovae_2bar_add_closed_hh": 4.09,
    "groovae_2bar_hits_control_tfds": 4.13,
    "groovae_2bar_hits_control": 4.13,
}
TINY = "enc_rnn_size=[16],dec_rnn_size=[12,12],z_size=4"
DECODER_KINDS = ["nade-drums_2bar_reduced", "groovae_2bar_humanize", "groovae_2bar_hits_control"]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- sizes and shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_counts_match_spec(name):
    with torch.device("meta"):  # no memory for the 137.6 M model
        model = CONFIG_MAP[name].build_model()
    decimals = len(str(SPEC_PARAMS[name]).split(".")[1])
    assert round(params(model) / 1e6, decimals) == SPEC_PARAMS[name]


def test_nade_and_groove_layer_shapes():
    with torch.device("meta"):
        nade = CONFIG_MAP["nade-drums_2bar_full"].build_model()
        groove = CONFIG_MAP["groovae_2bar_hits_control"].build_model()
    assert isinstance(nade.decoder, MultiLabelRnnNadeDecoder)
    assert tuple(nade.decoder.nade.w_enc.shape) == (61, 1, 128)
    assert tuple(nade.decoder.nade.w_dec_t.shape) == (61, 128, 1)
    assert tuple(nade.decoder.output_projection.weight.shape) == (128 + 61, 512)
    assert nade.decoder.lstm.layers[0].input_size == 61 + 256
    assert isinstance(groove.decoder, GrooveLstmDecoder)
    assert groove.encoder.fw[0].layers[0].input_size == 27 + 9  # hits as controls reach the encoder
    assert groove.decoder.lstm.layers[0].input_size == 27 + 256 + 9  # ... and every decoder step
    assert tuple(groove.decoder.output_projection.weight.shape) == (27, 256)


@pytest.mark.parametrize("name", DECODER_KINDS)
def test_forward_and_decode_shapes(name):
    config = CONFIG_MAP[name].with_hparams(TINY)
    conv = config.data_converter
    model = config.build_model().eval()
    batch, steps = 3, 32
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, steps, conv.input_depth, generator=g) < 0.3).float()
    y = (torch.rand(batch, steps, conv.output_depth, generator=g) < 0.3).float()
    c = None
    if conv.control_depth:
        c = (torch.rand(batch, steps, conv.control_depth, generator=g) < 0.3).float()
    lengths = torch.tensor([32, 20, 1])
    out = model(x, y, c, lengths, step=0)
    assert out.r_loss.shape == (batch,) and out.loss.shape == ()
    assert out.rnn_output.shape == (batch, steps, model.decoder.rnn_output_depth)
    assert torch.isfinite(out.loss)
    result = model.decode(out.mu, steps, 0.5, c)
    assert result.samples.shape == (batch, steps, conv.output_depth)
    assert result.rnn_output.shape == (batch, steps, model.decoder.rnn_output_depth)


# --- NADE ------------------------------------------------------------------------------------------


def np_nade_log_prob(w_enc, w_dec_t, b_enc, b_dec, x):
    """Magenta's nade.log_prob, one dimension at a time."""
    a, log_p, cond = b_enc.copy(), 0.0, []
    for i in range(len(x)):
        p = sigmoid(b_dec[i] + sigmoid(a) @ w_dec_t[i, :, 0])
        log_p += x[i] * np.log(p + 1e-6) + (1 - x[i]) * np.log(1 - p + 1e-6)
        cond.append(p)
        a = a + x[i] * w_enc[i, 0]
    return log_p, np.array(cond)


@pytest.fixture
def tiny_nade():
    torch.manual_seed(0)
    nade = Nade(num_dims=3, num_hidden=2).double()
    with torch.no_grad():  # larger than the 1/√D init so every weight matters
        nade.w_enc.copy_(torch.tensor([[[1.5, -2.0]], [[-0.7, 0.9]], [[2.2, 0.4]]]))
        nade.w_dec_t.copy_(torch.tensor([[[0.8], [-1.1]], [[1.7], [0.3]], [[-2.4], [1.9]]]))
    return nade


def test_nade_log_prob_by_hand(tiny_nade):
    w_enc, w_dec_t = tiny_nade.w_enc.detach().numpy(), tiny_nade.w_dec_t.detach().numpy()
    xs = np.array(list(itertools.product([0.0, 1.0], repeat=3)))  # all 8 configurations
    b_enc = np.array([[0.3, -0.5]] * 8)
    b_dec = np.array([[0.2, -0.4, 0.6]] * 8)
    log_p, cond = tiny_nade.log_prob(*map(torch.from_numpy, (xs, b_enc, b_dec)))
    for k, x in enumerate(xs):
        ref_log_p, ref_cond = np_nade_log_prob(w_enc, w_dec_t, b_enc[k], b_dec[k], x)
        assert log_p[k].item() == pytest.approx(ref_log_p, rel=1e-12)
        np.testing.assert_allclose(cond[k].detach().numpy(), ref_cond, rtol=1e-12)
    # A distribution: the 8 probabilities add up to 1 (up to the 1e-6 inside the logs).
    assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-5)
    # The first conditional depends on the biases only.
    first = sigmoid(0.2 + sigmoid(b_enc[0]) @ w_dec_t[0, :, 0])
    np.testing.assert_allclose(cond[:, 0].detach().numpy(), np.full(8, first))


def test_nade_threshold_sampling_is_greedy_in_order(tiny_nade):
    """temperature None: label i is 1 iff p_i ≥ 0.5 given the labels already chosen."""
    g = torch.Generator().manual_seed(1)
    b_enc = torch.randn(200, 2, generator=g, dtype=torch.float64) * 2
    b_dec = torch.randn(200, 3, generator=g, dtype=torch.float64) * 2
    samples = tiny_nade.sample(b_enc, b_dec, temperature=None)
    w_enc, w_dec_t = tiny_nade.w_enc.detach().numpy(), tiny_nade.w_dec_t.detach().numpy()
    for k in range(200):
        a, expected = b_enc[k].numpy(), []
        for i in range(3):
            label = float(sigmoid(b_dec[k, i].item() + sigmoid(a) @ w_dec_t[i, :, 0]) >= 0.5)
            expected.append(label)
            a = a + label * w_enc[i, 0]
        np.testing.assert_array_equal(samples[k].numpy(), expected)
    # temperature → 0 is the same thing; both sampling paths agree with log_prob's conditionals
    torch.manual_seed(2)
    np.testing.assert_array_equal(tiny_nade.sample(b_enc, b_dec, temperature=1e-9).numpy(), samples.numpy())
    _, cond = tiny_nade.log_prob(samples, b_enc, b_dec)
    assert torch.equal(cond >= 0.5, samples.bool())


def test_nade_samples_follow_its_distribution(tiny_nade):
    """At τ = 1, the sequential sampler draws from the distribution log_prob scores."""
    n = 40_000
    b_enc = torch.tensor([[0.3, -0.5]], dtype=torch.float64).expand(n, -1)
    b_dec = torch.tensor([[0.2, -0.4, 0.6]], dtype=torch.float64).expand(n, -1)
    torch.manual_seed(3)
    samples = tiny_nade.sample(b_enc, b_dec, temperature=1.0)
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    probs = torch.exp(tiny_nade.log_prob(xs, b_enc[:8], b_dec[:8])[0])
    counts = torch.stack([(samples == x).all(dim=-1).sum() for x in xs]).double()
    stderr = torch.sqrt(probs * (1 - probs) / n)
    assert torch.all((counts / n - probs).abs() < 5 * stderr + 1e-4), (counts / n, probs)


def test_nade_decoder_metrics_by_hand():
    """accuracy = steps with all labels right; recall/precision pooled over every valid bit."""
    truth = torch.tensor([[[1, 0, 1], [0, 0, 0], [1, 1, 1]]], dtype=torch.float32)
    cond_probs = torch.tensor([[[0.9, 0.1, 0.5], [0.2, 0.7, 0.1], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # the last step is padding
    metrics = EvalMetrics()
    metrics.update(MultiLabelRnnNadeDecoder._stats(cond_probs, truth, mask, segments=1))
    values = metrics.compute()
    assert values["metrics/accuracy"] == pytest.approx(1 / 2)  # step 0 all right, step 1 has a false hit
    assert values["metrics/recall"] == pytest.approx(2 / 2)  # both true bits found (p = 0.5 counts)
    assert values["metrics/precision"] == pytest.approx(2 / 3)


# --- groove ----------------------------------------------------------------------------------------


def test_groove_loss_and_metrics_by_hand():
    decoder = GrooveLstmDecoder(output_depth=6, z_size=2, control_depth=0, rnn_sizes=[4])
    # two instruments; step 1 has a saturated wrong hit (σ(40) is 1.0 in float32), step 2 is padding
    rnn_output = torch.tensor([[[2.0, -1.0, 0.5, -0.3, 0.2, -2.0],
                                [40.0, 0.0, 0.0, 1.0, -0.5, 0.0],
                                [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]]])  # fmt: skip
    target = torch.tensor([[[1.0, 0.0, 0.7, 0.0, 0.1, 0.0],
                            [0.0, 1.0, 0.0, 0.5, -0.2, 0.0],
                            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])  # fmt: skip
    mask = torch.tensor([[True, True, False]])
    r_loss, stats = decoder.loss_and_stats(rnn_output, target, mask)

    def log_loss(label, p, eps=1e-7):
        return -(label * np.log(p + eps) + (1 - label) * np.log(1 - p + eps))

    hits = [log_loss(1, sigmoid(2.0)) + log_loss(0, sigmoid(-1.0)), -np.log(1e-7) + log_loss(1, 0.5)]
    vels = [(0.7 - sigmoid(0.5)) ** 2 + sigmoid(-0.3) ** 2, 0.5**2 + (0.5 - sigmoid(1.0)) ** 2]
    offs = [(0.1 - np.tanh(0.2)) ** 2 + np.tanh(-2.0) ** 2, (-0.2 - np.tanh(-0.5)) ** 2]
    assert r_loss.item() == pytest.approx(sum(hits) + sum(vels) + sum(offs), rel=1e-6)
    metrics = EvalMetrics()
    metrics.update(stats)
    values = metrics.compute()
    for name, per_step in (("hits", hits), ("velocities", vels), ("offsets", offs)):
        assert values[f"metrics/{name}_loss"] == pytest.approx(np.mean(per_step), rel=1e-6)


def test_groove_sampling():
    decoder = GrooveLstmDecoder(output_depth=6, z_size=2, control_depth=0, rnn_sizes=[4])
    rnn_output = torch.tensor([[3.0, -0.2, 0.5, -0.3, 0.2, -2.0]])
    greedy = decoder._sample(rnn_output, None)
    expected = [1.0, 0.0, sigmoid(0.5), sigmoid(-0.3), np.tanh(0.2), np.tanh(-2.0)]
    np.testing.assert_allclose(greedy[0].numpy(), expected, rtol=1e-6)
    torch.manual_seed(0)
    draws = decoder._sample(rnn_output.expand(20_000, -1), 1.0)
    assert draws[:, :2].mean(0).tolist() == pytest.approx([sigmoid(3.0), sigmoid(-0.2)], abs=0.015)
    assert torch.equal(draws[:, 2:], greedy[:, 2:].expand(20_000, -1))  # velocities/offsets deterministic
    cold = decoder._sample(rnn_output.expand(1000, -1), 1e-9)  # τ → 0 is the greedy decode
    assert torch.equal(cold, greedy.expand(1000, -1))


# --- input dropout (keep 0.3 on every LSTM input in the groove configs) ----------------------------


def test_encoder_directions_draw_independent_dropout_masks(monkeypatch):
    """TF wraps each direction's cell in its own DropoutWrapper: fw and bw masks differ."""
    assert CONFIG_MAP["groovae_2bar_humanize"].hparams.dropout_keep_prob == 0.3
    dropped: list[torch.Tensor] = []
    original = F.dropout

    def recording_dropout(x, p=0.5, training=True, inplace=False):
        out = original(x, p, training, inplace)
        dropped.append(out)
        return out

    monkeypatch.setattr(F, "dropout", recording_dropout)
    encoder = BidirectionalLstmEncoder(27, [8], keep_prob=0.3).train()
    encoder(torch.ones(4, 32, 27), torch.full((4,), 32))
    fw_input, bw_input = dropped  # one input dropout per direction (one layer)
    fw_kept, bw_kept = fw_input != 0, bw_input.flip(1) != 0  # bw reads time reversed
    assert not torch.equal(fw_kept, bw_kept)
    for kept in (fw_kept, bw_kept):
        assert kept.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.allclose(fw_input[fw_kept], torch.tensor(1 / 0.3))


def test_groove_dropout_only_in_training():
    config = CONFIG_MAP["groovae_2bar_humanize"].with_hparams(TINY)
    model = config.build_model()
    x = torch.rand(2, 32, 27)
    lengths = torch.full((2,), 32)
    model.eval()
    assert torch.equal(model.encode(x, lengths)[0], model.encode(x, lengths)[0])
    model.train()
    assert not torch.equal(model.encode(x, lengths)[0], model.encode(x, lengths)[0])


# --- parity with Magenta's checkpoints (beyond test_magenta_parity) ---------------------------------


@requires_ckpts
@pytest.mark.parametrize("model", NEXT_MODELS)
def test_kl_loss_and_metrics_match_magenta(model, monkeypatch):
    f = Fixture(model, teacher_forced=True)
    net = f.build(checkpoint="checkpoint")  # with Adam slots, which the loader ignores
    x, y, c, lengths = f.tensors()
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))  # z = μ
    with torch.no_grad():
        out = net(x, y, c, lengths, step=int(f.e["global_step"]))
    assert out.sampling_probability == 0.0
    assert elementwise_rel_err(out.kl, f.e["kl_nats"][: f.n]) <= TOL
    assert elementwise_rel_err(out.r_loss, f.e["r_loss"][: f.n]) <= TOL
    assert out.loss.item() == pytest.approx(float(f.e["loss_z_mu"]), rel=TOL)
    metrics = EvalMetrics()
    metrics.update(out.metrics)
    values = metrics.compute()
    expected = {k.removeprefix("metric:"): float(v) for k, v in f.e.items() if k.startswith("metric:")}
    assert expected and all(values[k] == pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in expected.items()), (
        values,
        expected,
    )


@requires_ckpts
@pytest.mark.parametrize("model", NEXT_MODELS)
def test_greedy_decode_matches_magenta(model):
    """NADE: threshold decode, labels in order; GrooVAE: hits = logit > 0, σ velocities, tanh offsets."""
    f = Fixture(model)
    net = f.build()
    _, _, c, _ = f.tensors()
    with torch.no_grad():
        mu = torch.from_numpy(f.e["mu"][: f.n])
        result = net.decode(mu, int(f.meta["hparams"]["max_seq_len"]), None, c)
    samples, expected = result.samples.numpy(), f.e["greedy_samples"]
    if model.startswith("nade"):
        np.testing.assert_array_equal(samples, expected)
    else:
        hits = slice(0, expected.shape[-1] // 3)
        np.testing.assert_array_equal(samples[..., hits], expected[..., hits])
        np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-6)  # σ/tanh values: float32 rounding
    assert rel_err(result.rnn_output, f.e["greedy_rnn_output"]) <= TOL


@requires_ckpts
def test_nade_weights_come_from_the_checkpoint():
    f = Fixture("nade-drums_2bar_full")
    variables = read_checkpoint(f.dir / "checkpoint_no_adam")
    model = f.config.build_model()
    assert set(magenta_variable_map(model)) == set(variables) - {"global_step"}
    assert params(model) == sum(v.size for k, v in variables.items() if k != "global_step")
    load_magenta_weights(model, variables, f.config)
    for name in ("w_enc", "w_dec_t"):
        loaded = getattr(model.decoder.nade, name).detach().numpy()
        np.testing.assert_array_equal(loaded, variables[f"decoder/nade/{name}"])


# --- short real training runs -----------------------------------------------------------------------


def drum_midi(seed: int, bars: int = 8) -> pretty_midi.PrettyMIDI:
    """A humanised 120-qpm 4/4 drum groove: kick, snare, closed/open hats, crash, ride (GM = Roland here)."""
    rng = np.random.default_rng(seed)
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    sixteenth = 0.125
    for bar in range(bars):
        for step in range(16):
            start = (bar * 16 + step) * sixteenth
            pitches = [42] if step % 2 == 0 else ([46] if rng.random() < 0.2 else [])
            if step in (0, 8) or rng.random() < 0.1:
                pitches.append(36)
            if step in (4, 12):
                pitches.append(38)
            if step == 0 and bar % 4 == 0:
                pitches.append(49)
            if rng.random() < 0.05:
                pitches.append(51)
            for pitch in pitches:
                t = max(0.0, start + rng.normal(0, 0.012))
                kit.notes.append(pretty_midi.Note(int(rng.integers(40, 120)), pitch, t, t + 0.1))
    midi.instruments.append(kit)
    return midi


def real_batch(config: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    conv = config.new_converter()
    conv.set_mode("eval")
    items = [item for seed in range(3) for item in conv.to_tensors(drum_midi(seed)).items()]
    assert len(items) >= 8
    x, y, c, lengths = zip(*items[:12])
    controls = torch.from_numpy(np.stack(c)).float() if conv.control_depth else None
    return (torch.from_numpy(np.stack(x)).float(), torch.from_numpy(np.stack(y)).float(), controls,
            torch.tensor(lengths))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODER_KINDS)
def test_short_training_run_reduces_the_loss(name):
    """Adam on a fixed batch of real converter tensors with the config's own dropout (teacher
    forced: over 60 steps the NADE's scheduled-sampling probability stays ~0.001 anyway, and
    the step-by-step path is covered below); the reconstruction loss from z = μ falls."""
    config = CONFIG_MAP[name].with_hparams(TINY + ",sampling_schedule=constant,sampling_rate=0")
    torch.manual_seed(0)
    model = config.build_model()
    x, y, c, lengths = real_batch(config)
    x_input = F.pad(y[:, :-1], (0, 0, 1, 0))

    def teacher_forced_r_loss() -> float:
        model.eval()
        with torch.no_grad():
            mu, _ = model.encode(x, lengths, c)
            return model.decoder.reconstruction_loss(x_input, y, lengths, mu, c).r_loss.mean().item()

    before = teacher_forced_r_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(60):
        out = model(x, y, c, lengths, step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    after = teacher_forced_r_loss()
    assert all(math.isfinite(v) for v in losses)
    assert after < 0.6 * before, (before, after)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_nade_scheduled_sampling_trains_through_its_own_samples():
    """With p = 1 every step's input is a NADE draw from the previous output: finite loss,
    gradients reach the LSTM, the projection and the NADE weights."""
    config = CONFIG_MAP["nade-drums_2bar_reduced"].with_hparams(TINY)
    model = config.build_model().train()
    _, y, c, lengths = real_batch(config)
    x_input, z = F.pad(y[:, :-1], (0, 0, 1, 0)), torch.randn(len(y), 4)
    out = model.decoder.reconstruction_loss(x_input, y, lengths, z, c, sampling_probability=1.0)
    out.r_loss.mean().backward()
    assert torch.isfinite(out.r_loss).all()
    decoder = model.decoder
    lstm, projection, nade = decoder.lstm.layers[0], decoder.output_projection, decoder.nade
    for p in (lstm.weight_ih, projection.weight, nade.w_enc, nade.w_dec_t):
        assert p.grad is not None and p.grad.abs().sum() > 0
