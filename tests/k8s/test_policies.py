"""The rendered manifests keep the settings issue 7 asks for: restricted Pod Security Standard, probes,
requests and limits, GPU only in the GPU overlay, HPAs on CPU and concurrency, PDBs, network policies
that open only the service ports, Services matching the container ports, and the serving contract."""

from __future__ import annotations

import pytest
import yaml

from tests.k8s.manifests import (
    ALL_CHECKS,
    CONCURRENCY_METRIC,
    GPU_RESOURCE,
    HTTP_PORT,
    K8S,
    TARGETS,
    contract_problems,
    gpu_problems,
    of_kind,
    pod_specs,
)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("target", TARGETS)
def test_check_passes(rendered, target, check):
    assert len(pod_specs(rendered[target])) == 2
    assert check(rendered[target]) == []


@pytest.mark.parametrize("target", TARGETS)
def test_gpu_only_in_the_gpu_overlay(rendered, target):
    assert gpu_problems(rendered[target], expect_gpu=target == "gpu") == []


def test_gpu_overlay_gives_the_gpu_to_the_http_container_only(rendered):
    for _, _, pod in pod_specs(rendered["gpu"]):
        containers = {c["name"]: c for c in pod["containers"]}
        assert containers["http"]["resources"]["limits"][GPU_RESOURCE] == "1"
        assert GPU_RESOURCE not in containers["grpc"]["resources"]["limits"]
        env = {e["name"]: e.get("value") for e in containers["grpc"]["env"]}
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


@pytest.mark.parametrize("target", TARGETS)
def test_serving_contract(rendered, target):
    assert contract_problems(rendered[target], tag_required=target != "base") == []


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_enforces_restricted(rendered, target):
    (namespace,) = of_kind(rendered[target], "Namespace")
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_pods_are_scraped_where_bentoml_serves_metrics(rendered):
    for _, meta, pod in pod_specs(rendered["cpu"]):
        annotations = meta["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == HTTP_PORT
        assert HTTP_PORT in [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])]


def test_prometheus_adapter_serves_the_metric_the_hpas_read(rendered):
    """The adapter rule (Helm values) must publish, per pod, exactly the metric name the HPAs ask for."""
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = values["rules"]["custom"]
    published = {r["name"]["as"]: r for r in rules}
    for target in ("cpu", "gpu"):
        for hpa in of_kind(rendered[target], "HorizontalPodAutoscaler"):
            names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            assert names == [CONCURRENCY_METRIC]
    rule = published[CONCURRENCY_METRIC]
    assert rule["seriesQuery"].startswith(CONCURRENCY_METRIC + "{")
    overrides = rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
