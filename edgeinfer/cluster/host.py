"""What a node does, without the transport: hosts shards, runs forwards with per-sequence KV caches, reports
its capabilities and measures its per-layer decode time. ``node.py`` serves it over gRPC; the gateway also
uses it in-process for the device<->edge strategy (first layers on the requesting device)."""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field

OUTPUTS = ("logits", "top1")


class HostError(RuntimeError):
    """A request the node cannot serve; ``kind`` maps to a gRPC status code."""

    def __init__(self, message: str, kind: str = "invalid"):  # invalid | not_found | memory | internal
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LoadResult:
    shard_id: str
    weight_bytes: int
    load_seconds: float
    n_layers: int  # of the whole model
    hidden_size: int
    vocab_size: int


@dataclass(frozen=True)
class ForwardResult:
    output: object  # torch tensor: hidden [T, hidden], logits [vocab] or top1 [id, logit]
    compute_seconds: float
    seq_len: int  # positions cached after this call


@dataclass(frozen=True)
class ShardStatus:
    shard_id: str
    model: str
    start_layer: int
    end_layer: int  # exclusive
    weight_bytes: int
    sequences: int


@dataclass(frozen=True)
class LayerProfile:
    """Measured decode costs of one model on one node (``ShardHost.profile``)."""

    layer_seconds: float  # one middle layer, one token
    stage_seconds: float  # fixed cost of one shard forward besides its layers
    head_seconds: float  # extra time of the output head
    layer_bytes: int  # weight bytes of the largest layer
    layer_sizes: tuple[int, ...]  # weight bytes of every layer
    head_bytes: int
    embed_bytes: int
    n_layers: int
    hidden_size: int
    vocab_size: int


@dataclass(frozen=True)
class Capabilities:
    node_id: str
    free_ram: int  # bytes the node may still use for weights (free RAM, capped by the memory limit)
    total_ram: int
    cores: int
    load1: float
    active_requests: int
    memory_limit: int  # 0 = none
    shards: tuple[ShardStatus, ...] = ()
    version: str = ""
    profile: LayerProfile | None = None  # set when asked to measure a model


@dataclass(frozen=True)
class PingResult:
    """One Ping round trip: the failover heartbeat and the link probe's sample."""

    seconds: float  # round trip measured by the caller (0 on the node's side)
    load1: float  # 1-minute load average
    free_bytes: int  # bytes the node may still use: its ceiling minus weights minus KV caches
    active_sequences: int  # sequences with a KV cache on the node (over all shards)
    uptime_s: float  # seconds since the node started


MAX_PING_REPLY = 1 << 20  # bytes a Ping may ask back


@dataclass
class _Loaded:
    shard: object  # edgeinfer.engine.shard.Shard
    model: str
    start: int
    end: int
    weight_bytes: int
    seqs: set[str] = field(default_factory=set)


class ShardHost:
    def __init__(
        self,
        node_id: str | None = None,
        threads: int | None = None,
        memory_limit: int | None = None,
        max_seq_len: int | None = None,
    ):
        self.node_id = node_id or os.uname().nodename
        self.threads = threads
        self.memory_limit = memory_limit
        self.max_seq_len = max_seq_len
        self.shards: dict[str, _Loaded] = {}
        self.active = 0
        self._lock = threading.Lock()  # one forward at a time: shards share the node's cores
        self._profiles: dict[str, LayerProfile] = {}
        self._started = time.monotonic()

    # --- shards ------------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.shards.values())

    def kv_bytes(self) -> int:
        return sum(c.nbytes for s in list(self.shards.values()) for c in list(s.shard._caches.values()))

    def sequence_count(self) -> int:
        return sum(len(s.seqs) for s in list(self.shards.values()))

    def heartbeat(self, reply_bytes: int = 0) -> PingResult:
        """The node's load for a Ping; takes no lock (answers while a long forward runs)."""
        if not 0 <= reply_bytes <= MAX_PING_REPLY:
            raise HostError(
                f"node {self.node_id}: reply_bytes must lie in [0, {MAX_PING_REPLY}], got {reply_bytes}"
            )
        return PingResult(
            seconds=0.0,
            load1=os.getloadavg()[0],
            free_bytes=self.free_bytes(),
            active_sequences=self.sequence_count(),
            uptime_s=time.monotonic() - self._started,
        )

    def free_bytes(self) -> int:
        import psutil

        free = psutil.virtual_memory().available
        if self.memory_limit is not None:
            free = min(free, self.memory_limit - self.used_bytes())
        return max(0, int(free))

    def load(self, model: str, start: int, end: int, threads: int = 0, max_seq_len: int = 0) -> LoadResult:
        from edgeinfer.engine.shard import Shard, layer_count
        from edgeinfer.models.registry import ModelNotFound, resolve

        try:
            _, path = resolve(model, progress=False)
        except (ModelNotFound, ValueError) as exc:
            raise HostError(f"node {self.node_id}: {exc}", "not_found") from exc
        n = layer_count(path)
        if not 0 <= start < end <= n:
            raise HostError(f"node {self.node_id}: bad layer range [{start}, {end}) for a {n}-layer model")
        t0 = time.perf_counter()
        with self._lock:
            shard = Shard(
                path, start, end, threads=threads or self.threads, max_seq_len=max_seq_len or self.max_seq_len
            )
            weight = int(shard.weight_bytes)
            if self.memory_limit is not None and self.used_bytes() + weight > self.memory_limit:
                shard.close()
                raise HostError(
                    f"node {self.node_id}: layers [{start}, {end}) of {model} need {weight / 2**20:.0f} MiB, "
                    f"but only {(self.memory_limit - self.used_bytes()) / 2**20:.0f} MiB of the node's "
                    f"{self.memory_limit / 2**20:.0f} MiB memory limit is free",
                    "memory",
                )
            shard_id = uuid.uuid4().hex[:12]
            self.shards[shard_id] = _Loaded(shard, model, start, end, weight)
        return LoadResult(
            shard_id=shard_id,
            weight_bytes=weight,
            load_seconds=time.perf_counter() - t0,
            n_layers=n,
            hidden_size=int(shard.hidden_size),
            vocab_size=int(shard.vocab_size),
        )

    def _get(self, shard_id: str) -> _Loaded:
        try:
            return self.shards[shard_id]
        except KeyError:
            raise HostError(f"node {self.node_id}: no shard {shard_id!r} loaded", "not_found") from None

    def unload(self, shard_id: str) -> None:
        with self._lock:
            loaded = self._get(shard_id)
            del self.shards[shard_id]
            loaded.shard.close()

    def forward(self, shard_id: str, seq_id: str, x, start_pos: int, output: str = "logits") -> ForwardResult:
        """Run x through the shard after ``start_pos`` cached positions.

        On the last shard ``output`` selects full logits of the last position or 'top1' = [id, logit]."""
        import torch

        if output not in OUTPUTS:
            raise HostError(f"output must be one of {OUTPUTS}, got {output!r}")
        loaded = self._get(shard_id)
        shard = loaded.shard
        with self._lock:
            self.active += 1
            try:
                have = shard.seq_len(seq_id)
                if have > start_pos:
                    shard.truncate(seq_id, start_pos)
                elif have < start_pos:
                    raise HostError(
                        f"node {self.node_id}: sequence {seq_id!r} has {have} cached positions but the "
                        f"request continues at {start_pos} (node restarted or sequence dropped?)",
                        "invalid",
                    )
                if shard.is_first:
                    x = x.to(torch.long).reshape(-1)
                elif x.dim() != 2 or x.shape[1] != shard.hidden_size:
                    raise HostError(
                        f"node {self.node_id}: expected hidden [T, {shard.hidden_size}], got {tuple(x.shape)}"
                    )
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = shard.forward(seq_id, x)
                loaded.seqs.add(seq_id)
                seconds = time.perf_counter() - t0
                if shard.is_last and output == "top1":
                    logits = out.reshape(-1).float()
                    i = int(torch.argmax(logits))
                    out = torch.tensor([float(i), float(logits[i])], dtype=torch.float32)
                return ForwardResult(out, seconds, shard.seq_len(seq_id))
            finally:
                self.active -= 1

    def drop(self, shard_id: str | None, seq_id: str) -> None:
        with self._lock:
            targets = [self._get(shard_id)] if shard_id else list(self.shards.values())
            for loaded in targets:
                loaded.shard.drop(seq_id)
                loaded.seqs.discard(seq_id)

    def close(self) -> None:
        for shard_id in list(self.shards):
            self.unload(shard_id)

    # --- capabilities and profiling ----------------------------------------------------------------------
    def capabilities(self, model: str | None = None, measure: bool = False) -> Capabilities:
        import psutil

        from edgeinfer import __version__

        return Capabilities(
            node_id=self.node_id,
            free_ram=self.free_bytes(),
            total_ram=int(psutil.virtual_memory().total),
            cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
            load1=os.getloadavg()[0],
            active_requests=self.active,
            memory_limit=self.memory_limit or 0,
            shards=tuple(
                ShardStatus(k, v.model, v.start, v.end, v.weight_bytes, len(v.seqs))
                for k, v in self.shards.items()
            ),
            version=__version__,
            profile=self.profile(model) if model and measure else None,
        )

    def profile(self, model: str, steps: int = 12, context: int = 32) -> LayerProfile:
        """Measure, as median decode times after ``context`` cached positions: the time per middle layer and
        the fixed cost of one shard forward (from interleaved 1-layer and k-layer shards), the extra time of
        the output head (last-layer shard), and the weight bytes of a layer and of the head."""
        if model in self._profiles:
            return self._profiles[model]
        import torch

        from edgeinfer.engine.shard import Shard, layer_count, layer_weight_bytes
        from edgeinfer.models.registry import resolve

        _, path = resolve(model, progress=False)
        n = layer_count(path)
        seq_len = context + steps + 2

        def timed(shards: list) -> list[float]:
            """Median decode time of each shard, steps interleaved so that load drifts hit all alike."""
            times: list[list[float]] = [[] for _ in shards]
            with torch.inference_mode():
                for s in shards:
                    s.forward(
                        "p",
                        torch.zeros(context, dtype=torch.long)
                        if s.is_first
                        else torch.randn(context, s.hidden_size),
                    )
                for _ in range(steps):
                    for i, s in enumerate(shards):
                        x = torch.zeros(1, dtype=torch.long) if s.is_first else torch.randn(1, s.hidden_size)
                        t0 = time.perf_counter()
                        s.forward("p", x)
                        times[i].append(time.perf_counter() - t0)
            return [statistics.median(t) for t in times]

        with self._lock:
            a = max(1, n // 2 - 2) if n > 2 else 0
            k = max(1, min(4, n - 1 - a))
            shards = [Shard(path, a, a + 1, threads=self.threads, max_seq_len=seq_len)]
            if k > 1:
                shards.append(Shard(path, a, a + k, threads=self.threads, max_seq_len=seq_len))
            shards.append(Shard(path, n - 1, n, threads=self.threads, max_seq_len=seq_len))
            try:
                t = timed(shards)
                one, last = t[0], t[-1]
                per_layer = (t[1] - one) / (k - 1) if k > 1 else one
                per_layer = max(per_layer, one * 0.1)  # noise guard: a layer is never free
                # layers differ in size (a file mixes storage types; the gguf format keeps each type's size)
                sizes = layer_weight_bytes(path, shards[0].weight_format)
                layer_b, head_b = max(sizes), max(0, int(shards[-1].weight_bytes) - sizes[-1])
                hidden, vocab = int(shards[0].hidden_size), int(shards[0].vocab_size)
            finally:
                for s in shards:
                    s.close()
        prof = LayerProfile(
            layer_seconds=per_layer,
            stage_seconds=max(0.0, one - per_layer),
            head_seconds=max(0.0, last - one),
            layer_bytes=int(layer_b),
            layer_sizes=tuple(int(v) for v in sizes),
            head_bytes=head_b,
            embed_bytes=0,  # the shard engine reads embedding rows from the memory-mapped file
            n_layers=n,
            hidden_size=hidden,
            vocab_size=vocab,
        )
        self._profiles[model] = prof
        return prof
