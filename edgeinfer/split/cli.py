"""`edgeinfer split ...`: device<->edge split computing and early exit for DNNs."""

import typer

app = typer.Typer(help="Device<->edge split computing and early exit for DNNs.", no_args_is_help=True)
