"""Bounded queue, parallel clients and client disconnects against a real server (Gemma 3 270M)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prom import scrape

from edgeinfer.process import ServerProcess

pytestmark = pytest.mark.slow

COUNTING = {"model": "gemma-3-270m", "prompt": "1, 2, 3, 4, 5,", "temperature": 0}


@pytest.fixture(scope="module")
def small_queue(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One model, one slot, at most one request waiting behind the running one (batching:
    tests/api/test_parallel.py)."""
    log = tmp_path_factory.mktemp("small_queue") / "serve.log"
    with ServerProcess(
        ["-m", "gemma-3-270m", "--max-queue", "1", "--parallel", "1", "-t", "2"], log=log
    ) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def roomy(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("roomy") / "serve.log"
    with ServerProcess(
        ["-m", "gemma-3-270m", "--max-queue", "16", "--parallel", "1", "-t", "2"], log=log
    ) as srv:
        yield srv.url


def test_parallel_requests_all_complete_with_the_sequential_answer(roomy: str) -> None:
    prompts = [f"{i} + {i} =" for i in range(6)]

    def ask(prompt: str) -> str:
        body = {**COUNTING, "prompt": prompt, "max_tokens": 8}
        r = httpx.post(roomy + "/v1/completions", json=body, timeout=120)
        r.raise_for_status()
        return r.json()["choices"][0]["text"]

    sequential = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        parallel = list(pool.map(ask, prompts))
    assert parallel == sequential


def test_over_capacity_gets_429_and_nothing_hangs(small_queue: str) -> None:
    body = {**COUNTING, "max_tokens": 40}

    def ask(_: int) -> httpx.Response:
        return httpx.post(small_queue + "/v1/completions", json=body, timeout=120)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(ask, range(8)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 2  # the running request and the waiting one at least
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.json()["error"]["code"] == "queue_full" and busy.headers.get("retry-after")
    assert all(r.json()["usage"]["completion_tokens"] == 40 for r in responses if r.status_code == 200)
    assert time.monotonic() - started < 110  # every request was answered, none left hanging
    # afterwards the server still serves normally
    assert ask(0).status_code == 200


def test_client_disconnect_mid_stream_stops_generation(small_queue: str) -> None:
    cancelled = 'edgeinfer:request_success_total{finished_reason="cancelled",model_name="gemma-3-270m"}'
    before = scrape(small_queue).get(cancelled, 0.0)
    body = {**COUNTING, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", small_queue + "/v1/completions", json=body, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i >= 6:
                break  # hang up after a few tokens
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and scrape(small_queue).get(cancelled, 0.0) == before:
        time.sleep(0.1)
    assert scrape(small_queue).get(cancelled, 0.0) == before + 1
    running = 'edgeinfer:num_requests_running{model_name="gemma-3-270m"}'
    assert scrape(small_queue).get(running, 0.0) == 0
    # the slot is free: with a queue of one, two requests in a row are both served at once
    ok = httpx.post(small_queue + "/v1/completions", json={**COUNTING, "max_tokens": 3}, timeout=60)
    assert ok.status_code == 200
