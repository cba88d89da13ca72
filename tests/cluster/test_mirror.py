"""Hot standbys (cluster/mirror.py): a standby fed in the background by the mirror holds the sequence's KV
cache, so a switch replays only the positions it lacks. Real nodes over gRPC on loopback, tiny GGUF, f32
wire."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.gateway import RemoteStage
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.mirror import StandbyMirror
from edgeinfer.cluster.node import start
from edgeinfer.cluster.planner import Stage
from edgeinfer.models.synthetic import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", n_layers=4)


class Node:
    def __init__(self, name: str):
        self.host = ShardHost(name, threads=1, memory_limit=None)
        self.server, port = start(self.host, "127.0.0.1:0")
        self.client = NodeClient(f"127.0.0.1:{port}", name, timeout=10)
        self.client.wait_ready(10)

    def stage(self, model: Path, a: int, b: int) -> RemoteStage:
        r = self.client.load(str(model), a, b)
        return RemoteStage(self.client, r.shard_id, Stage(self.client.name, a, b), "f32")

    def close(self) -> None:
        self.client.close()
        self.server.stop(0)
        self.host.close()


@pytest.fixture
def chain(tiny):
    """Stage 0 (layers 0-1) on n0 with its standby on n1, stage 1 (layers 2-3) on n0."""
    n0, n1 = Node("n0"), Node("n1")
    yield n0.stage(tiny, 0, 2), n0.stage(tiny, 2, 4), n1.stage(tiny, 0, 2), n1
    n0.close()
    n1.close()


def _decode(primary, second, mirror, standby, seq: str, prompt: list[int], n: int) -> list[int]:
    """Greedy decode through primary -> second, mirroring stage 0's inputs to ``standby``."""
    x, pos, out = torch.tensor(prompt, dtype=torch.int32), 0, []
    for _ in range(n):
        h = primary.forward(seq, x, pos, "logits")
        mirror.feed(standby, seq, x, pos)
        assert mirror.idle(10)  # one mirrored forward at a time: what is sent when is deterministic
        tok = int(second.forward(seq, h, pos, "top1")[0])
        pos += int(x.shape[0])
        out.append(tok)
        x = torch.tensor([tok], dtype=torch.int32)
    return out


def test_standby_follows_and_a_switch_replays_only_the_lag(chain):
    primary, second, standby, _ = chain
    mirror = StandbyMirror(batch=4)
    seq = "s1"
    prompt = [5, 17, 33, 2, 99, 7]
    toks = _decode(primary, second, mirror, standby, seq, prompt, 11)  # 6 + 10 positions fed to stage 0
    assert mirror.idle(10)
    assert mirror.synced(standby, seq) == 6 + 8  # the prompt at once, then decode rows 4 at a time
    held = mirror.take(standby, seq)
    assert held == 14
    # the switch: the standby replays positions 14.. only, then takes the next token like its primary
    record = torch.tensor([*prompt, *toks[:10]], dtype=torch.int32)
    standby.forward(seq, record[held:], held, "logits")
    nxt = torch.tensor([toks[10]], dtype=torch.int32)
    want = primary.forward(seq, nxt, 16, "logits")
    got = standby.forward(seq, nxt, 16, "logits")
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert mirror.synced(standby, seq) == 0  # taken: no longer mirrored
    mirror.close()


def test_rollback_and_drop(chain):
    primary, _, standby, _ = chain
    mirror = StandbyMirror(batch=2)
    seq = "s2"
    mirror.feed(standby, seq, torch.tensor([1, 2, 3, 4], dtype=torch.int32), 0)
    mirror.feed(standby, seq, torch.tensor([5, 6, 7], dtype=torch.int32), 4)  # drafts ...
    mirror.feed(standby, seq, torch.tensor([8, 9], dtype=torch.int32), 5)  # ... one accepted: rolled back
    assert mirror.idle(10)
    assert mirror.synced(standby, seq) == 7
    # the standby's cache equals a fresh computation of [1, 2, 3, 4, 5, 8, 9]
    ref = primary.forward("ref", torch.tensor([1, 2, 3, 4, 5, 8, 9], dtype=torch.int32), 0, "logits")
    nxt = torch.tensor([10], dtype=torch.int32)
    want = primary.forward("ref", nxt, 7, "logits")
    assert ref.shape[0] == 7
    got = standby.forward(seq, nxt, 7, "logits")
    assert torch.allclose(got, want, atol=1e-4)
    mirror.drop(seq)
    for _ in range(100):  # the drop runs on the mirror's thread
        try:
            standby.forward(seq, nxt, 7, "logits")  # still there: a recomputation of position 7
        except NodeError as exc:
            assert "has 0 cached positions" in str(exc)
            break
        time.sleep(0.05)
    else:
        pytest.fail("the sequence was not dropped on the standby")
    mirror.close()


def test_a_dead_standby_means_a_full_replay_not_a_hang(chain):
    primary, _, standby, n1 = chain
    mirror = StandbyMirror(batch=1, timeout=2)
    seq = "s3"
    mirror.feed(standby, seq, torch.tensor([1, 2, 3], dtype=torch.int32), 0)
    assert mirror.idle(10) and mirror.synced(standby, seq) == 3
    n1.server.stop(0)
    mirror.feed(standby, seq, torch.tensor([4], dtype=torch.int32), 3)
    assert mirror.idle(10)
    assert mirror.take(standby, seq, wait=5) == 0  # its cache is not trusted: replay everything
    mirror.feed(standby, "late", torch.tensor([4], dtype=torch.int32), 3)  # never saw position 0: ignored
    assert mirror.synced(standby, "late") == 0
    mirror.close()


def test_rolled_back_positions_are_not_counted_as_held(chain):
    """Drafts the standby computed and the gateway then rejected are stale there: a switch replays them."""
    _, _, standby, _ = chain
    mirror = StandbyMirror(batch=3)
    seq = "s4"
    mirror.feed(standby, seq, torch.tensor([1, 2, 3], dtype=torch.int32), 0)
    mirror.feed(standby, seq, torch.tensor([4, 5, 6], dtype=torch.int32), 3)  # 3 drafts, sent
    assert mirror.idle(10) and mirror.synced(standby, seq) == 6
    mirror.feed(standby, seq, torch.tensor([9], dtype=torch.int32), 4)  # one accepted, then a new token
    assert mirror.take(standby, seq) == 4  # 5 and 6 held by the standby are rejected drafts
    mirror.close()
