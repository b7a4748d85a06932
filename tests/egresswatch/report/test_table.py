"""--format table: header lines, the columns per kind, colour only when asked, no wrapping."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest

from egresswatch.report.formats.table import TableRenderer
from egresswatch.report.interface import Report
from tests.egresswatch.report.builders import (
    connections_report,
    empty_report,
    grouped_report,
    violation_row,
    violations_report,
)


def table(report: Report, *, color: bool = False, width: int | None = None) -> str:
    stream = io.StringIO()
    TableRenderer(color=color, width=width).render(report, stream)
    return stream.getvalue()


def test_violations_header_and_rows() -> None:
    out = table(violations_report())
    lines = out.splitlines()
    assert lines[:9] == [
        "egresswatch report",
        "source: sqlite:///var/lib/egresswatch/egresswatch.db",
        "generated: 2026-11-24 10:00:00 UTC",
        "filters: since=2026-11-22, verdict=violation",
        "connections: 12 (allow 8, warn 1, violation 3)",
        "violations: 3",
        "destinations: 4",
        "machines: 1: dev-laptop-7",
        "time span: 2026-11-22 08:00:00 to 2026-11-24 09:15:02 UTC",
    ]
    header = lines[10].split()
    assert header == [
        "time", "machine", "process", "host", "destination", "provider", "country", "rule",
        "reason",
    ]  # fmt: skip
    rows = lines[12:]
    assert len(rows) == 3  # one line per row: nothing wrapped
    assert rows[0].startswith("2026-11-24 09:15:02")
    assert "api.deepseek.com" in rows[0] and "1.2.3.4:443" in rows[0]
    assert "[2001:db8::1]:443" in rows[2]
    assert "deepseek runs inference in CN, outside the allowed EU" in rows[0]


def test_columns_are_aligned_and_lines_have_no_trailing_blanks() -> None:
    lines = table(violations_report()).splitlines()
    table_lines = [line for line in lines[10:] if not line.startswith("─")]
    starts = {
        line.index(word) for line, word in zip(table_lines, ["host", *["api."] * 3], strict=True)
    }
    assert len(starts) == 1
    assert all(line == line.rstrip() for line in lines)


def test_no_wrapping_at_80_columns_without_a_terminal() -> None:
    lines = table(violations_report()).splitlines()
    assert max(len(line) for line in lines) > 120
    assert len(lines) == 15


def test_connections_columns() -> None:
    lines = table(connections_report()).splitlines()
    assert lines[10].split() == [
        "last", "seen", "count", "host", "destination", "provider", "country", "verdict",
        "rule", "process",
    ]  # fmt: skip
    assert re.search(r"2026-11-24 09:59:00 +17 +api\.deepseek\.com", lines[12])


def test_grouped_key_first_and_counts_right_aligned() -> None:
    lines = table(grouped_report()).splitlines()
    assert lines[10].split()[:3] == ["host", "connections", "dns"]
    assert lines[12].startswith("api.openai.com")
    assert lines[14].startswith("(none)")  # a destination with no name
    connections = lines[10].index("connections") + len("connections")
    assert [line[connections - 1] for line in lines[12:15]] == ["9", "2", "1"]


def test_no_escape_sequences_without_colour() -> None:
    for report in (violations_report(), connections_report(), grouped_report()):
        assert "\x1b" not in table(report)


def test_colour_marks_violations_red_and_warnings_yellow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)  # rich honours it, as it should
    out = table(connections_report(), color=True)
    assert re.search(r"\x1b\[1;31m\s*violation\s*\x1b\[0m", out)
    grouped = table(grouped_report(), color=True)
    assert re.search(r"\x1b\[33m\s*1\x1b\[0m", grouped)  # warn count
    assert re.search(r"\x1b\[31m\s*2\x1b\[0m", grouped)  # violation count


def test_long_host_is_capped_with_an_ellipsis() -> None:
    report = violations_report()
    report.rows[0] = violation_row("2026-11-24T09:15:02Z", "h" * 500, "1.2.3.4", "CN", "r")
    out = table(report)
    assert "h" * 59 + "…" in out
    assert "h" * 60 not in out


def test_truncated_rows_are_mentioned() -> None:
    report = dataclasses.replace(violations_report(), truncated=7)
    assert "7 more rows not shown" in table(report)


def test_narrow_width_folds_instead_of_overflowing() -> None:
    out = table(violations_report(), width=80)
    assert max(len(line) for line in out.splitlines()) <= 80


def test_empty_report_says_nothing_matched() -> None:
    out = table(empty_report())
    assert "nothing matched" in out
    assert "time span: nothing selected" in out
