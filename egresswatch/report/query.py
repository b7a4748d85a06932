"""Report queries: filters in, a :class:`~egresswatch.report.interface.Report` out.

Counts come from the daily rollups for whole UTC days and from the hourly rows for the part
days at the edges of ``--since``/``--until`` (so time filters have an hour's precision on counts,
and are exact on individual violations). Grouped reports over months therefore read one row per
day and key, not one per hour and destination, and answer in well under a second on a store of
ten million hourly rows (``make bench`` shows it).
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    distinct,
    false,
    func,
    literal,
    or_,
    select,
    union_all,
)

from egresswatch.report.interface import Case, Report, ReportKind, Summary, Value
from egresswatch.store.engine import describe
from egresswatch.store.keys import (
    AGGREGATE_COLUMNS,
    DAY,
    FACET_COLUMNS,
    HOUR,
    WEEK,
    day_of,
    week_of,
)
from egresswatch.store.models import (
    DailyFacets,
    DailyRollup,
    HourlyRollup,
    ObservationAggregate,
    ReviewMark,
    TotalRollup,
    ViolationRecord,
    WeeklyRollup,
)
from probes.observation import format_ts

VERDICTS = ("allow", "warn", "violation", "audit")
"""Verdicts in the store; ``audit`` marks what was recorded without a policy."""

GROUP_KEYS = ("host", "provider", "rule", "country", "process", "day", "machine", "verdict")
"""Values of ``--by``."""

_WORST = {"violation": 3, "warn": 2, "allow": 1, "audit": 0}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

CONNECTION_COLUMNS = ("ts", "first_seen", "last_seen", "count", *AGGREGATE_COLUMNS)
"""The fields of an aggregated record in a listing: DESIGN.md names, ``ts`` = last seen."""
VIOLATION_COLUMNS = (
    "ts",
    "machine",
    "kind",
    "transport",
    "src",
    "dst",
    "sport",
    "dport",
    "sni",
    "alpn",
    "ech",
    "host",
    "provider",
    "role",
    "region",
    "inference",
    "endpoint_country",
    "asn",
    "as_org",
    "anycast",
    "verdict",
    "rule",
    "reason",
    "pid",
    "process",
)


def parse_time(value: str, now: float) -> float:
    """``7d``/``12h``/``30m`` ago, a date ``2026-11-01`` (UTC midnight), or RFC 3339."""
    match = _TIME.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        msg = f"not a time: {value!r} (use 7d, 12h, 2026-11-01 or 2026-11-01T09:00:00Z)"
        raise ValueError(msg) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Filters:
    """What ``egresswatch report`` was asked for."""

    since: float | None = None
    """Seconds since the epoch; records at or after it."""
    until: float | None = None
    """Seconds since the epoch; records before it."""
    verdicts: tuple[str, ...] = ()
    """Only these verdicts (empty: all)."""
    providers: tuple[str, ...] = ()
    """Only these provider ids."""
    hosts: tuple[str, ...] = ()
    """Only destination names matching these globs (POLICY.md host globs, case-insensitive)."""
    rules: tuple[str, ...] = ()
    """Only these rule ids or built-in names."""
    processes: tuple[str, ...] = ()
    """Only processes whose name matches these globs (fnmatch)."""
    machines: tuple[str, ...] = ()
    """Only these machines."""
    new_since_last: bool = False
    """Only violations of a rule and destination not seen by the last review."""
    mark: str = "default"
    """The review's name, for ``new_since_last``."""
    shown: dict[str, str] = field(default_factory=dict)
    """The filters as the user gave them, for report headers."""


def _has_glob(value: str) -> bool:
    return any(c in value for c in "*?[")


class _Selection:
    """Turns :class:`Filters` into WHERE clauses for each table."""

    def __init__(self, conn: Connection, filters: Filters) -> None:
        self.filters = filters
        self.hosts = self._expand(conn, filters.hosts, DailyRollup.host, self._host_match)
        self.processes = self._expand(conn, filters.processes, DailyRollup.process, fnmatch.fnmatch)

    @staticmethod
    def _host_match(name: str, glob: str) -> bool:
        from egresswatch.policy import compile_host_glob

        pattern = compile_host_glob(glob)
        if pattern is None:
            return fnmatch.fnmatch(name.lower(), glob.lower())
        return pattern.fullmatch(name.lower()) is not None

    @staticmethod
    def _expand(
        conn: Connection, globs: Sequence[str], column: Any, match: Any
    ) -> tuple[str, ...] | None:
        """Exact values for globs: the names in the store that match (None: no filter)."""
        if not globs:
            return None
        exact = {g.lower() if column is DailyRollup.host else g for g in globs if not _has_glob(g)}
        patterns = [g for g in globs if _has_glob(g)]
        if patterns:
            names = conn.execute(select(column).distinct().where(column.is_not(None))).scalars()
            exact.update(n for n in names if any(match(n, p) for p in patterns))
        return tuple(sorted(exact))

    def where(self, table: Any) -> list[ColumnElement[bool]]:
        """Clauses on the columns every table has (all but time)."""
        f = self.filters
        out: list[ColumnElement[bool]] = []
        if f.verdicts:
            out.append(table.verdict.in_(f.verdicts))
        if f.providers:
            out.append(table.provider.in_(f.providers))
        if f.rules:
            out.append(table.rule.in_(f.rules))
        if f.machines:
            out.append(table.machine.in_(f.machines))
        if self.hosts is not None:
            out.append(table.host.in_(self.hosts) if self.hosts else false())
        if self.processes is not None:
            out.append(table.process.in_(self.processes) if self.processes else false())
        return out


def _hour_after(end: float) -> int:
    """The first hour bucket that starts at or after ``end`` (buckets before it count)."""
    return math.ceil(end / HOUR) * HOUR


def _ceil(value: int, step: int, floor: Callable[[int], int]) -> int:
    base = floor(value)
    return base if base == value else base + step


def _count_source(sel: _Selection, columns: Sequence[str]) -> Any:
    """A subquery of (columns..., count, first_seen, last_seen) rows covering the time range
    with as few rows as possible: weekly rollups for whole weeks, daily rollups for whole days
    around them, hourly rows for the part days at the edges. A ``day`` column rules the weekly
    rollups out."""
    f = sel.filters
    start = None if f.since is None else int(f.since // HOUR) * HOUR
    end = f.until
    # The fleet-wide daily facets hold no names, machines or processes: usable when the query
    # needs none of them.
    facetable = set(columns) <= {"day", *FACET_COLUMNS} and not (
        f.hosts or f.processes or f.machines
    )
    day_table: Any = DailyFacets if facetable else DailyRollup

    def project(table: Any, day_expr: Any) -> Select[Any]:
        cols = [
            (day_expr if name == "day" else getattr(table, name)).label(name) for name in columns
        ]
        return select(
            *cols,
            table.count.label("count"),
            table.first_seen.label("first_seen"),
            table.last_seen.label("last_seen"),
        ).where(*sel.where(table))

    def span(column: Any, lo: int | None, hi: int | None) -> list[ColumnElement[bool]]:
        return [
            c
            for c in (None if lo is None else column >= lo, None if hi is None else column < hi)
            if c is not None
        ]

    if start is None and end is None and "day" not in columns:
        return project(TotalRollup, None).subquery()
    hour = HourlyRollup.hour
    hourly = project(HourlyRollup, hour - hour % DAY)
    daily = project(day_table, day_table.day)
    weekly = None if "day" in columns else project(WeeklyRollup, None)
    parts: list[Select[Any]] = []
    d0 = None if start is None else _ceil(start, DAY, day_of)
    d1 = None if end is None else day_of(end)
    if d0 is not None and d1 is not None and d0 >= d1:
        # The range lies within one or two days: the hourly rows alone.
        return hourly.where(*span(hour, start, _hour_after(end))).subquery()  # type: ignore[arg-type]
    if start is not None and d0 is not None and start < d0:
        parts.append(hourly.where(*span(hour, start, d0)))
    if end is not None and d1 is not None and d1 < end:
        parts.append(hourly.where(*span(hour, d1, _hour_after(end))))
    w0 = None if d0 is None else _ceil(d0, WEEK, week_of)
    w1 = None if d1 is None else week_of(d1)
    if weekly is None or (w0 is not None and w1 is not None and w0 >= w1):
        parts.append(daily.where(*span(day_table.day, d0, d1)))
    else:
        if d0 is not None and w0 is not None and d0 < w0:
            parts.append(daily.where(*span(day_table.day, d0, w0)))
        if d1 is not None and w1 is not None and w1 < d1:
            parts.append(daily.where(*span(day_table.day, w1, d1)))
        parts.append(weekly.where(*span(WeeklyRollup.week, w0, w1)))
    if len(parts) == 1:
        return parts[0].subquery()
    return union_all(*parts).subquery()


def _violation_where(sel: _Selection) -> list[ColumnElement[bool]]:
    f = sel.filters
    out = sel.where(ViolationRecord)
    if f.since is not None:
        out.append(ViolationRecord.ts >= f.since)
    if f.until is not None:
        out.append(ViolationRecord.ts < f.until)
    return out


def _new_since_last(conn: Connection, sel: _Selection) -> tuple[ColumnElement[bool], int]:
    """The clause for violations that are new since the mark, and the mark's last id: those
    after it whose rule and destination had no violation up to it."""
    last = _mark(conn, sel.filters.mark)
    if last == 0:
        return ViolationRecord.id > 0, 0
    older = ViolationRecord.__table__.alias("older")
    v = ViolationRecord

    def seen(host_matches: ColumnElement[bool]) -> Any:
        # (rule, host, ...) is indexed: each probe is an index look-up, not a scan.
        return (
            select(literal(1))
            .where(older.c.rule == v.rule, host_matches, older.c.id <= last)
            .exists()
        )

    named = and_(v.host.is_not(None), ~seen(older.c.host == v.host))
    unnamed = and_(v.host.is_(None), ~seen(older.c.host.is_(None)))
    return and_(v.id > last, or_(named, unnamed)), last


def _mark(conn: Connection, name: str) -> int:
    """The last violation id the review ``name`` saw (0 before its first review)."""
    found = conn.execute(
        select(ReviewMark.last_violation).where(ReviewMark.name == name)
    ).scalar_one_or_none()
    return int(found or 0)


def _ts(value: float | None) -> str | None:
    return None if value is None else format_ts(value)


def _day(value: int) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d")


def _split(value: str | None) -> list[str]:
    return value.split(",") if value else []


_Rows = Callable[[list[tuple[Any, ...]]], tuple[tuple[str, ...], list[dict[str, Value]]]]
_FacetParts = tuple[
    Summary,
    list[tuple[str, int, int]],
    list[tuple[str | None, int, int]],
    list[tuple[str, int]],
    list[Case],
]


def _listing(
    conn: Connection,
    query: Any,
    table: Any,
    where: list[ColumnElement[bool]],
    limit: int | None,
    make: Callable[[Any], dict[str, Value]],
) -> tuple[list[dict[str, Value]], int]:
    """The rows of a listing, at most ``limit``, and how many more there were."""
    if limit is not None:
        query = query.limit(limit + 1)
    rows = [make(rec) for rec in conn.execute(query)]
    if limit is None or len(rows) <= limit:
        return rows, 0
    total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    return rows[:limit], int(total) - limit


class _Facets:
    """Accumulates what every format may show beside the rows."""

    def __init__(self) -> None:
        self.days: dict[int, list[int]] = {}
        self.countries: dict[str | None, list[int]] = {}
        self.rules: dict[str, int] = {}
        self.verdicts: dict[str, int] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.cases: dict[tuple[str, str], dict[str, Any]] = {}
        self.machines: set[str] = set()
        self.hosts: set[str | None] = set()

    def add_counts(
        self,
        day: int,
        verdict: str,
        kind: str,
        country: str | None,
        rule: str | None,
        count: int,
        first: float,
        last: float,
    ) -> None:
        count = int(count)
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)
        if kind == "dns":
            self.days.setdefault(int(day), [0, 0])
            return
        bad = count if verdict == "violation" else 0
        slot = self.days.setdefault(int(day), [0, 0])
        slot[0] += count
        slot[1] += bad
        place = self.countries.setdefault(country, [0, 0])
        place[0] += count
        place[1] += bad
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + count
        if bad:
            name = rule or "(none)"
            self.rules[name] = self.rules.get(name, 0) + bad

    def add_name(self, host: str | None, machine: str, *, dns: bool) -> None:
        self.machines.add(machine)
        if not dns and host is not None:
            self.hosts.add(host)

    def add_case(
        self,
        rule: str | None,
        host: str | None,
        verdict: str,
        count: int,
        reason: str | None,
        provider: str | None,
        country: str | None,
        first: float,
        last: float,
    ) -> None:
        slot = self.cases.setdefault(
            (rule or "(none)", host or "(no name)"),
            {
                "verdict": verdict,
                "count": 0,
                "best": 0,
                "violations": 0,
                "reason": reason,
                "provider": provider,
                "country": country,
                "first": first,
                "last": last,
            },
        )
        if not slot["count"] or (_WORST.get(verdict, 0), count, last) > (
            _WORST.get(slot["verdict"], 0),
            slot["best"],
            slot["last"],
        ):
            # The case shows the worst verdict's facts (the most connections among equals),
            # whatever order the database returns its groups in.
            slot.update(
                verdict=verdict, reason=reason, provider=provider, country=country, best=count
            )
        slot["count"] += int(count)
        if verdict == "violation":
            slot["violations"] += int(count)
        slot["first"] = min(slot["first"], first)
        slot["last"] = max(slot["last"], last)

    def result(
        self, violations: int
    ) -> tuple[
        Summary,
        list[tuple[str, int, int]],
        list[tuple[str | None, int, int]],
        list[tuple[str, int]],
        list[Case],
    ]:
        summary = Summary(
            connections=sum(self.verdicts.values()),
            by_verdict=dict(sorted(self.verdicts.items(), key=lambda kv: -_WORST.get(kv[0], 0))),
            violations=violations,
            destinations=len(self.hosts),
            machines=sorted(self.machines),
            first_seen=_ts(self.first),
            last_seen=_ts(self.last),
        )
        timeline: list[tuple[str, int, int]] = []
        if self.days:
            first_day, last_day = min(self.days), max(self.days)
            for d in range(first_day, last_day + DAY, DAY):
                n, bad = self.days.get(d, (0, 0))
                timeline.append((_day(d), n, bad))
        countries = sorted(
            ((c, n, bad) for c, (n, bad) in self.countries.items()),
            key=lambda t: (-t[1], t[0] or "~"),
        )
        top_rules = sorted(self.rules.items(), key=lambda t: (-t[1], t[0]))
        cases = [
            Case(
                rule=rule,
                host=host,
                verdict=s["verdict"],
                count=s["count"],
                violations=s["violations"],
                reason=s["reason"],
                provider=s["provider"],
                endpoint_country=s["country"],
                first_seen=format_ts(s["first"]),
                last_seen=format_ts(s["last"]),
            )
            for (rule, host), s in self.cases.items()
        ]
        cases.sort(key=lambda c: (-_WORST.get(c.verdict, 0), c.rule, c.host))
        return summary, timeline, countries, top_rules, cases


class ReportQuery:
    """Builds reports from one store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def build(
        self,
        filters: Filters,
        *,
        by: str | None = None,
        limit: int | None = None,
        now: float | None = None,
        advance_mark: bool = True,
        with_cases: bool = True,
        title: str = "egresswatch report",
    ) -> Report:
        """Run the queries for one report. With ``new_since_last`` and ``advance_mark``, the
        review mark moves to the newest violation the report could see. ``with_cases=False``
        leaves ``Report.cases`` empty (one query fewer, for formats that do not show them)."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Every query of the report sees the same snapshot, as SQLite's do.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            # The newest violation first: the review mark may move only as far as what the
            # report read, never past one committed while it was reading.
            max_id = int(conn.execute(select(func.max(ViolationRecord.id))).scalar() or 0)
            sel = _Selection(conn, filters)
            new_clause: ColumnElement[bool] | None = None
            if filters.new_since_last:
                new_clause, _ = _new_since_last(conn, sel)
                new_clause = and_(new_clause, ViolationRecord.id <= max_id)
            violations_only = filters.new_since_last
            if violations_only:
                kind = ReportKind.GROUPED if by else ReportKind.VIOLATIONS
            elif by:
                kind = ReportKind.GROUPED
            elif filters.verdicts and set(filters.verdicts) == {"violation"}:
                kind = ReportKind.VIOLATIONS
            else:
                kind = ReportKind.CONNECTIONS
            vwhere = _violation_where(sel) + ([new_clause] if new_clause is not None else [])
            truncated = 0
            if kind is ReportKind.GROUPED and violations_only:
                assert by is not None
                columns, rows = self._grouped_violations(conn, vwhere, by)
            elif kind is ReportKind.GROUPED:
                assert by is not None
                grouped, rows_of = self._grouped(sel, by)
            elif kind is ReportKind.VIOLATIONS:
                columns, rows, truncated = self._violations(conn, vwhere, limit)
            else:
                columns, rows, truncated = self._connections(conn, sel, limit)
            extra = [grouped] if kind is ReportKind.GROUPED and not violations_only else []
            results, facet_parts = self._facets(
                conn, sel, vwhere, violations_only, with_cases, extra
            )
            if extra:
                columns, rows = rows_of(results[0])
            summary, timeline, countries, top_rules, cases = facet_parts
        if filters.new_since_last and advance_mark:
            self._advance(filters.mark, now, max_id)
        return Report(
            title=title,
            generated=format_ts(now),
            source=describe(self.engine.url),
            filters=dict(filters.shown),
            kind=kind,
            by=by,
            columns=columns,
            rows=rows,
            summary=summary,
            timeline=timeline,
            countries=countries,
            top_rules=top_rules,
            cases=cases,
            truncated=truncated,
        )

    # -- rows ----------------------------------------------------------------------------------

    @staticmethod
    def _grouped(sel: _Selection, by: str) -> tuple[Any, _Rows]:
        """The statement of a grouped report, and what turns its result into rows."""
        column = "endpoint_country" if by == "country" else by
        # Distinct names per day would need the per-machine rollups; a day's row counts only.
        with_hosts = by not in ("host", "day")
        needed = list(dict.fromkeys(["verdict", "kind", column, *(["host"] if with_hosts else [])]))
        src = _count_source(sel, needed)
        key = src.c[column]
        conns = src.c.kind != "dns"
        per_verdict = [
            func.sum(case((and_(conns, src.c.verdict == v), src.c["count"]), else_=0)).label(v)
            for v in VERDICTS
        ]
        extra = [func.count(distinct(src.c.host)).label("hosts")] if with_hosts else []
        connections = func.sum(case((conns, src.c["count"]), else_=0))
        query = (
            select(
                key.label("key"),
                connections.label("connections"),
                func.sum(case((conns, 0), else_=src.c["count"])).label("dns"),
                *per_verdict,
                *extra,
                func.min(src.c.first_seen).label("first_seen"),
                func.max(src.c.last_seen).label("last_seen"),
            )
            .group_by(key)
            .order_by(connections.desc(), func.sum(src.c["count"]).desc(), key)
        )
        columns = (
            by,
            "connections",
            "dns",
            *VERDICTS,
            *(("hosts",) if with_hosts else ()),
            "first_seen",
            "last_seen",
        )
        names = [c.name for c in query.selected_columns]

        def rows_of(
            result: list[tuple[Any, ...]],
        ) -> tuple[tuple[str, ...], list[dict[str, Value]]]:
            rows: list[dict[str, Value]] = []
            for values in result:
                m = dict(zip(names, values, strict=True))
                row: dict[str, Value] = {by: _day(m["key"]) if by == "day" else m["key"]}
                row["connections"] = int(m["connections"])
                row["dns"] = int(m["dns"])
                for v in VERDICTS:
                    row[v] = int(m[v])
                if with_hosts:
                    row["hosts"] = int(m["hosts"])
                row["first_seen"] = _ts(m["first_seen"])
                row["last_seen"] = _ts(m["last_seen"])
                rows.append(row)
            if by == "day":
                rows.sort(key=lambda r: str(r["day"]))
            return columns, rows

        return query, rows_of

    def _grouped_violations(
        self, conn: Connection, where: list[ColumnElement[bool]], by: str
    ) -> tuple[tuple[str, ...], list[dict[str, Value]]]:
        v = ViolationRecord
        if by == "day":
            key: Any = v.ts
        else:
            key = getattr(v, "endpoint_country" if by == "country" else by)
        if by == "day":
            # Day of a float timestamp, the same on SQLite and PostgreSQL: done in Python.
            counts: dict[str, list[float]] = {}
            for (ts,) in conn.execute(select(v.ts).where(*where)):
                slot = counts.setdefault(_day(int(ts // DAY) * DAY), [0, ts, ts])
                slot[0] += 1
                slot[1] = min(slot[1], ts)
                slot[2] = max(slot[2], ts)
            rows: list[dict[str, Value]] = [
                {"day": d, "violations": int(c), "first_seen": _ts(f), "last_seen": _ts(last)}
                for d, (c, f, last) in sorted(counts.items())
            ]
            return ("day", "violations", "first_seen", "last_seen"), rows
        query = (
            select(key, func.count(), func.min(v.ts), func.max(v.ts))
            .where(*where)
            .group_by(key)
            .order_by(func.count().desc(), key)
        )
        rows = [
            {by: k, "violations": int(n), "first_seen": _ts(f), "last_seen": _ts(last)}
            for k, n, f, last in conn.execute(query)
        ]
        return (by, "violations", "first_seen", "last_seen"), rows

    def _violations(
        self, conn: Connection, where: list[ColumnElement[bool]], limit: int | None
    ) -> tuple[tuple[str, ...], list[dict[str, Value]], int]:
        query = (
            select(ViolationRecord.__table__)
            .where(*where)
            .order_by(ViolationRecord.ts.desc(), ViolationRecord.id.desc())
        )
        rows, truncated = _listing(conn, query, ViolationRecord, where, limit, _violation_row)
        return VIOLATION_COLUMNS, rows, truncated

    def _connections(
        self, conn: Connection, sel: _Selection, limit: int | None
    ) -> tuple[tuple[str, ...], list[dict[str, Value]], int]:
        o = ObservationAggregate
        where = sel.where(o)
        f = sel.filters
        if f.since is not None:
            where.append(o.hour >= int(f.since // HOUR) * HOUR)
        if f.until is not None:
            where.append(o.hour < f.until)
        query = select(o.__table__).where(*where).order_by(o.hour.desc(), o.last_seen.desc())
        rows, truncated = _listing(conn, query, o, where, limit, _connection_row)
        return CONNECTION_COLUMNS, rows, truncated

    # -- what every format may show beside the rows ------------------------------------------

    def _facets(
        self,
        conn: Connection,
        sel: _Selection,
        vwhere: list[ColumnElement[bool]],
        violations_only: bool,
        with_cases: bool,
        extra: list[Any],
    ) -> tuple[list[list[tuple[Any, ...]]], _FacetParts]:
        """Summary, timeline, countries, top rules and (``with_cases``) cases, with the
        results of the ``extra`` statements: one query for the per-day counts, one for
        machines, names and cases (or one pass over the violations)."""
        count_violations = select(func.count()).select_from(ViolationRecord).where(*vwhere)
        facets = _Facets()
        if violations_only:
            v = ViolationRecord
            listed = select(
                v.ts, v.rule, v.host, v.verdict, v.machine, v.endpoint_country, v.provider, v.reason
            ).where(*vwhere)
            results = self._fetch(conn, [*extra, count_violations, listed])
            for ts, rule, host, verdict, machine, country, provider, reason in results[-1]:
                facets.add_counts(day_of(ts), verdict, "tls", country, rule, 1, ts, ts)
                facets.add_name(host, machine, dns=False)
                if with_cases:
                    facets.add_case(rule, host, verdict, 1, reason, provider, country, ts, ts)
            return results[: len(extra)], facets.result(int(results[-2][0][0]))
        keys = ["day", "verdict", "kind", "endpoint_country", "rule"]
        src = _count_source(sel, keys)
        per_day = select(
            *(src.c[k] for k in keys),
            func.sum(src.c["count"]),
            func.min(src.c.first_seen),
            func.max(src.c.last_seen),
        ).group_by(*(src.c[k] for k in keys))
        # Machines, names and cases from one pass: grouped by machine too, summed here.
        src = _count_source(
            sel,
            [
                "rule",
                "host",
                "verdict",
                "machine",
                "reason",
                "provider",
                "endpoint_country",
                "kind",
            ],
        )
        is_dns = src.c.kind == "dns"
        by_case = select(
            src.c.rule,
            src.c.host,
            src.c.verdict,
            func.sum(src.c["count"]),
            func.max(src.c.reason),
            func.max(src.c.provider),
            func.max(src.c.endpoint_country),
            func.min(src.c.first_seen),
            func.max(src.c.last_seen),
            src.c.machine,
            is_dns,
        ).group_by(src.c.rule, src.c.host, src.c.verdict, src.c.machine, is_dns)
        results = self._fetch(conn, [*extra, count_violations, per_day, by_case])
        mine = results[len(extra) :]
        for counts in mine[1]:
            facets.add_counts(*counts)
        for *case_row, machine, dns in mine[2]:
            facets.add_name(case_row[1], machine, dns=bool(dns))
            if with_cases and not dns:
                facets.add_case(*case_row)
        return results[: len(extra)], facets.result(int(mine[0][0][0]))

    @staticmethod
    def _fetch(conn: Connection, statements: list[Any]) -> list[list[tuple[Any, ...]]]:
        """Run independent read-only statements, in one transaction (one snapshot)."""
        return [[tuple(r) for r in conn.execute(stmt)] for stmt in statements]

    def _advance(self, name: str, now: float, last_violation: int) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(ReviewMark.name).where(ReviewMark.name == name)
            ).scalar_one_or_none()
            if exists is None:
                conn.execute(
                    ReviewMark.__table__.insert().values(  # type: ignore[attr-defined]
                        name=name, ts=now, last_violation=last_violation
                    )
                )
            else:
                conn.execute(
                    ReviewMark.__table__.update()  # type: ignore[attr-defined]
                    .where(ReviewMark.name == name)
                    .values(ts=now, last_violation=last_violation)
                )


def _violation_row(rec: Any) -> dict[str, Value]:
    return {
        "ts": format_ts(rec.ts),
        "machine": rec.machine,
        "kind": rec.kind,
        "transport": rec.transport,
        "src": rec.src,
        "dst": rec.dst,
        "sport": rec.sport,
        "dport": rec.dport,
        "sni": rec.sni,
        "alpn": [str(a) for a in rec.alpn or []],
        "ech": bool(rec.ech),
        "host": rec.host,
        "provider": rec.provider,
        "role": rec.role,
        "region": rec.region,
        "inference": _split(rec.inference),
        "endpoint_country": rec.endpoint_country,
        "asn": rec.asn,
        "as_org": rec.as_org,
        "anycast": bool(rec.anycast),
        "verdict": rec.verdict,
        "rule": rec.rule,
        "reason": rec.reason,
        "pid": rec.pid,
        "process": rec.process,
    }


def _connection_row(rec: Any) -> dict[str, Value]:
    return {
        "ts": format_ts(rec.last_seen),
        "first_seen": format_ts(rec.first_seen),
        "last_seen": format_ts(rec.last_seen),
        "count": rec.count,
        "machine": rec.machine,
        "kind": rec.kind,
        "transport": rec.transport,
        "src": rec.src,
        "dst": rec.dst,
        "dport": rec.dport,
        "host": rec.host,
        "qtype": rec.qtype,
        "provider": rec.provider,
        "role": rec.role,
        "region": rec.region,
        "inference": _split(rec.inference),
        "endpoint_country": rec.endpoint_country,
        "asn": rec.asn,
        "as_org": rec.as_org,
        "anycast": bool(rec.anycast),
        "ech": bool(rec.ech),
        "verdict": rec.verdict,
        "rule": rec.rule,
        "reason": rec.reason,
        "process": rec.process,
    }
