"""Lists printed as a table when the terminal is wide enough, else as two lines or one block
per row."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Narrowest a column that wraps may get before the rows are shown as blocks instead.
FLEX_MIN = 16
_GAP = 2


def print_rows(
    out: Console,
    columns: Sequence[str],
    rows: Sequence[Sequence[str | Text]],
    wrap: frozenset[str] = frozenset(),
    two_lines: bool = False,
) -> None:
    """Every cell in full: columns not in `wrap` keep their widest cell, those in it fold.

    Where that cannot fit the terminal (80 columns often cannot), each row becomes a block
    of "column value" lines, rather than a table whose cells are cut or columns dropped;
    with `two_lines`, two lines a row are tried first (see _print_two_lines)."""
    texts = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    widths = [
        max([len(name), *(row[i].cell_len for row in texts)]) for i, name in enumerate(columns)
    ]
    needed = sum(
        FLEX_MIN if name in wrap else width for name, width in zip(columns, widths, strict=True)
    ) + _GAP * (len(columns) - 1)
    if needed <= out.width:
        table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, _GAP, 0, 0))
        for name, width in zip(columns, widths, strict=True):
            if name in wrap:
                table.add_column(name, overflow="fold", ratio=1, min_width=FLEX_MIN)
            else:
                table.add_column(name, no_wrap=True, min_width=width)
        for row in texts:
            table.add_row(*row)
        out.print(table)
        return
    if two_lines and _print_two_lines(out, columns, texts, widths, wrap):
        return
    label = max(len(name) for name in columns)
    for n, row in enumerate(texts):
        if n:
            out.print()
        block = Table.grid(padding=(0, _GAP, 0, 0))
        block.add_column(style="dim", no_wrap=True, min_width=label)
        block.add_column(overflow="fold")
        for name, cell in zip(columns, row, strict=True):
            block.add_row(name, cell)
        out.print(block)


# How far a row's second line is indented under its first.
_INDENT = 2


def _print_two_lines(
    out: Console,
    columns: Sequence[str],
    texts: list[list[Text]],
    widths: list[int],
    wrap: frozenset[str],
) -> bool:
    """Each row (the header too) on two lines: the leading columns that fit, then the rest
    indented, where only `wrap` columns may be cut short. False, printing nothing, where
    even that cannot fit."""
    first, used = 0, -_GAP
    while first < len(columns) and columns[first] not in wrap:
        if used + _GAP + widths[first] > out.width:
            break
        used += _GAP + widths[first]
        first += 1
    fixed = [widths[i] for i in range(first, len(columns)) if columns[i] not in wrap]
    if not first or _INDENT + sum(fixed) + _GAP * len(fixed) > out.width:
        return False
    header = [Text(name, style="bold") for name in columns]
    for row in [header, *texts]:
        out.print(_line(row[:first], widths[:first], 0), no_wrap=True, overflow="ellipsis")
        out.print(_line(row[first:], widths[first:], _INDENT), no_wrap=True, overflow="ellipsis")
    return True


def _line(cells: Sequence[Text], widths: Sequence[int], indent: int) -> Text:
    """The cells in columns of `widths`, two spaces apart, the last one unpadded."""
    line = Text(" " * indent)
    for n, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        line.append_text(cell)
        if n < len(cells) - 1:
            line.append(" " * (width - cell.cell_len + _GAP))
    return line
