"""--format junit: one test case per rule and destination; violations fail, warnings pass."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from egresswatch.report.interface import Case, ReportFormat
from tests.egresswatch.report.builders import empty_report, violations_report
from tests.egresswatch.report.hostile import check_junit, render


def suite_of(out: str) -> ET.Element:
    report = violations_report()
    root = check_junit(out, report)
    suite = root.find("testsuite")
    assert suite is not None
    return suite


def test_suite_counts_and_properties() -> None:
    out = render(ReportFormat.JUNIT, violations_report())
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites')
    assert out.isascii()
    suite = suite_of(out)
    assert suite.get("name") == "egresswatch"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "0")
    assert suite.get("timestamp") == "2026-11-24T10:00:00"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {
        "source": "sqlite:///var/lib/egresswatch/egresswatch.db",
        "since": "2026-11-22",
        "verdict": "violation",
    }


def test_violation_fails_with_reason_and_details() -> None:
    case = suite_of(render(ReportFormat.JUNIT, violations_report())).findall("testcase")[0]
    assert case.get("classname") == "egresswatch.no-cn-inference"
    assert case.get("name") == "api.deepseek.com"
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("type") == "violation"
    assert failure.get("message") == "deepseek runs inference in CN, outside the allowed EU"
    details = failure.text or ""
    for line in (
        "connections: 2",
        "violations: 2",
        "provider: deepseek",
        "endpoint country: CN",
        "first seen: 2026-11-22T08:00:00Z",
        "last seen: 2026-11-24T09:15:02Z",
    ):
        assert line in details.splitlines()


def test_warning_passes_with_system_out() -> None:
    case = suite_of(render(ReportFormat.JUNIT, violations_report())).findall("testcase")[1]
    assert case.find("failure") is None and case.find("skipped") is None
    out = case.find("system-out")
    assert out is not None and out.text is not None
    assert out.text.startswith("warning: openai: EU data residency not proven")


def test_allow_is_a_plain_pass() -> None:
    case = suite_of(render(ReportFormat.JUNIT, violations_report())).findall("testcase")[2]
    assert case.get("classname") == "egresswatch.(none)"
    assert list(case) == []


def test_empty_report_is_a_valid_suite_with_no_tests() -> None:
    report = empty_report()
    root = check_junit(render(ReportFormat.JUNIT, report), report)
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "0" and suite.get("failures") == "0"


def test_attributes_are_capped() -> None:
    case = Case("r", "h" * 5000, "violation", 1, 1, "x" * 5000, None, None, "t", "t")
    report = dataclasses.replace(violations_report(), cases=[case])
    element = check_junit(render(ReportFormat.JUNIT, report), report).find(".//testcase")
    assert element is not None
    assert len(element.get("name", "")) == 200
    failure = element.find("failure")
    assert failure is not None and len(failure.get("message", "")) == 500
    assert "provider: -" in (failure.text or "")
    assert "endpoint country: unknown" in (failure.text or "")
