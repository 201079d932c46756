"""Build the C extensions (the fast MIDI reader, the native sampling loop); all other metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "musicvae.data._smf",
            ["musicvae/data/_smf.c"],
            # No fused multiply-add: tick -> seconds must round exactly as pretty_midi's numpy does.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        ),
        # Its kernels are compiled for AVX2 + FMA alone (a target pragma inside); it checks the CPU at run time.
        Extension(
            "musicvae.nn._decode",
            ["musicvae/nn/_decode.c"],
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],
        ),
    ]
)
