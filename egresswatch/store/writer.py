"""Recording observations: aggregated in memory, written in short transactions.

:class:`StoreWriter` is a sink (``write``/``flush``/``close``) for enriched observations. It
adds each to an in-memory aggregate keyed by hour and descriptive columns, and to the day's
rollup, and keeps each violation as its own record. Every ``flush_seconds`` (or sooner when
``max_pending`` distinct rows or a violation are waiting for ``violation_seconds``) it writes
them all in one transaction: upserts that add counts and widen first/last seen, and inserts
for violations. A process killed between two flushes loses at most the last interval, and never
leaves a half-written transaction behind: what was committed is there, whole.

With ``outbox=True`` the same transaction also queues messages for the fleet's broker (one per
violation, and the flush's hourly deltas in bounded messages) in the ``outbox`` table, which
:mod:`egresswatch.fleet.publisher` drains: a crash never loses a message nor invents one.
:func:`write_batch` is the writing itself, shared with :mod:`egresswatch.fleet.collector`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, case
from sqlalchemy.exc import SQLAlchemyError

from egresswatch.store.engine import describe
from egresswatch.store.errors import StoreError
from egresswatch.store.keys import (
    AGGREGATE_COLUMNS,
    DAILY_COLUMNS,
    FACET_COLUMNS,
    day_of,
    digest,
    hour_of,
    week_of,
)
from egresswatch.store.models import (
    DailyFacets,
    DailyRollup,
    HourlyRollup,
    ObservationAggregate,
    OutboxMessage,
    TotalRollup,
    ViolationRecord,
    WeeklyRollup,
)
from probes.observation import Observation

MAX_TEXT = 4096
"""Longest text stored in a column; longer names (a crafted SNI may be 64 kB) are cut."""

OUTBOX_ROWS = 200
"""Most hourly rows in one outbox message (a message stays well under a megabyte)."""

_DAILY_INDEX = tuple(AGGREGATE_COLUMNS.index(name) for name in DAILY_COLUMNS)
_REASON = AGGREGATE_COLUMNS.index("reason")
_FACET_INDEX = tuple(DAILY_COLUMNS.index(name) for name in FACET_COLUMNS)


def clean_text(value: str | None, limit: int = MAX_TEXT) -> str | None:
    """Text a database accepts: no NUL (PostgreSQL refuses it), no lone surrogates (invalid
    UTF-8 carried by ``surrogateescape``), at most ``limit`` characters (after escaping)."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


def _values(obs: Observation, machine: str) -> tuple[Any, ...]:
    """The descriptive values of ``obs``, in :data:`AGGREGATE_COLUMNS` order."""
    extra = obs.extra
    inference = extra.get("inference") or ()
    host = extra.get("host") if "host" in extra else (obs.qname if obs.kind == "dns" else obs.sni)
    return (
        machine,
        obs.kind,
        obs.transport,
        obs.src,
        obs.dst,
        obs.dport,
        clean_text(host.lower() if isinstance(host, str) else host),
        obs.qtype,
        extra.get("provider"),
        extra.get("role"),
        extra.get("region"),
        ",".join(inference) or None,
        extra.get("endpoint_country"),
        extra.get("asn"),
        clean_text(extra.get("as_org"), 255),
        bool(extra.get("anycast")),
        obs.ech,
        extra.get("verdict") or "audit",
        clean_text(extra.get("rule"), 255),
        clean_text(extra.get("reason")),
        clean_text(extra.get("process"), 255),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(slots=True)
class _Pending:
    count: int
    first: float
    last: float
    reason: str | None = None


_Slot = tuple[int, tuple[Any, ...]]


def _roll_up(
    items: Iterable[tuple[int, tuple[Any, ...], str | None, _Pending]],
) -> dict[_Slot, _Pending]:
    """Counts of finer periods summed into coarser ones (same key columns)."""
    out: dict[_Slot, _Pending] = {}
    for period, values, reason, pending in items:
        have = out.get((period, values))
        if have is None:
            out[(period, values)] = _Pending(pending.count, pending.first, pending.last, reason)
        else:
            have.count += pending.count
            have.first = min(have.first, pending.first)
            if pending.last >= have.last:
                have.last = pending.last
                have.reason = reason  # the latest reason recorded
    return out


def _rollup_rows(
    bucket: str | None, rolled: dict[_Slot, _Pending], columns: tuple[str, ...] = DAILY_COLUMNS
) -> list[dict[str, Any]]:
    rows = []
    for (period, values), p in rolled.items():
        row = {
            "key": digest(values),
            **dict(zip(columns, values, strict=True)),
            "count": p.count,
            "first_seen": p.first,
            "last_seen": p.last,
        }
        if bucket is not None:
            row[bucket] = period
        if columns is DAILY_COLUMNS:
            row["reason"] = p.reason
        rows.append(row)
    return rows


@dataclass(slots=True)
class WriterStats:
    """What a writer has done so far."""

    observations: int = 0
    """Observations recorded."""
    rows: int = 0
    """Hourly rows upserted (an observation that merged into a pending row is not a new one)."""
    violations: int = 0
    """Violation records committed."""
    commits: int = 0
    """Transactions committed."""


class StoreWriter:
    """Sink: records enriched observations into the store (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        machine: str,
        flush_seconds: float = 2.0,
        violation_seconds: float = 0.5,
        max_pending: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        outbox: bool = False,
    ) -> None:
        self.engine = engine
        self._outbox = outbox
        self.machine = clean_text(machine, 255) or "unknown"
        """The machine name recorded with every row."""
        self._flush_seconds = flush_seconds
        self._violation_seconds = violation_seconds
        self._max_pending = max_pending
        self._clock = clock
        self._hourly: dict[tuple[int, tuple[Any, ...]], _Pending] = {}
        self._violations: list[dict[str, Any]] = []
        self._last_flush = clock()
        self._postgres = engine.url.get_backend_name() == "postgresql"
        self.stats = WriterStats()

    # -- the sink interface --------------------------------------------------------------------

    def write(self, obs: Observation) -> None:
        """Record one enriched observation; flush when it is time."""
        values = _values(obs, self.machine)
        slot = (hour_of(obs.ts), values)
        pending = self._hourly.get(slot)
        if pending is None:
            self._hourly[slot] = _Pending(1, obs.ts, obs.ts)
        else:
            pending.count += 1
            pending.first = min(pending.first, obs.ts)
            pending.last = max(pending.last, obs.ts)
        if obs.extra.get("verdict") == "violation":
            self._violations.append(self._violation(obs, values))
        self.stats.observations += 1
        self.tick()

    def tick(self) -> None:
        """Flush if the interval has passed; call it when idle, too, so nothing waits long."""
        if not self._hourly and not self._violations:
            return
        waited = self._clock() - self._last_flush
        if (
            waited >= self._flush_seconds
            or len(self._hourly) >= self._max_pending
            or (self._violations and waited >= self._violation_seconds)
        ):
            self.flush()

    def flush(self) -> None:
        """Write everything pending in one transaction (with its outbox messages, if asked)."""
        self._last_flush = self._clock()
        if not self._hourly and not self._violations:
            return
        hourly, violations = self._hourly, self._violations
        try:
            with self.engine.begin() as conn:
                hourly_rows = write_batch(conn, hourly, violations, postgres=self._postgres)
                if self._outbox:
                    messages = self._outbox_messages(hourly_rows, violations)
                    conn.execute(OutboxMessage.__table__.insert(), messages)  # type: ignore[attr-defined]
        except SQLAlchemyError as exc:
            # Keep what is pending: the next flush tries again (a busy database, a full disk
            # that an operator frees). Bounded: past twice the limit the oldest is dropped.
            if len(self._hourly) > 2 * self._max_pending:
                self._hourly.clear()
            orig = getattr(exc, "orig", None) or exc
            msg = f"cannot write to {describe(self.engine.url)}: {orig}"
            raise StoreError(msg) from exc
        self._hourly = {}
        self._violations = []
        self.stats.rows += len(hourly_rows)
        self.stats.violations += len(violations)
        self.stats.commits += 1

    def close(self) -> None:
        """Flush what is pending."""
        self.flush()

    # -- helpers -------------------------------------------------------------------------------

    def _violation(self, obs: Observation, values: tuple[Any, ...]) -> dict[str, Any]:
        row = dict(zip(AGGREGATE_COLUMNS, values, strict=True))
        del row["qtype"]
        extra = obs.extra
        pid = extra.get("pid")
        return {
            **row,
            "ts": obs.ts,
            "sport": obs.sport,
            "sni": clean_text(obs.sni),
            "alpn": [clean_text(a, 255) for a in obs.alpn],
            "pid": pid if isinstance(pid, int) else None,
            "detail": _jsonable(obs.to_dict()),
        }

    def _outbox_messages(
        self, hourly_rows: list[dict[str, Any]], violations: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One message per violation, and the flush's hourly deltas in messages of at most
        :data:`OUTBOX_ROWS` rows (without the key: the collector computes it again)."""
        now = time.time()
        machine = self.machine
        out = [
            {
                "created": now,
                "machine": machine,
                "topic": outbox_topic(machine, "violations"),
                "payload": {"type": "violation", "violation": v},
            }
            for v in violations
        ]
        rows = [{k: v for k, v in row.items() if k != "key"} for row in hourly_rows]
        out.extend(
            {
                "created": now,
                "machine": machine,
                "topic": outbox_topic(machine, "observations"),
                "payload": {"type": "observations", "rows": rows[start : start + OUTBOX_ROWS]},
            }
            for start in range(0, len(rows), OUTBOX_ROWS)
        )
        return out

    def _upsert(self, table: Table, bucket: str | None) -> Any:
        """INSERT ... ON CONFLICT (bucket, key) DO UPDATE adding counts, widening the span."""
        return upsert(table, bucket, postgres=self._postgres)


def dialect_insert(table: Table, *, postgres: bool) -> Any:
    """The dialect's INSERT for ``table`` (the one with ``ON CONFLICT``), SQLite or PostgreSQL."""
    if postgres:
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


@functools.cache
def upsert(table: Table, bucket: str | None, *, postgres: bool) -> Any:
    """INSERT ... ON CONFLICT (bucket, key) DO UPDATE adding counts, widening the span.

    Built once per table: a statement is immutable, and building one (its ``excluded`` alias
    copies every column) leaves about 180 objects in reference cycles, which only Python's
    rare full collections free; one flush every two seconds made the agent's memory creep.
    """
    stmt = dialect_insert(table, postgres=postgres)
    new = stmt.excluded
    # The latest reason (on hourly rows it is part of the key, so the same one).
    latest = {"reason": new.reason} if "reason" in table.c else {}
    return stmt.on_conflict_do_update(
        index_elements=[bucket, "key"] if bucket else ["key"],
        set_={
            **latest,
            "count": table.c.count + new.count,
            "first_seen": case(
                (new.first_seen < table.c.first_seen, new.first_seen),
                else_=table.c.first_seen,
            ),
            "last_seen": case(
                (new.last_seen > table.c.last_seen, new.last_seen), else_=table.c.last_seen
            ),
        },
    )


Hourly = dict[tuple[int, tuple[Any, ...]], _Pending]
"""Pending hourly counts: (hour, descriptive values in AGGREGATE_COLUMNS order) -> counts."""


def write_batch(
    conn: Connection,
    hourly: Hourly,
    violations: list[dict[str, Any]],
    *,
    postgres: bool,
) -> list[dict[str, Any]]:
    """Upsert ``hourly`` counts (and every rollup made from them) and insert ``violations``
    in the caller's transaction; return the hourly rows written. The writer's flush and the
    fleet collector both write through here, so a fleet database adds up the same way."""
    hourly_rollup = _roll_up(
        (
            (hour, tuple(values[i] for i in _DAILY_INDEX), values[_REASON], p)
            for (hour, values), p in hourly.items()
        )
    )
    daily = _roll_up(
        ((day_of(hour), values, p.reason, p) for (hour, values), p in hourly_rollup.items())
    )
    weekly = _roll_up(((week_of(day), values, p.reason, p) for (day, values), p in daily.items()))
    totals = _roll_up(((0, values, p.reason, p) for (_, values), p in weekly.items()))
    facets = _roll_up(
        (
            (day, tuple(values[i] for i in _FACET_INDEX), None, p)
            for (day, values), p in daily.items()
        )
    )
    hourly_rows = [
        {
            "hour": hour,
            "key": digest(values),
            **dict(zip(AGGREGATE_COLUMNS, values, strict=True)),
            "count": p.count,
            "first_seen": p.first,
            "last_seen": p.last,
        }
        for (hour, values), p in hourly.items()
    ]
    hourly_rollup_rows = _rollup_rows("hour", hourly_rollup)
    daily_rows = _rollup_rows("day", daily)
    weekly_rows = _rollup_rows("week", weekly)
    total_rows = _rollup_rows(None, totals)
    facet_rows = _rollup_rows("day", facets, FACET_COLUMNS)
    if hourly_rows:
        conn.execute(upsert(ObservationAggregate.__table__, "hour", postgres=postgres), hourly_rows)
    if daily_rows:
        conn.execute(upsert(HourlyRollup.__table__, "hour", postgres=postgres), hourly_rollup_rows)
        conn.execute(upsert(DailyRollup.__table__, "day", postgres=postgres), daily_rows)
        conn.execute(upsert(WeeklyRollup.__table__, "week", postgres=postgres), weekly_rows)
        conn.execute(upsert(TotalRollup.__table__, None, postgres=postgres), total_rows)
        conn.execute(upsert(DailyFacets.__table__, "day", postgres=postgres), facet_rows)
    if violations:
        conn.execute(ViolationRecord.__table__.insert(), violations)  # type: ignore[attr-defined]
    return hourly_rows


def hourly_from_rows(rows: Iterable[Mapping[str, Any]]) -> Hourly:
    """Pending hourly counts from rows as an outbox message carries them (``hour``, the
    :data:`AGGREGATE_COLUMNS`, ``count``, ``first_seen``, ``last_seen``); rows with the same
    hour and values are added up. Raises KeyError or ValueError for a row that lacks one."""
    out: Hourly = {}
    for row in rows:
        slot = (int(row["hour"]), tuple(row[name] for name in AGGREGATE_COLUMNS))
        count, first, last = int(row["count"]), float(row["first_seen"]), float(row["last_seen"])
        have = out.get(slot)
        if have is None:
            out[slot] = _Pending(count, first, last)
        else:
            have.count += count
            have.first = min(have.first, first)
            have.last = max(have.last, last)
    return out


def outbox_topic(machine: str, kind: str) -> str:
    """``egresswatch/<machine>/<kind>``, the machine name made a valid single topic level
    (``/``, ``+``, ``#`` and NUL become ``_``); the payload keeps the real name."""
    level = "".join("_" if c in "/+#\x00" else c for c in machine) or "_"
    return f"egresswatch/{level}/{kind}"
