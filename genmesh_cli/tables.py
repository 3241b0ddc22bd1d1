"""Lists printed as a table when the terminal is wide enough, else as one block per row."""

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
) -> None:
    """Every cell in full: columns not in `wrap` keep their widest cell, those in it fold.

    Where that cannot fit the terminal (80 columns often cannot), each row becomes a block
    of "column value" lines, rather than a table whose cells are cut or columns dropped."""
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
