"""Fixtures shared by the whole suite: the real bundled models and a real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeinfer.models.registry import resolve
from edgeinfer.process import ServerProcess


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    return resolve("qwen2.5-coder-0.5b-instruct", progress=False)[1]


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return resolve("gemma-3-270m", progress=False)[1]


@pytest.fixture(scope="session")
def real_server(qwen_path: Path, gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`edgeinfer serve` with both bundled models (Qwen is the default), two threads."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with ServerProcess(
        ["-m", "qwen2.5-coder-0.5b-instruct", "-m", "gemma-3-270m", "-t", "2"], log=log
    ) as srv:
        yield srv.url
