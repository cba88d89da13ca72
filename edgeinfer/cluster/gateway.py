"""The gateway: a ``Backend`` that runs one model as a pipeline of shards on remote nodes (and optionally on
this device), so the OpenAI server serves a cluster exactly like a single model.

``load_cluster(path)`` reads the cluster YAML, profiles every node and link, plans (edgeinfer.planner), loads
the shards and returns a ``PipelineBackend``. Tokenization and sampling happen here; the gateway calls the
stages in turn (star topology), each RPC with a timeout, so a failing node surfaces as a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.config import ClusterConfig, load_config
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.profile import LOCAL, ClusterProfile, build_problem, profile_cluster
from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.sampling import Sampler
from edgeinfer.engine.vocab import Vocab, VocabMixin
from edgeinfer.cluster.planner import Plan, Problem, Stage, plan

log = logging.getLogger("edgeinfer.cluster")


class ClusterError(RuntimeError):
    pass


TIMINGS_KEPT = 1024


class RemoteStage:
    def __init__(self, client: NodeClient, shard_id: str, stage: Stage, wire_dtype: str):
        self.client, self.shard_id, self.stage, self.wire_dtype = client, shard_id, stage, wire_dtype
        self.name = client.name
        # recent forwards: (positions, seconds of the whole RPC, seconds the node computed)
        self.timings: deque[tuple[int, float, float]] = deque(maxlen=TIMINGS_KEPT)

    def forward(self, seq_id: str, x, start_pos: int, output: str):
        t0 = time.perf_counter()
        r = self.client.forward(self.shard_id, seq_id, x, start_pos, output, self.wire_dtype)
        self.timings.append((int(x.shape[0]), time.perf_counter() - t0, r.compute_seconds))
        return r.output

    def drop(self, seq_id: str) -> None:
        self.client.drop(seq_id, self.shard_id)

    def close(self) -> None:
        self.client.unload(self.shard_id)


class LocalStage:
    """Layers run in this process (device<->edge: the requesting device holds the first layers)."""

    def __init__(self, host: ShardHost, shard_id: str, stage: Stage):
        self.host, self.shard_id, self.stage, self.name = host, shard_id, stage, LOCAL
        self.timings: deque[tuple[int, float, float]] = deque(maxlen=TIMINGS_KEPT)

    def forward(self, seq_id: str, x, start_pos: int, output: str):
        t0 = time.perf_counter()
        r = self.host.forward(self.shard_id, seq_id, x, start_pos, output)
        self.timings.append((int(x.shape[0]), time.perf_counter() - t0, r.compute_seconds))
        return r.output

    def drop(self, seq_id: str) -> None:
        self.host.drop(self.shard_id, seq_id)

    def close(self) -> None:
        self.host.unload(self.shard_id)


class PipelineBackend(VocabMixin):
    def __init__(
        self,
        model_path: str | Path,
        stages: list,
        name: str | None = None,
        n_ctx: int = 4096,
        plan: Plan | None = None,
        problem: Problem | None = None,
    ):
        if not stages:
            raise ClusterError("a pipeline needs at least one stage")
        path = Path(model_path)
        self.vocab = Vocab(path)
        meta = self.vocab.metadata
        arch = meta.get("general.architecture", "unknown")
        train_ctx = int(meta.get(f"{arch}.context_length", n_ctx))
        self.stages = stages
        self.plan = plan
        self.problem = problem
        self._lock = threading.Lock()  # one sequence at a time through the pipeline
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

    def step(self, seq_id: str, x, start_pos: int, output: str):
        """One pass through every stage (x: token ids); returns the last stage's output."""
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            try:
                x = stage.forward(seq_id, x, start_pos, output if last else "logits")
            except NodeError as exc:
                raise ClusterError(
                    f"pipeline stage {i} ({stage.name}, layers {stage.stage.start}-"
                    f"{stage.stage.end - 1}): {exc}"
                ) from exc
        return x

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int]:
        import torch

        if not prompt:
            raise ValueError("the prompt is empty")
        seq_id = uuid.uuid4().hex
        sampler = Sampler(params)
        output = "top1" if params.greedy else "logits"
        x = torch.tensor(list(prompt), dtype=torch.int32)
        pos = 0
        with self._lock:
            try:
                while True:
                    out = self.step(seq_id, x, pos, output)
                    pos += x.shape[0]
                    token = int(out[0]) if params.greedy else sampler(out)
                    yield token
                    x = torch.tensor([token], dtype=torch.int32)
            finally:
                for stage in self.stages:
                    try:
                        stage.drop(seq_id)
                    except Exception as exc:  # noqa: BLE001 - a dead node must not mask the real error
                        log.warning("dropping sequence on %s failed: %s", stage.name, exc)

    def close(self) -> None:
        for stage in self.stages:
            try:
                stage.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("unloading from %s failed: %s", stage.name, exc)
        for stage in self.stages:
            if isinstance(stage, RemoteStage):
                stage.client.close()
        self.vocab.close()


def cluster_model_name(path: str | Path) -> str:
    from edgeinfer.models.registry import served_name

    cfg = load_config(path)
    return cfg.name or served_name(cfg.model)


def plan_cluster(
    cfg: ClusterConfig, strategy: str | None = None, objective: str | None = None, progress=None
) -> tuple[Plan, Problem, ClusterProfile]:
    """Profile the cluster and plan (or check the fixed ``planner.stages`` of the YAML)."""
    profile = profile_cluster(cfg, progress)
    try:
        wire_bytes = 4 if cfg.wire_dtype == "f32" else 2
        problem = build_problem(profile, wire_bytes=wire_bytes)
        if cfg.stages:
            stages = [Stage(s.node, s.start, s.end) for s in cfg.stages]
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
            chosen = Plan(stages, latency, bottleneck, cfg.objective, "fixed", breakdown=rows)
        else:
            chosen = plan(problem, objective or cfg.objective, strategy or cfg.strategy)
    except BaseException:
        profile.close()
        raise
    return chosen, problem, profile


def load_cluster(
    path: str | Path, strategy: str | None = None, objective: str | None = None, progress=None
) -> PipelineBackend:
    """Read the cluster YAML, profile, plan, load the shards; returns the gateway backend."""
    from edgeinfer.models.registry import resolve

    cfg = load_config(path)
    _, model_path = resolve(cfg.model, progress=False)
    chosen, problem, profile = plan_cluster(cfg, strategy, objective, progress)
    log.info("plan: %s, predicted %.1f tok/s", chosen.describe(), chosen.tokens_per_second)

    def load_one(st: Stage):
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
    used = {st.node for st in chosen.stages}
    for name, client in profile.clients.items():
        if name not in used:
            client.close()
    return PipelineBackend(
        model_path, stages, name=cluster_model_name(path), n_ctx=cfg.ctx_size, plan=chosen, problem=problem
    )
