"""Cluster bring-up, the use cases of `edgeinfer plan` and `edgeinfer serve --cluster`: one ``ClusterConfig``
(read once) -> profile every node and link -> plan -> load the shards -> a ``PipelineBackend``.

The node connections are opened while profiling (``ClusterProfile.clients``, a ``NodePool``) and handed to
the backend, which closes them; on any failure here they are closed before the error propagates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeinfer.cluster.config import LOCAL, ClusterConfig, load_config
from edgeinfer.cluster.gateway import ClusterError, LocalStage, PipelineBackend, PipelineStage, RemoteStage
from edgeinfer.cluster.planner import Plan, Problem, Stage, plan
from edgeinfer.cluster.profile import ClusterProfile, build_problem, profile_cluster

log = logging.getLogger("edgeinfer.cluster")


def served_name(cfg: ClusterConfig) -> str:
    """The model name the gateway serves: the YAML's ``name``, else the model's own served name."""
    from edgeinfer.models.registry import served_name as model_served_name

    return cfg.name or model_served_name(cfg.model)


def plan_cluster(
    cfg: ClusterConfig, strategy: str | None = None, objective: str | None = None, progress=None
) -> tuple[Plan, Problem, ClusterProfile]:
    """Profile the cluster and plan (or check the fixed ``planner.stages`` of the YAML). The caller owns the
    returned profile (its node connections): close it, or hand it on as ``load_cluster`` does."""
    profile = profile_cluster(cfg, progress)
    try:
        wire_bytes = 4 if cfg.wire_dtype == "f32" else 2
        problem = build_problem(profile, wire_bytes=wire_bytes)
        if cfg.planner.stages:
            stages = [Stage(s.node, s.start, s.end) for s in cfg.planner.stages]
            latency, bottleneck, rows = problem.evaluate(stages)
            memory = {n.name: n.memory for n in problem.nodes}
            over = [
                f"{r.node} (layers {r.start}-{r.end - 1}) needs {r.memory / 2**20:.0f} MiB of "
                f"{memory[r.node] / 2**20:.0f} MiB"
                for r in rows
                if not r.fits
            ]
            if over:
                raise ClusterError(f"fixed stages do not fit in memory: {'; '.join(over)}")
            chosen = Plan(stages, latency, bottleneck, cfg.planner.objective, "fixed", breakdown=rows)
        else:
            chosen = plan(problem, objective or cfg.planner.objective, strategy or cfg.planner.strategy)
    except BaseException:
        profile.close()
        raise
    return chosen, problem, profile


def load_cluster(
    cfg: ClusterConfig, strategy: str | None = None, objective: str | None = None, progress=None
) -> PipelineBackend:
    """Profile, plan, load the shards; returns the gateway backend (which owns the node connections)."""
    from edgeinfer.models.registry import resolve

    _, model_path = resolve(cfg.model, progress=False)
    chosen, problem, profile = plan_cluster(cfg, strategy, objective, progress)
    log.info("plan: %s, predicted %.1f tok/s", chosen.describe(), chosen.tokens_per_second)

    def load_one(st: Stage) -> PipelineStage:
        if st.node == LOCAL:
            assert profile.local_host is not None
            r = profile.local_host.load(cfg.model, st.start, st.end, max_seq_len=cfg.ctx_size)
            return LocalStage(profile.local_host, r.shard_id, st)
        client = profile.clients[st.node]
        client.load_timeout = max(client.load_timeout, 300.0)
        r = client.load(cfg.model, st.start, st.end, cfg.threads, cfg.ctx_size)
        return RemoteStage(client, r.shard_id, st, cfg.wire_dtype)

    with ThreadPoolExecutor(max_workers=len(chosen.stages)) as pool:
        futures = [pool.submit(load_one, st) for st in chosen.stages]
        stages, errors = [], []
        for f in futures:
            try:
                stages.append(f.result())
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)
    if errors:
        for st in stages:
            with contextlib.suppress(Exception):
                st.close()
        profile.close()
        raise ClusterError(f"loading the planned shards failed: {'; '.join(map(str, errors))}")
    profile.clients.keep({st.node for st in chosen.stages})
    return PipelineBackend(
        model_path,
        stages,
        name=served_name(cfg),
        n_ctx=cfg.ctx_size,
        plan=chosen,
        problem=problem,
        nodes=profile.clients,
    )


def cluster_opener(path: str | Path) -> tuple[str, Callable[[], PipelineBackend]]:
    """For `serve --cluster`: read the YAML once; the served name now, the heavy bring-up in the loader."""
    cfg = load_config(path)
    return served_name(cfg), lambda: load_cluster(cfg)
