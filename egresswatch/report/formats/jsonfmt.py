"""``--format json`` and ``--format jsonl``: the report for programs.

Strings are kept as they were, with two exceptions that keep every consumer working: output is
pure ASCII (``ensure_ascii``: a control, C1 or bidi character is a ``\\uXXXX`` escape, so
``cat report.json`` cannot act on a terminal), and a lone surrogate (bytes that were not
UTF-8) becomes the visible text ``\\xNN``, since many JSON parsers reject a lone surrogate
escape. A number that is not finite becomes ``null``, which is what JSON can say.
"""

from __future__ import annotations

import json
import math
from typing import IO, Any

from egresswatch.report.formats._escape import unsurrogate
from egresswatch.report.interface import Case, Renderer, Report, Value


def _clean(value: Any) -> Any:
    """``value`` with lone surrogates made visible and non-finite floats made ``None``."""
    if isinstance(value, str):
        return unsurrogate(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def row_object(report: Report, row: dict[str, Value]) -> dict[str, Any]:
    """One row as a JSON-ready object, keys in ``report.columns`` order."""
    return {_clean(c): _clean(row.get(c)) for c in report.columns}


def _case(case: Case) -> dict[str, Any]:
    return {
        "rule": case.rule,
        "host": case.host,
        "verdict": case.verdict,
        "count": case.count,
        "violations": case.violations,
        "reason": case.reason,
        "provider": case.provider,
        "endpoint_country": case.endpoint_country,
        "first_seen": case.first_seen,
        "last_seen": case.last_seen,
    }


def document(report: Report) -> dict[str, Any]:
    """The whole report as one JSON-ready object."""
    s = report.summary
    doc = {
        "title": report.title,
        "generated": report.generated,
        "source": report.source,
        "filters": report.filters,
        "kind": str(report.kind),
        "by": report.by,
        "columns": list(report.columns),
        "summary": {
            "connections": s.connections,
            "by_verdict": s.by_verdict,
            "violations": s.violations,
            "destinations": s.destinations,
            "machines": s.machines,
            "first_seen": s.first_seen,
            "last_seen": s.last_seen,
        },
        "rows": [{c: row.get(c) for c in report.columns} for row in report.rows],
        "timeline": [
            {"day": day, "connections": conn, "violations": viol}
            for day, conn, viol in report.timeline
        ],
        "countries": [
            {"country": country, "connections": conn, "violations": viol}
            for country, conn, viol in report.countries
        ],
        "top_rules": [{"rule": rule, "violations": n} for rule, n in report.top_rules],
        "cases": [_case(case) for case in report.cases],
        "truncated": report.truncated,
    }
    cleaned: dict[str, Any] = _clean(doc)
    return cleaned


class JsonRenderer(Renderer):
    """One JSON document, indented, ASCII only."""

    def render(self, report: Report, stream: IO[str]) -> None:
        """Write the document and a final newline to ``stream``."""
        json.dump(document(report), stream, ensure_ascii=True, allow_nan=False, indent=2)
        stream.write("\n")


class JsonlRenderer(Renderer):
    """One JSON object per row, keys in column order, ASCII only; nothing else."""

    def render(self, report: Report, stream: IO[str]) -> None:
        """Write one line per row to ``stream``."""
        for row in report.rows:
            line = json.dumps(row_object(report, row), ensure_ascii=True, allow_nan=False)
            stream.write(line + "\n")
