"""MusicVAE: encoder + latent + decoder, with Magenta's training objective (spec §3.2).

API (everything a training loop or the generation facade needs):

    model = CONFIG_MAP[name].build_model()          # == MusicVAE.from_config(config)
    out = model(inputs, outputs, controls, lengths, step)   # inputs/outputs [B, T, D] float,
                                                            # controls [B, T, C] or None, lengths [B]
    out.loss.backward()                              # scalar: mean r_loss + β · mean kl_cost
    metrics = EvalMetrics(); metrics.update(out.metrics); metrics.compute()
                                                     # Magenta's eval metrics (musicvae.nn.metrics)
    mu, sigma = model.encode(inputs, lengths, controls)
    result = model.decode(z, length, temperature, controls)  # DecodeResult(samples, rnn_output)
    result = model.sample(n, length, temperature, controls)  # z ~ N(0, I), then decode

`forward` is Magenta's `_compute_model_loss`: sequences are cut to hparams.max_seq_len, the
decoder reads the targets shifted right by one zero step, and z = μ + σ·ε is sampled in training
and in eval alike. `step` (the global step) drives β and the scheduled-sampling probability;
in eval mode (`model.eval()`) a non-zero sampling schedule becomes p = 1 and dropout is off.
`decode`/`sample` accept temperature None for a greedy decode.

Magenta's TF variable scopes and the matching module paths (spec §10; LSTM kernels map as
described in `musicvae.nn.lstm`; a dense kernel is the transposed `weight`):

    encoder/cell_ℓ/bidirectional_rnn/{fw,bw}/…       encoder.{fw,bw}[ℓ].layers[0]
    encoder/hierarchical_level_k/cell_ℓ/…            encoder.levels[k].{fw,bw}[ℓ].layers[0]
    encoder/{mu,sigma}                               {mu,sigma}
    decoder/z_to_initial_state                       decoder.z_to_initial_state
    decoder/multi_rnn_cell/cell_k/lstm_cell          decoder.lstm.layers[k]
    decoder/output_projection                        decoder.output_projection
    decoder/nade/{w_enc,w_dec_t}                     decoder.nade.{w_enc,w_dec_t}
    decoder/hierarchical_level_0/initial_state       decoder.conductor_initial_state
    decoder/hierarchical_level_0/cell_k/lstm_cell    decoder.conductor.layers[k]
    core_decoder/decoder/…                           decoder.core.…
    core_decoder/core_decoder_i/decoder/… (trio)     decoder.core.cores[i].…
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicvae.configs import HParams, ModelSpec
from musicvae.nn.decoders import (
    CategoricalLstmDecoder,
    Decoder,
    DecodeResult,
    HierarchicalLstmDecoder,
    MultiOutCategoricalLstmDecoder,
    SplitMultiOutDecoder,
    sampling_probability,
)
from musicvae.nn.encoders import BidirectionalLstmEncoder, HierarchicalLstmEncoder
from musicvae.nn.groove import GrooveLstmDecoder
from musicvae.nn.metrics import Stats, batch_mean_stats
from musicvae.nn.nade import MultiLabelRnnNadeDecoder

if TYPE_CHECKING:
    from musicvae.configs import Config

LN2 = math.log(2.0)


def kl_beta(hparams: HParams, step: int) -> float:
    """β(step) = max_beta · (1 − beta_rate^step); with the default rate 0, β = 0 at step 0 only."""
    return hparams.max_beta * (1.0 - hparams.beta_rate**step)


@dataclass
class MusicVAEOutput:
    loss: Tensor  # scalar training loss
    r_loss: Tensor  # [B] reconstruction loss, summed over valid steps (nats)
    kl: Tensor  # [B] KL(q(z|x) || N(0, I)) in nats
    kl_cost: Tensor  # [B] max(kl − free_bits·ln 2, 0)
    beta: float
    sampling_probability: float
    mu: Tensor  # [B, z]
    sigma: Tensor  # [B, z]
    z: Tensor  # [B, z], the sample the decoder saw
    rnn_output: Tensor  # [B, T, D'] decoder output-layer values (logits for categorical decoders)
    metrics: Stats  # streamable eval statistics, see musicvae.nn.metrics


class MusicVAE(nn.Module):
    def __init__(self, hparams: HParams, encoder: nn.Module, decoder: Decoder) -> None:
        super().__init__()
        if hparams.z_size <= 0:
            raise ValueError("z_size must be positive (Magenta's decoder-only mode is not supported)")
        self.hparams = hparams
        self.encoder = encoder
        self.decoder = decoder
        self.mu = nn.Linear(encoder.output_size, hparams.z_size)
        self.sigma = nn.Linear(encoder.output_size, hparams.z_size)
        for dense in (self.mu, self.sigma):
            nn.init.normal_(dense.weight, std=0.001)
            nn.init.zeros_(dense.bias)
        sampling_probability(hparams, 0, True)  # reject a bad schedule now rather than at step 1

    @classmethod
    def from_config(cls, config: Config) -> MusicVAE:
        converter, hp = config.data_converter, config.hparams
        encoder_input = converter.input_depth + converter.control_depth
        return cls(
            hp,
            _build_encoder(config.model, hp, encoder_input),
            _build_decoder(config.model, hp, converter.output_depth, converter.control_depth),
        )

    def encode(
        self, inputs: Tensor, lengths: Tensor, controls: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Posterior q(z|x) = N(mu, diag(sigma²)); controls are appended to the inputs depthwise."""
        x = inputs.to(self.mu.weight.dtype)
        if controls is not None:
            x = torch.cat([x, controls.to(x.dtype)], dim=-1)
        h = self.encoder(x, lengths)
        return self.mu(h), F.softplus(self.sigma(h))

    def forward(
        self, inputs: Tensor, outputs: Tensor, controls: Tensor | None, lengths: Tensor, step: int = 0
    ) -> MusicVAEOutput:
        hp = self.hparams
        dtype = self.mu.weight.dtype
        max_len = min(outputs.shape[1], hp.max_seq_len)
        inputs = inputs[:, :max_len]
        controls = None if controls is None else controls[:, :max_len].to(dtype)
        x_target = outputs[:, :max_len].to(dtype)
        x_input = F.pad(x_target[:, :-1], (0, 0, 1, 0))  # a zero step in front
        lengths = lengths.clamp(max=max_len)

        mu, sigma = self.encode(inputs, lengths, controls)
        mu, sigma = mu.float(), sigma.float()  # z and the KL in full precision, also under autocast
        z = mu + sigma * torch.randn_like(sigma)
        p_sample = sampling_probability(hp, step, self.training)
        decoded = self.decoder.reconstruction_loss(
            x_input, x_target, lengths, z.to(dtype), controls, p_sample
        )

        kl = (0.5 * (mu.square() + sigma.square() - 1.0) - torch.log(sigma)).sum(dim=-1)
        kl_cost = (kl - hp.free_bits * LN2).clamp(min=0.0)
        beta = kl_beta(hp, step)
        loss = decoded.r_loss.mean() + beta * kl_cost.mean()

        metrics = {
            **decoded.metrics,
            "loss": batch_mean_stats(loss),
            "losses/r_loss": batch_mean_stats(decoded.r_loss),
            "losses/kl_loss": batch_mean_stats(kl_cost),
            "losses/kl_bits": batch_mean_stats(kl / LN2),
            "losses/kl_beta": batch_mean_stats(loss.new_tensor(beta)),
        }
        return MusicVAEOutput(
            loss, decoded.r_loss, kl, kl_cost, beta, p_sample, mu, sigma, z, decoded.rnn_output, metrics
        )

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        length: int | None = None,
        temperature: float | None = 1.0,
        controls: Tensor | None = None,
        start_inputs: Tensor | None = None,
    ) -> DecodeResult:
        """Free-running decode of z [B, z_size] for `length` steps (default max_seq_len)."""
        length = length or self.hparams.max_seq_len
        return self.decoder.sample(z.to(self.mu.weight.dtype), length, temperature, controls, start_inputs)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        length: int | None = None,
        temperature: float | None = 1.0,
        controls: Tensor | None = None,
    ) -> DecodeResult:
        """Draw z ~ N(0, I) for n sequences and decode them."""
        z = torch.randn(n, self.hparams.z_size, device=self.mu.weight.device, dtype=self.mu.weight.dtype)
        return self.decode(z, length, temperature, controls)


def _build_encoder(spec: ModelSpec, hp: HParams, input_size: int) -> nn.Module:
    if spec.encoder == "bidirectional":
        return BidirectionalLstmEncoder(input_size, hp.enc_rnn_size, hp.dropout_keep_prob)
    if spec.encoder == "hierarchical":
        _check_level_lengths(spec, hp)
        return HierarchicalLstmEncoder(input_size, hp.enc_rnn_size, spec.level_lengths, hp.dropout_keep_prob)
    raise ValueError(f"unknown encoder {spec.encoder!r}")


def _build_decoder(spec: ModelSpec, hp: HParams, output_depth: int, control_depth: int) -> Decoder:
    keep = hp.dropout_keep_prob

    def flat(kind: str, z_size: int) -> Decoder:
        if kind == "categorical":
            return CategoricalLstmDecoder(output_depth, z_size, control_depth, hp.dec_rnn_size, keep)
        if kind == "nade":
            if spec.nade_num_hidden <= 0:
                raise ValueError("a nade decoder needs nade_num_hidden > 0")
            return MultiLabelRnnNadeDecoder(
                output_depth, z_size, control_depth, hp.dec_rnn_size, spec.nade_num_hidden, keep
            )
        if kind == "groove":
            return GrooveLstmDecoder(output_depth, z_size, control_depth, hp.dec_rnn_size, keep)
        if kind not in ("multi_out_categorical", "split_multi_out"):
            raise ValueError(f"unknown decoder {kind!r}")
        if sum(spec.output_depths) != output_depth:
            raise ValueError(
                f"output_depths {spec.output_depths} do not add up to the converter's {output_depth}"
            )
        if kind == "multi_out_categorical":
            return MultiOutCategoricalLstmDecoder(
                spec.output_depths, z_size, control_depth, hp.dec_rnn_size, keep
            )
        cores = [
            CategoricalLstmDecoder(d, z_size, control_depth, hp.dec_rnn_size, keep)
            for d in spec.output_depths
        ]
        return SplitMultiOutDecoder(cores)

    if spec.decoder == "hierarchical":
        _check_level_lengths(spec, hp)
        core = flat(spec.core_decoder, hp.dec_rnn_size[-1])  # the core is conditioned on c_u, not z
        return HierarchicalLstmDecoder(core, spec.level_lengths, hp.z_size, hp.dec_rnn_size, keep)
    return flat(spec.decoder, hp.z_size)


def _check_level_lengths(spec: ModelSpec, hp: HParams) -> None:
    if math.prod(spec.level_lengths) != hp.max_seq_len:
        raise ValueError(f"level_lengths {spec.level_lengths} must multiply to max_seq_len {hp.max_seq_len}")
