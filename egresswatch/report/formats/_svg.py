"""The two inline SVG charts of the HTML report: violations per day, destinations by country.

Plain markup built from numbers this module computes and labels passed through
:func:`text`; no script, no external reference (not even the SVG namespace URL, which inline SVG
in HTML does not need). Hovering a bar shows its figures (an SVG ``<title>``).
"""

from __future__ import annotations

import html
import math

from egresswatch.report.formats._escape import inert

WIDTH = 900
_TIMELINE_HEIGHT = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 24, 44
_LABEL_SPACING = 90
"""Pixels per x-axis date label, so labels never overlap however many days there are."""
_COUNT_MIN_SLOT = 22
"""Narrowest day slot that still gets its count written above the bar."""
_MAX_COUNTRIES = 30
_ROW, _BAR = 22, 14
_COUNTRY_LABEL, _COUNTRY_VALUE = 110, 230


def text(value: str, limit: int) -> str:
    """Data as inert SVG/HTML text."""
    return html.escape(inert(value, limit), quote=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _n(value: float) -> str:
    """A coordinate: short, and never an exponent."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def timeline(days: list[tuple[str, int, int]]) -> str:
    """Violations per day as vertical bars; days on the x axis, a count above each bar when
    there is room and in every bar's tooltip."""
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = _TIMELINE_HEIGHT - _TOP - _BOTTOM
    base = _TOP + plot_h
    top = max(v for _, _, v in days)
    slot = plot_w / len(days)
    bar_w = min(slot * 0.8, 48.0) if slot >= 3 else slot
    step = max(1, math.ceil(len(days) * _LABEL_SPACING / plot_w))
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {_TIMELINE_HEIGHT}" role="img" '
        'aria-label="violations per day">',
    ]
    for value in sorted({0, top // 2, top}) if top else [0]:
        y = base - (value / top * plot_h if top else 0)
        out.append(
            f'<line class="grid" x1="{_LEFT}" y1="{_n(y)}" x2="{WIDTH - _RIGHT}" y2="{_n(y)}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{_n(y + 4)}" text-anchor="end">{value}</text>'
        )
    for i, (day, connections, violations) in enumerate(days):
        x = _LEFT + i * slot
        height = violations / top * plot_h if top else 0.0
        label = text(day, 12)
        out.append(
            f"<g><title>{label}: {_count(violations, 'violation')}, "
            f"{_count(connections, 'connection')}</title>"
            f'<rect class="hit" x="{_n(x)}" y="{_TOP}" width="{_n(slot)}" height="{plot_h}"/>'
        )
        if violations:
            out.append(
                f'<rect class="bar" x="{_n(x + (slot - bar_w) / 2)}" y="{_n(base - height)}" '
                f'width="{_n(bar_w)}" height="{_n(height)}"/>'
            )
            if slot >= _COUNT_MIN_SLOT:
                out.append(
                    f'<text class="count" x="{_n(x + slot / 2)}" y="{_n(base - height - 4)}" '
                    f'text-anchor="middle">{violations}</text>'
                )
        out.append("</g>")
        if i % step == 0:
            out.append(
                f'<text class="axis" x="{_n(x + slot / 2)}" y="{base + 18}" '
                f'text-anchor="middle">{label}</text>'
            )
    if not top:
        out.append(
            f'<text class="note" x="{WIDTH // 2}" y="{_TOP + plot_h // 2}" '
            'text-anchor="middle">no violations in this period</text>'
        )
    out.append("</svg>")
    return "".join(out)


def countries(rows: list[tuple[str | None, int, int]]) -> str:
    """Connections per endpoint country as horizontal bars, violations overlaid in red; past
    :data:`_MAX_COUNTRIES` the rest are summed into one row."""
    shown: list[tuple[str, int, int]] = [
        (text(country, 16) if country else "unknown", conn, viol)
        for country, conn, viol in rows[:_MAX_COUNTRIES]
    ]
    rest = rows[_MAX_COUNTRIES:]
    if rest:
        shown.append(
            (
                f"{len(rest)} others",
                sum(conn for _, conn, _ in rest),
                sum(viol for _, _, viol in rest),
            )
        )
    top = max(max(conn, viol) for _, conn, viol in shown) or 1
    area = WIDTH - _COUNTRY_LABEL - _COUNTRY_VALUE
    height = len(shown) * _ROW + 8
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        'aria-label="connections by endpoint country">'
    ]
    for i, (label, conn, viol) in enumerate(shown):
        y = 4 + i * _ROW
        conn_w, viol_w = conn / top * area, viol / top * area
        value = _count(conn, "connection") + (f", {_count(viol, 'violation')}" if viol else "")
        out.append(
            f"<g><title>{label}: {value}</title>"
            f'<text class="label" x="{_COUNTRY_LABEL - 8}" y="{y + 12}" '
            f'text-anchor="end">{label}</text>'
            f'<rect class="conn" x="{_COUNTRY_LABEL}" y="{y}" width="{_n(conn_w)}" '
            f'height="{_BAR}"/>'
        )
        if viol:
            out.append(
                f'<rect class="bar" x="{_COUNTRY_LABEL}" y="{y}" width="{_n(viol_w)}" '
                f'height="{_BAR}"/>'
            )
        out.append(
            f'<text class="value" x="{_n(_COUNTRY_LABEL + max(conn_w, viol_w) + 6)}" '
            f'y="{y + 12}">{value}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
