"""Text tables for the CLI's list commands (incidents, controls, outbox, silences)."""

from __future__ import annotations

from collections.abc import Sequence


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
