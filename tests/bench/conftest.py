"""Fixtures of the bench tests: the deliberately slow OpenAI-style server, as a real process on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from edgeinfer.api.process import free_port


class SlowServer:
    def __init__(self, ttft: float, token: float, slots: int = 0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "edgeinfer.bench.fake_server", "--port", str(self.port),
               "--ttft-delay", str(ttft), "--token-delay", str(token), "--slots", str(slots)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"slow server exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("slow server did not come up in 30 s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
