"""Free-running sampling of the categorical LSTM decoders without per-step overhead (issue 5, item 6).

`CategoricalLstmDecoder` and `MultiOutCategoricalLstmDecoder` (one softmax, or several side by side:
the flat trio; both also as the cores of the hierarchical decoders) sample here instead of through the
generic step loop (`lstm_decode` with a `choose` callback, which stays the reference and the path for
NADE, GrooVAE, autograd, autocast and dropout):

* the decoder's weights are laid out once per decoder and cached until a parameter changes: gate rows
  reordered from (i, f, g, o) to (i, f, o, g), so that one sigmoid and one tanh cover all four gates;
  layer k ≥ 1's input and recurrent kernels side by side (one matmul per step on [h_{k−1} ‖ h_k]);
  layer 0's token columns transposed into rows;
* z's (and the controls') share of layer 0, plus its biases, is one matmul per sequence before the
  loop; the previous token's share is a row gather of the token kernel (one-hot × W is a row of W);
* on a CPU with AVX2 and FMA the whole loop runs in native code (`musicvae/nn/_decode.c`, one call per
  batch, rows split over `decode_threads()` threads, weights packed once per decoder into 16-column
  panels); the Exp(1) draws it samples with are drawn up front from the torch generator,
  one tensor for every step, which is the same stream of numbers as the reference's per-step draws;
* elsewhere (CUDA, or a CPU without them) every buffer and every view is made before the loop, so a step
  is ~20 tensor ops writing into them: no allocation, no slicing, no host synchronisation, static shapes.
  On CUDA the same function is captured once per shape as a CUDA graph (`CudaGraphDecode`, used by
  `TrainedModel`) and replayed.

The samples are those of the reference. `torch.multinomial(softmax(logits / τ), 1)` (what
`_categorical_sample` calls) draws one Exp(1) tensor q of the probabilities' shape and returns
argmax(p / q) (PyTorch's one-sample path); this loop draws the same tensors in the same order (step by
step, part by part) and computes the same expression, so a seed gives the same tokens. The logits
agree to float rounding only (~1e-6: the gather, the gate order and the unpadded small-batch matmuls
round differently in the last bits), which changes a token only at an exact tie. Temperature None is
the argmax per part.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from musicvae.nn.decoders import BaseLstmDecoder
    from musicvae.nn.vae import MusicVAE

try:
    from musicvae.nn import _decode as _native
except ImportError:  # a source tree run without `pip install -e .`: the torch loop
    _native = None

_NATIVE_AVAILABLE = _native is not None and _native.available()
FAST_SAMPLING = True  # False: every decoder samples through the generic step loop (the reference path)
NATIVE_LOOP = _NATIVE_AVAILABLE  # False: the torch loop on the CPU too
# Threads the native loop splits a batch over; 0: torch.get_num_threads(). A server that keeps torch's own
# ops on one thread (OMP_NUM_THREADS=1) still decodes a batch on every core it has.
DECODE_THREADS_ENV = "MUSICVAE_DECODE_THREADS"


def decode_threads() -> int:
    """Threads for one native decode: $MUSICVAE_DECODE_THREADS if set and positive, else torch's intra-op count."""
    value = os.environ.get(DECODE_THREADS_ENV, "").strip()
    try:
        threads = int(value) if value else 0
    except ValueError:
        raise ValueError(f"{DECODE_THREADS_ENV} must be a whole number of threads, got {value!r}") from None
    return threads if threads > 0 else torch.get_num_threads()


@dataclass(frozen=True)
class _Layout:
    """A decoder's weights as the sampling loop reads them (gate rows in the order i, f, o, g)."""

    key: tuple  # (data_ptr, version) of every parameter it was made from
    tokens: Tensor  # layer 0's kernel for the previous token, as rows [output_depth, 4n]
    aux: Tensor  # layer 0's kernel for [z ‖ controls] [4n, z + c]
    bias0: Tensor  # layer 0's bias + forget bias [4n]
    recurrent0: Tensor  # layer 0's kernel for h [4n, n]
    kernels: tuple[Tensor, ...]  # layers 1, 2, …: [W_ih ‖ W_hh] [4n, 2n]
    biases: tuple[Tensor, ...]  # layers 1, 2, …: bias + forget bias [4n]
    out_weight: Tensor  # output projection [D', n]
    out_bias: Tensor  # [D']
    packed: tuple[Tensor, ...] | None  # CPU: recurrent0, kernels, out_weight as the native loop's panels


def _pack(weight: Tensor) -> Tensor:
    """A [N, K] weight as the native loop reads W^T: panels of 16 output columns [ceil(N / 16), K, 16], zero-padded."""
    w_t = F.pad(weight.t(), (0, -weight.shape[0] % 16))
    return w_t.reshape(w_t.shape[0], -1, 16).transpose(0, 1).contiguous()


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _Layout] = weakref.WeakKeyDictionary()


def applies(decoder: BaseLstmDecoder, z: Tensor) -> bool:
    """Whether `decoder.sample` may take this path: inference (no autograd, no dropout, no autocast), fp32."""
    weight = decoder.output_projection.weight
    return (
        FAST_SAMPLING
        and not torch.is_grad_enabled()
        and not (decoder.lstm.training and decoder.lstm.drop > 0)
        and weight.dtype == torch.float32
        and z.dtype == torch.float32
        and not torch.is_autocast_enabled(z.device.type)
    )


def _layout(decoder: BaseLstmDecoder) -> _Layout:
    params = [p for layer in decoder.lstm.layers for p in (layer.weight_ih, layer.weight_hh, layer.bias)]
    params += [decoder.output_projection.weight, decoder.output_projection.bias]
    key = tuple((p.data_ptr(), p._version) for p in params)
    cached = _LAYOUTS.get(decoder)
    if cached is not None and cached.key == key:
        return cached
    layers, n, depth = decoder.lstm.layers, decoder.lstm.units, decoder.output_depth
    order = torch.cat([torch.arange(2 * n), torch.arange(3 * n, 4 * n), torch.arange(2 * n, 3 * n)])
    order = order.to(layers[0].bias.device)
    with torch.no_grad():
        bias = [(layer.bias + layer.forget_bias)[order] for layer in layers]
        w0 = layers[0].weight_ih[order]
        recurrent0 = layers[0].weight_hh[order]
        kernels = tuple(torch.cat([layer.weight_ih, layer.weight_hh], 1)[order] for layer in layers[1:])
        out_weight = decoder.output_projection.weight.detach()
        on_cpu = out_weight.device.type == "cpu"
        layout = _Layout(
            key=key,
            tokens=w0[:, :depth].t().contiguous(),
            aux=w0[:, depth:].contiguous(),
            bias0=bias[0],
            recurrent0=recurrent0,
            kernels=kernels,
            biases=tuple(bias[1:]),
            out_weight=out_weight,
            out_bias=decoder.output_projection.bias.detach(),
            packed=tuple(_pack(w) for w in (recurrent0, *kernels, out_weight)) if on_cpu and _NATIVE_AVAILABLE else None,
        )
    _LAYOUTS[decoder] = layout
    return layout


def sample_categorical(
    decoder: BaseLstmDecoder,
    parts: Sequence[int],
    z: Tensor,
    length: int,
    temperature: float | None,
    controls: Tensor | None = None,
    start_inputs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Free-running decode: (one-hot samples [B, T, sum(parts)], logits [B, T, sum(parts)]).

    `parts`: the widths of the softmaxes the output layer is split into (one for a melody).
    The step-0 input is `start_inputs` (any [B, D] vector; zeros when None), later inputs the samples.
    """
    w = _layout(decoder)
    if controls is None:
        aux_w = F.linear(z, w.aux, w.bias0)  # [B, 4n], the same at every step
    else:
        aux = torch.cat([z[:, None].expand(-1, length, -1), controls[:, :length].to(z.dtype)], -1)
        aux_w = F.linear(aux, w.aux, w.bias0).transpose(0, 1).contiguous()  # [T, B, 4n]
    first = None if start_inputs is None else start_inputs.to(z.dtype) @ w.tokens
    state = decoder._initial_state(z)
    loop = _decode_native if NATIVE_LOOP and w.packed is not None and z.device.type == "cpu" else _decode
    logits, tokens = loop(w, tuple(parts), aux_w, state.h, state.c, first, length, temperature)
    samples = z.new_zeros(z.shape[0], length, sum(parts))  # one-hot by scatter: no host-side range checks
    for p, part in enumerate(samples.split(tuple(parts), -1)):
        part.scatter_(-1, tokens[:, p].t()[..., None], 1.0)
    return samples, logits.transpose(0, 1)


def _decode(
    w: _Layout,
    parts: tuple[int, ...],
    aux_w: Tensor,
    h0: Tensor,
    c0: Tensor,
    first: Tensor | None,
    steps: int,
    temperature: float | None,
) -> tuple[Tensor, Tensor]:
    """The loop: logits [T, B, D'] and the chosen indices [T, parts, B]. Static shapes, no host sync.

    aux_w: layer 0's z/control share with biases, [B, 4n] (constant) or [T, B, 4n]; h0, c0 [L, B, n];
    first: the step-0 token's share [B, 4n] or None (a zero token).
    """
    layers, batch, n = h0.shape
    dev, dtype = h0.device, h0.dtype
    per_step_aux = aux_w.dim() == 3

    def empty(*shape: int, dt: torch.dtype = dtype) -> Tensor:
        return torch.empty(*shape, device=dev, dtype=dt)

    # Gate buffers and their views: sigmoid block (i, f, o), tanh block (g), then i, f, o.
    gates = [empty(batch, 4 * n) for _ in range(layers)]
    acts = [(g[:, : 3 * n], g[:, 3 * n :], g[:, :n], g[:, n : 2 * n], g[:, 2 * n : 3 * n]) for g in gates]
    c = c0.clone()
    cs = c.unbind(0)
    tanh_c = empty(batch, n)
    # pairs[k - 1][a] = layer k's input [h_{k-1} at step t ‖ h_k at step t − 1] for the steps t with t % 2 == a.
    pairs = [empty(2, batch, 2 * n) for _ in range(layers - 1)]
    if layers == 1:
        h_buf = empty(2, batch, n)
        h0_in, h0_out = (h_buf[1], h_buf[0]), (h_buf[0], h_buf[1])
    else:
        h0_in = (pairs[0][1, :, :n], pairs[0][0, :, :n])  # layer 0 reads h_0 at t − 1 ...
        h0_out = (pairs[0][0, :, :n], pairs[0][1, :, :n])  # ... and writes h_0 at t where layer 1 reads it
    h0_in[0].copy_(h0[0])
    outs = []  # outs[k - 1][a]: where layer k writes its h at step t (its own input at t + 1)
    for k in range(1, layers):
        pairs[k - 1][0, :, n:].copy_(h0[k])
        outs.append((pairs[k - 1][1, :, n:], pairs[k - 1][0, :, n:]))
    feeds = [(pairs[k][0, :, :n], pairs[k][1, :, :n]) for k in range(1, layers - 1)]  # middle layers' copies
    top = h0_out if layers == 1 else outs[-1]
    kernels_t = [k.t() for k in w.kernels]
    recurrent0_t, out_t = w.recurrent0.t(), w.out_weight.t()

    logits = empty(steps, batch, w.out_weight.shape[0])
    logit_steps = logits.unbind(0)
    part_steps = [p.unbind(0) for p in logits.split(parts, -1)] if len(parts) > 1 else [logit_steps]
    chosen = torch.empty(steps, len(parts), batch, device=dev, dtype=torch.long)
    chosen_steps = [s.unbind(0) for s in chosen.unbind(0)]
    token_rows = w.tokens.split(parts, 0)
    gathered = empty(batch, 4 * n) if len(parts) > 1 else None
    greedy = temperature is None
    if not greedy:
        # `multinomial` samples in float32 from softmax(logits.float() / τ): the same buffers here.
        noise = [empty(batch, d, dt=torch.float32) for d in parts]
        scaled = [empty(batch, d, dt=torch.float32) for d in parts]
        probs = [empty(batch, d, dt=torch.float32) for d in parts]

    for t in range(steps):
        a = t & 1
        aux_t = aux_w[t] if per_step_aux else aux_w
        g = gates[0]
        if t == 0:
            if first is None:
                g.copy_(aux_t)
            else:
                torch.add(aux_t, first, out=g)
        else:
            previous = chosen_steps[t - 1]
            torch.index_select(token_rows[0], 0, previous[0], out=g)
            for p in range(1, len(parts)):
                torch.index_select(token_rows[p], 0, previous[p], out=gathered)
                g.add_(gathered)
            g.add_(aux_t)
        g.addmm_(h0_in[a], recurrent0_t)
        _cell(acts[0], cs[0], tanh_c, h0_out[a])
        for k in range(1, layers):
            torch.addmm(w.biases[k - 1], pairs[k - 1][a], kernels_t[k - 1], out=gates[k])
            _cell(acts[k], cs[k], tanh_c, outs[k - 1][a])
            if k < layers - 1:
                feeds[k - 1][a].copy_(outs[k - 1][a])
        torch.addmm(w.out_bias, top[a], out_t, out=logit_steps[t])
        for p in range(len(parts)):
            if greedy:
                torch.argmax(part_steps[p][t], -1, out=chosen_steps[t][p])
            else:
                q = noise[p].exponential_()
                torch.div(part_steps[p][t], temperature, out=scaled[p])
                torch.softmax(scaled[p], -1, out=probs[p])
                torch.argmax(probs[p].div_(q), -1, out=chosen_steps[t][p])
    return logits, chosen


def _decode_native(
    w: _Layout,
    parts: tuple[int, ...],
    aux_w: Tensor,
    h0: Tensor,
    c0: Tensor,
    first: Tensor | None,
    steps: int,
    temperature: float | None,
) -> tuple[Tensor, Tensor]:
    """`_decode` in one native call (same arguments, same results)."""
    layers, batch, n = h0.shape
    assert w.packed is not None
    aux_w, h0, c0 = aux_w.contiguous(), h0.contiguous(), c0.contiguous()
    first = None if first is None else first.contiguous()
    logits = torch.empty(steps, batch, w.out_weight.shape[0], dtype=torch.float32)
    chosen = torch.empty(steps, len(parts), batch, dtype=torch.long)
    # The reference draws an Exp(1) tensor [batch, part] per step and part, in that order: one tensor of
    # them all is the same numbers (the CPU generator fills serially) and leaves the generator as they do.
    noise = None if temperature is None else torch.empty(steps * batch * sum(parts), dtype=torch.float32).exponential_()

    def address(t: Tensor | None) -> int:
        return 0 if t is None else t.data_ptr()

    _native.decode(
        (layers, n, steps, batch, logits.shape[-1], batch * 4 * n if aux_w.dim() == 3 else 0),
        tuple(map(address, (w.tokens, aux_w, first, h0, c0, w.packed[-1], w.out_bias, noise, logits, chosen))),
        tuple(t.data_ptr() for t in w.packed[:-1]),
        tuple(b.data_ptr() for b in w.biases),
        parts,
        1.0 if temperature is None else float(temperature),
        decode_threads(),
    )
    return logits, chosen


def _cell(acts: tuple[Tensor, ...], c: Tensor, tanh_c: Tensor, h_out: Tensor) -> None:
    """LSTM cell on pre-activation gates (i, f, o, g) in place: c ← σ(f)·c + σ(i)·tanh(g); h_out ← σ(o)·tanh(c)."""
    sigmoid_block, g, i, f, o = acts
    sigmoid_block.sigmoid_()
    g.tanh_()
    c.mul_(f)
    c.addcmul_(i, g)
    torch.tanh(c, out=tanh_c)
    torch.mul(o, tanh_c, out=h_out)


# --- CUDA graphs ------------------------------------------------------------------------------------


class CudaGraphDecode:
    """`model.decode(z, length, temperature, controls).samples` for one batch shape, as a CUDA graph.

    The decode (conductor, every segment's sampling loop, the one-hot samples) is captured once and
    replayed with new z (and controls) copied into static inputs. Sampling inside the graph draws from
    the CUDA generator through PyTorch's graph-safe RNG (each replay reads the generator's seed and
    offset and advances it by what the capture used), so a seeded replay gives the tokens the same
    eager calls would give. Warm-up and capture run under `fork_rng`: they do not move the caller's RNG.
    Calls are serialised (the static buffers are shared) and return a copy of the graph's output.
    """

    def __init__(
        self,
        model: MusicVAE,
        rows: int,
        length: int,
        temperature: float | None,
        control_shape: tuple[int, int] | None = None,
    ) -> None:
        weight = model.mu.weight
        self.z = torch.zeros(rows, model.hparams.z_size, device=weight.device, dtype=weight.dtype)
        self.controls = (
            None if control_shape is None else torch.zeros(rows, *control_shape, device=weight.device)
        )
        self.lock = threading.Lock()

        def run() -> Tensor:
            return model.decode(self.z, length, temperature, self.controls).samples

        with torch.random.fork_rng(devices=[weight.device]):
            side = torch.cuda.Stream(weight.device)
            side.wait_stream(torch.cuda.current_stream(weight.device))
            with torch.cuda.stream(side):  # lazy set-up (cuBLAS handles, weight layouts) outside the capture
                run()
            torch.cuda.current_stream(weight.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # a server's other threads may run
                self.samples = run()

    def __call__(self, z: Tensor, controls: Tensor | None = None) -> Tensor:
        with self.lock:
            self.z.copy_(z)
            if self.controls is not None and controls is not None:
                self.controls.copy_(controls)
            self.graph.replay()
            return self.samples.clone()


@contextlib.contextmanager
def fast_sampling(enabled: bool):
    """Switch this path on or off for a block (benchmarks and tests compare it with the reference)."""
    global FAST_SAMPLING
    saved, FAST_SAMPLING = FAST_SAMPLING, enabled
    try:
        yield
    finally:
        FAST_SAMPLING = saved
