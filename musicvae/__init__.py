"""MusicVAE and GrooVAE in PyTorch: converters, models, training and generation.

The public entry points are `musicvae.configs.CONFIG_MAP` (one name = model hparams + data
converter, as in Magenta) and the command-line tools declared in pyproject.toml.
"""

__version__ = "0.1.0"
