"""A hostile caller against a real `edgeinfer node` process over real gRPC (issue 16, node part): calls
without the cluster token or a certificate of the cluster CA are refused, Ping replies are capped, the byte
ceiling holds under concurrent abuse (RSS measured with psutil), the node is no file-existence oracle, bad
arguments are INVALID_ARGUMENT, idle sequences are evicted; and a TLS + token cluster on the test-bed serves
the openai client end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import psutil
import pytest
import torch
import yaml

from edgeinfer.cluster import wire
from edgeinfer.cluster.auth import TOKEN_ENV, ClusterSecurity, load_security
from edgeinfer.cluster.certs import make_certs
from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.proto import node_pb2, node_pb2_grpc
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import ServerProcess, free_port
from edgeinfer.testbed import netns

TOKEN = "t0ken-for-the-cluster-tests-0123456789"
pytestmark = pytest.mark.timeout(300)


class Node:
    """`python -m edgeinfer.cluster.cli node` on a loopback port."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        listen = f"{host}:{self.port}"
        argv = [sys.executable, "-m", "edgeinfer.cluster.cli", "node", "--listen", listen, "-t", "1"]
        self.log = tmp / f"node-{self.port}.log"
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )

    def client(self, security: ClusterSecurity | None = None, timeout: float = 20) -> NodeClient:
        return NodeClient(self.address, "victim", timeout=timeout, security=security)

    def wait(self, security: ClusterSecurity | None = None) -> Node:
        c = self.client(security, timeout=2)
        deadline = time.monotonic() + 60
        try:
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    c.ping()
                    return self
                except NodeError:
                    assert time.monotonic() < deadline, self.log.read_text()
                    time.sleep(0.2)
        finally:
            c.close()

    def anon_rss(self) -> int:
        """Anonymous resident bytes (psutil: rss - shared): weights, KV caches, buffers (not mapped files)."""
        m = psutil.Process(self.proc.pid).memory_info()
        return m.rss - m.shared

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", arch="llama", n_layers=4)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return make_certs(d, ["n0", "n1", "n2"])


def _raw_stub(address: str, creds: grpc.ChannelCredentials | None = None, override: bool = True):
    if creds is None:
        channel = grpc.insecure_channel(address)
    else:
        opts = [("grpc.ssl_target_name_override", "edgeinfer-node")] if override else []
        channel = grpc.secure_channel(address, creds, options=opts)
    return channel, node_pb2_grpc.NodeStub(channel)


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details() or ""


# --- authentication --------------------------------------------------------------------------------------
def test_token_node_refuses_calls_without_the_token(tmp_path, tiny):
    node = Node(tmp_path, "--models-dir", str(tiny.parent), env={TOKEN_ENV: TOKEN})
    good = ClusterSecurity(token=TOKEN)
    try:
        node.wait(good)
        channel, stub = _raw_stub(node.address)
        load = node_pb2.LoadRequest(model=str(tiny), start_layer=0, end_layer=4)
        for metadata in (None, (("authorization", "Bearer wrong-token-of-the-same-size-0123"),)):
            for call, req in (
                (stub.Load, load),
                (stub.Ping, node_pb2.PingRequest(reply_bytes=10)),
                (stub.GetCapabilities, node_pb2.CapabilitiesRequest()),
                (stub.Unload, node_pb2.ShardRef(shard_id="x")),
            ):
                code, details = _code(call, req, timeout=10, metadata=metadata)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (call, code, details)
        channel.close()
        with pytest.raises(NodeError, match="UNAUTHENTICATED"):
            NodeClient(node.address, "x", timeout=5, security=ClusterSecurity(token="x" * 32)).ping()
        client = node.client(good)
        assert client.capabilities().shards == ()  # the refused Load never reached the servicer
        shard = client.load(str(tiny), 0, 4).shard_id
        assert client.forward(shard, "s", torch.tensor([1, 2, 3]), 0).seq_len == 3
        client.close()
    finally:
        node.stop()
    assert "WITHOUT" not in node.log.read_text()  # loopback and a token: no warning


def test_tls_node_refuses_peers_without_a_cluster_certificate(tmp_path, tiny, certs):
    other = make_certs(tmp_path / "other-ca", ["n0"])
    f = certs.nodes["n0"]
    node = Node(
        tmp_path,
        *("--tls-cert", str(f.cert), "--tls-key", str(f.key), "--tls-ca", str(certs.ca)),
        *("--token-file", str(_token_file(tmp_path))),
    )
    gw = load_security(None, certs.gateway.cert, certs.gateway.key, certs.ca, env={TOKEN_ENV: TOKEN})
    try:
        node.wait(gw)
        ca = certs.ca.read_bytes()
        attempts = {
            "plaintext": None,
            "no client certificate": grpc.ssl_channel_credentials(root_certificates=ca),
            "certificate of another CA": grpc.ssl_channel_credentials(
                ca, other.gateway.key.read_bytes(), other.gateway.cert.read_bytes()
            ),
        }
        for what, creds in attempts.items():
            channel, stub = _raw_stub(node.address, creds)
            code, _ = _code(
                stub.Ping, node_pb2.PingRequest(), timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
            assert code == grpc.StatusCode.UNAVAILABLE, what  # the handshake fails: no call at all
            channel.close()
        # a gateway certificate but no token: TLS lets it in, the token check does not
        no_token = ClusterSecurity(ca=gw.ca, cert=gw.cert, key=gw.key)
        with pytest.raises(NodeError, match="UNAUTHENTICATED"):
            node.client(no_token).ping()
        # the node checks that callers are signed by the CA; the gateway checks the node's name
        wrong_name = ClusterSecurity(token=TOKEN, ca=gw.ca, cert=gw.cert, key=gw.key, server_name="n9")
        with pytest.raises(NodeError, match="UNAVAILABLE"):
            NodeClient(node.address, "x", timeout=5, security=wrong_name).ping()
        client = node.client(gw)
        assert client.ping().uptime_s > 0
        client.close()
    finally:
        node.stop()


def _token_file(tmp: Path) -> Path:
    p = tmp / "cluster.token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


def test_bad_token_files_are_refused_and_an_open_node_warns(tmp_path):
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    for token_file, message in ((tmp_path / "absent", "cannot read the token file"), (short, "at least 16")):
        proc = subprocess.run(
            [sys.executable, "-m", "edgeinfer.cluster.cli", "node", "--token-file", str(token_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    node = Node(tmp_path, env={TOKEN_ENV: ""}, host="0.0.0.0")
    try:
        node.wait()
    finally:
        node.stop()
    text = node.log.read_text()
    assert "without a cluster token or TLS" in text and "WITHOUT a cluster token or TLS" in text


# --- bounds and arguments --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_node(tmp_path_factory, tiny) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("open-node")
    node = Node(tmp, "--models-dir", str(tiny.parent), "--idle-ttl", "1", "--max-sequences", "3")
    client = node.wait().client(timeout=120)
    with pytest.raises(NodeError, match="NOT_FOUND"):  # the first Load imports the engine (torch)
        client.load("absent.gguf", 0, 1)
    client.close()
    yield node
    node.stop()


def test_ping_reply_is_capped(open_node):
    channel, stub = _raw_stub(open_node.address)
    before = open_node.anon_rss()
    for n in (2**31 - 1, (1 << 20) + 1, -1):
        code, details = _code(stub.Ping, node_pb2.PingRequest(reply_bytes=n), timeout=30)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "reply_bytes" in details
    assert len(stub.Ping(node_pb2.PingRequest(reply_bytes=1 << 20), timeout=30).payload) == 1 << 20
    assert open_node.anon_rss() - before < 64 << 20
    channel.close()


def test_load_is_no_file_existence_oracle(open_node, tiny, tmp_path):
    (tiny.parent / "notes.txt").write_text("not a model")
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    channel, stub = _raw_stub(open_node.address)
    answers = set()
    for name in (
        str(secret),
        str(tmp_path / "absent"),
        "/etc/passwd",
        "../../../../etc/hostname",
        "~/.ssh/id_rsa",
        "/no/such/model.gguf",
        f"{tiny.parent}/../{tmp_path.name}/id_rsa",
    ):
        code, details = _code(
            stub.Load, node_pb2.LoadRequest(model=name, start_layer=0, end_layer=1), timeout=30
        )
        answers.add((code, details.replace(repr(name), "<name>")))
    assert len(answers) == 1, answers
    code, details = answers.pop()
    assert code == grpc.StatusCode.NOT_FOUND and "--models-dir" in details
    # files under the models directory load, by name or by full path
    ok = stub.Load(node_pb2.LoadRequest(model="tiny.gguf", start_layer=0, end_layer=2), timeout=30)
    stub.Unload(node_pb2.ShardRef(shard_id=ok.shard_id), timeout=30)
    code, _ = _code(
        stub.Load, node_pb2.LoadRequest(model="notes.txt", start_layer=0, end_layer=1), timeout=30
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # inside the directory, but no model
    channel.close()


def test_bad_arguments_are_invalid_argument(open_node, tiny):
    channel, stub = _raw_stub(open_node.address)
    first = stub.Load(node_pb2.LoadRequest(model=str(tiny), start_layer=0, end_layer=2), timeout=30).shard_id
    second = stub.Load(node_pb2.LoadRequest(model=str(tiny), start_layer=2, end_layer=4), timeout=30).shard_id
    ids = wire.encode(torch.tensor([1, 2, 3]), "i32")
    hidden = wire.encode(torch.zeros(2, 128), "f32")
    bad = {
        "start_pos=-5": node_pb2.ForwardRequest(shard_id=first, seq_id="s", input=ids, start_pos=-5),
        "hidden to the first shard": node_pb2.ForwardRequest(shard_id=first, seq_id="s", input=hidden),
        "ids to a later shard": node_pb2.ForwardRequest(shard_id=second, seq_id="s", input=ids),
        "wrong width": node_pb2.ForwardRequest(
            shard_id=second, seq_id="s", input=wire.encode(torch.zeros(2, 64), "f32")
        ),
        "negative shape": node_pb2.ForwardRequest(
            shard_id=second, seq_id="s", input=node_pb2.Tensor(data=b"", shape=[-1, 128], dtype="f32")
        ),
        "huge shape": node_pb2.ForwardRequest(
            shard_id=second,
            seq_id="s",
            input=node_pb2.Tensor(data=b"\0" * 8, shape=[2**40, 2**40], dtype="f32"),
        ),
        "unknown dtype": node_pb2.ForwardRequest(
            shard_id=second, seq_id="s", input=node_pb2.Tensor(data=b"\0" * 8, shape=[2], dtype="f64")
        ),
        "payload shorter than its shape": node_pb2.ForwardRequest(
            shard_id=second, seq_id="s", input=node_pb2.Tensor(data=b"\0" * 8, shape=[2, 128], dtype="f32")
        ),
        "bad wire dtype": node_pb2.ForwardRequest(shard_id=first, seq_id="s", input=ids, wire_dtype="f8"),
        "bad output": node_pb2.ForwardRequest(shard_id=second, seq_id="s", input=hidden, output="all"),
        "empty seq_id": node_pb2.ForwardRequest(shard_id=first, seq_id="", input=ids),
        "token id out of range": node_pb2.ForwardRequest(
            shard_id=first, seq_id="s", input=wire.encode(torch.tensor([10**6]), "i32")
        ),
        "beyond max_seq_len": node_pb2.ForwardRequest(shard_id=first, seq_id="s", input=ids, start_pos=2**30),
        "continues past its cache": node_pb2.ForwardRequest(
            shard_id=first, seq_id="new", input=ids, start_pos=5
        ),
    }
    for what, req in bad.items():
        code, details = _code(stub.Forward, req, timeout=30)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
        assert "Error" not in details, (what, details)  # a sentence, not an exception's name
    for what, req in {
        "load: bad range": node_pb2.LoadRequest(model=str(tiny), start_layer=3, end_layer=9),
        "load: negative threads": node_pb2.LoadRequest(
            model=str(tiny), start_layer=0, end_layer=1, threads=-1
        ),
        "load: negative max_seq_len": node_pb2.LoadRequest(
            model=str(tiny), start_layer=0, end_layer=1, max_seq_len=-4
        ),
    }.items():
        code, details = _code(stub.Load, req, timeout=30)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
    code, _ = _code(stub.Forward, node_pb2.ForwardRequest(shard_id="nope", seq_id="s", input=ids), timeout=30)
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(stub.Unload, node_pb2.ShardRef(shard_id="nope"), timeout=30)
    assert code == grpc.StatusCode.NOT_FOUND
    for shard in (first, second):
        stub.Unload(node_pb2.ShardRef(shard_id=shard), timeout=30)
    channel.close()


def test_sequences_are_capped_and_evicted_when_idle(open_node, tiny):
    client = open_node.client()
    shard = client.load(str(tiny), 0, 4).shard_id
    ids = torch.tensor([1, 2, 3])
    for i in range(3):
        client.forward(shard, f"s{i}", ids, 0)
    assert client.ping().active_sequences == 3
    with pytest.raises(NodeError, match="RESOURCE_EXHAUSTED.*3 sequences are open"):
        client.forward(shard, "s3", ids, 0)
    client.drop("s0")  # the owner drops one: room for another
    client.forward(shard, "s3", ids, 0)
    deadline = time.monotonic() + 10
    while client.ping().active_sequences and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.ping().active_sequences == 0  # idle for longer than --idle-ttl 1
    assert time.monotonic() < deadline
    with pytest.raises(NodeError, match="INVALID_ARGUMENT.*has 0 cached positions"):
        client.forward(shard, "s1", ids, 3)
    client.unload(shard)
    client.close()


def test_ceiling_holds_under_concurrent_hostile_calls(tmp_path):
    """Qwen (~400 MB of weights) on a node with a 300 MB ceiling over weights and KV caches: the full load is
    refused before any weight is read; then 20 threads hammer it (loads, big prefills, many sequences, huge
    pings) while its anonymous RSS is sampled."""
    ceiling = 300 << 20
    node = Node(tmp_path, "--memory-limit", str(ceiling), "--max-context", "512", "--max-sequences", "8")
    try:
        client = node.wait().client(timeout=120)
        with pytest.raises(NodeError, match="RESOURCE_EXHAUSTED.*memory limit"):
            client.load("qwen", 0, 24)
        part = client.load("qwen", 0, 6)  # fits; later ones in the hostile mix do not
        client.forward(part.shard_id, "warm", torch.tensor([1, 2, 3]), 0)
        client.drop("warm")
        baseline = node.anon_rss()
        peak = [baseline]
        stop = threading.Event()
        errors: dict[str, int] = {}
        lock = threading.Lock()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], node.anon_rss())
                time.sleep(0.02)

        def hostile(i: int):
            c = node.client(timeout=60)
            try:
                for k in range(6):
                    try:
                        match (i + k) % 5:
                            case 0:
                                c.load("qwen", 0, 24)
                            case 1:
                                c.load("qwen", 6, 18)
                            case 2:
                                c.forward(part.shard_id, f"h{i}-{k}", torch.randint(0, 1000, (480,)), 0)
                            case 3:
                                c.ping(payload_bytes=1 << 20, reply_bytes=1 << 20)
                            case 4:
                                c.forward(part.shard_id, f"h{i}", torch.randint(0, 1000, (100,)), 0)
                    except NodeError as exc:
                        with lock:
                            errors[exc.code] = errors.get(exc.code, 0) + 1
            finally:
                c.close()

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=hostile, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        stop.set()
        sampler.join()
        caps = client.capabilities()
        held = sum(s.weight_bytes for s in caps.shards)
        assert held <= ceiling
        assert errors.get("RESOURCE_EXHAUSTED", 0) > 0, errors
        assert set(errors) <= {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}, errors
        # everything the node added during the attack stays within what its ceiling leaves free, plus the
        # scratch of the one forward running (480 positions on 6 Qwen layers: ~80 MiB) and the gRPC buffers of
        # the calls in flight
        grown = peak[0] - baseline
        print(f"anonymous RSS grew {grown >> 20} MiB under attack; refusals: {errors}")
        assert grown <= ceiling - part.weight_bytes + (96 << 20), (grown >> 20, errors)
        client.close()
    finally:
        node.stop()


# --- a secure cluster end to end -------------------------------------------------------------------------
REASON = netns.available()


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}")
def test_tls_and_token_cluster_serves_the_openai_client(tmp_path, tiny, certs):
    from edgeinfer.cluster.testbed import start_nodes
    from edgeinfer.engine.base import SamplingParams
    from edgeinfer.engine.generate import complete
    from edgeinfer.engine.shard_backend import ShardBackend

    backend = ShardBackend(tiny, threads=1)
    try:
        reference = complete(
            backend, backend.tokenize("the ship sails"), SamplingParams(temperature=0.0, max_tokens=16)
        ).text
    finally:
        backend.close()
    token = _token_file(tmp_path)
    d = certs.ca.parent
    extra = [
        *("--token-file", str(token), "--tls-ca", str(certs.ca)),
        *("--tls-cert", f"{d}/node-{{name}}.pem", "--tls-key", f"{d}/node-{{name}}.key"),
    ]
    gw = load_security(token, certs.gateway.cert, certs.gateway.key, certs.ca)
    with netns.Testbed(2, rate="100mbit") as tb:
        specs = start_nodes(tb, threads=1, log_dir=tmp_path, extra=extra, security=gw)
        # a plaintext client inside the test-bed's network gets nothing
        with pytest.raises(NodeError, match="UNAVAILABLE"):
            NodeClient(specs[0].address, "x", timeout=3).ping()
        stages = [{"node": "n0", "layers": [0, 2]}, {"node": "n1", "layers": [2, 4]}]
        doc = {
            "model": str(tiny),
            "nodes": [{"name": s.name, "address": s.address} for s in specs],
            "planner": {"stages": stages},
            "wire_dtype": "f32",
            "security": {
                "token_file": str(token),
                "tls": {"ca": str(certs.ca), "cert": str(certs.gateway.cert), "key": str(certs.gateway.key)},
            },
        }
        cfg = tmp_path / "secure.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        with ServerProcess(["--cluster", str(cfg)], log=tmp_path / "gw.log") as srv:
            oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
            chunks = oa.completions.create(
                model="tiny", prompt="the ship sails", max_tokens=16, temperature=0, stream=True
            )
            assert "".join(c.choices[0].text for c in chunks if c.choices) == reference
            for s in specs:
                c = NodeClient(s.address, s.name, timeout=5, security=gw)
                assert len(c.capabilities().shards) == 1
                c.close()
