"""`bench serve` and `bench accuracy` against the real `edgeinfer serve` (both bundled models, 2 threads)."""

from __future__ import annotations

import re

import httpx
import pytest

from edgeinfer.bench.accuracy import HTTPAnswerer, evaluate, load_eval_set
from edgeinfer.bench.serve import ServeConfig, find_server_pid, run_sweep

pytestmark = pytest.mark.slow


def _generated_tokens(url: str, model: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(
        rf'^edgeinfer:generation_tokens_total{{model_name="{re.escape(model)}"}} (\S+)$', text, re.M
    )
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize(
    ("model", "endpoint"), [("qwen2.5-coder-0.5b-instruct", "chat"), ("gemma-3-270m", "completions")]
)
def test_token_counts_agree_with_usage_and_server_metrics(
    real_server: str, model: str, endpoint: str
) -> None:
    pid = find_server_pid(real_server)
    assert pid is not None
    before = _generated_tokens(real_server, model)
    cfg = ServeConfig(
        url=real_server, model=model, endpoint=endpoint, concurrency=(1, 2), num_requests=3, max_tokens=16,
        max_seconds=120, warmup=False,
    )  # fmt: skip
    rows = run_sweep(cfg, server_pid=pid, keep_requests=True)
    after = _generated_tokens(real_server, model)
    total = 0
    for row in rows:
        assert row.completed == row.requests == 3, row.errors
        assert row.requests_with_usage == 3 and row.requests_usage_mismatch == 0
        for req in row.requests_detail:
            # every streamed text chunk is one token, and the usage fields say how many there were
            assert req["text_chunks"] == req["usage_completion_tokens"] > 0
            assert req["usage_completion_tokens"] <= 16 and req["usage_prompt_tokens"] > 0
        assert row.ttft_ms.p50 > 0 and row.tpot_ms.p50 > 0 and row.output_throughput > 0
        srv = row.server
        assert srv is not None and srv.rss_bytes_max > 200e6  # two models are loaded in that process
        total += row.output_tokens
    # the server's own counter saw exactly the tokens we counted (no other client uses this model now)
    assert after - before == total


def test_accuracy_through_the_server_on_a_handful_of_items(real_server: str) -> None:
    es = load_eval_set()
    answerer = HTTPAnswerer(real_server, "qwen2.5-coder-0.5b-instruct", chat=True, max_tokens=24)
    try:
        (res,) = evaluate(answerer, es, ["system"], limit=4)
    finally:
        answerer.close()
    assert res.n == 4 and res.mode == "chat"
    assert all(d.answer.strip() for d in res.items)
    assert res.correct >= 2, res.items  # 17 + 25, 9 x 8, 100 - 37, 144 / 12: Qwen gets most
