"""One renderer per ``egresswatch report --format``; :func:`renderer` picks it.

=========  ============================  ======================================================
format     module                        for
=========  ============================  ======================================================
table      :mod:`.table`                 a person at a terminal (rich; colour when asked for)
json       :mod:`.jsonfmt`               programs: one document with rows, summary and charts
jsonl      :mod:`.jsonfmt`               programs: one object per row
csv        :mod:`.csvfmt`                spreadsheets (formula injection defused)
markdown   :mod:`.markdown`              CI step summaries, pull request comments
html       :mod:`.html`                  one self-contained page with charts
junit      :mod:`.junit`                 CI test reporters: one test case per rule and host
=========  ============================  ======================================================

Every renderer treats every string of the report as hostile (see
:mod:`egresswatch.report.interface`); :mod:`._escape` holds the character pass they share.
"""

from __future__ import annotations

from egresswatch.report.formats.csvfmt import CsvRenderer
from egresswatch.report.formats.html import HtmlRenderer
from egresswatch.report.formats.jsonfmt import JsonlRenderer, JsonRenderer
from egresswatch.report.formats.junit import JunitRenderer
from egresswatch.report.formats.markdown import MarkdownRenderer
from egresswatch.report.formats.table import TableRenderer
from egresswatch.report.interface import Renderer, ReportFormat

__all__ = ["renderer"]


def renderer(fmt: ReportFormat, *, color: bool = False, width: int | None = None) -> Renderer:
    """The renderer for ``fmt``. ``color`` and ``width`` matter only to ``table``: colour
    violations and warnings (pass ``stream.isatty()``, or a ``--color`` choice), and the
    console width (default: the terminal's when colouring, else wide enough never to wrap)."""
    match ReportFormat(fmt):
        case ReportFormat.TABLE:
            return TableRenderer(color=color, width=width)
        case ReportFormat.JSON:
            return JsonRenderer()
        case ReportFormat.JSONL:
            return JsonlRenderer()
        case ReportFormat.CSV:
            return CsvRenderer()
        case ReportFormat.MARKDOWN:
            return MarkdownRenderer()
        case ReportFormat.HTML:
            return HtmlRenderer()
        case ReportFormat.JUNIT:
            return JunitRenderer()
