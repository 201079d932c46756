"""The MusicVAE modules: TF-exact LSTM stacks, encoders, decoders, the VAE and its metrics.

Build a model with `CONFIG_MAP[name].build_model()`; see `musicvae.nn.vae` for the API.
"""

from musicvae.nn.metrics import EvalMetrics
from musicvae.nn.vae import MusicVAE, MusicVAEOutput

__all__ = ["EvalMetrics", "MusicVAE", "MusicVAEOutput"]
