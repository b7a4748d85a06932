"""StoreWriter: aggregation per hour and per day, violations kept whole, upserts, hostile text."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from egresswatch.report.query import Filters, ReportQuery
from egresswatch.store import StoreError, StoreWriter, open_engine
from egresswatch.store.keys import DAILY_COLUMNS
from egresswatch.store.models import (
    DailyRollup,
    ObservationAggregate,
    ViolationRecord,
    WeeklyRollup,
)
from probes.observation import Observation

from . import model
from .model import BASE, DAY, HOUR, Rec

PROPERTY = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _rows(engine: Engine) -> tuple[list[Any], list[Any], list[Any]]:
    with engine.connect() as conn:
        return (
            conn.execute(select(ObservationAggregate)).all(),
            conn.execute(select(DailyRollup)).all(),
            conn.execute(select(ViolationRecord).order_by(ViolationRecord.id)).all(),
        )


def _weekly(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(WeeklyRollup)).all()


def check_store(engine: Engine, recs: list[Rec]) -> None:
    """Everything the store holds agrees with the observations written."""
    hourly, daily, violations = _rows(engine)
    weekly = _weekly(engine)
    assert sum(h.count for h in hourly) == len(recs)
    assert sum(d.count for d in daily) == len(recs)
    assert sum(w.count for w in weekly) == len(recs)

    # Per hour and descriptive columns.
    want_h: dict[tuple[Any, ...], list[Rec]] = defaultdict(list)
    for r in recs:
        want_h[
            (
                r.hour,
                r.machine,
                r.kind,
                r.wire_dst,
                r.host,
                r.provider,
                r.v,
                r.rule,
                r.process,
                r.country,
            )
        ].append(r)
    got_h = {}
    for h in hourly:
        k = (
            h.hour,
            h.machine,
            h.kind,
            h.dst,
            h.host,
            h.provider,
            h.verdict,
            h.rule,
            h.process,
            h.endpoint_country,
        )
        assert k not in got_h, f"two hourly rows for {k}"
        got_h[k] = (h.count, h.first_seen, h.last_seen)
    assert got_h == {
        k: (len(rs), min(r.ts for r in rs), max(r.ts for r in rs)) for k, rs in want_h.items()
    }

    # Per day and rollup columns.
    want_d: dict[tuple[Any, ...], list[Rec]] = defaultdict(list)
    for r in recs:
        values = {
            "machine": r.machine,
            "kind": r.kind,
            "host": r.host,
            "provider": r.provider,
            "role": r.role,
            "endpoint_country": r.country,
            "verdict": r.v,
            "rule": r.rule,
            "process": r.process,
        }
        want_d[(r.day, *(values[c] for c in DAILY_COLUMNS))].append(r)
    got_d = {}
    for d in daily:
        k = (d.day, *(getattr(d, c) for c in DAILY_COLUMNS))
        assert k not in got_d, f"two daily rows for {k}"
        got_d[k] = (d.count, d.first_seen, d.last_seen)
    assert got_d == {
        k: (len(rs), min(r.ts for r in rs), max(r.ts for r in rs)) for k, rs in want_d.items()
    }

    # Weekly, totals and daily facets: the same sums per their periods and columns.
    model.check_rollups(engine, len(recs))

    # Violations, one record each, with the whole observation.
    bad = [r for r in recs if r.v == "violation"]
    assert len(violations) == len(bad)
    got_v = Counter((v.ts, v.machine, v.host, v.rule, v.dst, v.process) for v in violations)
    assert got_v == Counter((r.ts, r.machine, r.host, r.rule, r.wire_dst, r.process) for r in bad)
    for v in violations:
        detail = v.detail if isinstance(v.detail, dict) else json.loads(v.detail)
        assert detail["verdict"] == "violation"
        assert detail["host"] == v.host
        assert detail["dst"] == v.dst
        assert detail["kind"] == v.kind


@PROPERTY
@given(recs=model.recs(max_size=60), data=st.data())
def test_writer_property_counts_and_spans(recs: list[Rec], data: st.DataObject) -> None:
    flush_after = data.draw(st.sets(st.integers(0, max(len(recs) - 1, 0)), max_size=5))
    engine = open_engine("sqlite://")
    try:
        writers = model.write_all(engine, recs, flush_after=flush_after)
        check_store(engine, recs)
        assert sum(w.stats.observations for w in writers.values()) == len(recs)
        assert sum(w.stats.violations for w in writers.values()) == sum(
            1 for r in recs if r.v == "violation"
        )
    finally:
        engine.dispose()


def test_flushes_in_several_transactions_merge_counts(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    recs = [Rec(ts=BASE + 100 + i, machine="m", verdict="allow") for i in range(10)]
    writer = StoreWriter(engine, machine="m", clock=lambda: 0.0)
    # Written out of time order, across five transactions.
    for chunk in (recs[5:7], recs[0:2], recs[9:], recs[2:5], recs[7:9]):
        for r in chunk:
            writer.write(r.obs())
        writer.flush()
    assert writer.stats.commits == 5
    hourly, daily, _ = _rows(engine)
    assert [(h.count, h.first_seen, h.last_seen) for h in hourly] == [(10, BASE + 100, BASE + 109)]
    assert [(d.count, d.first_seen, d.last_seen) for d in daily] == [(10, BASE + 100, BASE + 109)]
    # A second writer (another process, later) merges into the same rows too.
    model.write_all(engine, [Rec(ts=BASE + 50, machine="m", verdict="allow")])
    hourly, daily, _ = _rows(engine)
    assert [(h.count, h.first_seen, h.last_seen) for h in hourly] == [(11, BASE + 50, BASE + 109)]
    assert [(d.count, d.first_seen, d.last_seen) for d in daily] == [(11, BASE + 50, BASE + 109)]
    weekly = _weekly(engine)
    assert [(w.count, w.first_seen, w.last_seen) for w in weekly] == [(11, BASE + 50, BASE + 109)]
    engine.dispose()


def test_violations_are_kept_individually_with_detail(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    recs = [
        Rec(
            ts=BASE + 5 + i * 0.25,
            machine="m",
            verdict="violation",
            rule="no-cn",
            reason="deepseek runs inference in CN",
            host="api.deepseek.com",
            provider="deepseek",
            country="CN",
            process="node",
            pid=4242 + i,
            alpn=("h2", "http/1.1"),
        )
        for i in range(3)
    ]
    model.write_all(engine, recs)
    hourly, _, violations = _rows(engine)
    assert [h.count for h in hourly] == [3]  # one aggregate...
    assert len(violations) == 3  # ...and every violation on its own
    for rec, v in zip(recs, violations, strict=True):
        assert (v.ts, v.pid, v.process, v.rule, v.host, v.sni) == (
            rec.ts,
            rec.pid,
            "node",
            "no-cn",
            "api.deepseek.com",
            "api.deepseek.com",
        )
        assert v.alpn == ["h2", "http/1.1"]
        assert v.inference == "US"
        assert v.detail == json.loads(json.dumps(rec.obs().to_dict()))
    engine.dispose()


def test_writer_flushes_on_time_on_violation_and_on_size(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    now = [0.0]
    writer = StoreWriter(
        engine,
        machine="m",
        flush_seconds=2.0,
        violation_seconds=0.5,
        max_pending=3,
        clock=lambda: now[0],
    )
    writer.write(Rec(ts=BASE, machine="m").obs())
    assert writer.stats.commits == 0
    now[0] = 1.0
    writer.tick()
    assert writer.stats.commits == 0
    now[0] = 2.0
    writer.tick()
    assert writer.stats.commits == 1
    # A violation waits at most violation_seconds.
    writer.write(Rec(ts=BASE + 1, machine="m", verdict="violation", rule="r").obs())
    assert writer.stats.commits == 1
    now[0] = 2.6
    writer.tick()
    assert (writer.stats.commits, writer.stats.violations) == (2, 1)
    # max_pending distinct rows flush at once.
    for i in range(3):
        writer.write(Rec(ts=BASE + i * HOUR, machine="m", host=f"h{i}.example").obs())
    assert writer.stats.commits == 3
    writer.close()
    hourly, _, _ = _rows(engine)
    assert sum(h.count for h in hourly) == 5
    engine.dispose()


def test_daily_reason_is_the_latest_recorded(tmp_path: Path) -> None:
    """DailyRollup.reason: 'The latest reason recorded for the row'.

    Fails when both reasons arrive in one flush: the rollup takes the reason of the first
    hourly slot of the day (writer.py, flush: ``_Pending(..., values[_REASON])`` is set once
    and never updated), while across two flushes the upsert does take the latest.
    """
    engine = open_engine(tmp_path / "s.db")
    model.write_all(
        engine,
        [
            Rec(ts=BASE + 10, machine="m", verdict="violation", rule="r", reason="old wording"),
            Rec(ts=BASE + 20, machine="m", verdict="violation", rule="r", reason="new wording"),
        ],
    )
    _, daily, _ = _rows(engine)
    assert [d.reason for d in daily] == ["new wording"]
    assert [w.reason for w in _weekly(engine)] == ["new wording"]
    engine.dispose()


# -- hostile text ------------------------------------------------------------------------------

SURROGATES = b"\xff\xfeapi.\xc3(evil.example".decode("utf-8", "surrogateescape")
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x1b[31mapi.evil.example\u202e"


def _hostile_recs() -> list[Rec]:
    names = [
        "api\x00.evil.example",
        SURROGATES,
        "a" * 10_240,
        ESCAPES,
        "x" * 70_000 + ".example",
    ]
    out = []
    for i, name in enumerate(names):
        out.append(
            Rec(
                ts=BASE + i,
                machine="m",
                host=name,
                verdict="violation",
                rule=f"rule\x00{SURROGATES}",
                reason=f"because {name}",
                process=["bash\x00x", SURROGATES, ESCAPES, "p" * 1000, "node"][i],
                pid=i,
                alpn=("h2\x00", SURROGATES),
                extra={"as_org": ["Evil\x00 AS", "o" * 400, ESCAPES, SURROGATES, None][i]},
            )
        )
    out.append(Rec(ts=BASE + 9, machine="m", kind="dns", host=ESCAPES, verdict="allow"))
    return out


def _refused(write: Callable[[], object]) -> str | None:
    """The first line of the StoreError a write raised (kept short: its SQL is huge)."""
    try:
        write()
    except StoreError as exc:
        return str(exc).splitlines()[0][:300]
    return None


def _clean(value: object, limit: int | None) -> None:
    if value is None:
        return
    assert isinstance(value, str)
    assert "\x00" not in value
    value.encode("utf-8")  # no lone surrogates
    if limit is not None:
        assert len(value) <= limit, f"{len(value)} characters > {limit}"


def _check_hostile(engine: Engine, n: int) -> None:
    hourly, daily, violations = _rows(engine)
    assert sum(h.count for h in hourly) == n
    assert sum(d.count for d in daily) == n
    assert len(violations) == n - 1
    for row in [*hourly, *daily, *violations]:
        _clean(row.host, 4096)
        _clean(row.machine, 255)
        _clean(row.rule, 255)
        _clean(row.process, 255)
        _clean(row.reason, None)
    for row in [*hourly, *violations]:
        _clean(row.as_org, 255)
    for v in violations:
        _clean(v.sni, 4096)
        for a in v.alpn:
            _clean(a, 255)
        detail = v.detail if isinstance(v.detail, dict) else json.loads(v.detail)
        for value in detail.values():
            for s in value if isinstance(value, list) else [value]:
                if isinstance(s, str):
                    _clean(s, 4096)
    # The report query reads them back, one group per (cleaned) name.
    report = ReportQuery(engine).build(Filters(), by="host", now=BASE + DAY)
    assert sum(r["connections"] + r["dns"] for r in report.rows) == n
    assert "api\\x00.evil.example" in {r["host"] for r in report.rows}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_hostile_text_is_stored_clean(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "h.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_engine(url)
    try:
        recs = _hostile_recs()
        refused = _refused(lambda: model.write_all(engine, recs))
        if refused:
            pytest.fail(f"the writer refused hostile text: {refused}", pytrace=False)
        _check_hostile(engine, len(recs))
        # Hostile machine names are cleaned too.
        for machine in ("\x1b[31mm\x00" + SURROGATES, "m" * 300):
            writer = StoreWriter(engine, machine=machine, clock=lambda: 0.0)
            writer.write(Rec(ts=BASE, machine="ignored").obs())
            writer.close()
        with engine.connect() as conn:
            machines = conn.execute(select(ObservationAggregate.machine).distinct()).scalars()
            for m in machines:
                _clean(m, 255)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_text_caps_hold_after_escaping(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """clean_text cuts to the limit *before* escaping NUL (1 -> 4 characters) and lone
    surrogates (1 -> 6), so the result can be 4 to 6 times the cap.

    Fails: on SQLite a host of 5000 NULs is stored as 16381 characters (cap 4096) and a
    process name of 300 NULs as 1017 (cap 255); on PostgreSQL the flush itself fails with
    "value too long for type character varying(255)" (writer.py, clean_text), so one hostile
    process name makes the writer lose every pending row.
    """
    url = str(tmp_path / "h.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_engine(url)
    try:
        recs = [
            Rec(
                ts=BASE,
                machine="m",
                host="\x00" * 5000,
                verdict="violation",
                rule="r",
                process="\x00" * 300,
            ),
            Rec(
                ts=BASE + 1,
                machine="m",
                host="\udcff" * 5000,
                verdict="allow",
                process="\udcfe" * 300,
                rule="\x00" * 255,
            ),
        ]

        def write() -> None:
            model.write_all(engine, recs)
            writer = StoreWriter(engine, machine="\x00" * 300, clock=lambda: 0.0)
            writer.write(Rec(ts=BASE, machine="ignored").obs())
            writer.close()

        refused = _refused(write)
        if refused:
            pytest.fail(f"the writer refused hostile text: {refused}", pytrace=False)
        _, _, violations = _rows(engine)
        assert len(violations) == 1
        hourly, daily, _ = _rows(engine)
        for row in [*hourly, *daily]:
            _clean(row.host, 4096)
            _clean(row.process, 255)
            _clean(row.rule, 255)
            _clean(row.machine, 255)
    finally:
        engine.dispose()


def test_dns_observation_host_is_the_question(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    obs = Observation(
        ts=BASE,
        kind="dns",
        transport="udp",
        src="10.0.0.2",
        dst="10.0.0.1",
        sport=5353,
        dport=53,
        qname="api.openai.com",
        qtype="AAAA",
    )
    writer = StoreWriter(engine, machine="m", clock=lambda: 0.0)
    writer.write(obs)  # not enriched: no host in extra, no verdict
    writer.close()
    hourly, daily, _ = _rows(engine)
    assert [(h.host, h.qtype, h.verdict, h.kind) for h in hourly] == [
        ("api.openai.com", "AAAA", "audit", "dns")
    ]
    assert [(d.host, d.verdict) for d in daily] == [("api.openai.com", "audit")]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ViolationRecord)).scalar() == 0
    engine.dispose()


def test_a_flush_leaves_no_garbage_in_reference_cycles(tmp_path: Path) -> None:
    # Issue 5's soak: building the upserts on every flush (their ``excluded`` aliases copy every
    # column) left about 1,100 objects in reference cycles per flush, which only Python's rare
    # full collections free, so the agent's memory crept up for hours.
    import gc

    writer = StoreWriter(open_engine(tmp_path / "s.db"), machine="m")

    def flush(start: int) -> None:
        for i in range(start, start + 50):
            extra = {"host": f"n{i}.example", "verdict": "violation" if i % 5 else "pass"}
            writer.write(
                Observation(ts=BASE + i, kind="tls", transport="tcp", src="10.0.0.2",
                            dst=f"192.0.2.{i % 250}", sport=40000 + i, dport=443,
                            sni=f"n{i}.example", extra=extra)
            )  # fmt: skip
        writer.flush()

    flush(0)  # the first flush compiles and caches the statements
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for n in range(1, 11):
            flush(50 * n)
        garbage = gc.collect()
    finally:
        if was:
            gc.enable()
    assert garbage < 10 * 20, garbage
