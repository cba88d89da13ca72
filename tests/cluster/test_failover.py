"""Pipelines that survive node failures: the netns test-bed, real nodes, real gRPC (docs/resilience.md).

Three nodes, each allowed ~60 % of the model: two are needed, the third has room for a warm standby of one
stage or for a re-plan. Faults are real: ``kill -9``, ``SIGSTOP``/``SIGCONT`` of a node process, a link taken
down. Every stream must finish with the tokens of an undisturbed greedy run (``wire_dtype: f32``: the
transport adds no rounding), or end with a clear error when the model no longer fits.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from edgeinfer.cluster.bringup import load_cluster
from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.config import NodeSpec, load_config
from edgeinfer.cluster.testbed import NODE_PORT, node_argv
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.shard import Shard
from edgeinfer.engine.shard_backend import ShardBackend
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import ServerProcess
from edgeinfer.testbed import netns

REASON = netns.available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}"),
    pytest.mark.timeout(180),
]
PROMPT = "the ship sails to the harbour and the crew"
N_TOKENS = 96
FAILOVER = {"heartbeat": 0.2, "ban": 1.0, "max_ban": 4.0, "adapt": False}  # adaptation: its own test


class Nodes:
    """The node processes of the test-bed, restartable (``kill -9`` leaves nothing to resume)."""

    def __init__(self, tb: netns.Testbed, limit: int, logs: Path):
        self.tb, self.limit, self.logs = tb, limit, logs
        self.specs = [NodeSpec(name=f"n{i}", address=f"{h.ip}:{NODE_PORT}") for i, h in enumerate(tb.hosts)]
        self.procs: list[subprocess.Popen | None] = [None] * len(self.specs)
        self.stopped: set[int] = set()

    def index(self, name: str) -> int:
        return int(name.removeprefix("n"))

    def start(self, i: int) -> None:
        out = (self.logs / f"n{i}.log").open("ab")
        argv = node_argv(NODE_PORT, f"n{i}", 1, str(64 << 20))  # room to profile; the YAML caps the plan
        self.procs[i] = self.tb.popen(i, argv, stdout=out, stderr=out)

    def wait(self, i: int, timeout: float = 60.0) -> None:
        client = NodeClient(self.specs[i].address, self.specs[i].name, timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.wait_ready(timeout=1.0)
                    client.ping()
                    return
                except NodeError:
                    assert time.monotonic() < deadline, f"node n{i} did not come up"
        finally:
            client.close()

    def kill(self, name: str) -> None:
        proc = self.procs[self.index(name)]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str) -> None:
        self.stopped.add(self.index(name))
        self.procs[self.index(name)].send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def cont(self, name: str) -> None:
        self.stopped.discard(self.index(name))
        self.procs[self.index(name)].send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def heal(self, empty: bool = True) -> None:
        """Every node running and answering (a test may have killed, stopped or cut one); ``empty``: with
        no shard loaded (between tests, never under a running gateway)."""
        for i in range(len(self.specs)):
            self.tb.restore(i)
            if i in self.stopped:
                self.cont(f"n{i}")
            proc = self.procs[i]
            if proc is None or proc.poll() is not None:
                self.start(i)
        for i in range(len(self.specs)):
            self.wait(i)
            if not empty:
                continue
            client = NodeClient(self.specs[i].address, self.specs[i].name, timeout=5)
            for sh in client.capabilities().shards:
                client.unload(sh.shard_id)
            client.close()

    def shards(self, name: str) -> int:
        client = NodeClient(self.specs[self.index(name)].address, name, timeout=5)
        try:
            return len(client.capabilities().shards)
        finally:
            client.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", n_layers=6)


@pytest.fixture(scope="module")
def reference(tiny) -> list[int]:
    """Greedy tokens of the single-node shard engine (no cluster, no fault)."""
    backend = ShardBackend(tiny, threads=1)
    try:
        gen = backend.generate_tokens(backend.tokenize(PROMPT), SamplingParams(temperature=0.0))
        return list(itertools.islice(gen, N_TOKENS))
    finally:
        backend.close()


@pytest.fixture(scope="module")
def bed(tiny, tmp_path_factory) -> Iterator[Nodes]:
    whole = Shard(tiny, 0, 6, threads=1)
    limit = int(whole.weight_bytes * 0.6) + (256 << 10)  # the planner's share per node (and KV room)
    whole.close()
    with netns.Testbed(3, rate="100mbit") as tb:
        nodes = Nodes(tb, limit, tmp_path_factory.mktemp("nodes"))
        for i in range(3):
            nodes.start(i)
        yield nodes


@pytest.fixture
def nodes(bed) -> Iterator[Nodes]:
    bed.heal()
    yield bed
    for i in list(bed.stopped):  # never leave a frozen process behind
        bed.cont(f"n{i}")


def _yaml(path: Path, model: Path, nodes: Nodes, replicas: int = 0, **failover) -> Path:
    doc = {
        "model": str(model),
        "nodes": [{"name": s.name, "address": s.address, "memory_limit": nodes.limit} for s in nodes.specs],
        "wire_dtype": "f32",
        "ctx_size": 256,  # the planner reserves a full context's KV cache per stage (64 KiB a layer here)
        "planner": {"replicas": replicas},
        "failover": FAILOVER | failover,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _generate(backend, fault, at: int = 8) -> list[int]:
    """N_TOKENS greedy tokens; ``fault()`` runs after the first ``at`` (mid-stream, between two steps)."""
    gen = backend.generate_tokens(backend.tokenize(PROMPT), SamplingParams(temperature=0.0))
    try:
        got = list(itertools.islice(gen, at))
        fault()
        got += list(itertools.islice(gen, N_TOKENS - at))
    finally:
        gen.close()
    return got


def _wait(what, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_kill_primary_fails_over_to_its_warm_standby(nodes, tiny, reference, tmp_path):
    backend = load_cluster(load_config(_yaml(tmp_path / "c.yaml", tiny, nodes, replicas=1)))
    try:
        covered = [i for i, sb in enumerate(backend.standbys) if sb is not None]
        assert covered, f"no standby placed: {backend.plan.describe()}"
        i = covered[0]
        victim, standby = backend.stages[i].name, backend.standbys[i].name
        assert nodes.shards(standby) >= 1  # the standby's layers are loaded before any fault
        got = _generate(backend, lambda: nodes.kill(victim))
        assert got == reference
        assert backend.stages[i].name == standby
        assert (backend.stats.failovers, backend.stats.replans) == (1, 0)  # warm: nothing loaded
        # the hot standby was fed the history in the background (cluster/mirror.py): the switch replays
        # only what it lacked, at least the position in flight
        assert backend.mirror is not None and backend.mirror.sent_rows >= len(backend.tokenize(PROMPT))
        assert backend.stats.replayed_tokens >= 1
        assert all(sb is None for sb in backend.standbys)  # used up
        nodes.start(nodes.index(victim))  # the node returns: re-admitted, a standby is placed again
        _wait("standby again", lambda: any(sb is not None for sb in backend.standbys), 30)
        with backend._gate:
            assert backend.stats.replans == 1
        assert _generate(backend, lambda: None) == reference
    finally:
        backend.close()


PROMPTS = [
    PROMPT,
    "a cat sat on the mat and the dog",
    "one two three four five six",
    "the crew sings to the sea",
]


def test_kill_primary_with_four_streams_in_flight_recovers_once(nodes, tiny, tmp_path):
    """4 greedy streams in flight (``parallel=4``); the primary of a stage with a standby is killed as they
    go on: ONE failover (no re-plan), every stream replays its own history on the new chain and ends with
    the tokens its prompt gets alone."""
    solo = ShardBackend(tiny, threads=1)
    try:
        want = []
        for p in PROMPTS:
            gen = solo.generate_tokens(solo.tokenize(p), SamplingParams(temperature=0.0))
            want.append(list(itertools.islice(gen, N_TOKENS)))
    finally:
        solo.close()
    cfg = _yaml(tmp_path / "c.yaml", tiny, nodes, replicas=1, mirror=False)  # every switch replays all
    backend = load_cluster(load_config(cfg), parallel=4)
    try:
        assert backend.concurrency == 4
        covered = [i for i, sb in enumerate(backend.standbys) if sb is not None]
        assert covered, f"no standby placed: {backend.plan.describe()}"
        victim = backend.stages[covered[0]].name
        at = 8
        reached, go = threading.Barrier(len(PROMPTS) + 1), threading.Event()
        got: dict[int, list[int] | Exception] = {}

        def one(i: int) -> None:
            gen = backend.generate_tokens(backend.tokenize(PROMPTS[i]), SamplingParams(temperature=0.0))
            try:
                toks = list(itertools.islice(gen, at))
                reached.wait(60)
                go.wait(60)
                got[i] = toks + list(itertools.islice(gen, N_TOKENS - at))
            except Exception as exc:  # noqa: BLE001 - compared below
                got[i] = exc
            finally:
                gen.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        reached.wait(60)  # every stream holds KV caches on the victim
        go.set()  # they go on: the kill lands under forwards in flight
        nodes.kill(victim)
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a stream hung"
        assert [got[i] for i in range(len(PROMPTS))] == want
        assert (backend.stats.failovers, backend.stats.replans) == (1, 0)  # one recovery for all four
        # each replayed at least the positions it held at the fault: its prompt and all but its last token
        history = sum(len(backend.tokenize(p)) + at - 1 for p in PROMPTS)
        assert backend.stats.replayed_tokens >= history
        assert backend.in_flight == 0
    finally:
        backend.close()


def test_kill_primary_without_standby_replans_on_the_survivors(nodes, tiny, reference, tmp_path):
    backend = load_cluster(load_config(_yaml(tmp_path / "c.yaml", tiny, nodes)))
    try:
        used = [st.name for st in backend.stages]
        assert len(used) == 2 and all(sb is None for sb in backend.standbys)
        idle = ({"n0", "n1", "n2"} - set(used)).pop()
        got = _generate(backend, lambda: nodes.kill(used[-1]))
        assert got == reference
        assert (backend.stats.failovers, backend.stats.replans) == (1, 1)
        assert {st.name for st in backend.stages} == {used[0], idle}
    finally:
        backend.close()


def test_sampled_output_continues_from_the_same_generator_state(nodes, tiny, tmp_path):
    """A seeded sampled stream with a re-plan in the middle equals the same seeded stream without one."""
    params = SamplingParams(temperature=0.9, seed=7)
    backend = load_cluster(load_config(_yaml(tmp_path / "c.yaml", tiny, nodes)))
    try:
        ids = backend.tokenize(PROMPT)
        want = list(itertools.islice(backend.generate_tokens(ids, params), 32))
        gen = backend.generate_tokens(ids, params)
        got = list(itertools.islice(gen, 10))
        nodes.kill(backend.stages[0].name)
        got += list(itertools.islice(gen, 22))
        gen.close()
        assert backend.stats.replans == 1
        assert got == want
    finally:
        backend.close()


def test_persistently_slow_node_is_planned_out_between_tokens(nodes, tiny, reference, tmp_path):
    """Throttle one node (stopped ~90 % of the time, like a CPU quota or thermal throttling): after 32 slow
    steps the gateway re-plans without it, between two tokens, and the stream keeps its tokens."""
    cfg = _yaml(tmp_path / "c.yaml", tiny, nodes, adapt=True, adapt_cooldown=600)
    backend = load_cluster(load_config(cfg))
    done = threading.Event()
    try:
        victim = backend.stages[-1].name
        proc = nodes.procs[nodes.index(victim)]
        assert proc is not None

        def throttle() -> None:
            while not done.is_set():
                proc.send_signal(signal.SIGSTOP)
                time.sleep(0.05)
                proc.send_signal(signal.SIGCONT)
                time.sleep(0.003)

        got = _generate(backend, threading.Thread(target=throttle, daemon=True).start, at=4)
        assert got == reference
        assert backend.stats.migrations == 1 and backend.stats.failovers == 0, backend.cluster_state()
        assert victim not in {st.name for st in backend.stages}
        assert "slower than profiled" in backend.stats.last_recovery
    finally:
        done.set()
        time.sleep(0.1)
        nodes.procs[nodes.index(victim)].send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        backend.close()


def _stream_tokens(url: str, max_tokens: int, on_first=None) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    chunks = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=max_tokens, temperature=0, stream=True
    )
    text = []
    for c in chunks:
        if c.choices:
            if on_first is not None and not text:
                on_first()
            text.append(c.choices[0].text)
    return "".join(text)


def _cluster(url: str) -> dict:
    r = httpx.get(url + "/v1/cluster", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["models"]["tiny"]


def _node(state: dict, name: str) -> dict:
    return next(n for n in state["nodes"] if n["name"] == name)


@pytest.mark.parametrize("fault", ["sigstop", "link"])
def test_hung_node_is_detected_recovered_and_readmitted(nodes, tiny, reference, tmp_path, fault):
    """A node that stops answering (SIGSTOP, or its link down) mid-stream: the stream pauses, then completes
    with the same tokens; the node is banned, then re-admitted (leftover shard unloaded) once it answers."""
    cfg = _yaml(tmp_path / "c.yaml", tiny, nodes)
    with ServerProcess(["--cluster", str(cfg)], log=tmp_path / "gw.log") as srv:
        want = _stream_tokens(srv.url, N_TOKENS)  # undisturbed (the direct tests compare with one node)
        first = _cluster(srv.url)
        victim = first["stages"][-1]["node"]
        i = nodes.index(victim)
        hang = (lambda: nodes.stop(victim)) if fault == "sigstop" else (lambda: nodes.tb.cut(i))
        t0 = time.monotonic()
        text = _stream_tokens(srv.url, N_TOKENS, on_first=hang)
        after = _cluster(srv.url)
        assert after["failovers"] == 1 and after["replans"] == 1, after
        assert after["replayed_tokens"] > 0, after  # recovered inside the stream, not after it
        assert victim not in {s["node"] for s in after["stages"]}
        assert not _node(after, victim)["up"]
        assert time.monotonic() - t0 < 30
        assert text == want
        metrics = httpx.get(srv.url + "/metrics", timeout=5).text
        assert f'edgeinfer:node_up{{model_name="tiny",node="{victim}"}} 0.0' in metrics
        assert 'edgeinfer:failovers_total{model_name="tiny"} 1.0' in metrics
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200  # the model still fits
        nodes.cont(victim) if fault == "sigstop" else nodes.tb.restore(i)
        _wait("re-admission", lambda: _node(_cluster(srv.url), victim)["up"])

        def settled() -> bool:  # leftovers unloaded; it may be planned in again (standby or stage)
            state = _cluster(srv.url)
            mine = [x for x in state["stages"] + state["standbys"] if x and x["node"] == victim]
            return nodes.shards(victim) == len(mine)

        _wait("leftover shard unloaded", settled)
        assert _stream_tokens(srv.url, N_TOKENS) == text  # and it still serves


def test_losing_capacity_is_a_clear_error_and_health_503_until_nodes_return(nodes, tiny, reference, tmp_path):
    """8 concurrent streams while nodes are killed one by one until the model no longer fits: every stream
    completes with the reference tokens or ends with an error naming the lost node; /health tells the truth;
    after the nodes return the gateway re-plans by itself and serves again."""
    cfg = _yaml(tmp_path / "c.yaml", tiny, nodes)
    with ServerProcess(["--cluster", str(cfg)], log=tmp_path / "gw.log") as srv:
        want = _stream_tokens(srv.url, N_TOKENS)
        results: list[str | Exception] = []
        started = threading.Event()

        def one() -> None:
            try:
                results.append(_stream_tokens(srv.url, N_TOKENS, on_first=started.set))
            except Exception as exc:  # noqa: BLE001 - examined below
                results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        started.wait(30)
        order = [s["node"] for s in _cluster(srv.url)["stages"]]
        nodes.kill(order[0])
        _wait("re-plan", lambda: _cluster(srv.url)["replans"] >= 1)
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
        second = _cluster(srv.url)["stages"][0]["node"]
        nodes.kill(second)
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a stream hung"
        assert len(results) == 8
        for r in results:
            if isinstance(r, Exception):
                assert "node" in str(r) and ("lost" in str(r) or "failed" in str(r)), r
            else:
                assert r == want
        _wait("unavailable", lambda: httpx.get(srv.url + "/health", timeout=5).status_code == 503)
        health = httpx.get(srv.url + "/health", timeout=5).json()
        assert health["status"] == "unavailable" and "does not fit" in health["errors"]["tiny"]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4)
        assert err.value.status_code == 503 and "was lost" in str(err.value)
        nodes.heal(empty=False)
        _wait("capacity back", lambda: httpx.get(srv.url + "/health", timeout=5).status_code == 200, 30)
        assert _stream_tokens(srv.url, N_TOKENS) == want
