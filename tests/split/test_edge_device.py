"""Device client + real edge server on loopback: split answers equal the full model, early exits, errors,
and the local fallback when the edge goes away."""

from __future__ import annotations

import httpx
import pytest
import torch

from edgeinfer.split.compress import encode
from edgeinfer.split.device import ClientConfig, DeviceClient
from edgeinfer.split.exits import Thresholds


def test_every_split_answers_like_the_full_model(small_setup, edge_server):
    m, dev, edge, test = small_setup
    x = test.x[:3]
    want = m.path("final").run(x)
    n = len(m.path("final"))
    for s in range(n + 1):
        with DeviceClient(
            m, dev, edge, edge_server.url, ClientConfig("f32", "none", force=("final", s))
        ) as c:
            for i in range(len(x)):
                r = c.infer(x[i : i + 1])
                assert not r.fallback, r.reason
                assert r.pred == int(want[i].argmax()) and r.exit == "final"
                assert r.where == ("device" if s == n else "edge" if s == 0 else "split")
                assert (r.sent_bytes > 0) == (s < n)


@pytest.mark.parametrize("wire", [("f16", "lz4"), ("int8", "zstd")])
def test_compressed_splits_keep_the_answers(small_setup, edge_server, wire):
    m, dev, edge, test = small_setup
    x = test.x[:20]
    want = m.path("final").run(x).argmax(-1)
    cut = m.exit("exit1").at  # the bottleneck
    with DeviceClient(m, dev, edge, edge_server.url, ClientConfig(*wire, force=("final", cut))) as c:
        rs = [c.infer(x[i : i + 1]) for i in range(len(x))]
    agree = sum(r.pred == int(w) for r, w in zip(rs, want, strict=True))
    assert agree >= 19
    assert all(r.sent_bytes < dev.layers[m.path("final").names[cut - 1]].out_bytes for r in rs)


def test_adaptive_client_plans_and_answers_everything(small_setup, edge_server):
    m, dev, edge, test = small_setup
    with DeviceClient(m, dev, edge, edge_server.url, ClientConfig(deadline_ms=500)) as c:
        rs = [c.infer(test.x[i : i + 1]) for i in range(20)]
        assert c.link() is not None  # measured from real transfers
    assert not any(r.fallback for r in rs)
    assert sum(r.pred == int(y) for r, y in zip(rs, test.y[:20], strict=True)) >= 15
    assert all(r.planned is not None and r.split == r.planned.split for r in rs)


def test_early_exits_on_device_and_on_edge(small_setup, edge_server):
    m, dev, edge, test = small_setup
    always = Thresholds("top1", {"exit1": 0.0})
    n = len(m.path("final"))
    x = test.x[:1]
    want = int(m.path("exit1").run(x).argmax())
    with DeviceClient(
        m, dev, edge, edge_server.url, ClientConfig(force=("final", n), thresholds=always)
    ) as c:
        r = c.infer(x)
    assert (r.early, r.exit, r.where, r.pred) == (True, "exit1", "device", want)
    with DeviceClient(
        m, dev, edge, edge_server.url, ClientConfig(force=("final", 0), thresholds=always)
    ) as c:
        r = c.infer(x)
    assert (r.early, r.exit, r.where, r.pred) == (True, "exit1", "edge", want)


def test_edge_rejects_bad_requests(small_setup, edge_server):
    m, *_ = small_setup
    url = edge_server.url + "/v1/split/tail"
    t = encode(torch.zeros(1, 1, 32, 32))
    assert httpx.post(url, params={"model": "nope", "exit": "final", "cut": 0}, content=t).status_code == 404
    assert httpx.post(url, params={"model": m.name, "exit": "final", "cut": 99}, content=t).status_code == 422
    assert httpx.post(url, params={"model": m.name, "exit": "final", "cut": 3}, content=t).status_code == 422
    r = httpx.post(url, params={"model": m.name, "exit": "final", "cut": 0}, content=b"garbage")
    assert r.status_code == 422 and "magic" in r.text


def test_unreachable_edge_falls_back_to_a_local_exit(small_setup, new_edge):
    m, dev, edge, test = small_setup
    srv = new_edge()
    cut = m.exit("exit2").at
    cfg = ClientConfig(force=("final", cut), deadline_ms=2000, retry_after_s=60)
    with DeviceClient(m, dev, edge, srv.url, cfg) as c:
        assert not c.infer(test.x[:1]).fallback
        srv.stop()
        rs = [c.infer(test.x[i : i + 1]) for i in range(5)]
    best = max(m.exits, key=lambda e: e.accuracy).name  # a generous deadline: the most accurate exit fits
    for i, r in enumerate(rs):
        assert r.fallback and r.where == "device" and "unreachable" in r.reason and best in r.reason
        assert r.exit == best and r.pred == int(m.path(best).run(test.x[i : i + 1]).argmax())


def test_tight_deadline_falls_back_to_the_cheapest_local_exit(small_setup):
    m, dev, edge, test = small_setup
    cut = m.exit("exit1").at
    cfg = ClientConfig(force=("final", cut), deadline_ms=1e-3)
    with DeviceClient(m, dev, edge, "http://127.0.0.1:9", cfg) as c:  # nothing listens on port 9
        r = c.infer(test.x[:1])
    assert r.fallback and r.exit == "exit1" and r.deadline_met is False
    assert "cannot be met" in r.reason
