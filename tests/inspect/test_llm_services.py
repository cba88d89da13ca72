"""The inspector against real services on loopback, through the official `openai` client.

Honest services -- llama.cpp at 1 thread (one sequence) and 2 threads (continuous batching, 4 requests at
a time), the shard engine, a 2-node loopback cluster -- must pass every ID check (>= 1000 in total).
Substitutes served under Qwen's name must fail the first ID they answer; a service that routes 10 % of
requests to one is caught by the sequential test, and one that delays 1 % of requests breaks an SLA of
99.9 % while an honest one keeps it. The overhead at the default rate is measured.

Where a test is about the inspector (its schedule, its sequential test) rather than the service's answers
to ordinary traffic, the real traffic goes to the bench suite's fast OpenAI-style server while every ID
still goes to the service under inspection (``bench_inspect.IdRouter``): hundreds of real requests then
take seconds. benchmarks/bench_inspect.py measures the same with all the traffic on the real model.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType

import httpx
import pytest

from edgeinfer.inspect.ids import IdSet
from edgeinfer.inspect.inspector import DEFAULT_RATE, Inspector, InspectorConfig, Slo
from edgeinfer.process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
QWEN = "qwen2.5-coder-0.5b-instruct"
# ID checks per honest service: 40 in all by default (each service starts at another ID, so that together
# they cover all 16), which keeps the whole suite within its time budget on a shared 2-core machine;
# EDGEINFER_INSPECT_CHECKS=1000 runs the issue's >= 1000 (BENCHMARKS.md records that run)
CHECKS = {"llamacpp-1t": 100, "llamacpp-2t": 60, "llamacpp-batched": 140, "shard": 60, "cluster": 40}
SCALE = float(os.environ.get("EDGEINFER_INSPECT_CHECKS", "40")) / sum(CHECKS.values())
START = {name: 3 * i for i, name in enumerate(CHECKS)}  # the first ID each service is asked
TOTAL: dict[str, int] = {}


def _assert_honest(name: str, results: list) -> None:
    checked = [r for r in results if r is not None]
    failures = [r.reason for r in checked if not r.passed]
    TOTAL[name] = len(checked)
    print(f"\n{name}: {len(checked)} ID checks, {len(failures)} failed, total so far {sum(TOTAL.values())}")
    assert len(checked) == len(results), f"{len(results) - len(checked)} ID requests got no answer"
    assert not failures, failures[:3]


def _n(name: str) -> int:
    return max(4, round(CHECKS[name] * SCALE))


@pytest.mark.parametrize("threads", [1, 2])
def test_honest_llamacpp_passes_every_check(bench: ModuleType, ids: IdSet, threads: int, tmp_path) -> None:
    args = ["-m", QWEN, "-t", str(threads), "--parallel", "1"]
    with ServerProcess(args, log=tmp_path / "serve.log") as srv:
        name = f"llamacpp-{threads}t"
        _assert_honest(name, bench.probe_many(srv.url, ids, _n(name), concurrency=1, start=START[name]))


def test_honest_llamacpp_batched_passes_every_check(
    bench: ModuleType, ids: IdSet, honest_batched: str
) -> None:
    # continuous batching, 4 at a time; streamed and not, logprobs and text only: every form traffic takes
    n, start = _n("llamacpp-batched"), START["llamacpp-batched"]
    results = bench.probe_many(honest_batched, ids, n // 2, concurrency=4, start=start)
    streamed = {"model": QWEN, "stream": True}
    start += n // 2
    results += bench.probe_many(honest_batched, ids, n // 4, concurrency=4, like=streamed, start=start)
    like = {"model": QWEN, "stream": True, "logprobs": True, "top_logprobs": 2, "max_tokens": 12}
    start += n // 4
    results += bench.probe_many(
        honest_batched, ids, n - n // 2 - n // 4, concurrency=4, like=like, start=start
    )
    _assert_honest("llamacpp-batched", results)


def test_honest_shard_engine_passes_every_check(bench: ModuleType, ids: IdSet, tmp_path) -> None:
    with ServerProcess(["-m", QWEN, "--backend", "shard", "-t", "1"], log=tmp_path / "serve.log") as srv:
        _assert_honest(
            "shard", bench.probe_many(srv.url, ids, _n("shard"), concurrency=1, start=START["shard"])
        )


def test_honest_two_node_cluster_passes_every_check(bench: ModuleType, ids: IdSet, tmp_path) -> None:
    with bench.loopback_cluster(log_dir=tmp_path) as gateway:
        checks = bench.probe_many(gateway.url, ids, _n("cluster"), concurrency=1, start=START["cluster"])
        _assert_honest("cluster", checks)
    if len(TOTAL) == len(CHECKS):
        assert sum(TOTAL.values()) >= round(SCALE * sum(CHECKS.values())) - 5


@pytest.mark.parametrize("spec", ["quant:Q2_K", "exit:18", "model:gemma", "quant:Q8_0"])
def test_a_full_substitute_fails_the_first_id_it_answers(
    bench: ModuleType, ids: IdSet, spec: str, tmp_path, request: pytest.FixtureRequest
) -> None:
    with contextlib.ExitStack() as stack:
        if spec == "model:gemma":  # the session's Gemma server (the partial-substitution test uses it too)
            url = request.getfixturevalue("gemma_substitute")
        else:
            url = stack.enter_context(bench.SubstituteServer(spec, log=tmp_path / "serve.log")).url
        results = bench.probe_many(url, ids, len(ids.ids), concurrency=2)
        text_only = bench.probe_many(url, ids, len(ids.ids), concurrency=2, like={"model": QWEN})
    caught = [r is not None and not r.passed for r in results]
    caught_text = [r is not None and not r.passed for r in text_only]
    print(
        f"\n{spec}: per-ID detection {sum(caught)}/{len(caught)} (logprobs), "
        f"{sum(caught_text)}/{len(caught)} (text only)"
    )
    by_text = [i.caught_by.get(spec) == "text" for i in ids.ids]
    assert caught_text == by_text  # other text on exactly the IDs the generator said
    assert all(c for c, t in zip(caught, by_text, strict=True) if t)
    # exit:18 and Gemma: every ID by text, with or without logprobs; Q2_K: every ID by logprobs when the
    # tolerances are calibrated on served backends (the 0.2-nat floor of an uncalibrated file gives that up)
    if spec in ids.required and (all(by_text) or ids.served_calibration):
        assert all(caught)


def test_ten_percent_substitution_is_caught_with_the_requests_it_took(
    bench: ModuleType, ids: IdSet, honest_batched: str, gemma_substitute: str
) -> None:
    # the cheating service sends 10 % of the IDs to Gemma, as it would 10 % of all requests (it cannot tell
    # IDs apart); the real traffic, which no check looks at, goes to the fast server. IDs go out in line
    # (background=False) so that the run stops at the verdict
    prompts = bench.workload(ids)
    cheat = bench.CheatingTransport(honest_batched, gemma_substitute, fraction=0.1, seed=3)
    config = InspectorConfig(rate=0.5, seed=3, background=False)
    with bench.fast_server() as fast:
        inspector = Inspector(ids, config, transport=bench.IdRouter(fast, cheat))
        sent = bench.drive(inspector, honest_batched, 600, prompts, max_tokens=1, stop_when_decided="model")
        report = inspector.report()
        inspector.close()
    print(
        f"\nf=10 %, rate 50 %: {report.model.decision} after {report.real_requests_to_model_verdict} real "
        f"requests ({report.id_checks} ID checks, {report.id_failures} failed), confidence "
        f"{report.model.confidence:.6f}; routed {cheat.routed}"
    )
    assert report.model.decision == "substituted" and report.model.confidence >= 0.999
    assert report.real_requests_to_model_verdict is not None and report.real_requests_to_model_verdict <= sent
    assert report.id_failures >= 1 and report.id_errors == 0


def test_slo_one_percent_slow_requests_break_a_999_sla_and_honest_keeps_it(
    bench: ModuleType, ids: IdSet
) -> None:
    # an SLA verdict takes hundreds of requests: a fast real server (the bench suite's OpenAI-style server
    # with a fixed 10 ms to first token) keeps this quick; the cheating transport delays 1 % of requests
    slo = Slo(e2e_s=2.0)  # far above this server's latency, even on a loaded machine
    config = InspectorConfig(rate=0.0, slo=slo, sla_level=0.999, sla_violated=0.01, alpha=0.01, beta=0.01)
    verdicts = {}
    with bench.fast_server() as url:
        for label, slow in (("violating", 0.01), ("honest", 0.0)):
            cheat = bench.CheatingTransport(url, slow=slow, delay_s=2.5, seed=11)
            inspector = Inspector(ids, config, transport=cheat)
            bench.drive(
                inspector, url, 3000, ["Say hi."], max_tokens=2, concurrency=4, stop_when_decided="sla"
            )
            verdicts[label] = v = inspector.report().sla
            inspector.close()
            print(
                f"\n{label}: SLA {v.decision} after {v.n} requests ({v.failures} slow, "
                f"{cheat.routed['delayed']} delayed), confidence {v.confidence:.4f}"
            )
    assert verdicts["violating"].decision == "violated" and verdicts["violating"].confidence >= 0.99
    # deciding "met" at the boundary: confidence 1 - beta / (1 - alpha) = 0.9899
    assert verdicts["honest"].decision == "met" and verdicts["honest"].confidence >= 0.98


def test_overhead_at_the_default_rate_stays_below_half_a_percent(
    bench: ModuleType, ids: IdSet, honest_batched: str
) -> None:
    # the overhead is the schedule's accounting: the real traffic goes to the fast server, the ID to the real
    # model; the real requests' tokens are counted as the real model counts them (a few of the same requests
    # sent to it). BENCHMARKS.md has the same run with all 250 real requests on the real model
    n = round(1 / DEFAULT_RATE)  # one block of the schedule: exactly one ID
    prompts = bench.workload(ids)
    with bench.fast_server() as fast:
        router = bench.IdRouter(fast, httpx.HTTPTransport())
        inspector = Inspector(ids, InspectorConfig(seed=5), transport=router)
        sent = bench.drive(inspector, honest_batched, n, prompts, max_tokens=4, concurrency=4)
        report = inspector.report()
        inspector.close()
    sample = Inspector(ids, InspectorConfig(rate=0.0))  # nothing inserted: the real model's own count
    sampled = bench.drive(sample, honest_batched, 4, prompts, max_tokens=4, concurrency=4)
    per_request = sample.report().real_tokens / sampled
    sample.close()
    overhead_tokens = report.id_tokens / (report.id_tokens + sent * per_request)
    print(
        f"\n{sent} real requests, {report.id_requests} IDs: overhead "
        f"{100 * report.overhead_requests:.3f} % of requests, {100 * overhead_tokens:.3f} % of tokens "
        f"(ID {report.id_tokens} tokens, a real request {per_request:.1f} on the real model)"
    )
    assert router.counts == {"real": n, "id": 1} and sent == n
    assert report.id_requests == 1 and report.id_checks == 1 and report.id_failures == 0
    assert report.real_tokens > 0 and report.id_tokens > 0 and per_request > 0
    assert report.overhead_requests <= 0.005 and overhead_tokens <= 0.005
