"""Magenta checkpoints loaded into our PyTorch MusicVAE reproduce Magenta's own outputs.

Fixtures: ../shared/fixtures/magenta-checkpoints (see its README). For each model: build the
config with the fixture's hparams overrides, load the checkpoint, feed `inputs`/`lengths`/
`controls`, compare μ and σ, then the teacher-forced decoder with z = μ (x_input = targets shifted
right by one zero step) against `tf_rnn_output`, `r_loss`, the KL, the training loss formula,
the metrics and the greedy decode. Eval mode, no dropout.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicvae.configs import CONFIG_MAP
from musicvae.magenta_checkpoint import CheckpointError, load_magenta_weights, magenta_variable_map, read_checkpoint
from tests.model.test_magenta_checkpoint import CKPTS, STEPS, requires_ckpts

TOL = 1e-4  # relative
PARITY_MODELS = ["cat-mel_2bar_small", "cat-drums_2bar_small", "hierdec-mel_16bar", "hierdec-trio_16bar"]
NEXT_MODELS = ["nade-drums_2bar_full", "groovae_2bar_humanize", "groovae_2bar_hits_control_tfds"]


def rel_err(actual, expected) -> float:
    """max |a − e| / max |e| (scale-relative: logits and μ cross zero)."""
    a = actual.detach().cpu().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-30))


def elementwise_rel_err(actual, expected) -> float:
    a = actual.detach().cpu().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    return float(np.max(np.abs(a - e) / np.abs(e)))


class Fixture:
    def __init__(self, model: str, teacher_forced: bool = False):
        self.dir = CKPTS / model
        self.meta = json.loads((self.dir / "hparams.json").read_text())
        with np.load(self.dir / "expected.npz", allow_pickle=False) as z:
            self.e = {k: z[k] for k in z.files}
        overrides = self.meta["hparams_override"]
        if teacher_forced:  # as the fixture's Graph A; changes no variable
            overrides += ",sampling_schedule=constant,sampling_rate=0"
        self.config = CONFIG_MAP[self.meta["config"]].with_hparams(overrides)
        self.n = int(self.e["num_examples"])

    def build(self, checkpoint: str = "checkpoint_no_adam"):
        try:
            model = self.config.build_model()
        except ValueError as err:
            if "arrives with" in str(err):
                pytest.skip(f"{self.meta['decoder']} not implemented yet: {err}")
            raise
        load_magenta_weights(model, read_checkpoint(self.dir / checkpoint), self.config)
        return model.eval()

    def tensors(self):
        e = self.e
        controls = torch.from_numpy(e["controls"]) if e["controls"].shape[-1] else None
        return torch.from_numpy(e["inputs"]), torch.from_numpy(e["outputs"]), controls, torch.from_numpy(e["lengths"]).long()


def _mask_invalid(rnn_output: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """TF's dynamic_decode emits zeros past each sequence's length."""
    valid = torch.arange(rnn_output.shape[1]) < lengths[:, None]
    return rnn_output * valid[..., None]


@pytest.fixture(params=[pytest.param(m, marks=pytest.mark.slow) if "trio" in m else m for m in PARITY_MODELS])
def fx(request):
    if not CKPTS.is_dir():
        pytest.skip(f"checkpoint fixtures not found at {CKPTS}")
    return Fixture(request.param)


# --- configs agree with the hparams Magenta trained with --------------------------------------------


@requires_ckpts
@pytest.mark.parametrize("model", PARITY_MODELS + NEXT_MODELS)
def test_config_hparams_match_fixture(model):
    f = Fixture(model)
    ours = f.config.hparams.to_dict()
    theirs = f.meta["hparams"]
    diffs = {k: (ours[k], v) for k, v in theirs.items() if k in ours and ours[k] != v}
    assert not diffs, f"ours vs Magenta's: {diffs}"
    conv = f.config.data_converter
    assert (conv.input_depth, conv.output_depth, conv.control_depth) == (
        f.meta["input_depth"], f.meta["output_depth"], f.meta["control_depth"])


# --- parity ------------------------------------------------------------------------------------------


@requires_ckpts
def test_encoder_and_teacher_forced_decoder(fx):
    model = fx.build()
    e, n = fx.e, fx.n
    x, y, c, lengths = fx.tensors()
    with torch.no_grad():
        mu, sigma = model.encode(x, lengths, c)
        x_input = F.pad(y[:, :-1], (0, 0, 1, 0))
        out = model.decoder.reconstruction_loss(x_input, y, lengths, mu, c, 0.0)
    errs = {
        "mu": rel_err(mu, e["mu"][:n]),
        "sigma": elementwise_rel_err(sigma, e["sigma"][:n]),
        "rnn_output": rel_err(_mask_invalid(out.rnn_output, lengths), e["tf_rnn_output"][:n]),
        "r_loss": elementwise_rel_err(out.r_loss, e["r_loss"][:n]),
    }
    assert max(errs.values()) <= TOL, errs
    # the checkpoint's μ also equals TrainedModel.encode's
    assert rel_err(mu, e["trained_model_mu"]) <= TOL


@requires_ckpts
def test_forward_kl_loss_and_metrics(fx, monkeypatch):
    """MusicVAE.forward with the noise zeroed (z = μ) reproduces the KL, the training loss
    formula at the checkpoint's global step, and Magenta's metrics."""
    from musicvae.nn import EvalMetrics

    f = Fixture(fx.dir.name, teacher_forced=True)
    model = f.build(checkpoint="checkpoint")  # the training checkpoint, Adam slots and all
    x, y, c, lengths = f.tensors()
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))
    with torch.no_grad():
        out = model(x, y, c, lengths, step=int(f.e["global_step"]))
    assert out.sampling_probability == 0.0
    assert math.isclose(out.beta, float(f.e["kl_beta"]), rel_tol=1e-9)
    assert elementwise_rel_err(out.kl, f.e["kl_nats"][: f.n]) <= TOL
    assert elementwise_rel_err(out.r_loss, f.e["r_loss"][: f.n]) <= TOL
    assert abs(out.loss.item() - float(f.e["loss_z_mu"])) <= TOL * abs(float(f.e["loss_z_mu"]))
    metrics = EvalMetrics()
    metrics.update(out.metrics)
    values = metrics.compute()
    expected = {k[len("metric:"):]: float(v) for k, v in f.e.items() if k.startswith("metric:")}
    assert expected
    missing = sorted(set(expected) - set(values))
    assert not missing, f"metrics Magenta reports that we do not: {missing}"
    off = {k: (values[k], v) for k, v in expected.items() if abs(values[k] - v) > 1e-5}
    assert not off, off


@requires_ckpts
def test_greedy_decode(fx):
    """Greedy decode from z = μ follows Magenta's path (each segment of a hierarchical decoder
    starts from the previous segment's last output)."""
    model = fx.build()
    e, n = fx.e, fx.n
    _, _, c, _ = fx.tensors()
    with torch.no_grad():
        result = model.decode(torch.from_numpy(e["mu"][:n]), int(fx.meta["hparams"]["max_seq_len"]), None, c)
    assert int(e["greedy_matches_argmax"]) == 1
    np.testing.assert_array_equal(result.samples.numpy(), e["greedy_samples"])
    assert rel_err(result.rnn_output, e["greedy_rnn_output"]) <= TOL


@requires_ckpts
@pytest.mark.parametrize("model", NEXT_MODELS)
def test_next_decoders_when_available(model):
    """NADE / GrooVAE: run once their decoders exist (skipped until then)."""
    f = Fixture(model)
    net = f.build()
    x, y, c, lengths = f.tensors()
    with torch.no_grad():
        mu, sigma = net.encode(x, lengths, c)
        out = net.decoder.reconstruction_loss(F.pad(y[:, :-1], (0, 0, 1, 0)), y, lengths, mu, c, 0.0)
    assert rel_err(mu, f.e["mu"][: f.n]) <= TOL
    assert elementwise_rel_err(sigma, f.e["sigma"][: f.n]) <= TOL
    assert rel_err(_mask_invalid(out.rnn_output, lengths), f.e["tf_rnn_output"][: f.n]) <= TOL
    assert elementwise_rel_err(out.r_loss, f.e["r_loss"][: f.n]) <= TOL


# --- loading: sources and refusals ---------------------------------------------------------------------


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@requires_ckpts
def test_adam_checkpoint_and_tar_load_identically():
    f = Fixture("cat-mel_2bar_small")
    ref = _params(f.build("checkpoint_no_adam"))
    for source in (f.dir / "checkpoint", f.dir / "cat-mel_2bar_small.tar"):
        model = f.config.build_model()
        load_magenta_weights(model, source, f.config)  # a path is read with read_checkpoint
        got = _params(model)
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


@requires_ckpts
def test_every_model_weight_comes_from_the_checkpoint():
    """Two differently initialised models end up identical: nothing is left at its init value."""
    f = Fixture("hierdec-trio_16bar")
    variables = read_checkpoint(f.dir / "checkpoint_no_adam")
    torch.manual_seed(1)
    a = f.config.build_model()
    torch.manual_seed(2)
    b = f.config.build_model()
    load_magenta_weights(a, variables, f.config)
    load_magenta_weights(b, variables, f.config)
    pa, pb = _params(a), _params(b)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0, msg=k)
    trainable = sum(p.numel() for p in a.parameters())
    tf_weights = sum(v.size for k, v in variables.items() if k != "global_step")
    assert trainable == tf_weights  # same parameter count as Magenta (forget bias not stored)
    assert set(magenta_variable_map(a)) == set(variables) - {"global_step"}


@requires_ckpts
def test_wrong_config_is_refused_with_a_list_and_nothing_copied():
    mel = Fixture("cat-mel_2bar_small")
    drums_cfg = CONFIG_MAP["cat-drums_2bar_small"].with_hparams(mel.meta["hparams_override"])
    model = drums_cfg.build_model()
    before = _params(model)
    with pytest.raises(CheckpointError) as err:
        load_magenta_weights(model, read_checkpoint(mel.dir / "checkpoint"), drums_cfg)
    msg = str(err.value)
    assert "cat-drums_2bar_small" in msg and "wrong shapes" in msg
    assert "decoder/output_projection/kernel: checkpoint [16, 90], model expects [16, 512]" in msg
    assert "encoder/cell_0/bidirectional_rnn/fw/multi_rnn_cell/cell_0/lstm_cell/kernel: checkpoint [122, 128], model expects [42, 128]" in msg
    assert "Adam" not in msg and "global_step" not in msg
    after = _params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)

    # sizes that do not match the hparams
    small = CONFIG_MAP["cat-mel_2bar_small"].with_hparams("enc_rnn_size=[32],dec_rnn_size=[16,16],z_size=4")
    with pytest.raises(CheckpointError, match=r"encoder/mu/kernel: checkpoint \[64, 8\], model expects \[64, 4\]"):
        load_magenta_weights(small.build_model(), mel.dir / "checkpoint_no_adam", small)


@requires_ckpts
def test_hierarchical_checkpoint_into_flat_model_lists_missing_and_unexpected():
    hier = Fixture("hierdec-mel_16bar")
    flat_cfg = CONFIG_MAP["flat-mel_16bar"].with_hparams(hier.meta["hparams_override"])
    with pytest.raises(CheckpointError) as err:
        load_magenta_weights(flat_cfg.build_model(), hier.dir / "checkpoint_no_adam", flat_cfg)
    msg = str(err.value)
    assert "missing variables (8)" in msg and "    decoder/output_projection/kernel" in msg
    assert "unexpected variables (14)" in msg
    assert "    decoder/hierarchical_level_0/initial_state/kernel" in msg
    assert "    core_decoder/decoder/output_projection/bias" in msg


@requires_ckpts
def test_trio_core_decoders_are_not_interchangeable():
    f = Fixture("hierdec-trio_16bar")
    variables = read_checkpoint(f.dir / "checkpoint_no_adam")
    swapped = dict(variables)
    a, b = "core_decoder/core_decoder_0/decoder/", "core_decoder/core_decoder_2/decoder/"
    for k in [k for k in variables if k.startswith(a)]:
        swapped[k], swapped[b + k[len(a):]] = variables[b + k[len(a):]], variables[k]
    with pytest.raises(CheckpointError, match="core_decoder_0/decoder/output_projection/kernel: checkpoint \\[16, 512\\]"):
        load_magenta_weights(f.config.build_model(), swapped, f.config)


# --- hierarchical encoder (no released fixture: checked against a NumPy Magenta reference) -------------


def _np_lstm(kernel, bias, xs, lengths, reverse=False):
    """tf.nn.dynamic_rnn over an LSTMBlockCell (forget bias 1.0), outputs zero past the length."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    batch, steps, _ = xs.shape
    units = bias.shape[0] // 4
    if reverse:
        xs = np.stack([np.concatenate([xs[k, : lengths[k]][::-1], xs[k, lengths[k]:]]) for k in range(batch)])
    c = np.zeros((batch, units))
    h = np.zeros((batch, units))
    out = np.zeros((batch, steps, units))
    for t in range(steps):
        i, j, f, o = np.split(np.concatenate([xs[:, t], h], -1) @ kernel + bias, 4, -1)
        c2 = sig(f + 1.0) * c + sig(i) * np.tanh(j)
        h2 = sig(o) * np.tanh(c2)
        valid = (t < lengths)[:, None]
        c, h = np.where(valid, c2, c), np.where(valid, h2, h)
        out[:, t] = np.where(valid, h2, 0.0)
    if reverse:
        out = np.stack([np.concatenate([out[k, : lengths[k]][::-1], out[k, lengths[k]:]]) for k in range(batch)])
    return out, h


def _np_bidirectional(v, scope, x, lengths):
    inputs, layer = x, 0
    while f"{scope}/cell_{layer}/bidirectional_rnn/fw/multi_rnn_cell/cell_0/lstm_cell/kernel" in v:
        p = f"{scope}/cell_{layer}/bidirectional_rnn/%s/multi_rnn_cell/cell_0/lstm_cell/"
        out_fw, h_fw = _np_lstm(v[p % "fw" + "kernel"], v[p % "fw" + "bias"], inputs, lengths)
        out_bw, h_bw = _np_lstm(v[p % "bw" + "kernel"], v[p % "bw" + "bias"], inputs, lengths, reverse=True)
        inputs, layer = np.concatenate([out_fw, out_bw], -1), layer + 1
    return np.concatenate([h_fw, h_bw], -1)


def test_hierarchical_encoder_mapping_against_numpy_reference():
    """hier-mel_16bar: Magenta scopes encoder/hierarchical_level_{0,1}/cell_ℓ/bidirectional_rnn/...;
    level 0 encodes each 16-step bar, level 1 the 16 bar embeddings."""
    cfg = CONFIG_MAP["hier-mel_16bar"].with_hparams("enc_rnn_size=[8,8],dec_rnn_size=[8,8],z_size=4")
    model = cfg.build_model().eval()
    shapes = magenta_variable_map(model)
    assert shapes["encoder/hierarchical_level_0/cell_0/bidirectional_rnn/fw/multi_rnn_cell/cell_0/lstm_cell/kernel"] == (90 + 8, 32)
    assert shapes["encoder/hierarchical_level_0/cell_1/bidirectional_rnn/bw/multi_rnn_cell/cell_0/lstm_cell/kernel"] == (16 + 8, 32)
    assert shapes["encoder/hierarchical_level_1/cell_0/bidirectional_rnn/fw/multi_rnn_cell/cell_0/lstm_cell/kernel"] == (16 + 8, 32)
    assert shapes["encoder/mu/kernel"] == (16, 4)
    rng = np.random.default_rng(0)
    variables = {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in shapes.items()}
    variables["global_step"] = np.array(7, np.int64)
    load_magenta_weights(model, variables, cfg)

    x = np.eye(90, dtype=np.float32)[rng.integers(0, 90, (2, 256))]
    lengths = np.array([256, 256])
    with torch.no_grad():
        mu, sigma = model.encode(torch.from_numpy(x), torch.from_numpy(lengths))
    v = {k: a.astype(np.float64) for k, a in variables.items()}
    bars = _np_bidirectional(v, "encoder/hierarchical_level_0", x.reshape(2 * 16, 16, 90).astype(np.float64), np.full(32, 16))
    h = _np_bidirectional(v, "encoder/hierarchical_level_1", bars.reshape(2, 16, -1), np.full(2, 16))
    ref_mu = h @ v["encoder/mu/kernel"] + v["encoder/mu/bias"]
    ref_sigma = np.logaddexp(0, h @ v["encoder/sigma/kernel"] + v["encoder/sigma/bias"])
    assert rel_err(mu, ref_mu) <= TOL
    assert elementwise_rel_err(sigma, ref_sigma) <= TOL


def test_numpy_reference_reproduces_a_fixture():
    """The reference above is Magenta's encoder: it reproduces cat-mel's μ from its checkpoint."""
    if not CKPTS.is_dir():
        pytest.skip("no fixtures")
    f = Fixture("cat-mel_2bar_small")
    v = {k: a.astype(np.float64) for k, a in read_checkpoint(f.dir / "checkpoint_no_adam").items()}
    h = _np_bidirectional(v, "encoder", f.e["inputs"].astype(np.float64), f.e["lengths"])
    assert rel_err(h @ v["encoder/mu/kernel"] + v["encoder/mu/bias"], f.e["mu"]) <= 1e-5
    assert STEPS["cat-mel_2bar_small"] == int(f.e["global_step"])
