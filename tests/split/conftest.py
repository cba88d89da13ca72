"""A real edge server (`edgeinfer split serve-edge`) as a child process on a loopback port."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    srv = EdgeProcess()
    yield srv
    srv.stop()
