"""Shared by the inspection tests: the bench script's helpers (real servers, the cheating transport), the
bundled IDs, and real servers on loopback that several test files use (started once per session)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from edgeinfer.inspect.ids import IdSet, bundled_ids_path
from edgeinfer.process import ServerProcess

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_inspect.py"
QWEN = "qwen2.5-coder-0.5b-instruct"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_inspect", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_inspect"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench() -> ModuleType:
    return _load_bench()


@pytest.fixture(scope="session")
def ids() -> IdSet:
    """The bundled Qwen IDs (EDGEINFER_INSPECT_IDS names another file)."""
    return IdSet.load(os.environ.get("EDGEINFER_INSPECT_IDS") or bundled_ids_path(QWEN))


@pytest.fixture(scope="session")
def honest_batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`edgeinfer serve` on Qwen with continuous batching (the default --parallel), one thread: two
    threads slow down badly when other work shares the cores."""
    log = tmp_path_factory.mktemp("honest") / "serve.log"
    with ServerProcess(["-m", QWEN, "-t", "1"], log=log) as srv:
        yield srv.url


@pytest.fixture(scope="session")
def gemma_substitute(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Gemma 3 270M served under Qwen's name (every bundled ID exposes it, with or without logprobs)."""
    srv = bench.SubstituteServer("model:gemma", log=tmp_path_factory.mktemp("gemma") / "serve.log")
    with srv:
        yield srv.url
