"""The gateway: a ``Backend`` that runs one model as a pipeline of shards on remote nodes (and optionally on
this device), so the OpenAI server serves a cluster exactly like a single model.

``bringup.load_cluster(cfg)`` profiles every node and link, plans (``cluster/planner.py``), loads the shards
and builds a ``PipelineBackend``. Tokenization and sampling happen here; the gateway calls the stages in
turn (star topology), each RPC with a timeout, so a failing node surfaces as a clear error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.cluster.adapt import rescaled, slowdowns
from edgeinfer.cluster.client import NodeClient, NodeError, NodePool
from edgeinfer.cluster.config import LOCAL, FailoverOptions
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.mirror import StandbyMirror, head_rows
from edgeinfer.cluster.planner import InfeasiblePlan, Plan, Problem, Stage
from edgeinfer.cluster.state import ClusterState, ResilienceStats, StageStatus
from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.decode import decode_tokens
from edgeinfer.engine.draft import NgramDrafter
from edgeinfer.engine.speculative import SpecStats, SpeculativeOptions, speculative_tokens
from edgeinfer.engine.vocab import Vocab, VocabMixin

if TYPE_CHECKING:
    from edgeinfer.cluster.membership import Membership
    from edgeinfer.cluster.recovery import Replanner

log = logging.getLogger("edgeinfer.cluster")


class ClusterError(RuntimeError):
    pass


TIMINGS_KEPT = 1024


class PipelineStage(ABC):
    """One loaded shard of the pipeline: ``placement`` says which node holds which layers."""

    def __init__(self, name: str, shard_id: str, placement: Stage):
        self.name, self.shard_id, self.placement = name, shard_id, placement
        # recent forwards: (positions, seconds of the whole call, seconds the node computed, calls of this
        # gateway on the stage when it started, itself included: above 1 it may have queued behind them)
        self.timings: deque[tuple[int, float, float, int]] = deque(maxlen=TIMINGS_KEPT)
        self._calls = 0
        self._counting = threading.Lock()

    def _timed(self, call, positions: int):
        """Run ``call()`` (-> the node's ``ForwardResult``), recording its timing; returns its output."""
        with self._counting:
            self._calls += 1
            calls = self._calls
        t0 = time.perf_counter()
        try:
            r = call()
        finally:
            with self._counting:
                self._calls -= 1
        self.timings.append((positions, time.perf_counter() - t0, r.compute_seconds, calls))
        return r.output

    def describe(self) -> str:
        return f"{self.name}, layers {self.placement.start}-{self.placement.end - 1}"

    @abstractmethod
    def forward(
        self, seq_id: str, x, start_pos: int, output: str, timeout: float | None = None, all_positions=False
    ):
        """``all_positions``: a last stage returns the output of every position (speculative verification);
        a ``start_pos`` below the cached length rolls the stage's KV cache back first."""

    @abstractmethod
    def drop(self, seq_id: str) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Unload the shard (the node connection stays open: the ``NodePool`` owns it)."""


class RemoteStage(PipelineStage):
    def __init__(self, client: NodeClient, shard_id: str, placement: Stage, wire_dtype: str):
        super().__init__(client.name, shard_id, placement)
        self.client, self.wire_dtype = client, wire_dtype

    def forward(
        self, seq_id: str, x, start_pos: int, output: str, timeout: float | None = None, all_positions=False
    ):
        return self._timed(
            lambda: self.client.forward(
                self.shard_id, seq_id, x, start_pos, output, self.wire_dtype, timeout, all_positions
            ),
            int(x.shape[0]),
        )

    def drop(self, seq_id: str) -> None:
        self.client.drop(seq_id, self.shard_id)

    def close(self) -> None:
        self.client.unload(self.shard_id)


class LocalStage(PipelineStage):
    """Layers run in this process (device<->edge: the requesting device holds the first layers)."""

    def __init__(self, host: ShardHost, shard_id: str, placement: Stage):
        super().__init__(LOCAL, shard_id, placement)
        self.host = host

    def forward(
        self, seq_id: str, x, start_pos: int, output: str, timeout: float | None = None, all_positions=False
    ):
        return self._timed(  # in-process: no deadline
            lambda: self.host.forward(self.shard_id, seq_id, x, start_pos, output, all_positions),
            int(x.shape[0]),
        )

    def drop(self, seq_id: str) -> None:
        self.host.drop(self.shard_id, seq_id)

    def close(self) -> None:
        self.host.unload(self.shard_id)


class StageFailed(ClusterError):
    def __init__(self, index: int, stage: PipelineStage, exc: Exception):
        super().__init__(f"pipeline stage {index} ({stage.describe()}): {exc}")
        self.index, self.stage = index, stage


def trim_record(record: list[list], length: int) -> None:
    """Keep the inputs of the first ``length`` positions in every stage's record (``step``): positions
    beyond were drafted tokens the gateway rejected, rolled back on the nodes by the next Forward."""
    for inputs in record:
        inputs[:] = head_rows(inputs, length)


class ClusterUnavailable(ClusterError):
    """The model does not fit on the nodes that are left; ``reason`` says which node was lost."""


# codes of a node that answered: a request the node refuses, not a failure of the node
_REFUSED = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED"}


class PipelineGate:
    """Sequences in flight run their forwards side by side (``shared``); a change of the pipeline's layout
    (recovery, re-plan, slow-node adaptation, healing) waits until the forwards in flight are done and holds
    new ones back (``acquire`` / ``with gate``: exclusive, preferred over new forwards so it is not starved).
    No sequence holds the gate between two tokens, so a change happens between any sequence's steps."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._writers = 0  # exclusive holders waiting

    @contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive or self._writers:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    def acquire(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._writers += 1
            try:
                while self._exclusive or self._shared:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                self._exclusive = True
                return True
            finally:
                self._writers -= 1
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    def __enter__(self) -> PipelineGate:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class PipelineSequence:
    """One sequence through the pipeline as the ``TokenModel`` of speculative decoding (engine/draft.py):
    ``feed`` runs drafted positions through every stage in one pass; ``truncate`` costs no call, the next
    Forward continues at the kept length and each node rolls its KV cache back to it. Greedy passes ship the
    last node's top-1 id per position ([T] ids), never the logits."""

    def __init__(self, forward, top1: bool):
        self._forward, self.top1 = forward, top1
        self.length = 0  # positions the pipeline holds for this sequence

    def feed(self, ids: Sequence[int], all_logits: bool = False):
        import torch

        out = self._forward(list(ids), self.length, all_positions=all_logits)
        self.length += len(ids)
        if self.top1:  # the acceptance rule reads logits rows: rows whose argmax is the node's pick
            picks = torch.tensor(out if all_logits else [out], dtype=torch.long)
            rows = torch.full((len(picks), int(picks.max()) + 1), float("-inf"))  # no wider than needed
            return rows.scatter_(1, picks[:, None], 0.0)
        return out if all_logits else out.reshape(1, -1)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} of {self.length} positions")
        self.length = length

    def close(self) -> None:
        """The caller drops the sequence on every stage."""


class PipelineBackend(VocabMixin):
    def __init__(
        self,
        model_path: str | Path,
        stages: list[PipelineStage],
        name: str | None = None,
        n_ctx: int = 4096,
        plan: Plan | None = None,
        problem: Problem | None = None,
        nodes: NodePool | None = None,
        standbys: list[PipelineStage | None] | None = None,
        failover: FailoverOptions | None = None,
        replanner: Replanner | None = None,
        speculative: SpeculativeOptions | None = None,
        parallel: int = 1,
    ):
        """``nodes``: the connections the remote stages use; the backend closes them on ``close``.
        ``speculative``: ngram drafts verified in one pass through every stage (``PipelineSequence``).
        ``standbys``: per stage its warm standby (same layers loaded on another node) or None.
        ``replanner``: rebuilds the pipeline over the surviving nodes (``cluster/recovery.py``); with a
        ``Membership`` attached (``attach``) a failed stage is recovered and the sequences replayed.
        ``parallel``: sequences the server generates at once (``concurrency``); each runs its own forwards,
        so with several in flight every stage works on one while the others work on the rest."""
        if not stages:
            raise ClusterError("a pipeline needs at least one stage")
        path = Path(model_path)
        self.vocab = Vocab(path)
        meta = self.vocab.metadata
        arch = meta.get("general.architecture", "unknown")
        train_ctx = int(meta.get(f"{arch}.context_length", n_ctx))
        self.stages = stages
        self.standbys: list[PipelineStage | None] = list(standbys or [None] * len(stages))
        self.nodes = nodes
        self.plan = plan
        self.problem = problem
        self.failover = failover or FailoverOptions()
        self.replanner = replanner
        self.membership: Membership | None = None
        self.stats = ResilienceStats()
        self.speculative = speculative or SpeculativeOptions()
        if self.speculative.mode not in ("off", "ngram"):
            raise ClusterError(f"speculative {self.speculative} is not available in a pipeline (use ngram)")
        self.spec_stats = SpecStats()  # drafted / accepted tokens and passes of the speculative sequences
        self.unavailable: str | None = None  # why the model cannot be served now (HTTP 503)
        # hot standbys: each standby is fed its primary's inputs in the background (cluster/mirror.py)
        self.mirror = StandbyMirror() if self.failover.mirror else None
        self._gate = PipelineGate()  # sequences in flight share it; layout changes take it alone
        self.in_flight = 0  # sequences being generated (their forwards may queue behind each other's)
        self._counting = threading.Lock()
        self.parallel = max(1, parallel)  # sequences the server runs at once (``concurrency``)
        self._heal = threading.Event()
        self._closed = threading.Event()
        self._healer: threading.Thread | None = None
        self._stale: set[str] = set()  # re-admitted nodes whose leftover shards must go
        self._joining: set[str] = set()  # nodes that joined or came back, to be profiled
        self._healing = False  # the healer is handling a change
        self._lost = ""  # the node whose loss made the model unavailable
        self._adapt_after = 0.0  # monotonic time before which no slow-node adaptation is tried
        self.info = ModelInfo(
            name=name or path.stem,
            path=str(path),
            architecture=arch,
            n_ctx=min(n_ctx, train_ctx),
            backend="cluster",
            vocab_size=self.vocab.n_vocab,
            bos_token=self.vocab.bos_token,
            eos_token=self.vocab.eos_token,
            chat_template=meta.get("tokenizer.chat_template"),
            n_ctx_train=train_ctx,
        )

    # --- membership ----------------------------------------------------------------------------------
    def attach(self, membership: Membership) -> None:
        """Start failure handling: the heartbeat reports node changes, a healer thread acts on them."""
        self.membership = membership
        membership.on_change = self.node_changed
        self._healer = threading.Thread(target=self._heal_loop, name="cluster-healer", daemon=True)
        self._healer.start()
        membership.start()

    def node_changed(self, name: str, up: bool) -> None:
        if up:
            self._joining.add(name)  # profiled by the healer before the planner may use it
        self._heal.set()

    def _heal_loop(self) -> None:
        while not self._closed.is_set():
            self._heal.wait()
            self._healing = True
            self._heal.clear()
            if self._closed.is_set():
                return
            try:
                profiles = self._profile_joining()  # outside the lock: a sequence may run meanwhile
                with self._gate:  # waits for the forwards in flight (their sequences recover by themselves)
                    try:
                        self._admit_profiles(profiles)
                        self._heal_now()
                    except Exception as exc:  # noqa: BLE001 - logged; the next change retries
                        log.warning("cluster healing failed: %s", exc)
            finally:
                self._healing = False

    def settled(self) -> bool:
        """No membership change waits to be handled (profiling, re-planning): for tests and benchmarks that
        must not start the next fault while the last one is still being healed."""
        return not self._heal.is_set() and not self._healing

    def _profile_joining(self) -> list:
        """Nodes that joined (discovery) or came back are measured again before the planner uses them: a
        restarted or rescheduled node may differ in speed and memory, and a node once judged slow gets
        its fresh costs. A node that fails its profiling is declared dead (ban, back-off)."""
        m = self.membership
        names, self._joining = sorted(self._joining), set()
        if self.replanner is None or m is None:
            self._stale.update(names)
            return []
        profiles = []
        for name in names:
            if not m.is_up(name):
                continue
            try:
                with m.held(name):
                    profiles.append(self.replanner.measure(name))
            except Exception as exc:  # noqa: BLE001 - a node that cannot be profiled is not used
                m.mark_dead(name, f"profiling failed: {exc}")
        return profiles

    def _admit_profiles(self, profiles: list) -> None:
        """Under the lock: the fresh profiles into the planner's problem; nodes gone from discovery out."""
        m = self.membership
        if self.replanner is None or m is None:
            return
        for p in profiles:
            if p.name not in {n.name for n in self.replanner.problem.nodes}:
                self.stats.joined += 1
            self.replanner.admit(p)
            self._stale.add(p.name)
        known = m.names()
        for node in list(self.replanner.problem.nodes):
            if not node.local and node.name not in known:
                self.replanner.forget(node.name)
                self.stats.left += 1
        self.problem = self.replanner.problem

    def _heal_now(self) -> None:
        m = self.membership
        assert m is not None
        returned = sorted(n for n in self._stale if m.is_up(n))
        self._stale.clear()
        gone: list[PipelineStage] = []  # stages whose node came back without their shard (it restarted)
        for name in returned:
            if self.nodes is not None:
                gone += self._unload_leftovers(name)
        self.standbys = [None if any(sb is g for g in gone) else sb for sb in self.standbys]
        for _ in range(len(self.stages)):  # a standby covers one lost stage; a re-plan covers them all
            down = [
                i
                for i, st in enumerate(self.stages)
                if isinstance(st, RemoteStage) and (not m.is_up(st.name) or any(st is g for g in gone))
            ]
            if self.unavailable is None and not down:
                break
            lost = self.stages[down[0]].name if down else self._lost
            if self._recover(down[0] if down else None, lost, stale=gone) == "replan":
                break
        else:
            return
        if not down and returned and self.replanner is not None and self.failover.recover:
            self._rebalance(returned)

    def _rebalance(self, returned: list[str]) -> None:
        """Nodes came back: if the planner now prefers another layout (the returned nodes, standbys that were
        used up), move to it. Only on membership changes, so the pipeline does not flap."""
        assert self.membership is not None and self.replanner is not None
        alive = self.membership.alive()
        chosen, spare = self.replanner.choose(alive)

        def key(st) -> tuple | None:
            return None if st is None else (st.node, st.start, st.end)

        now = (
            [key(st.placement) if st else None for st in self.stages],
            [key(st.placement) if st else None for st in self.standbys],
        )
        if ([key(s) for s in chosen.stages], [key(s) for s in spare]) == now:
            return
        current = [st for st in [*self.stages, *self.standbys] if st is not None and st.name in alive]
        layout = self.replanner.rebuild(alive, current)
        self.stages, self.standbys, self.plan = layout.stages, layout.standbys, layout.plan
        self.stats.replans += 1
        self.stats.last_recovery = f"{', '.join(returned)} back: re-planned as {layout.plan.describe()}"
        log.warning(self.stats.last_recovery)

    def _unload_leftovers(self, name: str) -> list[PipelineStage]:
        """A node back from the dead may still hold shards the pipeline no longer uses: unload them. Returns
        the pipeline's stages on that node whose shard it no longer holds (the node restarted: its memory is
        gone, so those stages must be loaded again, never reused)."""
        assert self.nodes is not None
        ours = {
            st.shard_id: st for st in [*self.stages, *self.standbys] if st is not None and st.name == name
        }
        client = self.nodes[name]
        held = set()
        for sh in client.capabilities().shards:
            if sh.shard_id in ours:
                held.add(sh.shard_id)
            else:
                client.unload(sh.shard_id)
                log.info("unloaded leftover shard %s from %s", sh.shard_id, name)
        gone = [st for shard_id, st in ours.items() if shard_id not in held]
        for st in gone:
            log.warning(
                "node %s came back without shard %s (%s): it will be loaded again",
                name,
                st.shard_id,
                st.describe(),
            )
        return gone

    def health(self) -> tuple[bool, str | None]:
        return self.unavailable is None, self.unavailable

    def cluster_state(self) -> ClusterState:
        """The live plan, node states and standbys (``GET /v1/cluster``, the dashboard, the metrics)."""

        def stage(st: PipelineStage | None) -> StageStatus | None:
            return None if st is None else StageStatus(st.name, st.placement.start, st.placement.end)

        s = self.stats
        return ClusterState(
            available=self.unavailable is None,
            reason=self.unavailable,
            plan=self.plan.describe() if self.plan else None,
            stages=tuple(StageStatus(st.name, st.placement.start, st.placement.end) for st in self.stages),
            standbys=tuple(stage(st) for st in self.standbys),
            nodes=tuple(self.membership.snapshot()) if self.membership else (),
            failovers=s.failovers,
            replans=s.replans,
            migrations=s.migrations,
            replayed_tokens=s.replayed_tokens,
            last_recovery=s.last_recovery or None,
        )

    def take_recoveries(self) -> list[float]:
        """Recovery durations (seconds) measured since the last call (the metrics' histogram drains them)."""
        out = []
        while self.stats.recoveries:
            out.append(self.stats.recoveries.popleft())
        return out

    # --- data path -----------------------------------------------------------------------------------
    def deadline(self, i: int, positions: int) -> float:
        """Deadline of stage i's Forward of ``positions`` tokens: ``deadline_factor`` x its predicted time
        (profiled compute + hop per token, times the tokens, times the sequences in flight, whose forwards
        the node may run first), never below ``min_deadline``. A stage the
        plan did not price (a standby that took over) is priced from the profile."""
        f = self.failover
        predicted = 0.0
        st = self.stages[i]
        rows = self.plan.breakdown if self.plan is not None else []
        for row in rows:
            if row.node == st.name and row.start == st.placement.start and row.end == st.placement.end:
                predicted = row.compute + row.hop
        problem = self.replanner.problem if self.replanner is not None else self.problem
        if not predicted and problem is not None:
            index = {n.name: j for j, n in enumerate(problem.nodes)}
            if st.name in index:
                j = index[st.name]
                predicted = problem.compute(j, st.placement.start, st.placement.end)
                predicted += problem.hop(j, st.placement.start, st.placement.end)[0]
        queued = max(1, self.in_flight)  # a node runs one forward at a time: the others' may come first
        return max(f.min_deadline, f.deadline_factor * predicted * max(1, positions) * queued)

    def _forward(self, i: int, seq_id: str, x, start_pos: int, output: str, all_positions: bool = False):
        stage = self.stages[i]
        m = self.membership
        deadline = self.deadline(i, int(x.shape[0])) if m is not None else None
        for _ in range(3):
            try:
                return stage.forward(seq_id, x, start_pos, output, deadline, all_positions)
            except NodeError as exc:
                if m is None or exc.code in _REFUSED:
                    raise ClusterError(f"pipeline stage {i} ({stage.describe()}): {exc}") from exc
                if exc.code == "DEADLINE_EXCEEDED" and m.probe(stage.name) is not None:
                    assert deadline is not None
                    deadline *= 4  # the node answers its heartbeat: slow, not dead; try again, longer
                    log.warning(
                        "%s missed its deadline but answers; retrying with %.1f s", stage.name, deadline
                    )
                    continue
                m.mark_dead(stage.name, str(exc))
                raise StageFailed(i, stage, exc) from exc
        m.mark_dead(stage.name, f"missed three deadlines (last {deadline:.1f} s)")
        raise StageFailed(i, stage, ClusterError(f"node {stage.name} missed three deadlines"))

    def step(
        self,
        seq_id: str,
        x,
        start_pos: int,
        output: str,
        record: list[list] | None = None,
        all_positions: bool = False,
    ):
        """One pass through the stages (x: token ids); returns the last stage's output. ``record[i]``
        collects the inputs stage i accepted (for a warm replay)."""
        for i in range(len(self.stages)):
            last = i == len(self.stages) - 1
            y = self._forward(i, seq_id, x, start_pos, output if last else "logits", last and all_positions)
            if record is not None:
                record[i].append(x)
                standby = self.standbys[i] if self.mirror is not None and i < len(self.standbys) else None
                if standby is not None:
                    self.mirror.feed(standby, seq_id, x, start_pos, last)
            x = y
        return x

    def _recover(
        self, index: int | None, lost: str, why: str = "", stale: Sequence[PipelineStage] = ()
    ) -> str:
        """Replace the stage of the lost node: its warm standby if alive, else a re-plan over the survivors
        (cold loads). Raises ``ClusterUnavailable`` (and stays unavailable) when the model no longer fits.
        Returns how it recovered. The caller holds the gate alone; sequences are replayed afterwards
        (each catches up before its next forward: ``generate_tokens``).
        ``why``: the failure as seen by the data path, kept in the error of an unrecoverable loss.
        ``stale``: stages on live nodes whose shard is gone (a restarted node): never reused."""
        m = self.membership
        assert m is not None
        alive = m.alive()
        self.standbys = [None if sb is not None and sb.name not in alive else sb for sb in self.standbys]
        if index is not None and self.unavailable is None:
            sb = self.standbys[index]
            if sb is not None:
                self.stages[index], self.standbys[index] = sb, None
                if self.plan is not None:
                    self.plan.stages[index] = sb.placement
                    self.plan.standbys[index] = None
                self.stats.failovers += 1
                self.stats.last_recovery = f"node {lost} lost: stage {index} moved to standby {sb.name}"
                log.warning(self.stats.last_recovery)
                return "standby"
        if self.replanner is None or not self.failover.recover:
            raise ClusterError(f"node {lost} was lost and recovery is off")
        current = [st for st in [*self.stages, *self.standbys] if st is not None and st.name in alive]
        if index is not None:
            current = [st for st in current if st is not self.stages[index]]
        current = [st for st in current if not any(st is g for g in stale)]
        try:
            layout = self.replanner.rebuild(alive, current)
        except (InfeasiblePlan, ClusterError, NodeError, ValueError) as exc:
            self._lost = lost
            self.unavailable = (
                f"node {lost} was lost and the model does not fit on the remaining node(s) "
                f"{sorted(alive) or 'none'}: {exc}"
            )
            log.warning(self.unavailable)
            if why:
                raise ClusterUnavailable(f"{why}; {self.unavailable}") from exc
            raise ClusterUnavailable(self.unavailable) from exc
        was_unavailable = self.unavailable is not None
        self.stages, self.standbys, self.plan = layout.stages, layout.standbys, layout.plan
        self.unavailable = None
        self.stats.replans += 1
        if not was_unavailable:
            self.stats.failovers += 1
        self.stats.last_recovery = f"node {lost} lost: re-planned as {layout.plan.describe()}"
        log.warning(self.stats.last_recovery)
        return "replan"

    def _adapt(self) -> bool:
        """Between two tokens: re-plan away from nodes persistently slower than profiled, if that gains
        ``adapt_gain``; at most once per ``adapt_cooldown``. True when the pipeline changed."""
        f = self.failover
        now = time.monotonic()
        if not f.adapt or self.replanner is None or self.membership is None or self.plan is None:
            return False
        if self.replanner.cfg.planner.stages:
            return False  # a fixed plan is the operator's choice: only a failure changes it
        if now < self._adapt_after:
            return False
        ratios = slowdowns(self.stages, self.plan, f.slow_factor)
        if not ratios:
            return False
        self._adapt_after = now + f.adapt_cooldown / 4  # judged: not again at once, either way
        problem = rescaled(self.replanner.problem, ratios)
        alive = self.membership.alive()
        try:
            current = problem.evaluate(self.plan.stages)[0]
            old, self.replanner.problem = self.replanner.problem, problem
            chosen, _ = self.replanner.choose(alive)
        except (InfeasiblePlan, ValueError) as exc:
            log.info("slow-node adaptation: no plan: %s", exc)
            return False
        if chosen.latency > current * (1 - f.adapt_gain):
            self.replanner.problem = old  # not worth moving: judge again later from fresh timings
            return False
        loaded = [st for st in [*self.stages, *self.standbys] if st is not None and st.name in alive]
        layout = self.replanner.rebuild(alive, loaded)
        self.stages, self.standbys, self.plan = layout.stages, layout.standbys, layout.plan
        for st in self.stages:
            st.timings.clear()
        self._adapt_after = now + f.adapt_cooldown
        self.stats.replans += 1
        self.stats.migrations += 1
        slow = ", ".join(f"{n} {r:.1f}x slower" for n, r in ratios.items())
        self.stats.last_recovery = f"{slow} than profiled: re-planned as {layout.plan.describe()}"
        log.warning(self.stats.last_recovery)
        return True

    @property
    def concurrency(self) -> int:
        """Sequences the server may generate at once on this backend (api/worker.py), each in its own
        thread; one with speculative decoding, whose statistics and draft state are per pass."""
        return 1 if self.speculative.enabled else self.parallel

    def _adapt_due(self) -> bool:
        f = self.failover
        return bool(f.adapt and self.replanner is not None and self.membership is not None) and (
            time.monotonic() >= self._adapt_after
        )

    def _catch_up(self, seq_id: str, held: list[PipelineStage], record: list[list], pos: int, output: str):
        """Before a sequence's forward at ``pos`` (under the shared gate): if the layout changed since its KV
        caches were built (``held``: the stages that hold them), rebuild what is missing. Stages replaced
        by a copy of the same layers (a warm standby) replay their own recorded inputs, one prefill each;
        any other change (a re-plan) needs the whole history through the new chain. Returns the positions
        replayed here and whether the caller must replay the whole history itself."""
        stages = self.stages
        if not held or (len(held) == len(stages) and all(a is b for a, b in zip(held, stages, strict=True))):
            return 0, False
        same = len(held) == len(stages) and all(
            (a.placement.start, a.placement.end) == (b.placement.start, b.placement.end)
            for a, b in zip(held, stages, strict=True)
        )
        recorded = [sum(int(x.shape[0]) for x in inputs) for inputs in record]
        if not same or len(record) != len(stages) or any(n != pos for n in recorded):
            return 0, True  # (a stage's record is incomplete only after a failed whole replay)
        import torch

        replayed = 0
        for i, (old, new) in enumerate(zip(held, stages, strict=True)):
            if old is new:
                continue
            full = torch.cat(record[i])
            last = i == len(stages) - 1
            # a hot standby already holds most positions (the mirror fed it): replay only the rest
            start = min(self.mirror.take(new, seq_id), pos) if self.mirror is not None else 0
            if start < pos:
                self._forward(i, seq_id, full[start:], start, output if last else "logits")
            record[i] = [full]
            held[i] = new
            replayed += pos - start
        return replayed, False

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int]:
        import torch

        if not prompt:
            raise ValueError("the prompt is empty")
        if self.unavailable is not None:
            raise ClusterUnavailable(self.unavailable)
        seq_id = uuid.uuid4().hex
        top1 = params.greedy and params.logprobs is None  # logprobs need the whole logits row
        output = "top1" if top1 else "logits"
        history: list[int] = []  # every id fed so far: the prompt, then the generated tokens
        held: list[PipelineStage] = []  # the stages whose KV caches hold this sequence's positions

        record: list[list] = [[] for _ in self.stages]  # per stage: the inputs it accepted (warm replay)

        def forward(ids: list[int], pos: int, all_positions: bool = False):
            """``ids`` at positions ``pos...``: the token (top1) or logits of the last position, or with
            ``all_positions`` those of every position (a list of ids, or logits [T, vocab]). Positions from
            ``pos`` on that an earlier call fed (drafted tokens not accepted) are rolled back.

            Other sequences run their forwards at the same time (the shared gate). A stage failure takes
            the gate alone to recover -- once: a sequence that finds its failed stage already replaced
            only catches up -- and every sequence rebuilds its KV caches on the new chain before its next
            forward (``_catch_up``), so a layout never changes under a forward in flight."""
            t0, replayed = time.perf_counter(), 0
            x = torch.tensor(ids, dtype=torch.int32)
            if pos and self._adapt_due():
                with self._gate:  # migrated away from a slow node: the sequences catch up on the new chain
                    self._adapt()
            for _ in range(len(self.nodes.names()) + 2 if self.nodes else 1):
                trim_record(record, pos)  # a replay must never see rejected or half-stepped positions
                with self._gate.shared():
                    try:
                        n, whole = self._catch_up(seq_id, held, record, pos, output)
                        replayed += n
                        if whole:  # the whole history through the new chain as one batched prefill
                            record[:] = [[] for _ in self.stages]
                            full = torch.tensor(history[:pos] + list(ids), dtype=torch.int32)
                            out = self.step(seq_id, full, 0, output, record, all_positions)
                            replayed += pos + len(ids)
                        else:
                            out = self.step(seq_id, x, pos, output, record, all_positions)
                        held[:] = self.stages
                        break
                    except StageFailed as exc:
                        if self.membership is None:
                            raise
                        failed = exc
                with self._gate:  # one recovery: the first sequence to get here replaces the stage
                    index = next((i for i, st in enumerate(self.stages) if st is failed.stage), None)
                    if index is not None:  # else another sequence recovered it already
                        self._recover(index, failed.stage.name, str(failed))
                if not held:  # nothing cached yet: the prompt simply goes through the new chain
                    record[:] = [[] for _ in self.stages]
            else:
                raise ClusterError("the pipeline kept failing while recovering; giving up")
            if replayed:
                self.stats.replayed_tokens += replayed
                self.stats.recoveries.append(time.perf_counter() - t0)
            del history[pos:]
            history.extend(ids)
            if all_positions:  # a replay returns every replayed position: keep those of ``ids``
                out = out[-len(ids) :]
                return out[:, 0].long().tolist() if top1 else out
            return int(out[0]) if top1 else out  # top1: the last node picked the token

        with self._counting:
            self.in_flight += 1
        try:
            if self.speculative.enabled and params.logprobs is None:  # logprobs: plain decoding
                seq = PipelineSequence(forward, top1)
                drafter, k = NgramDrafter(), self.speculative.draft_max
                yield from speculative_tokens(
                    seq, drafter, prompt, params, k, self.info.n_ctx, self.spec_stats
                )
            else:
                yield from decode_tokens(forward, prompt, params, self.info.n_ctx)
        finally:
            with self._counting:
                self.in_flight -= 1
            if self.mirror is not None:
                self.mirror.drop(seq_id)  # stops mirroring it, drops it on the standbys that hold it
            spare = [st for st in held if any(st is sb for sb in self.standbys)]  # a primary again later
            for stage in [*self.stages, *spare]:
                if self.membership is not None and not self.membership.is_up(stage.name):
                    continue
                try:
                    stage.drop(seq_id)
                except Exception as exc:  # noqa: BLE001 - a dead node must not mask the real error
                    log.warning("dropping sequence on %s failed: %s", stage.name, exc)

    def close(self) -> None:
        self._closed.set()
        self._heal.set()
        if self.membership is not None:
            self.membership.close()
        if self._healer is not None:
            self._healer.join(timeout=10)
        if self.mirror is not None:
            self.mirror.close()
        for stage in [*self.stages, *self.standbys]:
            if stage is None:
                continue
            try:
                stage.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("unloading from %s failed: %s", stage.name, exc)
        if self.nodes is not None:
            self.nodes.close()
        self.vocab.close()
