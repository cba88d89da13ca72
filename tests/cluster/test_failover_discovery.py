"""Nodes found by DNS discovery after the gateway started (a Kubernetes headless Service whose pods come and
go): the gateway resolves the name again every ``discovery.interval`` seconds, profiles a new address and
plans with it, and lets a vanished one go (docs/resilience.md).

Real pieces only: node processes in the netns test-bed, the gateway as `edgeinfer serve --cluster` in its
own mount namespace where ``/etc/hosts`` is a file this test edits, so the gateway's own ``getaddrinfo``
sees the name's A records change (as a headless Service's do), the HTTP API read with httpx and the
``openai`` client.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.testbed import NODE_PORT, node_argv
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import HttpProcess, free_port
from edgeinfer.testbed import netns

REASON = netns.available() or (None if shutil.which("unshare") else "unshare (util-linux) is missing")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}"),
    pytest.mark.timeout(240),
]
NAME = "edgeinfer-nodes.test"
PROMPT = "the ship sails to the harbour and the crew"
N_TOKENS = 64


class Gateway(HttpProcess):
    """`edgeinfer serve --cluster` whose /etc/hosts is ``hosts`` (a private mount namespace)."""

    def __init__(self, cfg: Path, hosts: Path, log: Path):
        port = free_port()
        serve = [sys.executable, "-m", "edgeinfer.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        serve += ["--log-level", "warning", "--cluster", str(cfg)]
        shell = f'mount --bind "{hosts}" /etc/hosts && exec "$@"'
        super().__init__(["unshare", "--mount", "sh", "-c", shell, "sh", *serve], port=port, log=log)

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _hosts(path: Path, ips: list[str]) -> None:
    """Rewrite in place (the bind mount follows the file, not its name)."""
    lines = ["127.0.0.1 localhost", *(f"{ip} {NAME}" for ip in ips)]
    with path.open("w") as f:
        f.write("\n".join(lines) + "\n")


def _cluster(url: str) -> dict:
    r = httpx.get(url + "/v1/cluster", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["models"]["tiny"]


def _wait(what: str, predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ready(address: str) -> None:
    client = NodeClient(address, address, timeout=2)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                client.wait_ready(timeout=1.0)
                client.ping()
                return
            except NodeError:
                assert time.monotonic() < deadline, f"node {address} did not come up"
    finally:
        client.close()


def _stream(url: str, on_first=None) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    chunks = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, stream=True
    )
    text = []
    for c in chunks:
        if c.choices:
            if on_first is not None and not text:
                on_first()
            text.append(c.choices[0].text)
    return "".join(text)


def test_nodes_that_appear_and_vanish_in_dns_join_and_leave(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", arch="llama", n_layers=6)
    hosts = tmp_path / "hosts"
    with netns.Testbed(2, rate="1gbit") as tb:
        ips = [h.ip for h in tb.hosts]
        procs = []
        for i in range(2):
            out = (tmp_path / f"n{i}.log").open("ab")
            procs.append(tb.popen(i, node_argv(NODE_PORT, f"n{i}", 1), stdout=out, stderr=out))
        try:
            for ip in ips:
                _ready(f"{ip}:{NODE_PORT}")
            _hosts(hosts, ips[:1])  # only the first pod is in the Service yet
            cfg = tmp_path / "c.yaml"
            doc = {
                "model": str(tiny),
                "name": "tiny",
                "discovery": {"dns": NAME, "port": NODE_PORT, "expect": 1, "interval": 0.5},
                "wire_dtype": "f32",
                "ctx_size": 256,
                "planner": {"replicas": 1},
                "failover": {"heartbeat": 0.2, "ban": 1.0, "max_ban": 4.0, "adapt": False},
            }
            cfg.write_text(yaml.safe_dump(doc))
            first, second = f"node-{ips[0]}", f"node-{ips[1]}"
            with Gateway(cfg, hosts, tmp_path / "gw.log") as gw:
                state = _cluster(gw.url)
                assert [n["name"] for n in state["nodes"]] == [first]
                assert [s["node"] for s in state["stages"]] == [first]
                assert state["standbys"] == [None], state  # no other node for a standby
                reference = _stream(gw.url)  # undisturbed, on one node
                assert reference

                _hosts(hosts, ips)  # a second pod is scheduled: the gateway finds, profiles and uses it
                _wait("the new node to join and hold the standby", lambda: _cluster(gw.url)["standbys"][0])
                state = _cluster(gw.url)
                assert {n["name"]: n["up"] for n in state["nodes"]} == {first: True, second: True}, state
                # the re-plan over fresh profiles may keep the first node primary or move it to the newcomer:
                # either way one holds the stage and the other its standby
                primary, standby = state["stages"][0]["node"], state["standbys"][0]["node"]
                assert {primary, standby} == {first, second}, state
                victim = 0 if primary == first else 1

                def pod_deleted() -> (
                    None
                ):  # mid-stream: the primary's pod leaves the Service, its process dies
                    _hosts(hosts, [ip for i, ip in enumerate(ips) if i != victim])
                    procs[victim].send_signal(signal.SIGKILL)
                    procs[victim].wait(10)

                assert _stream(gw.url, on_first=pod_deleted) == reference  # no lost request
                _wait("the vanished node to leave", lambda: len(_cluster(gw.url)["nodes"]) == 1)
                state = _cluster(gw.url)
                assert [n["name"] for n in state["nodes"]] == [standby], state
                assert [s["node"] for s in state["stages"]] == [standby], state
                assert state["failovers"] >= 1 and state["available"], state
                assert _stream(gw.url) == reference
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)


def test_resolve_dns_names_a_node_per_address_and_nothing_for_an_unknown_name():
    from edgeinfer.cluster.config import Discovery, resolve_dns

    found = resolve_dns(Discovery(dns="localhost", port=50051))
    assert [(n.name, n.address) for n in found] == [("node-127.0.0.1", "127.0.0.1:50051")]
    assert resolve_dns(Discovery(dns="no-such-node.invalid", port=50051)) == []
