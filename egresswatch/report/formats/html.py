"""``--format html``: one self-contained page for people who would rather look than read.

Title and filters, summary cards, violations per day and destinations by country as inline SVG
(:mod:`._svg`), the top rules, the rule/destination table, and every row with every column.

Nothing is loaded from anywhere: inline CSS only, no script, no URL in any attribute, and a
Content-Security-Policy that forbids everything but inline style and ``data:`` images, so that
even a markup injection this module failed to prevent could fetch or run nothing. Every data
string is made inert (:func:`~._escape.inert`: controls visible, capped at 300 characters)
and then escaped with :func:`html.escape` (quotes included); classes and inline widths come
only from fixed tables and computed numbers. The page is written as ASCII (character
references for the rest), so it is the same document whatever the stream's encoding.
"""

from __future__ import annotations

from typing import IO

from egresswatch.report.formats import _layout, _svg
from egresswatch.report.formats._style import STYLESHEET
from egresswatch.report.interface import Case, Renderer, Report, Value, cell_text

CELL_CAP = 300
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)
_VERDICT_CLASS = {v: f"v-{v}" for v in _layout.VERDICTS}
_CASE_HEADERS = (
    "rule", "destination", "verdict", "connections", "violations", "provider", "country",
    "first seen", "last seen", "reason",
)  # fmt: skip


def h(value: str, limit: int = CELL_CAP) -> str:
    """Data as inert HTML text or attribute value."""
    return _svg.text(value, limit)


def _cell(value: Value, *, verdict: bool = False) -> str:
    """One ``<td>``: numbers aligned right, known verdicts coloured, text escaped."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    text = cell_text(value)
    css = _VERDICT_CLASS.get(text) if verdict else None
    return f'<td class="{css}">{h(text)}</td>' if css else f"<td>{h(text)}</td>"


class _Page:
    """Writes the page to a stream, ASCII only."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, *parts: str) -> None:
        for part in parts:
            self._stream.write(part.encode("ascii", "xmlcharrefreplace").decode("ascii"))


class HtmlRenderer(Renderer):
    """The whole report as one HTML page."""

    def render(self, report: Report, stream: IO[str]) -> None:
        """Write the page to ``stream``."""
        w = _Page(stream)
        title = h(report.title)
        w(
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n',
            '<meta name="referrer" content="no-referrer">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{title}</title>\n<style>\n{STYLESHEET}</style>\n</head>\n<body>\n",
            f"<header>\n<h1>{title}</h1>\n",
            f'<p class="meta">generated {h(_layout.short_time(report.generated))} UTC',
            f" from {h(report.source)}</p>\n",
        )
        self._filters(report, w)
        w("</header>\n")
        self._cards(report, w)
        w("<section>\n<h2>Violations per day</h2>\n")
        w(_svg.timeline(report.timeline) if report.timeline else _empty("No days selected."))
        w("\n</section>\n<section>\n<h2>Destinations by endpoint country</h2>\n")
        w(_svg.countries(report.countries) if report.countries else _empty("No destinations."))
        w("\n</section>\n")
        self._top_rules(report, w)
        self._cases(report, w)
        self._rows(report, w)
        w("<footer>egresswatch report</footer>\n</body>\n</html>\n")

    def _filters(self, report: Report, w: _Page) -> None:
        if not report.filters:
            w('<p class="meta">filters: none</p>\n')
            return
        w('<dl class="filters">')
        for key, value in report.filters.items():
            w(f"<div><dt>{h(key)}</dt><dd>{h(value)}</dd></div>")
        w("</dl>\n")

    def _cards(self, report: Report, w: _Page) -> None:
        s = report.summary
        cards = [
            ("connections", str(s.connections), ""),
            ("violations", str(s.violations), " v-violation" if s.violations else ""),
            ("destinations", str(s.destinations), ""),
            ("machines", str(len(s.machines)), ""),
        ]
        for verdict, n in _layout.verdict_counts(s.by_verdict):
            css = _VERDICT_CLASS.get(verdict) if n else None
            cards.append((h(verdict, 40), str(n), f" {css}" if css else ""))
        w('<section class="cards">\n')
        for label, number, css in cards:
            w(f'<div class="card{css}"><div class="big">{number}</div>{label}</div>\n')
        w(f'<div class="card wide"><div class="span">{h(_layout.span_text(report))}</div>')
        w("time span</div>\n")
        if s.machines:
            names = ", ".join(s.machines[:20]) + (" ..." if len(s.machines) > 20 else "")
            w(f'<div class="card wide"><div class="span">{h(names, 600)}</div>machines</div>\n')
        w("</section>\n")

    def _top_rules(self, report: Report, w: _Page) -> None:
        w("<section>\n<h2>Top rules</h2>\n")
        if not report.top_rules:
            w(_empty("No rule decided a violation."), "\n</section>\n")
            return
        top = max(n for _, n in report.top_rules) or 1
        w('<table class="rules"><thead><tr><th>rule</th><th>violations</th><th></th></tr>')
        w("</thead><tbody>\n")
        for rule, n in report.top_rules:
            width = f"{max(n, 0) / top * 100:.1f}"
            w(
                f'<tr><td>{h(rule)}</td><td class="num">{n}</td><td class="barcell">',
                f'<span class="hbar" style="width:{width}%"></span></td></tr>\n',
            )
        w("</tbody></table>\n</section>\n")

    def _cases(self, report: Report, w: _Page) -> None:
        w("<section>\n<h2>Rules and destinations</h2>\n")
        if not report.cases:
            w(_empty("No rules or destinations."), "\n</section>\n")
            return
        w('<div class="scroll"><table><thead><tr>')
        w(*(f"<th>{c}</th>" for c in _CASE_HEADERS), "</tr></thead><tbody>\n")
        for case in report.cases:
            w("<tr>", *_case_cells(case), "</tr>\n")
        w("</tbody></table></div>\n</section>\n")

    def _rows(self, report: Report, w: _Page) -> None:
        w(f"<section>\n<h2>All rows ({h(str(report.kind), 40)}")
        w(f" by {h(report.by, 40)})</h2>\n" if report.by else ")</h2>\n")
        if not report.rows:
            w(_empty("Nothing matched the filters."), "\n")
        else:
            w('<div class="scroll"><table class="rows"><thead><tr>')
            w(*(f"<th>{h(c, 60)}</th>" for c in report.columns), "</tr></thead><tbody>\n")
            for row in report.rows:
                w("<tr>")
                w(*(_cell(row.get(c), verdict=c == "verdict") for c in report.columns))
                w("</tr>\n")
            w("</tbody></table></div>\n")
        note = _layout.truncated_text(report)
        if note:
            w(f'<p class="meta">{h(note)}</p>\n')
        w("</section>\n")


def _case_cells(case: Case) -> list[str]:
    return [
        _cell(case.rule),
        _cell(case.host),
        _cell(case.verdict, verdict=True),
        _cell(case.count),
        _cell(case.violations),
        _cell(case.provider),
        _cell(case.endpoint_country or "unknown"),
        _cell(case.first_seen),
        _cell(case.last_seen),
        _cell(case.reason),
    ]


def _empty(message: str) -> str:
    return f'<p class="empty">{message}</p>'
