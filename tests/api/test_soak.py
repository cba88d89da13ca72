"""A bounded soak: 4 clients mixing streaming and non-streaming requests against a real server.

``EDGEINFER_SOAK_SECONDS`` sets the length (60 s in the suite; BENCHMARKS.md records a 3-minute run).
No request may fail, /metrics must count exactly what the clients saw, and the server's anonymous memory
(RssAnon: heap, buffers; what a leak grows) must not grow from a quarter of the way in (once every client has
warmed its threads and buffers) to the end. File-backed RSS is printed too: it grows as the mmapped weights
are first touched (each new token id faults in its embedding row), which is bounded by the model file.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from edgeinfer.process import ServerProcess

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("EDGEINFER_SOAK_SECONDS", "60"))
CLIENTS = 4
KEY = "sk-soak"
MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def server(gemma_path) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    with ServerProcess(["-m", "gemma", "-t", "2", "--api-key", KEY, "--max-queue", "8"]) as srv:
        yield srv


def rss(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["RssAnon"], fields["RssFile"]


def one(client: httpx.Client, i: int) -> str:
    """One request of a rotating kind; returns the route it used or raises on any failure."""
    kind = i % 4
    if kind == 0:
        body = {"prompt": f"Item {i}: the capital of France is", "max_tokens": 12}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        return "/v1/completions"
    if kind == 1:
        body = {"messages": [{"role": "user", "content": f"Count to {i % 7 + 2}."}], "max_tokens": 16}
        with client.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines), lines[-3:]
        return "/v1/chat/completions"
    if kind == 2:
        r = client.get("/v1/models")
        assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
        return "/v1/models"
    body = {"prompt": "Once upon a time", "max_tokens": 8, "stream": True, "seed": i, "temperature": 0.8}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        last = [line for line in r.iter_lines() if line][-1]
    assert last == "data: [DONE]"
    return "/v1/completions"


def test_soak_four_clients(server: ServerProcess) -> None:
    proc = psutil.Process(server.pid)
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as warm:
        for i in range(8):  # every kind twice, so that buffers and caches exist before the baseline
            one(warm, i)
    anon_start, file_start = rss(proc.pid)
    before = httpx.get(server.url + "/metrics").text
    done: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + SECONDS

    def client_loop(cid: int) -> None:
        i = cid
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
            while time.monotonic() < stop_at:
                try:
                    route = one(client, i)
                    with lock:
                        done[route] += 1
                except Exception as exc:  # every failure is counted and reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                i += 1  # each client cycles through the four kinds, starting at its own

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(SECONDS / 4)
    anon0, file0 = rss(proc.pid)
    for t in threads:
        t.join()
    anon1, file1 = rss(proc.pid)
    growth = (anon1 - anon0) / anon0
    total = sum(done.values())
    print(
        f"\nsoak {SECONDS:.0f} s, {CLIENTS} clients: {total} requests {dict(done)}, {len(errors)} errors; "
        f"RssAnon {anon_start / 2**20:.0f} at start, {anon0 / 2**20:.0f} after {SECONDS / 4:.0f} s, "
        f"{anon1 / 2**20:.0f} MiB at the end ({growth:+.1%}); "
        f"RssFile {file_start / 2**20:.0f} -> {file0 / 2**20:.0f} -> {file1 / 2**20:.0f} MiB"
    )
    assert errors == [], errors[:5]
    assert total >= CLIENTS

    def count(text: str, route: str) -> float:
        prefix = f'edgeinfer:http_requests_total{{code="200",route="{route}"}} '
        return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))

    after = httpx.get(server.url + "/metrics").text
    for route, n in done.items():
        assert count(after, route) - count(before, route) == n, route
    assert growth < 0.10  # BENCHMARKS.md records the 3-minute run against the 5 % target
