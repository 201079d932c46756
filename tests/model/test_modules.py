"""The MusicVAE modules (musicvae.nn): sizes, shapes, the loss against a numpy hand computation,
LSTMBlockCell semantics, lengths, scheduled sampling, hierarchical decoding and metrics."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicvae.configs import CONFIG_MAP, Config
from musicvae.nn import EvalMetrics, MusicVAE
from musicvae.nn.decoders import sampling_probability
from musicvae.nn.encoders import BidirectionalLstmEncoder, HierarchicalLstmEncoder
from musicvae.nn.lstm import LstmLayer, LstmStack, state_from_flat

# Spec §1.4, in millions, with the precision the table states.
SPEC_PARAMS = {
    "cat-mel_2bar_small": 4.42,
    "cat-mel_2bar_big": 134.6,
    "flat-mel_16bar": 235.3,
    "hierdec-mel_16bar": 176.1,
    "hier-mel_16bar": 72.6,
    "flat-trio_16bar": 251.3,
    "hierdec-trio_16bar": 231.0,
    "hier-trio_16bar": 122.5,
    "cat-drums_2bar_small": 4.64,
    "cat-drums_2bar_big": 137.6,
}
MODEL_CONFIGS = sorted(n for n, c in CONFIG_MAP.items() if c.model.decoder not in ("nade", "groove"))


def tiny(name: str, **overrides) -> Config:
    """The config with the same structure (layer counts) and tiny sizes."""
    hp = CONFIG_MAP[name].hparams
    values = {
        "enc_rnn_size": [5] * len(hp.enc_rnn_size),
        "dec_rnn_size": [6] * len(hp.dec_rnn_size),
        "z_size": 4,
    }
    return CONFIG_MAP[name].with_hparams({**values, **overrides})


def short(name: str, **overrides) -> Config:
    """`tiny` with 16-step sequences (hierarchies: 4 segments of 4) so step-by-step tests stay quick."""
    config = tiny(name, **overrides)
    config = config.with_hparams({"max_seq_len": 16})
    if not config.model.level_lengths:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, level_lengths=(4, 4)))


def one_hot_batch(batch: int, steps: int, depths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = [F.one_hot(torch.randint(d, (batch, steps), generator=g), d) for d in depths]
    return torch.cat(parts, dim=-1).float()


def depths_of(config: Config) -> list[int]:
    return list(config.model.output_depths) or [config.data_converter.output_depth]


# --- sizes ---------------------------------------------------------------------------------------


def tf_param_count(config: Config) -> int:
    """Independent count from TF layer shapes: LSTM (in + h)·4h + 4h, dense in·out + out."""
    hp, spec, conv = config.hparams, config.model, config.data_converter

    def lstm(inp: int, sizes) -> int:
        total = 0
        for h in sizes:
            total += (inp + h) * 4 * h + 4 * h
            inp = h
        return total

    def bilstm(inp: int, sizes) -> int:
        total = 0
        for h in sizes:
            total += 2 * lstm(inp, [h])
            inp = 2 * h
        return total

    def dense(i: int, o: int) -> int:
        return i * o + o

    enc_out = 2 * hp.enc_rnn_size[-1]
    levels = len(spec.level_lengths) if spec.encoder == "hierarchical" else 1
    n = bilstm(conv.input_depth, hp.enc_rnn_size) + (levels - 1) * bilstm(enc_out, hp.enc_rnn_size)
    n += 2 * dense(enc_out, hp.z_size)
    dec = hp.dec_rnn_size

    def flat(out_depth: int, cond: int) -> int:
        return dense(cond, 2 * sum(dec)) + lstm(out_depth + cond, dec) + dense(dec[-1], out_depth)

    if spec.decoder == "hierarchical":
        n += dense(hp.z_size, 2 * sum(dec)) + lstm(1, dec)
        n += sum(flat(d, dec[-1]) for d in depths_of(config))
    else:
        n += flat(conv.output_depth, hp.z_size)
    return n


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_counts_match_spec(name):
    with torch.device("meta"):  # no memory is allocated, so the 250 M-parameter models are instant
        model = CONFIG_MAP[name].build_model()
    count = sum(p.numel() for p in model.parameters())
    assert count == tf_param_count(CONFIG_MAP[name])
    decimals = len(str(SPEC_PARAMS[name]).split(".")[1])
    # Within one unit of the table's last digit: the table's hier-mel_16bar 72.6 is 72.547 M
    # (= 72.55 rounded again); every other entry is the count rounded once.
    assert abs(count / 1e6 - SPEC_PARAMS[name]) < 10**-decimals
    assert not any(b.numel() and b.requires_grad for b in model.buffers())


# Our release presets (not in the spec): parameter counts, and half-precision weights of about 20 MB at most.
RELEASE_PRESET_PARAMS = {"hierdec-mel_16bar_small": 5_476_442, "hierdec-trio_16bar_small": 11_340_980}


@pytest.mark.parametrize("name", sorted(RELEASE_PRESET_PARAMS))
def test_release_presets_are_small_versions_of_the_16bar_configs(name):
    with torch.device("meta"):
        model = CONFIG_MAP[name].build_model()
    count = sum(p.numel() for p in model.parameters())
    assert count == RELEASE_PRESET_PARAMS[name]
    assert 2 * count <= 22 * 2**20  # fp16 bytes: committable
    full = CONFIG_MAP[name.removesuffix("_small")]
    assert CONFIG_MAP[name].model == full.model and CONFIG_MAP[name].converter_factory == full.converter_factory
    assert CONFIG_MAP[name].hparams.free_bits == full.hparams.free_bits == 256


def test_hierdec_mel_shapes_match_a_real_checkpoint():
    """Kernel shapes posted from Magenta's released hierdec-mel_16bar checkpoint (spec §1.4)."""
    with torch.device("meta"):
        model = CONFIG_MAP["hierdec-mel_16bar"].build_model()
    enc = model.encoder.fw[0].layers[0]
    assert enc.input_size + enc.units == 2138 and 4 * enc.units == 8192
    core = model.decoder.core.lstm.layers[0]
    assert core.input_size + core.units == 2138 and 4 * core.units == 4096
    assert tuple(model.decoder.core.z_to_initial_state.weight.shape) == (4096, 1024)
    cond = model.decoder.conductor.layers[0]
    assert cond.input_size + cond.units == 1025
    assert tuple(model.decoder.conductor_initial_state.weight.shape) == (4096, 512)
    assert tuple(model.decoder.core.output_projection.weight.shape) == (90, 1024)


def test_configs_import_stays_torch_free():
    code = "import sys, musicvae.configs; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- shapes, gradients, sampling -----------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_shapes_for_every_config(name):
    config = tiny(name)
    model = config.build_model()
    assert isinstance(model, MusicVAE)
    conv, hp = config.data_converter, config.hparams
    batch, steps = 3, hp.max_seq_len
    inputs = torch.zeros(batch, steps, conv.input_depth)
    outputs = one_hot_batch(batch, steps, depths_of(config))
    controls = torch.zeros(batch, steps, conv.control_depth) if conv.control_depth else None
    out = model(inputs, outputs, controls, torch.full((batch,), steps), step=10)
    rnn_depth = sum(depths_of(config))
    assert out.rnn_output.shape == (batch, steps, rnn_depth)
    assert out.r_loss.shape == out.kl.shape == out.kl_cost.shape == (batch,)
    assert out.mu.shape == out.sigma.shape == out.z.shape == (batch, 4)
    assert out.loss.shape == () and torch.isfinite(out.loss)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_sample_shapes_for_every_config(name):
    config = short(name)
    conv, steps = config.data_converter, 16
    controls = torch.zeros(2, steps, conv.control_depth) if conv.control_depth else None
    result = config.build_model().sample(2, steps, temperature=0.5, controls=controls)
    assert result.samples.shape == (2, steps, conv.output_depth)
    assert result.rnn_output.shape == (2, steps, sum(depths_of(config)))
    # one one-hot per stream per step
    assert torch.equal(result.samples.sum(-1), torch.full((2, steps), float(len(depths_of(config)))))


@pytest.mark.parametrize("name", ["cat-mel_2bar_small", "hierdec-trio_16bar", "hier-mel_16bar"])
def test_gradients_reach_every_parameter(name):
    config = short(name, free_bits=0, max_beta=1.0, beta_rate=0.0)
    model = config.build_model()
    steps = config.hparams.max_seq_len
    x = one_hot_batch(2, steps, depths_of(config))
    model(x, x, None, torch.full((2,), steps), step=100).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if pname != "decoder.conductor.layers.0.weight_ih":  # it multiplies the constant zero input
            assert p.grad.abs().sum() > 0, pname


def test_eval_is_deterministic_except_for_z():
    config = short("hierdec-mel_16bar", dropout_keep_prob=0.5)
    model = config.build_model()
    x = one_hot_batch(2, 16, [90])
    lengths = torch.full((2,), 16)
    model.eval()
    a, b = model(x, x, None, lengths), model(x, x, None, lengths)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.sigma, b.sigma)
    assert not torch.equal(a.z, b.z)  # Magenta samples z in eval too
    tf = [
        model.decoder.reconstruction_loss(F.pad(x[:, :-1], (0, 0, 1, 0)), x, lengths, a.mu) for _ in range(2)
    ]
    assert torch.equal(tf[0].rnn_output, tf[1].rnn_output)
    model.train()  # dropout now draws new masks
    tr = [
        model.decoder.reconstruction_loss(F.pad(x[:, :-1], (0, 0, 1, 0)), x, lengths, a.mu) for _ in range(2)
    ]
    assert not torch.equal(tr[0].rnn_output, tr[1].rnn_output)


# --- LSTMBlockCell semantics ---------------------------------------------------------------------


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm_block_cell(x, kernel, bias, c, h):
    """One TF LSTMBlockCell step: gates (i, j, f, o) from [x ‖ h] @ kernel + bias; forget bias 1."""
    i, j, f, o = np.split(np.concatenate([x, h], -1) @ kernel + bias, 4, axis=-1)
    c = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j)
    return c, sigmoid(o) * np.tanh(c)


def randomise_tf_weights(model: torch.nn.Module, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Give every LstmLayer a random TF-layout kernel/bias through `load_tf_`; return them by path."""
    rng = np.random.default_rng(seed)
    kernels = {}
    for path, module in model.named_modules():
        if isinstance(module, LstmLayer):
            kernel = rng.normal(0, 0.4, (module.input_size + module.units, 4 * module.units)).astype(
                np.float32
            )
            bias = rng.normal(0, 0.4, 4 * module.units).astype(np.float32)
            module.load_tf_(torch.from_numpy(kernel), torch.from_numpy(bias))
            kernels[path] = (kernel.astype(np.float64), bias.astype(np.float64))
    return kernels


def test_lstm_stack_matches_lstm_block_cell_and_step_path():
    stack = LstmStack(3, [4, 4])
    weights = randomise_tf_weights(stack)
    x = torch.randn(2, 5, 3)
    flat = torch.randn(2, stack.state_size)  # Magenta order [c0, h0, c1, h1]
    out, final = stack(x, state_from_flat(flat, 2))

    states = [
        np.split(s, 2, axis=-1) for s in np.split(flat.double().numpy(), 2, axis=-1)
    ]  # [(c, h)] per layer
    expected = []
    for t in range(5):
        inp = x[:, t].double().numpy()
        for layer in range(2):
            states[layer] = np_lstm_block_cell(inp, *weights[f"layers.{layer}"], *states[layer])
            inp = states[layer][1]
        expected.append(inp)
    np.testing.assert_allclose(out.detach().numpy(), np.stack(expected, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        final.c.detach().numpy(), np.stack([s[0] for s in states]), rtol=1e-5, atol=1e-6
    )

    state, stepped = state_from_flat(flat, 2), []
    for t in range(5):  # the single-step path used by autoregressive decoding
        h, state = stack(x[:, t : t + 1], state)
        stepped.append(h)
    torch.testing.assert_close(torch.cat(stepped, 1), out)


def test_lstm_parameters_equal_tf_and_forget_bias_is_not_stored():
    layer = LstmLayer(7, 5)
    assert sum(p.numel() for p in layer.parameters()) == (7 + 5) * 20 + 20
    assert set(layer.state_dict()) == {"weight_ih", "weight_hh", "bias"}


def test_input_dropout_on_every_layer_only_in_training():
    stack = LstmStack(4, [8, 8], keep_prob=0.5)
    x, state = torch.ones(2, 6, 4), stack.zero_state(2, torch.ones(1))
    stack.eval()
    full = LstmStack(4, [8, 8])
    full.load_state_dict(stack.state_dict())
    torch.testing.assert_close(stack(x, state)[0], full(x, state)[0])
    stack.train()
    assert not torch.equal(stack(x, state)[0], stack(x, state)[0])
    # Layer 0's input is dropped too (nn.LSTM's dropout would leave it alone): with one layer
    # there is nothing between layers, yet the output still changes.
    single = LstmStack(4, [8], keep_prob=0.5).train()
    zero = single.zero_state(2, x)
    assert not torch.equal(single(x, zero)[0], single(x, zero)[0])


# --- encoders ------------------------------------------------------------------------------------


def test_bidirectional_encoder_ignores_padding():
    encoder = BidirectionalLstmEncoder(3, [5, 4])
    x = torch.randn(3, 7, 3)
    lengths = torch.tensor([7, 4, 1])
    batched = encoder(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = encoder(x[b : b + 1, :n], lengths[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], alone)
    garbage = x.clone()
    garbage[1, 4:] = 100.0
    torch.testing.assert_close(encoder(garbage, lengths), batched)


def test_hierarchical_encoder_encodes_bars_then_bar_embeddings():
    encoder = HierarchicalLstmEncoder(3, [5], [4, 3])
    x = torch.randn(2, 12, 3)
    bars = torch.stack([encoder.levels[0](x[:, 4 * u : 4 * u + 4], torch.full((2,), 4)) for u in range(3)], 1)
    expected = encoder.levels[1](bars, torch.full((2,), 3))
    torch.testing.assert_close(encoder(x, torch.full((2,), 12)), expected)


# --- the loss against a hand computation ---------------------------------------------------------


def test_loss_matches_numpy_hand_computation():
    config = tiny(
        "cat-mel_2bar_small",
        max_seq_len=6,
        enc_rnn_size=[5, 3],
        free_bits=0.5,
        max_beta=0.7,
        beta_rate=0.9,
        sampling_schedule="constant",
        sampling_rate=0.0,
    )  # teacher forcing
    model = config.build_model()
    weights = randomise_tf_weights(model, seed=1)
    dense = {
        n: (m.weight.detach().double().numpy().T, m.bias.detach().double().numpy())
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    inputs = one_hot_batch(3, 8, [90], seed=1)  # 8 steps: the max_seq_len cut must drop two
    outputs = one_hot_batch(3, 8, [90], seed=2)
    lengths = torch.tensor([8, 4, 2])
    step = 3
    out = model(inputs, outputs, None, lengths, step=step)

    x_np, y_np, lens = inputs.double().numpy()[:, :6], outputs.double().numpy()[:, :6], [6, 4, 2]

    def run(seq, name, c, h):
        outs = []
        for x_t in seq:
            c, h = np_lstm_block_cell(x_t, *weights[name], c, h)
            outs.append(h)
        return np.array(outs)

    mu, sigma = [], []
    for b, n in enumerate(lens):
        seq = x_np[b, :n]
        for layer, units in enumerate([5, 3]):
            zero = np.zeros(units)
            fw = run(seq, f"encoder.fw.{layer}.layers.0", zero, zero)
            bw = run(seq[::-1], f"encoder.bw.{layer}.layers.0", zero, zero)[::-1]
            seq = np.concatenate([fw, bw], -1)
        final = np.concatenate([fw[-1], bw[0]])
        mu.append(final @ dense["mu"][0] + dense["mu"][1])
        sigma.append(np.log1p(np.exp(final @ dense["sigma"][0] + dense["sigma"][1])))
    mu, sigma = np.array(mu), np.array(sigma)
    np.testing.assert_allclose(out.mu.detach().numpy(), mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.sigma.detach().numpy(), sigma, rtol=1e-5, atol=1e-7)

    eps = ((out.z - out.mu) / out.sigma).detach().double().numpy()
    z = mu + sigma * eps
    r_loss = []
    for b, n in enumerate(lens):
        state = np.tanh(
            z[b] @ dense["decoder.z_to_initial_state"][0] + dense["decoder.z_to_initial_state"][1]
        )
        (c0, h0), (c1, h1) = np.split(state[:12], 2), np.split(state[12:], 2)
        prev, total = np.zeros(90), 0.0
        for t in range(n):
            c0, h0 = np_lstm_block_cell(
                np.concatenate([prev, z[b]]), *weights["decoder.lstm.layers.0"], c0, h0
            )
            c1, h1 = np_lstm_block_cell(h0, *weights["decoder.lstm.layers.1"], c1, h1)
            logits = h1 @ dense["decoder.output_projection"][0] + dense["decoder.output_projection"][1]
            log_softmax = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            total -= (y_np[b, t] * log_softmax).sum()
            prev = y_np[b, t]
        r_loss.append(total)
    kl = (0.5 * (mu**2 + sigma**2 - 1) - np.log(sigma)).sum(-1)
    kl_cost = np.maximum(kl - 0.5 * math.log(2), 0)
    beta = 0.7 * (1 - 0.9**step)
    assert 0 < kl_cost.min() and kl_cost.max() < kl.max()  # free bits actually bite
    np.testing.assert_allclose(out.r_loss.detach().numpy(), r_loss, rtol=1e-5)
    np.testing.assert_allclose(out.kl.detach().numpy(), kl, rtol=1e-5)
    np.testing.assert_allclose(out.kl_cost.detach().numpy(), kl_cost, rtol=1e-4)
    assert out.beta == pytest.approx(beta)
    assert out.loss.item() == pytest.approx(np.mean(r_loss) + beta * np.mean(kl_cost), rel=1e-5)


# --- scheduled sampling --------------------------------------------------------------------------


def test_sampling_schedules():
    hp = CONFIG_MAP["cat-mel_2bar_small"].hparams  # inverse_sigmoid, k = 1000
    assert sampling_probability(hp, 0, True) == pytest.approx(1 / 1001)
    assert sampling_probability(hp, round(1000 * math.log(1000)), True) == pytest.approx(
        0.5, abs=1e-3
    )  # ≈ 6.9k
    assert sampling_probability(hp, 15000, True) > 0.999
    assert sampling_probability(hp, 10**9, True) == 1.0
    assert sampling_probability(hp, 5, False) == 1.0  # eval of a scheduled-sampling model
    exp = hp.override(sampling_schedule="exponential", sampling_rate=0.99)
    assert sampling_probability(exp, 100, True) == pytest.approx(1 - 0.99**100)
    assert sampling_probability(hp.override(sampling_schedule="constant", sampling_rate=0.3), 7, True) == 0.3
    teacher = CONFIG_MAP["hierdec-mel_16bar"].hparams
    assert sampling_probability(teacher, 10, True) == sampling_probability(teacher, 10, False) == 0.0
    for bad in (
        {"sampling_schedule": "inverse_sigmoid", "sampling_rate": 0.5},
        {"sampling_schedule": "exponential", "sampling_rate": 1.0},
    ):
        with pytest.raises(ValueError):
            sampling_probability(hp.override(**bad), 1, True)


def test_scheduled_sampling_step_path():
    config = short("cat-mel_2bar_small")
    decoder = config.build_model().decoder
    x = one_hot_batch(4, 16, [90])
    x_input, z = F.pad(x[:, :-1], (0, 0, 1, 0)), torch.randn(4, 4)
    teacher = decoder.rnn_output(x_input, z, None, 0.0)
    # A tiny p takes the step-by-step path but (almost surely) never samples: same as the fused path.
    torch.testing.assert_close(decoder.rnn_output(x_input, z, None, 1e-12), teacher)
    # p = 1: after step 0 the ground truth is never read.
    other = x_input.clone()
    other[:, 1:] = one_hot_batch(4, 15, [90], seed=5)
    torch.manual_seed(3)
    sampled = decoder.rnn_output(x_input, z, None, 1.0)
    torch.manual_seed(3)
    torch.testing.assert_close(decoder.rnn_output(other, z, None, 1.0), sampled)
    assert not torch.allclose(sampled, teacher)


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["cat-mel_2bar_small", "flat-trio_16bar", "hierdec-mel_16bar", "hierdec-trio_16bar"]
)
def test_greedy_decode_agrees_with_teacher_forcing_on_its_own_output(name):
    """Feeding a greedy decode back as the target reproduces its logits: the sampler and the
    teacher-forced path (batched segments for hierarchical decoders) are the same model."""
    config = short(name)
    model = config.build_model().eval()
    randomise_tf_weights(model)
    steps, z = config.hparams.max_seq_len, torch.randn(3, 4)
    greedy = model.decode(z, steps, temperature=None)
    samples = greedy.samples
    teacher = model.decoder.rnn_output(F.pad(samples[:, :-1], (0, 0, 1, 0)), z, None, 0.0)
    torch.testing.assert_close(teacher, greedy.rnn_output, rtol=1e-4, atol=1e-5)


def test_hierarchical_segments_restart_from_the_conductor():
    config = short("hierdec-mel_16bar")
    decoder = config.build_model().decoder
    x = one_hot_batch(2, 16, [90])
    x_input, z = F.pad(x[:, :-1], (0, 0, 1, 0)), torch.randn(2, 4)
    batched = decoder.rnn_output(x_input, z, None)
    c = decoder.embeddings(z)
    for u in range(4):
        span = slice(4 * u, 4 * u + 4)
        alone = decoder.core.rnn_output(x_input[:, span], c[:, u], None)
        torch.testing.assert_close(batched[:, span], alone)


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_stream_like_magenta():
    config = tiny("cat-mel_2bar_small")
    decoder = config.build_model().decoder
    target = F.one_hot(torch.tensor([[0, 1, 1, 2]]), 90).float()
    logits = F.one_hot(torch.tensor([[0, 1, 2, 2]]), 90).float()  # step 2 wrong; step 3 is padding
    mask = torch.tensor([[True, True, True, False]])
    _, stats = decoder.loss_and_stats(logits, target, mask)
    metrics = EvalMetrics()
    metrics.update(stats)
    values = metrics.compute()
    assert values["metrics/accuracy"] == pytest.approx(2 / 3)
    assert values["metrics/mean_per_class_accuracy"] == pytest.approx(
        (1 + 0.5) / 90
    )  # absent classes count 0
    metrics.update(stats)  # streaming: a second identical batch changes nothing
    assert metrics.compute() == values


def test_hierarchical_trio_metric_names_and_means():
    config = short("hierdec-trio_16bar")
    model = config.build_model()
    x = one_hot_batch(2, 16, [90, 90, 512])
    metrics = EvalMetrics()
    metrics.update(model(x, x, None, torch.full((2,), 16)).metrics)
    values = metrics.compute()
    for name in (
        "loss",
        "losses/r_loss",
        "losses/kl_loss",
        "losses/kl_bits",
        "losses/kl_beta",
        "metrics/accuracy",
    ):
        assert name in values
    per_stream = [values[f"metrics/accuracy/output_{i}"] for i in range(3)]
    assert values["metrics/accuracy"] == pytest.approx(np.mean(per_stream))
    per_segment = [values[f"segment/{u:03d}/metrics/accuracy/output_1"] for u in range(4)]
    assert values["metrics/accuracy/output_1"] == pytest.approx(np.mean(per_segment))
