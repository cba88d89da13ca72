"""The `edgeinfer` command. Heavy imports (torch, llama.cpp) happen inside commands, so --help is instant."""

from __future__ import annotations

import typer

from edgeinfer.bench.cli import app as bench_app
from edgeinfer.split.cli import app as split_app

app = typer.Typer(
    help="Run quantized LLMs and DNNs on edge devices you own: serve, shard, split, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(bench_app, name="bench")
app.add_typer(split_app, name="split")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
