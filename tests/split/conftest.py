"""Shared fixtures of the split tests: real edge servers (`edgeinfer split serve-edge`) as child processes on
loopback ports, and the small model with its device and edge profiles."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from edgeinfer.process import HttpProcess, free_port


class EdgeProcess(HttpProcess):
    """Started (and healthy) on construction; its output goes to a temporary log quoted by start errors."""

    def __init__(self, model: str = "digitnet-small", host: str = "127.0.0.1"):
        port = free_port(host)
        argv = [sys.executable, "-m", "edgeinfer.cli", "split", "serve-edge", "-m", model]
        log = Path(tempfile.mkstemp(prefix="serve-edge-", suffix=".log")[1])
        super().__init__([*argv, "--host", host, "--port", str(port)], host, port, log=log, what="serve-edge")
        self.start()


@pytest.fixture(scope="module")
def edge_server() -> Iterator[EdgeProcess]:
    """One edge server shared by a module's tests (which must not stop it)."""
    srv = EdgeProcess()
    yield srv
    srv.stop()


@pytest.fixture
def new_edge() -> Iterator[Callable[[], EdgeProcess]]:
    """Starts edge servers of the test's own (to stop or kill); whatever is still running is stopped after
    the test."""
    started: list[EdgeProcess] = []

    def start() -> EdgeProcess:
        started.append(EdgeProcess())
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


class SmallSetup(NamedTuple):
    model: object  # BranchyModel
    dev: object  # Profile of the emulated device (rpi4-like)
    edge: object  # Profile of the edge (edge-host)
    test: object  # the test split of the digits


@pytest.fixture(scope="session")
def small_setup() -> SmallSetup:
    """``digitnet-small``, profiled as the device and as the edge (short profiles), and its test digits."""
    from edgeinfer.models.dnn import zoo
    from edgeinfer.models.dnn.data import digits
    from edgeinfer.split.profile import load_device, profile_model

    m = zoo.load("digitnet-small")
    data = digits(32)
    x = data["val"].x[:6]
    dev = profile_model(m, load_device("rpi4-like"), x, warmup=1, repeats=5)
    edge = profile_model(m, load_device("edge-host"), x, warmup=1, repeats=5)
    return SmallSetup(m, dev, edge, data["test"])
