"""`bench serve`: a concurrency sweep against any OpenAI-compatible streaming server.

Per request, from client-side timestamps of the SSE chunks that carry text:
  TTFT  = first text chunk - request sent
  ITL   = gaps between consecutive text chunks
  TPOT  = (last text chunk - first text chunk) / (output tokens - 1)
  E2E   = end of stream - request sent
Output tokens are the server's ``usage.completion_tokens`` (``stream_options.include_usage``) when given,
else the number of text chunks; both are kept so that a disagreement shows. Each concurrency level runs at
most ``num_requests`` requests and starts none after ``max_seconds``. The server process's CPU % and RSS
are sampled with psutil while a level runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx

from edgeinfer.bench.runs import Progress, Run, from_fields, new_run
from edgeinfer.bench.stats import Percentiles, summary
from edgeinfer.bench.table import Table, fmt_num

PROMPTS = (
    "Explain in a few sentences why the sky is blue.",
    "Write a short story about a robot that learns to paint.",
    "List five uses of a paper clip and explain each briefly.",
    "Describe how a bicycle works to a ten year old.",
    "What are the main differences between a list and a tuple in Python?",
    "Summarise the water cycle in plain words.",
    "Give three tips for writing clear documentation.",
    "Explain what a hash table is and when to use one.",
)


@dataclass
class RequestRecord:
    ok: bool
    start: float  # perf_counter when sent
    e2e: float = 0.0
    ttft: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # seconds after start, one per text chunk
    text_chunks: int = 0
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    error: str | None = None

    @property
    def output_tokens(self) -> int:
        return self.usage_completion_tokens if self.usage_completion_tokens is not None else self.text_chunks

    @property
    def tpot(self) -> float | None:
        n = self.output_tokens
        if n < 2 or len(self.chunk_times) < 1 or self.ttft is None:
            return None
        return (self.chunk_times[-1] - self.ttft) / (n - 1)

    @property
    def itl(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]


@dataclass(frozen=True)
class ServeConfig:
    url: str
    model: str | None = None
    endpoint: str = "chat"  # "chat" | "completions"
    concurrency: tuple[int, ...] = (1, 2, 4)
    num_requests: int = 8
    max_seconds: float = 120.0
    max_tokens: int = 64
    temperature: float = 0.0
    request_timeout: float = 300.0
    prompts: tuple[str, ...] = PROMPTS
    warmup: bool = True
    api_key: str | None = field(default=None, repr=False)  # sent as 'Authorization: Bearer'; never recorded


def _payload(cfg: ServeConfig, prompt: str) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.model:
        body["model"] = cfg.model
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        return "/v1/chat/completions", body
    if cfg.endpoint == "completions":
        body["prompt"] = prompt
        return "/v1/completions", body
    raise ValueError(f"endpoint must be 'chat' or 'completions', not {cfg.endpoint!r}")


def _chunk_text(obj: dict[str, Any]) -> str:
    text = ""
    for choice in obj.get("choices") or []:
        delta = choice.get("delta")
        text += (delta.get("content") or "") if isinstance(delta, dict) else (choice.get("text") or "")
    return text


async def one_request(client: httpx.AsyncClient, cfg: ServeConfig, prompt: str) -> RequestRecord:
    path, body = _payload(cfg, prompt)
    rec = RequestRecord(ok=False, start=time.perf_counter())
    try:
        async with client.stream("POST", cfg.url.rstrip("/") + path, json=body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                rec.error = f"HTTP {resp.status_code}: {detail}"
                return rec
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    rec.ok = rec.error is None
                    break
                obj = json.loads(data)
                if "error" in obj:
                    rec.error = str(obj["error"].get("message", obj["error"]))
                    continue
                if _chunk_text(obj):
                    now = time.perf_counter() - rec.start
                    if rec.ttft is None:
                        rec.ttft = now
                    rec.chunk_times.append(now)
                    rec.text_chunks += 1
                usage = obj.get("usage")
                if usage:
                    rec.usage_prompt_tokens = usage.get("prompt_tokens")
                    rec.usage_completion_tokens = usage.get("completion_tokens")
            else:
                rec.error = rec.error or "stream ended without [DONE]"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        rec.e2e = time.perf_counter() - rec.start
    return rec


@dataclass(frozen=True)
class ServerUsage:
    """The server process's (and its children's) CPU % and RSS, sampled while a level ran."""

    pid: int | None
    samples: int
    cpu_percent_mean: float
    cpu_percent_max: float
    rss_bytes_max: int
    rss_bytes_mean: float


@dataclass
class ServeLevel:
    """One concurrency level of the sweep (latencies in ms over the completed requests)."""

    concurrency: int
    requests: int
    completed: int
    failed: int
    errors: list[str]
    duration_s: float
    request_throughput: float
    output_tokens: int
    output_throughput: float
    prompt_tokens: int
    text_chunks: int
    usage_completion_tokens: int
    requests_with_usage: int
    requests_usage_mismatch: int
    ttft_ms: Percentiles | None
    tpot_ms: Percentiles | None
    itl_ms: Percentiles | None
    e2e_ms: Percentiles | None
    server: ServerUsage | None = None
    requests_detail: list[dict[str, Any]] | None = None  # every request's timings, with --keep-requests

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.requests_detail is None:
            del d["requests_detail"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeLevel:
        pct = Percentiles.from_dict
        return from_fields(
            cls,
            d,
            ttft_ms=pct,
            tpot_ms=pct,
            itl_ms=pct,
            e2e_ms=pct,
            server=lambda v: from_fields(ServerUsage, v),
        )


class ProcessSampler:
    """Samples CPU % and RSS of a process (and its children) in a background thread."""

    def __init__(self, pid: int | None, interval: float = 0.25):
        self.pid, self.interval = pid, interval
        self.cpu: list[float] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _procs(self):  # type: ignore[no-untyped-def]
        import psutil

        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def _run(self) -> None:
        import psutil

        try:
            procs = self._procs()
            for p in procs:
                p.cpu_percent(None)
            while not self._stop.wait(self.interval):
                self.cpu.append(sum(p.cpu_percent(None) for p in procs))
                self.rss.append(sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass  # the process went away: keep what was sampled

    def __enter__(self) -> ProcessSampler:
        if self.pid is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def result(self) -> ServerUsage | None:
        if not self.cpu:
            return None
        return ServerUsage(
            pid=self.pid,
            samples=len(self.cpu),
            cpu_percent_mean=sum(self.cpu) / len(self.cpu),
            cpu_percent_max=max(self.cpu),
            rss_bytes_max=max(self.rss),
            rss_bytes_mean=sum(self.rss) / len(self.rss),
        )


def find_server_pid(url: str) -> int | None:
    """The pid listening on the URL's port, if it runs on this machine and we may see it."""
    import psutil

    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    return None


async def run_level(
    cfg: ServeConfig,
    concurrency: int,
    on_done: Callable[[RequestRecord], None] = lambda _: None,
) -> tuple[list[RequestRecord], float]:
    """Run one concurrency level; returns the records and the wall time from first send to last finish."""
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    timeout = httpx.Timeout(cfg.request_timeout, connect=10.0)
    records: list[RequestRecord] = []
    next_index = 0
    t0 = time.perf_counter()
    deadline = t0 + cfg.max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < cfg.num_requests and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            rec = await one_request(client, cfg, cfg.prompts[i % len(cfg.prompts)])
            records.append(rec)
            on_done(rec)

    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return records, time.perf_counter() - t0


def level_stats(records: Sequence[RequestRecord], duration: float, concurrency: int) -> ServeLevel:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    with_usage = [r for r in ok if r.usage_completion_tokens is not None]
    mismatched = [r for r in with_usage if r.usage_completion_tokens != r.text_chunks]

    def ms(values: Sequence[float | None]) -> Percentiles | None:
        return summary([1000 * v for v in values if v is not None])

    return ServeLevel(
        concurrency=concurrency,
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        errors=sorted({r.error for r in records if r.error})[:5],
        duration_s=duration,
        request_throughput=len(ok) / duration if duration > 0 else 0.0,
        output_tokens=out_tokens,
        output_throughput=out_tokens / duration if duration > 0 else 0.0,
        prompt_tokens=sum(r.usage_prompt_tokens or 0 for r in ok),
        text_chunks=sum(r.text_chunks for r in ok),
        usage_completion_tokens=sum(r.usage_completion_tokens or 0 for r in with_usage),
        requests_with_usage=len(with_usage),
        requests_usage_mismatch=len(mismatched),
        ttft_ms=ms([r.ttft for r in ok]),
        tpot_ms=ms([r.tpot for r in ok]),
        itl_ms=ms([x for r in ok for x in r.itl]),
        e2e_ms=ms([r.e2e for r in ok]),
    )


def run_sweep(
    cfg: ServeConfig,
    server_pid: int | None = None,
    on_level: Callable[[int], None] = lambda _: None,
    on_done: Callable[[RequestRecord], None] = lambda _: None,
    keep_requests: bool = False,
) -> list[ServeLevel]:
    """One result per concurrency level (see ``level_stats``), plus the server's CPU % and RSS."""
    if cfg.num_requests < 1 or cfg.max_seconds <= 0 or cfg.max_tokens < 1:
        raise ValueError("num_requests and max_tokens must be >= 1 and max_seconds > 0")
    if not cfg.concurrency or any(c < 1 for c in cfg.concurrency):
        raise ValueError("concurrency levels must be >= 1")
    if not cfg.prompts:
        raise ValueError("no prompts to send")
    _payload(cfg, "")  # validates the endpoint
    if cfg.warmup:
        warm = asyncio.run(run_level(ServeConfig(**{**asdict(cfg), "num_requests": 1, "max_tokens": 4}), 1))
        if not warm[0][0].ok:
            raise RuntimeError(f"warm-up request to {cfg.url} failed: {warm[0][0].error}")
    rows = []
    for c in cfg.concurrency:
        on_level(c)
        with ProcessSampler(server_pid) as sampler:
            records, duration = asyncio.run(run_level(cfg, c, on_done))
        row = level_stats(records, duration, c)
        row.server = sampler.result()
        if keep_requests:
            row.requests_detail = [
                {**asdict(r), "tpot": r.tpot, "output_tokens": r.output_tokens} for r in records
            ]
        rows.append(row)
    return rows


def run(
    cfg: ServeConfig,
    server_pid: int | None = None,
    keep_requests: bool = False,
    label: str | None = None,
    progress: Progress | None = None,
) -> Run:
    """The `bench serve` run: the sweep, with a note for failed requests and token-count disagreements."""
    progress = progress or Progress()
    if server_pid is None:
        progress.note("server process not found on this machine: no CPU % / RSS sampling")
    config = {k: v for k, v in asdict(cfg).items() if k not in ("prompts", "api_key")} | {
        "n_prompts": len(cfg.prompts),
        "server_pid": server_pid,
    }
    bench = new_run("serve", config, label)
    progress.start("serve bench", len(cfg.concurrency) * cfg.num_requests)
    bench.results = run_sweep(
        cfg,
        server_pid,
        on_level=lambda c: progress.step(f"concurrency {c}", 0),
        on_done=lambda _: progress.step(),
        keep_requests=keep_requests,
    )
    for r in bench.results:
        if r.failed:
            progress.note(f"{r.failed} request(s) failed at concurrency {r.concurrency}: {r.errors}")
        if r.requests_usage_mismatch:
            progress.note(f"{r.requests_usage_mismatch} request(s): usage tokens != streamed text chunks")
    return bench


def rows(run: Run) -> Table:
    """Latency percentiles, throughput and the server's CPU and memory per concurrency level."""

    def p(s: Percentiles | None, *qs: str) -> str:
        return " / ".join(fmt_num(getattr(s, q) if s else None, 0) for q in qs)

    body = []
    for r in run.results:
        srv = r.server
        body.append(
            (
                str(r.concurrency),
                f"{r.completed}/{r.requests}",
                p(r.ttft_ms, "p50", "p90", "p99"),
                p(r.tpot_ms, "p50", "p90", "p99"),
                p(r.itl_ms, "p50", "p99"),
                p(r.e2e_ms, "p50", "p90", "p99"),
                fmt_num(r.request_throughput, 2),
                fmt_num(r.output_throughput, 1),
                fmt_num(srv.cpu_percent_mean if srv else None, 0),
                fmt_num(srv.rss_bytes_max / 2**20 if srv else None, 0),
                f"{r.usage_completion_tokens} / {r.text_chunks}",
            )
        )
    header = (
        "conc.",
        "ok",
        "TTFT p50/90/99 ms",
        "TPOT p50/90/99 ms",
        "ITL p50/99 ms",
        "E2E p50/90/99 ms",
        "req/s",
        "out tok/s",
        "server CPU %",
        "server RSS MiB",
        "usage / counted tokens",
    )
    return Table("Serving load (concurrency sweep)", header, body, right=frozenset(range(len(header))))
