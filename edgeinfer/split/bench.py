"""The split-computing benchmark: real transfers over a test-bed link (network namespace + tbf).

The edge server runs inside a test-bed host; this process is the device (emulated by a device spec). For
every link rate: every split of the final exit is forced and measured (so device-only, edge-only and the best
split are *measured*, not predicted), then the adaptive client (link monitor + planner) is measured and its
choice recorded. Also: accuracy vs latency of the exits (and of the calibrated early-exit cascade), and the
bytes on the wire at every cut with and without compression.
"""

from __future__ import annotations

import atexit
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx

from edgeinfer.bench.table import Table, fmt_num
from edgeinfer.split.profile import DeviceSpec
from edgeinfer.testbed import cpuquota


@dataclass
class SplitBenchConfig:
    model: str = "digitnet"
    rates: list[str] = field(default_factory=lambda: ["1mbit", "5mbit", "20mbit", "100mbit", "1gbit"])
    requests: int = 15
    warm: int = 3
    dtype: str = "f16"
    codec: str = "lz4"
    device: str = "rpi4-like"
    edge: str = "edge-host"
    delay_ms: float = 0.0
    port: int = 8090
    accuracy_inputs: int | None = None  # test inputs for the exits / cascades part (None: the whole split)
    deadline_ms: float | None = (
        None  # deadline mode at every rate (all exits, the runtime picks exit + split)
    )
    deadline_requests: int = 200  # requests per rate in deadline mode
    link_change: tuple[str, str] | None = None  # (from, to): the link rate changes in the middle of a run
    change_requests: int = 60  # requests on each side of the change
    dag: bool = False  # the DAG chains: cuts inside residual blocks too, carrying every live tensor
    pin: bool = False  # pin the speeds: the edge server and this process each in a one-core cgroup CPU group
    # of the highest weight (testbed.cpuquota), so other work on the cores does not decide the measurements


NAN = float("nan")


def _fields(cls, d: dict) -> dict:
    """The keys of ``d`` that are fields of dataclass ``cls`` (older recorded runs lack newer fields)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _ci(v) -> tuple[float, float]:
    return (float("nan"), float("nan")) if v is None else (float(v[0]), float(v[1]))


@dataclass
class SplitMeasure:
    """One forced split at one rate: medians over the requests (the device energy from its power model)."""

    split: int
    median_ms: float
    sent_bytes: float
    fallbacks: int
    ci95_ms: tuple[float, float] = (NAN, NAN)
    device_ms: float = NAN  # the parts and the energy: not in runs recorded before they were measured
    transfer_ms: float = NAN
    edge_ms: float = NAN
    energy_mj: float = NAN

    @classmethod
    def from_dict(cls, d: dict) -> SplitMeasure:
        d = _fields(cls, d)
        return cls(**{**d, "ci95_ms": _ci(d.get("ci95_ms"))})


@dataclass
class DeadlineResult:
    """Deadline mode at one rate: every exit allowed; the runtime picks exit and split to meet it."""

    deadline_ms: float
    requests: int
    met: int
    accuracy: float  # of the answers given (labels of the test split)
    median_ms: float
    p99_ms: float
    max_ms: float
    exits: dict[str, int]
    splits: dict[int, int]
    fallbacks: int
    replans: int
    stretch: float | None = (
        None  # the guard's q99 measured ÷ predicted at the end (the budget: deadline ÷ it)
    )

    @property
    def met_fraction(self) -> float:
        return self.met / self.requests if self.requests else float("nan")

    @classmethod
    def from_dict(cls, d: dict) -> DeadlineResult:
        d = _fields(cls, d)
        return cls(**{**d, "splits": {int(k): v for k, v in d["splits"].items()}})


@dataclass
class RateResult:
    rate: str
    link_estimate_mbit: float | None
    link_estimate_rtt_ms: float | None
    splits: list[SplitMeasure]
    predicted_ms: list[float]  # from the profiles as measured
    predicted_corrected_ms: list[float]  # with the client's online compute-scale correction
    compute_scale: dict[str, float]
    device_only_ms: float
    edge_only_ms: float
    best_split: int
    best_ms: float
    chosen_splits: dict[int, int]
    chosen_ms: float
    chosen_fallbacks: int
    chosen_replans: int
    chosen_probe_ms_total: float
    chosen_split_measured_ms: float
    chosen_ci95_ms: tuple[float, float] = (NAN, NAN)
    deadline: DeadlineResult | None = None

    @classmethod
    def from_dict(cls, d: dict) -> RateResult:
        d = _fields(cls, d)
        d["splits"] = [SplitMeasure.from_dict(x) for x in d["splits"]]
        d["chosen_splits"] = {int(k): v for k, v in d["chosen_splits"].items()}
        d["chosen_ci95_ms"] = _ci(d.get("chosen_ci95_ms"))
        d["deadline"] = DeadlineResult.from_dict(d["deadline"]) if d.get("deadline") else None
        return cls(**d)


@dataclass
class ExitResult:
    exit: str
    test_accuracy: float  # measured at training time
    runtime_test_accuracy: float  # what the device client answered
    device_ms: float
    mean_ms: float
    profiled_ms: float


@dataclass
class CascadeResult:
    criterion: str
    thresholds: dict[str, float]
    val: dict
    runtime_test_accuracy: float
    device_ms: float
    mean_ms: float
    test_accuracy: float
    exit_rate: dict[str, int]


@dataclass
class CutBytes:
    """Bytes on the wire at one cut: raw f32 and every dtype+codec (``sizes``: "f16+lz4" -> bytes)."""

    cut: int
    after: str
    f32: int
    sizes: dict[str, int]

    def to_dict(self) -> dict:
        return {"cut": self.cut, "after": self.after, "f32": self.f32, **self.sizes}

    @classmethod
    def from_dict(cls, d: dict) -> CutBytes:
        rest = {k: v for k, v in d.items() if k not in ("cut", "after", "f32")}
        return cls(d["cut"], d["after"], d["f32"], rest)


@dataclass
class ChangeSample:
    """One request of the link-change run."""

    t_s: float  # since the start of the run
    after_change: bool
    latency_ms: float
    split: int
    exit: str
    link_mbit: float | None
    deadline_met: bool | None = None


@dataclass
class LinkChangeResult:
    """The link rate changes in the middle of a run (tc on the test-bed); the adaptive client re-plans."""

    from_rate: str
    to_rate: str
    samples: list[ChangeSample]
    split_before: int  # the plan's split at the change
    split_after: int  # its split at the end
    requests_to_replan: int | None  # requests after the change until the plan's split moved (None: never)
    seconds_to_replan: float | None
    transient_max_ms: float  # the slowest request between the change and the re-plan (itself included)
    before_ms: float  # median before the change
    after_ms: float  # median after the re-plan
    after_max_ms: float
    best_after_ms: float | None  # the best forced split's median at to_rate (from the sweep), if measured
    replans: int
    deadline: DeadlineResult | None = None  # the deadline-mode client, interleaved, across the change

    @classmethod
    def from_dict(cls, d: dict) -> LinkChangeResult:
        d = _fields(cls, d)
        d["samples"] = [ChangeSample(**x) for x in d["samples"]]
        d["deadline"] = DeadlineResult.from_dict(d["deadline"]) if d.get("deadline") else None
        return cls(**d)


@dataclass
class SplitBenchResult:
    config: SplitBenchConfig
    device: DeviceSpec
    n_layers: int
    rates: list[RateResult]
    uptime_load: list[str]
    exits: list[ExitResult] = field(default_factory=list)
    cascades: list[CascadeResult] = field(default_factory=list)
    bytes: list[CutBytes] = field(default_factory=list)
    link_change: LinkChangeResult | None = None

    def to_dict(self) -> dict:
        """The JSON the benchmark writes (``--out``); ``from_dict`` reads it back, older runs included."""
        d = asdict(self)
        d["device"] = self.device.to_dict()
        d["bytes"] = [c.to_dict() for c in self.bytes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SplitBenchResult:
        cfg = dict(_fields(SplitBenchConfig, d["config"]))
        if cfg.get("link_change"):
            cfg["link_change"] = tuple(cfg["link_change"])
        return cls(
            config=SplitBenchConfig(**cfg),
            device=DeviceSpec.from_dict(d["device"]),
            n_layers=d["n_layers"],
            rates=[RateResult.from_dict(r) for r in d["rates"]],
            uptime_load=list(d.get("uptime_load", [])),
            exits=[ExitResult(**_fields(ExitResult, e)) for e in d.get("exits", [])],
            cascades=[CascadeResult(**_fields(CascadeResult, c)) for c in d.get("cascades", [])],
            bytes=[CutBytes.from_dict(c) for c in d.get("bytes", [])],
            link_change=LinkChangeResult.from_dict(d["link_change"]) if d.get("link_change") else None,
        )


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _energy_mj(power, r) -> float:
    return power.compute_w * r.device_ms + power.tx_w * r.transfer_ms + power.idle_w * r.edge_ms


def median_ci95(xs: list[float]) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the median: order statistics j < k with
    j = n/2 - 0.98 sqrt(n), k = n/2 + 1 + 0.98 sqrt(n) (the normal approximation to the binomial)."""
    n = len(xs)
    if n < 6:
        return float("nan"), float("nan")
    s = sorted(xs)
    half = 0.98 * n**0.5
    j, k = max(1, int(n / 2 - half)), min(n, int(n / 2 + 1 + half + 0.999))
    return s[j - 1], s[k - 1]


def start_edge(
    tb, i: int, model: str, port: int, delay_ms: float, log: Path, cpu_quota: float = 0.0, dag: bool = False
) -> str:
    """`edgeinfer split serve-edge` inside test-bed host ``i``; returns its URL once healthy. ``cpu_quota`` >
    0 pins the server's speed: its process in a cgroup CPU group of that fraction of one core and the highest
    weight (as ``serve-edge --cpu-quota``)."""
    argv = [
        sys.executable,
        "-m",
        "edgeinfer.cli",
        "split",
        "serve-edge",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]
    argv += ["--model", model, "--threads", "1", "--delay-ms", str(delay_ms), *(["--dag"] if dag else [])]
    fh = log.open("wb")
    proc = tb.popen(i, argv, stdout=fh, stderr=subprocess.STDOUT)
    if cpu_quota > 0:  # placed from here: `ip netns exec` hides the cgroup file system from the server
        group = cpuquota.Throttle(cpu_quota)
        group.place(proc.pid)
        atexit.register(group.close)
    url = f"http://{tb.ip(i)}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge server exited ({proc.returncode}); log: {log}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"edge server not healthy after 120 s; log: {log}")


def _p(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``xs``."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def deadline_summary(
    results: list, labels: list[int], deadline_ms: float, replans: int, stretch: float | None = None
) -> DeadlineResult:
    """Deadline mode's figures from the runtime's answers (``InferenceResult``) and the inputs' labels."""
    lat = [r.latency_ms for r in results]
    return DeadlineResult(
        deadline_ms=deadline_ms,
        requests=len(results),
        met=sum(1 for r in results if r.latency_ms <= deadline_ms),
        accuracy=sum(r.pred == y for r, y in zip(results, labels, strict=True)) / max(1, len(results)),
        median_ms=_median(lat),
        p99_ms=_p(lat, 0.99),
        max_ms=max(lat, default=float("nan")),
        exits=dict(Counter(r.exit for r in results)),
        splits=dict(Counter(r.split for r in results)),
        fallbacks=sum(r.fallback for r in results),
        replans=replans,
        stretch=stretch,
    )


def run_link_change(
    tb,
    host: int,
    client,
    inputs: Callable[[int], tuple],
    from_rate: str,
    to_rate: str,
    requests: int,
    deadline_client=None,
    min_s: float = 0.0,
) -> LinkChangeResult:
    """The link of test-bed ``host`` at ``from_rate`` for ``requests`` requests (and at least ``min_s``
    seconds), then changed to ``to_rate`` with tc while the client keeps going for as many more. ``inputs(i)``
    is the i-th (x, label). With ``deadline_client`` (a ``DeadlineClient``), deadline mode runs interleaved
    with it."""
    from edgeinfer.split.linkshape import shape

    shape(tb, host, from_rate)
    samples: list[ChangeSample] = []
    dl_results: list = []
    dl_labels: list[int] = []
    t0 = time.monotonic()
    i = 0
    split_before = -1
    plan_changed_at: int | None = None
    changed_t = 0.0
    for after in (False, True):
        if after:
            split_before = client.current_plan().split
            replans_before = client.replans
            shape(tb, host, to_rate)
            changed_t = time.monotonic() - t0
        k, start = 0, time.monotonic()
        while k < requests or (not after and time.monotonic() - start < min_s):
            x, y = inputs(i)
            r = client.infer(x)
            link = client.link()
            samples.append(ChangeSample(time.monotonic() - t0, after, r.latency_ms, r.split, r.exit,
                                        link.bandwidth_bps / 1e6 if link else None))  # fmt: skip
            if (
                after
                and plan_changed_at is None
                and (r.split != split_before or client.replans > replans_before)
            ):
                plan_changed_at = k
            if deadline_client is not None:
                d = deadline_client.infer(x)
                dl_results.append(d)
                dl_labels.append(y)
                samples[-1].deadline_met = d.deadline_met
            i, k = i + 1, k + 1
    before = [s for s in samples if not s.after_change]
    after_all = [s for s in samples if s.after_change]
    settled = after_all[plan_changed_at + 1 :] if plan_changed_at is not None else after_all
    transient = after_all[: (plan_changed_at or len(after_all)) + 1]
    dl = None
    if deadline_client is not None:
        dl = deadline_summary(
            dl_results,
            dl_labels,
            deadline_client.deadline_ms,
            deadline_client.replans,
            deadline_client.guard.stretch,
        )
    return LinkChangeResult(
        from_rate=from_rate,
        to_rate=to_rate,
        samples=samples,
        split_before=split_before,
        split_after=after_all[-1].split,
        requests_to_replan=None if plan_changed_at is None else plan_changed_at + 1,
        seconds_to_replan=None if plan_changed_at is None else after_all[plan_changed_at].t_s - changed_t,
        transient_max_ms=max(s.latency_ms for s in transient),
        before_ms=_median([s.latency_ms for s in before]),
        after_ms=_median([s.latency_ms for s in settled]),
        after_max_ms=max((s.latency_ms for s in settled), default=float("nan")),
        best_after_ms=None,
        replans=client.replans,
        deadline=dl,
    )


def run_bench(cfg: SplitBenchConfig, log: Callable[[str], None] = print) -> SplitBenchResult:
    """The whole benchmark (see the module docstring); with ``cfg.pin`` inside a pinned one-core group."""
    if not cfg.pin:
        return _run_bench(cfg, log)
    reason = cpuquota.available()
    if reason:
        raise RuntimeError(f"--pin needs a cgroup CPU quota: {reason}")
    with cpuquota.Throttle(1.0) as group, group.process():
        return _run_bench(cfg, log)


def _run_bench(cfg: SplitBenchConfig, log: Callable[[str], None]) -> SplitBenchResult:
    import torch

    from edgeinfer.models.dnn import zoo
    from edgeinfer.split.compress import wire_key
    from edgeinfer.split.deadline import DeadlineClient
    from edgeinfer.split.device import ClientConfig, DeviceClient
    from edgeinfer.split.exits import CRITERIA, calibrate_on_val
    from edgeinfer.split.linkshape import shape
    from edgeinfer.split.planner import all_paths, evaluate
    from edgeinfer.split.profile import load_device, profile_model
    from edgeinfer.testbed.netns import Testbed, available

    reason = available()
    if reason:
        raise RuntimeError(f"the split benchmark needs a network test-bed: {reason}")
    m = zoo.load(cfg.model, dag=cfg.dag)
    data = zoo.dataset(cfg.model)
    test = data["test"]
    log(f"profiling {cfg.model} as {cfg.device} and {cfg.edge}")
    dev = profile_model(m, load_device(cfg.device), data["val"].x[:16], 5, 30)
    edge = profile_model(m, load_device(cfg.edge), data["val"].x[:16], 5, 30)
    final = m.final.name
    power = dev.device.power
    n = len(m.path(final))
    wire = wire_key(cfg.dtype, cfg.codec)
    result = SplitBenchResult(
        config=cfg,
        device=dev.device,
        n_layers=n,
        rates=[],
        uptime_load=Path("/proc/loadavg").read_text().split()[:3],
    )

    def item(i: int) -> tuple:
        j = i % len(test)
        return test.x[j : j + 1], int(test.y[j])

    rng = random.Random(0)

    def interleaved(clients: list[DeviceClient], k: int) -> list[list]:
        """``k`` requests per client after ``cfg.warm``, round-robin in a random order every round."""
        got: list[list] = [[] for _ in clients]
        for i in range(cfg.warm + k):
            x, _ = item(i)
            order = list(range(len(clients)))
            rng.shuffle(order)
            for j in order:
                r = clients[j].infer(x)
                if i >= cfg.warm:
                    got[j].append(r)
        return got

    def client(**kw) -> DeviceClient:
        """The runtime as `split run` builds it: in deadline mode with the tail guard (split/deadline.py)."""
        ccfg = ClientConfig(cfg.dtype, cfg.codec, **kw)
        kind = DeadlineClient if ccfg.deadline_ms is not None else DeviceClient
        return kind(m, dev, edge, url, ccfg)

    # SIGTERM (e.g. `timeout`) unwinds the `with Testbed` below: the test-bed installs that guard itself
    with Testbed(1, rate=None, name=f"spb{os.getpid() % 100000}") as tb:
        url = start_edge(
            tb,
            0,
            cfg.model,
            cfg.port,
            cfg.delay_ms,
            Path("/tmp/edgeinfer-split-bench-edge.log"),
            cpu_quota=1.0 if cfg.pin else 0.0,
            dag=cfg.dag,
        )
        for rate in cfg.rates:
            shape(tb, 0, rate)
            log(f"rate {rate}: measuring {n + 1} forced splits and the adaptive client, interleaved")
            forced = [client(force=(final, s)) for s in range(n + 1)]
            adaptive = client(exits=[final])
            clients = [*forced, adaptive]
            try:
                adaptive.probe()
                got = interleaved(clients, cfg.requests)
                link = adaptive.link()
                replans = adaptive.replans
                probe_ms = adaptive.probe_ms  # link probing, outside the per-request latencies
                scaled = adaptive.paths[0]
                scale = dict(zip(("device", "edge"), adaptive.plan_scale, strict=True))
            finally:
                for c in clients:
                    c.close()
            splits = [
                SplitMeasure(
                    split=s,
                    median_ms=_median([r.latency_ms for r in got[s]]),
                    ci95_ms=median_ci95([r.latency_ms for r in got[s]]),
                    device_ms=_median([r.device_ms for r in got[s]]),
                    transfer_ms=_median([r.transfer_ms for r in got[s]]),
                    edge_ms=_median([r.edge_ms for r in got[s]]),
                    # the device's energy (the Neurosurgeon objective) from the measured parts of each
                    # request and the device spec's power model: compute_w x device + tx_w x transfer +
                    # idle_w x edge
                    energy_mj=_median([_energy_mj(power, r) for r in got[s]]),
                    sent_bytes=_median([r.sent_bytes for r in got[s]]),
                    fallbacks=sum(r.fallback for r in got[s]),
                )
                for s in range(n + 1)
            ]
            rs = got[-1]
            chosen = Counter(r.split for r in rs)
            paths = all_paths(dev, edge, wire, [final])
            best = min(splits, key=lambda x: x.median_ms)
            entry = RateResult(
                rate=rate,
                link_estimate_mbit=link.bandwidth_bps / 1e6 if link else None,
                link_estimate_rtt_ms=1000 * link.rtt_s if link else None,
                splits=splits,
                predicted_ms=[evaluate(paths[0], s, link).total_ms for s in range(n + 1)] if link else [],
                predicted_corrected_ms=[evaluate(scaled, s, link).total_ms for s in range(n + 1)]
                if link
                else [],
                compute_scale=scale,
                device_only_ms=splits[-1].median_ms,
                edge_only_ms=splits[0].median_ms,
                best_split=best.split,
                best_ms=best.median_ms,
                chosen_splits=dict(chosen),
                chosen_ms=_median([r.latency_ms for r in rs]),
                chosen_ci95_ms=median_ci95([r.latency_ms for r in rs]),
                chosen_fallbacks=sum(r.fallback for r in rs),
                chosen_replans=replans,
                chosen_probe_ms_total=probe_ms,
                chosen_split_measured_ms=splits[chosen.most_common(1)[0][0]].median_ms,
            )
            log(
                f"  device-only {entry.device_only_ms:.2f} ms, edge-only {entry.edge_only_ms:.2f} ms, "
                f"best split {best.split} {best.median_ms:.2f} ms, chosen {dict(chosen)} "
                f"{entry.chosen_ms:.2f} ms (link estimate {entry.link_estimate_mbit} Mbit/s)"
            )
            if cfg.deadline_ms is not None:
                # deadline mode: every exit allowed; the runtime picks exit and split to meet the deadline
                with client(deadline_ms=cfg.deadline_ms) as dl:
                    dl.probe()
                    for i in range(cfg.warm):
                        dl.infer(item(i)[0])
                    inputs = [item(cfg.warm + i) for i in range(cfg.deadline_requests)]
                    answers = [dl.infer(x) for x, _ in inputs]
                    entry.deadline = deadline_summary(
                        answers, [y for _, y in inputs], cfg.deadline_ms, dl.replans, dl.guard.stretch
                    )
                d = entry.deadline
                log(
                    f"  deadline {cfg.deadline_ms:g} ms: met {d.met}/{d.requests} "
                    f"({100 * d.met_fraction:.1f} %), accuracy {d.accuracy:.3f}, exits {d.exits}, "
                    f"splits {d.splits}, p99 {d.p99_ms:.2f} ms"
                )
            result.rates.append(entry)

        if cfg.link_change is not None:
            a, b = cfg.link_change
            log(f"link change: {a} -> {b} after {cfg.change_requests} requests")
            with client(exits=[final]) as adaptive:
                dl = client(deadline_ms=cfg.deadline_ms) if cfg.deadline_ms is not None else None
                try:
                    shape(tb, 0, a)
                    adaptive.probe()
                    for i in range(cfg.warm):
                        adaptive.infer(item(i)[0])
                        if dl is not None:
                            dl.infer(item(i)[0])
                    ch = run_link_change(tb, 0, adaptive, item, a, b, cfg.change_requests, dl)
                finally:
                    if dl is not None:
                        dl.close()
            measured = {r.rate: r.best_ms for r in result.rates}
            ch.best_after_ms = measured.get(b)
            result.link_change = ch
            log(
                f"  split {ch.split_before} -> {ch.split_after} after {ch.requests_to_replan} request(s) "
                f"({ch.seconds_to_replan} s); median {ch.before_ms:.2f} -> {ch.after_ms:.2f} ms, "
                f"transient max {ch.transient_max_ms:.2f} ms, best measured at {b}: {ch.best_after_ms}"
            )

    # accuracy vs latency of every exit (device-only, measured) and of the early-exit cascades
    # every exit device-only and the three calibrated cascades, interleaved over the whole test set: the
    # accuracy is what the runtime answered, the latency measured under the same conditions for all six
    n_acc = min(len(test), cfg.accuracy_inputs or len(test))
    log(f"accuracy vs latency of the exits and cascades ({n_acc} test inputs each, interleaved)")
    cfgs = [ClientConfig(force=(e.name, len(m.path(e.name)))) for e in m.exits]
    ths = {crit: calibrate_on_val(m, crit) for crit in CRITERIA}
    cfgs += [ClientConfig(force=(final, n), thresholds=th) for th in ths.values()]
    local = [DeviceClient(m, dev, edge, "http://127.0.0.1:9", c) for c in cfgs]
    try:
        with torch.no_grad():
            got_local = interleaved(local, n_acc)
    finally:
        for c in local:
            c.close()
    ys = [item(i)[1] for i in range(cfg.warm, cfg.warm + n_acc)]

    def summary(rs: list) -> dict:
        return {
            "runtime_test_accuracy": sum(r.pred == y for r, y in zip(rs, ys, strict=True)) / len(rs),
            "device_ms": _median([r.latency_ms for r in rs]),
            "mean_ms": statistics.fmean(r.latency_ms for r in rs),
        }

    result.exits = [
        ExitResult(e.name, e.accuracy, **summary(rs), profiled_ms=sum(dev.path_ms(e.name)))
        for e, rs in zip(m.exits, got_local[: len(m.exits)], strict=True)
    ]
    for (crit, th), rs in zip(ths.items(), got_local[len(m.exits) :], strict=True):
        st = summary(rs)
        result.cascades.append(
            CascadeResult(
                crit,
                th.values,
                th.stats,
                **st,
                test_accuracy=st["runtime_test_accuracy"],
                exit_rate=dict(Counter(r.exit for r in rs)),
            )  # fmt: skip
        )
    names = dev.exits[final]["path"]
    result.bytes = [CutBytes(0, "(input)", dev.input_bytes, dict(dev.input_wire))] + [
        CutBytes(i + 1, nm, dev.layers[nm].out_bytes, dict(dev.layers[nm].wire)) for i, nm in enumerate(names)
    ]
    return result


def tables(result: SplitBenchResult) -> list[Table]:
    """The run's results as the bench harness's tables (terminal, Markdown or JSON like `edgeinfer bench`)."""
    rates = Table(
        f"Split latency vs link rate ({result.config.model}, device {result.device.name})",
        (
            "rate",
            "estimate Mbit/s",
            "device-only ms",
            "edge-only ms",
            "best split",
            "best ms",
            "chosen splits",
            "chosen ms",
            "fallbacks",
            "re-plans",
        ),
        [
            (
                r.rate,
                fmt_num(r.link_estimate_mbit, 2),
                fmt_num(r.device_only_ms, 2),
                fmt_num(r.edge_only_ms, 2),
                str(r.best_split),
                fmt_num(r.best_ms, 2),
                ", ".join(f"{k}×{v}" for k, v in r.chosen_splits.items()),
                fmt_num(r.chosen_ms, 2),
                str(r.chosen_fallbacks),
                str(r.chosen_replans),
            )
            for r in result.rates
        ],
        right=frozenset({1, 2, 3, 4, 5, 7, 8, 9}),
    )
    exits = Table(
        "Accuracy vs device-only latency of the exits and early-exit cascades",
        ("exit / cascade", "test accuracy", "median ms", "mean ms"),
        [
            (e.exit, f"{e.test_accuracy:.3f}", fmt_num(e.device_ms, 2), fmt_num(e.mean_ms, 2))
            for e in result.exits
        ]
        + [
            (
                f"cascade ({c.criterion})",
                f"{c.test_accuracy:.3f}",
                fmt_num(c.device_ms, 2),
                fmt_num(c.mean_ms, 2),
            )
            for c in result.cascades
        ],
        right=frozenset({1, 2, 3}),
    )
    keys = ["f32", *result.bytes[0].sizes] if result.bytes else []
    wire = Table(
        "Bytes on the wire at every cut",
        ("cut", "after", *keys),
        [(str(c.cut), c.after, *(f"{c.to_dict()[k]:,}" for k in keys)) for c in result.bytes],
        right=frozenset({0, *range(2, 2 + len(keys))}),
    )
    out = [rates, exits, wire]
    with_deadline = [r for r in result.rates if r.deadline is not None]
    if with_deadline:
        out.append(
            Table(
                f"Deadline mode: {with_deadline[0].deadline.deadline_ms:g} ms, every exit allowed",
                (
                    "rate",
                    "requests",
                    "met",
                    "met %",
                    "accuracy",
                    "median ms",
                    "p99 ms",
                    "max ms",
                    "exits",
                    "splits",
                    "fallbacks",
                ),  # fmt: skip
                [
                    (
                        r.rate,
                        str(d.requests),
                        str(d.met),
                        f"{100 * d.met_fraction:.1f}",
                        f"{d.accuracy:.3f}",
                        fmt_num(d.median_ms, 2),
                        fmt_num(d.p99_ms, 2),
                        fmt_num(d.max_ms, 2),
                        ", ".join(f"{k}×{v}" for k, v in d.exits.items()),
                        ", ".join(f"{k}×{v}" for k, v in d.splits.items()),
                        str(d.fallbacks),
                    )
                    for r in with_deadline
                    if (d := r.deadline) is not None
                ],
                right=frozenset({1, 2, 3, 4, 5, 6, 7, 10}),
            )
        )
    ch = result.link_change
    if ch is not None:
        row = (
            f"{ch.from_rate} → {ch.to_rate}",
            f"{ch.split_before} → {ch.split_after}",
            str(ch.requests_to_replan),
            fmt_num(1000 * ch.seconds_to_replan, 0) if ch.seconds_to_replan is not None else "-",
            fmt_num(ch.transient_max_ms, 2),
            fmt_num(ch.before_ms, 2),
            fmt_num(ch.after_ms, 2),
            fmt_num(ch.after_max_ms, 2),
            fmt_num(ch.best_after_ms, 2),
            f"{ch.after_ms / ch.best_after_ms:.2f}" if ch.best_after_ms else "-",
            f"{ch.deadline.met}/{ch.deadline.requests}" if ch.deadline else "-",
        )
        out.append(
            Table(
                "Link change mid-run (tc on the test-bed)",
                (
                    "change",
                    "split",
                    "requests to re-plan",
                    "ms to re-plan",
                    "transient max ms",
                    "median before ms",
                    "median after ms",
                    "max after ms",
                    "best measured after ms",
                    "after ÷ best",
                    "deadline met",
                ),  # fmt: skip
                [row],
                right=frozenset(range(2, 11)),
            )
        )
    return out


def plot(result: SplitBenchResult, outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    rates = result.rates
    labels = [r.rate for r in rates]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines = [
        ("device_only_ms", "device-only", "s--"),
        ("edge_only_ms", "edge-only", "^--"),
        ("best_ms", "best split (measured)", "o-"),
        ("chosen_ms", "chosen split", "x-"),
    ]
    for key, label, style in lines:
        ax.plot(range(len(rates)), [getattr(r, key) for r in rates], style, label=label)
    ax.set_xticks(range(len(rates)), labels)
    ax.set_yscale("log")
    ax.set_xlabel("link rate (tbf)")
    ax.set_ylabel("median end-to-end latency (ms)")
    ax.set_title(f"{result.config.model}: device {result.device.name} (emulated) <-> edge")
    ax.grid(alpha=0.3)
    ax.legend()
    p = outdir / "split_latency_bandwidth.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in result.exits:
        ax.plot(e.device_ms, e.test_accuracy, "o")
        ax.annotate(e.exit, (e.device_ms, e.test_accuracy), textcoords="offset points", xytext=(5, 5))
    for i, c in enumerate(result.cascades):
        xy = (c.device_ms, c.test_accuracy)
        ax.plot(*xy, "x")
        ax.annotate(
            f"cascade ({c.criterion})",
            xy,
            textcoords="offset points",
            xytext=(5, -12 - 11 * i),
            fontsize=8,
        )
    ax.set_xlabel("device-only latency (ms, median over the test set)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    p = outdir / "split_accuracy_latency.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(8, 4))
    cuts = [c.to_dict() for c in result.bytes]
    for key in ("f32", "f16+lz4", "int8+zstd"):
        ax.plot([c["cut"] for c in cuts], [c[key] for c in cuts], "o-", label=key)
    ax.set_yscale("log")
    ax.set_xticks([c["cut"] for c in cuts], [c["after"].split(".")[-1] if c["cut"] else "in" for c in cuts])
    ax.set_xlabel("cut (after backbone layer #)")
    ax.set_ylabel("bytes on the wire")
    ax.legend()
    ax.grid(alpha=0.3)
    p = outdir / "split_wire_bytes.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    paths.append(p)
    plt.close("all")
    return paths
