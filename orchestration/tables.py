"""The one table style of every ``backstop`` listing.

Plain columns (no box), a bold header, one space between columns: what a terminal shows
and what ``awk`` or a copy with the mouse takes. Ids and names are never cut: a column
marked ``whole`` keeps every character on one line. When the row is wider than the
terminal (80 columns when piped), the least useful columns are left out first (``drop``:
the higher, the sooner), then the other columns fold onto further lines of their row.
``--json`` always has every field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

GAP = 1  # spaces between two columns
MIN_FOLD = 8  # the narrowest a folding column gets


@dataclass(frozen=True)
class Column:
    header: str
    whole: bool = False  # an id or a name: never cut, never folded
    drop: int = 0  # 0: always shown; else left out when the row does not fit, highest first
    right: bool = False  # numbers and sizes


def natural_width(header: str, cells: Sequence[str]) -> int:
    return max(len(line) for cell in (header, *cells) for line in cell.splitlines() or [""])


def fitting(columns: Sequence[Column], widths: list[int], width: int) -> list[int]:
    """Indexes of the columns shown at ``width``: all of them if they fit side by side,
    else without the droppable ones, highest ``drop`` first, until they fit."""
    shown = list(range(len(columns)))
    droppable = sorted((n for n, c in enumerate(columns) if c.drop),
                       key=lambda n: -columns[n].drop)
    while droppable and sum(widths[n] for n in shown) + GAP * (len(shown) - 1) > width:
        shown.remove(droppable.pop(0))
    return shown


def allotted(columns: Sequence[Column], widths: list[int], shown: list[int],
             width: int) -> dict[int, int]:
    """The width of each shown column: its whole width if the row fits, else whole columns
    keep theirs and the others share what is left (at least ``MIN_FOLD`` each: a row wider
    than the terminal is better than an id cut short)."""
    folding = [n for n in shown if not columns[n].whole]
    space = width - GAP * (len(shown) - 1) - sum(widths[n] for n in shown if columns[n].whole)
    wanted = sum(widths[n] for n in folding)
    found = {n: widths[n] for n in shown}
    if wanted > space:
        for n in folding:
            found[n] = max(min(MIN_FOLD, widths[n]), space * widths[n] // wanted)
    return found


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]],
                title: str | None = None, console: Console | None = None) -> None:
    console = console or Console()
    widths = [natural_width(c.header, [row[n] for row in rows]) for n, c in enumerate(columns)]
    shown = fitting(columns, widths, console.width)
    sizes = allotted(columns, widths, shown, console.width)
    table = Table(box=None, padding=(0, GAP, 0, 0), pad_edge=False, header_style="bold",
                  title=title, title_justify="left", title_style="bold")
    for n in shown:
        column = columns[n]
        table.add_column(column.header, justify="right" if column.right else "left",
                         width=sizes[n], no_wrap=column.whole, overflow="fold")
    for row in rows:
        table.add_row(*(row[n] for n in shown))
    total = sum(sizes.values()) + GAP * (len(shown) - 1)
    terminal = console.width
    if total > terminal:  # wider than the terminal rather than an id cut short
        console.width = total
    try:
        console.print(table, crop=False)
    finally:
        console.width = terminal
