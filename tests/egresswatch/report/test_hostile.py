"""Acceptance: text off the network is inert in every format.

Every string field of a report of every kind holds one hostile string (terminal escapes,
HTML/XML/Markdown/rich markup, spreadsheet formulas, invalid UTF-8, bidi overrides, 10 kB);
each format's output must then carry no control, C1, BEL or bidi character, encode as UTF-8,
and parse back with an independent parser that finds nothing the text could have made.
"""

from __future__ import annotations

import html
import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.report.interface import ReportFormat, ReportKind
from tests.egresswatch.report.hostile import (
    HOSTILE,
    INVALID_UTF8,
    LONG,
    check,
    check_csv,
    check_html,
    check_junit,
    check_markdown,
    hostile_report,
    render,
)

FORMATS = list(ReportFormat)
KINDS = list(ReportKind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_inert(name: str, fmt: ReportFormat, kind: ReportKind) -> None:
    report = hostile_report(kind, HOSTILE[name], truncated=2)
    check(fmt, render(fmt, report), report)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_inert_in_a_coloured_table(name: str, kind: ReportKind) -> None:
    report = hostile_report(kind, HOSTILE[name])
    check(ReportFormat.TABLE, render(ReportFormat.TABLE, report, color=True), report, color=True)


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("markup", [HOSTILE["rich-markup"], HOSTILE["rich-link"]])
def test_table_does_not_interpret_rich_markup(markup: str, color: bool) -> None:
    out = render(ReportFormat.TABLE, hostile_report(ReportKind.VIOLATIONS, markup), color=color)
    assert markup in out  # the brackets are printed, not taken as style or link
    assert "\x1b]8;" not in out


@pytest.mark.parametrize("name", ["sgr", "osc-title", "c1-csi", "osc8-link", "nul-bel"])
def test_table_shows_controls_as_visible_escapes(name: str) -> None:
    out = render(ReportFormat.TABLE, hostile_report(ReportKind.CONNECTIONS, HOSTILE[name]))
    assert "\x1b" not in out
    expected = {"sgr": "\\x1b[31mRED", "osc-title": "\\x1b]0;pwned\\x07", "c1-csi": "\\x9b31m"}
    if name in expected:
        assert expected[name] in out


@pytest.mark.parametrize("fmt", [ReportFormat.TABLE, ReportFormat.MARKDOWN, ReportFormat.HTML])
def test_invalid_utf8_shows_its_bytes(fmt: ReportFormat) -> None:
    out = render(fmt, hostile_report(ReportKind.VIOLATIONS, INVALID_UTF8))
    # surrogateescape carried the bytes ff fe; they are shown as such (Markdown doubles the \).
    assert "\\xff\\xfe.evil" in out or "\\\\xff\\\\xfe.evil" in out


@pytest.mark.parametrize(
    ("fmt", "cap"),
    [
        (ReportFormat.TABLE, 400),
        (ReportFormat.MARKDOWN, 400),
        (ReportFormat.HTML, 600),
        (ReportFormat.JUNIT, 500),
    ],
)
def test_formats_for_people_cap_long_text(fmt: ReportFormat, cap: int) -> None:
    out = render(fmt, hostile_report(ReportKind.VIOLATIONS, LONG))
    assert "a" * (cap + 1) not in out
    assert "…" in out or "&#8230;" in out
    assert len(out) < 200_000


@pytest.mark.parametrize("fmt", [ReportFormat.JSON, ReportFormat.JSONL, ReportFormat.CSV])
def test_formats_for_programs_keep_long_text_whole(fmt: ReportFormat) -> None:
    assert LONG in render(fmt, hostile_report(ReportKind.VIOLATIONS, LONG))


@pytest.mark.parametrize("name", ["sgr", "osc8-link", "bidi", "script", "newline", "md-table"])
def test_json_keeps_text_exactly(name: str) -> None:
    text = HOSTILE[name]
    report = hostile_report(ReportKind.VIOLATIONS, text)
    doc = json.loads(render(ReportFormat.JSON, report))
    assert doc["title"] == text
    assert doc["rows"][0]["host"] == text
    assert doc["filters"] == {text: text, "host": text}


def test_json_turns_lone_surrogates_into_visible_bytes() -> None:
    report = hostile_report(ReportKind.VIOLATIONS, INVALID_UTF8)
    doc = json.loads(render(ReportFormat.JSON, report))
    assert doc["rows"][0]["host"] == "\\xff\\xfe.evil"
    line = json.loads(render(ReportFormat.JSONL, report).splitlines()[0])
    assert line["alpn"] == ["\\xff\\xfe.evil"] * 2


@pytest.mark.parametrize(
    "name", ["dde", "plus", "minus", "at", "space-formula", "fullwidth-formula"]
)
def test_csv_defuses_formulas_with_a_quote(name: str) -> None:
    report = hostile_report(ReportKind.VIOLATIONS, HOSTILE[name])
    records = check_csv(render(ReportFormat.CSV, report), report)
    host = records[1][report.columns.index("host")]
    assert host == "'" + HOSTILE[name]


def test_csv_keeps_negative_numbers_as_numbers() -> None:
    report = hostile_report(ReportKind.CONNECTIONS, "-2+3")
    records = check_csv(render(ReportFormat.CSV, report), report)
    assert records[1][report.columns.index("count")] == "-2"
    assert records[1][report.columns.index("host")] == "'-2+3"


@pytest.mark.parametrize("name", ["tab-formula", "cr-formula"])
def test_csv_escapes_tab_and_cr_so_no_formula_follows(name: str) -> None:
    report = hostile_report(ReportKind.VIOLATIONS, HOSTILE[name])
    records = check_csv(render(ReportFormat.CSV, report), report)
    assert records[1][report.columns.index("host")] in {"\\x09=1", "\\x0d=1"}


@pytest.mark.parametrize("name", ["script", "attr-breakout", "css", "comment", "cdata-end"])
def test_html_shows_markup_as_text(name: str) -> None:
    out = render(ReportFormat.HTML, hostile_report(ReportKind.VIOLATIONS, HOSTILE[name]))
    audit = check_html(out)
    assert "img" not in audit.tags and "script" not in audit.tags
    assert html.escape(HOSTILE[name], quote=True) in out


@pytest.mark.parametrize("name", ["md-table", "md-link", "md-image", "md-code", "md-escape-pipe"])
def test_markdown_keeps_table_cells_whole(name: str) -> None:
    report = hostile_report(ReportKind.VIOLATIONS, HOSTILE[name])
    out = render(ReportFormat.MARKDOWN, report)
    check_markdown(out, 9)
    assert "](" not in out.replace("\\](", "")


def test_junit_escapes_markup_in_attributes_and_text() -> None:
    report = hostile_report(ReportKind.VIOLATIONS, HOSTILE["attr-breakout"])
    root = check_junit(render(ReportFormat.JUNIT, report), report)
    case = root.find("testsuite/testcase")
    assert case is not None
    assert case.get("name") == HOSTILE["attr-breakout"]
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == HOSTILE["attr-breakout"]


# ---------------------------------------------------------------------------------------------
# Arbitrary text
# ---------------------------------------------------------------------------------------------

_NASTY = list(
    "\x00\x07\x1b\x9b\x85\u202e\u2066\u2028\ufffe\uffff\udcff\ud800<>&\"'|=+-@\t\r\n`[]\\"
)
arbitrary_text = st.text(
    st.one_of(st.characters(exclude_categories=()), st.sampled_from(_NASTY)), max_size=40
)


@settings(max_examples=150, deadline=timedelta(seconds=2))
@given(host=arbitrary_text, reason=arbitrary_text, kind=st.sampled_from(KINDS))
def test_arbitrary_host_and_reason_are_inert_everywhere(
    host: str, reason: str, kind: ReportKind
) -> None:
    report = hostile_report(kind, "x")
    for row in report.rows:
        for key, value in (("host", host), ("reason", reason)):
            if key in row:
                row[key] = value
    for fmt in FORMATS:
        check(fmt, render(fmt, report), report)
    check(ReportFormat.TABLE, render(ReportFormat.TABLE, report, color=True), report, color=True)


@settings(max_examples=100, deadline=timedelta(seconds=2))
@given(text=arbitrary_text)
def test_arbitrary_text_in_cases_and_charts_is_inert(text: str) -> None:
    report = hostile_report(ReportKind.VIOLATIONS, text)
    for fmt in FORMATS:
        check(fmt, render(fmt, report), report)
