"""/health is 503 while the model is assembled and loaded, then 200; requests in between get 503."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgeinfer.process import free_port, stop_process

pytestmark = pytest.mark.slow


def test_health_503_until_loaded_then_serving(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # an empty cache makes the server assemble and verify the 491 MB default model before loading it
    env = {**os.environ, "EDGEINFER_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        codes: list[int] = []
        early: httpx.Response | None = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not codes or codes[-1] != 200):
            try:
                r = httpx.get(url + "/health", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            codes.append(r.status_code)
            if r.status_code == 503 and early is None:
                assert r.json()["status"] == "loading"
                body = {"messages": [{"role": "user", "content": "hi"}]}
                early = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
            time.sleep(0.05)
        assert codes[0] == 503 and codes[-1] == 200, codes
        assert early is not None and early.status_code == 503
        assert early.json()["error"]["code"] == "model_loading"
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
    finally:
        stop_process(proc, 15)


def test_unknown_model_fails_fast_with_a_clear_message() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgeinfer.cli", "serve", "--model", "no-such-model.gguf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "neither a bundled model" in r.stderr
