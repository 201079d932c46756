"""Render the base and both overlays once per test session."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.manifests import TARGETS, render


@pytest.fixture(scope="session")
def _rendered() -> dict[str, list[dict]]:
    return {name: render(name) for name in TARGETS}


@pytest.fixture
def rendered(_rendered) -> dict[str, list[dict]]:
    """{'base' | 'cpu' | 'gpu': documents}; a fresh copy per test, so a test may break it."""
    return copy.deepcopy(_rendered)
