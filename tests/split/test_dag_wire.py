"""DAG cuts over the wire (DADS): a cut inside a residual block carries every live tensor. The device runs
the head of `mobilenet`'s DAG chain to such a cut, sends the state (`encode_state`: several tensors) to a
real `serve-edge --dag`, and the edge's answer equals the whole model's; a state that does not fit the cut
is a clear 422."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from edgeinfer.models.dnn import zoo
from edgeinfer.process import HttpProcess, free_port
from edgeinfer.split.compress import encode_state

pytestmark = pytest.mark.slow  # trains mobilenet on first use (cached afterwards)


@pytest.fixture(scope="module")
def dag_edge() -> Iterator[str]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="serve-edge-dag-", suffix=".log")[1])
    argv = [sys.executable, "-m", "edgeinfer.cli", "split", "serve-edge", "-m", "mobilenet", "--dag"]
    srv = HttpProcess([*argv, "--port", str(port)], "127.0.0.1", port, log=log, what="serve-edge --dag")
    srv.start(timeout=600)
    try:
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def model():
    return zoo.load("mobilenet", dag=True)


def _tail(url: str, cut: int, body: bytes) -> httpx.Response:
    params = {"model": "mobilenet", "exit": "final", "cut": cut}
    return httpx.post(f"{url}/v1/split/tail", params=params, content=body, timeout=60)


def test_a_dag_cut_sends_every_live_tensor_and_the_edge_answers_like_the_model(dag_edge, model):
    path = model.path("final")
    multi = [s for s in range(len(path) + 1) if len(path.cut_shapes(s)) > 1]
    assert len(multi) >= 10  # the in-block cuts of the residual blocks
    x = zoo.dataset("mobilenet")["test"].x[:2]
    want = path.run(x)
    for cut in (multi[0], multi[len(multi) // 2], multi[-1]):
        state = path.run(x, 0, cut)
        assert isinstance(state, tuple) and len(state) == len(path.cut_shapes(cut))
        for i in range(len(x)):
            one = tuple(t[i : i + 1] for t in state)
            r = _tail(dag_edge, cut, encode_state(one, "f32", "none"))
            assert r.status_code == 200, r.text
            got = torch.tensor([r.json()["logits"]])
            assert torch.allclose(got, want[i : i + 1], atol=1e-3), (cut, got, want[i])
            assert r.json()["received_bytes"] > sum(t.numel() for t in one) * 4  # every tensor went
        lossy = _tail(dag_edge, cut, encode_state(tuple(t[:1] for t in state), "f16", "lz4"))
        assert lossy.status_code == 200 and lossy.json()["pred"] == int(want[0].argmax())
    # a single-tensor cut of the same chain still takes one tensor as before
    single = next(s for s in range(1, len(path)) if len(path.cut_shapes(s)) == 1)
    r = _tail(dag_edge, single, encode_state(path.run(x[:1], 0, single), "f16", "lz4"))
    assert r.status_code == 200 and r.json()["pred"] == int(want[0].argmax())


def test_a_state_that_does_not_fit_the_cut_is_a_clear_422(dag_edge, model):
    path = model.path("final")
    cut = next(s for s in range(len(path) + 1) if len(path.cut_shapes(s)) > 1)
    state = tuple(t for t in path.run(zoo.dataset("mobilenet")["test"].x[:1], 0, cut))
    r = _tail(dag_edge, cut, encode_state(state[0], "f32", "none"))  # one of the live tensors only
    assert r.status_code == 422 and f"carries {len(state)} tensor(s), the request 1" in r.text
    r = _tail(dag_edge, cut, encode_state(state[::-1], "f32", "none"))  # in the wrong order
    if state[0].shape != state[-1].shape:
        assert r.status_code == 422 and "do not fit cut" in r.text
    body = encode_state(state, "f16", "zstd")
    r = _tail(dag_edge, cut, body[:-3])  # truncated
    assert r.status_code == 422 and "bad request" in r.text


def test_the_device_client_runs_a_forced_dag_cut_end_to_end(dag_edge, model):
    """The runtime (profile, head, wire, edge) on the DAG chain: the profile records every live tensor's
    bytes at a DAG cut, and a device client forced to cut there answers like the whole model."""
    from edgeinfer.split.device import ClientConfig, DeviceClient
    from edgeinfer.split.profile import load_device, profile_model

    path = model.path("final")
    cut = next(s for s in range(len(path) + 1) if len(path.cut_shapes(s)) > 1)
    val = zoo.dataset("mobilenet")["val"].x[:2]
    dev = profile_model(model, load_device("edge-host"), val, warmup=0, repeats=1)
    after = path.names[cut - 1]
    live = sum(4 * int(torch.tensor(shape).prod()) for shape in path.cut_shapes(cut))
    assert dev.layers[after].in_bytes > 0 and dev.layers[after].wire["f32+none"] > live  # all of them
    x = zoo.dataset("mobilenet")["test"].x[:3]
    want = path.run(x).argmax(-1)
    cfg = ClientConfig("f16", "lz4", force=("final", cut))
    with DeviceClient(model, dev, dev, dag_edge, cfg) as client:
        got = [client.infer(x[i : i + 1]) for i in range(len(x))]
    assert [r.where for r in got] == ["split"] * 3 and not any(r.fallback for r in got), got
    assert [r.pred for r in got] == want.tolist()
