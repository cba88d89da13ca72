"""The dashboard's routes and state over real HTTP with the real gemma model (the page itself is driven in a
real browser in test_dashboard_browser.py), and its percentile arithmetic."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgeinfer.api.dashboard import quantile
from edgeinfer.process import ServerProcess

KEY = "sk-dash-0123456789"
GEMMA = "gemma-3-270m"
AUTH = {"Authorization": f"Bearer {KEY}"}
HTTP = httpx.Client(timeout=60)
N_TOKENS = 48  # the shared test machine may generate only a few tokens per second


def test_quantile_interpolates_like_prometheus():
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.5], 2 in (0.5, 1]
    buckets = {0.1: 4.0, 0.5: 8.0, 1.0: 10.0, math.inf: 10.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 1 / 4)  # rank 5: 1/4 into (0.1, 0.5]
    assert quantile(0.2, buckets) == pytest.approx(0.05)  # rank 2: half of the first bucket
    assert quantile(0.9, buckets) == pytest.approx(0.75)
    assert quantile(0.99, {0.1: 1.0, 1.0: 1.0, math.inf: 5.0}) == 1.0  # in +Inf: the largest finite bound
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


@pytest.fixture(scope="module")
def server(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("dash") / "serve.log"
    with ServerProcess(["-m", GEMMA, "-t", "2", "--api-key", KEY], log=log) as srv:
        yield srv


def state(url: str) -> dict:
    r = HTTP.get(url + "/v1/dashboard/state", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_page_is_served_from_the_package_and_open_like_health(server):
    page = HTTP.get(server.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/dashboard/dashboard.js" in page.text and "http" not in page.text.split("<body>")[0].lower()
    js = HTTP.get(server.url + "/dashboard/dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/v1/dashboard/state" in js.text
    assert HTTP.get(server.url + "/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
    missing = HTTP.get(server.url + "/dashboard/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert HTTP.get(server.url + "/dashboard/../v1/models").status_code in (401, 404)  # no way round the key


@pytest.mark.slow
def test_state_needs_the_key(server):
    r = HTTP.get(server.url + "/v1/dashboard/state")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = HTTP.get(server.url + "/v1/dashboard/state", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    s = state(server.url)
    assert s["gateway"] is False and s["topology"] is None
    [model] = s["models"]
    assert model["name"] == GEMMA and model["state"] == "ready" and model["backend"]
    assert model["n_ctx"] > 0 and model["max_queue"] == 16


@pytest.mark.slow
def test_numbers_move_while_a_request_streams(server):
    before = state(server.url)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    seen: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(state(server.url))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    stream = client.completions.create(
        model=GEMMA, prompt="1, 2, 3, 4, 5,", max_tokens=N_TOKENS, temperature=0, stream=True
    )
    watcher.start()
    try:
        n_chunks = sum(1 for _ in stream)
    finally:
        done.set()
        watcher.join()
    after = state(server.url)
    assert n_chunks > 5
    during = [s for s in seen if s["models"][0]["running"] == 1]
    assert during, "no state showed the request running"
    counts = [s["traffic"]["generation_tokens"] for s in during]
    assert len(set(counts)) > 1, f"generated tokens did not move during the stream: {counts}"
    assert any((s["traffic"]["tokens_per_second"] or 0) > 0 for s in during)
    assert after["models"][0]["running"] == 0
    assert after["traffic"]["generation_tokens"] - before["traffic"]["generation_tokens"] == N_TOKENS
    assert after["traffic"]["generations"] == before["traffic"]["generations"] + 1
    assert after["ttft"]["count"] >= 1 and after["ttft"]["p50"] > 0
    assert after["tpot"]["count"] >= N_TOKENS - 1 and 0 < after["tpot"]["p50"] <= after["tpot"]["p99"]
    assert after["e2e"]["p50"] >= after["ttft"]["p50"]
    assert after["traffic"]["requests"] > before["traffic"]["requests"]
