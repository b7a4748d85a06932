"""ReportQuery against a brute-force model of what was written (egresswatch/report/query.py)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, select

from egresswatch.report.interface import ReportKind
from egresswatch.report.query import Filters, ReportQuery, parse_time
from egresswatch.store import open_engine
from egresswatch.store.models import ObservationAggregate, ViolationRecord
from probes.observation import format_ts

from . import model
from .model import BASE, DAY, HOUR, Rec

PROPERTY = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
NOW = BASE + 30 * DAY

HOST_FILTERS = (
    "api.openai.com",
    "*.openai.com",
    "**.openai.com",
    "api.*.com",
    "openai.com",
    "eu.api.mistral.ai",
    "**.ai",
    "nothing.example",
)
PROCESS_FILTERS = ("curl", "python3.*", "cursor-*", "node", "no-such-process")


@st.composite
def filters(draw: st.DrawFn) -> Filters:
    def some(values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(draw(st.sets(st.sampled_from(values), max_size=2)))

    return Filters(
        since=draw(model.time_bound()),
        until=draw(model.time_bound()),
        verdicts=some(model.VERDICTS),
        providers=some(tuple(p for p in model.PROVIDERS if p)),
        hosts=some(HOST_FILTERS) if draw(st.booleans()) else (),
        rules=some(tuple(r for r in model.RULES if r)),
        processes=some(PROCESS_FILTERS) if draw(st.booleans()) else (),
        machines=some(model.MACHINES),
    )


def _store(recs: list[Rec]) -> Engine:
    engine = open_engine("sqlite://")
    model.write_all(engine, recs)
    return engine


def check_report(engine: Engine, recs: list[Rec], f: Filters, by: str) -> None:
    report = ReportQuery(engine).build(f, by=by, now=NOW)
    assert report.kind is ReportKind.GROUPED
    seen = model.counted(recs, f)
    rows = {r[by]: r for r in report.rows}
    assert len(rows) == len(report.rows), "one row per key"
    assert rows == model.grouped(seen, by)
    for row in report.rows:
        assert tuple(row) == report.columns
    if by == "day":
        assert [r["day"] for r in report.rows] == sorted(rows)
    else:
        conns = [r["connections"] for r in report.rows]
        assert conns == sorted(conns, reverse=True)

    assert report.timeline == model.timeline(seen)
    assert report.countries == model.countries(seen)
    assert report.top_rules == model.top_rules(seen)
    assert model.report_cases(report) == model.cases(seen)

    s = report.summary
    conns_seen = [r for r in seen if r.kind != "dns"]
    assert s.connections == len(conns_seen)
    want = {v: sum(1 for r in conns_seen if r.v == v) for v in model.VERDICTS}
    assert s.by_verdict == {v: n for v, n in want.items() if n}
    if all(r.host is not None for r in conns_seen):  # else: test_destinations_are_names
        assert s.destinations == len({r.host for r in conns_seen})
    assert s.machines == sorted({r.machine for r in seen})
    assert s.first_seen == (format_ts(min(r.ts for r in seen)) if seen else None)
    assert s.last_seen == (format_ts(max(r.ts for r in seen)) if seen else None)
    assert s.violations == len(model.violation_records(recs, f))


@PROPERTY
@given(recs=model.recs(max_size=60), f=filters(), by=st.sampled_from(model.GROUP_KEYS))
def test_grouped_reports_equal_brute_force(recs: list[Rec], f: Filters, by: str) -> None:
    engine = _store(recs)
    try:
        check_report(engine, recs, f, by)
    finally:
        engine.dispose()


@PROPERTY
@given(
    recs=model.recs(max_size=60),
    since=model.time_bound(),
    until=model.time_bound(),
    by=st.sampled_from(model.GROUP_KEYS),
)
def test_time_edges_count_hour_buckets_from_floor_since_to_until(
    recs: list[Rec], since: float | None, until: float | None, by: str
) -> None:
    """Counts cover hourly buckets in [floor_hour(since), until): rollups for whole days,
    hourly rows for the part days at either edge."""
    engine = _store(recs)
    try:
        check_report(engine, recs, Filters(since=since, until=until), by)
    finally:
        engine.dispose()


def test_time_edges_examples() -> None:
    recs = [
        Rec(ts=BASE - 1, machine="m"),  # the day before
        Rec(ts=BASE, machine="m"),  # a day edge
        Rec(ts=BASE + HOUR - 0.001, machine="m"),
        Rec(ts=BASE + HOUR, machine="m"),
        Rec(ts=BASE + DAY - 1, machine="m"),
        Rec(ts=BASE + DAY, machine="m"),
        Rec(ts=BASE + 2 * DAY + 5 * HOUR + 30, machine="m"),
    ]
    engine = _store(recs)
    try:
        q = ReportQuery(engine)

        def total(since: float | None, until: float | None) -> int:
            report = q.build(Filters(since=since, until=until), by="machine", now=NOW)
            return sum(int(r["connections"]) for r in report.rows)  # type: ignore[call-overload]

        assert total(None, None) == 7
        assert total(BASE, None) == 6
        assert total(None, BASE) == 1
        assert total(BASE, BASE + DAY) == 4
        assert total(BASE + HOUR, BASE + DAY) == 2
        assert total(BASE + HOUR + 1, BASE + DAY) == 2  # the hour holding since counts
        assert total(BASE + 30, BASE + HOUR) == 2  # both in the hour at BASE
        assert total(BASE, BASE + HOUR + 1) == 3  # the hour starting before until counts
        assert total(BASE + DAY, BASE + 2 * DAY + 5 * HOUR) == 1
        assert total(BASE + DAY, BASE + 2 * DAY + 5 * HOUR + 1) == 2
        assert total(BASE + 3 * DAY, BASE) == 0
    finally:
        engine.dispose()


def test_until_just_after_an_hour_edge() -> None:
    """An hour bucket that starts before ``until`` counts, however little before.

    Fails: ``_count_source`` bounds the hourly rows with ``hour < _ceil(int(end), HOUR,
    hour_of)`` (query.py); ``int()`` drops the fraction, so for ``until`` = an hour edge +
    0.5 s the bucket starting at that edge is left out, while violation records in it (exact
    ``ts < until``) are listed. ``--until 12h`` computes a fractional time, so this is reached.
    """
    recs = [
        Rec(ts=BASE + 10, machine="m"),
        Rec(ts=BASE + HOUR, machine="m", verdict="violation", rule="r"),
        Rec(ts=BASE + DAY, machine="m"),
    ]
    engine = _store(recs)
    try:
        q = ReportQuery(engine)
        for until, n in ((BASE + HOUR + 0.5, 2), (BASE + DAY + 0.25, 3)):
            report = q.build(Filters(since=BASE, until=until), by="machine", now=NOW)
            assert report.summary.violations == 1
            assert [r["connections"] for r in report.rows] == [n], until
    finally:
        engine.dispose()


def test_summary_violations_without_filters() -> None:
    """Summary.violations is the number of violation records selected, also with no filter
    (a ``SELECT count(*)`` without FROM would say 1 whatever the store holds)."""
    engine = open_engine("sqlite://")
    try:
        assert ReportQuery(engine).build(Filters(), by="host", now=NOW).summary.violations == 0
        model.write_all(
            engine,
            [Rec(ts=BASE + i, machine="m", verdict="violation", rule="r") for i in range(3)],
        )
        assert ReportQuery(engine).build(Filters(), by="host", now=NOW).summary.violations == 3
    finally:
        engine.dispose()


def test_destinations_are_names() -> None:
    """Summary.destinations: 'Distinct destination names (host) among the connections'.

    Fails: ``_Facets.add_name`` adds ``None`` (a connection with no name: no SNI, nothing
    learned from DNS) to the set that ``_Facets.result`` counts (query.py,
    ``destinations=len(self.hosts)``), so one named and one unnamed connection make 2.
    """
    engine = _store(
        [
            Rec(ts=BASE, machine="m", host="api.openai.com"),
            Rec(ts=BASE + 1, machine="m", host=None),
            Rec(ts=BASE + 2, machine="m", host=None, kind="quic"),
        ]
    )
    try:
        for f in (Filters(), Filters(since=BASE, until=BASE + 1.5 * DAY)):
            report = ReportQuery(engine).build(f, by="host", now=NOW)
            assert report.summary.connections == 3
            assert report.summary.destinations == 1
    finally:
        engine.dispose()


def test_dns_violation_is_recorded() -> None:
    """A DNS observation can be judged a violation: it is kept as a violation record and
    counted in ``dns``, never in ``connections`` or the per-verdict columns."""
    engine = _store(
        [
            Rec(
                ts=BASE,
                machine="m",
                kind="dns",
                host="api.deepseek.com",
                verdict="violation",
                rule="no-cn",
                reason="r",
            ),
        ]
    )
    try:
        q = ReportQuery(engine)
        report = q.build(Filters(), by="host", now=NOW)
        assert [(r["host"], r["connections"], r["dns"], r["violation"]) for r in report.rows] == [
            ("api.deepseek.com", 0, 1, 0)
        ]
        assert report.summary.connections == 0
        assert report.summary.violations == 1
        listing = q.build(Filters(verdicts=("violation",)), now=NOW)
        assert [(r["kind"], r["host"]) for r in listing.rows] == [("dns", "api.deepseek.com")]
    finally:
        engine.dispose()


def test_dns_is_counted_apart_from_connections() -> None:
    recs = [
        Rec(ts=BASE + 1, machine="m", kind="dns", host="api.openai.com", verdict="allow"),
        Rec(ts=BASE + 2, machine="m", kind="dns", host="api.openai.com", verdict="allow"),
        Rec(
            ts=BASE + 3,
            machine="m",
            kind="tls",
            host="api.openai.com",
            verdict="allow",
            country="US",
        ),
        Rec(
            ts=BASE + 4,
            machine="m",
            kind="quic",
            host="api.openai.com",
            verdict="warn",
            country="US",
        ),
        Rec(
            ts=BASE + 5,
            machine="m",
            kind="dns",
            host="only-dns.example",
            verdict="allow",
            country="DE",
        ),
    ]
    engine = _store(recs)
    try:
        report = ReportQuery(engine).build(Filters(), by="host", now=NOW)
        rows = {r["host"]: r for r in report.rows}
        assert (rows["api.openai.com"]["connections"], rows["api.openai.com"]["dns"]) == (2, 2)
        assert (rows["api.openai.com"]["allow"], rows["api.openai.com"]["warn"]) == (1, 1)
        assert (rows["only-dns.example"]["connections"], rows["only-dns.example"]["dns"]) == (0, 1)
        assert rows["only-dns.example"]["allow"] == 0  # per-verdict columns are connections
        assert report.summary.connections == 2
        assert report.summary.by_verdict == {"allow": 1, "warn": 1}
        assert report.summary.destinations == 1
        assert report.countries == [("US", 2, 0)]
        assert [c.host for c in report.cases] == ["api.openai.com"]
        assert report.timeline == [(model.day_text(BASE), 2, 0)]
    finally:
        engine.dispose()


# -- filters -----------------------------------------------------------------------------------

GLOB_HOSTS = (
    "api.openai.com",
    "chat.openai.com",
    "a.b.openai.com",
    "openai.com",
    "api.openai.com.evil.example",
    "apiopenai.com",
    "eu.api.mistral.ai",
)


@pytest.mark.parametrize(
    ("glob", "selected"),
    [
        ("*.openai.com", {"api.openai.com", "chat.openai.com"}),
        ("**.openai.com", {"api.openai.com", "chat.openai.com", "a.b.openai.com"}),
        ("api.*.com", {"api.openai.com"}),
        ("api.**", {"api.openai.com", "api.openai.com.evil.example"}),
        ("*openai.com", {"apiopenai.com", "openai.com"}),
        ("**.ai", {"eu.api.mistral.ai"}),
        ("*.ai", set()),
        ("*.OpenAI.COM", {"api.openai.com", "chat.openai.com"}),
    ],
)
def test_host_globs(glob: str, selected: set[str]) -> None:
    engine = _store([Rec(ts=BASE + i, machine="m", host=h) for i, h in enumerate(GLOB_HOSTS)])
    try:
        report = ReportQuery(engine).build(Filters(hosts=(glob,)), by="host", now=NOW)
        assert {r["host"] for r in report.rows} == selected
        assert {h for h in GLOB_HOSTS if model.host_glob_match(h, glob)} == selected
    finally:
        engine.dispose()


def test_glob_filters_raise_no_warning() -> None:
    """Expanding globs must not warn (``select(distinct(column))`` makes SQLAlchemy 2.1 warn,
    and ``report --host '*.x'`` would print that on stderr)."""
    engine = _store([Rec(ts=BASE, machine="m", host="api.openai.com", process="curl")])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = ReportQuery(engine).build(
                Filters(hosts=("*.openai.com",), processes=("cu*",)), by="host", now=NOW
            )
        assert [r["host"] for r in report.rows] == ["api.openai.com"]
    finally:
        engine.dispose()


def test_exact_host_filter_is_case_insensitive() -> None:
    """Filters.hosts: 'POLICY.md host globs, case-insensitive'. A server name sent in mixed
    case is one destination: the store keeps ``host`` in lower case (the violation's ``sni``
    keeps what was sent), and any spelling of the name selects it."""
    engine = _store([Rec(ts=BASE, machine="m", host="API.Example.COM")])
    try:
        for wanted in ("api.example.com", "API.Example.COM", "*.EXAMPLE.com"):
            report = ReportQuery(engine).build(Filters(hosts=(wanted,)), by="host", now=NOW)
            assert [r["host"] for r in report.rows] == ["api.example.com"], wanted
    finally:
        engine.dispose()


def test_filters_each_alone() -> None:
    recs = model.random_recs(11, 300)
    engine = _store(recs)
    try:
        for f in (
            Filters(verdicts=("violation",)),
            Filters(verdicts=("allow", "audit")),
            Filters(providers=("openai",)),
            Filters(rules=("no-cn", "eu-only")),
            Filters(machines=("ci-runner",)),
            Filters(processes=("python3.*",)),
            Filters(processes=("curl",)),
            Filters(hosts=("**.openai.com",)),
            Filters(hosts=("nothing.example",)),
            Filters(providers=("openai",), verdicts=("warn",), machines=("laptop-1",)),
        ):
            for by in ("host", "verdict", "process"):
                check_report(engine, recs, f, by)
    finally:
        engine.dispose()


# -- listings ----------------------------------------------------------------------------------


def _viol(ts: float, host: str, rule: str = "no-cn", machine: str = "m") -> Rec:
    return Rec(
        ts=ts,
        machine=machine,
        verdict="violation",
        rule=rule,
        host=host,
        reason=f"{host} broke {rule}",
        provider="deepseek",
        country="CN",
        process="node",
        pid=7,
    )


def test_violation_listing_order_and_truncation() -> None:
    """Newest first (ties: the later record first); ``truncated`` counts what --limit left out;
    since/until are exact on violation records."""
    recs = [
        _viol(BASE + 10, "a.example"),
        _viol(BASE + 30, "b.example"),
        _viol(BASE + 20, "c.example"),
        _viol(BASE + 30, "d.example"),  # same ts as b, written later: listed first
        _viol(BASE + 5, "e.example"),
        Rec(ts=BASE + 40, machine="m", verdict="allow"),
    ]
    engine = open_engine("sqlite://")
    try:
        model.write_all(engine, recs[:2])
        model.write_all(engine, recs[2:])
        q = ReportQuery(engine)
        report = q.build(Filters(verdicts=("violation",)), now=NOW)
        assert report.kind is ReportKind.VIOLATIONS
        assert [r["host"] for r in report.rows] == [
            "d.example",
            "b.example",
            "c.example",
            "a.example",
            "e.example",
        ]
        assert report.truncated == 0
        first = report.rows[0]
        assert tuple(first) == report.columns
        assert first["ts"] == format_ts(BASE + 30)
        assert (first["rule"], first["pid"], first["inference"]) == ("no-cn", 7, ["US"])
        limited = q.build(Filters(verdicts=("violation",)), limit=2, now=NOW)
        assert [r["host"] for r in limited.rows] == ["d.example", "b.example"]
        assert limited.truncated == 3
        exact = q.build(Filters(verdicts=("violation",), since=BASE + 10, until=BASE + 30), now=NOW)
        assert [r["host"] for r in exact.rows] == ["c.example", "a.example"]
    finally:
        engine.dispose()


def test_connection_listing() -> None:
    """One row per hourly aggregate, newest hour first."""
    recs = [
        Rec(ts=BASE + 10, machine="m", host="a.example"),
        Rec(ts=BASE + 11, machine="m", host="a.example"),
        Rec(ts=BASE + HOUR + 5, machine="m", host="a.example"),
        Rec(ts=BASE + 2 * HOUR, machine="m", host="b.example", kind="dns"),
    ]
    engine = _store(recs)
    try:
        q = ReportQuery(engine)
        report = q.build(Filters(), now=NOW)
        assert report.kind is ReportKind.CONNECTIONS
        assert [(r["host"], r["count"], r["kind"]) for r in report.rows] == [
            ("b.example", 1, "dns"),
            ("a.example", 1, "tls"),
            ("a.example", 2, "tls"),
        ]
        assert report.rows[2]["first_seen"] == format_ts(BASE + 10)
        assert report.rows[2]["last_seen"] == format_ts(BASE + 11)
        limited = q.build(Filters(), limit=1, now=NOW)
        assert (len(limited.rows), limited.truncated) == (1, 2)
    finally:
        engine.dispose()


# -- --new-since-last --------------------------------------------------------------------------


def _review(engine: Engine, mark: str = "default", *, peek: bool = False) -> tuple[int, set]:
    """(violations, {(rule, host)}) a review sees, through a grouped report."""
    report = ReportQuery(engine).build(
        Filters(new_since_last=True, mark=mark), by="rule", now=NOW, advance_mark=not peek
    )
    assert report.kind is ReportKind.GROUPED
    assert sum(int(r["violations"]) for r in report.rows) == report.summary.violations  # type: ignore[call-overload]
    return report.summary.violations, {(c.rule, c.host) for c in report.cases}


def test_new_since_last_reviews() -> None:
    engine = open_engine("sqlite://")
    try:
        model.write_all(
            engine,
            [
                _viol(BASE + 1, "a.example", "r1"),
                _viol(BASE + 2, "b.example", "r1"),
                _viol(BASE + 3, "a.example", "r2"),
                Rec(ts=BASE + 4, machine="m", verdict="allow", host="z.example"),
            ],
        )
        # The first review sees every violation.
        assert _review(engine) == (
            3,
            {("r1", "a.example"), ("r1", "b.example"), ("r2", "a.example")},
        )
        assert _review(engine) == (0, set())

        model.write_all(
            engine,
            [
                _viol(BASE + 10, "a.example", "r1"),  # a pair seen before
                _viol(BASE + 11, "b.example", "r2"),  # new pair
                _viol(BASE + 12, "b.example", "r2"),  # the same new pair again
                Rec(ts=BASE + 13, machine="m", verdict="violation", rule="r1", host=None),
            ],
        )
        new = (3, {("r2", "b.example"), ("r1", "(no name)")})
        # Peeking shows what is new and leaves the mark: twice the same answer.
        assert _review(engine, peek=True) == new
        assert _review(engine, peek=True) == new
        assert _review(engine) == new
        assert _review(engine) == (0, set())

        # A pair with no host name is a pair like any other: not new the second time.
        model.write_all(
            engine,
            [
                Rec(ts=BASE + 20, machine="m", verdict="violation", rule="r1", host=None),
                _viol(BASE + 21, "b.example", "r1"),
            ],
        )
        assert _review(engine) == (0, set())

        # Another review name has its own mark: its first review sees everything.
        assert _review(engine, "security-team") == (
            9,
            {
                ("r1", "a.example"),
                ("r1", "b.example"),
                ("r2", "a.example"),
                ("r2", "b.example"),
                ("r1", "(no name)"),
            },
        )
        assert _review(engine, "security-team") == (0, set())
        model.write_all(engine, [_viol(BASE + 30, "c.example", "r3")])
        assert _review(engine, "security-team") == (1, {("r3", "c.example")})
        assert _review(engine) == (1, {("r3", "c.example")})
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_violation_committed_during_a_review_is_not_lost(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The mark must move only past violations the review could see.

    Fails on PostgreSQL: the report's queries run at READ COMMITTED, so ``max(id)`` (read last,
    query.py ``build``: ``max_id = conn.execute(select(func.max(ViolationRecord.id)))``)
    includes a violation committed after the rows were read; the mark moves past it, and no
    later review ever shows it. (On SQLite the whole report reads one snapshot.) Fix: read the
    report in one REPEATABLE READ transaction, or take max(id) first and bound the rows by it.
    """
    url = str(tmp_path / "r.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_engine(url)
    writer_engine = open_engine(url)
    injected: list[bool] = []

    def agent_commits(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Right after the review first read the violations table, the agent commits one more.
        if not injected and re.search(r"\bFROM violations\b", statement):
            injected.append(True)
            model.write_all(writer_engine, [_viol(BASE + 100, "late.example", "r9")])

    try:
        model.write_all(engine, [_viol(BASE + 1, "a.example", "r1")])
        event.listen(engine, "after_cursor_execute", agent_commits)
        try:
            first = ReportQuery(engine).build(Filters(new_since_last=True), by="rule", now=NOW)
        finally:
            event.remove(engine, "after_cursor_execute", agent_commits)
        assert injected
        assert [r["rule"] for r in first.rows] == ["r1"]
        with engine.connect() as conn:
            assert len(conn.execute(select(ViolationRecord.id)).all()) == 2
        # The next review shows the one the first could not.
        assert _review(engine) == (1, {("r9", "late.example")})
    finally:
        writer_engine.dispose()
        engine.dispose()


# -- kinds, parse_time -------------------------------------------------------------------------


def test_report_kind() -> None:
    engine = _store([Rec(ts=BASE, machine="m", verdict="violation", rule="r")])
    try:
        q = ReportQuery(engine)
        assert q.build(Filters(), by="host", now=NOW).kind is ReportKind.GROUPED
        grouped_new = q.build(Filters(new_since_last=True), by="day", now=NOW, advance_mark=False)
        assert grouped_new.kind is ReportKind.GROUPED
        assert grouped_new.rows == [
            {
                "day": model.day_text(BASE),
                "violations": 1,
                "first_seen": format_ts(BASE),
                "last_seen": format_ts(BASE),
            }
        ]
    finally:
        engine.dispose()


def test_parse_time() -> None:
    now = 1_800_000_000.0
    assert parse_time("7d", now) == now - 7 * DAY
    assert parse_time("12h", now) == now - 12 * HOUR
    assert parse_time("30m", now) == now - 1800
    assert parse_time("2W", now) == now - 14 * DAY
    assert parse_time("2026-11-01", now) == BASE - DAY
    assert parse_time("2026-11-02T09:00:00Z", now) == BASE + 9 * HOUR
    assert parse_time("2026-11-02T10:00:00+01:00", now) == BASE + 9 * HOUR
    for bad in ("yesterday", "", "7", "-3d", "2026-13-01"):
        with pytest.raises(ValueError, match="not a time"):
            parse_time(bad, now)


def test_every_hourly_row_is_reachable_by_connection_count() -> None:
    """The rollups and the hourly rows agree (sanity for the property tests above)."""
    recs = model.random_recs(5, 200)
    engine = _store(recs)
    try:
        with engine.connect() as conn:
            hourly = conn.execute(select(ObservationAggregate.count)).scalars().all()
        report = ReportQuery(engine).build(Filters(), by="machine", now=NOW)
        assert sum(hourly) == sum(
            int(r["connections"]) + int(r["dns"])
            for r in report.rows  # type: ignore[call-overload]
        )
    finally:
        engine.dispose()
