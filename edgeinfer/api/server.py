"""Building and running the HTTP server: model specs -> workers -> app -> uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeinfer.api.app import create_app
from edgeinfer.api.metrics import Metrics
from edgeinfer.api.worker import ModelWorker
from edgeinfer.engine.base import Backend

BACKENDS = ("llamacpp", "shard")


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[str, ...]
    backend: str = "llamacpp"
    n_ctx: int = 4096
    threads: int | None = None
    max_queue: int = 16
    cluster: str | None = None
    weight_format: str = "auto"  # shard backend only: gguf, int8, bf16, f32 (docs/shard-engine.md)


def check_weight_format(cfg: ServeConfig) -> None:
    if cfg.weight_format == "auto":
        return
    if cfg.backend != "shard":
        raise ValueError("--weight-format applies to the shard backend only (add --backend shard)")
    from edgeinfer.models.common import WEIGHT_FORMATS

    if cfg.weight_format not in WEIGHT_FORMATS:
        raise ValueError(
            f"unknown weight format {cfg.weight_format!r}; choose one of auto, {', '.join(WEIGHT_FORMATS)}"
        )


def backend_loader(spec: str, cfg: ServeConfig) -> tuple[str, Callable[[], Backend]]:
    """Resolve the served name now (cheap) and return a loader that does the heavy work in the worker."""
    from edgeinfer.models.registry import lookup, resolve

    bundled = lookup(spec)
    name = bundled.name if bundled else spec.rsplit("/", 1)[-1].removesuffix(".gguf")

    def load() -> Backend:
        _, path = resolve(spec)
        if cfg.backend == "shard":
            from edgeinfer.engine.shard_backend import ShardBackend

            return ShardBackend(
                path, threads=cfg.threads, name=name, n_ctx=cfg.n_ctx, weight_format=cfg.weight_format
            )
        from edgeinfer.engine.llamacpp import LlamaCppBackend

        return LlamaCppBackend(path, name=name, n_ctx=cfg.n_ctx, threads=cfg.threads)

    return name, load


def cluster_loader(cfg: ServeConfig) -> tuple[str, Callable[[], Backend]]:
    from edgeinfer.cluster.gateway import cluster_model_name, load_cluster

    assert cfg.cluster is not None
    path = cfg.cluster
    return cluster_model_name(path), lambda: load_cluster(path)


def build_app(cfg: ServeConfig):  # -> FastAPI
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
    check_weight_format(cfg)
    metrics = Metrics()
    loaders = [cluster_loader(cfg)] if cfg.cluster else [backend_loader(s, cfg) for s in cfg.models]
    names = [n for n, _ in loaders]
    if len(set(names)) != len(names):
        raise ValueError(f"two served models share a name: {names}")
    workers = [ModelWorker(n, load, metrics, max_queue=cfg.max_queue) for n, load in loaders]
    return create_app(workers, metrics)


def run(cfg: ServeConfig, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(build_app(cfg), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
