"""How a model becomes a ``Backend``: one entry point for serve, generate and bench.

``LoadOptions`` is checked when it is built (backend kind, weight format), so a bad flag fails before any
model is read; ``open_backend`` does the heavy work (assembling a bundled model, loading weights);
``backend_opener`` gives the served name at once and defers the loading, for servers that load in a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from edgeinfer.engine.base import Backend
from edgeinfer.models.registry import resolve, served_name


class BackendKind(StrEnum):
    """The in-process backends: llama.cpp on the whole model, or the PyTorch shard engine."""

    LLAMACPP = "llamacpp"
    SHARD = "shard"

    @classmethod
    def parse(cls, value: str) -> BackendKind:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown backend {value!r}; choose one of {', '.join(k.value for k in cls)}"
            ) from None


class BackendUnavailable(RuntimeError):
    """The backend cannot run in this build (e.g. the shard engine's dependencies are missing)."""


@dataclass(frozen=True)
class LoadOptions:
    backend: BackendKind = BackendKind.LLAMACPP
    n_ctx: int = 4096
    threads: int | None = None  # None: the number of physical cores
    weight_format: str = "auto"  # shard backend only: gguf, int8, bf16, f32 (docs/shard-engine.md)
    parallel: int | None = None  # llamacpp only: slots for continuous batching (docs/serving.md); None: one

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))
        if self.parallel is not None and self.backend is not BackendKind.LLAMACPP:
            raise ValueError(
                "--parallel applies to the llamacpp backend only (the shard engine serves one sequence "
                "at a time)"
            )
        if self.weight_format == "auto":
            return
        if self.backend is not BackendKind.SHARD:
            raise ValueError("--weight-format applies to the shard backend only (add --backend shard)")
        from edgeinfer.models.common import WEIGHT_FORMATS

        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(
                f"unknown weight format {self.weight_format!r}; "
                f"choose one of auto, {', '.join(WEIGHT_FORMATS)}"
            )


def open_backend(spec: str, options: LoadOptions, name: str | None = None) -> Backend:
    """Load a model (bundled name, alias or GGUF path) on the chosen backend, served as ``name``
    (default: ``served_name(spec)``)."""
    name = name or served_name(spec)
    _, path = resolve(spec)
    if options.backend is BackendKind.SHARD:
        try:
            from edgeinfer.engine.shard_backend import ShardBackend
        except ImportError as exc:
            raise BackendUnavailable(
                f"the shard engine backend is not available in this build ({exc}); use --backend llamacpp"
            ) from exc
        return ShardBackend(
            path,
            threads=options.threads,
            name=name,
            n_ctx=options.n_ctx,
            weight_format=options.weight_format,
        )
    if options.parallel is not None:
        from edgeinfer.engine.llamacpp_batch import LlamaCppBatchBackend

        return LlamaCppBatchBackend(
            path, name=name, n_ctx=options.n_ctx, n_slots=options.parallel, threads=options.threads
        )
    from edgeinfer.engine.llamacpp import LlamaCppBackend

    return LlamaCppBackend(path, name=name, n_ctx=options.n_ctx, threads=options.threads)


def backend_opener(spec: str, options: LoadOptions) -> tuple[str, Callable[[], Backend]]:
    """The served name now (cheap: no file is read) and a loader that does the heavy work when called."""
    name = served_name(spec)
    return name, partial(open_backend, spec, options, name)
