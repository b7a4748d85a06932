"""renderer(): one renderer per format; every format renders an empty report of every kind."""

from __future__ import annotations

import pytest

from egresswatch.report.formats import renderer
from egresswatch.report.formats.csvfmt import CsvRenderer
from egresswatch.report.formats.html import HtmlRenderer
from egresswatch.report.formats.jsonfmt import JsonlRenderer, JsonRenderer
from egresswatch.report.formats.junit import JunitRenderer
from egresswatch.report.formats.markdown import MarkdownRenderer
from egresswatch.report.formats.table import TableRenderer
from egresswatch.report.interface import Renderer, ReportFormat, ReportKind
from tests.egresswatch.report.builders import empty_report
from tests.egresswatch.report.hostile import check, render

EXPECTED: dict[ReportFormat, type[Renderer]] = {
    ReportFormat.TABLE: TableRenderer,
    ReportFormat.JSON: JsonRenderer,
    ReportFormat.JSONL: JsonlRenderer,
    ReportFormat.CSV: CsvRenderer,
    ReportFormat.MARKDOWN: MarkdownRenderer,
    ReportFormat.HTML: HtmlRenderer,
    ReportFormat.JUNIT: JunitRenderer,
}


def test_every_format_has_a_renderer() -> None:
    assert set(EXPECTED) == set(ReportFormat)
    for fmt, cls in EXPECTED.items():
        assert type(renderer(fmt)) is cls
        assert type(renderer(ReportFormat(fmt.value))) is cls


def test_renderers_hold_no_shared_state() -> None:
    assert renderer(ReportFormat.TABLE) is not renderer(ReportFormat.TABLE)


@pytest.mark.parametrize("kind", list(ReportKind))
@pytest.mark.parametrize("fmt", list(ReportFormat))
def test_empty_report_renders(fmt: ReportFormat, kind: ReportKind) -> None:
    report = empty_report(kind)
    out = render(fmt, report)
    check(fmt, out, report)
    if fmt is ReportFormat.JSONL:
        assert out == ""
    else:
        assert out.endswith("\n")
