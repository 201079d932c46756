"""LSTM stacks with TensorFlow `LSTMBlockCell` semantics, run on PyTorch's fused (cuDNN) kernels.

Magenta builds every LSTM as `MultiRNNCell([DropoutWrapper(LSTMBlockCell(n), input_keep_prob)])`.
One `LSTMBlockCell` owns a kernel [in + n, 4n] with gate blocks (i, j, f, o) along the columns and
one bias [4n] that starts at 0; `forget_bias = 1.0` is added to the f block at run time and is
not stored. No peepholes, no cell clipping. The cell equations are those of `torch.lstm`:

    i, f, g, o = split(x W_ihᵀ + h W_hhᵀ + b + b_forget)        (PyTorch gate order)
    c' = σ(f) c + σ(i) tanh(g);   h' = σ(o) tanh(c')

Parameter layout and the TF mapping (a fixed permutation, see `LstmLayer.load_tf_`):

    W = kernelᵀ                                   [4n, in + n], row blocks (i, j, f, o)
    W' = W with row blocks reordered to (i, f, j, o)    (PyTorch's (i, f, g, o), g = TF's j)
    weight_ih = W'[:, :in]     weight_hh = W'[:, in:]     bias = bias reordered the same way

`bias` is the only trainable bias, so a layer has exactly TF's (in + n)·4n + 4n parameters. The
+1.0 forget bias lives in a non-persistent buffer passed to `torch.lstm` as its second bias.

`DropoutWrapper(input_keep_prob)` drops each layer's input, layer 0 included, with a fresh mask at
every step, only in training. Dropping the whole [B, T, D] input elementwise before layer 0 and
letting `torch.lstm` drop between layers (its `dropout` acts on each non-final layer's output,
i.e. the next layer's input) is exactly that. The stack state is `LstmState(h, c)` with shapes
[layers, B, n]; Magenta's flat state order [c₀, h₀, c₁, h₁, …] is handled by `state_from_flat`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORGET_BIAS = 1.0  # LSTMBlockCell's default, added at run time


class LstmState(NamedTuple):
    h: Tensor  # [layers, B, units]
    c: Tensor  # [layers, B, units]


def state_from_flat(flat: Tensor, num_layers: int) -> LstmState:
    """Split a [B, 2·layers·units] vector in Magenta's order [c₀, h₀, c₁, h₁, …] into an LstmState."""
    c_h = flat.unflatten(-1, (num_layers, 2, -1)).transpose(0, 1)  # [layers, B, 2, units]
    return LstmState(h=c_h[:, :, 1].contiguous(), c=c_h[:, :, 0].contiguous())


class LstmLayer(nn.Module):
    """The parameters of one `LSTMBlockCell`, in PyTorch gate order (see the module docstring)."""

    def __init__(self, input_size: int, units: int) -> None:
        super().__init__()
        self.input_size, self.units = input_size, units
        self.weight_ih = nn.Parameter(torch.empty(4 * units, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * units, units))
        self.bias = nn.Parameter(torch.zeros(4 * units))
        forget = torch.zeros(4 * units)
        forget[units : 2 * units] = FORGET_BIAS
        self.register_buffer("forget_bias", forget, persistent=False)
        # TF's default for the kernel: Glorot-uniform over its [in + n, 4n] shape.
        limit = math.sqrt(6.0 / (input_size + units + 4 * units))
        nn.init.uniform_(self.weight_ih, -limit, limit)
        nn.init.uniform_(self.weight_hh, -limit, limit)

    def flat_weights(self) -> list[Tensor]:
        return [self.weight_ih, self.weight_hh, self.bias, self.forget_bias]

    @torch.no_grad()
    def load_tf_(self, kernel: Tensor, bias: Tensor) -> None:
        """Copy a TF `LSTMBlockCell` kernel [in + n, 4n] and bias [4n] (gate order i, j, f, o)."""
        if tuple(kernel.shape) != (self.input_size + self.units, 4 * self.units):
            raise ValueError(
                f"kernel shape {tuple(kernel.shape)} does not fit LSTM {self.input_size}->{self.units}"
            )
        order = [0, 2, 1, 3]  # TF (i, j, f, o) -> PyTorch (i, f, g=j, o)
        weight = kernel.t().unflatten(0, (4, self.units))[order].flatten(0, 1)
        self.weight_ih.copy_(weight[:, : self.input_size])
        self.weight_hh.copy_(weight[:, self.input_size :])
        self.bias.copy_(bias.unflatten(0, (4, self.units))[order].flatten())


class LstmStack(nn.Module):
    """Magenta's `rnn_cell(sizes, dropout_keep_prob)`: stacked LSTMBlockCells with input dropout.

    All layers must have the same size so that the stack runs as one fused `torch.lstm` call
    (every Magenta decoder and conductor uses equal sizes; encoders are stacks of one layer).
    """

    def __init__(self, input_size: int, sizes: Sequence[int], keep_prob: float = 1.0) -> None:
        super().__init__()
        if len(set(sizes)) != 1:
            raise ValueError(f"LstmStack needs equal layer sizes, got {list(sizes)}")
        self.units, self.num_layers = sizes[0], len(sizes)
        self.drop = 1.0 - keep_prob
        self.layers = nn.ModuleList(
            LstmLayer(input_size if i == 0 else self.units, self.units) for i in range(self.num_layers)
        )

    @property
    def state_size(self) -> int:
        """Width of the flat [c₀, h₀, c₁, h₁, …] state vector."""
        return 2 * self.units * self.num_layers

    def zero_state(self, batch_size: int, like: Tensor) -> LstmState:
        zeros = like.new_zeros(self.num_layers, batch_size, self.units)
        return LstmState(zeros, zeros)

    def forward(self, x: Tensor, state: LstmState) -> tuple[Tensor, LstmState]:
        """Run over x [B, T, in]; returns the top layer's h at every step [B, T, n] and the final state.

        A single step is the same call with T = 1.
        """
        x = F.dropout(x, self.drop, self.training)
        weights = [w for layer in self.layers for w in layer.flat_weights()]
        # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        out, h, c = torch.lstm(
            x, (state.h, state.c), weights, True, self.num_layers, self.drop, self.training, False, True
        )
        return out, LstmState(h, c)


# --- step kernels ------------------------------------------------------------------------------------
#
# Autoregressive decoding (scheduled sampling in training, and free sampling) feeds each step's own
# output back in, so it cannot use one fused call over the sequence; one `torch.lstm` call per step
# lowers on the CPU to oneDNN's RNN primitive, whose per-call cost dominates there. `lstm_decode` runs
# the same cell equations (numerics equal up to float rounding) with a hand-written backward:
#
# * layer 0 reads [token ‖ aux]; the aux part (z, and controls if any) is projected once for the
#   whole sequence, and once per sequence when it is constant in time (z alone);
# * each layer's step is one matmul on [input ‖ h_prev], kept in a per-layer buffer that is also
#   the saved activation for the weight gradient, which is then one matmul over all steps (instead
#   of one small matmul per step); no gradient is computed for the chosen tokens;
# * the output projection and the token choice run inside the step loop.
#
# Sequences with a known input (encoders, teacher forcing) keep the fused `torch.lstm` (oneDNN on
# the CPU, as fast as a hand-written recurrence there; cuDNN on CUDA). Dropout is not supported by
# the kernel: with dropout active the decoder keeps its per-step `torch.lstm` path. Under autocast
# the kernel runs in the autocast dtype.

STEP_KERNELS = "cpu"  # "cpu": use the step kernels on the CPU only; "all": everywhere; "off": never
# MKL's sgemm rounds a row differently when a matmul has fewer than ~8 rows (it switches kernels), so a
# result would depend on the batch size; smaller batches are padded with zero rows to keep every row's
# numbers independent of its batch (as `torch.lstm`'s are).
MIN_ROWS = 8


def use_step_kernels(x: Tensor, stack: LstmStack) -> bool:
    if STEP_KERNELS == "off" or (stack.training and stack.drop > 0):
        return False
    return STEP_KERNELS == "all" or x.device.type == "cpu"


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def _cell_forward(g: Tensor, c_prev: Tensor, c: Tensor, tanh_c: Tensor, h: Tensor, n: int) -> None:
    """Pre-activation gates g [B, 4n] (i, f, g, o) -> activations in place; c, tanh(c), h into the outs."""
    g[:, : 2 * n].sigmoid_()
    g[:, 2 * n : 3 * n].tanh_()
    g[:, 3 * n :].sigmoid_()
    torch.mul(g[:, n : 2 * n], c_prev, out=c)
    c.addcmul_(g[:, :n], g[:, 2 * n : 3 * n])
    torch.tanh(c, out=tanh_c)
    torch.mul(g[:, 3 * n :], tanh_c, out=h)


def _cell_backward(
    g: Tensor, c_prev: Tensor, tanh_c: Tensor, dh: Tensor, dc: Tensor, dg: Tensor, tmp: Tensor, n: int
) -> None:
    """Gate gradients into dg [B, 4n] from dh, dc (dc is updated to the gradient w.r.t. c_prev).

    g holds the activations (i, f, g, o); tmp is scratch of g's shape.
    """
    i, f, gg, o = g[:, :n], g[:, n : 2 * n], g[:, 2 * n : 3 * n], g[:, 3 * n :]
    di, df, dgg, do = dg[:, :n], dg[:, n : 2 * n], dg[:, 2 * n : 3 * n], dg[:, 3 * n :]
    torch.addcmul(g, g, g, value=-1.0, out=tmp)  # σ' = s − s² (the g block is replaced below)
    t_g = tmp[:, 2 * n : 3 * n]
    torch.mul(gg, gg, out=t_g)
    t_g.neg_().add_(1.0)  # tanh' = 1 − g²
    torch.mul(dh, tanh_c, out=do)  # do = dh · tanh(c) · σ'(o)
    do.mul_(tmp[:, 3 * n :])
    torch.mul(tanh_c, tanh_c, out=di)  # dc += dh · o · (1 − tanh²(c)); di is scratch here
    di.neg_().add_(1.0).mul_(o).mul_(dh)
    dc.add_(di)
    torch.mul(dc, gg, out=di)
    di.mul_(tmp[:, :n])
    torch.mul(dc, c_prev, out=df)
    df.mul_(tmp[:, n : 2 * n])
    torch.mul(dc, i, out=dgg)
    dgg.mul_(t_g)
    dc.mul_(f)


class _LstmDecode(torch.autograd.Function):
    """A stack decoding its own tokens: see `lstm_decode`. Weights are per layer [4n, in_k + n]."""

    @staticmethod
    def forward(ctx, choose, rows, first_token, aux_w, h0, c0, w_out, b_out, *weights):
        num_layers, batch, n = h0.shape  # rows <= batch are real, the rest is padding
        depth, steps = first_token.shape[-1], aux_w.shape[1]
        widths = [depth] + [n] * (num_layers - 1)
        biases, weights = weights[:num_layers], weights[num_layers:]
        # xs[k][t] = [layer k's input at step t ‖ its h after step t − 1]; xs[k][steps] holds the final h.
        xs = [h0.new_empty(steps + 1, batch, w + n) for w in widths]
        gates = [h0.new_empty(steps, batch, 4 * n) for _ in range(num_layers)]
        cs = [h0.new_empty(steps + 1, batch, n) for _ in range(num_layers)]
        tanh_cs = [h0.new_empty(steps, batch, n) for _ in range(num_layers)]
        logits = h0.new_empty(steps, batch, w_out.shape[0])
        for k in range(num_layers):
            xs[k][0, :, widths[k] :] = h0[k]
            cs[k][0] = c0[k]
        xs[0][0, :, :depth] = first_token
        w_ts, w_out_t = [w.t() for w in weights], w_out.t()
        h = h0[0]
        for t in range(steps):
            for k in range(num_layers):
                g = gates[k][t]
                torch.addmm(aux_w[:, t] if k == 0 else biases[k], xs[k][t], w_ts[k], out=g)
                h = xs[k][t + 1, :, widths[k] :]
                _cell_forward(g, cs[k][t], cs[k][t + 1], tanh_cs[k][t], h, n)
                if k + 1 < num_layers:
                    xs[k + 1][t, :, :n] = h
            torch.addmm(b_out, h, w_out_t, out=logits[t])
            xs[0][t + 1, :rows, :depth] = choose(t, logits[t, :rows])
        ctx.save_for_backward(w_out, *weights, *xs, *gates, *cs, *tanh_cs)
        ctx.dims = (num_layers, depth, n)
        tokens = xs[0][1:, :, :depth]
        ctx.mark_non_differentiable(tokens)
        h_final = torch.stack([x[steps, :, w:] for x, w in zip(xs, widths)])
        c_final = torch.stack([c[steps] for c in cs])
        return logits, tokens, h_final, c_final

    @staticmethod
    def backward(ctx, d_logits, d_tokens, d_h, d_c):
        num_layers, depth, n = ctx.dims
        saved = ctx.saved_tensors
        w_out, weights = saved[0], saved[1 : 1 + num_layers]
        xs, gates, cs, tanh_cs = (
            saved[1 + num_layers * (1 + j) : 1 + num_layers * (2 + j)] for j in range(4)
        )
        steps, batch = gates[0].shape[:2]
        widths = [depth] + [n] * (num_layers - 1)
        top = xs[-1][1:, :, widths[-1] :]  # top layer's h at every step [T, B, n]
        d_top = d_logits @ w_out if d_logits is not None else None
        dh = [d_h[k].clone() if d_h is not None else top.new_zeros(batch, n) for k in range(num_layers)]
        dc = [d_c[k].clone() if d_c is not None else top.new_zeros(batch, n) for k in range(num_layers)]
        d_gates = [torch.empty_like(g) for g in gates]
        tmp = top.new_empty(batch, 4 * n)
        for t in reversed(range(steps)):
            for k in reversed(range(num_layers)):
                if k == num_layers - 1 and d_top is not None:
                    dh[k].add_(d_top[t])
                dg = d_gates[k][t]
                _cell_backward(gates[k][t], cs[k][t], tanh_cs[k][t], dh[k], dc[k], dg, tmp, n)
                if k > 0:
                    dx = dg @ weights[k]  # [B, n + n]: the layer below's h at t, this layer's h at t − 1
                    dh[k - 1].add_(dx[:, :n])
                    dh[k].copy_(dx[:, n:])
                else:
                    torch.mm(dg, weights[0][:, depth:], out=dh[0])
        d_w_out = d_b_out = None
        if d_logits is not None:
            d_w_out = d_logits.reshape(-1, d_logits.shape[-1]).t() @ top.reshape(-1, n)
            d_b_out = d_logits.sum((0, 1))
        d_weights = [dg.view(-1, 4 * n).t() @ x[:steps].view(-1, x.shape[-1]) for dg, x in zip(d_gates, xs)]
        d_biases = [None] + [dg.sum((0, 1)) for dg in d_gates[1:]]
        d_aux = d_gates[0].transpose(0, 1)
        d_state = (torch.stack(dh), torch.stack(dc))
        return (None, None, None, d_aux, *d_state, d_w_out, d_b_out, *d_biases, *d_weights)


def lstm_decode(
    stack: LstmStack,
    projection: nn.Linear,
    first_token: Tensor,
    aux: Tensor,
    state: LstmState,
    choose: Callable[[int, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Autoregressive decoding on the step kernels (no dropout).

    Step t reads [token_t ‖ aux[:, t]] (token_0 = first_token [B, D]); its output-layer values are
    projection(h_top) and token_{t+1} = choose(t, those values) (called without gradient). Returns
    (output-layer values [B, T, D'], chosen tokens [B, T, D]); gradients flow to the weights, aux
    and the initial state, not through the chosen tokens.
    """
    depth, rows, token_dtype = first_token.shape[-1], first_token.shape[0], first_token.dtype
    if rows < MIN_ROWS:
        pad = MIN_ROWS - rows
        steps = aux.shape[1]
        constant = steps > 0 and aux.stride(1) == 0
        first_token = F.pad(first_token, (0, 0, 0, pad))
        aux = F.pad(aux[:, :1] if constant else aux, (0, 0, 0, 0, 0, pad))
        aux = aux.expand(-1, steps, -1) if constant else aux
        state = LstmState(F.pad(state.h, (0, 0, 0, pad)), F.pad(state.c, (0, 0, 0, pad)))
    layers = stack.layers
    w0 = layers[0].weight_ih
    bias0 = layers[0].bias + layers[0].forget_bias
    dtype = _autocast_dtype(aux.device)
    with torch.autocast(aux.device.type, enabled=False):
        if aux.shape[1] > 0 and aux.stride(1) == 0:  # constant in time (z alone): project once
            aux_w = F.linear(aux[:, 0], w0[:, depth:], bias0)[:, None].expand(-1, aux.shape[1], -1)
        else:
            aux_w = F.linear(aux, w0[:, depth:], bias0)
        weights = [torch.cat([w0[:, :depth], layers[0].weight_hh], 1)]
        weights += [torch.cat([layer.weight_ih, layer.weight_hh], 1) for layer in layers[1:]]
        biases = [bias0] + [layer.bias + layer.forget_bias for layer in layers[1:]]
        tensors = [first_token, aux_w, state.h, state.c, projection.weight, projection.bias]
        tensors += [*biases, *weights]
        if dtype is not None:
            tensors = [v.to(dtype) for v in tensors]
        else:
            tensors[0] = tensors[0].to(aux_w.dtype)
        logits, tokens, _, _ = _LstmDecode.apply(choose, rows, *tensors)
    return logits.transpose(0, 1)[:rows], tokens.transpose(0, 1)[:rows].to(token_dtype)
