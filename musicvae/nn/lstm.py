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
from collections.abc import Sequence
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
