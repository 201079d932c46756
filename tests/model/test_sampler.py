"""The fast categorical sampler (musicvae.nn.sampler) against the generic step loop it replaces.

For a seed, both must give the same tokens and leave the RNG in the same state (the same Exp(1) draws
in the same order); the logits agree to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicvae.configs import get_config
from musicvae.generate import TrainedModel
from musicvae.nn import sampler
from musicvae.nn.decoders import (
    CategoricalLstmDecoder,
    HierarchicalLstmDecoder,
    MultiOutCategoricalLstmDecoder,
    SplitMultiOutDecoder,
)


@pytest.fixture(autouse=True, params=["native", "torch-loop"])
def loop(request, monkeypatch):
    """Every test runs on both CPU loops: the native one (where this CPU has AVX2 + FMA) and the torch ops."""
    native = request.param == "native"
    if native and not sampler.NATIVE_LOOP:
        pytest.skip("the native loop is not built or this CPU lacks AVX2/FMA")
    monkeypatch.setattr(sampler, "NATIVE_LOOP", native)
    return request.param


def _both(decoder, z, length, temperature, controls=None, start=None, seed=7):
    """(reference, fast) DecodeResults and RNG states after each, from the same seed."""
    results = []
    for fast in (False, True):
        with torch.no_grad(), sampler.fast_sampling(fast):
            torch.manual_seed(seed)
            results.append((decoder.sample(z, length, temperature, controls, start), torch.get_rng_state()))
    return results


def _assert_same(decoder, z, length, temperature, **kw):
    (ref, ref_rng), (fast, fast_rng) = _both(decoder, z, length, temperature, **kw)
    assert torch.equal(fast.samples, ref.samples)
    assert fast.samples.dtype == ref.samples.dtype and fast.samples.shape == ref.samples.shape
    torch.testing.assert_close(fast.rnn_output, ref.rnn_output, rtol=0, atol=2e-5)
    assert torch.equal(fast_rng, ref_rng)
    return fast


def _flat(output_depth=12, z_size=5, control_depth=0, layers=2, units=16):
    torch.manual_seed(0)
    return CategoricalLstmDecoder(output_depth, z_size, control_depth, [units] * layers).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.5, None])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_flat_categorical_matches_the_step_loop(batch, layers, temperature):
    decoder = _flat(layers=layers)
    z = torch.randn(batch, 5)
    fast = _assert_same(decoder, z, 20, temperature)
    assert torch.equal(fast.samples.sum(-1), torch.ones(batch, 20))  # one-hot


def test_start_inputs_and_controls():
    decoder = _flat(control_depth=4)
    z, controls = torch.randn(4, 5), torch.randn(4, 24, 4)  # controls longer than the decode: cut
    start = torch.eye(12)[torch.tensor([0, 3, 11, 5])]
    _assert_same(decoder, z, 20, 0.7, controls=controls, start=start)
    _assert_same(decoder, z, 20, None, controls=controls, start=torch.rand(4, 12))  # any start vector


@pytest.mark.parametrize("temperature", [1.0, None])
def test_multi_out_parts_sample_in_the_reference_order(temperature):
    torch.manual_seed(0)
    decoder = MultiOutCategoricalLstmDecoder([5, 7, 3], 6, 0, [16, 16]).eval()
    fast = _assert_same(decoder, torch.randn(5, 6), 12, temperature)
    assert all(torch.equal(part.sum(-1), torch.ones(5, 12)) for part in fast.samples.split([5, 7, 3], -1))


@pytest.mark.parametrize("trio", [False, True])
def test_hierarchical_segments_chain_their_last_tokens(trio):
    torch.manual_seed(0)
    z_size, units = 6, 16
    if trio:
        core = SplitMultiOutDecoder([CategoricalLstmDecoder(d, units, 0, [units, units]) for d in (5, 7, 9)])
    else:
        core = CategoricalLstmDecoder(12, units, 0, [units, units])
    decoder = HierarchicalLstmDecoder(core, (3, 4), z_size, [units, units]).eval()
    _assert_same(decoder, torch.randn(3, z_size), 12, 0.5)
    _assert_same(decoder, torch.randn(3, z_size), 12, None)


def test_preset_config_and_trained_model_seed():
    config = get_config("cat-mel_2bar_small")
    torch.manual_seed(0)
    model = config.build_model().eval()
    _assert_same(model.decoder, torch.randn(2, config.hparams.z_size), 32, 0.5)
    tm = TrainedModel(config, model, max_batch_size=4)
    z = np.random.default_rng(0).standard_normal((6, config.hparams.z_size)).astype(np.float32)
    fast = tm.decode_to_tensors(z, temperature=1.0, seed=3)
    with sampler.fast_sampling(False):
        ref = tm.decode_to_tensors(z, temperature=1.0, seed=3)
    np.testing.assert_array_equal(fast, ref)


def test_the_path_is_taken_only_where_it_applies(monkeypatch):
    calls = []
    original = sampler.sample_categorical
    monkeypatch.setattr(sampler, "sample_categorical", lambda *a, **k: calls.append(1) or original(*a, **k))
    decoder, z = _flat(), torch.randn(2, 5)
    with torch.no_grad():
        decoder.sample(z, 4)
    assert len(calls) == 1
    decoder.sample(z, 4)  # autograd on: the reference (it can backpropagate into the logits)
    with torch.no_grad(), sampler.fast_sampling(False):
        decoder.sample(z, 4)
    with torch.no_grad():
        decoder.double().sample(z.double(), 4)  # float64: the reference
    assert len(calls) == 1


def test_the_native_loop_is_one_call_and_threads_split_the_batch(loop, monkeypatch):
    """One native call per decode, whatever the length; rows split over threads give the same tokens."""
    if loop != "native":
        pytest.skip("native loop only")
    calls = []
    original = sampler._native.decode
    monkeypatch.setattr(sampler._native, "decode", lambda *a: calls.append(a[-1]) or original(*a))
    decoder, z = _flat(layers=3), torch.randn(9, 5)
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):  # 4 threads on 9 rows: 3 slices of 3
            torch.set_num_threads(threads)
            _assert_same(decoder, z, 20, 0.8)
    finally:
        torch.set_num_threads(saved)
    assert calls == [1, 2, 4]


def test_decode_threads_come_from_the_environment_else_torch(monkeypatch):
    monkeypatch.delenv(sampler.DECODE_THREADS_ENV, raising=False)
    assert sampler.decode_threads() == torch.get_num_threads()
    monkeypatch.setenv(sampler.DECODE_THREADS_ENV, "3")
    assert sampler.decode_threads() == 3
    monkeypatch.setenv(sampler.DECODE_THREADS_ENV, "0")  # 0: torch's count
    assert sampler.decode_threads() == torch.get_num_threads()
    monkeypatch.setenv(sampler.DECODE_THREADS_ENV, "many")
    with pytest.raises(ValueError, match="MUSICVAE_DECODE_THREADS must be a whole number"):
        sampler.decode_threads()


def test_changed_weights_are_laid_out_again():
    decoder, z = _flat(), torch.randn(3, 5)
    _assert_same(decoder, z, 10, None)
    with torch.no_grad():
        for p in decoder.parameters():
            p.mul_(3.0)  # in place: same storage, new version
    _assert_same(decoder, z, 10, None)
    decoder.load_state_dict({k: torch.randn_like(v) for k, v in decoder.state_dict().items()})
    _assert_same(decoder, z, 10, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_gives_the_eager_samples():
    config = get_config("cat-mel_2bar_small")
    torch.manual_seed(0)
    model = config.build_model()
    z = np.random.default_rng(0).standard_normal((10, config.hparams.z_size)).astype(np.float32)
    graphed = TrainedModel(config, model, max_batch_size=4, device="cuda")
    eager = TrainedModel(config, model, max_batch_size=4, device="cuda")
    eager.cuda_graphs = False
    for temperature in (0.5, None):
        first = graphed.decode_to_tensors(z, temperature=temperature, seed=1)
        assert graphed._graphs and all(g is not None for g in graphed._graphs.values())
        np.testing.assert_array_equal(graphed.decode_to_tensors(z, temperature=temperature, seed=1), first)
        np.testing.assert_array_equal(eager.decode_to_tensors(z, temperature=temperature, seed=1), first)


def test_the_native_module_refuses_missing_buffers():
    if sampler._native is None:
        pytest.skip("the native module is not built")
    with pytest.raises(ValueError, match="a required buffer is missing"):
        sampler._native.decode((1, 4, 2, 1, 3, 0), (0,) * 10, (0,), (), (3,), 1.0, 1)


def test_without_the_kernels_the_module_still_builds_and_says_so(tmp_path):
    """Non-x86 CPUs (an arm64 image): the module builds, `available()` is False, the torch loop is used."""
    import importlib.util
    import shutil
    import subprocess
    import sysconfig
    from pathlib import Path

    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    source = Path(sampler.__file__).with_name("_decode.c")
    target = tmp_path / f"_decode{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([compiler, "-O1", "-pthread", "-fPIC", "-shared", "-DMUSICVAE_NO_KERNELS",
                    f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(target)], check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("_decode", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.available() is False
    with pytest.raises(RuntimeError, match="needs an x86-64 CPU with AVX2 and FMA"):
        module.decode((1, 4, 2, 1, 3, 0), (1,) * 10, (1,), (), (3,), 1.0, 1)
