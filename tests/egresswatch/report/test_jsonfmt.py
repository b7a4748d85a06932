"""--format json and jsonl: the documented shape, ASCII only, rows keyed in column order."""

from __future__ import annotations

import dataclasses
import json

from egresswatch.report.interface import ReportFormat
from tests.egresswatch.report.builders import grouped_report, violations_report
from tests.egresswatch.report.hostile import render


def test_document_shape() -> None:
    report = violations_report()
    doc = json.loads(render(ReportFormat.JSON, report))
    assert list(doc) == [
        "title", "generated", "source", "filters", "kind", "by", "columns", "summary", "rows",
        "timeline", "countries", "top_rules", "cases", "truncated",
    ]  # fmt: skip
    assert doc["kind"] == "violations" and doc["by"] is None
    assert doc["columns"] == list(report.columns)
    assert doc["summary"] == {
        "connections": 12,
        "by_verdict": {"allow": 8, "warn": 1, "violation": 3},
        "violations": 3,
        "destinations": 4,
        "machines": ["dev-laptop-7"],
        "first_seen": "2026-11-22T08:00:00.000000Z",
        "last_seen": "2026-11-24T09:15:02.123456Z",
    }
    assert doc["rows"] == report.rows
    assert [list(row) for row in doc["rows"]] == [list(report.columns)] * 3
    assert doc["timeline"][0] == {"day": "2026-11-22", "connections": 6, "violations": 2}
    assert doc["countries"][1] == {"country": None, "connections": 4, "violations": 1}
    assert doc["top_rules"] == [
        {"rule": "no-cn-inference", "violations": 2},
        {"rule": "no-cn", "violations": 1},
    ]
    assert doc["cases"][0]["rule"] == "no-cn-inference"
    assert doc["cases"][0]["verdict"] == "violation"
    assert doc["cases"][2]["reason"] is None
    assert doc["truncated"] == 0


def test_grouped_document() -> None:
    doc = json.loads(render(ReportFormat.JSON, grouped_report()))
    assert doc["kind"] == "grouped" and doc["by"] == "host"
    assert doc["rows"][2]["host"] is None


def test_output_is_ascii_and_non_finite_numbers_are_null() -> None:
    report = violations_report()
    report.rows[0]["host"] = "bücher.example"
    report.rows[1]["asn"] = float("nan")
    out = render(ReportFormat.JSON, dataclasses.replace(report, title="Bericht für Zürich"))
    assert out.isascii()
    assert "b\\u00fccher.example" in out
    doc = json.loads(out)
    assert doc["title"] == "Bericht für Zürich"
    assert doc["rows"][1]["asn"] is None


def test_jsonl_one_row_per_line() -> None:
    report = violations_report()
    lines = render(ReportFormat.JSONL, report).splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert rows == report.rows
    assert all(list(row) == list(report.columns) for row in rows)


def test_jsonl_fills_a_missing_key_with_null() -> None:
    report = violations_report()
    del report.rows[0]["process"]
    row = json.loads(render(ReportFormat.JSONL, report).splitlines()[0])
    assert list(row) == list(report.columns)
    assert row["process"] is None
