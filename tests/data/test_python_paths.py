"""The pure-Python reference paths (used where the C helpers decline a piece) match Magenta too.

Every converter hands the hot loops to `musicvae.data._smf` when it can; the parity tests therefore
exercise the C paths. Here the C module is switched off everywhere and the same fixtures must give
the same tensors, so the fallback cannot drift from Magenta unnoticed.
"""

from __future__ import annotations

import importlib

import pytest

from musicvae.configs import CONFIG_MAP
from tests.parity import assert_tensors_equal, fixtures_for, requires_parity

MODULES = ("midi_io", "sequences", "melody", "drums", "trio", "groove")
CONFIGS = ("cat-mel_2bar_small", "hierdec-mel_16bar", "cat-drums_2bar_small", "nade-drums_2bar_full", "hierdec-trio_16bar")
CASES = [fx for name in CONFIGS for fx in fixtures_for(name) if fx.suffix == ""]


@pytest.fixture
def without_c(monkeypatch):
    for name in MODULES:
        module = importlib.import_module(f"musicvae.data.{name}")
        if hasattr(module, "_smf"):
            monkeypatch.setattr(module, "_smf", None)


@requires_parity
@pytest.mark.parametrize("fixture", CASES, ids=[fx.id for fx in CASES])
def test_python_path_matches_magenta(fixture, without_c):
    conv = CONFIG_MAP[fixture.config].new_converter()
    conv.set_mode("eval")
    assert_tensors_equal(conv.to_tensors(fixture.midi), fixture.load())
