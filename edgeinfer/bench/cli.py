"""`edgeinfer bench ...`: benchmarks and bottleneck analysis.

Thin: a command parses its options, calls its kind's ``run`` (``bench/model.py``, ``serve.py``,
``accuracy.py``, ``roofline.py``, ``fit.py``), saves the run file and prints the kind's ``rows`` table as a
rich table on a terminal, Markdown when piped (or as ``--format`` says), or the run's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from edgeinfer.bench.table import Format, Output, Table
from edgeinfer.engine.load import BackendKind

if TYPE_CHECKING:
    from edgeinfer.bench.runs import Run

app = typer.Typer(
    help="Benchmarks: model speed, serving load, accuracy, roofline and fit, reports.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
out = Console(soft_wrap=True)  # a long line stays one line when piped
err = Console(stderr=True)


class Endpoint(StrEnum):
    CHAT = "chat"  # /v1/chat/completions
    COMPLETIONS = "completions"  # /v1/completions


class AnswerMode(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"


OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Where to write the run's JSON. Default: runs/KIND-TIME.json."),
]
LabelOpt = Annotated[str | None, typer.Option(help="Name of this run in reports (default: the kind).")]
FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="How to print the results: table (rich), md (Markdown, full width) or json (the run file). "
        "Default: table on a terminal, md when piped.",
    ),
]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


class _Bar:
    """``runs.Progress`` drawn as a rich progress bar on stderr."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self.task = None
        self.total: int | None = None

    def start(self, description: str, total: int | None) -> None:
        if total is None and self.task is not None and self.total is not None:
            self.bar.update(self.task, description=description)  # a long step inside a counted phase
            return
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.total = total
        self.task = self.bar.add_task(description, total=total)

    def step(self, description: str | None = None, advance: int = 1) -> None:
        if self.task is not None:
            self.bar.update(
                self.task, advance=advance, **({"description": description} if description else {})
            )

    def note(self, message: str) -> None:
        self.bar.console.print(f"[yellow]note:[/] {message}")


@contextmanager
def _running() -> Iterator[_Bar]:
    """A progress bar; the kind's bad-input and runtime errors become a clean exit 2."""
    from edgeinfer.engine.load import BackendUnavailable
    from edgeinfer.models.registry import ModelNotFound

    progress = _Bar()
    try:
        with progress.bar:
            yield progress
    except (ValueError, RuntimeError, ModelNotFound, BackendUnavailable, OSError) as exc:
        _fail(str(exc))


def _finish(run: Run, output: Path | None, rows: Callable[[Run], Table], fmt: Format | None) -> None:
    """Save the run file, then print its table (or its JSON)."""
    from edgeinfer.bench.runs import default_path, save

    path = save(run, output or default_path(run.kind))
    show = Output(fmt)
    show.table(rows(run))
    show.document(run.to_dict())
    err.print(f"[dim]wrote {path}[/]")


@app.command()
def model(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Bundled model name or GGUF path (repeatable). Default: both bundled."
        ),
    ] = None,
    backend: Annotated[
        list[BackendKind] | None, typer.Option(help="Backend (repeatable). Default: llamacpp.")
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
    fmt: FormatOpt = None,
) -> None:
    """llama-bench style: prefill (pp N) and decode (tg N) tok/s, mean ± std over repeats, per backend and
    thread count. Table to the terminal, JSON to a file."""
    from edgeinfer.bench import model as kind
    from edgeinfer.engine.threads import default_threads

    try:
        tests = kind.parse_tests(pp or [512], tg or [128])
    except ValueError as exc:
        _fail(str(exc))
    with _running() as progress:
        run = kind.run(
            model or kind.BUNDLED_BOTH,
            backend or [BackendKind.LLAMACPP],
            threads or sorted({1, default_threads()}),
            tests,
            repeats,
            label,
            progress,
        )
    _finish(run, output, kind.rows, fmt)


@app.command()
def serve(
    url: Annotated[
        str, typer.Option(help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080.")
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name to request (default: server's).")
    ] = None,
    endpoint: Annotated[Endpoint, typer.Option(help="Which API to load.")] = Endpoint.CHAT,
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
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEINFER_API_KEY",
            help="API key of the server (sent as 'Authorization: Bearer', not recorded).",
        ),
    ] = None,
    keep_requests: Annotated[bool, typer.Option(help="Store every request's timings in the JSON.")] = False,
    output: OutputOpt = None,
    label: LabelOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Concurrency sweep against a streaming OpenAI-compatible server: TTFT, TPOT, inter-token and end-to-end
    latency (p50/p90/p99), request/s, output tok/s, and the server's CPU % and RSS."""
    from edgeinfer.bench import serve as kind

    prompts = kind.PROMPTS
    if prompts_file is not None:
        if not prompts_file.is_file():
            _fail(f"prompts file {prompts_file} does not exist")
        prompts = tuple(ln.strip() for ln in prompts_file.read_text().splitlines() if ln.strip())
        if not prompts:
            _fail(f"prompts file {prompts_file} has no non-empty line")
    cfg = kind.ServeConfig(
        url=url,
        model=model,
        endpoint=endpoint.value,
        concurrency=tuple(concurrency or (1, 2, 4)),
        num_requests=num_requests,
        max_seconds=max_seconds,
        max_tokens=max_tokens,
        temperature=temperature,
        prompts=prompts,
        warmup=warmup,
        api_key=api_key,
    )
    pid = server_pid if server_pid is not None else kind.find_server_pid(url)
    with _running() as progress:
        run = kind.run(cfg, pid, keep_requests, label, progress)
    _finish(run, output, kind.rows, fmt)


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
        AnswerMode | None,
        typer.Option(
            help="With --url: chat or completion. Default: chat if the server reports a chat template."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="CPU threads for local models.")
    ] = None,
    backend: Annotated[BackendKind, typer.Option(help="Local backend.")] = BackendKind.LLAMACPP,
    eval_set: Annotated[
        Path | None, typer.Option(help="A YAML evaluation set (default: the bundled one).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEINFER_API_KEY",
            help="With --url: API key of the server (sent as 'Authorization: Bearer', not recorded).",
        ),
    ] = None,
    output: OutputOpt = None,
    label: LabelOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Accuracy on the project's evaluation set (arithmetic, facts, instruction following) per model and
    prompt template, with the Wilson 95 % confidence interval."""
    from edgeinfer.bench import accuracy as kind

    try:
        es = kind.load_eval_set(str(eval_set) if eval_set else None)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot load the evaluation set: {exc}")
    templates = template or list(es.templates)
    unknown = [t for t in templates if t not in es.templates]
    if unknown:  # the templates come from the evaluation set, so they are checked against it, not an enum
        _fail(f"unknown template {', '.join(unknown)}; one of: {', '.join(es.templates)}")
    with _running() as progress:
        try:
            run = kind.run(
                es,
                templates,
                model,
                url,
                mode and mode.value,
                limit,
                max_tokens,
                backend,
                threads,
                label,
                progress,
                api_key=api_key,
            )
        except ValueError as exc:  # a server that cannot be asked (unreachable, wants a key, lacks the model)
            _fail(str(exc))
    _finish(run, output, kind.rows, fmt)


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
    fmt: FormatOpt = None,
) -> None:
    """Measure memory bandwidth (copy/triad) and matmul GFLOP/s, compute each model's decode bound
    (bandwidth / bytes read per token) and prefill bound (FLOPs), and report achieved / bound."""
    from edgeinfer.bench import roofline as kind
    from edgeinfer.bench.model import BUNDLED_BOTH
    from edgeinfer.engine.threads import default_threads

    with _running() as progress:
        run = kind.run(
            model or BUNDLED_BOTH,
            threads or default_threads(),
            model_run,
            pp,
            tg,
            repeats,
            array_mib,
            label,
            progress,
        )
    _finish(run, output, kind.rows, fmt)


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
    fmt: FormatOpt = None,
) -> None:
    """Which models (parameters x quantization) fit in which devices' memory with the given context, and the
    decode tok/s each device's memory bandwidth allows."""
    from edgeinfer.bench import fit as kind

    with _running() as progress:
        run = kind.run(
            model or kind.DEFAULT_MODELS,
            quant or kind.DEFAULT_QUANTS,
            context,
            device or (),
            measure,
            efficiency,
            overhead_gb,
            label,
            progress,
        )
    _finish(run, output, kind.rows, fmt)


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
