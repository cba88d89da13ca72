"""A network test-bed on one machine: N hosts in network namespaces, each joined to a bridge by a veth pair
whose two ends are rate-limited with ``tc tbf``.

Topology (``name`` keeps parallel test-beds apart)::

    root namespace: bridge ei<name>b  10.77.X.1/24      <- tests and the gateway run here
        |-- ei<name>v0 ==veth== eth0 in netns ei-<name>-0   10.77.X.10
        |-- ei<name>v1 ==veth== eth0 in netns ei-<name>-1   10.77.X.11
        ...

Traffic to host i leaves through ``ei<name>v<i>`` (tbf), traffic from host i through its ``eth0`` (tbf), so
both directions of every host's link are limited and host<->host traffic crosses two limited links.
``netem`` is not available here: there is no delay emulation in this module.

The subnet X is chosen under a file lock among those not in use; a state file per test-bed (in
``state_dir()``) lets ``down`` by name and ``cleanup_leftovers`` find and remove everything again, also
after a crash. ``down`` is idempotent. A test-bed that is up is also removed when its process exits without
calling ``down`` (atexit) or is stopped by SIGTERM (e.g. ``timeout``): the first ``up`` in a process installs
a SIGTERM handler that raises ``SystemExit`` if the signal still has its default action.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.units import parse_rate_bps

PREFIX = "ei"
SUBNET_BASE = "10.77"
HOST_OFFSET = 10  # host i has address .(10 + i)
MAX_HOSTS = 64
_NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")


class TestbedError(RuntimeError):
    __test__ = False  # not a pytest class


_LIVE: weakref.WeakSet = weakref.WeakSet()  # test-beds of this process that are up and not detached
_GUARD_INSTALLED = False


def _down_live() -> None:
    for tb in list(_LIVE):
        with contextlib.suppress(Exception):
            tb.down()


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds `with Testbed(...)` blocks; atexit removes the rest


def _install_guard() -> None:
    """Remove this process's test-beds on exit and on SIGTERM (only if SIGTERM has its default action)."""
    global _GUARD_INSTALLED
    if _GUARD_INSTALLED:
        return
    _GUARD_INSTALLED = True
    atexit.register(_down_live)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)


def state_dir() -> Path:
    root = Path(os.environ.get("EDGEINFER_TESTBED_STATE", "/run/edgeinfer-testbed"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path("/tmp/edgeinfer-testbed")
        root.mkdir(parents=True, exist_ok=True)
    return root


def available() -> str | None:
    """None if test-beds can be built here, else the reason why not (for pytest skips)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if ok.returncode != 0:
        return f"`ip netns add` fails: {ok.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    index: int
    ns: str
    ip: str
    veth: str  # root-namespace end of the host's link
    rate: str | None


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _tbf(dev: str, rate: str | None, ns: str | None = None) -> None:
    pre = ["ip", "netns", "exec", ns] if ns else []
    if rate is None:
        _run([*pre, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
        return
    bits = parse_rate_bps(rate)
    burst = max(128 * 1024, int(bits / 8 / 100))  # >= 10 ms of traffic, and never below a GSO packet
    _run(
        [*pre, "tc", "qdisc", "replace", "dev", dev, "root", "tbf"]
        + ["rate", f"{int(bits)}bit", "burst", str(burst), "latency", "100ms"]
    )


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with (state_dir() / ".lock").open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _used_subnets() -> set[int]:
    used = set()
    out = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    for m in re.finditer(rf"inet {re.escape(SUBNET_BASE)}\.(\d+)\.", out):
        used.add(int(m.group(1)))
    for f in state_dir().glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.add(int(json.loads(f.read_text())["subnet"]))
    return used


class Testbed:
    """``with Testbed(3, rate="100mbit") as tb: tb.popen(0, [...]); tb.ip(1)`` — always torn down on exit."""

    __test__ = False  # not a pytest class

    def __init__(self, n_hosts: int, rate: str | None = "1gbit", name: str | None = None):
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, got {n_hosts}")
        if rate is not None:
            parse_rate_bps(rate)
        self.name = name or secrets.token_hex(3)
        if not _NAME_RE.match(self.name):
            raise ValueError(f"test-bed name {self.name!r}: use 1-8 lowercase letters or digits")
        self.n_hosts = n_hosts
        self.rate = rate
        self.subnet: int | None = None
        self.hosts: list[Host] = []
        self._procs: list[subprocess.Popen] = []
        self._cut: set[int] = set()
        self.detached = False
        self._claimed = False  # the name is ours (state file written): down() may remove it

    # --- names -------------------------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.name}b"

    @property
    def gateway_ip(self) -> str:
        """Address of the root namespace on the bridge (where tests and the gateway live)."""
        return f"{SUBNET_BASE}.{self.subnet}.1"

    @property
    def state_file(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def ip(self, i: int) -> str:
        return self.hosts[i].ip

    # --- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Testbed:
        reason = available()
        if reason:
            raise TestbedError(f"cannot build a test-bed: {reason}")
        _install_guard()
        _LIVE.add(self)
        try:
            with _lock():
                if self.state_file.exists():
                    raise TestbedError(f"a test-bed named {self.name!r} exists; `edgeinfer testbed down` it")
                free = [x for x in range(1, 255) if x not in _used_subnets()]
                if not free:
                    raise TestbedError(f"no free {SUBNET_BASE}.X.0/24 subnet left")
                self.subnet = free[0]
                self._save()
                self._claimed = True
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        br = self.bridge
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway_ip}/24", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        for i in range(self.n_hosts):
            ns = f"{PREFIX}-{self.name}-{i}"
            veth, peer = f"{PREFIX}{self.name}v{i}", f"{PREFIX}{self.name}p{i}"
            host = Host(i, ns, f"{SUBNET_BASE}.{self.subnet}.{HOST_OFFSET + i}", veth, self.rate)
            self.hosts.append(host)
            self._save()
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
            _run(["ip", "link", "set", peer, "netns", ns])
            _run(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
            _run(["ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "link", "set", veth, "master", br])
            _run(["ip", "link", "set", veth, "up"])
            self.set_rate(i, self.rate)

    def down(self) -> None:
        """Stop every process started here, delete namespaces, links and the state file. Idempotent."""
        for proc in self._procs:
            _terminate(proc)
        self._procs.clear()
        if self._claimed:
            teardown(self.name, self.n_hosts)
        self._claimed = False
        self.hosts = []
        _LIVE.discard(self)

    def detach(self) -> None:
        """Leave the test-bed (and the processes started in it) running after this process exits;
        ``teardown(name)`` or ``edgeinfer testbed down`` removes it later."""
        self._procs.clear()
        self.detached = True
        self._save()
        _LIVE.discard(self)

    def _save(self) -> None:
        state = {
            "detached": self.detached,
            "name": self.name,
            "subnet": self.subnet,
            "n_hosts": self.n_hosts,
            "rate": self.rate,
            "owner_pid": os.getpid(),
            "hosts": [h.__dict__ for h in self.hosts],
        }
        self.state_file.write_text(json.dumps(state, indent=1))

    # --- link control ------------------------------------------------------------------------------------
    def set_rate(self, i: int, rate: str | None) -> None:
        """Limit both directions of host i's link to ``rate`` (None: unlimited)."""
        host = self.hosts[i]
        _tbf(host.veth, rate)
        _tbf("eth0", rate, ns=host.ns)
        host.rate = rate
        self._save()

    def cut(self, i: int) -> None:
        """Disconnect host i (its link goes down; processes keep running)."""
        _run(["ip", "link", "set", self.hosts[i].veth, "down"])
        self._cut.add(i)

    def restore(self, i: int) -> None:
        _run(["ip", "link", "set", self.hosts[i].veth, "up"])
        self._cut.discard(i)
        deadline = time.monotonic() + 5  # bounded wait until the bridge port forwards again
        while time.monotonic() < deadline:
            out = _run(["ip", "-d", "link", "show", self.hosts[i].veth], check=False).stdout
            if "state forwarding" in out or "state UP" in out:
                break
            time.sleep(0.05)

    # --- processes ---------------------------------------------------------------------------------------
    def popen(self, i: int, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside host i's namespace (own session; killed by ``down``)."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[i].ns, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def exec(self, i: int, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``argv`` to completion inside host i's namespace; raises on a non-zero exit."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.hosts[i].ns, *argv], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise TestbedError(
                f"{argv} in {self.hosts[i].ns} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc


def _terminate(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


def _kill_ns_pids(ns: str) -> None:
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
                alive.append(pid)
        if not alive:
            return
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if Path(f"/proc/{p}").exists()]


def teardown(name: str, n_hosts: int | None = None) -> None:
    """Remove everything belonging to test-bed ``name`` (whether or not this process built it)."""
    state = state_dir() / f"{name}.json"
    if n_hosts is None:
        try:
            n_hosts = int(json.loads(state.read_text())["n_hosts"])
        except (OSError, ValueError, KeyError):
            n_hosts = 0
    namespaces = set(list_namespaces(name))
    namespaces |= {f"{PREFIX}-{name}-{i}" for i in range(n_hosts)}
    existing = set(list_namespaces())
    for ns in sorted(namespaces & existing):
        _kill_ns_pids(ns)
        _run(["ip", "netns", "del", ns], check=False)
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for m in re.finditer(rf"^\d+: ({PREFIX}{name}[bvp]\d*)[@:]", links, re.MULTILINE):
        _run(["ip", "link", "del", m.group(1)], check=False)
    state.unlink(missing_ok=True)


def list_namespaces(name: str | None = None) -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    prefix = f"{PREFIX}-{name}-" if name else f"{PREFIX}-"
    return [n for n in names if n.startswith(prefix)]


def list_testbeds() -> list[dict]:
    """State of every test-bed with a state file, plus ``alive`` (its owner process still runs)."""
    beds = []
    for f in sorted(state_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(f.read_text())
            state["alive"] = Path(f"/proc/{state.get('owner_pid', 0)}").exists()
            beds.append(state)
    return beds


def cleanup_leftovers(include_detached: bool = False) -> list[str]:
    """Tear down test-beds whose owner process died and orphan ``ei-*`` namespaces; detached test-beds
    (``edgeinfer testbed up``) only with ``include_detached``. Returns the names removed."""
    removed = []
    for state in list_testbeds():
        if state["alive"] or (state.get("detached") and not include_detached):
            continue
        teardown(state["name"], state.get("n_hosts"))
        removed.append(state["name"])
    known = {s["name"] for s in list_testbeds()}
    for ns in list_namespaces():
        parts = ns.split("-")
        if len(parts) == 3 and parts[1] not in known:
            teardown(parts[1])
            removed.append(parts[1])
    return sorted(set(removed))
