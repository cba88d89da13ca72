"""`testbed up` -> `plan` -> `testbed down` as a user runs them, through the `edgeinfer` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.testbed import netns

REASON = netns.available()
CLI = [sys.executable, "-m", "edgeinfer.cli"]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(600)
@pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}")
def test_testbed_up_plan_down(tmp_path: Path):
    model = write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=4)
    name = f"c{os.getpid() % 100000}"
    out = tmp_path / "cluster.yaml"
    netns.teardown(name)  # a leftover of an earlier killed run with this pid
    try:
        up = _run("testbed", "up", "--nodes", "2", "--rate", "100mbit", "--model", str(model), "--name", name,
                  "--threads", "1", "--out", str(out), "--log-dir", str(tmp_path))  # fmt: skip
        assert up.returncode == 0, up.stderr
        doc = yaml.safe_load(out.read_text())
        assert doc["model"] == str(model) and [n["name"] for n in doc["nodes"]] == ["n0", "n1"]
        assert len(netns.list_namespaces(name)) == 2
        status = _run("testbed", "status")
        assert name in status.stdout and "detached" in status.stdout
        plan = _run("plan", "--cluster", str(out))
        assert plan.returncode == 0, plan.stderr
        assert "predicted:" in plan.stdout and "tok/s" in plan.stdout
        assert "equal split" in plan.stdout and "memory-weighted" in plan.stdout
        # a tiny model fits on one node: the other one is left out with a reason, or both form a pipeline
        assert "left out:" in plan.stdout or "-> pipeline" in plan.stdout
        bad = _run("plan", "--cluster", str(out), "--strategy", "device-edge")
        assert bad.returncode == 2 and "needs a local node" in bad.stderr
    finally:
        down = _run("testbed", "down", "--name", name)
    assert down.returncode == 0
    assert netns.list_namespaces(name) == []
    assert _run("testbed", "down", "--name", name).returncode == 0  # idempotent
