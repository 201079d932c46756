"""Build the C extension (the fast MIDI reader); all other metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "musicvae.data._smf",
            ["musicvae/data/_smf.c"],
            # No fused multiply-add: tick -> seconds must round exactly as pretty_midi's numpy does.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
    ]
)
