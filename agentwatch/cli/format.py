"""Output of the CLI's list commands (incidents, controls, outbox, silences): one ``--format``
option, text tables, and the same answer for "nothing to list" in both formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import click

#: ``--format table|json`` for a list command (the command gets it as ``fmt``).
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def echo_rows(rows: list, fmt: str, empty: str, table: Callable[[list], str]) -> None:
    """The rows as the API gave them (json), ``empty`` when there are none, else ``table(rows)``."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(empty)
    else:
        click.echo(table(rows))


def text_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks.

    >>> print(text_table(("ID", "WHO"), [("a", "ann"), ("bcd", "bo")]))
    ID   WHO
    a    ann
    bcd  bo
    """
    rows = [tuple(header), *(tuple(line) for line in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
