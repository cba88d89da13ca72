"""`bench model`: llama-bench style prefill (pp N) and decode (tg N) throughput per backend and thread count.

pp N: evaluate N prompt tokens in one go from an empty context; tok/s = N / time.
tg N: from a context holding only BOS, decode N tokens one by one (greedy: each step feeds back the argmax
of the previous logits); tok/s = N / time. One untimed warm-up of each test precedes the repeats.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.bench.runs import Progress, Run, from_fields, load_warning, new_run
from edgeinfer.bench.stats import mean_std
from edgeinfer.bench.table import Table
from edgeinfer.engine.load import BackendKind, LoadOptions, open_backend

BUNDLED_BOTH = ("qwen2.5-coder-0.5b-instruct", "gemma-3-270m")


@dataclass(frozen=True)
class ModelResult:
    """One (model, backend, threads, test): tok/s mean ± std over the timed repeats."""

    model: str
    backend: str
    threads: int
    test: str  # "pp512", "tg128"
    kind: str  # "pp" or "tg"
    n_tokens: int
    tps_mean: float
    tps_std: float
    seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        return from_fields(cls, {"model": "?", **d})


@dataclass(frozen=True)
class Test:
    kind: str  # "pp" or "tg"
    n: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.n}"


class Runner:
    """Times one test on a loaded model. ``run`` returns seconds."""

    name: str

    def run(self, test: Test) -> float: ...

    def close(self) -> None: ...


class LlamaCppRunner(Runner):
    name = "llamacpp"

    def __init__(self, model_path: Path, threads: int, n_ctx: int, seed: int = 0):
        import llama_cpp
        import numpy as np

        self._np = np
        self.llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_batch=min(512, n_ctx),
            n_ubatch=min(512, n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        self.rng = random.Random(seed)
        bos = self.llm.token_bos()
        self.bos = bos if bos >= 0 else 0

    def _random_tokens(self, n: int) -> list[int]:
        return [self.rng.randrange(self.n_vocab) for _ in range(n)]

    def _argmax(self) -> int:
        logits = self._np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
        return int(logits.argmax())

    def run(self, test: Test) -> float:
        llm = self.llm
        llm.reset()
        if test.kind == "pp":
            tokens = self._random_tokens(test.n)
            t0 = time.perf_counter()
            llm.eval(tokens)
            return time.perf_counter() - t0
        llm.eval([self.bos])
        token = self._argmax()
        t0 = time.perf_counter()
        for _ in range(test.n):
            llm.eval([token])
            token = self._argmax()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.llm.close()


class BackendRunner(Runner):
    """Any ``engine.base.Backend``: pp = time to the first sampled token, tg = the tokens after it."""

    def __init__(self, backend: Any, name: str, seed: int = 0):
        from edgeinfer.engine.base import SamplingParams

        self.backend = backend
        self.name = name
        self.params = SamplingParams(temperature=0.0, max_tokens=None)
        self.rng = random.Random(seed)
        self.n_vocab = backend.info.vocab_size

    def _time(self, prompt: Sequence[int], n_after_first: int) -> tuple[float, float]:
        gen: Iterator[int] = self.backend.generate_tokens(prompt, self.params)
        t0 = time.perf_counter()
        try:
            next(gen)
            t1 = time.perf_counter()
            for _ in range(n_after_first):
                next(gen)
            t2 = time.perf_counter()
        finally:
            close = getattr(gen, "close", None)
            if close:
                close()
        return t1 - t0, t2 - t1

    def run(self, test: Test) -> float:
        if test.kind == "pp":
            prompt = [self.rng.randrange(self.n_vocab) for _ in range(test.n)]
            return self._time(prompt, 0)[0]
        bos = self.backend.tokenize("", add_bos=True) or [0]
        return self._time(bos[:1], test.n)[1]

    def close(self) -> None:
        self.backend.close()


def open_runner(backend: str, model_path: Path, threads: int, n_ctx: int) -> Runner:
    kind = BackendKind.parse(backend)
    if kind is BackendKind.LLAMACPP:
        return LlamaCppRunner(model_path, threads, n_ctx)
    options = LoadOptions(kind, n_ctx=n_ctx, threads=threads)
    return BackendRunner(open_backend(str(model_path), options), kind.value)


def parse_tests(pp: Sequence[int], tg: Sequence[int]) -> list[Test]:
    tests = [Test("pp", n) for n in pp] + [Test("tg", n) for n in tg]
    bad = [t.name for t in tests if t.n <= 0]
    if bad:
        raise ValueError(f"token counts must be positive: {', '.join(bad)}")
    if not tests:
        raise ValueError("nothing to run: give at least one --pp or --tg size")
    return tests


def run_model_bench(
    model_path: Path,
    backends: Sequence[str],
    threads: Sequence[int],
    tests: Sequence[Test],
    repeats: int = 3,
    on_step: Callable[[str], None] = lambda _: None,
    open_fn: Callable[[str, Path, int, int], Runner] = open_runner,
    model_name: str | None = None,
) -> list[ModelResult]:
    """One result per (backend, threads, test): tok/s mean ± std over ``repeats`` timed runs."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if any(t < 1 for t in threads):
        raise ValueError("thread counts must be >= 1")
    n_ctx = max(256, max(t.n for t in tests) + 16)
    rows: list[ModelResult] = []
    for backend in backends:
        for n_threads in threads:
            on_step(f"loading {backend} t={n_threads}")
            runner = open_fn(backend, model_path, n_threads, n_ctx)
            try:
                for test in tests:
                    on_step(f"{backend} t={n_threads} {test.name} warm-up")
                    runner.run(test)
                    seconds = []
                    for r in range(repeats):
                        on_step(f"{backend} t={n_threads} {test.name} {r + 1}/{repeats}")
                        seconds.append(runner.run(test))
                    mean, std = mean_std([test.n / s for s in seconds])
                    rows.append(
                        ModelResult(
                            model=model_name or model_path.stem,
                            backend=str(backend),
                            threads=n_threads,
                            test=test.name,
                            kind=test.kind,
                            n_tokens=test.n,
                            tps_mean=mean,
                            tps_std=std,
                            seconds=seconds,
                        )
                    )
            finally:
                runner.close()
    return rows


def run(
    specs: Sequence[str],
    backends: Sequence[str],
    threads: Sequence[int],
    tests: Sequence[Test],
    repeats: int = 3,
    label: str | None = None,
    progress: Progress | None = None,
) -> Run:
    """The `bench model` run: every model x backend x thread count x test."""
    from edgeinfer.models.registry import resolve

    progress = progress or Progress()
    config = {
        "models": list(specs),
        "backends": [str(b) for b in backends],
        "threads": list(threads),
        "tests": [t.name for t in tests],
        "repeats": repeats,
    }
    bench = new_run("model", config, label)
    if note := load_warning():
        progress.note(note)
    per_model = len(backends) * len(threads)
    progress.start("model bench", len(specs) * per_model * (len(tests) * (repeats + 1) + 1))
    for name, path in [resolve(spec) for spec in specs]:  # a bad name fails before any measurement
        bench.results += run_model_bench(
            path, backends, threads, tests, repeats, progress.step, model_name=name
        )
    return bench


def rows(run: Run) -> Table:
    """The throughput table: one row per (model, backend, threads, test)."""
    return Table(
        "Model throughput (llama-bench style)",
        ("model", "backend", "threads", "test", "tok/s"),
        [
            (r.model, r.backend, str(r.threads), r.test, f"{r.tps_mean:.2f} ± {r.tps_std:.2f}")
            for r in run.results
        ],
        right=frozenset({2, 4}),
    )
