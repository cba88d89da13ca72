"""`bench serve` against the deliberately slow test server: the percentiles reflect the configured delays."""

from __future__ import annotations

import pytest

from edgeinfer.bench.serve import ServeConfig, find_server_pid, run_sweep

TTFT, TOKEN, N_TOKENS = 0.2, 0.05, 8


def _cfg(url: str, **kw) -> ServeConfig:
    base = dict(
        url=url, concurrency=(1, 2), num_requests=4, max_tokens=N_TOKENS, max_seconds=60.0, warmup=False
    )
    return ServeConfig(**{**base, **kw})


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_latencies_reflect_the_servers_delays(slow_server, endpoint: str) -> None:
    srv = slow_server(ttft=TTFT, token=TOKEN)
    rows = run_sweep(_cfg(srv.url, endpoint=endpoint), server_pid=srv.pid)
    assert [r.concurrency for r in rows] == [1, 2]
    for r in rows:
        assert r.completed == r.requests == 4 and r.failed == 0
        # tokens counted from the stream equal the server's usage fields
        assert r.text_chunks == r.usage_completion_tokens == r.output_tokens == 4 * N_TOKENS
        assert r.requests_with_usage == 4 and r.requests_usage_mismatch == 0
        # lower bounds are exact (the server sleeps at least this long); upper bounds are loose
        assert TTFT * 1000 <= r.ttft_ms.p50 <= r.ttft_ms.p99 < 4 * TTFT * 1000
        assert TOKEN * 1000 * 0.9 <= r.tpot_ms.p50 < 4 * TOKEN * 1000
        assert r.itl_ms.n == 4 * (N_TOKENS - 1)
        assert TOKEN * 1000 * 0.9 <= r.itl_ms.p50 < 4 * TOKEN * 1000
        assert r.e2e_ms.p50 >= (TTFT + (N_TOKENS - 1) * TOKEN) * 1000
        assert r.server is not None and r.server.pid == srv.pid and r.server.rss_bytes_max > 1e6
    # requests run in parallel on this server, so two at a time roughly doubles the request rate
    assert rows[1].request_throughput > 1.4 * rows[0].request_throughput


def test_a_slower_server_shows_in_every_percentile(slow_server) -> None:
    fast = run_sweep(_cfg(slow_server(ttft=0.05, token=0.01).url, concurrency=(1,)))[0]
    slow = run_sweep(_cfg(slow_server(ttft=0.3, token=0.08).url, concurrency=(1,)))[0]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        for q in ("p50", "p90", "p99"):
            assert getattr(getattr(slow, key), q) > getattr(getattr(fast, key), q), (key, q)
    assert slow.output_throughput < fast.output_throughput


def test_queueing_on_a_single_slot_server_raises_ttft_with_concurrency(slow_server) -> None:
    srv = slow_server(ttft=0.1, token=0.02, slots=1)
    one, four = run_sweep(_cfg(srv.url, concurrency=(1, 4), num_requests=8))
    # with one slot, a request waits for the ones ahead of it: its TTFT includes their whole generation
    single_e2e = one.e2e_ms.p50
    assert four.ttft_ms.p90 > 2 * single_e2e
    assert four.request_throughput < 1.5 * one.request_throughput


def test_the_run_is_bounded_in_time(slow_server) -> None:
    srv = slow_server(ttft=0.2, token=0.05)
    (row,) = run_sweep(_cfg(srv.url, concurrency=(1,), num_requests=1000, max_seconds=1.0))
    assert 1 <= row.requests <= 3  # each request takes ~0.55 s; none starts after 1 s
    assert row.duration_s < 5


def test_failures_are_counted_with_their_reason(slow_server) -> None:
    srv = slow_server()
    (row,) = run_sweep(_cfg(srv.url + "/nope", concurrency=(1,), num_requests=2))
    assert row.failed == 2 and row.completed == 0
    assert any("HTTP 404" in e for e in row.errors)
    with pytest.raises(RuntimeError, match="warm-up request"):
        run_sweep(_cfg(srv.url + "/nope", warmup=True))


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        run_sweep(ServeConfig(url="http://127.0.0.1:1", endpoint="embeddings", warmup=False))
    with pytest.raises(ValueError, match="concurrency"):
        run_sweep(ServeConfig(url="http://127.0.0.1:1", concurrency=(0,), warmup=False))


def test_server_pid_is_found_by_port(slow_server) -> None:
    srv = slow_server()
    assert find_server_pid(srv.url) == srv.pid
    assert find_server_pid("http://example.invalid:80") is None
