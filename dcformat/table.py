"""Tables for the command-line tools: rich on a terminal, plain aligned text when piped."""

from __future__ import annotations

import sys

from .cliutil import _escape


def render(title: str | None, columns: list[str], rows: list[list[str]], right: set[str] | None = None,
           file=None, footer: list[str] | None = None) -> None:
    """Print a table; ``right`` names the right-aligned columns; cells are escaped."""
    file = file or sys.stdout
    right = right or set()
    rows = [[_escape(c) for c in r] for r in rows]
    if file.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_footer=footer is not None)
        for i, c in enumerate(columns):
            t.add_column(c, justify="right" if c in right else "left", footer=footer[i] if footer else "",
                         no_wrap=i != 0, overflow="fold",
                         min_width=len(c) if i else min(40, max([len(c)] + [len(r[0]) for r in rows])))
        for r in rows:
            t.add_row(*r, end_section=False)
        Console(file=file, highlight=False).print(t)
        return
    allrows = [columns] + rows + ([footer] if footer else [])
    widths = [max(len(r[i]) for r in allrows) for i in range(len(columns))]

    def line(r):
        return "  ".join(c.rjust(w) if columns[i] in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    if title:
        print(title, file=file)
    print(line(columns), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in rows:
        print(line(r), file=file)
    if footer:
        print("  ".join("-" * w for w in widths), file=file)
        print(line(footer), file=file)
