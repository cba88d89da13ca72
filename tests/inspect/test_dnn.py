"""DNN IDs (sensitive samples) and the DnnInspector: real zoo weights, real edge servers on loopback (the
`split serve-edge` CLI for the honest one, the same edge app in-process for substitutes)."""

from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from edgeinfer.inspect import dnn
from edgeinfer.inspect.stats import Decision, model_test, sla_test
from edgeinfer.models.dnn.data import resize
from edgeinfer.process import HttpProcess, free_port
from edgeinfer.split.compress import DTYPES, encode
from edgeinfer.split.device import ClientConfig, DeviceClient
from edgeinfer.split.edge import create_edge_app
from edgeinfer.split.profile import load_device, profile_model

NAME = "digitnet-small"  # trains in seconds on a clean clone (the zoo caches it)
CFG = dnn.IdConfig(n=6, candidates=10, steps=15)


@pytest.fixture(scope="module")
def ref():
    return dnn.reference(NAME)


@pytest.fixture(scope="module")
def ids(ref, tmp_path_factory) -> dnn.DnnIdSet:
    path = dnn.make_ids(NAME, CFG).save(tmp_path_factory.mktemp("ids") / "ids.json")
    return dnn.DnnIdSet.load(path)  # what a device carries: the file, read back


@pytest.fixture(scope="module")
def subs(ref) -> dict:
    net, _ = ref
    return {kind: dnn.substitute(net, kind, NAME) for kind in dnn.SUBSTITUTES}


class ThreadServer:
    """An edge app (any models, e.g. a substitute) served by uvicorn in a thread on a loopback port."""

    def __init__(self, models: dict, delay_ms: float = 0.0):
        import uvicorn

        port = free_port()
        app = create_edge_app(models, threads=1, delay_ms=delay_ms)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "edge app did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def honest_edge() -> Iterator[HttpProcess]:
    """The real `edgeinfer split serve-edge` with 2 torch threads (IDs were made with 1)."""
    argv = [sys.executable, "-m", "edgeinfer.cli", "split", "serve-edge", "-m", NAME, "--threads", "2"]
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="inspect-edge-", suffix=".log")[1])
    srv = HttpProcess([*argv, "--port", str(port)], port=port, log=log, what="serve-edge")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sub_edges(ref, subs) -> Iterator[dict[str, ThreadServer]]:
    servers = {kind: ThreadServer({NAME: model}) for kind, model in subs.items()}
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="module")
def profiles(ref):
    _, model = ref
    x = torch.zeros(2, 1, 32, 32)
    dev = profile_model(model, load_device("rpi4-like"), x, warmup=1, repeats=3)
    edge = profile_model(model, load_device("edge-host"), x, warmup=1, repeats=3)
    return dev, edge


def _jacobian_norm(net, src: torch.Tensor, res: int) -> float:
    params = dnn._final_params(net)
    total = 0.0
    for i in range(len(src)):
        logits = net(resize(src[i : i + 1], res))
        for k in range(logits.shape[1]):
            grads = torch.autograd.grad(logits[0, k], params, retain_graph=True)
            total += float(sum((g**2).sum() for g in grads))
    return total


# --- the IDs ------------------------------------------------------------------------------------------------
def test_ids_are_ordinary_digits_with_stable_answers(ref, ids, tmp_path):
    net, model = ref
    assert len(ids.ids) == CFG.n and ids.model == NAME and ids.res == 32
    frames = ids.frames()
    assert frames.shape == (CFG.n, 1, 32, 32)
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    with torch.no_grad():
        logits = model.path("final").run(frames)
    for i, item in enumerate(ids.ids):
        assert int(logits[i].argmax()) == item.label  # still the digit it started from
        assert item.margin >= CFG.min_margin
        assert torch.allclose(logits[i], torch.tensor(item.expected["final"]), atol=1e-4)
        assert set(item.expected) == {"exit1", "exit2", "final"} and set(item.tolerance) == set(DTYPES)
        assert item.tolerance["f32"] <= item.tolerance["f16"] <= item.tolerance["int8"]
    size = len(json.dumps(ids.to_dict()))
    assert size < 16_000  # small enough for any device
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**ids.to_dict(), "format": 99}))
    with pytest.raises(dnn.DnnIdError, match="format"):
        dnn.DnnIdSet.load(bad)
    bad.write_text("{")
    with pytest.raises(dnn.DnnIdError, match="not JSON"):
        dnn.DnnIdSet.load(bad)


def test_gradient_ascent_raises_weight_sensitivity(ref):
    net, _ = ref
    val = dnn.zoo.dataset(NAME)["val"]
    start = val.images[:4]
    found = dnn.sensitive_samples(net, start, 32, CFG)
    assert float((found - start).abs().max()) <= CFG.eps + 1e-6  # a bounded nudge of real pixels
    before, after = _jacobian_norm(net, start, 32), _jacobian_norm(net, found, 32)
    assert after > 1.1 * before, (before, after)


# --- detection, in-process ----------------------------------------------------------------------------------
def test_every_substitute_is_caught_by_every_id(ref, ids, subs):
    _, honest = ref
    table = dnn.detection_table(ids, honest, subs)
    for kind, row in table.items():
        print(f"per-ID detection probability, {kind}: {row}")
    assert all(p == 1.0 for row in table.values() for p in row.values()), table
    # without the model at hand (stored logits): f32 / f16 wires catch every substitute too
    stored = dnn.detection_table(ids, honest, subs, dtypes=("f32", "f16"), reference="stored")
    assert all(p == 1.0 for row in stored.values() for p in row.values()), stored


def test_honest_answers_pass_across_threads_and_batch_sizes(ref, ids):
    _, honest = ref
    checks = dnn.sweep(ids, honest, honest, threads=(1, 2), batched=True)
    assert len(checks) >= 1000
    assert {c.reference for c in checks} == {"local", "stored"} and {c.dtype for c in checks} == set(DTYPES)
    assert [c for c in checks if not c.passed] == []


# --- real edge servers --------------------------------------------------------------------------------------
def _client(ref, profiles, url: str, cut: int, dtype="f16", codec="lz4", inspector=None) -> DeviceClient:
    _, model = ref
    dev, edge = profiles
    transport = inspector.transport() if inspector else None
    cfg = ClientConfig(dtype, codec, force=("final", cut))
    return DeviceClient(model, dev, edge, url, cfg, transport=transport)


def test_honest_edge_passes_every_id_and_answers_are_unchanged(ref, ids, profiles, honest_edge):
    _, model = ref
    test = dnn.zoo.dataset(NAME)["test"]
    inspector = dnn.DnnInspector(ids, model, rate=1.0, model_test=model_test(q=0.999), seed=0)
    cuts = [0, 3, 7, len(model.path("final")) - 1]
    for cut in cuts:
        for dtype, codec in (("f32", "none"), ("f16", "lz4"), ("int8", "zstd")):
            with _client(ref, profiles, honest_edge.url, cut, dtype, codec) as plain:
                want = [plain.infer(test.x[i : i + 1]).pred for i in range(3)]
            with _client(ref, profiles, honest_edge.url, cut, dtype, codec, inspector) as c:
                got = [c.infer(test.x[i : i + 1]) for i in range(3)]
            assert [r.pred for r in got] == want and not any(r.fallback for r in got)
    report = inspector.report()
    assert report.requests == report.id_requests == 3 * 3 * len(cuts)
    assert all(c.passed for c in report.checks), [c for c in report.checks if not c.passed]
    assert report.model.decision is Decision.MATCHES and report.model.n <= 2
    assert report.errors == 0 and len(report.latencies_ms) == report.requests


@pytest.mark.parametrize("kind", dnn.SUBSTITUTES)
def test_full_substitution_is_caught_on_the_first_id(ref, ids, profiles, sub_edges, kind):
    _, model = ref
    test = dnn.zoo.dataset(NAME)["test"]
    for cut in (0, 3):
        inspector = dnn.DnnInspector(ids, model, rate=1.0, model_test=model_test(q=0.999), seed=cut)
        with _client(ref, profiles, sub_edges[kind].url, cut, inspector=inspector) as c:
            c.infer(test.x[:1])
        report = inspector.report()
        assert report.id_requests == 1 and not report.checks[0].passed
        assert report.model.decision is Decision.SUBSTITUTED and report.model.n == 1
        assert report.model.confidence >= 0.999


def test_partial_substitution_is_caught(ids, sub_edges, honest_edge):
    """A routing proxy (test-only) sends a fraction f of the requests to the int8 substitute; plain function
    API, edge-only client (cut 0, stored logits: the client holds no model). f = 0 first: no failed check."""
    frames = dnn.zoo.dataset(NAME)["test"].x
    params = {"model": NAME, "exit": "final", "cut": 0}
    with httpx.Client(timeout=10) as http:
        for f, limit in ((0.0, 40), (0.1, 400)):

            def send(query: dict, payload: bytes, f=f, rng=random.Random(5)) -> dict:
                url = sub_edges["int8"].url if rng.random() < f else honest_edge.url
                r = http.post(f"{url}/v1/split/tail", params=query, content=payload)
                r.raise_for_status()
                return r.json()

            inspector = dnn.DnnInspector(ids, None, rate=0.5, model_test=model_test(q=0.05), seed=1)
            for i in range(limit):
                inspector.call(send, params, encode(frames[i % len(frames)][None], "f16", "lz4"))
                if inspector.report().model.decided:
                    break
            report = inspector.report()
            assert report.skipped == 0 and report.id_requests > 0
            if f == 0.0:
                assert all(c.passed and c.reference == "stored" for c in report.checks)
                assert report.model.decision is Decision.UNDECIDED
            else:
                print(
                    f"partial substitution f={f} at rate 0.5: {report.model.decision} after {report.requests}"
                )
                assert report.model.decision is Decision.SUBSTITUTED


def test_sla_violation_is_flagged_and_honest_latency_is_not(ids, honest_edge):
    slow = ThreadServer({NAME: dnn.reference(NAME)[1]}, delay_ms=300)
    frame = encode(dnn.zoo.dataset(NAME)["test"].x[:1], "f16", "lz4")
    params = {"model": NAME, "exit": "final", "cut": 0}
    try:
        with httpx.Client(timeout=10) as http:
            for late, want in ((0.3, Decision.VIOLATED), (0.0, Decision.MET)):

                def send(p: dict, payload: bytes, late=late, rng=random.Random(3)) -> dict:
                    url = slow.url if rng.random() < late else honest_edge.url
                    r = http.post(f"{url}/v1/split/tail", params=p, content=payload)
                    r.raise_for_status()
                    return r.json()

                sla = sla_test(level=0.95, violated=0.25, alpha=1e-3, beta=1e-3)
                inspector = dnn.DnnInspector(ids, None, rate=0.0, slo_ms=250.0, sla_test=sla)
                for _ in range(300):
                    inspector.call(send, params, frame)
                    if inspector.report().sla.decided:
                        break
                report = inspector.report()
                print(f"late fraction {late}: {report.sla.decision} after {report.sla.n} requests")
                assert report.sla.decision is want and report.id_requests == 0
    finally:
        slow.stop()


def test_inspector_is_thread_safe_and_overhead_follows_the_rate(ref, ids, honest_edge):
    _, model = ref
    frames = dnn.zoo.dataset(NAME)["test"].x
    inspector = dnn.DnnInspector(ids, model, rate=0.25, seed=5)
    with httpx.Client(timeout=10) as http:

        def send(params: dict, payload: bytes) -> dict:
            r = http.post(f"{honest_edge.url}/v1/split/tail", params=params, content=payload)
            r.raise_for_status()
            return r.json()

        def work(k: int) -> None:
            for i in range(25):
                cut = (k + i) % 5
                x = model.path("final").run(frames[i : i + 1], 0, cut)
                inspector.call(send, {"model": NAME, "exit": "final", "cut": cut}, encode(x, "int8"))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))
    report = inspector.report()
    assert report.requests == 100 and 10 <= report.id_requests <= 45
    assert len(report.checks) == report.id_requests and all(c.passed for c in report.checks)
    assert report.overhead == pytest.approx(report.id_requests / (100 + report.id_requests))


def test_inspector_rejects_bad_setup(ref, ids):
    _, model = ref
    with pytest.raises(ValueError, match="rate"):
        dnn.DnnInspector(ids, model, rate=2.0)
    model.name, name = "other", model.name
    try:
        with pytest.raises(dnn.DnnIdError, match="IDs are for"):
            dnn.DnnInspector(ids, model)
    finally:
        model.name = name
    with pytest.raises(KeyError, match="unknown substitute"):
        dnn.substitute(ref[0], "bogus")
    # a malformed real request is passed on as it is; no ID rides along with it
    inspector = dnn.DnnInspector(ids, model, rate=1.0)
    answer = {"exit": "final", "logits": [0.0] * 10}
    assert inspector.call(lambda p, b: answer, {"model": NAME, "exit": "final", "cut": 0}, b"junk") is answer
    frame = encode(torch.zeros(1, 1, 32, 32))
    assert inspector.call(lambda p, b: answer, {"model": NAME, "exit": "nope", "cut": 0}, frame) is answer
    report = inspector.report()
    assert (report.requests, report.skipped, report.id_requests, report.checks) == (2, 2, 0, [])


def test_cli_refuses_an_unknown_dnn(tmp_path):
    from typer.testing import CliRunner

    from edgeinfer.cli import app

    r = CliRunner().invoke(app, ["inspect", "ids", "--dnn", "nope", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown zoo model 'nope'" in r.stderr and "digitnet" in r.stderr
    assert not (tmp_path / "x").exists()
