"""What the formats for people (table, Markdown, HTML) show, before any escaping.

The machine formats (JSON, JSON Lines, CSV) write every column as it is. The formats for people
show a subset chosen per :class:`~egresswatch.report.interface.ReportKind`, join ``dst`` and
``dport`` into one endpoint, shorten timestamps, and say the summary in words. Everything here
returns plain, unescaped text: each renderer makes it inert for its own medium.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from egresswatch.report.interface import Report, ReportKind, Value, cell_text

ENDPOINT = "dst:dport"
"""A pseudo column: ``dst`` and ``dport`` as one ``addr:port`` (``[v6]:port``)."""

VERDICTS = ("allow", "warn", "violation", "audit")
"""Verdicts in the order they are listed; any other seen is listed after these."""

TIME_COLUMNS = frozenset({"ts", "first_seen", "last_seen"})

_PREFERRED = {
    ReportKind.CONNECTIONS: (
        "last_seen", "count", "host", ENDPOINT, "provider", "endpoint_country", "verdict",
        "rule", "process",
    ),
    ReportKind.VIOLATIONS: (
        "ts", "machine", "process", "host", ENDPOINT, "provider", "endpoint_country", "rule",
        "reason",
    ),
}  # fmt: skip
_HEADERS = {
    "ts": "time",
    "last_seen": "last seen",
    "first_seen": "first seen",
    "endpoint_country": "country",
    ENDPOINT: "destination",
}
_CAPS = {"host": 60, "reason": 80, "rule": 40, "process": 40, "machine": 32, "provider": 24}
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(?:Z|[+-]00:00)")
_MACHINES_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Column:
    """One displayed column."""

    name: str
    """The report column (or :data:`ENDPOINT`)."""
    header: str
    """What the header says."""
    cap: int
    """Longest cell, in characters, for a terminal table."""
    blank: str = ""
    """What an empty (``None``) cell says: ``(none)`` for a grouped report's key."""

    def value(self, row: dict[str, Value]) -> Value:
        """The raw cell (an endpoint is text)."""
        if self.name == ENDPOINT:
            return endpoint(row.get("dst"), row.get("dport"))
        return row.get(self.name)

    def text(self, row: dict[str, Value]) -> str:
        """The cell as plain text, timestamps shortened."""
        value = self.value(row)
        if value is None or value == "":
            return self.blank
        text = cell_text(value)
        return short_time(text) if self.name in TIME_COLUMNS else text

    def numeric(self, row: dict[str, Value]) -> bool:
        """Whether the cell is a number (aligned right)."""
        value = self.value(row)
        return isinstance(value, int | float) and not isinstance(value, bool)


def columns(report: Report) -> list[Column]:
    """The columns a person sees for ``report``: for a grouped report the key first, then the
    rest (counts, first and last seen); otherwise the preferred columns that the report has,
    or every column when it has none of them."""
    names: list[str]
    if report.kind is ReportKind.GROUPED or report.kind not in _PREFERRED:
        first = report.by if report.by in report.columns else None
        names = [first] if first else []
        names += [c for c in report.columns if c != first]
    else:
        have = set(report.columns)
        names = [
            c for c in _PREFERRED[report.kind] if c in have or (c == ENDPOINT and "dst" in have)
        ]
        names = names or list(report.columns)
    key = report.by if report.kind is ReportKind.GROUPED else None
    return [
        Column(
            n, _HEADERS.get(n, n.replace("_", " ")), _CAPS.get(n, 40), "(none)" if n == key else ""
        )
        for n in names
    ]


def endpoint(dst: Value, dport: Value) -> str:
    """``addr:port``, with brackets around an IPv6 address; just the address without a port."""
    addr = cell_text(dst)
    if dport is None or dport == "":
        return addr
    return f"[{addr}]:{cell_text(dport)}" if ":" in addr else f"{addr}:{cell_text(dport)}"


def short_time(text: str) -> str:
    """``2026-11-24T09:15:02.123Z`` -> ``2026-11-24 09:15:02`` (UTC); anything else unchanged."""
    match = _RFC3339.fullmatch(text)
    return f"{match.group(1)} {match.group(2)}" if match else text


def verdict_counts(by_verdict: dict[str, int]) -> list[tuple[str, int]]:
    """Verdicts in a fixed order (allow, warn, violation, audit, then others sorted)."""
    known = [(v, by_verdict[v]) for v in VERDICTS if v in by_verdict]
    return known + sorted((v, n) for v, n in by_verdict.items() if v not in VERDICTS)


def filters_text(report: Report) -> str:
    """``since=2026-11-01, verdict=violation``, or ``none``."""
    return ", ".join(f"{k}={v}" for k, v in report.filters.items()) or "none"


def span_text(report: Report) -> str:
    """The time span of the selection, or a note that nothing was selected."""
    first, last = report.summary.first_seen, report.summary.last_seen
    if first is None and last is None:
        return "nothing selected"
    return f"{short_time(first or '?')} to {short_time(last or '?')} UTC"


def summary_items(report: Report) -> list[tuple[str, str]]:
    """The summary as (label, text) pairs, in the order every format for people shows it."""
    s = report.summary
    verdicts = ", ".join(f"{v} {n}" for v, n in verdict_counts(s.by_verdict))
    machines = ", ".join(s.machines[:_MACHINES_SHOWN])
    if len(s.machines) > _MACHINES_SHOWN:
        machines += f" and {len(s.machines) - _MACHINES_SHOWN} more"
    return [
        ("connections", f"{s.connections} ({verdicts})" if verdicts else str(s.connections)),
        ("violations", str(s.violations)),
        ("destinations", str(s.destinations)),
        ("machines", f"{len(s.machines)}: {machines}" if machines else "0"),
        ("time span", span_text(report)),
    ]


def truncated_text(report: Report) -> str | None:
    """A note on rows left out by ``--limit``, or ``None`` when none were."""
    if report.truncated <= 0:
        return None
    return f"{report.truncated} more rows not shown (raise --limit to see them)"
