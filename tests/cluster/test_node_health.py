"""The node's standard gRPC health service (grpc.health.v1), asked by a real health client: what Kubernetes'
``grpc:`` probes and ``grpc_health_probe`` ask. SERVING while the node takes work, NOT_SERVING when every
worker is stuck and from shutdown on; the plaintext health port answers without token or certificate while
the node port refuses such callers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeinfer.cluster.auth import load_security
from edgeinfer.cluster.client import NodeClient
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.node import NODE_SERVICE, NodeHealth, start
from edgeinfer.process import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "health-test-token-0123456789"


def _check(address: str, service: str = "", metadata=None) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5, metadata=metadata).status


def _until(address: str, status: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _check(address) == status:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(
        f"{address} did not report {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
    )


def test_health_reports_a_wedged_node_and_its_recovery():
    host = ShardHost("h0", threads=1, memory_limit=None)
    health = NodeHealth(stall=1.0, period=0.1)
    security = load_security(env={"EDGEINFER_CLUSTER_TOKEN": TOKEN})
    server, port = start(host, "127.0.0.1:0", max_workers=1, security=security, health=health)
    health_port = health.serve("127.0.0.1:0")
    node, probe = f"127.0.0.1:{port}", f"127.0.0.1:{health_port}"
    client = NodeClient(node, "h0", timeout=30, security=security)
    try:
        assert _check(probe) == SERVING and _check(probe, NODE_SERVICE) == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            _check(probe, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # the node port answers the same service, but only with the cluster token
        with pytest.raises(grpc.RpcError) as refused:
            _check(node)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _check(node, metadata=[("authorization", f"Bearer {TOKEN}")]) == SERVING
        # the probe port carries health alone: the Node service is not there
        with pytest.raises(Exception, match="UNIMPLEMENTED"):
            NodeClient(probe, "probe", timeout=5).ping()

        # a forward that never returns, as a hung kernel would: the host lock held, and the node's only
        # worker stuck behind it in a real Drop call
        host._lock.acquire()
        stuck = threading.Thread(target=client.drop, args=("s",), daemon=True)
        try:
            stuck.start()
            waited = _until(probe, NOT_SERVING, timeout=10)
            assert waited >= 0.5  # not before the stall budget (1 s, less the time the call took to land)
            assert not health.serving
        finally:
            host._lock.release()
        stuck.join(10)
        _until(probe, SERVING, timeout=5)
        client.ping()  # and it serves again
    finally:
        client.close()
        health.close()
        server.stop(0)
        host.close()
    # after close the health port is gone
    with pytest.raises(grpc.RpcError):
        _check(probe)


def test_the_node_command_serves_health_and_turns_not_serving_on_sigterm(tmp_path):
    port, health_port = free_port(), free_port()
    log = tmp_path / "node.log"
    cmd = [str(Path(sys.executable).with_name("edgeinfer")), "node", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--health-listen", f"127.0.0.1:{health_port}", "--name", "h1", "--memory-limit", "256MiB"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEINFER_")}
    env["EDGEINFER_CLUSTER_TOKEN"] = TOKEN
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    probe = f"127.0.0.1:{health_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if _check(probe) == SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        # a Watch stream, as a health-checking load balancer holds one: it sees the shutdown
        channel = grpc.insecure_channel(probe)
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        seen = [next(stream).status]
        assert seen == [SERVING]
        proc.send_signal(signal.SIGTERM)
        try:
            for reply in stream:
                seen.append(reply.status)
        except grpc.RpcError:
            pass  # the health port closed after the update
        channel.close()
        assert NOT_SERVING in seen, seen
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
