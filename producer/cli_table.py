"""Tables that fit the terminal: columns dropped or truncated by priority, never squeezed,
and no word or path ever broken across lines.

Rich, asked to fit a table wider than the terminal, shrinks every column in the end, down
to one letter a line. `fit_table` decides the widths itself instead: each column has a
priority and the narrowest width at which it is still readable; when the columns do not
fit, the least important ones are left out. It then lays out every cell itself (`cut`,
`wrap_words`), so Rich never has to fold one: a value is cut on one line with an ellipsis
("ellipsis"), or wrapped at spaces only ("words"), where a word too long for the column
is shortened on its line, a path or URL keeping its end ("…/videos/0c1c0196….mp4").
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
ELLIPSIS = "…"


@dataclass(frozen=True)
class Col:
    """A column. `priority`: lower is kept longer (0 is never dropped). `min_width`: the
    least width it is shown at (None: its widest cell, never cut). `overflow`: how a cell
    wider than the column is laid out: "ellipsis" (cut on one line) or "words" (wrapped at
    spaces; a word longer than the column shortened by `cut`). `short`: a shorter
    rendering of each cell for when the whole one does not fit (e.g. an id prefix)."""

    header: str
    priority: int
    min_width: int | None = None
    overflow: Literal["ellipsis", "words"] = "ellipsis"
    justify: Literal["left", "right"] = "left"
    short: Callable[[str], str] | None = None


def _middle(text: str, width: int) -> str:
    """`text` in `width` characters with its middle left out; the end (an extension, the
    last characters of an id) kept."""
    back = max(1, min(len(text) // 2, (width - 1) // 3))
    for dot in (text.rfind("."),):
        if dot > 0 and len(text) - dot + 1 <= (width - 1) // 2:
            back = max(back, len(text) - dot + 1)
    front = width - 1 - back
    return text[:front] + ELLIPSIS + text[-back:] if front > 0 else ELLIPSIS + text[-(width - 1) :]


def cut(word: str, width: int) -> str:
    """`word` in at most `width` characters. A path or URL (it holds a "/") keeps its
    meaningful end: the file name whole with as many folders before it as fit
    ("…/videos/0c1c0196.mp4", "s3://bucket/…/a.mp4"), else the name with its middle left
    out; any other word keeps its start ("content_filt…")."""
    if len(word) <= width:
        return word
    if width <= 1:
        return ELLIPSIS[:width]
    if "/" not in word.strip("/"):
        return word[: width - 1] + ELLIPSIS
    scheme, sep, rest = word.partition("://")
    head = scheme + sep if sep else ""
    parts = (rest if sep else word).split("/")
    if sep and len(parts) > 1:  # the bucket or host belongs to the head
        head, parts = head + parts[0], parts[1:]
    name = parts[-1]
    if len(name) + 2 > width:
        return ELLIPSIS + "/" + _middle(name, width - 2) if width >= 8 else _middle(name, width)
    # The most trailing folders that fit, with the head (scheme and bucket) when it fits too.
    for kept in range(len(parts), 0, -1):
        tail = "/".join(parts[-kept:])
        if kept < len(parts) and head:
            joint = "" if head.endswith("/") else "/"
            with_head = f"{head}{joint}{ELLIPSIS}/{tail}"
            if len(with_head) <= width:
                return with_head
        if len(tail) + 2 <= width:
            return f"{ELLIPSIS}/{tail}"
    return _middle(word, width)  # not reached: the name alone fits


def wrap_words(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken at spaces only; a word longer
    than `width` gets a line of its own, shortened by `cut`."""
    lines: list[str] = []
    line = ""
    for whole in text.split():
        word = cut(whole, width)
        if line and len(line) + 1 + len(word) <= width:
            line += " " + word
            continue
        if line:
            lines.append(line)
        line = word
    lines.append(line)
    return lines


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
    whole = [i for i in by_priority if shorts[i] is None]
    # Spare width goes first to the columns cut on one line (a model name), then, a
    # character at a time in turn, to the wrapped ones (a status, an output path, an
    # error: already readable at their least widths), last to whole values of shortened
    # ones (ids).
    for i in whole:
        if columns[i].overflow == "ellipsis":
            grow = max(0, min(spare, natural[i] - widths[i]))
            widths[i] += grow
            spare -= grow
    wrapped = [i for i in whole if columns[i].overflow == "words"]
    while spare > 0 and (growing := [i for i in wrapped if widths[i] < natural[i]]):
        for i in growing[:spare]:
            widths[i] += 1
            spare -= 1
    for i in by_priority:
        if shorts[i] is not None and natural[i] - widths[i] <= spare:
            spare -= natural[i] - widths[i]
            widths[i] = natural[i]
            use_short[i] = False

    table = Table()
    for i in kept:
        col = columns[i]
        table.add_column(col.header, width=max(widths[i], 1), no_wrap=True, overflow="ellipsis", justify=col.justify)
    for r, row in enumerate(rows):
        cells = []
        for i in kept:
            values = shorts[i]
            value = values[r] if values is not None and use_short[i] else row[i]
            cells.append(Text(_lay_out(value, widths[i], columns[i].overflow)))
        table.add_row(*cells)
    return table


def _lay_out(value: str, width: int, overflow: Literal["ellipsis", "words"]) -> str:
    if len(value) <= width and "\n" not in value:
        return value
    if overflow == "words":
        return "\n".join(wrap_words(value, max(width, 1)))
    return value[: max(width - 1, 0)] + ELLIPSIS
