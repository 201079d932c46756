"""GrooVAE decoder (spec §3.6): Magenta's `GrooveLstmDecoder`.

A flat LSTM decoder (spec §3.3) with one output of 3·I values per step for I drum instruments,
split into thirds [hits ‖ velocities ‖ offsets]:

* hits: σ(logit), binary log loss with ε = 1e-7 inside the logs (tf.losses.log_loss);
* velocities: σ(logit), squared error against the [0, 1] target;
* offsets: tanh(logit), squared error against the [−1, 1] target.

The per-step loss is the sum over all 3·I terms. Sampling draws hits ~ Bernoulli(logit / τ)
(temperature None: hit iff logit > 0, the τ → 0 limit) and takes velocities and offsets
deterministically; that [hits ‖ velocities ‖ offsets] is the next step's input. Control
sequences (hits_as_controls) need nothing here: `BaseLstmDecoder` appends them to every step's
input and `MusicVAE.encode` to the encoder's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from musicvae.nn.decoders import BaseLstmDecoder
from musicvae.nn.metrics import Stats, segment_sum

LOG_LOSS_EPSILON = 1e-7  # tf.losses.log_loss's default


class GrooveLstmDecoder(BaseLstmDecoder):
    """Metrics `metrics/{hits,velocities,offsets}_loss`: each part's per-step loss, mean over valid steps."""

    def __init__(
        self,
        output_depth: int,
        z_size: int,
        control_depth: int,
        rnn_sizes: Sequence[int],
        keep_prob: float = 1.0,
    ) -> None:
        if output_depth % 3:
            raise ValueError(f"a groove output is [hits | velocities | offsets], got depth {output_depth}")
        super().__init__(output_depth, z_size, control_depth, rnn_sizes, keep_prob)

    @staticmethod
    def activate(rnn_output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(hit probabilities, velocities, offsets) from the raw output-layer values."""
        hits, velocities, offsets = rnn_output.float().chunk(3, dim=-1)
        return torch.sigmoid(hits), torch.sigmoid(velocities), torch.tanh(offsets)

    def _step_loss(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int
    ) -> tuple[Tensor, Stats]:
        p_hit, velocities, offsets = self.activate(rnn_output)
        target_hits, target_velocities, target_offsets = x_target.float().chunk(3, dim=-1)
        # Probabilities (not logits) go into the logs, as in TF, so a saturated σ costs -log(1e-7).
        hits_loss = -(
            target_hits * torch.log(p_hit + LOG_LOSS_EPSILON)
            + (1 - target_hits) * torch.log(1 - p_hit + LOG_LOSS_EPSILON)
        ).sum(dim=-1)
        velocities_loss = (target_velocities - velocities).square().sum(dim=-1)
        offsets_loss = (target_offsets - offsets).square().sum(dim=-1)
        with torch.no_grad():
            count = segment_sum(mask.float(), segments)
            stats = {
                f"metrics/{name}_loss": (segment_sum(loss.masked_fill(~mask, 0.0), segments), count)
                for name, loss in (
                    ("hits", hits_loss),
                    ("velocities", velocities_loss),
                    ("offsets", offsets_loss),
                )
            }
        return hits_loss + velocities_loss + offsets_loss, stats

    def _sample(self, rnn_output: Tensor, temperature: float | None) -> Tensor:
        hit_logits = rnn_output.float().chunk(3, dim=-1)[0]
        if temperature is None:
            hits = (hit_logits > 0).float()
        else:
            hits = torch.bernoulli(torch.sigmoid(hit_logits / temperature))
        _, velocities, offsets = self.activate(rnn_output)
        return torch.cat([hits, velocities, offsets], dim=-1)
