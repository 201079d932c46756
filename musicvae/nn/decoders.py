"""Decoders (spec §3.3, §3.4), mirroring Magenta's BaseDecoder / BaseLstmDecoder split.

Every decoder has the same interface, so the NADE and GrooVAE decoders plug in by subclassing
`BaseLstmDecoder` and defining `_step_loss` (per-step loss and metric statistics) and `_sample`:

* `rnn_output(x_input, z, controls, sampling_probability)` -> output-layer values [B, T, D'] under
  teacher forcing (sampling_probability 0: one fused LSTM call) or scheduled sampling;
* `loss_and_stats(rnn_output, x_target, mask, segments)` -> per-example loss summed over valid
  steps [B] and streamable metric statistics (`musicvae.nn.metrics`);
* `reconstruction_loss(...)` = the two above (Magenta's method of that name);
* `sample(z, length, temperature, controls, start_inputs)` -> free-running `DecodeResult`.

Shapes are batch-major: x_input / x_target [B, T, output_depth], z [B, z_size] (for a core
decoder inside the hierarchical decoder, the conductor embedding), controls [B, T, control_depth]
or None, lengths [B]. Every step's LSTM input is [previous token ‖ z ‖ control].
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicvae.configs import HParams
from musicvae.nn.lstm import LstmStack, LstmState, lstm_decode, state_from_flat, use_step_kernels
from musicvae.nn.metrics import Stats, segment_sum
from musicvae.nn import sampler


def sampling_probability(hparams: HParams, step: int, training: bool) -> float:
    """Scheduled-sampling probability (lstm_utils.get_sampling_probability).

    A non-zero schedule outside training becomes constant 1.0: Magenta's eval job of a
    scheduled-sampling model measures fully sampled sequences.
    """
    schedule, rate = hparams.sampling_schedule, hparams.sampling_rate
    if schedule == "constant" and rate == 0:
        return 0.0
    if not training:
        return 1.0
    if schedule == "constant":
        if not 0 <= rate <= 1:
            raise ValueError(f"constant sampling_rate must be in [0, 1], got {rate}")
        return float(rate)
    if schedule == "inverse_sigmoid":
        if rate < 1:
            raise ValueError(f"inverse_sigmoid sampling_rate must be >= 1, got {rate}")
        return 1.0 - rate / (rate + math.exp(min(step / rate, 700.0)))  # exp(700) ~ 1e304: p is 1 by then
    if schedule == "exponential":
        if not 0 < rate < 1:
            raise ValueError(f"exponential sampling_rate must be in (0, 1), got {rate}")
        return 1.0 - rate**step
    raise ValueError(f"unknown sampling_schedule {schedule!r}")


@dataclass
class DecoderOutput:
    r_loss: Tensor  # [B] reconstruction loss summed over valid steps (nats)
    rnn_output: Tensor  # [B, T, D'] output-layer values (logits for categorical decoders)
    metrics: Stats


@dataclass
class DecodeResult:
    samples: Tensor  # [B, T, output_depth] free-running samples
    rnn_output: Tensor  # [B, T, D'] output-layer values along them

    @staticmethod
    def cat(results: Sequence[DecodeResult], dim: int) -> DecodeResult:
        return DecodeResult(
            torch.cat([r.samples for r in results], dim), torch.cat([r.rnn_output for r in results], dim)
        )


def _sequence_mask(lengths: Tensor, length: int) -> Tensor:
    return torch.arange(length, device=lengths.device) < lengths[:, None]


class Decoder(nn.Module, abc.ABC):
    """Magenta's BaseDecoder."""

    output_depth: int  # width of targets and samples
    rnn_output_depth: int  # width of the output layer

    @abc.abstractmethod
    def rnn_output(
        self, x_input: Tensor, z: Tensor, controls: Tensor | None, sampling_probability: float = 0.0
    ) -> Tensor: ...

    @abc.abstractmethod
    def loss_and_stats(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int = 1
    ) -> tuple[Tensor, Stats]: ...

    @abc.abstractmethod
    def sample(
        self,
        z: Tensor,
        length: int,
        temperature: float | None = 1.0,
        controls: Tensor | None = None,
        start_inputs: Tensor | None = None,
    ) -> DecodeResult:
        """Decode freely for `length` steps; temperature None means greedy (argmax / thresholds)."""

    def reconstruction_loss(
        self,
        x_input: Tensor,
        x_target: Tensor,
        lengths: Tensor,
        z: Tensor,
        controls: Tensor | None = None,
        sampling_probability: float = 0.0,
    ) -> DecoderOutput:
        rnn_output = self.rnn_output(x_input, z, controls, sampling_probability)
        r_loss, metrics = self.loss_and_stats(
            rnn_output, x_target, _sequence_mask(lengths, x_target.shape[1])
        )
        return DecoderOutput(r_loss, rnn_output, metrics)


class BaseLstmDecoder(Decoder):
    """Flat autoregressive LSTM decoder (Magenta's BaseLstmDecoder).

    Initial state tanh(dense(z)) split [c₀, h₀, c₁, h₁, …] (kernel N(0, 0.001²), bias 0); output
    projection Glorot-uniform / 0, as TF's dense default.
    """

    def __init__(
        self,
        output_depth: int,
        z_size: int,
        control_depth: int,
        rnn_sizes: Sequence[int],
        keep_prob: float = 1.0,
        rnn_output_depth: int | None = None,
    ) -> None:
        super().__init__()
        self.output_depth = output_depth
        self.rnn_output_depth = rnn_output_depth or output_depth
        self.lstm = LstmStack(output_depth + z_size + control_depth, rnn_sizes, keep_prob)
        self.z_to_initial_state = nn.Linear(z_size, self.lstm.state_size)
        self.output_projection = nn.Linear(rnn_sizes[-1], self.rnn_output_depth)
        nn.init.normal_(self.z_to_initial_state.weight, std=0.001)
        nn.init.zeros_(self.z_to_initial_state.bias)
        nn.init.xavier_uniform_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    @abc.abstractmethod
    def _step_loss(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int
    ) -> tuple[Tensor, Stats]:
        """Per-step loss [B, T] (padding is masked by the caller) and metric statistics."""

    @abc.abstractmethod
    def _sample(self, rnn_output: Tensor, temperature: float | None) -> Tensor:
        """One step's sample [B, output_depth] from its output-layer values [B, D']."""

    def _categorical_parts(self) -> tuple[int, ...] | None:
        """Widths of the softmaxes `_sample` draws from, side by side; None if it is not categorical.

        Categorical decoders sample through `musicvae.nn.sampler` (same samples, no per-step overhead).
        """
        return None

    def loss_and_stats(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int = 1
    ) -> tuple[Tensor, Stats]:
        step_loss, stats = self._step_loss(rnn_output, x_target, mask, segments)
        return step_loss.masked_fill(~mask, 0.0).sum(dim=1), stats

    def rnn_output(
        self, x_input: Tensor, z: Tensor, controls: Tensor | None, sampling_probability: float = 0.0
    ) -> Tensor:
        aux = self._aux_inputs(z, controls, x_input.shape[1])
        if sampling_probability == 0.0:  # teacher forcing: the whole sequence in one fused call
            out, _ = self.lstm(torch.cat([x_input, aux], dim=-1), self._initial_state(z))
            return self.output_projection(out)

        # Scheduled sampling (ScheduledOutputTrainingHelper): for each row and step, with
        # probability p the next input is a τ = 1 sample of the model's own output (no gradient)
        # instead of the ground truth. Step 0 always reads x_input[:, 0].
        teacher_next = F.pad(x_input[:, 1:], (0, 0, 0, 1))

        def choose(t: int, logits: Tensor) -> Tensor:
            sampled = self._sample(logits.detach(), 1.0).to(x_input.dtype)
            use_sample = torch.rand(logits.shape[0], 1, device=logits.device) < sampling_probability
            return torch.where(use_sample, sampled, teacher_next[:, t])

        return self._decode_stepwise(z, aux, x_input[:, 0], choose)[0]

    def sample(
        self,
        z: Tensor,
        length: int,
        temperature: float | None = 1.0,
        controls: Tensor | None = None,
        start_inputs: Tensor | None = None,
    ) -> DecodeResult:
        parts = self._categorical_parts()
        if parts is not None and sampler.applies(self, z):
            samples, rnn_output = sampler.sample_categorical(
                self, parts, z, length, temperature, controls, start_inputs
            )
            return DecodeResult(samples, rnn_output)
        aux = self._aux_inputs(z, controls, length)
        first = start_inputs if start_inputs is not None else z.new_zeros(z.shape[0], self.output_depth)
        rnn_output, samples = self._decode_stepwise(
            z, aux, first, lambda t, out: self._sample(out, temperature).to(z.dtype)
        )
        return DecodeResult(samples, rnn_output)

    def _initial_state(self, z: Tensor) -> LstmState:
        return state_from_flat(torch.tanh(self.z_to_initial_state(z)), self.lstm.num_layers)

    def _aux_inputs(self, z: Tensor, controls: Tensor | None, length: int) -> Tensor:
        """[z ‖ control] for every step: [B, length, z_size + control_depth]."""
        repeated_z = z[:, None].expand(-1, length, -1)
        return (
            repeated_z
            if controls is None
            else torch.cat([repeated_z, controls[:, :length].to(z.dtype)], dim=-1)
        )

    def _decode_stepwise(
        self, z: Tensor, aux: Tensor, first_input: Tensor, choose: Callable[[int, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Run one step at a time; `choose(t, output_t)` gives the token fed at step t + 1.

        Returns the output-layer values [B, T, D'] and the chosen tokens [B, T, output_depth].
        """
        state = self._initial_state(z)
        if use_step_kernels(aux, self.lstm):
            return lstm_decode(self.lstm, self.output_projection, first_input, aux, state, choose)
        token, outputs, tokens = first_input, [], []
        for t in range(aux.shape[1]):
            h, state = self.lstm(torch.cat([token, aux[:, t]], dim=-1)[:, None], state)
            output = self.output_projection(h[:, 0])
            token = choose(t, output)
            outputs.append(output)
            tokens.append(token)
        return torch.stack(outputs, dim=1), torch.stack(tokens, dim=1)


def categorical_stats(logits: Tensor, x_target: Tensor, mask: Tensor, segments: int) -> Stats:
    """`metrics/accuracy` (pooled over valid steps) and `metrics/mean_per_class_accuracy`."""
    with torch.no_grad():
        truth = x_target.argmax(dim=-1)
        correct = (logits.argmax(dim=-1) == truth) & mask
        per_class = F.one_hot(truth, x_target.shape[-1]) * mask[..., None]
        class_total = segment_sum(per_class.float(), segments)  # [S, C]
        class_correct = segment_sum((per_class * correct[..., None]).float(), segments)
        return {
            "metrics/accuracy": (class_correct.sum(-1), class_total.sum(-1)),
            "metrics/mean_per_class_accuracy": (class_correct, class_total),
        }


def _categorical_sample(logits: Tensor, temperature: float | None) -> Tensor:
    """OneHotCategorical(logits / τ) sample; temperature None gives the argmax."""
    if temperature is None:
        index = logits.argmax(dim=-1)
    else:
        index = torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1)[:, 0]
    return F.one_hot(index, logits.shape[-1]).float()


class CategoricalLstmDecoder(BaseLstmDecoder):
    """One softmax over output_depth classes per step; loss = softmax cross-entropy."""

    def _step_loss(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int
    ) -> tuple[Tensor, Stats]:
        step_loss = -(x_target * F.log_softmax(rnn_output.float(), dim=-1)).sum(dim=-1)
        return step_loss, categorical_stats(rnn_output, x_target, mask, segments)

    def _sample(self, rnn_output: Tensor, temperature: float | None) -> Tensor:
        return _categorical_sample(rnn_output, temperature)

    def _categorical_parts(self) -> tuple[int, ...] | None:
        return (self.output_depth,) if type(self)._sample is CategoricalLstmDecoder._sample else None


class MultiOutCategoricalLstmDecoder(BaseLstmDecoder):
    """Flat trio: one LSTM whose logits split into independent softmaxes (e.g. [90, 90, 512]).

    Loss = sum of the parts' cross-entropies; each part is sampled separately; metrics per part
    as `<metric>/output_<i>`.
    """

    def __init__(
        self,
        output_depths: Sequence[int],
        z_size: int,
        control_depth: int,
        rnn_sizes: Sequence[int],
        keep_prob: float = 1.0,
    ) -> None:
        super().__init__(sum(output_depths), z_size, control_depth, rnn_sizes, keep_prob)
        self.output_depths = list(output_depths)

    def _step_loss(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int
    ) -> tuple[Tensor, Stats]:
        step_loss, stats = 0.0, {}
        parts = zip(rnn_output.split(self.output_depths, -1), x_target.split(self.output_depths, -1))
        for i, (logits, target) in enumerate(parts):
            step_loss = step_loss - (target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
            for name, value in categorical_stats(logits, target, mask, segments).items():
                stats[f"{name}/output_{i}"] = value
        return step_loss, stats

    def _sample(self, rnn_output: Tensor, temperature: float | None) -> Tensor:
        return torch.cat(
            [_categorical_sample(part, temperature) for part in rnn_output.split(self.output_depths, -1)], -1
        )

    def _categorical_parts(self) -> tuple[int, ...] | None:
        same = type(self)._sample is MultiOutCategoricalLstmDecoder._sample
        return tuple(self.output_depths) if same else None


class SplitMultiOutDecoder(Decoder):
    """Magenta's SplitMultiOutLstmDecoder: independent core decoders, one per output stream.

    Each core has its own initial-state dense, LSTM and projection, reads only its own previous
    token (plus the shared z and controls); losses are summed and outputs concatenated.
    """

    def __init__(self, cores: Sequence[Decoder]) -> None:
        super().__init__()
        self.cores = nn.ModuleList(cores)
        self.output_depths = [core.output_depth for core in cores]
        self.rnn_output_depths = [core.rnn_output_depth for core in cores]
        self.output_depth = sum(self.output_depths)
        self.rnn_output_depth = sum(self.rnn_output_depths)

    def rnn_output(
        self, x_input: Tensor, z: Tensor, controls: Tensor | None, sampling_probability: float = 0.0
    ) -> Tensor:
        parts = x_input.split(self.output_depths, -1)
        return torch.cat(
            [core.rnn_output(x, z, controls, sampling_probability) for core, x in zip(self.cores, parts)], -1
        )

    def loss_and_stats(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int = 1
    ) -> tuple[Tensor, Stats]:
        r_loss, stats = 0.0, {}
        parts = zip(
            self.cores, rnn_output.split(self.rnn_output_depths, -1), x_target.split(self.output_depths, -1)
        )
        for i, (core, output, target) in enumerate(parts):
            loss, core_stats = core.loss_and_stats(output, target, mask, segments)
            r_loss = r_loss + loss
            stats.update({f"{name}/output_{i}": value for name, value in core_stats.items()})
        return r_loss, stats

    def sample(
        self,
        z: Tensor,
        length: int,
        temperature: float | None = 1.0,
        controls: Tensor | None = None,
        start_inputs: Tensor | None = None,
    ) -> DecodeResult:
        starts = (
            start_inputs.split(self.output_depths, -1)
            if start_inputs is not None
            else [None] * len(self.cores)
        )
        return DecodeResult.cat(
            [core.sample(z, length, temperature, controls, start) for core, start in zip(self.cores, starts)],
            dim=-1,
        )


class HierarchicalLstmDecoder(Decoder):
    """Conductor + core decoder (Magenta's HierarchicalLstmDecoder, non-autoregressive, 2 levels).

    level_lengths (U, L): the conductor, an LSTM stack started from tanh(dense(z)), runs U steps
    on a constant zero input of width 1; its top-layer h at step u is the embedding c_u. Segment u
    of L steps is decoded by the core decoder with c_u in place of z, restarting from
    tanh(dense(c_u)). The previous token links segments: under teacher forcing the global
    one-step shift gives segment u the last target of segment u−1 (all U·B segments run as one
    batch); when sampling, segment u starts from segment u−1's last sample.
    """

    def __init__(
        self,
        core: Decoder,
        level_lengths: Sequence[int],
        z_size: int,
        rnn_sizes: Sequence[int],
        keep_prob: float = 1.0,
    ) -> None:
        super().__init__()
        if len(level_lengths) != 2:
            raise ValueError(
                f"only two-level hierarchies are supported, got level_lengths={list(level_lengths)}"
            )
        self.num_segments, self.segment_length = level_lengths
        self.conductor = LstmStack(1, rnn_sizes, keep_prob)
        self.conductor_initial_state = nn.Linear(z_size, self.conductor.state_size)
        nn.init.normal_(self.conductor_initial_state.weight, std=0.001)
        nn.init.zeros_(self.conductor_initial_state.bias)
        self.core = core
        self.output_depth, self.rnn_output_depth = core.output_depth, core.rnn_output_depth

    def embeddings(self, z: Tensor) -> Tensor:
        """The conductor's segment embeddings c_u: [B, U, conductor size]."""
        state = state_from_flat(torch.tanh(self.conductor_initial_state(z)), self.conductor.num_layers)
        out, _ = self.conductor(z.new_zeros(z.shape[0], self.num_segments, 1), state)
        return out

    def rnn_output(
        self, x_input: Tensor, z: Tensor, controls: Tensor | None, sampling_probability: float = 0.0
    ) -> Tensor:
        batch, total, _ = x_input.shape
        self._check_length(total)

        def by_segment(t: Tensor) -> Tensor:  # [B, U·L, D] -> [B·U, L, D]
            return t.reshape(batch * self.num_segments, self.segment_length, t.shape[-1])

        c = self.embeddings(z).flatten(0, 1)
        out = self.core.rnn_output(
            by_segment(x_input), c, None if controls is None else by_segment(controls), sampling_probability
        )
        return out.reshape(batch, total, -1)

    def loss_and_stats(
        self, rnn_output: Tensor, x_target: Tensor, mask: Tensor, segments: int = 1
    ) -> tuple[Tensor, Stats]:
        # Summing each example's loss over all steps equals summing the segments' losses.
        return self.core.loss_and_stats(rnn_output, x_target, mask, self.num_segments)

    def sample(
        self,
        z: Tensor,
        length: int,
        temperature: float | None = 1.0,
        controls: Tensor | None = None,
        start_inputs: Tensor | None = None,
    ) -> DecodeResult:
        self._check_length(length)
        embeddings = self.embeddings(z)
        results: list[DecodeResult] = []
        for u in range(self.num_segments):
            span = slice(u * self.segment_length, (u + 1) * self.segment_length)
            start = results[-1].samples[:, -1] if results else start_inputs
            segment_controls = None if controls is None else controls[:, span]
            results.append(
                self.core.sample(embeddings[:, u], self.segment_length, temperature, segment_controls, start)
            )
        return DecodeResult.cat(results, dim=1)

    def _check_length(self, length: int) -> None:
        if length != self.num_segments * self.segment_length:
            raise ValueError(
                f"hierarchical decoder needs {self.num_segments}×{self.segment_length} steps, got {length}"
            )
