"""The k3s manifests parse, wire the headless Service to the StatefulSet, and the gateway's cluster.yaml is
a valid cluster config that discovers nodes through that Service."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgeinfer.cluster.config import parse_config

K3S = Path(__file__).resolve().parents[2] / "deploy" / "k3s"


def _docs() -> list[dict]:
    docs = []
    for f in sorted(K3S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_manifests_are_consistent():
    docs = _docs()
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    svc = by_kind[("Service", "edgeinfer-node")]
    sts = by_kind[("StatefulSet", "edgeinfer-node")]
    assert svc["spec"]["clusterIP"] == "None"  # headless: one A record per pod
    assert sts["spec"]["serviceName"] == "edgeinfer-node"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"] == labels
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    node = sts["spec"]["template"]["spec"]["containers"][0]
    assert node["command"][:2] == ["edgeinfer", "node"]
    port = svc["spec"]["ports"][0]["port"]
    assert f"0.0.0.0:{port}" in node["command"]

    cm = by_kind[("ConfigMap", "edgeinfer-cluster")]
    cfg = parse_config(yaml.safe_load(cm["data"]["cluster.yaml"]))
    assert cfg.discovery is not None
    assert cfg.discovery.dns == f"edgeinfer-node.{svc['metadata']['namespace']}.svc.cluster.local"
    assert cfg.discovery.port == port and cfg.discovery.expect == sts["spec"]["replicas"]
    gw = by_kind[("Deployment", "edgeinfer-gateway")]["spec"]["template"]["spec"]
    cmd = gw["containers"][0]["command"]
    assert cmd[:2] == ["edgeinfer", "serve"] and "--cluster" in cmd
    mount = gw["containers"][0]["volumeMounts"][0]["mountPath"]
    assert cmd[cmd.index("--cluster") + 1] == f"{mount}/cluster.yaml"
