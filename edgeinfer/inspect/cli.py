"""`edgeinfer inspect ...`: make IDs for a model, inspect a live service, plot what inspection can detect.

Thin: options are parsed here, the work is in ``ids`` (generation), ``inspector`` (the client-side transport)
and ``report`` (plots). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

inspect_app = typer.Typer(
    help="Quality inspection sampling: prove a remote service runs the promised model and meets its SLO "
    "(docs/inspect.md).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@inspect_app.command("ids")
def ids_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Reference model: bundled name or GGUF.")] = (
        "qwen2.5-coder-0.5b-instruct"
    ),
    substitute: Annotated[
        list[str] | None,
        typer.Option(
            "--substitute",
            "-s",
            help="A model the IDs must tell apart, kind:arg: quant:Q8_0, quant:Q2_K, exit:18 (the shard "
            "engine after 18 layers), model:gemma. Repeat. Default: those four.",
        ),
    ] = None,
    n: Annotated[int, typer.Option("-n", help="IDs to keep.", min=1)] = 16,
    k: Annotated[int, typer.Option("-k", help="Tokens per ID answer (max_tokens).", min=1, max=64)] = 5,
    min_margin: Annotated[
        float, typer.Option(help="Smallest top-1 minus top-2 logprob allowed at any step (nats).", min=0)
    ] = 1.0,
    tolerance: Annotated[
        float, typer.Option(help="Smallest allowed logprob difference when checking (nats).")
    ] = 0.03,
    optional: Annotated[
        list[str] | None,
        typer.Option(
            help="Substitutes an ID need not catch (recorded where it does). Default: quant:Q8_0, which "
            "re-quantized from a Q4_K_M file stays within the honest backends' own differences."
        ),
    ] = None,
    benign: Annotated[
        bool,
        typer.Option(
            help="Also run the reference on the shard engine: IDs it answers otherwise are dropped and each "
            "ID's tolerance covers its logprob differences."
        ),
    ] = True,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads.")] = None,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="ID file to write. Default: the bundled IDs' path.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Order in which the prompt pool is searched.")] = 0,
    dnn: Annotated[
        str | None,
        typer.Option(
            "--dnn",
            help="Make sensitive-sample IDs for this zoo DNN (e.g. digitnet, for a split edge server) "
            "instead of an LLM; uses -n, --out and --seed (docs/inspect.md, DNN IDs).",
        ),
    ] = None,
) -> None:
    """Search the built-in prompt pool for stable, discriminative IDs of a model and save them (JSON)."""
    if dnn is not None:
        return _dnn_ids(dnn, n, output, seed)
    from edgeinfer.engine.load import LoadOptions, open_backend
    from edgeinfer.inspect.ids import bundled_ids_path, generate_ids
    from edgeinfer.inspect.prompts import prompt_pool
    from edgeinfer.inspect.substitutes import (
        DEFAULT_SUBSTITUTES,
        Substitute,
        SubstituteError,
        open_substitute,
    )
    from edgeinfer.models.registry import ModelNotFound

    try:
        subs = [Substitute.parse(s) for s in substitute] if substitute else list(DEFAULT_SUBSTITUTES)
        reference = open_backend(model, LoadOptions(n_ctx=1024, threads=threads))
        err.print(f"loading {len(subs)} substitutes (quantizing on first use) ...")
        backends = {s.name: open_substitute(s, model, threads=threads, n_ctx=1024) for s in subs}
        honest = {}
        if benign:
            honest["shard"] = open_backend(model, LoadOptions(backend="shard", n_ctx=1024, threads=threads))
        not_required = set(optional if optional is not None else ["quant:Q8_0"])
    except (SubstituteError, ModelNotFound, ValueError) as exc:
        _fail(str(exc))
    t0 = time.perf_counter()
    idset = generate_ids(
        reference,
        backends,
        prompt_pool(),
        n=n,
        k=k,
        min_margin=min_margin,
        tolerance=tolerance,
        benign=honest,
        require=[name for name in backends if name not in not_required],
        seed=seed,
        progress=lambda line: err.print(line, markup=False, highlight=False),
    )
    path = idset.save(output or bundled_ids_path(reference.info.name))
    for b in (reference, *backends.values(), *honest.values()):
        b.close()
    out.print(
        f"{len(idset.ids)} IDs for {idset.model} in {time.perf_counter() - t0:.0f} s -> {path}",
        highlight=False,
    )
    if len(idset.ids) < n:
        err.print(f"[yellow]only {len(idset.ids)} of {n} wanted: lower --min-margin or raise -k[/]")


def _dnn_ids(name: str, n: int, output: Path | None, seed: int) -> None:
    from edgeinfer.inspect.dnn import DnnIdError, IdConfig, make_ids

    t0 = time.perf_counter()
    try:
        idset = make_ids(name, IdConfig(n=n, candidates=max(24, 3 * n), seed=seed), progress=err.print)
    except (KeyError, DnnIdError) as exc:
        _fail(str(exc).strip("'\""))
    path = idset.save(output or Path(f"{name}-ids.json"))
    out.print(
        f"{len(idset.ids)} IDs for {name} in {time.perf_counter() - t0:.0f} s -> {path}", highlight=False
    )


@inspect_app.command("run")
def run_command(
    url: Annotated[str, typer.Option(help="The service's base URL, e.g. http://127.0.0.1:8080.")],
    ids_file: Annotated[
        Path | None, typer.Option("--ids", help="ID file. Default: the bundled IDs of --model.")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="The model the service promises.")] = (
        "qwen2.5-coder-0.5b-instruct"
    ),
    requests: Annotated[int | None, typer.Option("-n", help="Real requests to send.", min=1)] = None,
    seconds: Annotated[float | None, typer.Option(help="Send real requests for this long.", min=0)] = None,
    rate: Annotated[float, typer.Option(help="ID requests per real request.", min=0, max=1)] = 0.004,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of the real requests.", min=1)] = 16,
    temperature: Annotated[float, typer.Option(help="Temperature of the real requests.", min=0)] = 0.0,
    stream: Annotated[bool, typer.Option(help="Stream the real requests.")] = False,
    logprobs: Annotated[
        bool, typer.Option(help="Ask the real requests (and so the IDs) for logprobs.")
    ] = True,
    slo_ttft: Annotated[float | None, typer.Option(help="SLO on time to first token (s, streams).")] = None,
    slo_e2e: Annotated[float | None, typer.Option(help="SLO on end-to-end latency (s).")] = None,
    sla: Annotated[float, typer.Option(help="Promised fraction of requests meeting the SLO.")] = 0.999,
    api_key: Annotated[
        str | None, typer.Option(envvar="EDGEINFER_API_KEY", help="Bearer key the service requires.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the ID schedule.")] = None,
) -> None:
    """Send ordinary requests to a live service with IDs mixed in; print the verdicts (and write JSON)."""
    import httpx
    import openai

    from edgeinfer.inspect.ids import IdFileError, IdSet, bundled_ids_path
    from edgeinfer.inspect.inspector import Inspector, InspectorConfig, Slo
    from edgeinfer.inspect.prompts import prompt_pool
    from edgeinfer.models.registry import served_name

    if requests is None and seconds is None:
        _fail("say how long to inspect: -n REQUESTS or --seconds T")
    try:
        idset = IdSet.load(ids_file or bundled_ids_path(served_name(model)))
    except IdFileError as exc:
        _fail(f"{exc} (make one with `edgeinfer inspect ids`)")
    config = InspectorConfig(
        rate=rate,
        slo=Slo(ttft_s=slo_ttft, e2e_s=slo_e2e),
        sla_level=sla,
        sla_violated=max(0.01, min(0.5, 10 * (1 - sla))),
        seed=seed,
    )
    inspector = Inspector(idset, config)
    client = openai.OpenAI(
        base_url=url.rstrip("/") + "/v1",
        api_key=api_key or "none",
        max_retries=0,
        timeout=300,
        http_client=httpx.Client(transport=inspector, timeout=300),
    )
    workload = [p for p in prompt_pool() if p not in {i.prompt for i in idset.ids}]
    deadline = time.monotonic() + seconds if seconds is not None else None
    sent = 0
    while (requests is None or sent < requests) and (deadline is None or time.monotonic() < deadline):
        kwargs = dict(
            model=idset.model,
            messages=[{"role": "user", "content": workload[sent % len(workload)]}],
            max_tokens=max_tokens,
            temperature=temperature,
        )
        if logprobs:
            kwargs |= dict(logprobs=True, top_logprobs=1)
        try:
            if stream:
                for _ in client.chat.completions.create(**kwargs, stream=True):
                    pass
            else:
                client.chat.completions.create(**kwargs)
        except openai.APIError as exc:
            err.print(f"[yellow]request failed:[/] {exc}")
        sent += 1
    inspector.flush(timeout=600)
    report = inspector.report()
    inspector.close()
    _print_report(report)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        err.print(f"report -> {json_out}")


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="inspection verdicts")
    for col in ("question", "verdict", "confidence", "observations", "failures"):
        table.add_column(col)
    for name, v in (("model", report.model), ("SLA", report.sla)):
        table.add_row(name, v.decision.value, f"{v.confidence:.6f}", str(v.n), str(v.failures))
    out.print(table)
    lat = report.latency
    out.print(
        f"real requests {report.real_requests}, ID requests {report.id_requests} "
        f"({report.id_checks} checked, {report.id_failures} failed, {report.id_errors} unanswered); "
        f"overhead {100 * report.overhead_requests:.2f} % of requests, {100 * report.overhead_tokens:.2f} % "
        f"of tokens; e2e p50/p99 {_ms(lat['e2e_p50_s'])}/{_ms(lat['e2e_p99_s'])}",
        highlight=False,
    )
    for line in report.failures:
        out.print(f"  failed check: {line}", markup=False, highlight=False)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f} ms"


@inspect_app.command("report")
def report_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNG plots.")] = Path(
        "inspect-report"
    ),
    measured: Annotated[
        Path | None, typer.Option(help="A bench_inspect.py JSON whose measured points are drawn too.")
    ] = None,
    requests: Annotated[int, typer.Option(help="Real requests the detection probability is for.")] = 10000,
    per_id: Annotated[
        float, typer.Option(help="Probability that one ID exposes the substitute (1.0 for the bundled IDs).")
    ] = 1.0,
) -> None:
    """Plot detection probability vs substitution fraction vs inspection rate, and requests to a verdict."""
    from edgeinfer.inspect.report import plot_detection

    points = json.loads(measured.read_text()) if measured else None
    paths = plot_detection(out_dir, n_requests=requests, per_id=per_id, measured=points)
    for p in paths:
        out.print(str(p), highlight=False)
