"""The records a report query returns and every renderer reads, and the renderer interface.

A query (:mod:`egresswatch.report.query`) builds one :class:`Report`; a renderer (one module per
format under :mod:`egresswatch.report.formats`) turns it into text. Renderers never touch the
database, and queries never format text.

Everything in ``Report.rows`` and ``Report.cases`` may have come off the network (server names,
DNS names, process names, reasons that quote them): every renderer must treat every string in
them as hostile and make it inert for its medium (terminal escapes, HTML, spreadsheet formulas,
XML, Markdown).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import IO, Any

Value = str | int | float | bool | None | list[str]
"""A cell: text, number, flag, nothing, or a list of texts (``alpn``, ``inference``)."""


class ReportFormat(enum.StrEnum):
    """The formats of ``egresswatch report --format``."""

    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"
    MARKDOWN = "markdown"
    HTML = "html"
    JUNIT = "junit"


class ReportKind(enum.StrEnum):
    """What one row of a report is."""

    GROUPED = "grouped"
    """One row per value of the ``--by`` key, with counts per verdict."""
    CONNECTIONS = "connections"
    """One row per aggregated connection record (host, destination, process, verdict, hour)."""
    VIOLATIONS = "violations"
    """One row per violation, kept individually."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Totals over everything the filters selected, whatever the rows show."""

    connections: int
    """Connections (TLS and QUIC ClientHellos) counted."""
    by_verdict: dict[str, int]
    """Connections per verdict: ``allow``, ``warn``, ``violation``, and ``audit`` for those
    recorded without a policy (unjudged)."""
    violations: int
    """Violation records (kept individually)."""
    destinations: int
    """Distinct destination names (``host``) among the connections."""
    machines: list[str]
    """The machines (agents) the data came from, sorted."""
    first_seen: str | None
    """RFC 3339 UTC of the earliest record selected, ``None`` when nothing was."""
    last_seen: str | None
    """RFC 3339 UTC of the latest record selected."""


@dataclass(frozen=True, slots=True)
class Case:
    """One rule and destination, as one JUnit test case."""

    rule: str
    """The rule id or built-in name that decided (``(none)`` when no rule decided: an
    unjudged or allowed-by-default connection)."""
    host: str
    """The destination name (``(no name)`` when there was none) ."""
    verdict: str
    """The worst verdict seen for this rule and destination."""
    count: int
    """Connections counted."""
    violations: int
    """Of those, violations."""
    reason: str | None
    """The reason of the worst verdict, one sentence."""
    provider: str | None
    """Register id of the provider, if an AI endpoint."""
    endpoint_country: str | None
    """Where the destination address was, when known."""
    first_seen: str
    """RFC 3339 UTC."""
    last_seen: str
    """RFC 3339 UTC."""


@dataclass(frozen=True, slots=True)
class Report:
    """One report: what was asked, the rows, and what every format may show beside them."""

    title: str
    """Heading, e.g. ``egresswatch report``."""
    generated: str
    """RFC 3339 UTC of when the report was made."""
    source: str
    """The database it was read from, password hidden."""
    filters: dict[str, str]
    """The filters asked for, option name without dashes -> value as given, for headers."""
    kind: ReportKind
    """What a row is."""
    by: str | None
    """The ``--by`` key for a grouped report (``host``, ``provider``, ``rule``, ``country``,
    ``process``, ``day``, ``machine``, ``verdict``), else ``None``."""
    columns: tuple[str, ...]
    """Column names, in order; every row has exactly these keys."""
    rows: list[dict[str, Value]]
    """The rows. Timestamps are RFC 3339 UTC strings; field names follow DESIGN.md."""
    summary: Summary
    """Totals."""
    timeline: list[tuple[str, int, int]] = field(default_factory=list)
    """Per UTC day ``YYYY-MM-DD`` in the selection, oldest first: (day, connections,
    violations). Days with nothing are included between the first and the last, so a chart
    can draw them as zero."""
    countries: list[tuple[str | None, int, int]] = field(default_factory=list)
    """Per endpoint country (ISO alpha-2, ``None`` for unknown), most connections first:
    (country, connections, violations)."""
    top_rules: list[tuple[str, int]] = field(default_factory=list)
    """Rules that decided violations, most first: (rule, violations)."""
    cases: list[Case] = field(default_factory=list)
    """One per rule and destination, for JUnit (and the HTML report's rule table)."""
    truncated: int = 0
    """Rows left out by ``--limit`` (0 when none were)."""


class Renderer(abc.ABC):
    """Writes a :class:`Report` to a text stream in one format."""

    @abc.abstractmethod
    def render(self, report: Report, stream: IO[str]) -> None:
        """Write the whole report to ``stream``."""


def cell_text(value: Any) -> str:
    """A cell as plain text before any escaping: lists joined with commas, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
