"""Tables that fit the terminal: columns dropped or truncated by priority, never squeezed.

Rich, asked to fit a table wider than the terminal, shrinks every column in the end, down
to one letter a line. `fit_table` decides the widths itself instead: each column has a
priority and the narrowest width at which it is still readable; when the columns do not
fit, the least important ones are left out, and only columns that may be cut are cut
(with an ellipsis) or folded (in pieces of at least their least width).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table
from rich.text import Text

# Rich's default table: a border on each side and between columns, a space of padding on
# each side of every cell.
_EDGE = 1
_PER_COLUMN = 3


@dataclass(frozen=True)
class Col:
    """A column. `priority`: lower is kept longer (0 is never dropped). `min_width`: the
    least width it is shown at (None: its widest cell, never cut). `overflow`: how a cell
    wider than the column is cut: "ellipsis" or "fold" (wrapped in pieces). `short`: a
    shorter rendering of each cell for when the whole one does not fit (e.g. an id
    prefix)."""

    header: str
    priority: int
    min_width: int | None = None
    overflow: Literal["ellipsis", "fold"] = "ellipsis"
    justify: Literal["left", "right"] = "left"
    short: Callable[[str], str] | None = None


def fit_table(columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> Table:
    """A table of `rows` (one string per column) at most `width` characters wide."""
    natural = [max([len(col.header), *(len(row[i]) for row in rows)]) for i, col in enumerate(columns)]
    shorts = [[col.short(row[i]) for row in rows] if col.short is not None else None for i, col in enumerate(columns)]
    short_natural = [
        max([len(col.header), *(len(v) for v in values)]) if values is not None else natural[i]
        for i, (col, values) in enumerate(zip(columns, shorts, strict=True))
    ]

    def least(i: int) -> int:
        col = columns[i]
        floor = short_natural[i]
        if col.min_width is not None:
            floor = min(floor, max(col.min_width, len(col.header)))
        return floor

    kept = list(range(len(columns)))

    def room(indices: list[int]) -> int:
        return width - _EDGE - _PER_COLUMN * len(indices)

    # Leave out the least important columns until the rest fit at their least widths.
    while len(kept) > 1 and sum(least(i) for i in kept) > room(kept):
        droppable = [i for i in kept if columns[i].priority > 0]
        if not droppable:
            break
        kept.remove(max(droppable, key=lambda i: (columns[i].priority, i)))

    widths = {i: least(i) for i in kept}
    spare = room(kept) - sum(widths.values())
    use_short = {i: shorts[i] is not None for i in kept}
    by_priority = sorted(kept, key=lambda i: (columns[i].priority, i))
    # Spare width goes first to columns that would be cut (a model name), then to those
    # that fold (an output path, an error), last to whole values of shortened ones (ids).
    for group in (
        [i for i in by_priority if shorts[i] is None and columns[i].overflow == "ellipsis"],
        [i for i in by_priority if shorts[i] is None and columns[i].overflow == "fold"],
    ):
        for i in group:
            grow = min(spare, natural[i] - widths[i])
            widths[i] += grow
            spare -= grow
    for i in by_priority:
        if shorts[i] is not None and natural[i] - widths[i] <= spare:
            spare -= natural[i] - widths[i]
            widths[i] = natural[i]
            use_short[i] = False

    table = Table()
    for i in kept:
        col = columns[i]
        table.add_column(
            col.header,
            width=max(widths[i], 1),
            no_wrap=col.overflow == "ellipsis",
            overflow=col.overflow,
            justify=col.justify,
        )
    for r, row in enumerate(rows):
        cells = []
        for i in kept:
            values = shorts[i]
            value = values[r] if values is not None and use_short[i] else row[i]
            cells.append(Text(value))
        table.add_row(*cells)
    return table
