"""A slower CPU core, emulated with a cgroup v1 CFS bandwidth quota on one thread.

A thread in a group with ``cpu.cfs_quota_us = fraction x cpu.cfs_period_us`` may run that much of every
period and is then throttled until the next one, so a computation of C CPU-seconds that spans several periods
takes about C / fraction seconds: the kernel's scheduler, not a sleep, makes the core slower. What it does not
emulate: a task shorter than the quota left in the current period runs at full speed, and the kernel hands out
quota in slices (``/proc/sys/kernel/sched_cfs_bandwidth_slice_us``, 5 ms by default) and throttles at
scheduler ticks, so a thread overruns its quota by up to a slice before it is stopped. The effective slowdown
is therefore *measured* (``Throttle.effective_slowdown``) rather than assumed to be ``1 / fraction``.

cgroup v1 places threads, not processes (``tasks`` takes thread ids): only the thread that runs the device's
layers is throttled, not the event loop, the HTTP client or the code measuring it (``Throttle.process`` places
a whole process instead: an edge server pinned to its quota). Needs root and the v1 cpu controller at
``/sys/fs/cgroup/cpu``.

A quota is a cap, not a guarantee: on cores shared with other work a thread may get less than its quota. The
group's weight (``cpu.shares``) is therefore the kernel's maximum by default, so its threads are scheduled
before the root group's tasks and get their quota whatever else runs: the emulated speed is the quota's, not
the machine's load (a CPU-bound loop that took 3.5x its CPU time in wall time in the root group at load
average 9 took 1.1x in a one-core group of that weight).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/cpu")
PREFIX = "edgeinfer-cpu-"
PINNED_SHARES = 262_144  # the kernel's maximum cpu.shares (the root group's tasks weigh 1024 each)


class QuotaError(RuntimeError):
    pass


def cpu_cgroup(tid: int | str, pid: int | str = "self") -> str | None:
    """The cpu cgroup (path below ``ROOT``) that thread ``tid`` of process ``pid`` is in; None if the
    thread is in no cpu hierarchy."""
    for line in Path(f"/proc/{pid}/task/{tid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return None


def available() -> str | None:
    """None if a CPU quota can be set here, else the reason."""
    if not (ROOT / "cpu.cfs_quota_us").is_file():
        return f"no cgroup v1 cpu controller at {ROOT}"
    if os.geteuid() != 0:
        return "a cgroup CPU quota needs root"
    return None


def cleanup_leftovers() -> list[str]:
    """Remove groups left by processes that are gone (their threads are gone too, so the groups are empty)."""
    removed = []
    for d in ROOT.glob(PREFIX + "*"):
        pid = d.name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                d.rmdir()
                removed.append(d.name)
    return removed


class Throttle:
    """A cgroup ``ROOT/edgeinfer-cpu-<pid>-<n>`` whose threads get ``fraction`` of one core per period."""

    _count = 0

    def __init__(self, fraction: float, period_us: int = 10_000, shares: int = PINNED_SHARES):
        if not 0.0 < fraction <= 1.0:
            raise QuotaError(f"a CPU quota is a fraction of one core in (0, 1], got {fraction}")
        if not 1_000 <= period_us <= 1_000_000:
            raise QuotaError(f"the CFS period must be 1000..1000000 us, got {period_us}")
        reason = available()
        if reason:
            raise QuotaError(reason)
        if not 2 <= shares <= PINNED_SHARES:
            raise QuotaError(f"cpu.shares must be 2..{PINNED_SHARES}, got {shares}")
        if fraction * period_us < 1_000:
            raise QuotaError(f"quota {fraction} x {period_us} us is below the kernel's minimum of 1000 us")
        cleanup_leftovers()
        Throttle._count += 1
        self.fraction, self.period_us = fraction, period_us
        self.path = ROOT / f"{PREFIX}{os.getpid()}-{Throttle._count}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(round(fraction * period_us)))
        (self.path / "cpu.shares").write_text(str(shares))

    @contextlib.contextmanager
    def thread(self) -> Iterator[None]:
        """Throttle the calling thread inside the block (and put it back in its group after)."""
        tid = str(threading.get_native_id())
        # back where it was after the block (a pinned process's group, or the root)
        home = ROOT / (cpu_cgroup(tid) or "/").lstrip("/")
        (self.path / "tasks").write_text(tid)
        try:
            yield
        finally:
            ((home if home.is_dir() else ROOT) / "tasks").write_text(tid)

    def place(self, pid: int) -> None:
        """Every thread of process ``pid`` in the group from now on (its children start in it too, and an
        ``exec`` keeps it there: e.g. a server started with ``ip netns exec``, which cannot see the cgroup
        file system from inside its namespace)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    @contextlib.contextmanager
    def process(self, pid: int | None = None) -> Iterator[None]:
        """Every thread of process ``pid`` (default: this one), and the threads it starts, in the group inside
        the block (back in the root group after)."""
        pid = os.getpid() if pid is None else pid
        self.place(pid)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the process may have exited
                (ROOT / "cgroup.procs").write_text(str(pid))

    def stats(self) -> dict[str, int]:
        """The group's cpu.stat: nr_periods, nr_throttled, throttled_time (ns)."""
        out = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            k, v = line.split()
            out[k] = int(v)
        return out

    def effective_slowdown(self, fn: Callable[[], object], seconds: float = 1.0, warmup: int = 2) -> float:
        """Wall time / CPU time of ``fn`` run back to back under the quota for about ``seconds``."""
        with self.thread():
            for _ in range(warmup):
                fn()
            w0, c0 = time.perf_counter(), time.thread_time()
            while time.perf_counter() - w0 < seconds:
                fn()
            wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
        return wall / max(cpu, 1e-9)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            for tid in (self.path / "tasks").read_text().split():
                with contextlib.suppress(OSError):  # a thread that has exited meanwhile
                    (ROOT / "tasks").write_text(tid)
            self.path.rmdir()

    def __enter__(self) -> Throttle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: dict[tuple[float, int], Throttle] = {}
_lock = threading.Lock()


def shared(fraction: float, period_us: int = 10_000) -> Throttle:
    """One group per quota in this process: every device client of the process draws on the same budget, as
    the layers of one device would (separate groups would each start with a full period's quota)."""
    with _lock:
        t = _shared.get((fraction, period_us))
        if t is None:
            t = _shared[(fraction, period_us)] = Throttle(fraction, period_us)
            atexit.register(t.close)
        return t
