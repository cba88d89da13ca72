"""One table type for every benchmark: built once by the kind, rendered for the terminal, Markdown or JSON.

A kind's ``rows(run)`` returns a ``Table`` (title, header, rows of text, notes); ``render`` prints it to a
terminal with rich, or as a Markdown table (llama-bench style) when the output is piped or logged, so a
header is never squeezed into "deco…". ``bench report`` puts the same tables, one ``run`` column in front,
into its Markdown file. The split benchmark and the ``benchmarks/`` scripts print through the same renderer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO


class Format(StrEnum):
    """How a bench command prints its results."""

    TABLE = "table"  # rich table, for a terminal
    MD = "md"  # Markdown table, full width (the default when stdout is not a terminal)
    JSON = "json"  # the run document, as written to the run file


def default_format(stream: TextIO | None = None) -> Format:
    """A rich table on a terminal, Markdown anywhere else (a pipe, a file, a CI log)."""
    stream = stream or sys.stdout
    return Format.TABLE if stream.isatty() else Format.MD


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    right: frozenset[int] = frozenset()  # indexes of right-aligned (numeric) columns
    notes: tuple[str, ...] = ()  # lines shown above the table (e.g. the device a roofline was measured on)

    def __post_init__(self) -> None:
        bad = [r for r in self.rows if len(r) != len(self.header)]
        if bad:
            raise ValueError(
                f"table {self.title!r}: a row has {len(bad[0])} cells for {len(self.header)} columns"
            )

    def markdown(self, heading: str = "") -> list[str]:
        """The table as Markdown lines; ``heading`` (e.g. ``"##"``) adds the title as a heading."""
        out = [f"{heading} {self.title}", ""] if heading else []
        if self.notes:
            out += [f"- {n}" for n in self.notes] + [""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append(
            "|" + "|".join("---:" if i in self.right else "---" for i in range(len(self.header))) + "|"
        )
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return out + [""]

    def with_run_column(self, label: str) -> Table:
        """The same table with a first ``run`` column holding ``label`` (to put several runs side by side)."""
        return Table(
            self.title,
            ("run", *self.header),
            [(label, *r) for r in self.rows],
            frozenset(i + 1 for i in self.right),
            tuple(f"{label}: {n}" for n in self.notes),
        )


def merge(tables: Sequence[Table]) -> Table:
    """Tables of the same shape (one per run, with their run column) as one."""
    if not tables:
        raise ValueError("no tables to merge")
    first = tables[0]
    if any(t.header != first.header for t in tables):
        raise ValueError(f"cannot merge tables {first.title!r} with different headers")
    rows = [r for t in tables for r in t.rows]
    return Table(first.title, first.header, rows, first.right, tuple(n for t in tables for n in t.notes))


@dataclass
class Output:
    """Where a command's tables go: ``fmt`` decides the rendering (``None``: by whether stdout is a tty)."""

    fmt: Format | None = None
    stream: TextIO | None = None

    @property
    def format(self) -> Format:
        return self.fmt or default_format(self.stream)

    def table(self, table: Table) -> None:
        if self.format is Format.JSON:
            return  # the JSON document is printed whole by ``document``
        stream = self.stream or sys.stdout
        if self.format is Format.MD:
            stream.write("\n".join(table.markdown("##")) + "\n")
            stream.flush()
            return
        from rich.console import Console
        from rich.table import Table as RichTable
        from rich.text import Text

        # on a terminal rich fits its width; written to a pipe or file (-f table), the table keeps its own
        console = Console(file=stream, width=None if stream.isatty() else 400)
        for note in table.notes:
            console.print(Text(note))
        rt = RichTable(title=table.title)
        for i, col in enumerate(table.header):
            rt.add_column(col, justify="right" if i in table.right else "left")
        for r in table.rows:
            rt.add_row(*(Text(c) for c in r))
        console.print(rt)

    def document(self, doc: dict[str, Any]) -> None:
        """The whole result document, printed only in the JSON format."""
        if self.format is Format.JSON:
            stream = self.stream or sys.stdout
            stream.write(json.dumps(doc, indent=2) + "\n")
            stream.flush()


def fmt_num(x: float | None, digits: int = 1) -> str:
    """A number with thousands separators, or an en dash for a missing value."""
    return "–" if x is None else f"{x:,.{digits}f}"
