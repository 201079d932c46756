"""Fixtures for the pipeline tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from .kfp_server import CLIENT_ENV, KfpApiServer


@pytest.fixture
def kfp_client_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No settings of this machine for kfp.Client: HOME (with ~/.config/kfp/context.json, which the client
    reads at construction) is a new temporary directory, and the KF_PIPELINES_* variables it reads are unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr("kfp.client.client.Client._LOCAL_KFP_CONTEXT", str(home / ".config/kfp/context.json"))
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def kfp_server(kfp_client_env: Path) -> Iterator[KfpApiServer]:
    """A Kubeflow Pipelines API on 127.0.0.1 that records what the real kfp.Client sends it."""
    with KfpApiServer() as server:
        yield server
