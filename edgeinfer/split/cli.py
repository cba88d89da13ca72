"""`edgeinfer split ...`: device<->edge split computing and early exit for DNNs."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgeinfer.bench.table import Format, Output
from edgeinfer.bench.table import Table as ResultTable

app = typer.Typer(help="Device<->edge split computing and early exit for DNNs.", no_args_is_help=True)
out = Console(soft_wrap=True)  # a long line stays one line when piped
err = Console(stderr=True)

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Zoo model (see `edgeinfer split train --help`).")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        help="Device spec to emulate: 'rpi4-like' (1 thread, 8x slower by sleeping; NOT a real Pi), "
        "'rpi4-like-quota' (1 thread under a cgroup CPU quota of 1/8 core; root), 'edge-host', "
        "or a JSON file."
    ),
]
EdgeDevOpt = Annotated[str, typer.Option("--edge", help="Device spec of the edge server (as --device).")]
DevProfOpt = Annotated[
    Path | None, typer.Option(help="Device profile JSON from `edgeinfer split profile` (else profiled now).")
]
EdgeProfOpt = Annotated[
    Path | None, typer.Option(help="Edge profile JSON, e.g. made on the edge server (else profiled now).")
]


# The choices of the options below, as typer enums: a value outside them is a usage error (exit 2) naming the
# valid ones, before anything loads. They mirror the logic's tuples (compress.DTYPES / CODECS,
# exits.CRITERIA, planner.OBJECTIVES; tests/split/test_cli.py keeps them equal) without importing torch for
# `--help`.
class WireDtype(StrEnum):
    f32 = "f32"
    f16 = "f16"
    int8 = "int8"


class Codec(StrEnum):
    none = "none"
    lz4 = "lz4"
    zstd = "zstd"


class Objective(StrEnum):
    latency = "latency"
    energy = "energy"


class Criterion(StrEnum):
    entropy = "entropy"
    top1 = "top1"
    margin = "margin"


DtypeOpt = Annotated[WireDtype, typer.Option(help="Tensor dtype on the wire.")]
CodecOpt = Annotated[Codec, typer.Option(help="Lossless codec on the wire.")]
DeadlineOpt = Annotated[
    float | None,
    typer.Option(help="Latency deadline in ms: the most accurate exit that meets it is planned.", min=0.001),
]
ObjectiveOpt = Annotated[Objective, typer.Option(help="What the split minimises (energy: device joules).")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _show(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> None:
    """A result table as the bench harness prints it: rich on a terminal, Markdown when piped."""
    Output().table(ResultTable(title, header, rows, frozenset(right)))


def _load_model(name: str, retrain: bool = False, dag: bool = False):
    from rich.progress import Progress

    from edgeinfer.models.dnn import zoo

    if name not in zoo.ZOO:
        _fail(f"unknown model {name!r}; zoo: {', '.join(zoo.ZOO)}")
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"loading {name} (training on first use)", total=None)

        def progress(epoch: int, epochs: int, loss: float) -> None:
            bar.update(task, total=epochs, completed=epoch, description=f"training {name}: loss {loss:.3f}")

        return zoo.load(name, progress=progress, retrain=retrain, dag=dag)


def _profile(model, device: str, warmup: int = 3, repeats: int = 20):
    from rich.progress import Progress

    from edgeinfer.models.dnn import zoo
    from edgeinfer.split.profile import load_device, profile_model

    spec = load_device(device)
    x = zoo.dataset(model.name)["val"].x[:16]
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"profiling {model.name} as {spec.name}", total=warmup + repeats)
        return profile_model(
            model, spec, x, warmup, repeats, progress=lambda d, t: bar.update(task, completed=d)
        )


def _profiles(model, device: str, edge: str, device_profile: Path | None, edge_profile: Path | None):
    from edgeinfer.split.profile import Profile

    try:
        dev = Profile.load(device_profile) if device_profile else _profile(model, device)
        edg = Profile.load(edge_profile) if edge_profile else _profile(model, edge)
        dev.check_model(model)
        edg.check_model(model)
    except ValueError as exc:
        _fail(str(exc))
    return dev, edg


@app.command()
def train(
    model: ModelOpt = "digitnet",
    retrain: Annotated[bool, typer.Option(help="Train again even if a cached artifact matches.")] = False,
) -> None:
    """Train a zoo model on its data set (cached under ~/.cache/edgeinfer/dnn by config hash) and
    print the measured test accuracy of every exit."""
    from edgeinfer.models.dnn.zoo import ZOO

    m = _load_model(model, retrain)
    rows = [
        (e.name, str(e.at), str(len(m.path(e.name))), f"{e.val_accuracy:.3f}", f"{e.accuracy:.3f}")
        for e in m.exits
    ]
    _show(
        f"{model}: {ZOO[model].description}",
        ("exit", "after backbone layer", "path layers", "val accuracy", "test accuracy"),
        rows,
        {1, 2, 3, 4},
    )
    n = m.meta.get("n", {})
    sizes = f"train {n.get('train')}, val {n.get('val')}, test {n.get('test')}"
    out.print(f"weights: {m.meta['weights']} ({sizes}; trained in {m.meta.get('train_seconds')} s)")


@app.command()
def profile(
    model: ModelOpt = "digitnet",
    device: DeviceOpt = "rpi4-like",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write the profile JSON here.")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed passes first.", min=0)] = 5,
    repeats: Annotated[int, typer.Option(help="Timed passes; the median per layer is kept.", min=1)] = 30,
    predictor: Annotated[
        bool,
        typer.Option(help="Also fit the per-layer-type regression predictor and report its held-out error."),
    ] = False,
    bank: Annotated[int, typer.Option(help="Random layers measured to fit the predictor.", min=8)] = 120,
) -> None:
    """Measure every layer's latency (warm-up, repeats, median) and output bytes on this machine, emulating
    --device; optionally fit and evaluate the Neurosurgeon-style latency predictor."""
    from edgeinfer.models.dnn import zoo
    from edgeinfer.split.profile import load_device, profile_model

    m = _load_model(model)
    try:
        spec = load_device(device)
    except ValueError as exc:
        _fail(str(exc))
    x = zoo.dataset(m.name)["val"].x[:16]
    with err.status(f"profiling {model} as {spec.name} ({warmup} + {repeats} passes) ..."):
        prof = profile_model(m, spec, x, warmup, repeats)
    rows = [
        (
            name,
            lp.kind,
            f"{lp.macs:,}",
            f"{lp.ms:.3f}",
            f"{lp.out_bytes:,}",
            f"{lp.wire['f16+lz4']:,}",
            f"{lp.wire['int8+zstd']:,}",
        )
        for name, lp in prof.layers.items()
    ]
    _show(
        f"{model} on {spec.name}" + (" (emulated)" if spec.emulated else ""),
        ("layer", "kind", "MACs", "ms", "out bytes", "f16+lz4", "int8+zstd"),
        rows,
        {2, 3, 4, 5, 6},
    )
    out.print(f"input: {prof.input_bytes:,} bytes f32, {prof.input_wire['f16+lz4']:,} f16+lz4")
    if output:
        prof.save(output)
        out.print(f"wrote {output}")
    if predictor:
        _predictor_report(spec, prof, bank)


def _predictor_report(spec, prof, bank: int) -> None:
    from edgeinfer.split.predict import Predictor, from_profile, measure_bank, split_holdout

    with err.status(f"measuring {bank} random layers as {spec.name} ..."):
        samples = measure_bank(spec, n=bank)
    fit, held = split_holdout(samples)
    pred = Predictor(fit)
    rows = [
        (label, kind, str(st["n"]), f"{100 * st['median_ape']:.0f}%", f"{100 * st['mean_ape']:.0f}%")
        for label, ev in (
            ("random layers (25%)", pred.evaluate(held)),
            (prof.model, pred.evaluate(from_profile(prof.layers))),
        )
        for kind, st in ev.items()
    ]
    _show(
        "latency predictor: absolute % error on held-out layers",
        ("held-out set", "kind", "n", "median error", "mean error"),
        rows,
        {2, 3, 4},
    )


@app.command()
def plan(
    model: ModelOpt = "digitnet",
    bandwidth: Annotated[str, typer.Option(help="Link bandwidth, e.g. 5mbit, 100mbit, 1gbit.")] = "20mbit",
    rtt_ms: Annotated[float, typer.Option(help="Link round-trip time in ms.", min=0.0)] = 2.0,
    deadline_ms: DeadlineOpt = None,
    objective: ObjectiveOpt = Objective.latency,
    dtype: DtypeOpt = WireDtype.f16,
    codec: CodecOpt = Codec.lz4,
    device: DeviceOpt = "rpi4-like",
    edge: EdgeDevOpt = "edge-host",
    device_profile: DevProfOpt = None,
    edge_profile: EdgeProfOpt = None,
) -> None:
    """Choose the exit and split point for a link (minimum latency or device energy; with --deadline-ms the
    most accurate exit that meets it) and show every split of that exit."""
    from edgeinfer.split.compress import wire_key
    from edgeinfer.split.planner import LinkEstimate, all_paths, best_split, evaluate, plan_split
    from edgeinfer.units import parse_rate_bps

    dtype, codec, objective = dtype.value, codec.value, objective.value
    try:
        link = LinkEstimate(parse_rate_bps(bandwidth), rtt_ms / 1000)
    except ValueError as exc:
        _fail(str(exc))
    m = _load_model(model)
    dev, edg = _profiles(m, device, edge, device_profile, edge_profile)
    paths = all_paths(dev, edg, wire_key(dtype, codec))
    try:
        best = plan_split(paths, link, deadline_ms, objective, dev.device.power)
    except ValueError as exc:
        _fail(str(exc))
    path = next(p for p in paths if p.exit == best.exit)
    names = dev.exits[best.exit]["path"]
    rows = []
    for s in range(path.n + 1):
        o = evaluate(path, s, link, dev.device.power)
        mark = " <-" if s == best.split else ""
        rows.append(
            (
                f"{s}{mark}",
                names[s - 1] if s else "(input)",
                o.where,
                f"{o.wire_bytes:,}",
                f"{o.device_ms:.2f}",
                f"{o.transfer_ms:.2f}",
                f"{o.edge_ms:.2f}",
                f"{o.total_ms:.2f}",
                f"{1000 * o.energy_j:.2f}",
            )
        )
    header = (
        "split",
        "after layer",
        "where",
        "wire bytes",
        "device ms",
        "transfer ms",
        "edge ms",
        "total ms",
        "energy mJ",
    )
    _show(f"{model}, exit {best.exit}: every split at {link} ({dtype}+{codec})", header, rows, set(range(9)))
    for p in paths:
        o = best_split(p, link, objective, dev.device.power, deadline_ms)
        acc = f"{p.accuracy:.3f}"
        out.print(f"  exit {p.exit} (accuracy {acc}): " + (o.describe() if o else "cannot meet the deadline"))
    status = "" if best.feasible else " [bold red](no option meets the deadline: fastest shown)[/]"
    out.print(f"[bold]plan:[/] {best.describe()}, accuracy {best.accuracy:.3f}{status}")


@app.command("serve-edge")
def serve_edge(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Zoo model to serve (repeatable). Default: digitnet."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8090,
    threads: Annotated[int, typer.Option(help="torch threads for the tails.", min=1)] = 1,
    delay_ms: Annotated[
        float, typer.Option(help="Answer every request this much later (user-space RTT emulation).", min=0.0)
    ] = 0.0,
    dag: Annotated[
        bool,
        typer.Option(
            help="Serve the DAG chains: cuts inside residual blocks too, the request carrying every live "
            "tensor (the device must use the same chains: zoo.load(name, dag=True))."
        ),
    ] = False,
    cpu_quota: Annotated[
        float,
        typer.Option(
            help="Pin the server's speed: the whole process in a cgroup v1 CPU group with this fraction of "
            "one core and the highest weight, so other work on the cores cannot slow it (root). 0: as it is.",
            min=0.0,
            max=1.0,
        ),
    ] = 0.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve model tails from any cut point over HTTP (POST /v1/split/tail, /v1/split/probe, GET /health)."""
    from edgeinfer.split.edge import serve

    if cpu_quota > 0:
        from edgeinfer.testbed import cpuquota

        reason = cpuquota.available()
        if reason:
            _fail(f"--cpu-quota: {reason}")
    models = {name: _load_model(name, dag=dag) for name in (model or ["digitnet"])}
    err.print(f"edge server on http://{host}:{port} serving {', '.join(models)}")
    serve(models, host, port, threads=threads, delay_ms=delay_ms, log_level=log_level, cpu_quota=cpu_quota)


@app.command()
def run(
    edge_url: Annotated[
        str,
        typer.Option(
            "--edge-url",
            help="Edge server URL (from `serve-edge`); several, comma-separated, to fail over between them.",
        ),
    ],
    model: ModelOpt = "digitnet",
    n: Annotated[int, typer.Option("-n", help="Test-set inputs to run.", min=1)] = 50,
    deadline_ms: DeadlineOpt = None,
    objective: ObjectiveOpt = Objective.latency,
    dtype: DtypeOpt = WireDtype.f16,
    codec: CodecOpt = Codec.lz4,
    early_exit: Annotated[
        Criterion | None, typer.Option(help="Stop at a confident early exit, by this criterion.")
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(help="Early-exit calibration target (default: the final exit's val accuracy)."),
    ] = None,
    device: DeviceOpt = "rpi4-like",
    edge: EdgeDevOpt = "edge-host",
    device_profile: DevProfOpt = None,
    edge_profile: EdgeProfOpt = None,
    jsonl: Annotated[Path | None, typer.Option(help="Write one JSON result per input here.")] = None,
) -> None:
    """Run test inputs as the device: head here, tail on the edge, link measured and re-planned as it goes;
    answers from a local exit (and says so) when the edge is unreachable."""
    from rich.progress import track

    from edgeinfer.models.dnn import zoo
    from edgeinfer.split.deadline import DeadlineClient
    from edgeinfer.split.device import ClientConfig, DeviceClient
    from edgeinfer.split.exits import calibrate_on_val

    dtype, codec, objective = dtype.value, codec.value, objective.value
    early_exit = early_exit.value if early_exit else None
    m = _load_model(model)
    dev, edg = _profiles(m, device, edge, device_profile, edge_profile)
    th = calibrate_on_val(m, early_exit, target_accuracy) if early_exit else None
    cfg = ClientConfig(dtype=dtype, codec=codec, deadline_ms=deadline_ms, objective=objective, thresholds=th)
    test = zoo.dataset(m.name)["test"]
    results = []
    urls = [u.strip() for u in edge_url.split(",") if u.strip()]
    if not urls:
        _fail("--edge-url needs at least one URL")
    kind = DeadlineClient if deadline_ms is not None else DeviceClient  # the tail guard (split/deadline.py)
    with kind(m, dev, edg, urls, cfg) as client:
        for i in track(range(min(n, len(test))), description="inferring", console=err, transient=True):
            r = client.infer(test.x[i : i + 1])
            results.append((r, int(test.y[i])))
        replans = client.replans
    if jsonl:
        with jsonl.open("w") as fh:
            for r, y in results:
                fh.write(json.dumps(r.to_dict() | {"label": y}) + "\n")
    _summary(results, replans)


def _summary(results, replans: int) -> None:
    import statistics

    lat = [r.latency_ms for r, _ in results]
    acc = sum(r.pred == y for r, y in results) / len(results)
    header = (
        "accuracy",
        "median ms",
        "p90 ms",
        "on device",
        "split",
        "edge",
        "early exits",
        "fallbacks",
        "re-plans",
    )
    where = [r.where for r, _ in results]
    lat_sorted = sorted(lat)
    p90 = lat_sorted[int(0.9 * (len(lat) - 1))]
    early, fallbacks = sum(r.early for r, _ in results), sum(r.fallback for r, _ in results)
    counts = [str(where.count(w)) for w in ("device", "split", "edge")]
    cells = [f"{acc:.3f}", f"{statistics.median(lat):.2f}", f"{p90:.2f}", *counts]
    _show(
        f"{len(results)} inputs", header, [(*cells, str(early), str(fallbacks), str(replans))], set(range(9))
    )
    reasons = {r.reason for r, _ in results if r.reason}
    for reason in sorted(reasons):
        out.print(f"[yellow]fallback:[/] {reason}")


@app.command()
def bench(
    output: Annotated[Path, typer.Option("--out", "-o", help="Write the results JSON here.")] = Path(
        "split_bench.json"
    ),
    plots: Annotated[Path | None, typer.Option(help="Write the plots (PNG) into this directory.")] = None,
    rates: Annotated[
        str, typer.Option(help="Comma-separated link rates to sweep.")
    ] = "1mbit,5mbit,20mbit,100mbit,1gbit",
    requests: Annotated[int, typer.Option("-n", help="Requests per measured point.", min=3)] = 15,
    model: ModelOpt = "digitnet",
    device: DeviceOpt = "rpi4-like",
    dtype: DtypeOpt = WireDtype.f16,
    codec: CodecOpt = Codec.lz4,
    deadline_ms: Annotated[
        float | None,
        typer.Option(
            help="Also run deadline mode at every rate: every exit allowed, the runtime picks exit and split "
            "to meet this deadline (reports the share met and the accuracy).",
            min=0.001,
        ),
    ] = None,
    deadline_requests: Annotated[int, typer.Option(help="Requests per rate in deadline mode.", min=1)] = 200,
    link_change: Annotated[
        str | None,
        typer.Option(
            help="FROM,TO: a run whose link rate changes from FROM to TO in the middle (tc), e.g. "
            "20mbit,5mbit: how fast the runtime re-plans and what latency it keeps."
        ),
    ] = None,
    change_requests: Annotated[
        int, typer.Option(help="Requests on each side of the link change.", min=3)
    ] = 60,
    accuracy_inputs: Annotated[
        int | None, typer.Option(help="Test inputs for the exits/cascades part (default: all).", min=1)
    ] = None,
    dag: Annotated[
        bool,
        typer.Option(help="Sweep the DAG chains: every cut, inside residual blocks too (live tensors sent)."),
    ] = False,
    pin: Annotated[
        bool,
        typer.Option(
            help="Pin the speeds: the edge server and the device side each in a one-core cgroup CPU group of "
            "the highest weight, so other work on the cores does not decide the figures (root)."
        ),
    ] = False,
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format", "-f", help="table, md or json; default: table on a terminal, md when piped."
        ),
    ] = None,
) -> None:
    """Latency vs bandwidth (device-only, edge-only, best split, chosen split) over real test-bed links
    (needs root: network namespaces + tbf), accuracy vs latency of the exits, bytes on the wire."""
    from edgeinfer.bench.table import Output
    from edgeinfer.split.bench import SplitBenchConfig, run_bench, tables
    from edgeinfer.units import parse_rate_bps

    try:
        rate_list = [r.strip() for r in rates.split(",") if r.strip()]
        for r in rate_list:
            parse_rate_bps(r)
        change = None
        if link_change is not None:
            change = tuple(r.strip() for r in link_change.split(","))
            if len(change) != 2:
                raise ValueError(f"--link-change wants FROM,TO (two rates), got {link_change!r}")
            for r in change:
                parse_rate_bps(r)
    except ValueError as exc:
        _fail(str(exc))
    cfg = SplitBenchConfig(
        model=model,
        rates=rate_list,
        requests=requests,
        device=device,
        dtype=dtype.value,
        codec=codec.value,
        accuracy_inputs=accuracy_inputs,
        deadline_ms=deadline_ms,
        deadline_requests=deadline_requests,
        link_change=change,
        change_requests=change_requests,
        pin=pin,
        dag=dag,
    )
    try:
        result = run_bench(cfg, log=err.print)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    output.write_text(json.dumps(result.to_dict(), indent=1))
    show = Output(fmt)
    for table in tables(result):
        show.table(table)
    show.document(result.to_dict())
    err.print(f"wrote {output}")
    if plots:
        from edgeinfer.split.bench import plot

        for p in plot(result, plots):
            err.print(f"wrote {p}")
