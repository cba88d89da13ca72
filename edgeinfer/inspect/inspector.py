"""Quality inspection sampling of an OpenAI-compatible service: an httpx transport under a client's traffic.

    inspector = Inspector(IdSet.load("ids.json"), InspectorConfig(slo=Slo(e2e_s=2.0)))
    client = openai.OpenAI(base_url=url, api_key=key, http_client=httpx.Client(transport=inspector))
    ...                                  # the application's own requests, unchanged
    print(inspector.report().to_dict())  # verdicts: model matches / substituted, SLA met / violated

Every real request passes through untouched; its time to first token (streams), end-to-end latency and
availability are recorded and judged against the SLO. Alongside the real chat requests, ``rate`` IDs per
real request (one at a random place in every ``1 / rate`` requests) go out on a background thread to the
same endpoint in the same form: the real request's model, ``stream`` and ``logprobs`` settings and (at
least k) ``max_tokens``, an ordinary user message, temperature 0. Each answer is checked against its ID's
expectation (``ids.check_answer``): the first k tokens' text, and their log probabilities when the service
returns them. Both streams of yes/no outcomes feed sequential tests (``inspect.stats``), which decide with
a stated confidence as soon as the evidence allows.
"""

from __future__ import annotations

import json
import queue
import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from edgeinfer.inspect.ids import Answer, CheckResult, IdentifyingInput, IdSet, check_answer
from edgeinfer.inspect.stats import Verdict, model_test, sla_test

DEFAULT_RATE = 0.004  # IDs per real request: 0.4 % extra requests, below the 0.5 % overhead budget
INSPECTED_PATHS = ("/chat/completions", "/completions")
UNCALIBRATED_FLOOR = 0.2  # nats: the logprob tolerance floor for IDs not calibrated on served backends


@dataclass(frozen=True)
class Slo:
    """Latency objective of one request; ``None`` bounds are not judged. A request that fails (no answer,
    or a 5xx / 429 status) always misses its SLO."""

    ttft_s: float | None = None  # time to first token (streamed requests)
    e2e_s: float | None = None  # end-to-end: request sent -> last byte received


@dataclass(frozen=True)
class InspectorConfig:
    rate: float = DEFAULT_RATE  # expected ID requests per real chat request
    slo: Slo = field(default_factory=Slo)
    sla_level: float = 0.999  # promised fraction of requests meeting the SLO
    sla_violated: float = 0.01  # the violation rate the SLA test must catch
    detect: float = 0.01  # smallest per-check failure rate the model test must catch (fraction substituted)
    honest_fail: float = 1e-4  # the most an honest service may fail ID checks (benign nondeterminism)
    alpha: float = 1e-3  # P(false alarm)
    beta: float = 1e-3  # P(missed substitution / violation)
    # a floor on every ID's logprob tolerance. None: 0.2 nats for ID files whose tolerances come from the
    # in-process generator only (served llama.cpp, batched or not, differed from it by up to 0.19 nats),
    # none for files calibrated on served backends (``IdSet.served_calibration``; docs/inspect.md, limits)
    min_tolerance: float | None = None
    logprobs: str = "mirror"  # ask IDs for logprobs: "mirror" the real request, "always" or "never"
    max_id_tokens: int = 64  # an ID mirrors the real request's max_tokens up to this bound
    seed: int | None = None
    schedule: str = "stratified"  # one ID at a random place in every 1/rate real requests; or "bernoulli"
    background: bool = True  # False: send each ID before the real request goes out (tests)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {self.rate}")
        if self.logprobs not in ("mirror", "always", "never"):
            raise ValueError(f"logprobs must be mirror, always or never, got {self.logprobs!r}")
        if self.schedule not in ("stratified", "bernoulli"):
            raise ValueError(f"schedule must be stratified or bernoulli, got {self.schedule!r}")


@dataclass(frozen=True)
class RequestRecord:
    kind: str  # "real" | "id"
    path: str
    status: int | None  # None: no answer (connection error, timeout)
    e2e_s: float | None
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def available(self) -> bool:
        return self.status is not None and self.status < 500 and self.status != 429

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def meets(self, slo: Slo) -> bool:
        if not self.available:
            return False
        if slo.ttft_s is not None and self.ttft_s is not None and self.ttft_s > slo.ttft_s:
            return False
        return not (slo.e2e_s is not None and self.e2e_s is not None and self.e2e_s > slo.e2e_s)


@dataclass(frozen=True)
class IdCheck:
    prompt: str
    result: CheckResult | None  # None: the service did not answer (counted as unavailable, not as a check)
    real_requests_before: int  # real requests seen when this ID was sent


@dataclass(frozen=True)
class InspectionReport:
    model: Verdict
    sla: Verdict
    real_requests: int
    id_requests: int
    id_checks: int
    id_failures: int
    id_errors: int
    real_tokens: int
    id_tokens: int
    real_requests_to_model_verdict: int | None  # real requests seen when the model test decided
    latency: dict[str, float | None]
    failures: tuple[str, ...] = ()  # the first few failed checks, explained

    @property
    def overhead_requests(self) -> float:
        total = self.real_requests + self.id_requests
        return self.id_requests / total if total else 0.0

    @property
    def overhead_tokens(self) -> float:
        total = self.real_tokens + self.id_tokens
        return self.id_tokens / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "sla": self.sla.to_dict(),
            "real_requests": self.real_requests,
            "id_requests": self.id_requests,
            "id_checks": self.id_checks,
            "id_failures": self.id_failures,
            "id_errors": self.id_errors,
            "real_tokens": self.real_tokens,
            "id_tokens": self.id_tokens,
            "overhead_requests": self.overhead_requests,
            "overhead_tokens": self.overhead_tokens,
            "real_requests_to_model_verdict": self.real_requests_to_model_verdict,
            "latency": self.latency,
            "failures": list(self.failures),
        }


# ---- reading answers --------------------------------------------------------------------------------------
def _sse_events(body: bytes) -> Iterator[dict[str, Any]]:
    for line in body.decode("utf-8", errors="replace").splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                try:
                    yield json.loads(data)
                except json.JSONDecodeError:
                    continue


def _logprob_items(choice: dict[str, Any]) -> list[tuple[bytes, float]] | None:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):  # chat
        return [
            (bytes(t["bytes"]) if t.get("bytes") is not None else t["token"].encode(), float(t["logprob"]))
            for t in lp["content"]
        ]
    if isinstance(lp.get("tokens"), list):  # legacy completions: no bytes, token text only
        return [(t.encode(), float(v)) for t, v in zip(lp["tokens"], lp["token_logprobs"], strict=True)]
    return None


def parse_answer(body: bytes, streamed: bool) -> tuple[Answer, dict[str, int]]:
    """The answer's text, finish reason and logprobs, and its usage (``{}`` when it sent none)."""
    texts: list[str] = []
    tokens: list[tuple[bytes, float]] | None = None
    finish, usage = None, {}
    docs = list(_sse_events(body)) if streamed else [json.loads(body)]
    for doc in docs:
        usage = doc.get("usage") or usage
        for choice in doc.get("choices") or ():
            part = (
                choice.get("delta", {}).get("content")
                if streamed
                else choice.get("message", {}).get("content")
            )
            if part is None:
                part = choice.get("text")
            texts.append(part or "")
            items = _logprob_items(choice)
            if items is not None:
                tokens = (tokens or []) + items
            finish = choice.get("finish_reason") or finish
    answer = Answer("".join(texts), finish, tuple(tokens) if tokens is not None else None)
    return answer, {k: int(v) for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens")}


def first_k(answer: Answer, expected: IdentifyingInput) -> Answer:
    """The part of an answer an ID's expectation covers: its first k tokens (when it ran longer)."""
    k = len(expected.tokens)
    if answer.tokens is not None and len(answer.tokens) > k:
        head = answer.tokens[:k]
        text = b"".join(b for b, _ in head).decode("utf-8", errors="replace")
        return Answer(text, "length", head)
    if answer.tokens is None and expected.finish_reason == "length" and answer.text.startswith(expected.text):
        return Answer(expected.text, "length", None)  # a longer answer that begins as expected
    return answer


# ---- the transport ----------------------------------------------------------------------------------------
class _TimedStream(httpx.SyncByteStream):
    """Passes the body through while timing the first token (the first SSE event with text) and the end,
    then reports once."""

    def __init__(self, inner: httpx.SyncByteStream, start: float, streamed: bool, done) -> None:
        self.inner, self.start, self.streamed, self.done = inner, start, streamed, done
        self.body = bytearray()
        self.ttft: float | None = None
        self.scanned = 0  # bytes of ``body`` already searched for the first token
        self.reported = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.body += chunk
            if self.streamed and self.ttft is None:
                self._look_for_first_token()
            yield chunk
        self._report()

    def _look_for_first_token(self) -> None:
        end = self.body.rfind(b"\n")
        if end < self.scanned:
            return
        lines, self.scanned = bytes(self.body[self.scanned : end]), end + 1
        for event in _sse_events(lines):
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content") or choice.get("text"):
                    self.ttft = time.perf_counter() - self.start
                    return

    def close(self) -> None:
        self.inner.close()
        self._report()

    def _report(self) -> None:
        if not self.reported:
            self.reported = True
            self.done(bytes(self.body), time.perf_counter() - self.start, self.ttft)


class Inspector(httpx.BaseTransport):
    """Wraps ``transport`` (default: a plain ``httpx.HTTPTransport``): records real requests, inserts IDs."""

    def __init__(
        self, ids: IdSet, config: InspectorConfig | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        if not ids.ids:
            raise ValueError("the ID set is empty")
        self.ids = ids
        self.config = config or InspectorConfig()
        self.inner = transport or httpx.HTTPTransport()
        self.rng = random.Random(self.config.seed)
        c = self.config
        if c.min_tolerance is not None:
            self.min_tolerance = c.min_tolerance
        else:
            self.min_tolerance = 0.0 if ids.served_calibration else UNCALIBRATED_FLOOR
        self.model_test = model_test(c.detect, eps=c.honest_fail, alpha=c.alpha, beta=c.beta)
        self.sla_test = sla_test(c.sla_level, c.sla_violated, alpha=c.alpha, beta=c.beta)
        self.records: list[RequestRecord] = []
        self.checks: list[IdCheck] = []
        self._to_verdict: int | None = None
        self._seen = self._block = 0  # real requests seen for the IDs' model; ID schedule block
        self._next_at = int(self.rng.random() / self.config.rate) if self.config.rate > 0 else 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[httpx.Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # -- real traffic
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inspected = request.method == "POST" and request.url.path.endswith(INSPECTED_PATHS)
        body = _json_body(request) if inspected else None
        if body is None:
            return self.inner.handle_request(request)
        if request.url.path.endswith("/chat/completions") and body.get("model") in (None, self.ids.model):
            for _ in range(self._ids_due()):
                self._send_id(self._id_request(request, body))
        streamed = bool(body.get("stream"))
        start = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self._record(RequestRecord("real", request.url.path, None, time.perf_counter() - start))
            raise

        def done(raw: bytes, e2e: float, ttft: float | None) -> None:
            usage = _usage(raw, streamed) if response.status_code == 200 else {}
            self._record(RequestRecord("real", request.url.path, response.status_code, e2e, ttft, **usage))

        stream = _TimedStream(response.stream, start, streamed, done)  # type: ignore[arg-type]
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.records.append(rec)
            if rec.kind == "real":
                self.sla_test.update(not rec.meets(self.config.slo))

    # -- ID traffic
    def _ids_due(self) -> int:
        """IDs to send after this real request. Stratified: one ID in each block of ``1 / rate`` real
        requests, at a uniformly random place in the block -- unpredictable to the server, yet the overhead
        never exceeds the rate (as Bernoulli sampling would, by chance, over short runs)."""
        rate = self.config.rate
        if rate <= 0:
            return 0
        with self._lock:
            if self.config.schedule == "bernoulli":
                return int(self.rng.random() < rate)
            seen, self._seen = self._seen, self._seen + 1
            due = 0
            while seen >= self._next_at:
                due += 1
                self._block += 1
                self._next_at = int((self._block + self.rng.random()) / rate)
            return due

    def _id_request(self, real: httpx.Request, body: dict[str, Any]) -> httpx.Request:
        with self._lock:
            chosen = self.rng.choice(self.ids.ids)
        return self.build_id_request(chosen, real.url, real.headers, body)

    def build_id_request(
        self, chosen: IdentifyingInput, url: httpx.URL | str, headers: Any, like: dict[str, Any]
    ) -> httpx.Request:
        """An ID in the form of ``like`` (a real request's JSON body): its model, stream, logprobs and
        max_tokens settings; the ID's message, temperature 0."""
        k = chosen.max_tokens
        asked = int(like.get("max_tokens") or like.get("max_completion_tokens") or k)
        doc: dict[str, Any] = {
            "model": like.get("model", self.ids.model),
            "messages": chosen.messages,
            "temperature": 0,
            "max_tokens": min(max(asked, k), max(self.config.max_id_tokens, k)),
        }
        if like.get("stream"):
            doc["stream"] = True
            if like.get("stream_options"):
                doc["stream_options"] = like["stream_options"]
        mode = self.config.logprobs
        if mode == "always" or (mode == "mirror" and like.get("logprobs")):
            doc["logprobs"] = True
            top = like.get("top_logprobs")
            if top:
                doc["top_logprobs"] = top
        keep = {k: v for k, v in headers.items() if k.lower() in ("authorization", "user-agent", "accept")}
        req = httpx.Request("POST", url, headers=keep, json=doc)
        req.extensions["edgeinfer_id"] = (chosen, bool(doc.get("stream")))
        return req

    def _send_id(self, req: httpx.Request) -> None:
        if not self.config.background:
            self._run_id(req)
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._drain, name="inspector-ids", daemon=True)
            self._worker.start()
        self._queue.put(req)

    def _drain(self) -> None:
        while True:
            req = self._queue.get()
            try:
                if req is None:
                    return
                self._run_id(req)
            finally:
                self._queue.task_done()

    def _run_id(self, req: httpx.Request) -> CheckResult | None:
        expected, streamed = req.extensions["edgeinfer_id"]
        with self._lock:
            before = sum(r.kind == "real" for r in self.records)
        start = time.perf_counter()
        result: CheckResult | None = None
        status, usage = None, {}
        try:
            response = self.inner.handle_request(req)
            raw = response.read()
            status = response.status_code
            if status == 200:
                answer, usage = parse_answer(raw, streamed)
                result = check_answer(expected, first_k(answer, expected), self.min_tolerance)
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            result = None
        finally:
            rec = RequestRecord("id", req.url.path, status, time.perf_counter() - start, None, **usage)
            with self._lock:
                self.records.append(rec)
                self.checks.append(IdCheck(expected.prompt, result, before))
                if result is not None:
                    was = self.model_test.verdict.decided
                    if self.model_test.update(not result.passed).decided and not was:
                        self._to_verdict = before
        return result

    def probe(
        self, like: dict[str, Any] | None = None, url: str = "", headers: Any = ()
    ) -> CheckResult | None:
        """Send one ID now, in the form of ``like`` (default: a plain chat request) to ``url`` (the service's
        ``.../v1/chat/completions``); returns the check (None: no answer). For tests and `inspect run`."""
        with self._lock:
            chosen = self.rng.choice(self.ids.ids)
        return self._run_id(self.build_id_request(chosen, url, dict(headers), like or {}))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued ID has been answered and checked."""
        if self._worker is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("ID requests still pending")
            time.sleep(0.01)

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=60)
            self._worker = None
        self.inner.close()

    # -- results
    def report(self) -> InspectionReport:
        with self._lock:
            real = [r for r in self.records if r.kind == "real"]
            ids = [r for r in self.records if r.kind == "id"]
            checked = [c for c in self.checks if c.result is not None]
            failed = [c for c in checked if not c.result.passed]  # type: ignore[union-attr]
            return InspectionReport(
                model=self.model_test.verdict,
                sla=self.sla_test.verdict,
                real_requests=len(real),
                id_requests=len(ids),
                id_checks=len(checked),
                id_failures=len(failed),
                id_errors=len(self.checks) - len(checked),
                real_tokens=sum(r.tokens for r in real),
                id_tokens=sum(r.tokens for r in ids),
                real_requests_to_model_verdict=self._to_verdict,
                latency=_latency_summary(real),
                failures=tuple(f"{c.prompt!r}: {c.result.reason}" for c in failed[:5]),  # type: ignore[union-attr]
            )


def _json_body(request: httpx.Request) -> dict[str, Any] | None:
    try:
        doc = json.loads(request.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _usage(raw: bytes, streamed: bool) -> dict[str, int]:
    try:
        answer, usage = parse_answer(raw, streamed)
    except (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    if not usage and answer.tokens is not None:
        return {"completion_tokens": len(answer.tokens)}
    return usage


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, min(998, round(q * 1000) - 1))]


def _latency_summary(real: list[RequestRecord]) -> dict[str, float | None]:
    e2e = [r.e2e_s for r in real if r.available and r.e2e_s is not None]
    ttft = [r.ttft_s for r in real if r.available and r.ttft_s is not None]
    return {
        "e2e_p50_s": _pct(e2e, 0.5),
        "e2e_p99_s": _pct(e2e, 0.99),
        "ttft_p50_s": _pct(ttft, 0.5),
        "ttft_p99_s": _pct(ttft, 0.99),
        "availability": (sum(r.available for r in real) / len(real)) if real else None,
    }
