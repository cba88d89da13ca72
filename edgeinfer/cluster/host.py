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
from pathlib import Path

OUTPUTS = ("logits", "top1")
DEFAULT_MAX_SEQUENCES = 64  # KV sequences open at once on a node (over all shards)
DEFAULT_IDLE_TTL = 300.0  # seconds after which an unused sequence is dropped
DEFAULT_CEILING_SHARE = 0.9  # default ceiling: this share of the memory available when the node starts


def _size(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if abs(n) >= 10 * 2**20 else f"{n / 2**10:.0f} KiB"


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
    output: object  # torch tensor: hidden [T, hidden], logits [vocab] or top1 [id, logit] (per position:
    # [T, vocab] / [T, 2] when asked for all positions)
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
    free_ram: int  # bytes the node may still use: its ceiling minus weights and KV caches (<= free RAM)
    total_ram: int
    cores: int
    load1: float
    active_requests: int
    memory_limit: int  # the node's byte ceiling over weights and KV caches
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
class _Call:
    """One Forward waiting for the node (``ShardHost.forward``): run by its own thread, or by another
    one's forward that took it into its batch."""

    shard_id: str
    seq_id: str
    x: object
    start_pos: int
    output: str
    all_positions: bool
    result: ForwardResult | None = None
    error: Exception | None = None
    done: bool = False


MAX_BATCH = 16  # decode rows of different sequences run in one forward


@dataclass
class _Loaded:
    shard: object  # edgeinfer.engine.shard.Shard
    model: str
    start: int
    end: int
    weight_bytes: int
    seqs: set[str] = field(default_factory=set)

    @property
    def kv_bytes_per_position(self) -> int:
        cfg = self.shard.cfg
        return len(self.shard.blocks) * 2 * cfg.n_kv_heads * cfg.head_dim * 2  # keys + values, fp16

    def kv_bytes(self) -> int:
        return sum(c.nbytes for c in list(self.shard._caches.values()))

    def kv_capacity(self, seq_id: str) -> int:
        """Positions the sequence's cache holds room for (it grows by doubling)."""
        cache = self.shard._caches.get(seq_id)
        return 0 if cache is None else cache.nbytes // max(1, self.kv_bytes_per_position)


class ShardHost:
    """A node's shards and KV caches under one byte ceiling (``memory_limit``: weights + KV caches; default:
    90 % of the memory available at start). The scratch of the running forward is checked against the RAM
    available."""

    def __init__(
        self,
        node_id: str | None = None,
        threads: int | None = None,
        memory_limit: int | None = None,
        max_seq_len: int | None = None,
        *,
        models_dir: str | Path | None = None,
        any_path: bool = True,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        idle_ttl: float = DEFAULT_IDLE_TTL,
    ):
        """``any_path``: loads may name any GGUF file (the gateway's own in-process host); a network node
        passes False and allows only bundled models and files under ``models_dir``."""
        import psutil

        self.node_id = node_id or os.uname().nodename
        self.threads = threads
        self.memory_limit = (
            int(memory_limit)
            if memory_limit is not None
            else int(psutil.virtual_memory().available * DEFAULT_CEILING_SHARE)
        )
        self.max_seq_len = max_seq_len
        self.models_dir = Path(models_dir).expanduser().resolve() if models_dir else None
        self.any_path = any_path
        self.max_sequences = max_sequences
        self.idle_ttl = idle_ttl
        self.shards: dict[str, _Loaded] = {}
        self.active = 0
        self._lock = threading.Lock()  # one forward at a time: shards share the node's cores
        self._queue: list[_Call] = []  # forwards waiting for the lock: decode rows are batched (``_run``)
        self._queue_lock = threading.Lock()
        self.batched_rows = 0  # decode rows that ran in one forward with other sequences' rows
        self._profiles: dict[str, LayerProfile] = {}
        self._started = time.monotonic()
        self._last_used: dict[str, float] = {}  # seq_id -> monotonic time of its last forward

    # --- shards ------------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.shards.values())

    def kv_bytes(self) -> int:
        return sum(s.kv_bytes() for s in list(self.shards.values()))

    def sequence_count(self) -> int:
        return len(self._last_used)

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
        """Bytes the node may still use: its ceiling minus weights minus KV caches (capped by free RAM)."""
        import psutil

        free = min(psutil.virtual_memory().available, self.memory_limit - self.used_bytes() - self.kv_bytes())
        return max(0, int(free))

    def _refuse_memory(self, what: str, need: int) -> None:
        free = self.memory_limit - self.used_bytes() - self.kv_bytes()
        if need > free:
            raise HostError(
                f"node {self.node_id}: {what} need {_size(need)}, but only "
                f"{_size(max(0, free))} of the node's {_size(self.memory_limit)} "
                "memory limit is free",
                "memory",
            )

    def _refuse_scratch(self, need: int) -> None:
        """The scratch of one forward lives only while it runs (forwards run one at a time): checked against
        the RAM available, beside the ceiling that bounds what the node keeps."""
        import psutil

        available = psutil.virtual_memory().available * DEFAULT_CEILING_SHARE
        if need > available:
            raise HostError(
                f"node {self.node_id}: this forward needs {_size(need)} of scratch, but only "
                f"{_size(available)} of RAM is available: send fewer positions per call",
                "memory",
            )

    def model_path(self, model: str) -> Path:
        """The file of a model a caller names: a bundled model, or (``any_path``) any GGUF file, or a file
        under ``models_dir``. One error for "absent" and "not allowed", so that the node is no oracle of
        which files exist."""
        from edgeinfer.models.registry import BUNDLED, ModelNotFound, lookup, resolve

        if not isinstance(model, str) or not model or len(model) > 4096 or "\0" in model:
            raise HostError(f"node {self.node_id}: bad model name", "invalid")
        if self.any_path or lookup(model) is not None:
            try:
                return resolve(model, progress=False)[1]
            except (ModelNotFound, ValueError, OSError) as exc:
                raise HostError(f"node {self.node_id}: {exc}", "not_found") from exc
        where = "under the node's --models-dir" if self.models_dir else "(this node has no --models-dir)"
        refused = HostError(
            f"node {self.node_id}: model {model!r} is neither a bundled model ({', '.join(sorted(BUNDLED))}) "
            f"nor a GGUF file {where}",
            "not_found",
        )
        if self.models_dir is None:
            raise refused
        try:
            path = (self.models_dir / model).resolve()  # an absolute name replaces the directory
            inside = path.is_relative_to(self.models_dir) and path.is_file()
        except (OSError, ValueError):
            inside = False
        if not inside:
            raise refused
        return path

    def _weight_estimate(self, path: Path, start: int, end: int) -> int:
        """Weight bytes of layers [start, end) (+ the output head on the last shard), from metadata only."""
        from edgeinfer.engine.shard import default_weight_format, layer_weight_bytes
        from edgeinfer.models.common import loaded_bytes
        from edgeinfer.models.gguf_file import GGUFFile

        fmt = default_weight_format()
        sizes = layer_weight_bytes(path, fmt)
        total = sum(sizes[start:end])
        if end == len(sizes):
            f = GGUFFile(path)
            try:
                head = "output.weight" if f.has("output.weight") else "token_embd.weight"
                total += loaded_bytes(f, head, fmt)
            finally:
                f.close()
        return total

    def load(self, model: str, start: int, end: int, threads: int = 0, max_seq_len: int = 0) -> LoadResult:
        from edgeinfer.engine.shard import Shard, layer_count

        if threads < 0 or max_seq_len < 0:
            raise HostError(f"node {self.node_id}: threads and max_seq_len must be >= 0 (0 = default)")
        if threads > (os.cpu_count() or 1) * 4:
            raise HostError(f"node {self.node_id}: threads={threads} exceeds 4x this node's cores")
        path = self.model_path(model)
        try:
            n = layer_count(path)
        except Exception as exc:  # noqa: BLE001 - a file under models_dir that is no GGUF model
            raise HostError(f"node {self.node_id}: {model!r} is not a readable GGUF model") from exc
        if not 0 <= start < end <= n:
            raise HostError(f"node {self.node_id}: bad layer range [{start}, {end}) for a {n}-layer model")
        t0 = time.perf_counter()
        with self._lock:
            self._refuse_memory(
                f"layers [{start}, {end}) of {model}", self._weight_estimate(path, start, end)
            )
            shard = Shard(
                path, start, end, threads=threads or self.threads, max_seq_len=max_seq_len or self.max_seq_len
            )
            weight = int(shard.weight_bytes)
            try:
                self._refuse_memory(f"layers [{start}, {end}) of {model}", weight)
            except HostError:
                shard.close()
                raise
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
        except (KeyError, TypeError):
            raise HostError(f"node {self.node_id}: no shard {shard_id!r} loaded", "not_found") from None

    def unload(self, shard_id: str) -> None:
        with self._lock:
            loaded = self._get(shard_id)
            del self.shards[shard_id]
            loaded.shard.close()
            self._forget_orphans()

    def _forget_orphans(self) -> None:
        """Sequences no shard holds any more leave the node's count (caller holds the lock)."""
        held = {q for s in self.shards.values() for q in s.seqs}
        for seq_id in [q for q in self._last_used if q not in held]:
            del self._last_used[seq_id]

    def _scratch_bytes(self, loaded: _Loaded, t: int, length: int, all_positions: bool = False) -> int:
        """Memory a forward of ``t`` new positions over ``length`` cached ones needs besides the KV cache:
        attention scores (with their masked and softmax copies), keys widened to f32, the MLP activations."""
        cfg = loaded.shard.cfg
        scores = 3 * cfg.n_heads * t * length
        keys = 2 * cfg.n_kv_heads * length * cfg.head_dim
        acts = t * (8 * cfg.hidden + 3 * cfg.ffn)
        head = cfg.vocab * (t if all_positions else 1) if loaded.shard.is_last else 0
        return 4 * (scores + keys + acts + head)

    def forward(
        self,
        shard_id: str,
        seq_id: str,
        x,
        start_pos: int,
        output: str = "logits",
        all_positions: bool = False,
    ) -> ForwardResult:
        """Run x through the shard after ``start_pos`` cached positions; a longer cache is truncated to
        ``start_pos`` first (the rollback of drafted tokens the gateway rejected).

        On the last shard ``output`` selects full logits of the last position or 'top1' = [id, logit];
        ``all_positions``: the same for every position, [T, vocab] or [T, 2] (speculative verification).

        Forwards of other sequences that arrive while one runs wait; the next to run takes the waiting
        decode rows of its shard along (one ``Shard.forward_batch``: several sequences in flight through a
        pipeline cost about one read of the weights per step)."""
        if output not in OUTPUTS:
            raise HostError(f"output must be one of {OUTPUTS}, got {output!r}")
        if not seq_id or len(seq_id) > 128:
            raise HostError(f"node {self.node_id}: seq_id must have 1 to 128 characters")
        if start_pos < 0:
            raise HostError(f"node {self.node_id}: start_pos must be >= 0, got {start_pos}")
        loaded = self._get(shard_id)
        shard = loaded.shard
        if shard.is_first:
            if x.dim() != 1 or x.is_floating_point():
                raise HostError(
                    f"node {self.node_id}: the first shard takes 1-D i32 token ids, got "
                    f"{tuple(x.shape)} {x.dtype}"
                )
        elif x.dim() != 2 or x.shape[1] != shard.hidden_size or not x.is_floating_point():
            raise HostError(
                f"node {self.node_id}: expected hidden [T, {shard.hidden_size}], "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        t = int(x.shape[0])
        if t == 0:
            raise HostError(f"node {self.node_id}: empty input")
        if start_pos + t > shard.max_seq_len:
            raise HostError(
                f"node {self.node_id}: positions [{start_pos}, {start_pos + t}) exceed this shard's "
                f"max_seq_len {shard.max_seq_len}"
            )
        call = _Call(shard_id, seq_id, x, start_pos, output, all_positions)
        with self._queue_lock:
            self._queue.append(call)
        with self._lock:
            if not call.done:  # else a forward that ran before this one took it into its batch
                self._run(self._take_batch(call))
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _take_batch(self, call: _Call) -> list[_Call]:
        """``call`` and the queued decode rows of other sequences on the same shard (caller holds the lock):
        one forward for all of them, the weights read once (``Shard.forward_batch``). Prompts, drafts and
        all-positions calls run alone."""
        with self._queue_lock:
            batch = [call]
            if self._batchable(call):
                seqs = {call.seq_id}
                for c in self._queue:
                    if len(batch) >= MAX_BATCH:
                        break
                    same = c is not call and c.shard_id == call.shard_id and c.seq_id not in seqs
                    if same and self._batchable(c):
                        seqs.add(c.seq_id)
                        batch.append(c)
            for c in batch:
                self._queue.remove(c)
        return batch

    @staticmethod
    def _batchable(c: _Call) -> bool:
        return int(c.x.shape[0]) == 1 and not c.all_positions

    def _prepare(self, loaded: _Loaded, c: _Call):
        """Checks and rollback of one call before it runs (caller holds the lock); its input as the shard
        takes it."""
        import torch

        shard, seq_id, start_pos, t = loaded.shard, c.seq_id, c.start_pos, int(c.x.shape[0])
        have = shard.seq_len(seq_id)
        if have < start_pos:
            raise HostError(
                f"node {self.node_id}: sequence {seq_id!r} has {have} cached positions but the "
                f"request continues at {start_pos} (node restarted or sequence dropped?)",
                "invalid",
            )
        if seq_id not in self._last_used and len(self._last_used) >= self.max_sequences:
            raise HostError(
                f"node {self.node_id}: {len(self._last_used)} sequences are open, the most this node "
                f"keeps (idle ones are dropped after {self.idle_ttl:.0f} s)",
                "memory",
            )
        needed = start_pos + t
        cap = loaded.kv_capacity(seq_id)
        grow = 0
        if needed > cap:  # KVCache doubles; old and new storage coexist while copying
            grow = min(shard.max_seq_len, max(needed, 2 * cap, 64)) * loaded.kv_bytes_per_position
        self._refuse_memory(f"the KV cache of sequence {seq_id!r} ({needed} positions)", grow)
        self._refuse_scratch(self._scratch_bytes(loaded, t, needed, c.all_positions))
        if have > start_pos:
            shard.truncate(seq_id, start_pos)
        return c.x.to(torch.long).reshape(-1) if shard.is_first else c.x

    def _run(self, batch: list[_Call]) -> None:
        """Run the calls of one shard in one forward (caller holds the lock); each gets its result or error.
        A row's arithmetic in a batch is the one it gets alone (``Shard.forward_batch``)."""
        import torch

        self.active += len(batch)
        try:
            self._evict_idle_locked()
            try:
                loaded = self._get(batch[0].shard_id)  # it may have been unloaded while the calls waited
            except HostError as exc:
                for c in batch:
                    c.error = exc
                return
            shard = loaded.shard
            ready, inputs = [], []
            for c in batch:
                try:
                    inputs.append(self._prepare(loaded, c))
                    ready.append(c)
                except HostError as exc:
                    c.error = exc
            if not ready:
                return
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    if len(ready) == 1:
                        c = ready[0]
                        outs = [
                            shard.forward(c.seq_id, inputs[0], all_logits=c.all_positions and shard.is_last)
                        ]
                    else:
                        outs = shard.forward_batch(
                            [(c.seq_id, x) for c, x in zip(ready, inputs, strict=True)]
                        )
                        self.batched_rows += len(ready)
            except Exception as exc:  # noqa: BLE001 - each caller raises it (the node maps it to a status)
                for c in ready:
                    c.error = exc
                return
            seconds = time.perf_counter() - t0
            for c, out in zip(ready, outs, strict=True):
                loaded.seqs.add(c.seq_id)
                self._last_used[c.seq_id] = time.monotonic()
                t = int(c.x.shape[0])
                if shard.is_last and c.output == "top1":
                    logits = out.float().reshape(t if c.all_positions else 1, -1)
                    ids = torch.argmax(logits, dim=-1)
                    out = torch.stack([ids.float(), logits.gather(1, ids[:, None])[:, 0]], dim=-1)
                    out = out if c.all_positions else out[0]
                c.result = ForwardResult(out, seconds, shard.seq_len(c.seq_id))
        finally:
            self.active -= len(batch)
            for c in batch:
                c.done = True

    def drop(self, shard_id: str | None, seq_id: str) -> None:
        with self._lock:
            targets = [self._get(shard_id)] if shard_id else list(self.shards.values())
            for loaded in targets:
                loaded.shard.drop(seq_id)
                loaded.seqs.discard(seq_id)
            self._forget_orphans()

    def _evict_idle_locked(self) -> list[str]:
        if not self._last_used:
            return []
        cutoff = time.monotonic() - self.idle_ttl
        idle = [q for q, at in self._last_used.items() if at < cutoff]
        for seq_id in idle:
            for loaded in self.shards.values():
                loaded.shard.drop(seq_id)
                loaded.seqs.discard(seq_id)
            del self._last_used[seq_id]
        return idle

    def evict_idle(self) -> list[str]:
        """Drop every sequence unused for ``idle_ttl`` seconds (an owner that vanished); returns their ids."""
        with self._lock:
            return self._evict_idle_locked()

    def close(self) -> None:
        for shard_id in list(self.shards):
            self.unload(shard_id)

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
        import torch

        from edgeinfer.engine.shard import Shard, layer_count, layer_weight_bytes

        path = self.model_path(model)
        if str(path) in self._profiles:  # by file: other spellings of a name measure nothing again
            return self._profiles[str(path)]
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
            need = sum(self._weight_estimate(path, s, e) for s, e in ((a, a + 1), (a, a + k), (n - 1, n)))
            # trial shards live only while measuring (once per file): checked against the RAM available,
            # not the ceiling, which bounds what the node keeps (a memory-tight node can still be measured)
            import psutil

            available = psutil.virtual_memory().available
            if need > available * DEFAULT_CEILING_SHARE:
                raise HostError(
                    f"node {self.node_id}: measuring {model} needs {_size(need)} of trial shards, "
                    f"but only {_size(available)} of RAM is available",
                    "memory",
                )
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
        self._profiles[str(path)] = prof
        return prof
