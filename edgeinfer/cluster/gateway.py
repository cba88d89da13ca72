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
from pathlib import Path

from edgeinfer.cluster.client import NodeClient, NodeError, NodePool
from edgeinfer.cluster.config import LOCAL
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.planner import Plan, Problem, Stage
from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.decode import decode_tokens
from edgeinfer.engine.vocab import Vocab, VocabMixin

log = logging.getLogger("edgeinfer.cluster")


class ClusterError(RuntimeError):
    pass


TIMINGS_KEPT = 1024


class PipelineStage(ABC):
    """One loaded shard of the pipeline: ``placement`` says which node holds which layers."""

    def __init__(self, name: str, shard_id: str, placement: Stage):
        self.name, self.shard_id, self.placement = name, shard_id, placement
        # recent forwards: (positions, seconds of the whole call, seconds the node computed)
        self.timings: deque[tuple[int, float, float]] = deque(maxlen=TIMINGS_KEPT)

    def describe(self) -> str:
        return f"{self.name}, layers {self.placement.start}-{self.placement.end - 1}"

    @abstractmethod
    def forward(self, seq_id: str, x, start_pos: int, output: str): ...

    @abstractmethod
    def drop(self, seq_id: str) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Unload the shard (the node connection stays open: the ``NodePool`` owns it)."""


class RemoteStage(PipelineStage):
    def __init__(self, client: NodeClient, shard_id: str, placement: Stage, wire_dtype: str):
        super().__init__(client.name, shard_id, placement)
        self.client, self.wire_dtype = client, wire_dtype

    def forward(self, seq_id: str, x, start_pos: int, output: str):
        t0 = time.perf_counter()
        r = self.client.forward(self.shard_id, seq_id, x, start_pos, output, self.wire_dtype)
        self.timings.append((int(x.shape[0]), time.perf_counter() - t0, r.compute_seconds))
        return r.output

    def drop(self, seq_id: str) -> None:
        self.client.drop(seq_id, self.shard_id)

    def close(self) -> None:
        self.client.unload(self.shard_id)


class LocalStage(PipelineStage):
    """Layers run in this process (device<->edge: the requesting device holds the first layers)."""

    def __init__(self, host: ShardHost, shard_id: str, placement: Stage):
        super().__init__(LOCAL, shard_id, placement)
        self.host = host

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
        stages: list[PipelineStage],
        name: str | None = None,
        n_ctx: int = 4096,
        plan: Plan | None = None,
        problem: Problem | None = None,
        nodes: NodePool | None = None,
    ):
        """``nodes``: the connections the remote stages use; the backend closes them on ``close``."""
        if not stages:
            raise ClusterError("a pipeline needs at least one stage")
        path = Path(model_path)
        self.vocab = Vocab(path)
        meta = self.vocab.metadata
        arch = meta.get("general.architecture", "unknown")
        train_ctx = int(meta.get(f"{arch}.context_length", n_ctx))
        self.stages = stages
        self.nodes = nodes
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
                raise ClusterError(f"pipeline stage {i} ({stage.describe()}): {exc}") from exc
        return x

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int]:
        import torch

        if not prompt:
            raise ValueError("the prompt is empty")
        seq_id = uuid.uuid4().hex
        output = "top1" if params.greedy else "logits"

        def forward(ids: list[int], pos: int):
            out = self.step(seq_id, torch.tensor(ids, dtype=torch.int32), pos, output)
            return int(out[0]) if params.greedy else out  # top1: the last node picked the token

        with self._lock:
            try:
                yield from decode_tokens(forward, prompt, params, self.info.n_ctx)
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
        if self.nodes is not None:
            self.nodes.close()
        self.vocab.close()
