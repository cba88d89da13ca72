"""`edgeinfer bench ...`: benchmarks and bottleneck analysis. Thin: the logic lives in the sibling modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="Benchmarks: model speed, serving load, accuracy, roofline and fit, reports.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)

BUNDLED_BOTH = ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]

OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Where to write the run's JSON. Default: runs/KIND-TIME.json."),
]
LabelOpt = Annotated[str | None, typer.Option(help="Name of this run in reports (default: the kind).")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _save(run: dict[str, Any], output: Path | None) -> None:
    import os

    from edgeinfer.bench.runs import default_path, save

    run["host"]["loadavg_1m_end"] = os.getloadavg()[0]  # with loadavg_1m: did other work share the CPU?
    path = save(run, output or default_path(run["kind"]))
    err.print(f"[dim]wrote {path}[/]")


def _load_warning() -> None:
    import os

    load = os.getloadavg()[0]
    if load > 1.5:
        err.print(
            f"[yellow]note:[/] load average is {load:.2f}: other work shares the CPU; figures will be low"
        )


def _resolve(spec: str) -> tuple[str, Path]:
    from edgeinfer.models.registry import ModelNotFound, resolve

    try:
        return resolve(spec)
    except ModelNotFound as exc:
        _fail(str(exc))
        raise  # unreachable


@app.command()
def model(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Bundled model name or GGUF path (repeatable). Default: both bundled."
        ),
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="Backend: llamacpp or shard (repeatable). Default: llamacpp.")
    ] = None,
    threads: Annotated[
        list[int] | None,
        typer.Option("--threads", "-t", help="Thread count (repeatable). Default: 1 and the physical cores."),
    ] = None,
    pp: Annotated[
        list[int] | None, typer.Option(help="Prefill test size in tokens (repeatable). Default: 512.")
    ] = None,
    tg: Annotated[
        list[int] | None, typer.Option(help="Decode test size in tokens (repeatable). Default: 128.")
    ] = None,
    repeats: Annotated[
        int, typer.Option("--repeats", "-r", help="Timed runs per test (after a warm-up).", min=1)
    ] = 3,
    output: OutputOpt = None,
    label: LabelOpt = None,
) -> None:
    """llama-bench style: prefill (pp N) and decode (tg N) tok/s, mean ± std over repeats, per backend and
    thread count. Table to the terminal, JSON to a file."""
    from edgeinfer.bench.model import parse_tests, run_model_bench
    from edgeinfer.engine.load import BackendKind, BackendUnavailable
    from edgeinfer.bench.runs import new_run
    from edgeinfer.engine.threads import default_threads

    backends = backend or ["llamacpp"]
    bad = [b for b in backends if b not in list(BackendKind)]
    if bad:
        _fail(f"unknown backend {', '.join(bad)}; choose from {', '.join(BackendKind)}")
    thread_list = threads or sorted({1, default_threads()})
    try:
        tests = parse_tests(pp or [512], tg or [128])
    except ValueError as exc:
        _fail(str(exc))
    specs = model or BUNDLED_BOTH
    config = {
        "models": specs,
        "backends": backends,
        "threads": thread_list,
        "tests": [t.name for t in tests],
        "repeats": repeats,
    }
    run = new_run("model", config, label)
    _load_warning()
    total = len(specs) * len(backends) * len(thread_list) * len(tests) * (repeats + 1) + len(specs) * len(
        backends
    ) * len(thread_list)
    with _progress() as bar:
        task = bar.add_task("model bench", total=total)

        def step(desc: str) -> None:
            bar.update(task, description=desc, advance=1)

        for spec in specs:
            name, path = _resolve(spec)
            try:
                run["results"] += run_model_bench(
                    path, backends, thread_list, tests, repeats, step, model_name=name
                )
            except BackendUnavailable as exc:
                _fail(str(exc))
    table = Table(title="model throughput")
    for col in ("model", "backend", "threads", "test", "tok/s"):
        table.add_column(col, justify="right" if col in ("threads", "tok/s") else "left")
    for r in run["results"]:
        table.add_row(
            r["model"],
            r["backend"],
            str(r["threads"]),
            r["test"],
            f"{r['tps_mean']:.2f} ± {r['tps_std']:.2f}",
        )
    out.print(table)
    _save(run, output)


@app.command()
def serve(
    url: Annotated[
        str, typer.Option(help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080.")
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name to request (default: server's).")
    ] = None,
    endpoint: Annotated[str, typer.Option(help="'chat' (/v1/chat/completions) or 'completions'.")] = "chat",
    concurrency: Annotated[
        list[int] | None,
        typer.Option("--concurrency", "-c", help="Concurrency level (repeatable). Default: 1 2 4."),
    ] = None,
    num_requests: Annotated[int, typer.Option(help="Most requests per concurrency level.", min=1)] = 8,
    max_seconds: Annotated[
        float, typer.Option(help="Start no new request after this many seconds per level.", min=0.1)
    ] = 120.0,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each request.", min=1)] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of each request.", min=0.0)] = 0.0,
    prompts_file: Annotated[
        Path | None, typer.Option(help="Text file with one prompt per line (default: built-in prompts).")
    ] = None,
    server_pid: Annotated[
        int | None,
        typer.Option(
            help="PID of the server to sample CPU % and RSS from. Default: whoever listens on the port."
        ),
    ] = None,
    warmup: Annotated[bool, typer.Option(help="Send one short untimed request first.")] = True,
    keep_requests: Annotated[bool, typer.Option(help="Store every request's timings in the JSON.")] = False,
    output: OutputOpt = None,
    label: LabelOpt = None,
) -> None:
    """Concurrency sweep against a streaming OpenAI-compatible server: TTFT, TPOT, inter-token and end-to-end
    latency (p50/p90/p99), request/s, output tok/s, and the server's CPU % and RSS."""
    from edgeinfer.bench.runs import new_run
    from edgeinfer.bench.serve import PROMPTS, ServeConfig, find_server_pid, run_sweep

    prompts = PROMPTS
    if prompts_file is not None:
        if not prompts_file.is_file():
            _fail(f"prompts file {prompts_file} does not exist")
        prompts = tuple(ln.strip() for ln in prompts_file.read_text().splitlines() if ln.strip())
        if not prompts:
            _fail(f"prompts file {prompts_file} has no non-empty line")
    if endpoint not in ("chat", "completions"):
        _fail("--endpoint must be 'chat' or 'completions'")
    cfg = ServeConfig(
        url=url,
        model=model,
        endpoint=endpoint,
        concurrency=tuple(concurrency or (1, 2, 4)),
        num_requests=num_requests,
        max_seconds=max_seconds,
        max_tokens=max_tokens,
        temperature=temperature,
        prompts=prompts,
        warmup=warmup,
    )
    pid = server_pid if server_pid is not None else find_server_pid(url)
    if pid is None:
        err.print("[yellow]note:[/] server process not found on this machine: no CPU % / RSS sampling")
    config = {k: v for k, v in cfg.__dict__.items() if k != "prompts"} | {
        "n_prompts": len(prompts),
        "server_pid": pid,
    }
    run = new_run("serve", config, label)
    with _progress() as bar:
        task = bar.add_task("serve bench", total=len(cfg.concurrency) * num_requests)
        try:
            run["results"] = run_sweep(
                cfg,
                pid,
                on_level=lambda c: bar.update(task, description=f"concurrency {c}"),
                on_done=lambda _: bar.advance(task),
                keep_requests=keep_requests,
            )
        except (RuntimeError, ValueError) as exc:
            _fail(str(exc))
    table = Table(title=f"serving load: {url}")
    for col in (
        "conc.",
        "ok",
        "TTFT p50/p99 ms",
        "TPOT p50/p99 ms",
        "ITL p50/p99 ms",
        "E2E p50/p99 ms",
        "req/s",
        "out tok/s",
        "srv CPU %",
        "srv RSS MiB",
    ):
        table.add_column(col, justify="right")

    def p(r: dict[str, Any], key: str) -> str:
        s = r.get(key)
        return f"{s['p50']:.0f} / {s['p99']:.0f}" if s else "–"

    for r in run["results"]:
        srv = r.get("server") or {}
        table.add_row(
            str(r["concurrency"]),
            f"{r['completed']}/{r['requests']}",
            p(r, "ttft_ms"),
            p(r, "tpot_ms"),
            p(r, "itl_ms"),
            p(r, "e2e_ms"),
            f"{r['request_throughput']:.2f}",
            f"{r['output_throughput']:.1f}",
            f"{srv['cpu_percent_mean']:.0f}" if srv else "–",
            f"{srv['rss_bytes_max'] / 2**20:.0f}" if srv else "–",
        )
        if r["failed"]:
            err.print(
                f"[yellow]{r['failed']} request(s) failed at concurrency {r['concurrency']}:[/] {r['errors']}"
            )
        if r["requests_usage_mismatch"]:
            err.print(
                f"[yellow]{r['requests_usage_mismatch']} request(s): usage tokens != streamed text chunks[/]"
            )
    out.print(table)
    _save(run, output)


@app.command()
def accuracy(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Local model (bundled name or GGUF path; repeatable). Default: both bundled.",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Evaluate through this OpenAI-compatible server instead of loading locally."),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template", help="Prompt template (repeatable): zero-shot, few-shot, system. Default: all."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N items.", min=1)] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.", min=1)] = 48,
    mode: Annotated[
        str | None,
        typer.Option(
            help="With --url: 'chat' or 'completion'. Default: chat if the server reports a chat template."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="CPU threads for local models.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Local backend: llamacpp or shard.")] = "llamacpp",
    eval_set: Annotated[
        Path | None, typer.Option(help="A YAML evaluation set (default: the bundled one).")
    ] = None,
    output: OutputOpt = None,
    label: LabelOpt = None,
) -> None:
    """Accuracy on the project's evaluation set (arithmetic, facts, instruction following) per model and
    prompt template, with the Wilson 95 % confidence interval."""
    from edgeinfer.bench.accuracy import BackendAnswerer, HTTPAnswerer, evaluate, load_eval_set
    from edgeinfer.bench.runs import new_run

    try:
        es = load_eval_set(str(eval_set) if eval_set else None)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot load the evaluation set: {exc}")
    templates = template or list(es.templates)
    unknown = [t for t in templates if t not in es.templates]
    if unknown:
        _fail(f"unknown template {', '.join(unknown)}; one of: {', '.join(es.templates)}")
    if mode not in (None, "chat", "completion"):
        _fail("--mode must be 'chat' or 'completion'")
    n_items = min(limit or len(es.items), len(es.items))
    config = {"url": url, "models": model, "templates": templates, "limit": limit, "max_tokens": max_tokens}
    run = new_run("accuracy", config, label)
    targets = [None] if url else (model or BUNDLED_BOTH)
    with _progress() as bar:
        task = bar.add_task("accuracy", total=len(targets) * len(templates) * n_items)
        for spec in targets:
            if url:
                name, chat = _server_model(url, model[0] if model else None, mode)
                answerer: Any = HTTPAnswerer(url, name, chat, max_tokens)
            else:
                from edgeinfer.engine.load import LoadOptions, open_backend

                name, _ = _resolve(spec)
                bar.update(task, description=f"loading {name}")
                options = LoadOptions(backend, n_ctx=2048, threads=threads)
                answerer = BackendAnswerer(open_backend(spec, options), max_tokens)

            def on_item(tpl: str, item: Any, ok: bool, name: str = name) -> None:
                bar.update(task, description=f"{name} {tpl} {item.id}", advance=1)

            try:
                for r in evaluate(answerer, es, templates, limit, on_item):
                    run["results"].append({"model": name, **r})
            except RuntimeError as exc:
                _fail(str(exc))
            finally:
                if url:
                    answerer.close()
                else:
                    answerer.backend.close()
    table = Table(title="accuracy (Wilson 95 % interval)")
    for col in ("model", "template", "mode", "correct", "accuracy", "95 % CI", "by category"):
        table.add_column(col)
    for r in run["results"]:
        cats = ", ".join(f"{c} {100 * v:.0f}%" for c, v in r["by_category"].items())
        table.add_row(
            r["model"],
            r["template"],
            r["mode"],
            f"{r['correct']}/{r['n']}",
            f"{100 * r['accuracy']:.0f} %",
            f"[{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}] %",
            cats,
        )
    out.print(table)
    _save(run, output)


def _server_model(url: str, model: str | None, mode: str | None) -> tuple[str | None, bool]:
    """The model to ask for and whether to chat, from /v1/models when not given."""
    import httpx

    try:
        data = httpx.get(url.rstrip("/") + "/v1/models", timeout=10).json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        _fail(f"cannot list models at {url}/v1/models: {exc}")
    entry = next((d for d in data if d.get("id") == model), None) if model else (data[0] if data else None)
    if model and entry is None:
        _fail(f"the server does not serve {model!r}; it serves {', '.join(d.get('id', '?') for d in data)}")
    if mode is not None:
        return model, mode == "chat"
    chat = bool(((entry or {}).get("meta") or {}).get("chat_template", True))
    return model, chat


@app.command()
def roofline(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Bundled model or GGUF path (repeatable). Default: both bundled."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="Threads. Default: physical cores.")
    ] = None,
    model_run: Annotated[
        Path | None,
        typer.Option(
            help="Take achieved tok/s from this `bench model` JSON instead of measuring (same threads)."
        ),
    ] = None,
    pp: Annotated[int, typer.Option(help="Prefill size measured when no --model-run is given.", min=1)] = 256,
    tg: Annotated[int, typer.Option(help="Decode size measured when no --model-run is given.", min=1)] = 64,
    repeats: Annotated[int, typer.Option(help="Timed runs of the quick model bench.", min=1)] = 3,
    array_mib: Annotated[int, typer.Option(help="Size of each bandwidth-test array (MiB).", min=16)] = 256,
    output: OutputOpt = None,
    label: LabelOpt = None,
) -> None:
    """Measure memory bandwidth (copy/triad) and matmul GFLOP/s, compute each model's decode bound
    (bandwidth / bytes read per token) and prefill bound (FLOPs), and report achieved / bound."""
    from edgeinfer.bench.gguf_stats import read_stats
    from edgeinfer.bench.model import parse_tests, run_model_bench
    from edgeinfer.bench.roofline import analyse, device_dict, measure_device
    from edgeinfer.bench.runs import load, new_run
    from edgeinfer.engine.threads import default_threads

    n_threads = threads or default_threads()
    measured: dict[tuple[str, str], float] = {}
    if model_run is not None:
        try:
            mr = load(model_run)
        except ValueError as exc:
            _fail(str(exc))
        if mr["kind"] != "model":
            _fail(f"{model_run} is a {mr['kind']} run; --model-run needs a `bench model` run")
        for r in mr["results"]:
            if r["threads"] == n_threads and r["backend"] == "llamacpp":
                measured[(r["model"], r["kind"])] = r["tps_mean"]  # the last of several sizes wins
                measured[(r["model"], r["kind"] + "_n")] = r["n_tokens"]
    _load_warning()
    specs = model or BUNDLED_BOTH
    run = new_run(
        "roofline", {"models": specs, "threads": n_threads, "model_run": str(model_run or "")}, label
    )
    with err.status("measuring memory bandwidth and matmul throughput ..."):
        dev = measure_device(n_threads, array_mib)
    run["device"] = device_dict(dev)
    for spec in specs:
        name, path = _resolve(spec)
        stats = read_stats(path)
        pp_tps, tg_tps = measured.get((name, "pp")), measured.get((name, "tg"))
        pp_n, tg_n = int(measured.get((name, "pp_n"), pp)), int(measured.get((name, "tg_n"), tg))
        if pp_tps is None or tg_tps is None:
            with err.status(f"measuring {name}: pp{pp} tg{tg}, {n_threads} threads ..."):
                rows = run_model_bench(
                    path, ["llamacpp"], [n_threads], parse_tests([pp], [tg]), repeats, model_name=name
                )
            pp_tps, tg_tps = rows[0]["tps_mean"], rows[1]["tps_mean"]
            pp_n, tg_n = pp, tg
        res = analyse(stats, dev.bandwidth_gbs, dev.matmul_gflops, tg_tps, pp_tps, max(1, tg_n // 2), pp_n)
        res["model"] = name
        run["results"].append(res)
    out.print(
        f"device: bandwidth [bold]{dev.bandwidth_gbs:.1f} GB/s[/] "
        f"(copy {dev.copy_gbs:.1f}, triad {dev.triad_gbs:.1f}), "
        f"fp32 matmul [bold]{dev.matmul_gflops:.0f} GFLOP/s[/], {n_threads} threads"
    )
    table = Table(title="roofline")
    for col in (
        "model",
        "decode MB/tok",
        "FLOP/B",
        "bound tok/s",
        "bound by",
        "achieved",
        "achieved/bound",
        "prefill bound",
        "prefill achieved",
        "achieved/bound",
    ):
        table.add_column(col, justify="right")
    for r in run["results"]:
        d, p = r["decode"], r["prefill"]
        table.add_row(
            r["model"],
            f"{d['bytes_per_token'] / 1e6:.0f}",
            f"{d['intensity_flop_per_byte']:.2f}",
            f"{d['bound_tps']:.1f}",
            d["bound_by"],
            f"{d['achieved_tps']:.1f}",
            f"{100 * d['achieved_over_bound']:.0f} %",
            f"{p['bound_tps']:.0f}",
            f"{p['achieved_tps']:.0f}",
            f"{100 * p['achieved_over_bound']:.0f} %",
        )
    out.print(table)
    _save(run, output)


@app.command()
def fit(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model size (7B, 270M) or reference id (see docs/bench.md); repeatable.",
        ),
    ] = None,
    quant: Annotated[
        list[str] | None,
        typer.Option("--quant", "-q", help="Quantization: int4, int8, q4_k_m, q8_0, f16, ... (repeatable)."),
    ] = None,
    context: Annotated[
        int, typer.Option("--context", "-c", help="Context length to hold in the KV cache.", min=1)
    ] = 4096,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="Device id (repeatable). Default: all profiles."),
    ] = None,
    measure: Annotated[bool, typer.Option(help="Add this machine with its bandwidth measured live.")] = True,
    efficiency: Annotated[
        float | None,
        typer.Option(
            help="Sustained / peak bandwidth for devices without a STREAM figure (default from data).",
            min=0.05,
            max=1.0,
        ),
    ] = None,
    overhead_gb: Annotated[
        float, typer.Option(help="Runtime memory besides weights and KV cache (GB).", min=0)
    ] = 0.3,
    output: OutputOpt = None,
    label: LabelOpt = None,
) -> None:
    """Which models (parameters x quantization) fit in which devices' memory with the given context, and the
    decode tok/s each device's memory bandwidth allows."""
    from edgeinfer.bench.fit import fit_table, load_devices, this_machine
    from edgeinfer.bench.runs import new_run

    devices, default_eff = load_devices()
    if device:
        known = {d.id for d in devices} | {"this-machine"}
        bad = [d for d in device if d not in known]
        if bad:
            _fail(f"unknown device {', '.join(bad)}; one of: {', '.join(sorted(known))}")
        devices = [d for d in devices if d.id in device]
    if measure and (not device or "this-machine" in device):
        from edgeinfer.bench.roofline import measure_bandwidth
        from edgeinfer.engine.threads import default_threads

        with err.status("measuring this machine's memory bandwidth ..."):
            copy, triad = measure_bandwidth(default_threads(), 256, 3)
        devices.append(this_machine(max(copy, triad)))
    specs = model or ["qwen2.5-0.5b", "1.5B", "3B", "7B", "8B"]
    quants = quant or ["int4", "int8"]
    eff = efficiency or default_eff
    try:
        rows = fit_table(specs, quants, devices, context, eff, overhead_gb)
    except ValueError as exc:
        _fail(str(exc))
    run = new_run(
        "fit",
        {
            "models": specs,
            "quants": quants,
            "context": context,
            "efficiency": eff,
            "overhead_gb": overhead_gb,
        },
        label,
    )
    run["results"] = rows
    table = Table(title=f"fit: context {context} tokens, runtime overhead {overhead_gb} GB")
    for col in (
        "model",
        "quant",
        "device",
        "needs GB",
        "usable GB",
        "fits",
        "GB/s",
        "from",
        "tok/s",
    ):
        table.add_column(col, justify="left" if col in ("model", "quant", "device", "from") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["quant"],
            r["device"],
            f"{r['needed_gb']:.2f}",
            f"{r['usable_gb']:.1f}",
            "[green]yes[/]" if r["fits"] else "[red]no[/]",
            f"{r['bandwidth_gbs']:.1f}",
            r["bandwidth_source"],
            f"{r['projected_decode_tps']:.1f}",
        )
    out.print(table)
    _save(run, output)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run JSON files written by the other bench commands.")],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Directory for report.md and the PNG plots.")
    ] = Path("runs/report"),
    title: Annotated[str, typer.Option(help="Title of the Markdown report.")] = "edgeinfer benchmark report",
) -> None:
    """Markdown report + PNG plots from run files: tok/s vs threads, latency percentiles vs concurrency,
    achieved vs roofline, accuracy. Several runs of a kind are compared side by side."""
    from edgeinfer.bench.report import build_report
    from edgeinfer.bench.runs import load

    loaded = []
    for p in runs:
        try:
            loaded.append(load(p))
        except ValueError as exc:
            _fail(str(exc))
    path = build_report(loaded, out_dir, title)
    out.print(f"report: {path}")
    for png in sorted(out_dir.glob("bench_*.png")):
        out.print(f"plot:   {png}")
