"""Prometheus metrics of the gRPC server: /metrics on its own port, calls by method and status code."""

from __future__ import annotations

import gc
from pathlib import Path

import grpc
import httpx
import pytest

from serving.client import MusicVAEClient
from serving.grpc_server import GrpcServer
from serving.operations import GC_THRESHOLDS, ModelRegistry, Operations
from tests.serving.conftest import CONFIG

SAMPLE = "musicvae.v1.MusicVAE/Sample"


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_grpc_metrics(checkpoint: Path):
    server = GrpcServer(Operations(ModelRegistry.load([str(checkpoint)])), port=0, metrics_port=0)
    try:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with MusicVAEClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            assert client.health() == "SERVING"
            for seed in (1, 2, 3):
                assert client.sample(CONFIG, num_outputs=1, seed=seed)[0].startswith(b"MThd")
            with pytest.raises(grpc.RpcError) as info:
                client.sample("no-such-config")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        text = httpx.get(url, timeout=10).text
        assert _value(text, f'musicvae_grpc_requests_total{{code="OK",method="{SAMPLE}"}}') == 3
        assert _value(text, f'musicvae_grpc_requests_total{{code="NOT_FOUND",method="{SAMPLE}"}}') == 1
        assert _value(text, 'musicvae_grpc_requests_total{code="OK",method="grpc.health.v1.Health/Check"}') == 1
        assert _value(text, f'musicvae_grpc_request_duration_seconds_count{{method="{SAMPLE}"}}') == 4
        assert _value(text, f'musicvae_grpc_requests_in_progress{{method="{SAMPLE}"}}') == 0
        assert _value(text, "musicvae_batch_requests_count") >= 3  # warm-up and the three seeded samples
    finally:
        server.stop(grace=1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2)


def test_no_metrics_port_no_metrics(checkpoint: Path):
    server = GrpcServer(Operations(ModelRegistry.load([str(checkpoint)])), port=0)
    try:
        assert server.metrics is None and server.metrics_port is None
    finally:
        server.stop(grace=1)


def test_a_running_server_keeps_its_start_up_heap_out_of_the_collector(checkpoint: Path):
    """Frozen while it serves (full collections otherwise stop the model worker for 80-200 ms), with rarer
    young collections; thawed on stop."""
    default = gc.get_threshold()
    server = GrpcServer(Operations(ModelRegistry.load([str(checkpoint)])), port=0)
    try:
        assert gc.get_freeze_count() > 10_000  # modules, torch, the model
        assert gc.get_threshold() == GC_THRESHOLDS != default
    finally:
        server.stop(grace=1)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == default
