"""--format markdown: heading, summary list, a GFM table; data escaped for Markdown."""

from __future__ import annotations

import dataclasses

import pytest

from egresswatch.report.formats.markdown import md
from egresswatch.report.interface import ReportFormat
from tests.egresswatch.report.builders import empty_report, grouped_report, violations_report
from tests.egresswatch.report.hostile import check_markdown, render


def test_heading_summary_and_table() -> None:
    out = render(ReportFormat.MARKDOWN, violations_report())
    lines = out.splitlines()
    assert lines[0] == "# egresswatch report"
    assert "- **violations**: 3" in lines
    assert "- **connections**: 12 \\(allow 8, warn 1, violation 3\\)" in lines
    assert "- **top rules**: no-cn-inference \\(2\\), no-cn \\(1\\)" in lines
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == (
        "| time | machine | process | host | destination | provider | country | rule | reason |"
    )
    assert table[1] == "|---|---|---|---|---|---|---|---|---|"
    assert table[2].startswith("| 2026-11-24 09:15:02 | dev-laptop-7 | node | api.deepseek.com |")
    assert "\\[2001:db8::1\\]:443" in table[4]
    parsed = check_markdown(out, 9)
    assert parsed.cells_per_row == [9] * 4


def test_grouped_numbers_are_right_aligned() -> None:
    out = render(ReportFormat.MARKDOWN, grouped_report())
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---|---|"
    assert lines[2].startswith("| api.openai.com | 9 | 3 | 8 | 1 | 0 | 0 |")
    assert lines[4].startswith("| \\(none\\) |")


def test_empty_and_truncated() -> None:
    assert "\nNothing matched.\n" in render(ReportFormat.MARKDOWN, empty_report())
    out = render(ReportFormat.MARKDOWN, dataclasses.replace(violations_report(), truncated=5))
    assert out.endswith("_5 more rows not shown \\(raise --limit to see them\\)_\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("| x |", "\\| x \\|"),
        ("[a](javascript:alert(1))", "\\[a\\]\\(javascript:alert\\(1\\)\\)"),
        ("<b>&amp;", "&lt;b&gt;&amp;amp;"),
        ("`x` *y* _z_ ~w~ #h !i $m$", "\\`x\\` \\*y\\* \\_z\\_ \\~w\\~ \\#h \\!i \\$m\\$"),
        ("\\", "\\\\"),
        ("- item", "\\- item"),
        ("+1", "\\+1"),
        ("a\nb", "a\\\\x0ab"),
        ("https://evil.example", "https\\://evil.example"),
        ("www.evil.example", "www\\.evil.example"),
        ("me@evil.example", "me\\@evil.example"),
        ("api.openai.com", "api.openai.com"),
    ],
)
def test_md_escapes(text: str, expected: str) -> None:
    assert md(text) == expected


def test_md_caps_long_cells() -> None:
    assert md("x" * 500) == "x" * 199 + "…"
