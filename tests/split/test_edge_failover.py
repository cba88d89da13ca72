"""A device given several edge servers fails over between them: two real edge servers (`edgeinfer split
serve-edge`) on loopback, one killed in the middle of a run of requests; no request is lost, every answer
is the full model's; with every edge gone the local-exit fallback still answers."""

from __future__ import annotations

import signal

from edgeinfer.split.device import ClientConfig, DeviceClient

from .conftest import EdgeProcess


def _kill(srv: EdgeProcess) -> None:
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)


def test_a_killed_edge_server_hands_the_requests_to_the_next_one(small_setup, new_edge):
    m, dev, edge, test = small_setup
    x = test.x[:24]
    want = m.path("final").run(x).argmax(-1)
    first, second = new_edge(), new_edge()
    cfg = ClientConfig("f32", "none", force=("final", m.exit("exit1").at), retry_after_s=60)
    with DeviceClient(m, dev, edge, [first.url, second.url], cfg) as c:
        rs = []
        for i in range(len(x)):
            if i == 8:
                _kill(first)  # mid-run: the edge in use dies between two requests
            rs.append(c.infer(x[i : i + 1]))
        assert c.failovers == 1 and c.edge_url == second.url
    assert not any(r.fallback for r in rs), [r.reason for r in rs if r.fallback]
    assert [r.pred for r in rs] == [int(w) for w in want]  # none lost, every answer the full model's
    assert [r.edge for r in rs] == [first.url] * 8 + [second.url] * 16
    assert rs[8].failed_over == 1 and all(r.failed_over == 0 for r in rs[9:])


def test_with_every_edge_server_gone_the_device_answers_from_a_local_exit(small_setup, new_edge):
    m, dev, edge, test = small_setup
    first, second = new_edge(), new_edge()
    cfg = ClientConfig(force=("final", m.exit("exit2").at), deadline_ms=3000, retry_after_s=60)
    with DeviceClient(m, dev, edge, [first.url, second.url], cfg) as c:
        assert c.infer(test.x[:1]).edge == first.url
        _kill(first)
        _kill(second)
        r = c.infer(test.x[1:2])
    assert r.fallback and r.where == "device" and r.failed_over == 2
    assert first.url in r.reason and second.url in r.reason and "unreachable" in r.reason
    assert r.pred == int(m.path(r.exit).run(test.x[1:2]).argmax())
