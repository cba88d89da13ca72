"""The device client: runs the head of the planned path, ships the tensor to the edge, returns the answer.

Per input: (maybe) probe the link, re-plan if the measured link moved, run layers ``[0, split)`` (emulating
the device's speed), stop at a confident early exit if thresholds are given, encode (f16/int8 + lz4/zstd),
POST to the edge, feed the measured network time back into the ``LinkMonitor``. Given several edge servers,
the device uses one at a time; one that fails (refused, timed out, an error answer) is left alone for
``retry_after_s`` and the same request goes to the next one at once (its link is measured afresh), so a
lost edge costs no request. If no edge answers in time, answer from the best local exit that fits the
deadline and say so (``fallback``, ``reason``); the edges are then left alone for ``retry_after_s``
(device-only plans) before a probe tries them again.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import httpx
import torch

from edgeinfer.models.dnn.zoo import BranchyModel
from edgeinfer.split.compress import encode_state, wire_key
from edgeinfer.split.exits import Thresholds
from edgeinfer.split.monitor import LinkMonitor, changed
from edgeinfer.split.planner import LinkEstimate, SplitOption, all_paths, evaluate, plan_split
from edgeinfer.split.profile import Profile, device_thread, emulated_call, settle, torch_threads
from edgeinfer.split.runner import Segment, local_answer, run_segment

log = logging.getLogger("edgeinfer.split")


@dataclass
class InferenceResult:
    pred: int
    exit: str
    where: str  # device | edge | split
    split: int
    n: int
    latency_ms: float
    device_ms: float = 0.0
    transfer_ms: float = 0.0
    edge_ms: float = 0.0
    sent_bytes: int = 0
    early: bool = False
    fallback: bool = False
    reason: str | None = None
    planned: SplitOption | None = None
    link: LinkEstimate | None = None
    deadline_met: bool | None = None
    edge: str | None = None  # the edge server that answered (None: answered on the device)
    failed_over: int = 0  # edge servers that failed this request (before one answered, or all did)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("planned", "link")}
        d["planned_ms"] = self.planned.total_ms if self.planned else None
        d["link_mbit"] = self.link.bandwidth_bps / 1e6 if self.link else None
        d["link_rtt_ms"] = 1000 * self.link.rtt_s if self.link else None
        return d


class ScaleTracker:
    """Median ratio of measured to profiled compute time over the last few runs (1.0 until measured).

    Until ``min_samples`` ratios are in, the missing ones count as 1.0 (the profile), so one slow moment on
    the shared CPUs cannot move the plan on its own."""

    def __init__(self, window: int = 7, min_ms: float = 0.3, min_samples: int = 3):
        self.ratios: deque[float] = deque(maxlen=window)
        self.min_ms = min_ms
        self.min_samples = min_samples

    def observe(self, measured_ms: float, profiled_ms: float) -> None:
        if profiled_ms >= self.min_ms and measured_ms > 0:
            self.ratios.append(measured_ms / profiled_ms)

    @property
    def value(self) -> float:
        pad = [1.0] * max(0, self.min_samples - len(self.ratios))
        return statistics.median([*self.ratios, *pad]) if self.ratios else 1.0


@dataclass
class ClientConfig:
    dtype: str = "f16"
    codec: str = "lz4"
    deadline_ms: float | None = None
    objective: str = "latency"
    thresholds: Thresholds | None = None
    link: LinkEstimate | None = None  # fixed link: no probing (else measured)
    force: tuple[str, int] | None = None  # (exit, split): no planning (benchmarks of fixed splits)
    probe_every_s: float = 2.0
    retry_after_s: float = 1.0
    timeout_s: float = 5.0  # edge request timeout without a deadline
    exits: list[str] | None = None  # restrict the planner to these exits
    stats: dict = field(default_factory=dict)


class DeviceClient:
    def __init__(
        self,
        model: BranchyModel,
        device: Profile,
        edge: Profile,
        edge_url: str | Sequence[str],
        cfg: ClientConfig,
        transport: httpx.BaseTransport | None = None,
    ):
        """``edge_url``: one edge server, or several (same models, same ``edge`` profile) to fail over
        between, tried in the given order. ``transport``: the httpx transport of every edge connection
        (default httpx's own; an inspector wraps it to watch the edge calls)."""
        device.check_model(model)
        edge.check_model(model)
        self.model, self.device, self.cfg = model, device, cfg
        self.base_paths = all_paths(device, edge, wire_key(cfg.dtype, cfg.codec), cfg.exits)
        self.paths = self.base_paths
        # measured / profiled compute time per side: profiles are corrected online (shared CPUs, heat, ...)
        self.scale = {"device": ScaleTracker(), "edge": ScaleTracker()}
        self.plan_scale = (1.0, 1.0)
        torch.set_num_threads(device.device.threads)  # once: switching thread pools per call is costly
        urls = [edge_url] if isinstance(edge_url, str) else list(edge_url)
        if not urls:
            raise ValueError("the device needs at least one edge server URL")
        self.edges = [u.rstrip("/") for u in urls]
        self._clients = [
            httpx.Client(base_url=u, timeout=cfg.timeout_s, transport=transport) for u in self.edges
        ]
        self.active = 0  # index of the edge server in use
        self.down_until = [0.0] * len(self.edges)  # per edge: left alone until then (monotonic)
        self.failovers = 0
        self.monitor = LinkMonitor()
        self.suspect = False  # the last contact failed: probe (briefly) before trusting the edge again
        self.plan: SplitOption | None = None
        self.plan_link: LinkEstimate | None = None
        self.replans = 0
        self.probe_ms = 0.0

    # --- link -------------------------------------------------------------------------------------------
    def _send(self, nbytes: int, timeout: float | None = None) -> float:
        t0 = time.perf_counter()
        r = self.http.post("/v1/split/probe", content=b"\0" * nbytes, timeout=timeout or self.cfg.timeout_s)
        r.raise_for_status()
        return time.perf_counter() - t0

    @property
    def http(self) -> httpx.Client:
        return self._clients[self.active]

    @property
    def edge_url(self) -> str:
        return self.edges[self.active]

    def _edge_up(self) -> bool:
        """Is an edge server usable now? Moves to the next one not left alone when the current one is."""
        now = time.monotonic()
        for k in range(len(self.edges)):
            i = (self.active + k) % len(self.edges)
            if now >= self.down_until[i]:
                if i != self.active:
                    self._switch(i)
                return True
        return False

    def _switch(self, i: int) -> None:
        """Use edge server ``i`` from now on: its link is another link, measured afresh before planning."""
        log.warning("edge %s failed: switching to %s", self.edge_url, self.edges[i])
        self.active = i
        self.failovers += 1
        self.monitor = LinkMonitor()
        self.plan_link = None
        self.suspect = True

    def _mark_down(self) -> None:
        self.down_until[self.active] = time.monotonic() + self.cfg.retry_after_s
        self.suspect = True

    def probe(self) -> LinkEstimate | None:
        """Measure the link now (a few small and large transfers). None, and edge marked down, on failure."""
        if self.cfg.link is not None:
            return self.cfg.link
        t0 = time.perf_counter()
        try:
            if self.suspect:
                self._send(1, timeout=0.5)
            link = self.monitor.probe(self._send, rounds=2)
            self.suspect = False
            return link
        except httpx.HTTPError:
            self._mark_down()
            if self._edge_up():  # another edge server: measure its link instead
                return self.probe()
            return None
        finally:
            self.probe_ms += 1000 * (time.perf_counter() - t0)

    def link(self) -> LinkEstimate | None:
        return self.cfg.link or self.monitor.estimate()

    # --- planning -----------------------------------------------------------------------------------------
    def _local_plan(self) -> SplitOption:
        any_link = LinkEstimate(1.0)
        opts = [evaluate(p, p.n, any_link) for p in self.paths]
        dl = self.cfg.deadline_ms
        ok = [o for o in opts if dl is None or o.total_ms <= dl]
        if ok:
            return min(ok, key=lambda o: (-o.accuracy, o.total_ms))
        return replace(min(opts, key=lambda o: o.total_ms), feasible=False)

    def current_plan(self) -> SplitOption:
        if self.cfg.force:
            ex, s = self.cfg.force
            p = next(p for p in self.paths if p.exit == ex)
            return evaluate(p, s, self.link() or LinkEstimate(1e9))
        if not self._edge_up():
            return self._local_plan()
        link = self.link()
        if link is None:
            return self._local_plan()
        scale = (self.scale["device"].value, self.scale["edge"].value)
        moved = any(abs(a / b - 1) > 0.25 for a, b in zip(scale, self.plan_scale, strict=True))
        if self.plan is None or self.plan_link is None or changed(self.plan_link, link) or moved:
            self.paths = [
                replace(
                    p,
                    device_ms=tuple(scale[0] * v for v in p.device_ms),
                    edge_ms=tuple(scale[1] * v for v in p.edge_ms),
                )
                for p in self.base_paths
            ]
            self.plan_scale = scale
            power = self.device.device.power
            new = plan_split(
                self.paths, link, self.cfg.deadline_ms, self.cfg.objective, power, self.excluded()
            )
            if self.plan is not None and (new.exit, new.split) != (self.plan.exit, self.plan.split):
                self.replans += 1
            self.plan, self.plan_link = new, link
        return self.plan

    def excluded(self) -> frozenset[tuple[str, int]]:
        """(exit, split) options the planner must not take (none here; deadline mode excludes options whose
        observed tail misses the deadline)."""
        return frozenset()

    # --- inference ----------------------------------------------------------------------------------------
    def infer(self, x: torch.Tensor) -> InferenceResult:
        """Answer one input (batch of 1). Never raises for network trouble: falls back to a local exit."""
        measured = self.cfg.link is None and not self.cfg.force
        stale = self.suspect or self.monitor.estimate() is None or self.monitor.due(self.cfg.probe_every_s)
        if measured and self._edge_up() and stale:
            self.probe()
            self._forget_unmeasured()
        chosen = self.current_plan()
        slow = self.device.device.slowdown
        t0 = time.perf_counter()
        with torch_threads(self.device.device.threads), device_thread(self.device.device):
            seg = run_segment(
                self.model, chosen.exit, x, 0, chosen.split, slow, self.cfg.thresholds, sleep=False
            )
        base = {"split": chosen.split, "n": chosen.n, "planned": chosen, "link": self.link()}
        if not seg.early_exit:
            self.scale["device"].observe(1000 * seg.compute_s, self._base_ms(chosen, "device"))
        if seg.early_exit or chosen.split == chosen.n:
            settle(t0, seg.compute_s)
            ex = seg.early_exit or chosen.exit
            kw = {}
            if not self._edge_up():  # planned on the device because the edge did not answer last time
                why = "edge unreachable at the last contact: planned on the device"
                kw = {"fallback": True, "reason": f"{why}, exit {ex} (the best local exit for the deadline)"}
            return self._done(
                t0, seg.out, ex, "device", seg.compute_s, early=bool(seg.early_exit), **base, **kw
            )
        with device_thread(self.device.device):
            payload, enc_s = emulated_call(
                lambda: encode_state(seg.out, self.cfg.dtype, self.cfg.codec), slow, sleep=False
            )
        device_s = seg.compute_s + enc_s
        settle(t0, device_s)  # one sleep for the whole emulated head (see profile.settle)
        params = {"model": self.model.name, "exit": chosen.exit, "cut": chosen.split}
        th = self.cfg.thresholds
        if th is not None:
            params |= {
                "criterion": th.criterion,
                "thresholds": json.dumps({k: v for k, v in th.values.items() if math.isfinite(v)}),
            }
        failed: list[str] = []
        while True:
            timeout = self._edge_timeout(t0, seg.taps)
            t1 = time.perf_counter()
            try:
                r = self.http.post("/v1/split/tail", params=params, content=payload, timeout=timeout)
                r.raise_for_status()
                data = r.json()
                break
            except httpx.HTTPStatusError as exc:
                why = f"edge error {exc.response.status_code}: {exc.response.text[:200]}"
            except httpx.HTTPError as exc:
                why = f"edge unreachable ({type(exc).__name__})"
            failed.append(f"{self.edge_url}: {why}")
            self._mark_down()
            # the next edge server takes the same request (same cut, same payload) while time is left
            if not self._edge_up() or self._edge_timeout(t0, seg.taps) <= 0.02:
                why = "; ".join(failed) if len(failed) > 1 else why
                return self._fallback(t0, seg, why, base | {"failed_over": len(failed)})
        base |= {"edge": self.edge_url, "failed_over": len(failed)}
        wall = time.perf_counter() - t1
        if not data["early"]:
            self.scale["edge"].observe(data["edge_ms"], self._base_ms(chosen, "edge"))
        net = max(wall - data["edge_ms"] / 1000, 1e-6)
        if self.cfg.link is None:
            self._observe_transfer(len(payload) + len(r.content), net)
        logits = torch.tensor([data["logits"]])
        where = "edge" if chosen.split == 0 else "split"
        kw = {"transfer_ms": 1000 * net, "edge_ms": data["edge_ms"], "sent_bytes": len(payload)}
        return self._done(t0, logits, data["exit"], where, device_s, early=data["early"], **kw, **base)

    def _observe_transfer(self, nbytes: int, net_s: float) -> None:
        """A real upload is a bandwidth sample only if moving its bytes should take at least an RTT at the
        current estimate; smaller ones are mostly RTT + HTTP + scheduling jitter (which would drag the
        estimate down on a fast link). Two in a row far slower than expected restart the bandwidth estimate
        from themselves and ask for a probe (``LinkMonitor.slow_upload``)."""
        est = self.monitor.estimate()
        if est is None or 8.0 * nbytes / est.bandwidth_bps >= est.rtt_s:
            self.monitor.observe(nbytes, net_s)
        elif self.monitor.slow_upload(nbytes, net_s):
            self.monitor.last_probe = 0.0  # probe before the next request

    def _forget_unmeasured(self) -> None:
        """A side that the current plan does not use is never measured again: drop its compute-scale
        samples at every probe, so a slow moment (shared CPUs) cannot lock the plan out of that side for
        good. The next plan uses the profile for it; one request there measures it again."""
        if self.plan is None:
            return
        if self.plan.split == self.plan.n:  # device-only: the edge's compute is not seen
            self.scale["edge"].ratios.clear()
        if self.plan.split == 0:  # edge-only: the device's head is empty
            self.scale["device"].ratios.clear()

    def _base_ms(self, o: SplitOption, side: str) -> float:
        """Profiled (unscaled) compute time of ``o``'s device or edge part."""
        p = next(p for p in self.base_paths if p.exit == o.exit)
        return sum(p.device_ms[: o.split]) if side == "device" else sum(p.edge_ms[o.split :])

    def _edge_timeout(self, t0: float, taps: dict[int, torch.Tensor]) -> float:
        if self.cfg.deadline_ms is None:
            return self.cfg.timeout_s
        spent = time.perf_counter() - t0
        cheapest = min(
            self._local_cost_ms(e.name, taps)
            for e in self.model.exits
            if self._tap_for(e.name, taps) is not None
        )
        return max(0.02, (self.cfg.deadline_ms - cheapest) / 1000 - spent)

    def _tap_for(self, exit_name: str, taps: dict[int, torch.Tensor]) -> int | None:
        usable = [p for p in taps if p <= self.model.exit(exit_name).at]
        return max(usable) if usable else None

    def _local_cost_ms(self, exit_name: str, taps: dict[int, torch.Tensor]) -> float:
        """Predicted device time to finish exit ``exit_name`` from the deepest usable tap."""
        p = self._tap_for(exit_name, taps)
        e = self.model.exit(exit_name)
        names = self.model.backbone.names[p : e.at] + e.head.names
        return sum(self.device.layers[n].ms for n in names)

    def _fallback(self, t0: float, seg: Segment, why: str, base: dict) -> InferenceResult:
        taps = seg.taps
        spent_ms = 1000 * (time.perf_counter() - t0)
        left = math.inf if self.cfg.deadline_ms is None else self.cfg.deadline_ms - spent_ms
        cands = [e for e in self.model.exits if self._tap_for(e.name, taps) is not None]
        if self.cfg.exits:
            cands = [e for e in cands if e.name in self.cfg.exits] or cands
        fits = [e for e in cands if self._local_cost_ms(e.name, taps) <= left]
        if fits:
            best = max(fits, key=lambda e: (e.accuracy or 0.0, -self._local_cost_ms(e.name, taps)))
            note = "within the deadline" if self.cfg.deadline_ms is not None else "(no deadline)"
        else:
            best = min(cands, key=lambda e: self._local_cost_ms(e.name, taps))
            note = "the fastest local exit; the deadline cannot be met"
        with torch_threads(self.device.device.threads), device_thread(self.device.device):
            logits, spent = local_answer(self.model, taps, best.name, self.device.device.slowdown)
        reason = f"{why}: answered on the device from exit {best.name} {note}"
        return self._done(
            t0, logits, best.name, "device", seg.compute_s + spent, fallback=True, reason=reason, **base
        )

    def _done(
        self, t0: float, logits: torch.Tensor, exit_name: str, where: str, device_s: float, **kw
    ) -> InferenceResult:
        latency = 1000 * (time.perf_counter() - t0)
        dl = self.cfg.deadline_ms
        met = None if dl is None else latency <= dl
        pred = int(logits.argmax(-1)[0])
        return InferenceResult(
            pred, exit_name, where, latency_ms=latency, device_ms=1000 * device_s, deadline_met=met, **kw
        )

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
