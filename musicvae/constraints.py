"""Latent constraints (Engel, Hoffman & Roberts, ICLR 2018; spec §3.10) on a frozen MusicVAE.

    constraint = train_latent_constraint(tm, windows, "note_density")
    save_constraint(constraint, "mel.note_density.constraint.pt")
    midis = constrained_sample(tm, constraint, 8, "high")      # z' = G(z ~ N(0, I), y_high), decoded

A small actor-critic pair lives in the model's latent space; the VAE itself is never changed.

* Labels y: one-hot over TARGETS = (low, high). A training window is "high" when its attribute
  (musicvae.attributes) is ≥ Q3 over the windows, "low" when ≤ Q1; the middle half and windows
  where the attribute is undefined are not used.
* Critic D(z, y): an MLP on [z ‖ Linear(y)] giving one logit, trained with sigmoid cross-entropy:
  label 1 for encoder samples z ~ q(z|x) with their own y; label 0 for prior samples z ~ N(0, I)
  and for the actor's G(z, y), both paired with the real labels of the batch, and (our addition,
  not in the paper) for encoder samples with the opposite label, which makes D judge whether z
  fits y from the first step instead of learning it only from the actor's mistakes. The loss is
  the positive term plus the mean of the negative ones, plus a WGAN-GP-style penalty
  λ_gp·(‖∇D‖ − 1)² on the logit at random interpolates between encoder and actor samples.
* Actor G(z, y) = (1 − g)⊙z + g⊙Δz with [Δz, g_logits] = MLP([z ‖ Linear(y)]) and g = σ(g_logits):
  the gate lets it leave z unchanged where z already fits. It minimises −log D(G(z, y), y) +
  λ_dist·mean_d log(1 + (z′ − z)²)/σ̄², where σ̄² is the mean posterior variance over the training
  windows, so moves within the posterior's width are cheap and further ones grow only
  logarithmically (the mean over latent dimensions keeps λ_dist independent of z_size).
* Adam at 3e-4: (β₁, β₂) = (0, 0.9) for D as in the paper, PyTorch's defaults for G. The MLPs
  default to 4 × 256 ReLU instead of the paper's 4 × 2048, enough for a z of a few hundred
  dimensions and quick on a CPU.

A saved constraint (torch, weights_only) records the model's latent fingerprint and config, and is
refused for other weights. The command line (`musicvae constraints train`) lives in
musicvae.attributes, so that `musicvae` builds its parser without importing torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicvae.attributes import ATTRIBUTES, encode_means, latent_fingerprint, melody_attributes, melody_min_pitch

if TYPE_CHECKING:
    import pretty_midi

    from musicvae.generate import TrainedModel

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("low", "high")
FORMAT = "musicvae-latent-constraint/1"
DEFAULT_HIDDEN = (256, 256, 256, 256)

__all__ = [
    "TARGETS",
    "Actor",
    "Critic",
    "LatentConstraint",
    "train_latent_constraint",
    "save_constraint",
    "load_constraint",
    "constrained_sample",
]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers through `sizes`, ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Actor(nn.Module):
    """G(z, y) = (1 − g)⊙z + g⊙Δz, with [Δz, g_logits] = MLP([z ‖ Linear(y)])."""

    def __init__(self, z_size: int, hidden: Sequence[int] = DEFAULT_HIDDEN) -> None:
        super().__init__()
        self.label = nn.Linear(len(TARGETS), hidden[0])
        self.net = _mlp([z_size + hidden[0], *hidden, 2 * z_size])

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        dz, gate_logits = self.net(torch.cat([z, self.label(y)], dim=-1)).chunk(2, dim=-1)
        gate = torch.sigmoid(gate_logits)
        return (1.0 - gate) * z + gate * dz


class Critic(nn.Module):
    """D(z, y): the logit that z is an encoder sample of a window whose label is y."""

    def __init__(self, z_size: int, hidden: Sequence[int] = DEFAULT_HIDDEN) -> None:
        super().__init__()
        self.label = nn.Linear(len(TARGETS), hidden[0])
        self.net = _mlp([z_size + hidden[0], *hidden, 1])

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([z, self.label(y)], dim=-1))[:, 0]


def _one_hot(target: str, n: int) -> Tensor:
    if target not in TARGETS:
        raise ValueError(f"unknown constraint target {target!r}; expected one of {TARGETS}")
    return F.one_hot(torch.full((n,), TARGETS.index(target)), len(TARGETS)).float()


@dataclass
class LatentConstraint:
    """A trained actor-critic pair for one attribute of one model's latent space."""

    actor: Actor
    critic: Critic
    attribute: str
    thresholds: tuple[float, float]  # (Q1, Q3) of the attribute that defined low and high
    z_size: int
    hidden: tuple[int, ...]
    config: str
    fingerprint: str

    @torch.no_grad()
    def apply(self, z: np.ndarray, target: str) -> np.ndarray:
        """z′ = G(z, y_target) for z [n, z_size]."""
        zt = torch.as_tensor(np.ascontiguousarray(z, np.float32))
        return self.actor(zt, _one_hot(target, len(zt))).numpy()

    @torch.no_grad()
    def realism(self, z: np.ndarray, target: str) -> np.ndarray:
        """D(z, y_target) as probabilities [n]: how much z looks like an encoding of a `target` window."""
        zt = torch.as_tensor(np.ascontiguousarray(z, np.float32))
        return torch.sigmoid(self.critic(zt, _one_hot(target, len(zt)))).numpy()


def _critic_loss(critic: Critic, z_real: Tensor, z_prior: Tensor, z_gen: Tensor, y: Tensor, gp_weight: float) -> Tensor:
    """Sigmoid CE (encoder samples 1; prior, actor and mislabelled encoder samples 0) + gradient penalty.

    All five groups go through the critic as one batch: on a CPU these small MLPs cost their op
    count, not their arithmetic. The penalty is WGAN-GP's (‖∇_z D(ẑ, y)‖ − 1)² on the logit at
    random points ẑ between encoder and actor samples.
    """
    b = len(z_real)
    alpha = torch.rand(b, 1)
    between = (alpha * z_real + (1.0 - alpha) * z_gen).requires_grad_(True)
    logits = critic(torch.cat([z_real, z_prior, z_gen, z_real, between]), torch.cat([y, y, y, 1.0 - y, y]))
    real, fake, at_between = logits[:b], logits[b : 4 * b], logits[4 * b :]
    (grad,) = torch.autograd.grad(at_between.sum(), between, create_graph=True)
    penalty = (grad.norm(dim=-1) - 1.0).square().mean()
    ce = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )
    return ce + gp_weight * penalty


def train_latent_constraint(
    model: TrainedModel,
    windows: np.ndarray,
    attribute: str,
    lengths: Sequence[int] | np.ndarray | None = None,
    *,
    steps: int = 5000,
    batch_size: int = 128,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    learning_rate: float = 3e-4,
    distance_penalty: float = 0.1,
    gradient_penalty: float = 10.0,
    seed: int = 0,
    log_every: int = 500,
) -> LatentConstraint:
    """Train G and D (on the CPU) on the frozen model's posteriors of melody `windows` [n, T, D] for `attribute`.

    `seed` fixes the initialisation and every draw, without touching the global RNG.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {', '.join(ATTRIBUTES)}")
    min_pitch = melody_min_pitch(model)
    windows = np.asarray(windows)
    lens = np.full(len(windows), windows.shape[1]) if lengths is None else np.asarray(lengths)
    values = melody_attributes(windows, lens, min_pitch)[:, ATTRIBUTES.index(attribute)]
    defined = ~np.isnan(values)
    if defined.sum() < 4:
        raise ValueError(f"{attribute} is defined for only {defined.sum()} windows; a constraint needs more")
    q1, q3 = (float(q) for q in np.quantile(values[defined], [0.25, 0.75]))
    if q1 == q3:
        raise ValueError(f"{attribute} does not vary enough over these windows (Q1 = Q3 = {q1:g})")
    mu, sigma = encode_means(model, windows, lens)
    keep = defined & ((values <= q1) | (values >= q3))
    mu_t, sigma_t = torch.from_numpy(mu[keep]), torch.from_numpy(sigma[keep])
    labels = F.one_hot(torch.from_numpy((values[keep] >= q3).astype(np.int64)), len(TARGETS)).float()
    sigma_bar_sq = float(np.mean(np.square(sigma)))
    z_size, n = mu.shape[1], len(mu_t)
    log.info("%s: %d low (<= %g) and %d high (>= %g) windows; mean posterior variance %.4g",
             attribute, int((labels[:, 0] == 1).sum()), q1, int((labels[:, 1] == 1).sum()), q3, sigma_bar_sq)

    with torch.random.fork_rng(devices=[]):  # everything here runs on the CPU
        torch.manual_seed(seed)
        actor, critic = Actor(z_size, hidden), Critic(z_size, hidden)
        opt_g = torch.optim.Adam(actor.parameters(), lr=learning_rate)
        opt_d = torch.optim.Adam(critic.parameters(), lr=learning_rate, betas=(0.0, 0.9))
        for step in range(1, steps + 1):
            idx = torch.randint(n, (batch_size,))
            y = labels[idx]
            z_real = mu_t[idx] + sigma_t[idx] * torch.randn(batch_size, z_size)
            z_prior = torch.randn(batch_size, z_size)
            with torch.no_grad():
                z_gen = actor(z_prior, y)
            loss_d = _critic_loss(critic, z_real, z_prior, z_gen, y, gradient_penalty)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # This pass also leaves gradients on the critic; its next zero_grad discards them.
            z = torch.randn(batch_size, z_size)
            y = labels[torch.randint(n, (batch_size,))]
            z_new = actor(z, y)
            distance = torch.log1p((z_new - z).square()).mean() / sigma_bar_sq
            loss_g = F.softplus(-critic(z_new, y)).mean() + distance_penalty * distance
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if log_every and (step % log_every == 0 or step == steps):
                log.info("step %d: critic loss %.4f, actor loss %.4f (distance %.4f)",
                         step, loss_d.item(), loss_g.item(), distance.item())
    fingerprint = latent_fingerprint(model)
    return LatentConstraint(
        actor.eval(), critic.eval(), attribute, (q1, q3), z_size, tuple(hidden), model.config.name, fingerprint
    )


# --- storage and use --------------------------------------------------------------------------------


def save_constraint(constraint: LatentConstraint, path: str | Path) -> Path:
    out = Path(path)
    torch.save({
        "format": FORMAT,
        "attribute": constraint.attribute,
        "thresholds": list(constraint.thresholds),
        "z_size": constraint.z_size,
        "hidden": list(constraint.hidden),
        "config": constraint.config,
        "fingerprint": constraint.fingerprint,
        "actor": constraint.actor.state_dict(),
        "critic": constraint.critic.state_dict(),
    }, out)  # fmt: skip
    return out


def load_constraint(path: str | Path, model: TrainedModel | None = None) -> LatentConstraint:
    """A saved constraint (weights_only); with `model`, refused unless it was trained on model's latent space."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise  # a missing file keeps its own message
    except Exception as e:  # noqa: BLE001 - torch raises several types for foreign or truncated files
        raise ValueError(f"{path}: not a latent constraint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a latent constraint (format {FORMAT} expected)")
    if model is not None and payload["fingerprint"] != latent_fingerprint(model):
        raise ValueError(f"{path} was trained for another model ({payload['config']}); train it for this checkpoint")
    z_size, hidden = int(payload["z_size"]), tuple(payload["hidden"])
    actor, critic = Actor(z_size, hidden), Critic(z_size, hidden)
    actor.load_state_dict(payload["actor"])
    critic.load_state_dict(payload["critic"])
    return LatentConstraint(
        actor.eval(), critic.eval(), payload["attribute"], tuple(payload["thresholds"]), z_size, hidden,
        payload["config"], payload["fingerprint"],
    )  # fmt: skip


def constrained_sample(
    model: TrainedModel,
    constraint: LatentConstraint,
    n: int,
    target: str,
    length: int | None = None,
    temperature: float | None = 0.5,
    seed: int | None = None,
) -> list[pretty_midi.PrettyMIDI]:
    """n sequences decoded from z′ = G(z, y_target), z ~ N(0, I): `target` (low/high) in the attribute."""
    _one_hot(target, 1)  # reject a bad target before sampling
    return model.sample(n, length, temperature, seed=seed, transform=lambda z: constraint.apply(z, target))
