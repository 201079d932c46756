"""Deliberately broken copies of the rendered manifests: each defect must be caught by the check that
guards it (and the unbroken manifests pass the same check, in test_policies / test_schemas)."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import (
    K8S_VERSIONS,
    contract_problems,
    gpu_problems,
    hpa_problems,
    network_policy_problems,
    pdb_problems,
    probe_and_resource_problems,
    schema_problems,
    security_problems,
    service_problems,
)


def _one(docs, kind, name="musicvae-sampling"):
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod(docs):
    return _one(docs, "Deployment")["spec"]["template"]["spec"]


def _container(docs, name="http"):
    (c,) = [c for c in _pod(docs)["containers"] if c["name"] == name]
    return c


def _hpa(docs):
    return _one(docs, "HorizontalPodAutoscaler")["spec"]


def _set(path_fn, key, value):
    def mutate(docs):
        path_fn(docs)[key] = value
    return mutate


def _delete(path_fn, key):
    def mutate(docs):
        del path_fn(docs)[key]
    return mutate


def _csc(docs, name="http"):
    return _container(docs, name)["securityContext"]


def _schema(docs):
    return schema_problems(docs, K8S_VERSIONS[0])


def _add_sidecar(docs):
    _pod(docs)["initContainers"] = [{"name": "init", "image": "busybox:1.36", "args": ["true"]}]


def _hostpath(docs):
    _pod(docs)["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})


def _gpu_into_cpu(docs):
    _container(docs)["resources"]["limits"]["nvidia.com/gpu"] = "1"


def _drop_toleration(docs):
    del _pod(docs)["tolerations"]


def _drop_node_selector(docs):
    del _pod(docs)["nodeSelector"]["nvidia.com/gpu.present"]


def _pdb_typo(docs):
    labels = _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    labels["app.kubernetes.io/component"] = "sampler"


def _pdb_too_strict(docs):
    _one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] = 2


def _open_ssh(docs):
    _one(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 22})


def _open_everything(docs):
    del _one(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"]


def _no_default_deny(docs):
    docs.remove(_one(docs, "NetworkPolicy", "default-deny-all"))


def _egress_anywhere(docs):
    egress = _one(docs, "NetworkPolicy", "allow-dns-egress")["spec"]["egress"]
    egress.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})


def _grpc_port_closed(docs):
    ports = _one(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"]
    ports[:] = [p for p in ports if p["port"] != 50051]


def _service_wrong_target(docs):
    _one(docs, "Service")["spec"]["ports"][1]["targetPort"] = 50052


def _service_no_grpc(docs):
    _one(docs, "Service")["spec"]["ports"].pop(1)


def _service_selects_both(docs):
    del _one(docs, "Service")["spec"]["selector"]["app.kubernetes.io/component"]


def _hpa_v1_field(docs):
    _hpa(docs)["targetCPUUtilizationPercentage"] = 70


def _hpa_cpu_only(docs):
    _hpa(docs)["metrics"] = _hpa(docs)["metrics"][:1]


def _hpa_wrong_metric(docs):
    _hpa(docs)["metrics"][1]["pods"]["metric"]["name"] = "bentoml_api_server_request_in_progress"


def _hpa_wrong_target(docs):
    _hpa(docs)["scaleTargetRef"]["name"] = "musicvae"


def _hpa_v1(docs):
    _one(docs, "HorizontalPodAutoscaler")["apiVersion"] = "autoscaling/v1"


def _replicas(docs):
    _one(docs, "Deployment")["spec"]["replicas"] = 3


def _unknown_kind(docs):
    docs.append({"apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment",
                 "metadata": {"name": "musicvae"}, "spec": {}})


def _typo_field(docs):
    _container(docs)["livenesProbe"] = _container(docs)["livenessProbe"]


def _bad_type(docs):
    _hpa(docs)["minReplicas"] = "two"


def _grpc_probe_on_http(docs):
    _container(docs, "grpc")["readinessProbe"] = {"grpc": {"port": 3000}}


def _readiness_on_livez(docs):
    _container(docs)["readinessProbe"]["httpGet"]["path"] = "/livez"


def _request_above_limit(docs):
    _container(docs)["resources"]["requests"]["memory"] = "4Gi"


def _untagged_image(docs):
    _container(docs)["image"] = "musicvae-serving"


def _wrong_port_arg(docs):
    _container(docs)["args"][-1] = "8080"


def _both_servers_in_one_container(docs):
    _container(docs)["args"].remove("--no_grpc")


def _loopback(docs):
    args = _container(docs, "grpc")["args"]
    args[args.index("--host") + 1] = "127.0.0.1"


def _bentoml_home_not_mounted(docs):
    mounts = _container(docs)["volumeMounts"]
    mounts[:] = [m for m in mounts if m["mountPath"] != "/var/lib/bentoml"]


BROKEN = {
    # (overlay, mutation, check): the check must report at least one problem
    "schema: HPA without maxReplicas": ("cpu", _delete(_hpa, "maxReplicas"), _schema),
    "schema: v1 field in a v2 HPA (strict)": ("cpu", _hpa_v1_field, _schema),
    "schema: misspelt field (strict)": ("gpu", _typo_field, _schema),
    "schema: wrong type": ("cpu", _bad_type, _schema),
    "schema: kind without a schema": ("cpu", _unknown_kind, _schema),
    "pss: privileged": ("cpu", _set(_csc, "privileged", True), security_problems),
    "pss: privilege escalation": ("cpu", _set(_csc, "allowPrivilegeEscalation", True), security_problems),
    "pss: writable root filesystem": ("gpu", _set(_csc, "readOnlyRootFilesystem", False), security_problems),
    "pss: capability added": ("cpu", _set(_csc, "capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}),
                              security_problems),
    "pss: capabilities not dropped": ("cpu", _set(_csc, "capabilities", {}), security_problems),
    "pss: seccomp unconfined": ("cpu", _set(_csc, "seccompProfile", {"type": "Unconfined"}),
                                security_problems),
    "pss: root user": ("cpu", _set(_csc, "runAsUser", 0), security_problems),
    "pss: may run as root": ("cpu", _set(_csc, "runAsNonRoot", False), security_problems),
    "pss: host network": ("cpu", _set(_pod, "hostNetwork", True), security_problems),
    "pss: hostPath volume": ("cpu", _hostpath, security_problems),
    "pss: init container without a security context": ("cpu", _add_sidecar, security_problems),
    "pss: BENTOML_HOME on the read-only root": ("cpu", _bentoml_home_not_mounted, security_problems),
    "probes: no readiness probe": ("cpu", _delete(_container, "readinessProbe"), probe_and_resource_problems),
    "probes: no startup probe": ("gpu", _delete(_container, "startupProbe"), probe_and_resource_problems),
    "probes: gRPC probe on the HTTP port": ("cpu", _grpc_probe_on_http, probe_and_resource_problems),
    "probes: readiness on /livez": ("cpu", _readiness_on_livez, probe_and_resource_problems),
    "resources: no limits": ("cpu", lambda d: _container(d)["resources"].pop("limits"),
                             probe_and_resource_problems),
    "resources: request above limit": ("cpu", _request_above_limit, probe_and_resource_problems),
    "gpu: GPU in the CPU overlay": ("cpu", _gpu_into_cpu, lambda d: gpu_problems(d, expect_gpu=False)),
    "gpu: no toleration": ("gpu", _drop_toleration, lambda d: gpu_problems(d, expect_gpu=True)),
    "gpu: no node selector": ("gpu", _drop_node_selector, lambda d: gpu_problems(d, expect_gpu=True)),
    "gpu: no GPU limit": ("gpu", lambda d: _container(d)["resources"]["limits"].pop("nvidia.com/gpu"),
                          lambda d: gpu_problems(d, expect_gpu=True)),
    "hpa: CPU only": ("cpu", _hpa_cpu_only, hpa_problems),
    "hpa: wrong metric name": ("cpu", _hpa_wrong_metric, hpa_problems),
    "hpa: aimed at no Deployment": ("cpu", _hpa_wrong_target, hpa_problems),
    "hpa: autoscaling/v1": ("cpu", _hpa_v1, hpa_problems),
    "hpa: min above max": ("cpu", _set(_hpa, "minReplicas", 20), hpa_problems),
    "hpa: Deployment pins replicas": ("cpu", _replicas, hpa_problems),
    "pdb: selects no pods": ("cpu", _pdb_typo, pdb_problems),
    "pdb: blocks every eviction": ("cpu", _pdb_too_strict, pdb_problems),
    "netpol: opens port 22": ("cpu", _open_ssh, network_policy_problems),
    "netpol: rule without ports": ("cpu", _open_everything, network_policy_problems),
    "netpol: no default deny": ("cpu", _no_default_deny, network_policy_problems),
    "netpol: egress anywhere": ("cpu", _egress_anywhere, network_policy_problems),
    "netpol: gRPC port not opened": ("cpu", _grpc_port_closed, network_policy_problems),
    "service: targetPort matches no container port": ("cpu", _service_wrong_target, service_problems),
    "service: no gRPC port": ("gpu", _service_no_grpc, service_problems),
    "service: selects both Deployments": ("cpu", _service_selects_both, service_problems),
    "contract: untagged image": ("cpu", _untagged_image, lambda d: contract_problems(d, tag_required=True)),
    "contract: --port differs from the container port": ("cpu", _wrong_port_arg,
                                                         lambda d: contract_problems(d, tag_required=True)),
    "contract: a container that runs both servers": ("cpu", _both_servers_in_one_container,
                                                     lambda d: contract_problems(d, tag_required=True)),
    "contract: bound to the loopback": ("cpu", _loopback, lambda d: contract_problems(d, tag_required=True)),
}


# what the report must say, so that a defect is caught for its own reason and not by accident
SAYS = {
    "schema: HPA without maxReplicas": "'maxReplicas' is a required property",
    "schema: v1 field in a v2 HPA (strict)": "'targetCPUUtilizationPercentage' was unexpected",
    "schema: misspelt field (strict)": "'livenesProbe' was unexpected",
    "schema: wrong type": "'two' is not of type 'integer'",
    "schema: kind without a schema": "Couldn't find schema for kind BentoDeployment",
    "pss: privileged": "container http: privileged",
    "pss: privilege escalation": "allowPrivilegeEscalation is not false",
    "pss: writable root filesystem": "readOnlyRootFilesystem is not true",
    "pss: capability added": "adds capabilities ['NET_ADMIN']",
    "pss: capabilities not dropped": "capabilities do not drop ALL",
    "pss: seccomp unconfined": "seccompProfile is not RuntimeDefault",
    "pss: root user": "container http: runAsUser 0",
    "pss: may run as root": "runAsNonRoot is not true",
    "pss: host network": "hostNetwork",
    "pss: hostPath volume": "volume host is ['hostPath']",
    "pss: init container without a security context": "container init: readOnlyRootFilesystem is not true",
    "pss: BENTOML_HOME on the read-only root": "/var/lib/bentoml is not on a writable volume",
    "probes: no readiness probe": "no readinessProbe",
    "probes: no startup probe": "no startupProbe",
    "probes: gRPC probe on the HTTP port": "gRPC readinessProbe not on the gRPC port",
    "probes: readiness on /livez": "readinessProbe on /livez, not /readyz",
    "resources: no limits": "no memory limit",
    "resources: request above limit": "memory request 4Gi above limit 3Gi",
    "gpu: GPU in the CPU overlay": "asks for nvidia.com/gpu",
    "gpu: no toleration": "does not tolerate the nvidia.com/gpu taint",
    "gpu: no node selector": "no nvidia.com/ nodeSelector",
    "gpu: no GPU limit": "no nvidia.com/gpu limit",
    "hpa: CPU only": "no Pods metric",
    "hpa: wrong metric name": "no Pods metric",
    "hpa: aimed at no Deployment": "is not a Deployment here",
    "hpa: autoscaling/v1": "not autoscaling/v2",
    "hpa: min above max": "replicas 20..10",
    "hpa: Deployment pins replicas": "sets replicas",
    "pdb: selects no pods": "selects [], want one Deployment's pods",
    "pdb: blocks every eviction": "blocks every eviction",
    "netpol: opens port 22": "opens port 22",
    "netpol: rule without ports": "without ports opens every port",
    "netpol: no default deny": "no default-deny NetworkPolicy",
    "netpol: egress anywhere": "egress beyond DNS",
    "netpol: gRPC port not opened": "ingress opened on [3000]",
    "service: targetPort matches no container port": "grpc targets 50052",
    "service: no gRPC port": "no grpc port",
    "service: selects both Deployments": "2 Services select its pods",
    "contract: untagged image": "image musicvae-serving has no pinned tag",
    "contract: --port differs from the container port": "serves on --port 8080",
    "contract: a container that runs both servers": "want exactly one of --no_grpc, --grpc",
    "contract: bound to the loopback": "binds 127.0.0.1, not 0.0.0.0",
}


def test_every_defect_says_what_it_is():
    assert SAYS.keys() == BROKEN.keys()


@pytest.mark.parametrize("defect", BROKEN)
def test_defect_is_caught(rendered, defect):
    target, mutate, check = BROKEN[defect]
    docs = rendered[target]
    assert check(docs) == [], "the unbroken manifests must pass this check"
    mutate(docs)
    problems = check(docs)
    assert problems, f"{defect} went unnoticed"
    assert any(SAYS[defect] in p for p in problems), problems
