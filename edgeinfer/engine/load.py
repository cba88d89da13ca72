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
from pathlib import Path

from edgeinfer.engine.base import Backend
from edgeinfer.engine.speculative import DEFAULT_DRAFT_MAX, SpeculativeOptions
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
    parallel: int | None = None  # slots for continuous batching (docs/serving.md); None: one sequence
    speculative: str = "off"  # off, ngram or exit:K (docs/speculative.md)
    draft_max: int = DEFAULT_DRAFT_MAX  # most tokens drafted per verification pass

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))
        spec = self.speculative_options  # a bad --speculative / --draft-max fails here
        if spec.enabled and self.parallel not in (None, 1):
            raise ValueError(
                "--speculative does not combine with --parallel > 1 (continuous batching verifies no "
                "drafts); use --parallel 1 or --speculative off"
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

    @property
    def speculative_options(self) -> SpeculativeOptions:
        return SpeculativeOptions.parse(self.speculative, self.draft_max)


def open_backend(spec: str, options: LoadOptions, name: str | None = None) -> Backend:
    """Load a model (bundled name, alias or GGUF path) on the chosen backend, served as ``name``
    (default: ``served_name(spec)``)."""
    name = name or served_name(spec)
    _, path = resolve(spec)
    backend = _open(path, options, name)
    if not options.speculative_options.enabled:
        return backend
    try:
        return speculative_backend(backend, options)
    except BaseException:
        backend.close()
        raise


def _open(path: Path, options: LoadOptions, name: str) -> Backend:
    if options.backend is BackendKind.SHARD:
        try:
            from edgeinfer.engine.shard_backend import ShardBackend
        except ImportError as exc:
            raise BackendUnavailable(
                f"the shard engine backend is not available in this build ({exc}); use --backend llamacpp"
            ) from exc
        if options.parallel is not None and not options.speculative_options.enabled:
            from edgeinfer.engine.shard_batch import ShardBatchBackend

            return ShardBatchBackend(
                path,
                name=name,
                n_ctx=options.n_ctx,
                n_slots=options.parallel,
                threads=options.threads,
                weight_format=options.weight_format,
            )
        return ShardBackend(
            path,
            threads=options.threads,
            name=name,
            n_ctx=options.n_ctx,
            weight_format=options.weight_format,
        )
    if options.parallel is not None and not options.speculative_options.enabled:
        from edgeinfer.engine.llamacpp_batch import LlamaCppBatchBackend

        return LlamaCppBatchBackend(
            path, name=name, n_ctx=options.n_ctx, n_slots=options.parallel, threads=options.threads
        )
    from edgeinfer.engine.llamacpp import LlamaCppBackend

    return LlamaCppBackend(path, name=name, n_ctx=options.n_ctx, threads=options.threads)


def speculative_backend(target: Backend, options: LoadOptions) -> Backend:
    """``target`` decoded speculatively as ``options`` say; ``exit:K`` drafts with the model's first K
    layers and its output head, run by the shard engine (same GGUF file, whichever backend verifies)."""
    from edgeinfer.engine.speculative import SpeculativeDecoder

    path = Path(target.info.path)
    spec = options.speculative_options
    if spec.mode != "exit":
        return SpeculativeDecoder(target, spec)
    assert spec.exit_layer is not None
    try:
        from edgeinfer.engine.shard import Shard, layer_count
        from edgeinfer.engine.shard_backend import ShardSequence
    except ImportError as exc:
        raise BackendUnavailable(f"exit:K drafts with the shard engine, not available here ({exc})") from exc
    n = layer_count(path)
    if not spec.exit_layer < n:
        raise ValueError(f"exit:{spec.exit_layer} must exit before the last layer: K < {n} for this model")
    fmt = options.weight_format if options.backend is BackendKind.SHARD else "auto"
    shard = Shard(
        path,
        0,
        n,
        exit_at=spec.exit_layer,
        threads=options.threads,
        max_seq_len=options.n_ctx,
        weight_format=fmt,
    )
    return SpeculativeDecoder(target, spec, lambda: ShardSequence([shard]), shard.close)


def backend_opener(spec: str, options: LoadOptions) -> tuple[str, Callable[[], Backend]]:
    """The served name now (cheap: no file is read) and a loader that does the heavy work when called."""
    name = served_name(spec)
    return name, partial(open_backend, spec, options, name)
