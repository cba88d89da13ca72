"""The split-computing benchmark: real transfers over a test-bed link (network namespace + tbf).

The edge server runs inside a test-bed host; this process is the device (emulated by a device spec). For
every link rate: every split of the final exit is forced and measured (so device-only, edge-only and the best
split are *measured*, not predicted), then the adaptive client (link monitor + planner) is measured and its
choice recorded. Also: accuracy vs latency of the exits (and of the calibrated early-exit cascade), and the
bytes on the wire at every cut with and without compression.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from edgeinfer.bench.table import Table, fmt_num


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


def start_edge(tb, i: int, model: str, port: int, delay_ms: float, log: Path) -> str:
    """`edgeinfer split serve-edge` inside test-bed host ``i``; returns its URL once healthy."""
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
    argv += ["--model", model, "--threads", "1", "--delay-ms", str(delay_ms)]
    fh = log.open("wb")
    proc = tb.popen(i, argv, stdout=fh, stderr=subprocess.STDOUT)
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


def run_bench(cfg: SplitBenchConfig, log: Callable[[str], None] = print) -> dict:
    import torch

    from edgeinfer.models.dnn import zoo
    from edgeinfer.split.compress import wire_key
    from edgeinfer.split.device import ClientConfig, DeviceClient
    from edgeinfer.split.exits import CRITERIA, calibrate_on_val
    from edgeinfer.split.linkshape import shape
    from edgeinfer.split.planner import all_paths, evaluate
    from edgeinfer.split.profile import load_device, profile_model
    from edgeinfer.testbed.netns import Testbed, available

    reason = available()
    if reason:
        raise RuntimeError(f"the split benchmark needs a network test-bed: {reason}")
    m = zoo.load(cfg.model)
    data = zoo.dataset(cfg.model)
    test = data["test"]
    log(f"profiling {cfg.model} as {cfg.device} and {cfg.edge}")
    dev = profile_model(m, load_device(cfg.device), data["val"].x[:16], 5, 30)
    edge = profile_model(m, load_device(cfg.edge), data["val"].x[:16], 5, 30)
    final = m.final.name
    power = dev.device.power
    n = len(m.path(final))
    wire = wire_key(cfg.dtype, cfg.codec)
    result: dict = {"config": asdict(cfg), "device": dev.device.to_dict(), "n_layers": n, "rates": []}
    result["uptime_load"] = Path("/proc/loadavg").read_text().split()[:3]

    rng = random.Random(0)

    def interleaved(clients: list[DeviceClient], k: int) -> list[list]:
        """``k`` requests per client after ``cfg.warm``, round-robin in a random order every round."""
        got: list[list] = [[] for _ in clients]
        for i in range(cfg.warm + k):
            x = test.x[i % len(test) : i % len(test) + 1]
            order = list(range(len(clients)))
            rng.shuffle(order)
            for j in order:
                r = clients[j].infer(x)
                if i >= cfg.warm:
                    got[j].append(r)
        return got

    # SIGTERM (e.g. `timeout`) unwinds the `with Testbed` below: the test-bed installs that guard itself
    with Testbed(1, rate=None, name=f"spb{os.getpid() % 100000}") as tb:
        url = start_edge(
            tb, 0, cfg.model, cfg.port, cfg.delay_ms, Path("/tmp/edgeinfer-split-bench-edge.log")
        )
        for rate in cfg.rates:
            shape(tb, 0, rate)
            log(f"rate {rate}: measuring {n + 1} forced splits and the adaptive client, interleaved")
            forced = [DeviceClient(m, dev, edge, url, ClientConfig(cfg.dtype, cfg.codec, force=(final, s)))
                      for s in range(n + 1)]  # fmt: skip
            adaptive = DeviceClient(m, dev, edge, url, ClientConfig(cfg.dtype, cfg.codec, exits=[final]))
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
                {
                    "split": s,
                    "median_ms": _median([r.latency_ms for r in got[s]]),
                    "ci95_ms": median_ci95([r.latency_ms for r in got[s]]),
                    "device_ms": _median([r.device_ms for r in got[s]]),
                    "transfer_ms": _median([r.transfer_ms for r in got[s]]),
                    "edge_ms": _median([r.edge_ms for r in got[s]]),
                    # the device's energy (the Neurosurgeon objective) from the measured parts of each request
                    # and the device spec's power model: compute_w x device + tx_w x transfer + idle_w x edge
                    "energy_mj": _median([_energy_mj(power, r) for r in got[s]]),
                    "sent_bytes": _median([r.sent_bytes for r in got[s]]),
                    "fallbacks": sum(r.fallback for r in got[s]),
                }
                for s in range(n + 1)
            ]
            rs = got[-1]
            chosen = Counter(r.split for r in rs)
            paths = all_paths(dev, edge, wire, [final])
            predicted = [evaluate(paths[0], s, link).total_ms for s in range(n + 1)] if link else []
            corrected = [evaluate(scaled, s, link).total_ms for s in range(n + 1)] if link else []
            best = min(splits, key=lambda x: x["median_ms"])
            entry = {
                "rate": rate,
                "link_estimate_mbit": link.bandwidth_bps / 1e6 if link else None,
                "link_estimate_rtt_ms": 1000 * link.rtt_s if link else None,
                "splits": splits,
                "predicted_ms": predicted,  # from the profiles as measured
                "predicted_corrected_ms": corrected,  # with the client's online compute-scale correction
                "compute_scale": scale,
                "device_only_ms": splits[-1]["median_ms"],
                "edge_only_ms": splits[0]["median_ms"],
                "best_split": best["split"],
                "best_ms": best["median_ms"],
                "chosen_splits": dict(chosen),
                "chosen_ms": _median([r.latency_ms for r in rs]),
                "chosen_ci95_ms": median_ci95([r.latency_ms for r in rs]),
                "chosen_fallbacks": sum(r.fallback for r in rs),
                "chosen_replans": replans,
                "chosen_probe_ms_total": probe_ms,
                "chosen_split_measured_ms": splits[chosen.most_common(1)[0][0]]["median_ms"],
            }
            log(
                f"  device-only {entry['device_only_ms']:.2f} ms, edge-only {entry['edge_only_ms']:.2f} ms, "
                f"best split {best['split']} {best['median_ms']:.2f} ms, chosen {dict(chosen)} "
                f"{entry['chosen_ms']:.2f} ms (link estimate {entry['link_estimate_mbit']} Mbit/s)"
            )
            result["rates"].append(entry)

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
    ys = [int(test.y[i % len(test)]) for i in range(cfg.warm, cfg.warm + n_acc)]

    def summary(rs: list) -> dict:
        return {
            "runtime_test_accuracy": sum(r.pred == y for r, y in zip(rs, ys, strict=True)) / len(rs),
            "device_ms": _median([r.latency_ms for r in rs]),
            "mean_ms": statistics.fmean(r.latency_ms for r in rs),
        }

    exits = [
        {"exit": e.name, "test_accuracy": e.accuracy, **summary(rs), "profiled_ms": sum(dev.path_ms(e.name))}
        for e, rs in zip(m.exits, got_local[: len(m.exits)], strict=True)
    ]
    cascades = [
        {"criterion": crit, "thresholds": th.values, "val": th.stats, **(st := summary(rs)),
         "test_accuracy": st["runtime_test_accuracy"], "exit_rate": dict(Counter(r.exit for r in rs))}
        for (crit, th), rs in zip(ths.items(), got_local[len(m.exits) :], strict=True)
    ]  # fmt: skip
    result["exits"] = exits
    result["cascades"] = cascades
    names = dev.exits[final]["path"]
    result["bytes"] = [{"cut": 0, "after": "(input)", "f32": dev.input_bytes, **dev.input_wire}] + [
        {"cut": i + 1, "after": nm, "f32": dev.layers[nm].out_bytes, **dev.layers[nm].wire}
        for i, nm in enumerate(names)
    ]
    return result


def tables(result: dict) -> list[Table]:
    """The run's results as the bench harness's tables (terminal, Markdown or JSON like `edgeinfer bench`)."""
    rates = Table(
        f"Split latency vs link rate ({result['config']['model']}, device {result['device']['name']})",
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
                r["rate"],
                fmt_num(r["link_estimate_mbit"], 2),
                fmt_num(r["device_only_ms"], 2),
                fmt_num(r["edge_only_ms"], 2),
                str(r["best_split"]),
                fmt_num(r["best_ms"], 2),
                ", ".join(f"{k}×{v}" for k, v in r["chosen_splits"].items()),
                fmt_num(r["chosen_ms"], 2),
                str(r["chosen_fallbacks"]),
                str(r["chosen_replans"]),
            )
            for r in result["rates"]
        ],
        right=frozenset({1, 2, 3, 4, 5, 7, 8, 9}),
    )
    exits = Table(
        "Accuracy vs device-only latency of the exits and early-exit cascades",
        ("exit / cascade", "test accuracy", "median ms", "mean ms"),
        [
            (e["exit"], f"{e['test_accuracy']:.3f}", fmt_num(e["device_ms"], 2), fmt_num(e["mean_ms"], 2))
            for e in result["exits"]
        ]
        + [
            (
                f"cascade ({c['criterion']})",
                f"{c['test_accuracy']:.3f}",
                fmt_num(c["device_ms"], 2),
                fmt_num(c["mean_ms"], 2),
            )
            for c in result["cascades"]
        ],
        right=frozenset({1, 2, 3}),
    )
    keys = [k for k in result["bytes"][0] if k not in ("cut", "after")] if result["bytes"] else []
    wire = Table(
        "Bytes on the wire at every cut",
        ("cut", "after", *keys),
        [(str(c["cut"]), c["after"], *(f"{c[k]:,}" for k in keys)) for c in result["bytes"]],
        right=frozenset({0, *range(2, 2 + len(keys))}),
    )
    return [rates, exits, wire]


def plot(result: dict, outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    rates = result["rates"]
    x = [r["link_estimate_mbit"] or 0 for r in rates]
    labels = [r["rate"] for r in rates]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines = [
        ("device_only_ms", "device-only", "s--"),
        ("edge_only_ms", "edge-only", "^--"),
        ("best_ms", "best split (measured)", "o-"),
        ("chosen_ms", "chosen split", "x-"),
    ]
    for key, label, style in lines:
        ax.plot(range(len(rates)), [r[key] for r in rates], style, label=label)
    ax.set_xticks(range(len(rates)), labels)
    ax.set_yscale("log")
    ax.set_xlabel("link rate (tbf)")
    ax.set_ylabel("median end-to-end latency (ms)")
    ax.set_title(f"{result['config']['model']}: device {result['device']['name']} (emulated) <-> edge")
    ax.grid(alpha=0.3)
    ax.legend()
    del x
    p = outdir / "split_latency_bandwidth.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in result["exits"]:
        ax.plot(e["device_ms"], e["test_accuracy"], "o")
        ax.annotate(
            e["exit"], (e["device_ms"], e["test_accuracy"]), textcoords="offset points", xytext=(5, 5)
        )
    for i, c in enumerate(result["cascades"]):
        xy = (c["device_ms"], c["test_accuracy"])
        ax.plot(*xy, "x")
        ax.annotate(
            f"cascade ({c['criterion']})",
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
    cuts = result["bytes"]
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
