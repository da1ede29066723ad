"""Tables for the command-line tools: rich on a terminal, plain aligned text when piped.

On a terminal the table is laid out for the terminal's width, never by clipping cells:

* the first column (the tensor name) comes first and is never dropped; a name longer than
  its column wraps onto the next line (every character is kept);
* when the table does not fit, whole columns are left out, in the order the caller gives
  (``drop``, least useful first), and a line under the table says which;
* a number is never cut: every other column is exactly as wide as its widest cell.

Every cell is printed as text, never as rich markup: a tensor named ``[/]`` or
``[link=file:///etc/passwd]x[/link]`` prints as those characters. Control characters are
escaped (``\\x1b``) by :func:`dcformat.cliutil._escape`.
"""

from __future__ import annotations

import sys

from .cliutil import _escape

NAME_WIDTH = 28  # columns are dropped until the names get this much room (or all of theirs)
MIN_NAME_WIDTH = 10  # below this the table is printed as plain text, wider than the terminal
GAP = 2  # spaces between columns


def _header_width(h: str) -> int:
    """A long header may wrap at its spaces ("codebook B" over two lines); a short one does not."""
    return len(h) if len(h) <= 9 else max((len(w) for w in h.split()), default=0)


def wrap_name(name: str, width: int) -> str:
    """``name`` over lines of at most ``width`` characters, broken after '.', '/' or ':' where it
    can be ("model.encoder.layers.0." / "self_attn.q_proj.weight"); every character is kept."""
    import re

    if len(name) <= width:
        return name
    parts = [p for p in re.split(r"(?<=[./:])", name) if p]
    lines, cur = [], ""
    for p in parts:
        while len(p) > width:  # a piece with no break in it: fold it
            room = width - len(cur)
            lines.append(cur + p[:room])
            cur, p = "", p[room:]
        if len(cur) + len(p) > width:
            lines.append(cur)
            cur = ""
        cur += p
    if cur:
        lines.append(cur)
    return "\n".join(line for line in lines if line)


def layout(columns: list[str], rows: list[list[str]], width: int, drop: list[str] | None = None,
           footer: list[str] | None = None) -> tuple[list[int], list[int]] | None:
    """(indices of the columns shown, their widths) for a terminal ``width`` columns wide, or None
    when even the name and the columns that may not be dropped do not fit."""
    allrows = rows + ([footer] if footer else [])
    widths = [max([_header_width(c)] + [len(r[i]) for r in allrows]) for i, c in enumerate(columns)]
    name_full = max([len(columns[0])] + [len(r[0]) for r in allrows])
    shown = list(range(len(columns)))
    droppable = [columns.index(c) for c in (drop or []) if c in columns and columns.index(c) != 0]

    def room() -> int:  # what is left for the name column
        return width - sum(widths[i] for i in shown[1:]) - GAP * (len(shown) - 1)

    for i in droppable:
        if room() >= min(name_full, NAME_WIDTH):
            break
        shown.remove(i)
    if room() < min(name_full, MIN_NAME_WIDTH):
        return None
    name_w = min(name_full, room())
    return shown, [name_w] + [widths[i] for i in shown[1:]]


def render(title: str | None, columns: list[str], rows: list[list[str]], right: set[str] | None = None,
           file=None, footer: list[str] | None = None, drop: list[str] | None = None, console=None,
           width: int | None = None, more: str = "a wider terminal shows them") -> None:
    """Print a table; ``right`` names the right-aligned columns; cells are escaped.

    ``drop`` lists the columns that may be left out on a narrow terminal, least useful first.
    ``console`` (a rich Console) or ``width`` forces the terminal layout (for tests and callers
    that know the width); otherwise a terminal gets it and a pipe gets plain text."""
    right = right or set()
    rows = [[_escape(c) for c in r] for r in rows]
    footer = [_escape(c) for c in footer] if footer else None
    title = _escape(title) if title else title
    if console is None and (width is not None or (file or sys.stdout).isatty()):
        from rich.console import Console

        console = Console(file=file or sys.stdout, highlight=False, width=width)
    if console is not None:
        lay = layout(columns, rows, console.width, drop, footer)
        if lay is not None:
            return _rich(console, title, columns, rows, right, footer, *lay, more=more)
        file = console.file  # too narrow for any layout: plain text, which the terminal wraps
    _plain(file or sys.stdout, title, columns, rows, right, footer)


def _rich(console, title, columns, rows, right, footer, shown, widths, more) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title) if title else None, title_justify="left", show_footer=footer is not None,
              box=box.SIMPLE, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), collapse_padding=False,
              expand=False)
    for i, w in zip(shown, widths):
        c = columns[i]
        t.add_column(Text(c), footer=Text(footer[i]) if footer else "", justify="right" if c in right else "left",
                     width=w, min_width=w, max_width=w, no_wrap=False, overflow="fold")
    for r in rows:
        t.add_row(*(Text(wrap_name(r[i], widths[0]) if i == 0 else r[i]) for i in shown))
    console.print(t)
    hidden = [columns[i] for i in range(len(columns)) if i not in shown]
    if hidden:
        console.print(Text(f"({len(hidden)} column{'s' if len(hidden) > 1 else ''} left out to fit "
                           f"{console.width} columns: {', '.join(hidden)}; {more})",
                           style="dim"))


def _plain(file, title, columns, rows, right, footer) -> None:
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
