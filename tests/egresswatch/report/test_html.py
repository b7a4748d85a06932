"""--format html: one self-contained page: cards, two SVG charts, rules, cases, every row."""

from __future__ import annotations

import dataclasses
import re

import pytest

from egresswatch.report.formats.html import CSP
from egresswatch.report.interface import ReportFormat
from tests.egresswatch.report.builders import empty_report, grouped_report, violations_report
from tests.egresswatch.report.hostile import check_html, render


def test_page_has_every_part() -> None:
    out = render(ReportFormat.HTML, violations_report())
    check_html(out)
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in out
    assert CSP.startswith("default-src 'none'; style-src 'unsafe-inline'; img-src data:")
    assert "<title>egresswatch report</title>" in out
    for heading in (
        "Violations per day",
        "Destinations by endpoint country",
        "Top rules",
        "Rules and destinations",
        "All rows (violations)",
    ):
        assert f"<h2>{heading}</h2>" in out
    assert '<div class="card v-violation"><div class="big">3</div>violations</div>' in out
    assert "<dt>since</dt><dd>2026-11-22</dd>" in out
    assert "@media print" in out


def test_no_external_anything() -> None:
    out = render(ReportFormat.HTML, violations_report())
    assert "<script" not in out
    assert "@import" not in out and "url(" not in out and "@font-face" not in out
    assert not re.search(r"(src|href)\s*=", out)
    assert "http://" not in out and "https://" not in out and '"//' not in out


def test_timeline_bars_with_counts() -> None:
    out = render(ReportFormat.HTML, violations_report())
    chart = out[out.index('aria-label="violations per day"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count('<rect class="bar"') == 2  # the day with 0 violations draws no bar
    assert '<text class="count"' in chart
    assert "<title>2026-11-22: 2 violations, 6 connections</title>" in chart
    assert chart.count('text-anchor="middle">2026-11-') == 3


@pytest.mark.parametrize("days", [1, 31, 400])
def test_timeline_readable_for_any_number_of_days(days: int) -> None:
    timeline = [(f"day{i:03}", i, i % 7) for i in range(days)]
    out = render(ReportFormat.HTML, dataclasses.replace(violations_report(), timeline=timeline))
    check_html(out)
    chart = out[out.index('aria-label="violations per day"') :]
    chart = chart[: chart.index("</svg>")]
    labels = re.findall(r'<text class="axis" x="[\d.]+" y="214" text-anchor="middle">', chart)
    assert 1 <= len(labels) <= 10
    assert chart.count("<title>") == days  # every day has its figures on hover
    widths = [
        float(w) for w in re.findall(r'class="bar" x="[\d.]+" y="[\d.]+" width="([\d.]+)"', chart)
    ]
    assert all(0.5 < w <= 48 for w in widths)


def test_timeline_without_violations_says_so() -> None:
    report = dataclasses.replace(violations_report(), timeline=[("2026-11-24", 3, 0)])
    assert "no violations in this period" in render(ReportFormat.HTML, report)


def test_countries_chart_names_unknown_and_highlights_violations() -> None:
    out = render(ReportFormat.HTML, violations_report())
    chart = out[out.index('aria-label="connections by endpoint country"') :]
    chart = chart[: chart.index("</svg>")]
    assert re.findall(r'text-anchor="end">([^<]+)</text>', chart) == ["CN", "unknown", "FR"]
    assert chart.count('<rect class="conn"') == 3
    assert chart.count('<rect class="bar"') == 2
    assert "4 connections, 1 violation</text>" in chart


def test_many_countries_are_summed_past_thirty() -> None:
    countries: list[tuple[str | None, int, int]] = [(f"C{i}", 100 - i, 0) for i in range(40)]
    out = render(ReportFormat.HTML, dataclasses.replace(violations_report(), countries=countries))
    assert ">10 others</text>" in out


def test_top_rules_bars_scale_to_the_largest() -> None:
    out = render(ReportFormat.HTML, violations_report())
    assert re.findall(r'style="width:([\d.]+)%"', out) == ["100.0", "50.0"]


def test_rows_table_has_every_column_and_verdict_classes() -> None:
    report = violations_report()
    out = render(ReportFormat.HTML, report)
    rows = out[out.index('<table class="rows">') :]
    assert rows.count("<th>") == len(report.columns)
    assert rows.count("<tr>") == 1 + len(report.rows)
    assert rows.count('<td class="v-violation">violation</td>') == 3
    assert '<td class="num">443</td>' in rows


def test_grouped_report_heading() -> None:
    assert "All rows (grouped by host)" in render(ReportFormat.HTML, grouped_report())


def test_empty_report_says_nothing_matched() -> None:
    out = render(ReportFormat.HTML, empty_report())
    check_html(out)
    assert "Nothing matched the filters." in out
    assert "<svg" not in out
    assert "No days selected." in out


def test_long_cells_are_capped() -> None:
    report = violations_report()
    report.rows[0]["host"] = "h" * 5000
    out = render(ReportFormat.HTML, report)
    assert "h" * 299 + "&#8230;" in out
    assert "h" * 300 not in out
