"""Reports for the renderer tests: a realistic small one, an empty one, and hostile ones.

Built by hand rather than by the query, so these tests need no database and say exactly what
each renderer receives.
"""

from __future__ import annotations

from egresswatch.report.interface import Case, Report, ReportKind, Summary, Value

GENERATED = "2026-11-24T10:00:00.000000Z"

VIOLATION_COLUMNS = (
    "ts", "machine", "kind", "transport", "src", "dst", "sport", "dport", "sni", "alpn", "ech",
    "host", "provider", "role", "region", "inference", "endpoint_country", "asn", "as_org",
    "anycast", "verdict", "rule", "reason", "pid", "process",
)  # fmt: skip
CONNECTION_COLUMNS = (
    "ts", "first_seen", "last_seen", "count", "machine", "kind", "transport", "src", "dst",
    "dport", "host", "qtype", "provider", "role", "region", "inference", "endpoint_country",
    "asn", "as_org", "anycast", "ech", "verdict", "rule", "reason", "process",
)  # fmt: skip
GROUPED_COLUMNS = (
    "host", "connections", "dns", "allow", "warn", "violation", "audit", "first_seen",
    "last_seen",
)  # fmt: skip


def violation_row(
    ts: str, host: str, dst: str, country: str | None, rule: str, provider: str = "deepseek"
) -> dict[str, Value]:
    """One violation as the query writes it."""
    return {
        "ts": ts,
        "machine": "dev-laptop-7",
        "kind": "tls",
        "transport": "tcp",
        "src": "10.0.0.5",
        "dst": dst,
        "sport": 51544,
        "dport": 443,
        "sni": host,
        "alpn": ["h2", "http/1.1"],
        "ech": False,
        "host": host,
        "provider": provider,
        "role": "inference",
        "region": None,
        "inference": ["CN"],
        "endpoint_country": country,
        "asn": 45102,
        "as_org": "Alibaba US Technology Co., Ltd.",
        "anycast": False,
        "verdict": "violation",
        "rule": rule,
        "reason": f"{provider} runs inference in CN, outside the allowed EU",
        "pid": 4242,
        "process": "node",
    }


def summary(connections: int = 12, violations: int = 3) -> Summary:
    """The totals of :func:`violations_report`."""
    return Summary(
        connections=connections,
        by_verdict={"allow": 8, "warn": 1, "violation": 3} if connections else {},
        violations=violations,
        destinations=4 if connections else 0,
        machines=["dev-laptop-7"] if connections else [],
        first_seen="2026-11-22T08:00:00.000000Z" if connections else None,
        last_seen="2026-11-24T09:15:02.123456Z" if connections else None,
    )


def cases() -> list[Case]:
    """Three cases: a violation, a warning and an allowed destination."""
    return [
        Case(
            rule="no-cn-inference",
            host="api.deepseek.com",
            verdict="violation",
            count=2,
            violations=2,
            reason="deepseek runs inference in CN, outside the allowed EU",
            provider="deepseek",
            endpoint_country="CN",
            first_seen="2026-11-22T08:00:00Z",
            last_seen="2026-11-24T09:15:02Z",
        ),
        Case(
            rule="eu-only",
            host="api.openai.com",
            verdict="warn",
            count=1,
            violations=0,
            reason="openai: EU data residency not proven for this endpoint",
            provider="openai",
            endpoint_country="US",
            first_seen="2026-11-23T08:00:00Z",
            last_seen="2026-11-23T08:00:00Z",
        ),
        Case(
            rule="(none)",
            host="api.mistral.ai",
            verdict="allow",
            count=8,
            violations=0,
            reason=None,
            provider="mistral",
            endpoint_country="FR",
            first_seen="2026-11-22T08:00:00Z",
            last_seen="2026-11-24T08:00:00Z",
        ),
    ]


def violations_report() -> Report:
    """Three violations, two countries (one unknown), two rules."""
    rows = [
        violation_row(
            "2026-11-24T09:15:02.123456Z", "api.deepseek.com", "1.2.3.4", "CN", "no-cn-inference"
        ),
        violation_row(
            "2026-11-22T08:00:00.000000Z", "api.deepseek.com", "1.2.3.5", "CN", "no-cn-inference"
        ),
        violation_row(
            "2026-11-22T07:00:00.000000Z",
            "api.moonshot.cn",
            "2001:db8::1",
            None,
            "no-cn",
            "moonshot",
        ),
    ]
    return Report(
        title="egresswatch report",
        generated=GENERATED,
        source="sqlite:///var/lib/egresswatch/egresswatch.db",
        filters={"since": "2026-11-22", "verdict": "violation"},
        kind=ReportKind.VIOLATIONS,
        by=None,
        columns=VIOLATION_COLUMNS,
        rows=rows,
        summary=summary(),
        timeline=[("2026-11-22", 6, 2), ("2026-11-23", 2, 0), ("2026-11-24", 4, 1)],
        countries=[("CN", 5, 2), (None, 4, 1), ("FR", 3, 0)],
        top_rules=[("no-cn-inference", 2), ("no-cn", 1)],
        cases=cases(),
    )


def grouped_report() -> Report:
    """Connections grouped by host, one host with no name."""
    rows: list[dict[str, Value]] = [
        {
            "host": "api.openai.com", "connections": 9, "dns": 3, "allow": 8, "warn": 1,
            "violation": 0, "audit": 0, "first_seen": "2026-11-22T08:00:00Z",
            "last_seen": "2026-11-24T08:00:00Z",
        },
        {
            "host": "api.deepseek.com", "connections": 2, "dns": 1, "allow": 0, "warn": 0,
            "violation": 2, "audit": 0, "first_seen": "2026-11-22T08:00:00Z",
            "last_seen": "2026-11-24T09:15:02Z",
        },
        {
            "host": None, "connections": 1, "dns": 0, "allow": 1, "warn": 0, "violation": 0,
            "audit": 0, "first_seen": "2026-11-23T08:00:00Z", "last_seen": "2026-11-23T08:00:00Z",
        },
    ]  # fmt: skip
    return Report(
        title="egresswatch report",
        generated=GENERATED,
        source="sqlite:///tmp/e.db",
        filters={"by": "host"},
        kind=ReportKind.GROUPED,
        by="host",
        columns=GROUPED_COLUMNS,
        rows=rows,
        summary=summary(),
        timeline=[("2026-11-22", 6, 2), ("2026-11-23", 2, 0), ("2026-11-24", 4, 1)],
        countries=[("CN", 5, 2), ("US", 7, 0)],
        top_rules=[("no-cn-inference", 2)],
        cases=cases(),
    )


def connections_report() -> Report:
    """Two aggregated connection records."""
    base = violation_row(
        "2026-11-24T09:00:00Z", "api.deepseek.com", "1.2.3.4", "CN", "no-cn-inference"
    )
    row = {c: base.get(c) for c in CONNECTION_COLUMNS}
    row |= {"first_seen": "2026-11-24T09:00:00Z", "last_seen": "2026-11-24T09:59:00Z"}
    row |= {"count": 17, "qtype": None}
    allowed = row | {"host": "api.mistral.ai", "verdict": "allow", "rule": None, "count": 3}
    return Report(
        title="egresswatch report",
        generated=GENERATED,
        source="sqlite:///tmp/e.db",
        filters={},
        kind=ReportKind.CONNECTIONS,
        by=None,
        columns=CONNECTION_COLUMNS,
        rows=[row, allowed],
        summary=summary(20, 17),
        timeline=[("2026-11-24", 20, 17)],
        countries=[("CN", 20, 17)],
        top_rules=[("no-cn-inference", 17)],
        cases=cases()[:1],
    )


def empty_report(kind: ReportKind = ReportKind.VIOLATIONS) -> Report:
    """Nothing selected."""
    columns = {
        ReportKind.VIOLATIONS: VIOLATION_COLUMNS,
        ReportKind.CONNECTIONS: CONNECTION_COLUMNS,
        ReportKind.GROUPED: GROUPED_COLUMNS,
    }[kind]
    return Report(
        title="egresswatch report",
        generated=GENERATED,
        source="sqlite:///tmp/empty.db",
        filters={"since": "2026-11-24"},
        kind=kind,
        by="host" if kind is ReportKind.GROUPED else None,
        columns=columns,
        rows=[],
        summary=summary(0, 0),
    )
