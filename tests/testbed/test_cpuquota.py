"""The CPU-quota device emulation: a real cgroup v1 CFS quota on one thread (skipped where there is none)."""

from __future__ import annotations

import threading
import time

import pytest

from edgeinfer.testbed import cpuquota
from edgeinfer.testbed.cpuquota import QuotaError, Throttle, cpu_cgroup

needs_quota = pytest.mark.skipif(cpuquota.available() is not None, reason=str(cpuquota.available()))


def _spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time."""
    c0 = time.thread_time()
    while time.thread_time() - c0 < seconds:
        sum(range(1000))


def test_bad_quotas_are_refused():
    with pytest.raises(QuotaError, match="fraction of one core"):
        Throttle(0.0)
    with pytest.raises(QuotaError, match="fraction of one core"):
        Throttle(1.5)
    with pytest.raises(QuotaError, match="period"):
        Throttle(0.5, period_us=10)


@needs_quota
def test_a_quarter_core_makes_cpu_work_take_several_times_longer_on_that_thread_only():
    with Throttle(0.25, period_us=10_000) as t:
        assert (t.path / "cpu.cfs_quota_us").read_text().strip() == "2500"
        # another thread of the same process (started before: new threads inherit their creator's group)
        seen: list[str] = []
        go = threading.Event()
        th = threading.Thread(target=lambda: (go.wait(), seen.append(cpu_cgroup(threading.get_native_id()))))
        th.start()
        w0 = time.perf_counter()
        with t.thread():
            assert cpu_cgroup(threading.get_native_id()) == "/" + t.path.name
            go.set()
            th.join()
            _spin(0.2)
        throttled = time.perf_counter() - w0
        assert t.stats()["nr_throttled"] > 0
        assert cpu_cgroup(threading.get_native_id()) == "/"  # back in the root group
        path = t.path
    assert seen == ["/"]
    assert not path.exists()  # removed on close
    # 0.2 s of CPU at a quarter core is ~0.8 s of wall time (quota overruns make it somewhat less)
    assert throttled > 0.45


@needs_quota
def test_effective_slowdown_is_measured_and_close_to_the_quota():
    with Throttle(0.25, period_us=10_000) as t:
        s = t.effective_slowdown(lambda: _spin(0.005), seconds=0.6)
    assert 2.0 < s < 8.0  # nominally 4; overruns lower it, other load on the machine raises it


@needs_quota
def test_device_clients_of_one_process_share_one_group():
    a, b = cpuquota.shared(0.5, 8_000), cpuquota.shared(0.5, 8_000)
    assert a is b and a.path.is_dir()
    assert cpuquota.shared(0.25, 8_000) is not a
