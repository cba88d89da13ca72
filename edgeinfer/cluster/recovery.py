"""Re-planning a pipeline after a node is lost (docs/resilience.md): plan again over the surviving nodes
with their profiled costs, keep the shards that are already loaded where the new plan wants them, unload
the others, load what is missing (cold), and place warm standbys again when asked to.

Logic only: the stages it builds are the gateway's ``RemoteStage`` / ``LocalStage``; the gateway replays
the live sequence through the new chain.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from edgeinfer.cluster.client import NodePool
from edgeinfer.cluster.config import LOCAL, ClusterConfig
from edgeinfer.cluster.gateway import ClusterError, LocalStage, PipelineStage, RemoteStage
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.planner import Plan, Problem, Stage, place_standbys, plan
from edgeinfer.cluster.profile import NodeProfile, node_cost, node_link, profile_node

log = logging.getLogger("edgeinfer.cluster")


@dataclass
class Layout:
    """A loaded pipeline: its plan, its stages in order and each stage's warm standby (or None)."""

    plan: Plan
    stages: list[PipelineStage]
    standbys: list[PipelineStage | None] = field(default_factory=list)


class StageLoader:
    """Loads one planned stage on its node (or in-process for the local device)."""

    def __init__(self, cfg: ClusterConfig, pool: NodePool, local_host: ShardHost | None):
        self.cfg, self.pool, self.local_host = cfg, pool, local_host

    def load(self, st: Stage) -> PipelineStage:
        cfg = self.cfg
        if st.node == LOCAL:
            assert self.local_host is not None
            r = self.local_host.load(cfg.model, st.start, st.end, max_seq_len=cfg.ctx_size)
            return LocalStage(self.local_host, r.shard_id, st)
        client = self.pool[st.node]
        client.load_timeout = max(client.load_timeout, 300.0)
        r = client.load(cfg.model, st.start, st.end, cfg.threads, cfg.ctx_size)
        return RemoteStage(client, r.shard_id, st, cfg.wire_dtype)

    def load_all(self, wanted: Sequence[Stage]) -> list[PipelineStage]:
        """Load in parallel; on any failure unload what did load and raise one ``ClusterError``."""
        if not wanted:
            return []
        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            futures = [pool.submit(self.load, st) for st in wanted]
            loaded, errors = [], []
            for f in futures:
                try:
                    loaded.append(f.result())
                except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                    errors.append(exc)
        if errors:
            for st in loaded:
                with contextlib.suppress(Exception):
                    st.close()
            raise ClusterError(f"loading the planned shards failed: {'; '.join(map(str, errors))}")
        return loaded


def survivors(problem: Problem, alive: set[str]) -> Problem:
    """The planner's problem restricted to the nodes still alive (the local device always is)."""
    nodes = [n for n in problem.nodes if n.local or n.name in alive]
    if not nodes:
        raise ClusterError("no node is left")
    return Problem(nodes, problem.model, problem.links)


class Replanner:
    def __init__(self, cfg: ClusterConfig, problem: Problem, loader: StageLoader):
        self.cfg, self.problem, self.loader = cfg, problem, loader

    def measure(self, name: str) -> NodeProfile:
        """Profile a node that joined or came back (no lock needed: it only talks to that node). Raises
        ``NodeError`` or ``ValueError``."""
        spec = next((n for n in self.cfg.nodes if n.name == name), None)
        limit = spec.memory_limit if spec is not None else None
        return profile_node(self.cfg, self.loader.pool[name], limit, reclaim=True)

    def admit(self, p: NodeProfile) -> None:
        """Plan with what the node is now: its fresh costs replace the old ones (a slow-node scaling
        included); a new node is added."""
        self.problem = self.problem.with_node(node_cost(p), node_link(p))
        log.info(
            "profiled %s: %.2f ms per layer, %.0f MiB for the plan",
            p.name,
            p.layers.layer_seconds * 1e3,
            p.memory / 2**20,
        )

    def forget(self, name: str) -> None:
        """A node left the cluster (discovery): the planner no longer considers it."""
        self.problem = self.problem.without(name)

    def choose(self, alive: set[str]) -> tuple[Plan, list[Stage | None]]:
        """The best plan over the survivors (raises ``InfeasiblePlan`` when the model no longer fits). A
        strategy the survivors cannot satisfy (pipeline with one edge node left) falls back to ``auto``."""
        sub = survivors(self.problem, alive)
        opts = self.cfg.planner
        try:
            chosen = plan(sub, opts.objective, opts.strategy)
        except ValueError as exc:
            if opts.strategy == "auto" or type(exc) is not ValueError:
                raise
            log.warning("re-plan: %s; planning with strategy auto", exc)
            chosen = plan(sub, opts.objective, "auto")
        chosen.standbys = place_standbys(sub, chosen.stages, opts.replicas)
        return chosen, chosen.standbys

    def rebuild(self, alive: set[str], current: Sequence[PipelineStage]) -> Layout:
        """Plan over ``alive``, keep the loaded shards the plan reuses, unload the rest, load the missing.
        ``current``: every stage loaded now (primaries and standbys) on nodes that are still alive."""
        chosen, spare = self.choose(alive)
        have = {(s.name, s.placement.start, s.placement.end): s for s in current}
        wanted = [*chosen.stages, *(s for s in spare if s is not None)]
        keep = {(w.node, w.start, w.end) for w in wanted}
        for key, st in list(have.items()):
            if key not in keep:
                with contextlib.suppress(Exception):  # a node dying now fails the loads below
                    st.close()
                del have[key]
        missing = [w for w in wanted if (w.node, w.start, w.end) not in have]
        for st in self.loader.load_all(missing):
            have[(st.name, st.placement.start, st.placement.end)] = st
        stages = [have[(w.node, w.start, w.end)] for w in chosen.stages]
        standbys = [None if w is None else have[(w.node, w.start, w.end)] for w in spare]
        log.warning("re-planned: %s (%d shard(s) loaded)", chosen.describe(), len(missing))
        return Layout(chosen, stages, standbys)
