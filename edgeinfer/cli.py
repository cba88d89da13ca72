"""The `edgeinfer` command. Heavy imports (torch, llama.cpp) happen inside commands, so --help is instant."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeinfer.bench.cli import app as bench_app
from edgeinfer.cluster.cli import cluster_app, node, plan, testbed_app
from edgeinfer.inspect.cli import inspect_app
from edgeinfer.models.registry import DEFAULT_MODEL
from edgeinfer.split.cli import app as split_app

app = typer.Typer(
    help="Run quantized LLMs and DNNs on edge devices you own: serve, shard, split, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
app.add_typer(bench_app, name="bench")
app.add_typer(split_app, name="split")
app.add_typer(inspect_app, name="inspect")
err = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Bundled model name (see `edgeinfer models`) or path to any GGUF file."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", "-t", help="CPU threads. Default: the number of physical cores.")
]
CtxOpt = Annotated[int, typer.Option("--ctx-size", "-c", help="Context length in tokens (prompt + output).")]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="Inference backend: 'llamacpp' (whole model) or 'shard' (PyTorch).")
]
WeightFormatOpt = Annotated[
    str,
    typer.Option(
        "--weight-format",
        help="Shard backend only: 'gguf' (stored blocks, native kernels; the default where they build), "
        "'int8', 'bf16' or 'f32' (dequantized copies). See docs/shard-engine.md.",
    ),
]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


SpeculativeOpt = Annotated[
    str,
    typer.Option(
        "--speculative",
        help="Speculative decoding: 'ngram' (prompt lookup: drafts what followed the last n tokens earlier "
        "in the prompt or output), 'exit:K' (drafts with the model's first K layers), or 'off'. "
        "Output is unchanged. See docs/speculative.md.",
    ),
]
DraftMaxOpt = Annotated[
    int, typer.Option("--draft-max", help="Most tokens drafted per verification pass.", min=1, max=64)
]


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to serve: a bundled name or a GGUF path. Repeat to serve several; the first is the "
            "default for requests that name no model.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8080,
    backend: BackendOpt = "llamacpp",
    weight_format: WeightFormatOpt = "auto",
    ctx_size: CtxOpt = 4096,
    threads: ThreadsOpt = None,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait per model; more get HTTP 429.", min=1)
    ] = 16,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            help="Requests generated at once per model, in one batch (llamacpp and shard backends; "
            "continuous batching, see docs/serving.md). Default: 4, fewer if their KV caches do not fit "
            "in memory. With --cluster: sequences in flight through the pipeline (default 2 per stage).",
            min=1,
        ),
    ] = None,
    speculative: SpeculativeOpt = "off",
    draft_max: DraftMaxOpt = 8,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Serve as a gateway over the nodes listed in this cluster YAML (see docs/cluster.md)."
        ),
    ] = None,
    allow_special_tokens: Annotated[
        bool,
        typer.Option(
            "--allow-special-tokens",
            help="Read special-token spellings in chat messages (e.g. <|im_end|>) as the model's control "
            "tokens. Default: message text is plain text, so a user cannot end their turn or fake a role.",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            help="Require 'Authorization: Bearer KEY' on every route but /health (repeatable). Also read "
            "from --api-key-file and the EDGEINFER_API_KEY environment variable.",
        ),
    ] = None,
    api_key_file: Annotated[
        str | None, typer.Option(help="File of API keys, one per line ('#' comments allowed).")
    ] = None,
    metrics_need_key: Annotated[
        bool,
        typer.Option("--metrics-need-key", help="Require the API key on /metrics too (open by default)."),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Host header value to accept (repeatable; '*' any, '*.example.com' a domain). Default: "
            "localhost, 127.0.0.1, ::1 and --host; any host when --host is 0.0.0.0 or ::.",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="Browser origin allowed to call the API (repeatable). Default: none."
        ),
    ] = None,
    max_body_bytes: Annotated[
        str, typer.Option(help="Largest request body accepted, e.g. 8MiB; larger ones get HTTP 413.")
    ] = "8MiB",
) -> None:
    """Serve models behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models,
    /health, /metrics). /health answers 503 until every model has loaded."""
    from edgeinfer.api.guard import build_policy
    from edgeinfer.api.server import ServerConfig, run
    from edgeinfer.engine.load import LoadOptions

    try:
        cfg = ServerConfig(
            models=tuple(model or [DEFAULT_MODEL]),
            load=LoadOptions(
                backend, ctx_size, threads, weight_format, speculative=speculative, draft_max=draft_max
            ),
            max_queue=max_queue,
            parallel=parallel,
            cluster=cluster,
            allow_special_tokens=allow_special_tokens,
            http=build_policy(
                host,
                api_keys=api_key or (),
                api_key_file=api_key_file,
                allowed_hosts=allowed_host or (),
                cors_origins=cors_origin or (),
                max_body=max_body_bytes,
                metrics_need_key=metrics_need_key,
            ),
        )
        _check_models(cfg.models if not cluster else ())
        if not cfg.http.api_keys.enabled and host not in ("127.0.0.1", "localhost", "::1"):
            err.print(
                f"[yellow]warning:[/] serving on {host} without an API key: anyone who reaches the port "
                "can use it (see --api-key and docs/security.md)"
            )
        run(cfg, host, port, log_level=log_level)
    except ValueError as exc:
        _fail(str(exc))


def _check_models(specs: tuple[str, ...]) -> None:
    """Fail fast, before the server starts, on a model that cannot exist."""
    from pathlib import Path

    from edgeinfer.models.registry import BUNDLED, lookup

    for spec in specs:
        if lookup(spec) is None and not Path(spec).expanduser().is_file():
            raise ValueError(
                f"model {spec!r} is neither a bundled model ({', '.join(BUNDLED)}) nor an existing GGUF file"
            )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt. Use '-' to read it from standard input.")],
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.", min=1)
    ] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.", min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling probability mass.", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed, for reproducible sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Send the prompt as plain text, without the chat template (a completion)."
        ),
    ] = False,
    system: Annotated[str | None, typer.Option(help="System message (chat mode only).")] = None,
    backend: BackendOpt = "llamacpp",
    weight_format: WeightFormatOpt = "auto",
    ctx_size: CtxOpt = 4096,
    threads: ThreadsOpt = None,
    speculative: SpeculativeOpt = "off",
    draft_max: DraftMaxOpt = 8,
) -> None:
    """Generate text locally and stream it to the terminal (chat template applied unless --raw or the model
    is a base model)."""
    from edgeinfer.engine.base import SamplingParams
    from edgeinfer.engine.chat import ChatFormatError, build_chat_prompt
    from edgeinfer.engine.generate import ContextLengthExceeded, Delta, GenerationResult, stream
    from edgeinfer.engine.load import BackendUnavailable, LoadOptions, open_backend
    from edgeinfer.engine.speculative import ReportsSpeculation
    from edgeinfer.models.registry import ModelNotFound

    if prompt == "-":
        prompt = sys.stdin.read()
    try:
        options = LoadOptions(
            backend, ctx_size, threads, weight_format, speculative=speculative, draft_max=draft_max
        )
        _check_models((model,))
        with err.status(f"loading {model} ..."):
            b = open_backend(model, options)
    except (ValueError, ModelNotFound, BackendUnavailable) as exc:
        _fail(str(exc))
    extra: tuple[str, ...] = ()
    if raw or not b.info.chat_template:
        tokens = b.tokenize(prompt)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        try:
            chat = build_chat_prompt(b, messages)
        except ChatFormatError as exc:
            b.close()
            _fail(str(exc))
        tokens, extra = chat.tokens, chat.stops
    params = SamplingParams(
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ()) + extra, seed=seed
    )
    try:
        for item in stream(b, tokens, params):
            if isinstance(item, Delta):
                sys.stdout.write(item.text)
                sys.stdout.flush()
            elif isinstance(item, GenerationResult):
                sys.stdout.write("\n")
                decode = len(item.token_times) / sum(item.token_times) if item.token_times else 0.0
                err.print(
                    f"[dim]{item.prompt_tokens} prompt + {item.completion_tokens} generated tokens, "
                    f"TTFT {1000 * (item.ttft or 0):.0f} ms, decode {decode:.1f} tok/s, "
                    f"finish: {item.finish_reason}[/]"
                )
                if isinstance(b, ReportsSpeculation):
                    stats = b.spec_stats
                    err.print(
                        f"[dim]speculative {options.speculative}: {stats.accepted}/{stats.drafted} drafted "
                        f"tokens accepted ({100 * stats.acceptance_rate:.0f} %), "
                        f"{stats.tokens_per_pass:.2f} tokens per pass[/]"
                    )
    except ContextLengthExceeded as exc:
        _fail(str(exc))
    finally:
        b.close()


@app.command()
def models() -> None:
    """List the bundled models and whether they are assembled in the cache yet."""
    from edgeinfer.models.registry import BUNDLED, DEFAULT_MODEL, cache_dir

    table = Table(title=f"bundled models (cache: {cache_dir()})")
    for col in ("name", "aliases", "kind", "cached", "description"):
        table.add_column(col)
    for m in BUNDLED.values():
        path = cache_dir() / m.filename
        kind = "chat" if m.chat else "base (completions)"
        name = m.name + (" (default)" if m.name == DEFAULT_MODEL else "")
        table.add_row(name, ", ".join(m.aliases), kind, "yes" if path.is_file() else "no", m.description)
    Console().print(table)
    Console().print("Any other GGUF file can be served with [bold]--model PATH[/].")


# cluster commands (edgeinfer/cluster/cli.py), listed after the single-device ones
app.command("node")(node)
app.command("plan")(plan)
app.add_typer(testbed_app, name="testbed")
app.add_typer(cluster_app, name="cluster")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
