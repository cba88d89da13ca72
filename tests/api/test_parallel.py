"""`edgeinfer serve --parallel N`: concurrent streams share decode steps (continuous batching), a client that
hangs up frees its slot at once, and the bounded queue still answers 429 — the real server, the official
openai client, the real Gemma 3 270M."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prom import metric, scrape

from edgeinfer.process import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "gemma-3-270m"
COUNTING = "1, 2, 3, 4, 5,"


def _gauge(url: str, name: str) -> float:
    return metric(url, f"edgeinfer:{name}", MODEL)


def _wait_for(url: str, name: str, value: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gauge(url, name) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} stayed at {_gauge(url, name)}, expected {value}")


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def four_slots(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("parallel4") / "serve.log"
    with ServerProcess(["-m", MODEL, "--parallel", "4", "-t", "2", "--ctx-size", "1024"], log=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def two_slots(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two slots and one place in the queue."""
    log = tmp_path_factory.mktemp("parallel2") / "serve.log"
    args = ["-m", MODEL, "--parallel", "2", "--max-queue", "1", "-t", "2", "--ctx-size", "1024"]
    with ServerProcess(args, log=log) as srv:
        yield srv.url


def test_four_concurrent_streams_complete_in_shared_steps(four_slots: str) -> None:
    client = _client(four_slots)
    prompts = [COUNTING, "The capital of France is", "Once upon a time", "def add(a, b):"]

    def run(prompt: str) -> tuple[str, str | None, int]:
        chunks = list(
            client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=32,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = next(
            (c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), None
        )
        return text, finish, chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, prompts))
    for text, finish, n in results:
        assert finish in ("stop", "length") and 0 < n <= 32 and text
    # the same request alone gives the same text as in the batch, up to near-ties (tests/engine/test_batch.py)
    alone = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=32, temperature=0)
    assert alone.choices[0].text[:8] == results[0][0][:8]
    m = scrape(four_slots)
    label = f'model_name="{MODEL}"'
    steps = m[f"edgeinfer:batch_size_count{{{label}}}"]
    single = m[f'edgeinfer:batch_size_bucket{{le="1.0",{label}}}']
    assert steps > 0 and single < steps  # some decode steps carried several sequences
    assert m[f'edgeinfer:batch_size_bucket{{le="4.0",{label}}}'] == steps  # never more than the 4 slots
    assert _gauge(four_slots, "num_requests_running") == 0


def _hold_stream(url: str, started: threading.Event, stop: threading.Event) -> None:
    """A long stream that reads until told to hang up."""
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        for _ in r.iter_lines():
            started.set()
            if stop.is_set():
                break


def test_disconnect_frees_the_slot_at_once_and_full_queue_gets_429(two_slots: str) -> None:
    starts = [threading.Event(), threading.Event()]
    stops = [threading.Event(), threading.Event()]
    holders = [
        threading.Thread(target=_hold_stream, args=(two_slots, a, b))
        for a, b in zip(starts, stops, strict=True)
    ]
    for t in holders:
        t.start()
    try:
        for s in starts:
            assert s.wait(60)
        _wait_for(two_slots, "num_requests_running", 2)
        # both slots busy: one request may wait, the next is refused
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(
                httpx.post,
                two_slots + "/v1/completions",
                json={"model": MODEL, "prompt": "The sky is", "max_tokens": 4, "temperature": 0},
                timeout=120,
            )
            _wait_for(two_slots, "num_requests_waiting", 1)
            with pytest.raises(openai.RateLimitError) as busy:
                _client(two_slots).completions.create(model=MODEL, prompt="Hi", max_tokens=2)
            assert busy.value.status_code == 429 and busy.value.code == "queue_full"
            # one client hangs up: its slot goes to the waiting request while the other stream runs on
            stops[0].set()
            answer = queued.result(timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
        assert holders[1].is_alive()  # the other stream is still generating
        assert _gauge(two_slots, "num_requests_running") == 1
    finally:
        for s in stops:
            s.set()
        for t in holders:
            t.join(60)
    _wait_for(two_slots, "num_requests_running", 0, timeout=20)


def test_parallel_that_does_not_fit_is_refused_before_loading() -> None:
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "-m", MODEL, "--parallel", "100000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "MiB per slot" in proc.stderr and "--parallel 100000" in proc.stderr
