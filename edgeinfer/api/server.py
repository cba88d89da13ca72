"""Building and running the HTTP server: ``ServerConfig`` -> model workers -> app -> uvicorn.

How a model spec becomes a backend is ``engine.load``'s business; this module only wires workers to the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgeinfer.api.app import create_app
from edgeinfer.api.guard import HTTPPolicy
from edgeinfer.api.metrics import Metrics
from edgeinfer.api.worker import ModelWorker
from edgeinfer.engine.load import LoadOptions, backend_opener


@dataclass(frozen=True)
class ServerConfig:
    models: tuple[str, ...]
    load: LoadOptions = field(default_factory=LoadOptions)
    max_queue: int = 16
    parallel: int | None = None  # requests generated at once per model; None: 4 if memory allows
    cluster: str | None = None  # serve as a gateway over the nodes of this cluster YAML instead of ``models``
    allow_special_tokens: bool = False  # parse control tokens written in chat message contents
    http: HTTPPolicy = field(default_factory=HTTPPolicy)  # API keys, hosts, CORS, body size (api/guard.py)


def build_app(cfg: ServerConfig):  # -> FastAPI
    metrics = Metrics()
    if cfg.cluster:
        from edgeinfer.cluster.bringup import cluster_opener

        openers = [cluster_opener(cfg.cluster, cfg.load.speculative_options, cfg.parallel)]
    else:
        load = _with_parallel(cfg)
        openers = [backend_opener(spec, load) for spec in cfg.models]
    names = [n for n, _ in openers]
    if len(set(names)) != len(names):
        raise ValueError(f"two served models share a name: {names}")
    workers = [ModelWorker(n, load, metrics, max_queue=cfg.max_queue) for n, load in openers]
    return create_app(workers, metrics, policy=cfg.http, allow_special_tokens=cfg.allow_special_tokens)


def _with_parallel(cfg: ServerConfig) -> LoadOptions:
    """The load options with the slots per model resolved (llamacpp and shard backends), after checking that
    their KV caches fit in memory (fp16 in both)."""
    if cfg.load.speculative_options.enabled:  # one sequence at a time; LoadOptions refuses --parallel > 1
        return replace(cfg.load, parallel=cfg.parallel)
    from edgeinfer.engine.batch import plan_parallel
    from edgeinfer.models.registry import resolve

    paths = [str(resolve(spec, progress=False)[1]) for spec in cfg.models]
    return replace(cfg.load, parallel=plan_parallel(paths, cfg.load.n_ctx, cfg.parallel))


def run(cfg: ServerConfig, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(build_app(cfg), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
