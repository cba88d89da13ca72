"""Cluster bring-up, the use cases of `edgeinfer plan` and `edgeinfer serve --cluster`: one ``ClusterConfig``
(read once) -> profile every node and link -> plan (and warm standbys) -> load the shards -> a
``PipelineBackend`` watched by a ``Membership`` (heartbeats) and able to re-plan (docs/resilience.md).

The node connections are opened while profiling (``ClusterProfile.clients``, a ``NodePool``) and handed to
the backend, which closes them; on any failure here they are closed before the error propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.cluster.config import ClusterConfig, load_config, resolve_dns, with_speculative
from edgeinfer.cluster.gateway import ClusterError, PipelineBackend
from edgeinfer.cluster.membership import Membership
from edgeinfer.cluster.planner import Plan, Problem, Stage, place_standbys, plan
from edgeinfer.cluster.profile import ClusterProfile, build_problem, kv_reservation, profile_cluster
from edgeinfer.cluster.recovery import Replanner, StageLoader

if TYPE_CHECKING:
    from edgeinfer.engine.speculative import SpeculativeOptions

log = logging.getLogger("edgeinfer.cluster")


PARALLEL_PER_STAGE = 2  # default sequences in flight per pipeline stage (``serve --parallel``)


def served_name(cfg: ClusterConfig) -> str:
    """The model name the gateway serves: the YAML's ``name``, else the model's own served name."""
    from edgeinfer.models.registry import served_name as model_served_name

    return cfg.name or model_served_name(cfg.model)


def plan_cluster(
    cfg: ClusterConfig,
    strategy: str | None = None,
    objective: str | None = None,
    progress=None,
    replicas: int | None = None,
) -> tuple[Plan, Problem, ClusterProfile]:
    """Profile the cluster and plan (or check the fixed ``planner.stages`` of the YAML), with ``replicas``
    (default: the YAML's) warm standbys per stage in ``Plan.standbys``. The caller owns the returned profile
    (its node connections): close it, or hand it on as ``load_cluster`` does."""
    kv = _kv_bytes(cfg)
    profile = profile_cluster(cfg, progress)
    try:
        wire_bytes = 4 if cfg.wire_dtype == "f32" else 2
        problem = build_problem(profile, wire_bytes=wire_bytes, kv_bytes=kv)
        if cfg.planner.stages:
            stages = [Stage(s.node, s.start, s.end) for s in cfg.planner.stages]
            latency, bottleneck, rows = problem.evaluate(stages)
            memory = {n.name: n.memory for n in problem.nodes}
            over = [
                f"{r.node} (layers {r.start}-{r.end - 1}) needs {(r.memory + r.kv) / 2**20:.0f} MiB "
                f"(weights and KV cache) of {memory[r.node] / 2**20:.0f} MiB"
                for r in rows
                if not r.fits
            ]
            if over:
                raise ClusterError(f"fixed stages do not fit in memory: {'; '.join(over)}")
            chosen = Plan(stages, latency, bottleneck, cfg.planner.objective, "fixed", breakdown=rows)
        else:
            chosen = plan(problem, objective or cfg.planner.objective, strategy or cfg.planner.strategy)
        n = cfg.planner.replicas if replicas is None else replicas
        chosen.standbys = place_standbys(problem, chosen.stages, n)
    except BaseException:
        profile.close()
        raise
    return chosen, problem, profile


def _kv_bytes(cfg: ClusterConfig) -> float:
    """One layer's KV reservation (``profile.kv_reservation``) from the model file on this machine; 0 with a
    warning when the gateway cannot read it (a GGUF path only the nodes have)."""
    from edgeinfer.models.registry import resolve

    try:
        _, path = resolve(cfg.model, progress=False)
        return kv_reservation(path, cfg.ctx_size)
    except Exception as exc:  # noqa: BLE001 - planning still works, without the KV room
        log.warning("cannot read %s here to reserve KV cache memory in the plan: %s", cfg.model, exc)
        return 0.0


def load_cluster(
    cfg: ClusterConfig,
    strategy: str | None = None,
    objective: str | None = None,
    progress=None,
    parallel: int | None = None,
) -> PipelineBackend:
    """Profile, plan, load the shards; returns the gateway backend (which owns the node connections).
    ``parallel``: sequences in flight at once (``serve --parallel``); default ``PARALLEL_PER_STAGE`` per
    stage, so that every stage has work while the others compute."""
    from edgeinfer.models.registry import resolve

    _, model_path = resolve(cfg.model, progress=False)
    chosen, problem, profile = plan_cluster(cfg, strategy, objective, progress)
    log.info("plan: %s, predicted %.1f tok/s", chosen.describe(), chosen.tokens_per_second)

    profile.clients.keep({n.name for n in profile.nodes})  # survivors of a failure may be needed
    loader = StageLoader(cfg, profile.clients, profile.local_host)
    spare = chosen.standbys
    try:
        loaded = loader.load_all([*chosen.stages, *(s for s in spare if s is not None)])
    except BaseException:
        profile.close()
        raise
    stages, rest = loaded[: len(chosen.stages)], iter(loaded[len(chosen.stages) :])
    standbys = [None if s is None else next(rest) for s in spare]
    backend = PipelineBackend(
        model_path,
        stages,
        name=served_name(cfg),
        n_ctx=cfg.ctx_size,
        plan=chosen,
        problem=problem,
        nodes=profile.clients,
        standbys=standbys,
        failover=cfg.failover,
        replanner=Replanner(cfg, problem, loader),
        speculative=cfg.speculative.options(),
        parallel=parallel or PARALLEL_PER_STAGE * len(stages),
    )
    if cfg.failover.recover and profile.clients.names():
        d = cfg.discovery
        backend.attach(
            Membership(
                profile.clients,
                cfg.failover,
                discover=(lambda: resolve_dns(d)) if d is not None and d.interval else None,
                discover_every=d.interval if d is not None else 0.0,
                rpc_timeout=cfg.rpc_timeout,
            )
        )
    return backend


def cluster_opener(
    path: str | Path, speculative: SpeculativeOptions | None = None, parallel: int | None = None
) -> tuple[str, Callable[[], PipelineBackend]]:
    """For `serve --cluster`: read the YAML once; the served name now, the heavy bring-up in the loader.
    ``speculative``: `serve --speculative` other than off replaces the YAML's ``speculative``.
    ``parallel``: `serve --parallel` (sequences in flight through the pipeline)."""
    cfg = load_config(path)
    if speculative is not None and speculative.enabled:
        cfg = with_speculative(cfg, str(speculative), speculative.draft_max)
    return served_name(cfg), lambda: load_cluster(cfg, parallel=parallel)
