"""The K3s manifests (deploy/k3s/): valid against Kubernetes' own schemas, consistent with each other and with
the code they run, and run for real.

No container engine or kubelet runs here, so ``test_manifests_run_on_the_testbed`` plays both: every pod of
the manifests becomes a network namespace of the test-bed running its container's ``command``/``args``/``env``
(Secret and ConfigMap references resolved from the manifests, ``$(VAR)`` expanded, volumes as temporary
directories), the headless Service's DNS name resolves to the ready pods (``/etc/netns/<ns>/hosts``), the
probes are polled as a kubelet does (startup, then readiness, then liveness) and the official openai client
is served through the gateway.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K3S = ROOT / "deploy" / "k3s"
DOCS = ROOT / "docs" / "deploy.md"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CLUSTER_DOMAIN = "svc.cluster.local"
SECRET_WORDS = re.compile(r"key|token|secret|password|cert|credential", re.IGNORECASE)


def _docs() -> list[dict]:
    docs = []
    for f in sorted(K3S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _by_kind() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _docs()}


def _workloads() -> list[dict]:
    return [d for d in _docs() if d["kind"] in ("Deployment", "StatefulSet")]


def _containers() -> list[tuple[dict, dict]]:
    """(workload, container) pairs, init containers included."""
    out = []
    for w in _workloads():
        spec = w["spec"]["template"]["spec"]
        out += [(w, c) for c in spec.get("initContainers", []) + spec["containers"]]
    return out


def _arg(container: dict, flag: str) -> str:
    args = container.get("args", [])
    return args[args.index(flag) + 1]


def _port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


# --- schemas ------------------------------------------------------------------------------------------------


def _newest_schema_version() -> str:
    import kubernetes_validate.utils as kvu

    versions = sorted(kvu.all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
    return versions[-1]


def test_manifests_validate_strictly_against_the_newest_kubernetes_schemas():
    """`kubernetes-validate --strict`: unknown fields are errors, as with `kubectl apply --validate=strict`.
    The newest schema the installed kubernetes-validate ships (K3s tracks upstream Kubernetes releases)."""
    import kubernetes_validate

    version = _newest_schema_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 33), version
    docs = _docs()
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the path
    # the command-line tool, as docs/deploy.md runs it
    tool = Path(sys.executable).with_name("kubernetes-validate")
    out = subprocess.run(
        [str(tool), "--strict", "-k", version, *map(str, sorted(K3S.glob("*.yaml")))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_validator_rejects_a_misspelt_field():
    import kubernetes_validate

    bad = _by_kind()[("StatefulSet", "edgeinfer-node")]
    bad = yaml.safe_load(yaml.safe_dump(bad))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": "grpc"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, _newest_schema_version(), strict=True)


# --- wiring -------------------------------------------------------------------------------------------------


def test_manifests_are_consistent():
    from edgeinfer.cluster.config import parse_config

    docs = _docs()
    by_kind = _by_kind()
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert namespaces == {"edgeinfer"}
    assert sorted(K3S.glob("*.yaml"))[0].name == "00-namespace.yaml"  # `kubectl apply -f` order
    assert all(d["metadata"].get("namespace") == "edgeinfer" for d in docs if d["kind"] != "Namespace")

    svc = by_kind[("Service", "edgeinfer-node")]
    sts = by_kind[("StatefulSet", "edgeinfer-node")]
    assert svc["spec"]["clusterIP"] == "None"  # headless: one A record per pod
    assert svc["spec"]["publishNotReadyAddresses"] is False  # DNS lists ready pods only
    assert sts["spec"]["serviceName"] == "edgeinfer-node"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"] == labels
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    node = sts["spec"]["template"]["spec"]["containers"][0]
    assert node["command"] == ["edgeinfer", "node"]
    port = svc["spec"]["ports"][0]["port"]
    assert _port_number(node, svc["spec"]["ports"][0]["targetPort"]) == port
    args = node["args"]
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{port}"

    cm = by_kind[("ConfigMap", "edgeinfer-cluster")]
    raw = yaml.safe_load(cm["data"]["cluster.yaml"])
    parse_config(raw)  # a valid cluster config
    assert raw["discovery"]["dns"] == f"edgeinfer-node.{svc['metadata']['namespace']}.{CLUSTER_DOMAIN}"
    assert raw["discovery"]["port"] == port and raw["discovery"]["expect"] == sts["spec"]["replicas"]
    assert 0 < raw["discovery"]["interval"] <= 30  # pods that come and go are re-discovered while serving
    gw = by_kind[("Deployment", "edgeinfer-gateway")]["spec"]["template"]
    c = gw["spec"]["containers"][0]
    assert c["command"] == ["edgeinfer", "serve"] and "--cluster" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "cluster")["mountPath"]
    assert c["args"][c["args"].index("--cluster") + 1] == f"{mount}/cluster.yaml"
    gw_svc = by_kind[("Service", "edgeinfer-gateway")]
    assert all(gw["metadata"]["labels"].get(k) == v for k, v in gw_svc["spec"]["selector"].items())


def test_every_container_is_probed_on_routes_that_exist():
    """Startup, readiness and liveness everywhere. HTTP probes use routes the server has; the gateway is ready
    exactly when /health says so (503 while loading or failed), and liveness never asks /health, which would
    restart a gateway that is only waiting for its nodes."""
    from edgeinfer.api.app import create_app
    from edgeinfer.api.metrics import Metrics
    from edgeinfer.api.worker import ModelWorker
    from edgeinfer.cluster.node import NODE_SERVICE

    metrics = Metrics()
    app = create_app([ModelWorker("m", lambda: None, metrics)], metrics)
    routes = {getattr(r, "path", None) for r in app.routes}
    for w, c in _containers():
        probes = {k: c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(probes.values()), f"{w['metadata']['name']}/{c['name']} lacks a probe: {probes}"
        for kind, p in probes.items():
            if "httpGet" in p:
                assert c["command"][:2] == ["edgeinfer", "serve"]
                assert p["httpGet"]["path"] in routes, (kind, p)
                _port_number(c, p["httpGet"]["port"])
            else:
                # the node: Kubernetes' gRPC probe on its plaintext health-only port (grpc.health.v1)
                assert c["command"][:2] == ["edgeinfer", "node"] and "grpc" in p, (kind, p)
                assert p["grpc"].get("service", "") in ("", NODE_SERVICE)
                assert _arg(c, "--health-listen") == f"0.0.0.0:{p['grpc']['port']}"
                assert p["grpc"]["port"] in {q["containerPort"] for q in c["ports"]}
                assert p["grpc"]["port"] != _port_number(c, "grpc")  # the kubelet has no token or cert
        if c["command"][:2] == ["edgeinfer", "serve"]:
            assert probes["readinessProbe"]["httpGet"]["path"] == "/health"
            assert probes["startupProbe"]["httpGet"]["path"] == "/health"
            assert probes["livenessProbe"]["httpGet"]["path"] != "/health"


def test_the_gateway_startup_budget_covers_dns_discovery():
    by_kind = _by_kind()
    raw = yaml.safe_load(by_kind[("ConfigMap", "edgeinfer-cluster")]["data"]["cluster.yaml"])
    c = by_kind[("Deployment", "edgeinfer-gateway")]["spec"]["template"]["spec"]["containers"][0]
    p = c["startupProbe"]
    assert p["periodSeconds"] * p["failureThreshold"] >= raw["discovery"]["timeout"] + 120  # + plan and load


def test_secrets_are_secret_refs_and_never_in_a_configmap():
    """Every credential reaches a container from a Secret; no ConfigMap holds one; docs/deploy.md creates
    exactly the Secrets the manifests reference (and the manifests ship no Secret values)."""
    docs = _docs()
    assert not [d for d in docs if d["kind"] == "Secret"], "Secret values do not belong in the repository"
    secret_mounts = _secret_mounts()
    for d in docs:
        if d["kind"] == "ConfigMap":
            for key, text in d["data"].items():
                assert not SECRET_WORDS.search(key), key
                assert "-----BEGIN" not in text, f"{key} holds a PEM block"
                flat = yaml.safe_load(text) if key.endswith((".yaml", ".yml")) else {}
                # a credential-like field may only name a file in a Secret volume (security.tls: the paths
                # of the mounted certificates), never hold a value
                for path, value in _leaves(flat):
                    if SECRET_WORDS.search(path):
                        assert isinstance(value, str) and value.startswith("/"), f"{key}: {path} = {value!r}"
                        assert any(value.startswith(m + "/") for m in secret_mounts), (
                            f"{key}: {path} names {value}, which is in no Secret volume"
                        )
    refs = set()
    for _, c in _containers():
        for e in c.get("env", []):
            source = e.get("valueFrom", {})
            if SECRET_WORDS.search(e["name"]):
                assert "secretKeyRef" in source, f"{e['name']} must come from a Secret"
                assert "value" not in e
            if "secretKeyRef" in source:
                refs.add((source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]))
            assert "configMapKeyRef" not in source or not SECRET_WORDS.search(e["name"])
        for arg in c.get("args", []) + c["command"]:
            assert not arg.startswith(("--api-key=", "--token")), arg
    assert ("edgeinfer-api-key", "api-key") in refs
    assert refs == _secrets_created_by_the_docs()


def _leaves(tree, prefix: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, tree


def _secret_mounts(workload: dict | None = None) -> set[str]:
    """Mount paths of Secret volumes (of one workload, or of all)."""
    out = set()
    for w in [workload] if workload else _workloads():
        spec = w["spec"]["template"]["spec"]
        secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
        for c in spec["containers"]:
            out |= {m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes}
    return out


def _docs_commands() -> list[str]:
    """The shell commands of docs/deploy.md's code blocks, continuation lines joined."""
    text = DOCS.read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines()]


def _secret_files_by_the_docs() -> dict[str, dict[str, str]]:
    """Secret name -> {key: file} of the docs' `kubectl create secret generic NAME --from-file=...`."""
    made: dict[str, dict[str, str]] = {}
    for line in _docs_commands():
        m = re.match(r"kubectl -n edgeinfer create secret generic (\S+) (.*--from-file=.*)$", line)
        if m:
            for spec in re.findall(r"--from-file=(\S+)", m.group(2)):
                key, _, path = spec.rpartition("=")
                made.setdefault(m.group(1), {})[key or Path(path).name] = path
    return made


def _certs_command_of_the_docs() -> list[str]:
    (line,) = [x for x in _docs_commands() if x.startswith(".venv/bin/edgeinfer cluster certs ")]
    return shlex.split(line)


def test_tls_certificates_are_secret_volumes_the_docs_fill():
    """Mutual TLS between gateway and nodes: every node pod (each replica) passes its own certificate and key
    and the CA from a Secret volume, the gateway's cluster YAML names its client certificate in another; the
    docs' `edgeinfer cluster certs` names exactly the StatefulSet's pods, and their `kubectl create secret`
    commands put every file the pods open into the Secret the pods mount, and never the CA's key."""
    from edgeinfer.cluster.config import parse_config

    by_kind = _by_kind()
    sts = by_kind[("StatefulSet", "edgeinfer-node")]
    gw = by_kind[("Deployment", "edgeinfer-gateway")]
    files = _secret_files_by_the_docs()
    for name, keys in files.items():
        assert "ca.key" not in keys and not any(p.endswith("ca.key") for p in keys.values()), name
    certs = _certs_command_of_the_docs()
    pods = [f"edgeinfer-node-{i}" for i in range(sts["spec"]["replicas"])]
    assert [certs[i + 1] for i, a in enumerate(certs) if a == "--node"] == pods

    def secret_of(workload: dict, path: str) -> tuple[str, str]:
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (c,) = spec["containers"]
        for m in c["volumeMounts"]:
            if path.startswith(m["mountPath"] + "/") and "secret" in volumes[m["name"]]:
                assert m.get("readOnly") is True
                return volumes[m["name"]]["secret"]["secretName"], path[len(m["mountPath"]) + 1 :]
        raise AssertionError(f"{path} is in no Secret volume of {workload['metadata']['name']}")

    (node,) = sts["spec"]["template"]["spec"]["containers"]
    for pod in pods:
        for flag in ("--tls-cert", "--tls-key", "--tls-ca"):
            secret, key = secret_of(sts, _expand(_arg(node, flag), {"POD_NAME": pod}))
            assert key in files[secret], f"docs/deploy.md does not put {key} into {secret}"
    assert Path(files["edgeinfer-node-tls"][f"node-{pods[0]}.pem"]).parent.name == certs[3]
    cfg = parse_config(yaml.safe_load(by_kind[("ConfigMap", "edgeinfer-cluster")]["data"]["cluster.yaml"]))
    assert cfg.security.tls is not None
    for path in (cfg.security.tls.ca, cfg.security.tls.cert, cfg.security.tls.key):
        secret, key = secret_of(gw, path)
        assert key in files[secret], f"docs/deploy.md does not put {key} into {secret}"


def _secrets_created_by_the_docs() -> set[tuple[str, str]]:
    text = DOCS.read_text()
    made = set()
    for m in re.finditer(
        r"kubectl -n edgeinfer create secret generic (\S+)((?: --from-literal=[\w-]+=\S+)+)", text
    ):
        for key in re.findall(r"--from-literal=([\w-]+)=", m.group(2)):
            made.add((m.group(1), key))
    return made


def test_only_the_gateway_may_reach_the_node_port():
    by_kind = _by_kind()
    policies = [d for d in _docs() if d["kind"] == "NetworkPolicy"]
    node_labels = by_kind[("StatefulSet", "edgeinfer-node")]["spec"]["template"]["metadata"]["labels"]
    gw_labels = by_kind[("Deployment", "edgeinfer-gateway")]["spec"]["template"]["metadata"]["labels"]
    port = by_kind[("Service", "edgeinfer-node")]["spec"]["ports"][0]["port"]
    selecting = [
        p
        for p in policies
        if all(node_labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
    ]
    assert len(selecting) == 1
    spec = selecting[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector / ipBlock: other pods and hosts stay out
    assert peer["podSelector"]["matchLabels"] == gw_labels
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_pods_run_unprivileged_on_a_read_only_root():
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), flags=re.M)
    assert user, "the image must name its non-root user"
    for w, c in _containers():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == user.group(1)
        assert pod.get("automountServiceAccountToken") is False
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        cache = next(e["value"] for e in c["env"] if e["name"] == "XDG_CACHE_HOME")
        assert "emptyDir" in volumes[mounts[cache]]  # the native kernels are compiled here


def _quantity(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    m = re.fullmatch(r"([\d.]+)(Ki|Mi|Gi|m|)", str(q))
    assert m, q
    return float(m.group(1)) * units[m.group(2)]


def test_resources_fit_a_raspberry_pi_5():
    """Sized from `edgeinfer bench fit` for a Raspberry Pi 5 (8 GB), as docs/deploy.md derives them: one node
    pod and the gateway share a Pi within its usable memory; a node's memory request holds the default model
    whole at the configured context; the node's --memory-limit (what the planner may place) leaves the
    runtime room below the container's limit."""
    from edgeinfer.bench.fit import fit_one, load_devices, load_models
    from edgeinfer.units import parse_bytes

    by_kind = _by_kind()
    raw = yaml.safe_load(by_kind[("ConfigMap", "edgeinfer-cluster")]["data"]["cluster.yaml"])
    devices, eff = load_devices()
    pi = next(d for d in devices if d.id == "rpi5-8gb")
    models, bits = load_models()
    qwen = next(m for m in models if m.id.startswith("qwen2.5-0.5b"))
    fit = fit_one(qwen, "q4_k_m", bits["q4_k_m"], pi, raw.get("ctx_size", 4096), eff)
    assert fit.fits
    node = by_kind[("StatefulSet", "edgeinfer-node")]["spec"]["template"]["spec"]["containers"][0]
    gw = by_kind[("Deployment", "edgeinfer-gateway")]["spec"]["template"]["spec"]["containers"][0]
    for c in (node, gw):
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
        assert "cpu" not in c["resources"]["limits"]  # CFS throttling would stall a pipeline stage
    node_req, node_lim = (_quantity(node["resources"][k]["memory"]) for k in ("requests", "limits"))
    gw_req, gw_lim = (_quantity(gw["resources"][k]["memory"]) for k in ("requests", "limits"))
    assert node_req >= fit.needed_gb * 1e9
    assert node_lim + gw_lim <= pi.usable_gb * 1e9
    weights_cap = parse_bytes(node["args"][node["args"].index("--memory-limit") + 1])
    assert weights_cap + fit.overhead_gb * 1e9 <= node_lim
    cpus = _quantity(node["resources"]["requests"]["cpu"]) + _quantity(gw["resources"]["requests"]["cpu"])
    assert cpus <= 4  # a Pi 5 has four cores
    text = DOCS.read_text()
    for value in (node["resources"]["requests"]["memory"], node["resources"]["limits"]["memory"],
                  gw["resources"]["requests"]["memory"], gw["resources"]["limits"]["memory"]):  # fmt: skip
        assert value in text, f"docs/deploy.md does not state {value}"


# --- the manifests, run -------------------------------------------------------------------------------------

# The test's two operator settings, changed the way docs/deploy.md says: the ConfigMap's `model:` set to the
# small bundled model, and two node machines (StatefulSet replicas and discovery.expect together), to keep
# the run short on a shared two-core machine (every node pod compiles its kernels into its own emptyDir).
SERVED_MODEL = "gemma-3-270m"
NODE_REPLICAS = 2
STARTUP_BUDGET = 420.0  # seconds: a cap on top of each probe's own budget


@dataclass
class Pod:
    name: str
    workload: dict
    container: dict
    host: int
    ip: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    proc: subprocess.Popen | None = None
    started: bool = False
    ready: bool = False

    @property
    def labels(self) -> dict:
        return self.workload["spec"]["template"]["metadata"]["labels"]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes; unknown names stay)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _image_env(paths: dict[str, str]) -> dict[str, str]:
    """The final stage's ENV of deploy/Dockerfile, image paths mapped to this machine's."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, flags=re.M):
        for item in shlex.split(line):
            key, value = item.split("=", 1)
            env[key] = value
    out = {}
    for key, value in env.items():
        value = value.replace("$PATH", os.environ.get("PATH", ""))
        for image_path, here in paths.items():
            value = value.replace(image_path, here)
        out[key] = value
    return out


def _resolve_env(pod: Pod, configmaps: dict, secrets: dict, mounts: dict[str, str], base: dict) -> dict:
    env = dict(base)
    for e in pod.container.get("env", []):
        if "value" in e:
            value = _expand(e["value"], env)
        else:
            src = e["valueFrom"]
            if "fieldRef" in src:
                fields = {"metadata.name": pod.name, "status.podIP": pod.ip}
                fields["metadata.namespace"] = pod.workload["metadata"]["namespace"]
                value = fields[src["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                value = secrets[ref["name"]][ref["key"]]
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                value = configmaps[ref["name"]][ref["key"]]
            else:
                raise AssertionError(f"env source the test does not know: {src}")
        env[e["name"]] = _map_paths(value, mounts)
    return env


def _map_paths(value: str, mounts: dict[str, str]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path + "/"):
            return mounts[mount_path] + value[len(mount_path) :]
    return value


def _probe(pod: Pod, probe: dict) -> bool:
    """One probe as the kubelet runs it: HTTP 200-399, or a TCP connect, within timeoutSeconds."""
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://{pod.ip}:{_port_number(pod.container, get['port'])}{get.get('path', '/')}"
        try:
            return 200 <= httpx.get(url, timeout=timeout).status_code < 400
        except httpx.HTTPError:
            return False
    if "grpc" in probe:  # the kubelet's gRPC probe: grpc.health.v1 Check, SERVING passes
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(f"{pod.ip}:{probe['grpc']['port']}") as channel:
                request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False
    if "tcpSocket" in probe:
        try:
            socket.create_connection(
                (pod.ip, _port_number(pod.container, probe["tcpSocket"]["port"])), timeout
            ).close()
            return True
        except OSError:
            return False
    raise AssertionError(f"probe kind the test does not run: {probe}")


def _publish_dns(pods: list[Pod], services: list[dict], hosts_files: list[Path]) -> None:
    """Cluster DNS for headless Services: NAME.NS.svc.cluster.local -> every ready pod the Service selects.
    /etc/netns/<ns>/hosts is what `ip netns exec` shows the pod as /etc/hosts (rewritten in place: the bind
    mount keeps the inode)."""
    lines = ["127.0.0.1 localhost"]
    for svc in services:
        if svc["spec"].get("clusterIP") != "None":
            continue
        name = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.{CLUSTER_DOMAIN}"
        for pod in pods:
            if pod.ready and all(pod.labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
                lines.append(f"{pod.ip} {name}")
                lines.append(f"{pod.ip} {pod.name}.{name}")
    for f in hosts_files:
        with f.open("r+") as fh:
            fh.seek(0)
            fh.write("\n".join(lines) + "\n")
            fh.truncate()


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(900)
def test_manifests_run_on_the_testbed(tmp_path):
    from edgeinfer.models.registry import cache_dir, resolve
    from edgeinfer.testbed import netns

    reason = netns.available()
    if reason is not None:
        pytest.skip(f"test-bed: {reason}")
    import openai

    resolve(SERVED_MODEL, progress=False)
    docs = _docs()
    configmaps = {d["metadata"]["name"]: dict(d["data"]) for d in docs if d["kind"] == "ConfigMap"}
    cluster = yaml.safe_load(configmaps["edgeinfer-cluster"]["cluster.yaml"])
    cluster["model"] = SERVED_MODEL
    cluster["discovery"]["expect"] = NODE_REPLICAS
    configmaps["edgeinfer-cluster"]["cluster.yaml"] = yaml.safe_dump(cluster)
    # the Secrets, as docs/deploy.md creates them with `kubectl create secret generic`
    secrets: dict[str, dict[str, str]] = {}
    for name, key in _secrets_created_by_the_docs():
        secrets.setdefault(name, {})[key] = os.urandom(16).hex()
    # the certificates, made by the docs' `edgeinfer cluster certs` and put into the Secrets as they say
    certs_cmd = _certs_command_of_the_docs()
    certs_cmd[0] = str(Path(sys.executable).with_name("edgeinfer"))
    out = subprocess.run(certs_cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    secret_files = {
        name: {key: (tmp_path / path).read_bytes() for key, path in keys.items()}
        for name, keys in _secret_files_by_the_docs().items()
    }
    services = [d for d in docs if d["kind"] == "Service"]

    pods: list[Pod] = []
    for w in _workloads():
        n = NODE_REPLICAS if w["kind"] == "StatefulSet" else w["spec"].get("replicas", 1)
        for i in range(n):
            (c,) = w["spec"]["template"]["spec"]["containers"]
            pods.append(Pod(f"{w['metadata']['name']}-{i}", w, c, host=len(pods)))
    bin_dir = str(Path(sys.executable).parent)
    image_paths = {"/opt/venv/bin": bin_dir, "/opt/edgeinfer/models": str(cache_dir().parent)}
    hosts_files = []
    with netns.Testbed(len(pods), rate=None) as tb:
        try:
            for pod in pods:
                pod.ip = tb.ip(pod.host)
                etc = Path("/etc/netns") / tb.hosts[pod.host].ns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text("127.0.0.1 localhost\n")
                hosts_files.append(etc / "hosts")
                spec = pod.workload["spec"]["template"]["spec"]
                volumes = {v["name"]: v for v in spec["volumes"]}
                mounts = {
                    m["mountPath"]: str(tmp_path / pod.name / m["name"])
                    for m in pod.container["volumeMounts"]
                }
                for m in pod.container["volumeMounts"]:
                    d = Path(mounts[m["mountPath"]])
                    d.mkdir(parents=True)
                    v = volumes[m["name"]]
                    if "configMap" in v:
                        for key, text in configmaps[v["configMap"]["name"]].items():
                            # paths into the pod's other volumes (the cluster YAML names the certificates'
                            # Secret volume) point where this test placed them
                            alternatives = "|".join(
                                re.escape(m) for m in sorted(mounts, key=len, reverse=True)
                            )
                            text = re.sub(
                                rf"(?<= )({alternatives})/",
                                lambda g, mounts=mounts: mounts[g.group(1)] + "/",
                                text,
                            )
                            (d / key).write_text(text)
                    elif "secret" in v:
                        for key, data in secret_files[v["secret"]["secretName"]].items():
                            (d / key).write_bytes(data)
                            (d / key).chmod(v["secret"].get("defaultMode", 0o644))
                    else:
                        assert "emptyDir" in v, v
                base = {k: _map_paths(v, mounts) for k, v in _image_env(image_paths).items()}
                pod.env = _resolve_env(pod, configmaps, secrets, mounts, base)
                argv = [_map_paths(_expand(a, pod.env), mounts) for a in pod.container["command"]]
                argv += [_map_paths(_expand(a, pod.env), mounts) for a in pod.container.get("args", [])]
                assert argv[0] == "edgeinfer"
                pod.argv = [str(Path(bin_dir) / "edgeinfer"), *argv[1:]]
                pod.log = tmp_path / f"{pod.name}.log"
                env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEINFER_", "XDG_"))}
                env |= pod.env
                pod.proc = tb.popen(
                    pod.host, pod.argv, env=env, stdout=pod.log.open("wb"), stderr=subprocess.STDOUT
                )

            # the kubelet: startup probe until it passes (or its budget is spent), then readiness
            t0 = time.monotonic()
            ready_order: list[str] = []
            while not all(p.ready for p in pods):
                for pod in pods:
                    if pod.proc.poll() is not None:
                        pytest.fail(f"{pod.name} exited with {pod.proc.returncode}:\n{pod.tail()}")
                    probes = pod.container
                    if not pod.started:
                        p = probes["startupProbe"]
                        budget = p.get("initialDelaySeconds", 0) + p["periodSeconds"] * p["failureThreshold"]
                        if time.monotonic() - t0 > min(budget, STARTUP_BUDGET):
                            pytest.fail(f"{pod.name}: startup probe failed for {budget} s:\n{pod.tail()}")
                        pod.started = _probe(pod, p)
                    if pod.started and not pod.ready and _probe(pod, probes["readinessProbe"]):
                        pod.ready = True
                        ready_order.append(pod.name)
                        _publish_dns(pods, services, hosts_files)
                time.sleep(0.5)
            print(f"all {len(pods)} pods ready after {time.monotonic() - t0:.0f} s")
            for pod in pods:
                assert _probe(pod, pod.container["livenessProbe"]), pod.name
                assert _probe(pod, pod.container["readinessProbe"]), pod.name

            gw = next(p for p in pods if p.container["command"][:2] == ["edgeinfer", "serve"])
            assert ready_order[-1] == gw.name, ready_order  # not ready before its nodes were in DNS
            port = _port_number(gw.container, "http")
            base_url = f"http://{gw.ip}:{port}/v1"
            key = gw.env["EDGEINFER_API_KEY"]
            assert (
                httpx.get(f"{base_url}/models", timeout=10).status_code == 401
            )  # the Secret's key is required
            client = openai.OpenAI(base_url=base_url, api_key=key, timeout=120, max_retries=0)
            (model,) = client.models.list().data
            assert model.id == SERVED_MODEL
            out = client.completions.create(model=SERVED_MODEL, prompt="The capital of France is",
                                            max_tokens=8, temperature=0)  # fmt: skip
            assert out.choices[0].text.strip() and out.usage.completion_tokens > 0
            pieces = [
                ch.choices[0].text
                for ch in client.completions.create(
                    model=SERVED_MODEL, prompt="One, two, three,", max_tokens=8, temperature=0, stream=True
                )  # fmt: skip
                if ch.choices
            ]
            assert "".join(pieces).strip()
            metrics = httpx.get(f"http://{gw.ip}:{port}/metrics", timeout=10).text
            assert f'edgeinfer:generation_tokens_total{{model_name="{SERVED_MODEL}"}}' in metrics
            _report_memory(pods)

            # the node pods die: readiness takes the gateway out of the Service, liveness leaves it running
            nodes = [p for p in pods if p is not gw]
            for victim in nodes:
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait(10)
                victim.ready = False
            _publish_dns(pods, services, hosts_files)
            failed = client.with_options(timeout=60).completions.with_raw_response
            with pytest.raises(openai.APIStatusError) as exc:
                failed.create(model=SERVED_MODEL, prompt="Hello", max_tokens=4, temperature=0)
            assert exc.value.status_code >= 500 and exc.value.body  # an OpenAI-shaped error, not a hang
            deadline = time.monotonic() + 15
            gw_ready = True
            while time.monotonic() < deadline and gw_ready:
                gw_ready = _probe(gw, gw.container["readinessProbe"])
                time.sleep(1)
            assert _probe(gw, gw.container["livenessProbe"])
            assert not gw_ready, "the gateway stayed ready with every node dead"
        finally:
            for f in hosts_files:
                shutil.rmtree(f.parent, ignore_errors=True)


def _report_memory(pods: list[Pod]) -> None:
    """Resident memory of every pod's process tree (the figures docs/deploy.md quotes)."""
    import psutil

    for pod in pods:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pod.proc.pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            print(f"{pod.name}: {rss / 2**20:.0f} MiB resident")
