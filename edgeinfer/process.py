"""HTTP servers of the project as child processes on a free loopback port: start, wait until ``/health``
answers 200, stop (terminate, then kill). Used by the tests and the benchmark scripts, which exercise the real
servers over real HTTP: ``edgeinfer serve`` (``ServerProcess``), ``edgeinfer split serve-edge``, the bench
suite's fake server (``HttpProcess`` with their own command).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; a process that already exited is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class HttpProcess:
    """``argv`` (which must listen on ``self.port``, see ``port_args``) as a child process, healthy when
    ``GET /health`` answers 200. Its output goes to ``log`` (a file) or is discarded; a process that exits
    before it is healthy raises with the tail of the log."""

    def __init__(
        self,
        argv: Sequence[str],
        host: str = "127.0.0.1",
        port: int | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        what: str | None = None,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.argv = [*argv]
        self.log_path = log
        self.env = env
        self.what = what or " ".join(self.argv[:4])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> HttpProcess:
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = self.env if self.env is not None else os.environ.copy()
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(
                    f"{self.what} exited with code {code}: {' '.join(self.argv)}{self._tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"{self.what} not healthy after {timeout:.0f} s: {' '.join(self.argv)}{self._tail()}"
        )

    def _tail(self) -> str:
        if self.log_path is None or not Path(self.log_path).is_file():
            return ""
        return "\n" + Path(self.log_path).read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> HttpProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(HttpProcess):
    """`edgeinfer serve ARGS` on a free loopback port."""

    def __init__(
        self, args: list[str], host: str = "127.0.0.1", port: int | None = None, log: Path | None = None
    ):
        port = port or free_port(host)
        argv = [sys.executable, "-m", "edgeinfer.cli", "serve", "--host", host, "--port", str(port)]
        super().__init__([*argv, "--log-level", "warning", *args], host, port, log, what="server")
        self.args = args

    def __enter__(self) -> ServerProcess:
        self.start()
        return self
