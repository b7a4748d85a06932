"""``--format table``: aligned columns for a person at a terminal (rich).

Every cell is a :class:`rich.text.Text` built from text passed through
:func:`~egresswatch.report.formats._escape.inert`, never a markup string: a server name such
as ``[link=http://evil]x[/link]`` prints as those characters, and a control character prints
as ``\\x1b``. Colour (violations red, warnings yellow) only when asked for; without it the
output carries no escape sequence at all, and is as wide as its content (cells are capped), so
a file or a pipe gets unwrapped, aligned lines.
"""

from __future__ import annotations

import io
import os
from typing import IO

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from egresswatch.report.formats import _layout
from egresswatch.report.formats._escape import inert
from egresswatch.report.interface import Renderer, Report, Value

_UNWRAPPED = 4096
"""Console width without a terminal: wider than any table of capped cells."""
_HEADER_CAP = 200
_STYLES = {"violation": "bold red", "warn": "yellow"}
_GAP = "   "
_RULE = "─"
_COUNT_STYLES = {"violation": "red", "violations": "red", "warn": "yellow"}


class TableRenderer(Renderer):
    """Header lines (title, source, filters, summary), then one table row per report row."""

    def __init__(self, *, color: bool = False, width: int | None = None) -> None:
        self._color = color
        self._width = width

    def render(self, report: Report, stream: IO[str]) -> None:
        """Write the table to ``stream``."""
        buffer = io.StringIO()
        console = Console(
            file=buffer,
            width=self._width or self._detect_width(stream),
            color_system="standard" if self._color else None,
            force_terminal=self._color,
            force_jupyter=False,
            force_interactive=False,
            markup=False,
            emoji=False,
            highlight=False,
            legacy_windows=False,
            soft_wrap=False,
        )
        for line in self._header(report):
            console.print(line)
        console.print()
        if report.rows:
            for row in self._table(report):
                console.print(row)
        else:
            console.print(Text("nothing matched", style="dim"))
        note = _layout.truncated_text(report)
        if note:
            console.print(Text(note, style="dim"))
        # rich pads cells to the column width; trailing blanks are noise in a file or a diff.
        stream.writelines(line.rstrip(" ") + "\n" for line in buffer.getvalue().splitlines())

    def _detect_width(self, stream: IO[str]) -> int:
        if not self._color:
            return _UNWRAPPED
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return 200

    def _header(self, report: Report) -> list[Text]:
        lines = [
            Text(inert(report.title, _HEADER_CAP), style="bold"),
            _labelled("source", report.source),
            _labelled("generated", _layout.short_time(report.generated) + " UTC"),
            _labelled("filters", _layout.filters_text(report)),
        ]
        for label, value in _layout.summary_items(report):
            line = _labelled(label, value)
            if label == "violations" and report.summary.violations and self._color:
                line.stylize("bold red", len(label) + 2)
            lines.append(line)
        return lines

    def _table(self, report: Report) -> list[Text]:
        """The rows as aligned lines. Laid out here rather than by rich's Table, which
        measures and wraps every cell and takes most of a second for a thousand rows; cells
        are capped and never wrap, so plain padding is all a table of them needs."""
        cols = _layout.columns(report)
        numeric = [any(c.numeric(row) for row in report.rows) for c in cols]
        header = [inert(col.header, 40) for col in cols]
        cells = [[self._cell(col, row) for col in cols] for row in report.rows]
        widths = [
            max([cell_len(header[i]), *(cell_len(line[i][0]) for line in cells)])
            for i in range(len(cols))
        ]

        def line(parts: list[tuple[str, str]]) -> Text:
            out = Text()
            for i, ((text, style), width) in enumerate(zip(parts, widths, strict=True)):
                pad = " " * (width - cell_len(text))
                if i:
                    out.append(_GAP)
                if numeric[i]:
                    out.append(pad)
                out.append(text, style=style)
                if not numeric[i]:
                    out.append(pad)
            return out

        rule = Text(_RULE * (sum(widths) + len(_GAP) * (len(widths) - 1)), style="dim")
        return [line([(h, "bold") for h in header]), rule, *(line(c) for c in cells)]

    def _cell(self, col: _layout.Column, row: dict[str, Value]) -> tuple[str, str]:
        text = inert(col.text(row), col.cap)
        style = ""
        if self._color:
            if col.name == "verdict":
                style = _STYLES.get(text, "")
            elif col.name in _COUNT_STYLES and col.numeric(row) and col.value(row):
                style = _COUNT_STYLES[col.name]
        return text, style


def _labelled(label: str, value: str) -> Text:
    """``label: value``, the label dim, the value inert."""
    text = Text(f"{label}: ", style="dim")
    text.append(inert(value, _HEADER_CAP * 2))
    return text
