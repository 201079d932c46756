"""RNN-NADE decoder (spec §3.5): Magenta's `Nade` and `MultiLabelRnnNadeDecoder`.

A NADE models D binary labels as a product of conditionals. Its two weight tensors keep TF's
shapes so a checkpoint copies straight in: w_enc V [D, 1, H] and w_dec_t W [D, H, 1]. The biases
are not parameters of the NADE: at every time step the decoder LSTM's output projection emits
them, [b_enc (H) ‖ b_dec (D)]. With x ∈ {0, 1}^D,

    a_1 = b_enc,   a_{i+1} = a_i + x_i V_i          (so a_i = b_enc + Σ_{k<i} x_k V_k)
    l_i = b_dec_i + σ(a_i) · W_i,   p_i = σ(l_i)
    log p(x) = Σ_i x_i log(p_i + 1e-6) + (1 − x_i) log(1 − p_i + 1e-6)

The log-probability needs only the known x, so all D conditionals come from one matmul;
sampling feeds each drawn label into the next conditional and runs dimension by dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from musicvae.nn.decoders import BaseLstmDecoder
from musicvae.nn.metrics import Stats, segment_sum

LOG_EPSILON = 1e-6  # Magenta's _safe_log lower bound, inside the log
Copier = Callable[[np.ndarray], None]


def _safe_log(x: Tensor) -> Tensor:
    return torch.log(x + LOG_EPSILON)


class Nade(nn.Module):
    """Magenta's `Nade(num_dims, num_hidden, internal_bias=False)`: biases come from outside."""

    def __init__(self, num_dims: int, num_hidden: int) -> None:
        super().__init__()
        self.num_dims, self.num_hidden = num_dims, num_hidden
        self.w_enc = nn.Parameter(torch.empty(num_dims, 1, num_hidden))
        self.w_dec_t = nn.Parameter(torch.empty(num_dims, num_hidden, 1))
        # tf.truncated_normal_initializer(stddev=1/√D): redraws beyond two standard deviations.
        std = 1.0 / math.sqrt(num_dims)
        for w in (self.w_enc, self.w_dec_t):
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)

    def log_prob(self, x: Tensor, b_enc: Tensor, b_dec: Tensor) -> tuple[Tensor, Tensor]:
        """log p(x) [N] and the conditionals p_i [N, D] of x [N, D] given b_enc [N, H], b_dec [N, D]."""
        n, d, h = x.shape[0], self.num_dims, self.num_hidden
        # a_i − b_enc = Σ_k x_k [k < i] V_k for every i at once: one matmul of x [N, D] with the
        # weights masked to the labels before each i, laid out [k, (i, h)].
        before = torch.ones(d, d, dtype=torch.bool, device=x.device).triu(1)  # before[k, i] = k < i
        a = b_enc[:, None] + (x @ (before[:, :, None] * self.w_enc).view(d, d * h)).view(n, d, h)
        logits = b_dec + torch.einsum("nih,ih->ni", torch.sigmoid(a), self.w_dec_t[:, :, 0])
        cond_probs = torch.sigmoid(logits)
        log_p = x * _safe_log(cond_probs) + (1 - x) * _safe_log(1 - cond_probs)
        return log_p.sum(dim=-1), cond_probs

    @torch.no_grad()  # draws are not differentiable (TF gives them no gradient either)
    def sample(self, b_enc: Tensor, b_dec: Tensor, temperature: float | None = None) -> Tensor:
        """Draw x [N, D] label by label: Bernoulli(l_i / τ), or p_i ≥ 0.5 when temperature is None."""
        a, labels = b_enc, []
        for i in range(self.num_dims):
            logit = b_dec[:, i] + torch.sigmoid(a) @ self.w_dec_t[i, :, 0]
            if temperature is None:
                label = (torch.sigmoid(logit) >= 0.5).to(a.dtype)
            else:
                label = torch.bernoulli(torch.sigmoid(logit / temperature))
            a = a + label[:, None] * self.w_enc[i]
            labels.append(label)
        return torch.stack(labels, dim=-1)


class MultiLabelRnnNadeDecoder(BaseLstmDecoder):
    """Flat LSTM decoder (spec §3.3) whose per-step multi-hot output is modelled by a NADE.

    The output projection has H + D units: [b_enc ‖ b_dec] of the step's NADE. Per-step loss
    = −log p(x_t); metrics (teacher forced, labels predicted as p_i ≥ 0.5 given the true earlier
    labels): `metrics/accuracy` = share of valid steps with all D labels right,
    `metrics/recall` and `metrics/precision` pooled over every label of every valid step.
    """

    def __init__(
        self,
        output_depth: int,
        z_size: int,
        control_depth: int,
        rnn_sizes: Sequence[int],
        num_hidden: int,
        keep_prob: float = 1.0,
    ) -> None:
        rnn_output_depth = num_hidden + output_depth  # [b_enc ‖ b_dec]
        super().__init__(output_depth, z_size, control_depth, rnn_sizes, keep_prob, rnn_output_depth)
        self.nade = Nade(output_depth, num_hidden)

    def _biases(self, rnn_output: Tensor) -> tuple[Tensor, Tensor]:
        b_enc, b_dec = rnn_output.float().split([self.nade.num_hidden, self.output_depth], dim=-1)
        return b_enc, b_dec

    def _step_loss(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int
    ) -> tuple[Tensor, Stats]:
        b_enc, b_dec = self._biases(rnn_output.flatten(0, 1))
        log_p, cond_probs = self.nade.log_prob(x_target.flatten(0, 1).float(), b_enc, b_dec)
        step_loss = -log_p.view(mask.shape)
        return step_loss, self._stats(cond_probs.view(x_target.shape), x_target, mask, segments)

    @staticmethod
    def _stats(cond_probs: Tensor, x_target: Tensor, mask: Tensor, segments: int) -> Stats:
        with torch.no_grad():
            truth, predicted = x_target > 0.5, cond_probs >= 0.5
            valid = mask[..., None]
            true_pos = segment_sum((truth & predicted & valid).float(), segments).sum(-1)
            return {
                "metrics/accuracy": (
                    segment_sum(((truth == predicted).all(dim=-1) & mask).float(), segments),
                    segment_sum(mask.float(), segments),
                ),
                "metrics/recall": (true_pos, segment_sum((truth & valid).float(), segments).sum(-1)),
                "metrics/precision": (true_pos, segment_sum((predicted & valid).float(), segments).sum(-1)),
            }

    def _sample(self, rnn_output: Tensor, temperature: float | None) -> Tensor:
        return self.nade.sample(*self._biases(rnn_output), temperature)

    def magenta_variables(self, scope: str) -> dict[str, tuple[tuple[int, ...], Copier]]:
        """The NADE's TF variables `<scope>/nade/{w_enc,w_dec_t}` (same shapes) for the checkpoint loader."""

        def copier(param: nn.Parameter) -> Copier:
            return lambda value: param.copy_(torch.from_numpy(value))

        return {
            f"{scope}/nade/{name}": (tuple(param.shape), copier(param))
            for name, param in (("w_enc", self.nade.w_enc), ("w_dec_t", self.nade.w_dec_t))
        }
