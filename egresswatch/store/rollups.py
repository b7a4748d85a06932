"""Rebuilding rollups from finer ones: after retention, and for stores written in bulk."""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, insert, select

from egresswatch.store.keys import DAILY_COLUMNS, FACET_COLUMNS, digest
from egresswatch.store.models import (
    DailyFacets,
    DailyRollup,
    HourlyRollup,
    ObservationAggregate,
    TotalRollup,
    WeeklyRollup,
)

BATCH = 5000


def rebuild_totals(conn: Connection) -> None:
    """The totals again from the weekly rollups (the key is the same digest in both)."""
    w = WeeklyRollup
    columns = [getattr(w, name) for name in DAILY_COLUMNS]
    conn.execute(delete(TotalRollup))
    conn.execute(
        insert(TotalRollup).from_select(
            ["key", *DAILY_COLUMNS, "reason", "count", "first_seen", "last_seen"],
            select(
                w.key,
                *columns,
                func.max(w.reason),
                func.sum(w.count),
                func.min(w.first_seen),
                func.max(w.last_seen),
            ).group_by(w.key, *columns),
        )
    )


def rebuild_daily_facets(conn: Connection) -> None:
    """The daily facets again from the daily rollups."""
    d = DailyRollup
    keys = [getattr(d, name) for name in FACET_COLUMNS]
    conn.execute(delete(DailyFacets))
    query = select(
        d.day, *keys, func.sum(d.count), func.min(d.first_seen), func.max(d.last_seen)
    ).group_by(d.day, *keys)
    rows = []
    for day, *values, count, first, last in conn.execute(query).all():
        rows.append(
            {
                "day": day,
                "key": digest(values),
                **dict(zip(FACET_COLUMNS, values, strict=True)),
                "count": count,
                "first_seen": first,
                "last_seen": last,
            }
        )
    for i in range(0, len(rows), BATCH):
        conn.execute(insert(DailyFacets), rows[i : i + BATCH])


def rebuild_hourly_rollup(conn: Connection) -> None:
    """The hourly rollup again from the per-destination hourly rows (streamed, in batches)."""
    o = ObservationAggregate
    columns = [getattr(o, name) for name in DAILY_COLUMNS]
    conn.execute(delete(HourlyRollup))
    query = select(
        o.hour,
        *columns,
        func.max(o.reason),
        func.sum(o.count),
        func.min(o.first_seen),
        func.max(o.last_seen),
    ).group_by(o.hour, *columns)
    rows = []
    for hour, *values, reason, count, first, last in conn.execute(query).all():
        rows.append(
            {
                "hour": hour,
                "key": digest(values),
                **dict(zip(DAILY_COLUMNS, values, strict=True)),
                "reason": reason,
                "count": count,
                "first_seen": first,
                "last_seen": last,
            }
        )
        if len(rows) >= BATCH:
            conn.execute(insert(HourlyRollup), rows)
            rows = []
    if rows:
        conn.execute(insert(HourlyRollup), rows)
