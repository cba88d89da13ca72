"""The device emulated by a cgroup CPU quota: a profile made under it, and a device client throttled by it."""

from __future__ import annotations

import time

import pytest
import torch

from edgeinfer.models.dnn import zoo
from edgeinfer.split.profile import DeviceSpec, device_thread, load_device, profile_model, torch_threads
from edgeinfer.testbed import cpuquota
from edgeinfer.testbed.cpuquota import cpu_cgroup

needs_quota = pytest.mark.skipif(cpuquota.available() is not None, reason=str(cpuquota.available()))


def test_quota_specs_are_validated():
    spec = load_device("rpi4-like-quota")
    assert spec.cpu_quota == 0.125 and spec.slowdown == 1.0 and "NOT a measurement" in spec.note
    with pytest.raises(ValueError, match="not both"):
        DeviceSpec.from_dict({"name": "x", "cpu_quota": 0.5, "slowdown": 4.0})
    with pytest.raises(ValueError, match="fraction of one core"):
        DeviceSpec.from_dict({"name": "x", "cpu_quota": 2.0})
    assert DeviceSpec.from_dict({"name": "x"}).cpu_quota == 0.0  # older profiles load unchanged


@needs_quota
def test_a_profile_under_a_quota_measures_the_slower_core_and_adds_up_to_a_pass():
    model = zoo.load("digitnet-small")
    x = zoo.dataset("digitnet-small")["val"].x[:4]
    spec = DeviceSpec("quarter-core", threads=1, cpu_quota=0.25, cpu_period_us=8000)
    prof = profile_model(model, spec, x, warmup=1, repeats=8)
    slow = prof.meta["cpu_quota_effective_slowdown"]
    assert 2.0 < slow < 10.0  # nominally 4: the kernel's quota slices make it less, other load more
    fast = profile_model(model, load_device("edge-host"), x, warmup=1, repeats=8)
    path = model.final.name
    per_layer = [prof.layers[n].ms for n in prof.exits[path]["path"]]  # at the quota's rate
    assert sum(per_layer) > 1.5 * sum(fast.path_ms(path))
    # the layers' sum over the path is what a whole throttled pass takes back to back (within the quota's
    # jitter; a single request after an idle period may run faster: the measured heads, below)
    chain = model.path(path)
    with torch_threads(spec.threads), device_thread(spec), torch.no_grad():  # 1 thread, as the device
        chain.run(x[:1])
        t0 = time.perf_counter()
        for i in range(20):
            chain.run(x[i % 4 : i % 4 + 1])
        wall_ms = 1000 * (time.perf_counter() - t0) / 20
    assert 0.25 < wall_ms / sum(per_layer) < 5.0  # other load on the cores moves it a lot


@needs_quota
def test_a_pinned_group_has_the_highest_weight_and_takes_a_whole_process():
    """The edge server's (and a test's) speed is pinned by putting its whole process in a quota group whose
    weight is the kernel's maximum: every thread moves in, and back out after."""
    import os
    import threading

    with cpuquota.Throttle(1.0) as group:
        assert int((group.path / "cpu.shares").read_text()) == cpuquota.PINNED_SHARES
        pid = os.getpid()
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        with group.process():
            assert all(cpu_cgroup(t, pid) == "/" + group.path.name for t in tids)
            seen: list[str] = []
            th = threading.Thread(target=lambda: seen.append(cpu_cgroup(threading.get_native_id(), pid)))
            th.start()
            th.join()
            assert seen == ["/" + group.path.name]  # threads started inside inherit the group
        assert all(cpu_cgroup(t, pid) == "/" for t in tids if os.path.exists(f"/proc/{pid}/task/{t}"))
    with pytest.raises(cpuquota.QuotaError, match="cpu.shares"):
        cpuquota.Throttle(0.5, shares=1)


@needs_quota
def test_a_quota_profile_measures_every_head_as_a_request_runs_it():
    """Under a quota a short head runs on the budget left in a period, so the profile times each head
    [0, s) on its own; the per-layer costs the planner sums are their increments (a running maximum, so
    never negative) and add up to every measured head, also after a JSON round trip."""
    from edgeinfer.split.planner import all_paths
    from edgeinfer.split.profile import Profile

    model = zoo.load("digitnet-small")
    x = zoo.dataset("digitnet-small")["val"].x[:4]
    spec = DeviceSpec("eighth-core", threads=1, cpu_quota=0.125, cpu_period_us=8000)
    prof = profile_model(model, spec, x, warmup=1, repeats=3)
    assert set(prof.heads) == {e.name for e in model.exits}
    for e in model.exits:
        head, per_layer = prof.heads[e.name], prof.path_ms(e.name)
        assert len(head) == len(model.path(e.name)) + 1 and head[0] == 0.0
        assert all(v >= 0 for v in per_layer)
        assert sum(per_layer) == pytest.approx(max(head))
        for s in range(1, len(head)):
            assert sum(per_layer[:s]) == pytest.approx(max(head[: s + 1]))
    again = Profile.from_dict(prof.to_dict())
    assert again.heads == prof.heads
    path = next(p for p in all_paths(again, again) if p.exit == model.final.name)
    assert sum(path.device_ms) == pytest.approx(max(prof.heads[model.final.name]))
    bad = prof.to_dict() | {"heads": {model.final.name: [0.0, 1.0]}}
    with pytest.raises(ValueError, match="one time per split"):
        Profile.from_dict(bad)
    assert (
        load_device("edge-host").cpu_quota == 0
        and not profile_model(model, load_device("edge-host"), x, 0, 2).heads
    )
