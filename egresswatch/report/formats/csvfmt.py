"""``--format csv``: RFC 4180 comma-separated values, safe to open in a spreadsheet.

A header of the column names, then one record per row (lists joined with ``,``, ``None``
empty, flags ``true``/``false``), CRLF line ends, fields quoted only where needed.

Formula injection (OWASP "CSV Injection"): a spreadsheet runs a cell that starts with ``=``,
``+``, ``-`` or ``@`` (also after blanks, and in the full-width forms U+FF1D, U+FF0B, U+FF0D,
U+FF20 that some spreadsheets fold), or with a tab or a carriage return. Such a text cell gets
a leading ``'``, which spreadsheets take as "this is text" and do not show. Numbers stay
numbers: a negative count is written as ``-3``, because it came from an ``int``, not from the
network.

Control characters become visible ``\\xNN`` escapes (so tab and CR never reach the file, and
``cat report.csv`` is harmless), and a cell is capped below a spreadsheet's 32767-character
limit. Give this renderer a stream opened with ``newline=""`` so the CRLFs arrive unchanged.
"""

from __future__ import annotations

import csv
from typing import IO

from egresswatch.report.formats._escape import inert
from egresswatch.report.interface import Renderer, Report, Value, cell_text

_FORMULA_START = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_CELL_MAX = 32_000


def defuse(text: str) -> str:
    """``text`` made inert for a terminal, and prefixed with ``'`` if a spreadsheet would take
    it as a formula."""
    text = inert(text, _CELL_MAX)
    if text.lstrip()[:1] in _FORMULA_START:
        return "'" + text
    return text


def csv_cell(value: Value) -> str:
    """One cell: numbers as written by Python, everything else defused text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return defuse(cell_text(value))


class CsvRenderer(Renderer):
    """Header of column names, one record per row."""

    def render(self, report: Report, stream: IO[str]) -> None:
        """Write the CSV to ``stream``."""
        writer = csv.writer(stream, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        writer.writerow([defuse(c) for c in report.columns])
        for row in report.rows:
            writer.writerow([csv_cell(row.get(c)) for c in report.columns])
