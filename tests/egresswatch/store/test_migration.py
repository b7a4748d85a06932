"""Migrating a store written by the first schema (0001) to the head (0002 adds the daily and
weekly rollups, backfilled from the hourly rows)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select

from egresswatch.report.query import Filters, ReportQuery
from egresswatch.store import open_engine
from egresswatch.store.engine import (
    _alembic_config,
    current_revision,
    database_url,
    make_engine,
    schema_heads,
)
from egresswatch.store.keys import digest
from egresswatch.store.models import (
    Base,
    ObservationAggregate,
    ViolationRecord,
)

from . import model
from .model import BASE, DAY, HOUR, Rec

# The hourly row of the first schema: these descriptive columns, in this order, make its key.
AGGREGATE_COLUMNS = (
    "machine",
    "kind",
    "transport",
    "src",
    "dst",
    "dport",
    "host",
    "qtype",
    "provider",
    "role",
    "region",
    "inference",
    "endpoint_country",
    "asn",
    "as_org",
    "anycast",
    "ech",
    "verdict",
    "rule",
    "reason",
    "process",
)


def _at_0001(url: str) -> Engine:
    engine = make_engine(database_url(url))
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
        assert current_revision(conn) == "0001"
    return engine


def _hourly_rows_0001(recs: list[Rec]) -> list[dict[str, Any]]:
    """Aggregate like the first writer: per hour and all descriptive columns."""
    slots: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in recs:
        values = {
            "machine": r.machine,
            "kind": r.kind,
            "transport": "udp" if r.kind in ("quic", "dns") else "tcp",
            "src": "192.168.1.23",
            "dst": r.dst,
            "dport": 53 if r.kind == "dns" else r.dport,
            "host": r.host,
            "qtype": "A" if r.kind == "dns" else None,
            "provider": r.provider,
            "role": r.role,
            "region": None,
            "inference": "US" if r.provider else None,
            "endpoint_country": r.country,
            "asn": 64500 if r.country else None,
            "as_org": "Example AS" if r.country else None,
            "anycast": False,
            "ech": False,
            "verdict": r.v,
            "rule": r.rule,
            "reason": r.reason,
            "process": r.process,
        }
        slot = (r.hour, *values.values())
        have = slots.get(slot)
        if have is None:
            slots[slot] = {
                "hour": r.hour,
                "key": digest([values[c] for c in AGGREGATE_COLUMNS]),
                **values,
                "count": 1,
                "first_seen": r.ts,
                "last_seen": r.ts,
            }
        else:
            have["count"] += 1
            have["first_seen"] = min(have["first_seen"], r.ts)
            have["last_seen"] = max(have["last_seen"], r.ts)
    return list(slots.values())


def _old_store(url: str, recs: list[Rec]) -> None:
    engine = _at_0001(url)
    rows = _hourly_rows_0001(recs)
    violations = [
        {
            **{k: v for k, v in row.items() if k in AGGREGATE_COLUMNS and k != "qtype"},
            "ts": row["first_seen"],
            "sport": 50000,
            "sni": row["host"],
            "alpn": ["h2"],
            "pid": None,
            "detail": {"verdict": "violation", "host": row["host"]},
        }
        for row in rows
        if row["verdict"] == "violation"
    ]
    with engine.begin() as conn:
        conn.execute(ObservationAggregate.__table__.insert(), rows)
        conn.execute(ViolationRecord.__table__.insert(), violations)
    engine.dispose()


def _check_rollups(engine: Engine, recs: list[Rec]) -> None:
    model.check_rollups(engine, len(recs))


def schema_diff(engine: Engine) -> list[Any]:
    """What differs between the database's schema and the models (Alembic autogenerate)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def _mixed_recs() -> list[Rec]:
    # Over 16 days from a Monday: three weeks, so that weekly rollups have edges too.
    recs = [replace(r, ts=BASE + (r.ts - BASE) * 4) for r in model.random_recs(7, 600)]
    # Several observations in the same hour and key, at day edges, and every verdict.
    for i in range(5):
        recs.append(
            Rec(
                ts=BASE + DAY - 0.5 + i * 0.1,
                machine="laptop-1",
                verdict="violation",
                rule="no-cn",
                reason="because no-cn",
                host="api.deepseek.com",
            )
        )
    recs.append(Rec(ts=BASE + 2 * DAY, machine="laptop-1", verdict="warn", rule="eu-only"))
    return recs


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0001_store_migrates_and_rollups_equal_hourly_sums(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "old.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    recs = _mixed_recs()
    _old_store(url, recs)

    notes: list[str] = []
    engine = open_engine(url, notify=notes.append)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == schema_heads()[-1]
            n_viol = conn.execute(select(func.count()).select_from(ViolationRecord)).scalar()
        assert n_viol == sum(1 for r in _hourly_rows_0001(recs) if r["verdict"] == "violation")
        assert len(notes) == 1
        assert "0001" in notes[0] and schema_heads()[-1] in notes[0]
        _check_rollups(engine, recs)
        assert schema_diff(engine) == []  # the same schema as a store created new

        # Grouped reports read the rollups: they equal the brute force over the observations.
        query = ReportQuery(engine)
        for by in model.GROUP_KEYS:
            report = query.build(Filters(), by=by, now=BASE + 10 * DAY)
            assert {r[by]: r for r in report.rows} == model.grouped(recs, by), by
        # And at partial-day edges (hourly rows and rollups together).
        for f in (
            Filters(since=BASE + 5 * HOUR + 10, until=BASE + 2 * DAY + 7 * HOUR + 1),
            Filters(since=BASE + 5 * HOUR + 10, until=BASE + 15 * DAY + 7 * HOUR),
            Filters(since=BASE + 7 * DAY, until=BASE + 14 * DAY),
        ):
            report = query.build(f, by="host", now=BASE + 30 * DAY)
            assert {r["host"]: r for r in report.rows} == model.grouped(
                model.counted(recs, f), "host"
            )

        # The new writer merges into the backfilled rollups: same key, no second row.
        model.write_all(engine, recs[:50])
        _check_rollups(engine, recs + recs[:50])
    finally:
        engine.dispose()


def test_migration_is_one_transaction(tmp_path: Path) -> None:
    """A store at 0001 that cannot be backfilled stays at 0001, without a half-made rollup."""
    path = tmp_path / "old.db"
    _old_store(str(path), model.random_recs(3, 20))
    raw = sqlite3.connect(path)
    # A daily table already there makes 0002's CREATE TABLE fail halfway through the upgrade.
    raw.execute("CREATE TABLE review_marks (x INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(Exception):  # noqa: B017 - any error, as long as nothing stays
        open_engine(path)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "daily" not in names
    finally:
        raw.close()
