"""The same observations through the writer and ReportQuery on PostgreSQL and on SQLite: the
same rows, the same reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from egresswatch.report.query import Filters, ReportQuery
from egresswatch.store import open_engine
from egresswatch.store.keys import DAILY_COLUMNS
from egresswatch.store.models import (
    DailyRollup,
    ObservationAggregate,
    ViolationRecord,
    WeeklyRollup,
)

from . import model
from .model import BASE, DAY, HOUR, Rec

pytestmark = pytest.mark.postgres

NOW = BASE + 40 * DAY


def _report(engine: Engine, f: Filters, **kw: Any) -> dict[str, Any]:
    report = ReportQuery(engine).build(f, now=NOW, **kw)
    out = dataclasses.asdict(report)
    out.pop("source")
    # Row order is compared as a multiset: ties (equal counts) may come in either order.
    out["rows"] = sorted(json.dumps(r, sort_keys=True) for r in out["rows"])
    # A case's provider and country: see test_case_country_is_the_worst_verdicts.
    for c in out["cases"]:
        del c["provider"], c["endpoint_country"]
    return out


def _table(engine: Engine, table: Any, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(select(*(getattr(table, c) for c in columns))).all()
    return sorted((tuple(r) for r in rows), key=repr)


FILTERS = [
    Filters(),
    Filters(since=BASE + 5 * HOUR + 17, until=BASE + 15 * DAY + 3 * HOUR),
    Filters(since=BASE + 7 * DAY, until=BASE + 14 * DAY),
    Filters(since=BASE + DAY + 1, until=BASE + DAY + 20 * HOUR),
    Filters(verdicts=("violation", "warn"), providers=("openai", "deepseek")),
    Filters(hosts=("**.openai.com",), processes=("python3.*", "curl")),
    Filters(hosts=("api.openai.com", "*.mistral.ai"), machines=("laptop-1",)),
    Filters(rules=("no-cn",), since=BASE + 3 * DAY),
]


def test_postgres_equals_sqlite(pg_url: str, tmp_path: Path) -> None:
    recs = [
        dataclasses.replace(r, ts=BASE + (r.ts - BASE) * 1.2) for r in model.random_recs(21, 700)
    ]
    recs += [
        Rec(
            ts=BASE + 3.5 * DAY + i,
            machine="laptop-1",
            verdict="violation",
            rule="no-cn",
            host="api.deepseek.com",
            provider="deepseek",
            country="CN",
            process="node",
            pid=i,
        )
        for i in range(5)
    ]
    engines = {"sqlite": open_engine(tmp_path / "s.db"), "postgres": open_engine(pg_url)}
    try:
        for engine in engines.values():
            model.write_all(engine, recs[:300], flush_after=range(0, 300, 70))
            model.write_all(engine, recs[300:])
        sq, pg = engines["sqlite"], engines["postgres"]

        hourly_cols = (
            "hour",
            "machine",
            "kind",
            "dst",
            "dport",
            "host",
            "qtype",
            "provider",
            "verdict",
            "rule",
            "reason",
            "process",
            "count",
            "first_seen",
            "last_seen",
            "key",
        )
        rollup_cols = (*DAILY_COLUMNS, "count", "first_seen", "last_seen", "key")
        assert _table(pg, ObservationAggregate, hourly_cols) == _table(
            sq, ObservationAggregate, hourly_cols
        )
        assert _table(pg, DailyRollup, ("day", *rollup_cols)) == _table(
            sq, DailyRollup, ("day", *rollup_cols)
        )
        assert _table(pg, WeeklyRollup, ("week", *rollup_cols)) == _table(
            sq, WeeklyRollup, ("week", *rollup_cols)
        )
        viol_cols = ("ts", "machine", "host", "rule", "pid", "sni", "alpn", "detail")
        assert [
            json.dumps(r, sort_keys=True, default=str)
            for r in _table(pg, ViolationRecord, viol_cols)
        ] == [
            json.dumps(r, sort_keys=True, default=str)
            for r in _table(sq, ViolationRecord, viol_cols)
        ]

        for f in FILTERS:
            for by in model.GROUP_KEYS:
                assert _report(pg, f, by=by) == _report(sq, f, by=by), (f, by)
                # And both equal the brute force.
                got = {r[by]: r for r in ReportQuery(pg).build(f, by=by, now=NOW).rows}
                assert got == model.grouped(model.counted(recs, f), by), (f, by)
            vf = dataclasses.replace(f, verdicts=("violation",))
            assert _report(pg, vf, limit=7) == _report(sq, vf, limit=7), f
            assert _report(pg, f, limit=50) == _report(sq, f, limit=50), f

        # Review marks behave the same.
        for _ in range(2):
            new = Filters(new_since_last=True, mark="team")
            assert _report(pg, new, by="host") == _report(sq, new, by="host")
    finally:
        for engine in engines.values():
            engine.dispose()


def test_case_country_is_the_worst_verdicts(pg_url: str) -> None:
    """A rule that allows a host in one country and flags it in another (an endpoint-location
    rule): the case says 'violation' with the violation's reason, and must say where that
    violation went, the same on every backend and for every time filter.

    Fails: ``_Facets.add_case`` (query.py) fills provider and endpoint_country from whichever
    (rule, host, verdict) group row the database returns first, and on a worse verdict updates
    only verdict and reason. SQLite returns the 'allow' group first, so the case reads
    "violation ... DE" for a violation in US; PostgreSQL answers DE without a time filter and
    US with one.
    """
    recs = [
        Rec(
            ts=BASE + i,
            machine="m",
            host="api.example.ai",
            provider="mistral",
            verdict="allow",
            rule="endpoint",
            reason="in the EU",
            country="DE",
        )
        for i in range(3)
    ] + [
        Rec(
            ts=BASE + 10,
            machine="m",
            host="api.example.ai",
            provider="mistral",
            verdict="violation",
            rule="endpoint",
            reason="outside the EU",
            country="US",
        )
    ]
    engines = {"sqlite": open_engine("sqlite://"), "postgres": open_engine(pg_url)}
    try:
        seen = {}
        for name, engine in engines.items():
            model.write_all(engine, recs)
            for f in (Filters(), Filters(since=BASE)):
                (case,) = ReportQuery(engine).build(f, by="host", now=NOW).cases
                assert (case.verdict, case.reason) == ("violation", "outside the EU")
                seen[(name, f.since)] = case.endpoint_country
        assert seen == dict.fromkeys(seen, "US")
    finally:
        for engine in engines.values():
            engine.dispose()
