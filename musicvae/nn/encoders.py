"""Encoders: a sequence [B, T, D] and its lengths [B] -> one vector per example (spec §3.1).

The μ/σ heads live in `MusicVAE`, as in Magenta (`encoder/mu`, `encoder/sigma`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from musicvae.nn.lstm import LstmStack


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each x[b, :lengths[b]] in time and leave the padding where it is (tf.reverse_sequence)."""
    steps = torch.arange(x.shape[1], device=x.device)
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index[..., None].expand_as(x))


class BidirectionalLstmEncoder(nn.Module):
    """Stacked bidirectional LSTM; returns [last layer's final fw h ‖ final bw h] (Magenta's
    `stack_bidirectional_dynamic_rnn` with per-example lengths).

    Layer ℓ+1 reads [fw_t ‖ bw_t] of layer ℓ. The forward direction's final h is its output at the
    last valid step; the backward direction reads each sequence from its last valid step back to
    step 0 (so padding never enters it) and its final h is the state after step 0. Each direction
    of each layer is its own one-layer cell with its own input dropout, as in Magenta.
    """

    def __init__(self, input_size: int, sizes: Sequence[int], keep_prob: float = 1.0) -> None:
        super().__init__()
        widths = [input_size] + [2 * s for s in sizes[:-1]]
        self.fw = nn.ModuleList(LstmStack(w, [s], keep_prob) for w, s in zip(widths, sizes))
        self.bw = nn.ModuleList(LstmStack(w, [s], keep_prob) for w, s in zip(widths, sizes))
        self.output_size = 2 * sizes[-1]

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        batch = x.shape[0]
        last = (lengths.to(x.device) - 1).clamp(min=0)  # Magenta's get_final: index max(0, len - 1)
        for fw, bw in zip(self.fw, self.bw):
            out_fw, _ = fw(x, fw.zero_state(batch, x))
            out_bw, _ = bw(reverse_within_length(x, lengths), bw.zero_state(batch, x))
            out_bw = reverse_within_length(out_bw, lengths)  # back to input order
            x = torch.cat([out_fw, out_bw], dim=-1)
        final_fw = out_fw[torch.arange(batch, device=x.device), last]
        return torch.cat([final_fw, out_bw[:, 0]], dim=-1)


class HierarchicalLstmEncoder(nn.Module):
    """Magenta's `HierarchicalLstmEncoder`: one bidirectional encoder per level (same sizes).

    level_lengths [16, 16]: level 0 encodes each 16-step bar (all bars of the batch in one call,
    weights shared), level 1 encodes the sequence of 16 bar embeddings. Level 0 uses the per-bar
    valid lengths; higher levels always see full sequences. Magenta only accepts total lengths of 0
    or max_seq_len; other lengths here mark the bars past the end as partly or wholly padding.
    """

    def __init__(
        self, input_size: int, sizes: Sequence[int], level_lengths: Sequence[int], keep_prob: float = 1.0
    ) -> None:
        super().__init__()
        self.level_lengths = tuple(level_lengths)
        widths = [input_size] + [2 * sizes[-1]] * (len(level_lengths) - 1)
        self.levels = nn.ModuleList(BidirectionalLstmEncoder(w, sizes, keep_prob) for w in widths)
        self.output_size = self.levels[-1].output_size

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        batch, total, _ = x.shape
        if total != math.prod(self.level_lengths):
            raise ValueError(
                f"hierarchical encoder needs sequences of {math.prod(self.level_lengths)} steps, got {total}"
            )
        for level, (encoder, length) in enumerate(zip(self.levels, self.level_lengths)):
            splits = x.shape[1] // length
            if level == 0:
                starts = torch.arange(splits, device=x.device) * length
                split_lengths = (lengths.to(x.device)[:, None] - starts).clamp(0, length)
            else:
                split_lengths = torch.full((batch, splits), length, device=x.device)
            x = encoder(x.reshape(batch * splits, length, -1), split_lengths.flatten()).view(
                batch, splits, -1
            )
        return x[:, 0]
