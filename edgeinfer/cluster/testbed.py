"""Start `edgeinfer node` in every host of a test-bed and describe them as a cluster YAML."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edgeinfer.testbed.netns import Testbed, TestbedError

NODE_PORT = 50051


def node_argv(
    port: int = NODE_PORT,
    name: str | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    models_dir: str | None = "/",
    extra: list[str] | None = None,
) -> list[str]:
    """``models_dir``: the test-bed emulates a cluster on this very machine, so its nodes may load any GGUF
    file the gateway names (a real node allows only bundled models and its own --models-dir).
    ``extra``: more `edgeinfer node` flags (token file, certificates)."""
    argv = [sys.executable, "-m", "edgeinfer.cluster.cli", "node", "--listen", f"0.0.0.0:{port}"]
    if models_dir:
        argv += ["--models-dir", models_dir]
    if name:
        argv += ["--name", name]
    if threads:
        argv += ["--threads", str(threads)]
    if memory_limit:
        argv += ["--memory-limit", str(memory_limit)]
    return argv + list(extra or ())


def start_nodes(
    tb: Testbed,
    port: int = NODE_PORT,
    threads: int | None = None,
    memory_limit: str | None = None,
    log_dir: str | Path | None = None,
    timeout: float = 60.0,
    extra: list[str] | None = None,
    security=None,
) -> list:
    """Start a node in each host, wait until all answer; returns their ``NodeSpec``s (name n<i>).
    ``extra``: more node flags, ``{name}`` replaced by each node's name (e.g. its certificate's file);
    ``security``: the ``ClusterSecurity`` the nodes then require (to see them answer)."""
    from edgeinfer.cluster.client import NodeClient, NodeError
    from edgeinfer.cluster.config import NodeSpec

    specs, procs = [], []
    for i, host in enumerate(tb.hosts):
        name = f"n{i}"
        out = subprocess.DEVNULL
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            out = (Path(log_dir) / f"{tb.name}-{name}.log").open("ab")
        procs.append(
            tb.popen(
                i,
                node_argv(
                    port, name, threads, memory_limit, extra=[a.format(name=name) for a in extra or ()]
                ),
                stdout=out,
                stderr=out,
            )
        )
        specs.append(NodeSpec(name=name, address=f"{host.ip}:{port}"))
    deadline = time.monotonic() + timeout
    for spec, proc in zip(specs, procs, strict=True):
        client = NodeClient(spec.address, spec.name, timeout=5, security=security)
        try:
            while True:
                if proc.poll() is not None:
                    raise TestbedError(
                        f"node {spec.name} exited with code {proc.returncode} before answering"
                    )
                try:
                    client.wait_ready(timeout=1.0)
                    client.ping()
                    break
                except NodeError:
                    if time.monotonic() > deadline:
                        raise TestbedError(
                            f"node {spec.name} did not answer within {timeout:.0f} s"
                        ) from None
        finally:
            client.close()
    return specs
