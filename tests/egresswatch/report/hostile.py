"""Hostile reports, and the checks every format's output must pass.

:func:`hostile_report` puts one string into every string field a report has (rows, lists in
rows, the grouped key, summary, filters keys and values, title, source, generated, timeline
days, country labels, rules, every case field). The checks parse each format's output back
with an independent parser and look for anything the text could have done.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from xml.dom import minidom

from markdown_it import MarkdownIt

from egresswatch.report.formats import _layout, renderer
from egresswatch.report.formats._style import STYLESHEET
from egresswatch.report.formats.html import CSP
from egresswatch.report.interface import Case, Report, ReportFormat, ReportKind, Summary, Value
from tests.egresswatch.report.builders import (
    CONNECTION_COLUMNS,
    GENERATED,
    GROUPED_COLUMNS,
    VIOLATION_COLUMNS,
)

INVALID_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape") + ".evil"
LONG = "a" * 10_000 + ".example"
HOSTILE = {
    "sgr": "\x1b[31mRED\x1b[0m",
    "osc-title": "\x1b]0;pwned\x07",
    "c1-csi": "\x9b31m",
    "osc8-link": "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\",
    "script": "<script>alert(1)</script>",
    "attr-breakout": '"><img src=x onerror=alert(1)>',
    "dde": "=cmd|' /C calc'!A0",
    "plus": "+1+1",
    "minus": "-2+3",
    "at": "@SUM(1)",
    "tab-formula": "\t=1",
    "cr-formula": "\r=1",
    "space-formula": "  =1+1",
    "fullwidth-formula": "\uff1d1+1",
    "long": LONG,
    "invalid-utf8": INVALID_UTF8,
    "lone-surrogate": "\ud800x",
    "bidi": "\u202egnp.exe",
    "bidi-isolate": "\u2066evil\u2069",
    "cdata-end": "]]>",
    "comment": "<!--",
    "entity": "&amp;",
    "md-table": "| x | y |",
    "md-link": "[a](javascript:alert(1))",
    "md-image": "![x](http://evil/x.png)",
    "md-code": "`code`",
    "md-escape-pipe": "\\|\\",
    "rich-markup": "[bold red]x[/]",
    "rich-link": "[link=http://evil]x[/link]",
    "newline": "a\nb\r\nc\u2028d\u0085e",
    "nul-bel": "\x00\x07\x7f",
    "xml-nonchar": "\ufffe\uffff",
    "autolink": "https://evil.example/ www.evil.example user@evil.example",
    "css": "</style><style>@import url(//evil)</style>",
    "empty": "",
}
COLUMNS = {
    ReportKind.VIOLATIONS: VIOLATION_COLUMNS,
    ReportKind.CONNECTIONS: CONNECTION_COLUMNS,
    ReportKind.GROUPED: GROUPED_COLUMNS,
}
NUMBERS: dict[str, int | float] = {
    "count": -2,
    "sport": 51544,
    "dport": 443,
    "asn": 13335,
    "pid": -1,
    "connections": 5,
    "dns": 0,
    "allow": 1,
    "warn": -3,
    "violation": 2,
    "audit": 0,
}
"""Numeric cells (some negative, which must stay numbers in CSV); every other cell is text."""
LISTS = frozenset({"alpn", "inference"})
FLAGS = frozenset({"ech", "anycast"})


def hostile_row(columns: tuple[str, ...], text: str, verdict: str) -> dict[str, Value]:
    """Every text cell ``text``, every list ``[text, text]``; ``verdict`` as given."""
    row: dict[str, Value] = {}
    for column in columns:
        if column in NUMBERS:
            row[column] = NUMBERS[column]
        elif column in LISTS:
            row[column] = [text, text]
        elif column in FLAGS:
            row[column] = True
        else:
            row[column] = text
    if "verdict" in row:
        row["verdict"] = verdict
    return row


def hostile_case(text: str, verdict: str) -> Case:
    """A case with every string field ``text``."""
    return Case(
        rule=text,
        host=text,
        verdict=verdict,
        count=3,
        violations=2,
        reason=text,
        provider=text,
        endpoint_country=text,
        first_seen=text,
        last_seen=text,
    )


def hostile_report(kind: ReportKind, text: str, *, truncated: int = 0) -> Report:
    """A report of ``kind`` with ``text`` in every string field."""
    columns = COLUMNS[kind]
    return Report(
        title=text,
        generated=text,
        source=text,
        filters={text: text, "host": text},
        kind=kind,
        by="host" if kind is ReportKind.GROUPED else None,
        columns=columns,
        rows=[
            hostile_row(columns, text, text),
            hostile_row(columns, text, "violation"),
            hostile_row(columns, text, "warn"),
        ],
        summary=Summary(
            connections=7,
            by_verdict={text: 3, "violation": 2, "warn": 2},
            violations=2,
            destinations=1,
            machines=[text, text],
            first_seen=text,
            last_seen=text,
        ),
        timeline=[(text, 5, 2), ("2026-11-24", 1, 0)],
        countries=[(text, 5, 2), (None, 1, 0)],
        top_rules=[(text, 2)],
        cases=[
            hostile_case(text, "violation"),
            hostile_case(text, "warn"),
            hostile_case(text, text),
        ],
        truncated=truncated,
    )


def render(fmt: ReportFormat, report: Report, *, color: bool = False) -> str:
    """The output of ``fmt`` for ``report``, as the CLI would write it."""
    stream = io.StringIO(newline="")
    renderer(fmt, color=color).render(report, stream)
    return stream.getvalue()


# ---------------------------------------------------------------------------------------------
# Checks every format passes
# ---------------------------------------------------------------------------------------------

_FORBIDDEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")


def assert_inert(output: str, *, sgr_allowed: bool = False) -> None:
    """No escape, C1, BEL, NUL, bidi override, line separator or lone surrogate; a CR only as
    part of a CRLF; encodable as UTF-8. With ``sgr_allowed`` (table in colour), only plain
    SGR colour sequences may carry an ESC."""
    if sgr_allowed:
        assert "\x1b]" not in output, "an OSC sequence reached the output"
        output = _OUR_SGR.sub("", output)
    found = _FORBIDDEN.search(output)
    assert found is None, f"{found.group()!r} at {found.start()} in {output[:200]!r}"
    assert "\r" not in output.replace("\r\n", ""), "a bare CR"
    output.encode("utf-8")


def check_json(output: str, report: Report) -> dict[str, object]:
    """Parses as one document; ASCII only; has every row."""
    assert output.isascii()
    doc = json.loads(output)
    assert isinstance(doc, dict)
    assert len(doc["rows"]) == len(report.rows)
    assert all(list(row) == list(report.columns) for row in doc["rows"])
    return doc


def check_jsonl(output: str, report: Report) -> list[dict[str, object]]:
    """One object per row, keys in column order, ASCII only, nothing else."""
    assert output.isascii()
    lines = output.splitlines()
    assert len(lines) == len(report.rows)
    objects = [json.loads(line) for line in lines]
    assert all(list(obj) == list(report.columns) for obj in objects)
    return objects


_FORMULA = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def check_csv(output: str, report: Report) -> list[list[str]]:
    """Parses back; header and row count right; no text cell a spreadsheet would run; numbers
    from numeric values written as numbers."""
    records = list(csv.reader(io.StringIO(output, newline="")))
    assert records[0] == list(report.columns)
    assert len(records) == len(report.rows) + 1
    for row, record in zip(report.rows, records[1:], strict=True):
        assert len(record) == len(report.columns)
        for column, cell in zip(report.columns, record, strict=True):
            value = row[column]
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert cell == str(value)
            else:
                assert not cell.lstrip().startswith(_FORMULA), (column, cell)
    return records


def check_junit(output: str, report: Report) -> ET.Element:
    """Parses with ElementTree and strictly with minidom (expat); one case per Case."""
    minidom.parseString(output.encode("utf-8"))
    root = ET.fromstring(output.encode("utf-8"))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(report.cases) == int(suite.get("tests", "-1"))
    failures = sum(1 for c in report.cases if c.verdict == "violation")
    assert len(suite.findall("testcase/failure")) == failures == int(suite.get("failures", "-1"))
    for element in root.iter():
        for value in element.attrib.values():
            assert len(value) <= 600
    return root


class _Audit(HTMLParser):
    """Every element, attribute and style block of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, name, value or "") for name, value in attrs]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


HTML_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "dl", "div",
    "dt", "dd", "section", "svg", "line", "text", "g", "rect", "table", "thead", "tbody", "tr",
    "th", "td", "span", "footer",
}  # fmt: skip
HTML_CLASSES = {
    "meta", "filters", "cards", "card", "wide", "big", "span", "chart", "grid", "axis", "hit",
    "bar", "count", "note", "label", "conn", "value", "empty", "scroll", "rules", "rows", "num",
    "barcell", "hbar", "v-violation", "v-warn", "v-allow", "v-audit",
}  # fmt: skip
_SAFE_ATTRS = {
    "lang", "charset", "http-equiv", "content", "name", "class", "viewbox", "role", "aria-label",
    "x", "y", "x1", "y1", "x2", "y2", "width", "height", "text-anchor", "style",
}  # fmt: skip
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def check_html(output: str) -> _Audit:
    """Only the elements and attributes this renderer writes: no script, no image, no event
    handler, no URL, no class or style that data chose, one stylesheet (ours)."""
    assert output.isascii()
    assert output.startswith("<!DOCTYPE html>")
    audit = _Audit()
    audit.feed(output)
    audit.close()
    assert set(audit.tags) <= HTML_TAGS, set(audit.tags) - HTML_TAGS
    assert audit.tags.count("style") == 1
    assert "".join(audit.styles).strip() == STYLESHEET.strip()
    assert audit.tags[: audit.tags.index("body")].count("title") == 1
    for tag, name, value in audit.attrs:
        assert name in _SAFE_ATTRS, (tag, name, value)
        if name == "class":
            assert set(value.split()) <= HTML_CLASSES, value
        elif name == "style":
            assert re.fullmatch(r"width:\d+(\.\d+)?%", value), value
        elif name == "content" and tag == "meta":
            assert value in {CSP, "no-referrer", "width=device-width, initial-scale=1"}
        elif name in {"x", "y", "x1", "y1", "x2", "y2", "width", "height"}:
            assert _NUMBER.fullmatch(value), (name, value)
    meta = [(n, v) for t, n, v in audit.attrs if t == "meta" and n == "http-equiv"]
    assert meta == [("http-equiv", "Content-Security-Policy")]
    return audit


def _unescaped_pipes(line: str) -> int:
    """Pipes that GFM takes as cell borders (a backslash escapes the next character)."""
    count, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        count += line[i] == "|"
        i += 1
    return count


class _MdHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells_per_row: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.cells_per_row.append(0)
        elif tag in {"td", "th"}:
            self.cells_per_row[-1] += 1


def check_markdown(output: str, columns: int | None) -> _MdHtml:
    """No raw ``<``; every table line has ``columns`` cells; rendered by a CommonMark + GFM
    table parser, the data made no link, image, code, emphasis or HTML."""
    assert "<" not in output
    table = [line for line in output.splitlines() if line.startswith("|")]
    if columns is not None:
        assert table
        assert all(_unescaped_pipes(line) == columns + 1 for line in table), table
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(output)
    parsed = _MdHtml()
    parsed.feed(html)
    allowed = {"h1", "ul", "li", "strong", "p", "table", "thead", "tbody", "tr", "th", "td", "em"}
    assert set(parsed.tags) <= allowed, set(parsed.tags) - allowed
    # Ours: each summary label in bold, the note on left-out rows in italics.
    assert parsed.tags.count("strong") == sum(1 for s in output.splitlines() if s[:4] == "- **")
    assert parsed.tags.count("em") == ("more rows not shown" in output)
    if columns is not None:
        assert set(parsed.cells_per_row) == {columns}
    return parsed


def check_table(output: str, *, color: bool) -> None:
    """Inert for a terminal; without colour, not one escape sequence."""
    assert_inert(output, sgr_allowed=color)
    if not color:
        assert "\x1b" not in output


def check(fmt: ReportFormat, output: str, report: Report, *, color: bool = False) -> None:
    """Every check that applies to ``fmt``."""
    assert_inert(output, sgr_allowed=color and fmt is ReportFormat.TABLE)
    match fmt:
        case ReportFormat.JSON:
            check_json(output, report)
        case ReportFormat.JSONL:
            check_jsonl(output, report)
        case ReportFormat.CSV:
            check_csv(output, report)
        case ReportFormat.JUNIT:
            check_junit(output, report)
        case ReportFormat.HTML:
            check_html(output)
        case ReportFormat.MARKDOWN:
            check_markdown(output, len(_layout.columns(report)) if report.rows else None)
        case ReportFormat.TABLE:
            check_table(output, color=color)


__all__ = ["GENERATED", "HOSTILE", "check", "hostile_report", "render"]
