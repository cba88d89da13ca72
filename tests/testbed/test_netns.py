"""The namespace test-bed: real namespaces, veth, tbf; every test tears down what it built."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from edgeinfer.testbed import netns
from edgeinfer.testbed.netns import Testbed, TestbedError, list_namespaces

REASON = netns.available()

# a TCP sink: counts the bytes received on a connection and answers with the count
SINK = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen()
while True:
    c, _ = s.accept(); n = 0
    while b := c.recv(1 << 16): n += len(b)
    c.sendall(str(n).encode()); c.close()
"""


def _send(ip: str, nbytes: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection((ip, 9000), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with s:
        s.sendall(b"x" * nbytes)
        s.shutdown(socket.SHUT_WR)
        return int(s.recv(64))


def test_bad_arguments():
    with pytest.raises(ValueError, match="bad rate 'fast'"):
        Testbed(2, rate="fast")
    with pytest.raises(ValueError, match="name"):
        Testbed(2, name="Bad_Name")
    with pytest.raises(ValueError, match="n_hosts"):
        Testbed(0)


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}")
def test_up_reach_rate_cut_restore_down():
    with Testbed(2, rate="10mbit") as tb:
        assert sorted(list_namespaces(tb.name)) == [h.ns for h in tb.hosts]
        assert tb.ip(0) != tb.ip(1)
        tb.popen(0, [sys.executable, "-c", SINK])
        # root namespace -> host 0, through a 10 Mbit/s link: 1.5 MB needs >= ~1.2 s
        t0 = time.monotonic()
        assert _send(tb.ip(0), 1_500_000) == 1_500_000
        assert time.monotonic() - t0 > 0.8, "tbf did not limit the link"
        # host 1 -> host 0 (host to host through the bridge)
        out = tb.exec(
            1,
            [
                sys.executable,
                "-c",
                f"import socket; s = socket.create_connection(('{tb.ip(0)}', "
                "9000), timeout=5); s.sendall(b'abc'); s.shutdown(1); print(s.recv(9).decode())",
            ],
        )
        assert out.stdout.strip() == "3"
        tb.cut(0)
        with pytest.raises(OSError):
            socket.create_connection((tb.ip(0), 9000), timeout=0.5)
        tb.restore(0)
        assert _send(tb.ip(0), 10) == 10
        tb.set_rate(0, None)
        assert tb.hosts[0].rate is None
        name = tb.name
    assert list_namespaces(name) == []
    assert not (netns.state_dir() / f"{name}.json").exists()
    tb.down()  # idempotent


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}")
def test_cleanup_on_failure_and_leftovers():
    with pytest.raises(RuntimeError, match="boom"), Testbed(1, rate=None) as tb:
        name = tb.name
        raise RuntimeError("boom")
    assert list_namespaces(name) == []
    # a test-bed whose owner "died": built, then forgotten without down()
    tb = Testbed(1, rate="100mbit").up()
    state_file = netns.state_dir() / f"{tb.name}.json"
    state = json.loads(state_file.read_text())
    state["owner_pid"] = 999_999_999
    state_file.write_text(json.dumps(state))
    assert tb.name in netns.cleanup_leftovers()
    assert list_namespaces(tb.name) == []


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}")
def test_duplicate_name_refused():
    with Testbed(1, rate=None) as tb:
        with pytest.raises(TestbedError, match="exists"):
            Testbed(1, rate=None, name=tb.name).up()
        assert list_namespaces(tb.name) == [tb.hosts[0].ns]  # the failed twin did not remove the first
    assert list_namespaces(tb.name) == []


# builds a test-bed with a process inside, prints its name, then waits to be killed or exits without down()
OWNER = """
import sys, time
from edgeinfer.testbed.netns import Testbed
tb = Testbed(2, rate="10mbit").up()
tb.popen(0, [sys.executable, "-c", "import time; time.sleep(600)"])
print(tb.name, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)
time.sleep(600)
"""


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}")
@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_owner_sigterm_or_exit_removes_the_testbed(how):
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", OWNER, how], stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    try:
        assert name and len(list_namespaces(name)) == 2
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == (128 + signal.SIGTERM if how == "sigterm" else 0)
        left = list_namespaces(name), (netns.state_dir() / f"{name}.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        if name:
            netns.teardown(name)  # nothing stays behind, even when the check below fails
    assert left == ([], False)
