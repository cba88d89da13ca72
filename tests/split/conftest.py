"""A real edge server (`edgeinfer split serve-edge`) as a child process on a loopback port."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from edgeinfer.api.process import free_port


class EdgeProcess:
    def __init__(self, model: str = "digitnet-small", host: str = "127.0.0.1"):
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        argv = [sys.executable, "-m", "edgeinfer.cli", "split", "serve-edge", "-m", model]
        self.proc = subprocess.Popen(
            argv + ["--host", host, "--port", str(self.port)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-edge exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("serve-edge not healthy after 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def edge_server() -> Iterator[EdgeProcess]:
    srv = EdgeProcess()
    yield srv
    srv.stop()
