"""Retention: ``--keep 90d`` and a size bound, both by dropping the oldest whole weeks.

Whole weeks (Monday 00:00 UTC) go together from every table (hourly rows, daily and weekly
rollups, violations), so a report never sees a period whose rollups and details disagree.
``--keep`` rounds down to the start of a week and so keeps at least what it says (and at most
six days more). The size bound drops the oldest weeks until the rows left fit in 90% of the
bound, never the newest week, then gives the free pages back to the file system (SQLite
``incremental_vacuum``; PostgreSQL's autovacuum reuses them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text

from egresswatch.store.keys import week_of
from egresswatch.store.models import (
    DailyFacets,
    DailyRollup,
    HourlyRollup,
    ObservationAggregate,
    OutboxMessage,
    ReceivedMessage,
    ViolationRecord,
    WeeklyRollup,
)
from egresswatch.store.rollups import rebuild_totals

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_BYTES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: str) -> float:
    """``90d``, ``12h``, ``2w``, ``30m``, ``45s`` (a bare number means days) -> seconds."""
    match = _DURATION.match(value)
    if not match:
        msg = f"not a duration: {value!r} (use e.g. 90d, 12h, 2w)"
        raise ValueError(msg)
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def parse_size(value: str) -> int:
    """``1G``, ``500MB``, ``2GiB``, ``1048576`` -> bytes (binary units)."""
    match = _SIZE.match(value)
    if not match:
        msg = f"not a size: {value!r} (use e.g. 500M, 2G)"
        raise ValueError(msg)
    return int(float(match.group(1)) * _BYTES[match.group(2).lower()])


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed."""

    observations: int
    """Hourly rows deleted."""
    daily: int
    """Daily and weekly rollup rows deleted."""
    violations: int
    """Violation records deleted."""
    before_day: int | None
    """Everything before this day, the start of a week (seconds since the epoch), is gone;
    None if nothing was."""
    size_before: int
    """Bytes the store used before."""
    size_after: int
    """Bytes after."""
    messages: int = 0
    """Fleet messages deleted: unpublished ones in the outbox (lost to the fleet; logged) and
    the collector's record of messages received (their rows are gone too)."""

    @property
    def removed(self) -> bool:
        """Anything was deleted."""
        return bool(self.observations or self.daily or self.violations or self.messages)


def store_size(conn: Connection) -> int:
    """Bytes the store's data takes: used pages on SQLite, relation sizes on PostgreSQL."""
    if conn.dialect.name == "sqlite":
        page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
        return int((pages - free) * page_size)
    total = 0
    for table in (
        "observations",
        "daily",
        "weekly",
        "totals",
        "daily_facets",
        "violations",
        "review_marks",
    ):
        total += int(
            conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table}).scalar_one()
        )
    return total


def _delete_before(conn: Connection, week: int) -> tuple[int, int, int, int]:
    obs = conn.execute(delete(ObservationAggregate).where(ObservationAggregate.hour < week))
    conn.execute(delete(HourlyRollup).where(HourlyRollup.hour < week))
    daily = conn.execute(delete(DailyRollup).where(DailyRollup.day < week))
    weekly = conn.execute(delete(WeeklyRollup).where(WeeklyRollup.week < week))
    conn.execute(delete(DailyFacets).where(DailyFacets.day < week))
    viol = conn.execute(delete(ViolationRecord).where(ViolationRecord.ts < week))
    # The fleet's bookkeeping ages out with the rows it describes: a message not published
    # by now describes rows this store no longer has, and a collector that keeps no rows of a
    # week needs no record of the messages that brought them (it refuses older ones).
    outbox = conn.execute(delete(OutboxMessage).where(OutboxMessage.created < week))
    received = conn.execute(delete(ReceivedMessage).where(ReceivedMessage.received < week))
    if weekly.rowcount:
        rebuild_totals(conn)
    return (
        obs.rowcount,
        daily.rowcount + weekly.rowcount,
        viol.rowcount,
        outbox.rowcount + received.rowcount,
    )


def _cutoff_for_size(conn: Connection, size: int, bound: int) -> int | None:
    """The first week to keep so that the rows left take about 90% of ``bound``."""
    per_day = [
        (week_of(day), n)
        for day, n in conn.execute(
            select(DailyRollup.day, func.count())
            .group_by(DailyRollup.day)
            .order_by(DailyRollup.day)
        )
    ]
    weeks: dict[int, int] = {}
    for week, n in per_day:
        weeks[week] = weeks.get(week, 0) + n
    per_day = sorted(weeks.items())
    total = sum(n for _, n in per_day)
    if not per_day or total == 0:
        return None
    # Rows that may stay, in proportion to the bytes (the rollups grow with the hourly rows).
    keep_rows = total * (0.9 * bound) / size
    left = total
    for week, n in per_day[:-1]:  # never the newest week: an agent must keep recording
        if left <= keep_rows:
            return int(week)
        left -= n
    return int(per_day[-1][0])


def prune(
    engine: Engine, *, keep_seconds: float | None, max_bytes: int | None, now: float
) -> PruneResult:
    """Delete what is older than ``keep_seconds`` before ``now``, then the oldest days while
    the store is over ``max_bytes``."""
    deleted = [0, 0, 0, 0]
    cutoff: int | None = None
    with engine.begin() as conn:
        size_before = store_size(conn)
        if keep_seconds is not None:
            cutoff = week_of(now - keep_seconds)
            for i, n in enumerate(_delete_before(conn, cutoff)):
                deleted[i] += n
        size = store_size(conn) if keep_seconds is not None else size_before
        if max_bytes is not None and size > max_bytes:
            by_size = _cutoff_for_size(conn, size, max_bytes)
            if by_size is not None and (cutoff is None or by_size > cutoff):
                cutoff = by_size
                for i, n in enumerate(_delete_before(conn, by_size)):
                    deleted[i] += n
    if any(deleted) and engine.url.get_backend_name() == "sqlite":
        with engine.connect() as conn:
            # One page per step: executescript steps the pragma to the end.
            raw: Any = conn.connection.driver_connection
            raw.executescript("PRAGMA incremental_vacuum;")
    with engine.connect() as conn:
        size_after = store_size(conn)
    return PruneResult(
        deleted[0],
        deleted[1],
        deleted[2],
        cutoff if any(deleted) else None,
        size_before,
        size_after,
        deleted[3],
    )
