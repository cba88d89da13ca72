"""`edgeinfer bench ...`: benchmarks and bottleneck analysis."""

import typer

app = typer.Typer(
    help="Benchmarks: model speed, serving load, accuracy, roofline and fit, reports.", no_args_is_help=True
)
