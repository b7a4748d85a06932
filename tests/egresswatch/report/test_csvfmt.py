"""--format csv: RFC 4180 records, lists joined, None empty, formulas defused, numbers kept."""

from __future__ import annotations

import csv
import io

import pytest

from egresswatch.report.formats.csvfmt import csv_cell, defuse
from egresswatch.report.interface import ReportFormat
from tests.egresswatch.report.builders import grouped_report, violations_report
from tests.egresswatch.report.hostile import render


def records(out: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(out, newline="")))


def test_header_and_rows() -> None:
    report = violations_report()
    out = render(ReportFormat.CSV, report)
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    rows = records(out)
    assert rows[0] == list(report.columns)
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["host"] == "api.deepseek.com"
    assert first["alpn"] == "h2,http/1.1"
    assert first["ech"] == "false"
    assert first["region"] == ""
    assert first["dport"] == "443"
    assert first["as_org"] == "Alibaba US Technology Co., Ltd."
    assert '"Alibaba US Technology Co., Ltd."' in out  # quoted only where needed
    assert '"api.deepseek.com"' not in out


def test_grouped_none_key_is_empty() -> None:
    rows = records(render(ReportFormat.CSV, grouped_report()))
    assert rows[3][0] == ""
    assert rows[1][:3] == ["api.openai.com", "9", "3"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("  =1", "'  =1"),
        ("\u3000=1", "'\u3000=1"),
        ("\uff1d1", "'\uff1d1"),
        ("\uff0b1", "'\uff0b1"),
        ("\uff0d1", "'\uff0d1"),
        ("\uff201", "'\uff201"),
        ("\t=1", "\\x09=1"),
        ("\r=1", "\\x0d=1"),
        ("a=1", "a=1"),
        ("api.example", "api.example"),
        ("", ""),
    ],
)
def test_defuse(text: str, expected: str) -> None:
    assert defuse(text) == expected


def test_numbers_stay_numbers() -> None:
    assert csv_cell(-3) == "-3"
    assert csv_cell(2.5) == "2.5"
    assert csv_cell(-0.5) == "-0.5"
    assert csv_cell("-3") == "'-3"
    assert csv_cell(True) == "true"
    assert csv_cell(None) == ""
    assert csv_cell(["=a", "b"]) == "'=a,b"
