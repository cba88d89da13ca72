"""Fixtures of the bench tests: the deliberately slow OpenAI-style server, as a real process on loopback."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeinfer.process import HttpProcess, free_port


class SlowServer(HttpProcess):
    """Started (and healthy) on construction."""

    def __init__(self, ttft: float, token: float, slots: int = 0):
        port = free_port()
        cmd = [sys.executable, "-m", "edgeinfer.bench.fake_server", "--port", str(port),
               "--ttft-delay", str(ttft), "--token-delay", str(token), "--slots", str(slots)]  # fmt: skip
        log = Path(tempfile.mkstemp(prefix="slow-server-", suffix=".log")[1])
        super().__init__(cmd, port=port, log=log, what="slow server")
        self.start(timeout=30)


@pytest.fixture
def slow_server() -> Iterator[Callable[..., SlowServer]]:
    """Factory: ``slow_server(ttft=0.2, token=0.05, slots=0)`` starts one; all are stopped afterwards."""
    started: list[SlowServer] = []

    def start(ttft: float = 0.2, token: float = 0.05, slots: int = 0) -> SlowServer:
        srv = SlowServer(ttft, token, slots)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
