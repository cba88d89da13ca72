"""A node over real gRPC on loopback (tiny random GGUF): shards, KV cache per sequence, errors, probes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.node import start
from edgeinfer.engine.shard import Shard
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import free_port


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", n_layers=4)


@pytest.fixture(scope="module")
def node(tiny):
    host = ShardHost("t0", threads=1, memory_limit=None)
    server, port = start(host, "127.0.0.1:0")
    client = NodeClient(f"127.0.0.1:{port}", "t0", timeout=10)
    client.wait_ready(10)
    yield client, host
    client.close()
    server.stop(0)
    host.close()


def test_two_shards_on_the_wire_equal_the_whole_model(node, tiny):
    client, _ = node
    a = client.load(str(tiny), 0, 2)
    b = client.load(str(tiny), 2, 4)
    assert (a.n_layers, b.n_layers) == (4, 4) and a.weight_bytes > 0
    whole = Shard(tiny, 0, 4, threads=1)
    ids = torch.tensor([5, 17, 33, 2, 99])
    ref = whole.forward("r", ids)
    ra = client.forward(a.shard_id, "s", ids, 0, wire_dtype="f32")
    h = ra.output
    assert h.shape == (5, 128) and ra.seq_len == 5 and ra.compute_seconds > 0
    logits = client.forward(b.shard_id, "s", h, 0, output="logits", wire_dtype="f32").output
    assert torch.allclose(logits, ref, atol=1e-4)
    top1 = client.forward(b.shard_id, "s", h[-1:], 5, output="top1").output  # appends position 5
    assert top1.shape == (2,)
    # decode continues from the cache; a repeated step at the same start_pos truncates and recomputes
    tok = torch.tensor([int(torch.argmax(ref))])
    ref2 = whole.forward("r", tok)
    for _ in range(2):
        r2 = client.forward(a.shard_id, "s", tok, 5, wire_dtype="f32")
        out = client.forward(b.shard_id, "s", r2.output, 5, output="top1").output
        assert r2.seq_len == 6
        assert int(out[0]) == int(torch.argmax(ref2))
    client.drop("s")
    with pytest.raises(NodeError, match="has 0 cached positions"):
        client.forward(a.shard_id, "s", tok, 6)
    caps = client.capabilities()
    assert {s.shard_id for s in caps.shards} >= {a.shard_id, b.shard_id}
    assert {(s.start_layer, s.end_layer) for s in caps.shards} >= {(0, 2), (2, 4)}
    assert caps.cores >= 1 and caps.free_ram > 0 and caps.profile is None
    client.unload(a.shard_id)
    client.unload(b.shard_id)
    with pytest.raises(NodeError, match="NOT_FOUND.*no shard"):
        client.forward(a.shard_id, "s", tok, 0)


def test_capabilities_measure_layer_time_and_sizes(node, tiny):
    client, _ = node
    prof = client.capabilities(str(tiny), measure=True).profile
    assert prof is not None
    assert prof.layer_seconds > 0 and prof.layer_bytes > 0 and prof.head_bytes > 0
    assert (prof.n_layers, prof.hidden_size, prof.vocab_size) == (4, 128, 384)
    assert len(prof.layer_sizes) == 4 and max(prof.layer_sizes) == prof.layer_bytes


def test_bad_requests_are_clear_errors(node, tiny):
    client, _ = node
    with pytest.raises(NodeError, match="INVALID_ARGUMENT.*bad layer range"):
        client.load(str(tiny), 3, 9)
    with pytest.raises(NodeError, match="NOT_FOUND.*neither a bundled model"):
        client.load("/no/such/model.gguf", 0, 1)
    b = client.load(str(tiny), 2, 4)
    with pytest.raises(NodeError, match=r"expected hidden \[T, 128\]"):
        client.forward(b.shard_id, "s", torch.zeros(1, 64), 0)
    client.unload(b.shard_id)


def test_memory_limit_refuses_a_load(tiny):
    host = ShardHost("small", threads=1, memory_limit=1000)
    server, port = start(host, "127.0.0.1:0")
    client = NodeClient(f"127.0.0.1:{port}", "small", timeout=10)
    try:
        with pytest.raises(NodeError, match="RESOURCE_EXHAUSTED.*memory limit"):
            client.load(str(tiny), 0, 4)
        assert client.capabilities().memory_limit == 1000
    finally:
        client.close()
        server.stop(0)


def test_dead_node_fails_fast_not_hangs():
    client = NodeClient(f"127.0.0.1:{free_port()}", "ghost", timeout=2)
    with pytest.raises(NodeError, match="ghost.*UNAVAILABLE"):
        client.ping()
    with pytest.raises(NodeError, match="not reachable"):
        client.wait_ready(timeout=0.5)
    client.close()


def test_link_probe(node):
    client, _ = node
    rtt, bandwidth = client.probe_link()
    assert 0 < rtt < 1.0 and bandwidth > 1e6


def test_ping_reports_the_node_load_and_caps_the_reply(node, tiny):
    client, host = node
    a = client.load(str(tiny), 0, 2)
    client.forward(a.shard_id, "hb", torch.tensor([1, 2, 3]), 0)
    beat = client.ping(reply_bytes=1 << 20)
    assert beat.seconds > 0 and beat.uptime_s > 0 and beat.load1 >= 0
    assert beat.active_sequences == 1 and beat.free_bytes > 0
    with pytest.raises(NodeError, match="INVALID_ARGUMENT.*reply_bytes"):
        client.ping(reply_bytes=(1 << 20) + 1)
    with pytest.raises(NodeError, match="INVALID_ARGUMENT.*reply_bytes"):
        client.ping(reply_bytes=-1)
    client.unload(a.shard_id)
    assert client.ping().active_sequences == 0


def test_waiting_decode_rows_of_several_sequences_run_as_one_batch_with_their_solo_results(node, tiny):
    """Forwards that arrive while the node is busy wait; the next one to run takes the other sequences'
    decode rows along (one forward_batch): every sequence gets exactly what it gets alone."""
    client, host = node
    a = client.load(str(tiny), 0, 2)
    ref_a = Shard(tiny, 0, 2, threads=1)
    prompts = {f"q{i}": torch.tensor([1 + i, 7, 3 + 2 * i, 9][: 2 + i]) for i in range(3)}
    try:
        for seq, ids in prompts.items():  # the prompts, one by one
            assert torch.equal(
                client.forward(a.shard_id, seq, ids, 0, wire_dtype="f32").output, ref_a.forward(seq, ids)
            )
        before = host.batched_rows
        step = {seq: torch.tensor([5 + i]) for i, seq in enumerate(prompts)}
        got: dict[str, torch.Tensor] = {}

        def one(seq: str) -> None:
            got[seq] = client.forward(a.shard_id, seq, step[seq], len(prompts[seq]), wire_dtype="f32").output

        host._lock.acquire()  # the node is busy: the three decode rows queue up
        threads = [threading.Thread(target=one, args=(seq,)) for seq in prompts]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while len(host._queue) < len(prompts):
                assert time.monotonic() < deadline, "the forwards did not queue"
                time.sleep(0.01)
        finally:
            host._lock.release()
        for t in threads:
            t.join(20)
        assert host.batched_rows - before == len(prompts)  # one batch of all three
        for seq in prompts:
            want = ref_a.forward(seq, step[seq])
            assert torch.equal(got[seq], want), seq
    finally:
        client.unload(a.shard_id)
