"""Retention: --keep and the size bound drop whole weeks from every table (retention.py)."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from egresswatch.store import open_engine
from egresswatch.store.models import (
    DailyRollup,
    ObservationAggregate,
    ViolationRecord,
    WeeklyRollup,
)
from egresswatch.store.retention import parse_duration, parse_size, prune, store_size

from .model import BASE, DAY, HOUR, Rec, check_rollups, write_all

# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90d", 90 * DAY),
        ("12h", 12 * HOUR),
        ("2w", 14 * DAY),
        ("30m", 1800),
        ("45s", 45),
        ("7", 7 * DAY),  # a bare number means days
        ("1.5d", 1.5 * DAY),
        ("12H", 12 * HOUR),
        (" 3 d ", 3 * DAY),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "5y", "1d2h", "ninety days", "1e3d", "1,5d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1G", 1024**3),
        ("500MB", 500 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1048576", 1048576),
        ("500m", 500 * 1024**2),
        ("10k", 10240),
        ("1T", 1024**4),
        ("1.5G", int(1.5 * 1024**3)),
        (" 2 GB ", 2 * 1024**3),
    ],
)
def test_parse_size_accepts(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "1Q", "1GG", "one gig", "1 G B", "2PB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


# -- pruning -----------------------------------------------------------------------------------

WEEK = 7 * DAY


def week_start(ts: float) -> int:
    """Monday 00:00 UTC of the week holding ``ts`` (computed apart from egresswatch.keys)."""
    d = datetime.fromtimestamp(ts, UTC)
    monday = (d - timedelta(days=d.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(monday.timestamp())


def test_base_is_a_monday() -> None:
    assert datetime.fromtimestamp(BASE, UTC).weekday() == 0
    assert week_start(BASE + 6 * DAY + 86399) == BASE


def _days(n_days: int, per_day: int, *, start: int = BASE) -> list[Rec]:
    """``per_day`` observations on each of ``n_days`` days, one in ten a violation, spread over
    the hours (the first and last second of the day included)."""
    recs = []
    for d in range(n_days):
        for i in range(per_day):
            offset = [0, DAY - 1][i] if i < 2 else (i * 997) % DAY
            recs.append(
                Rec(
                    ts=start + d * DAY + offset + 0.5 * (i >= 2),
                    machine="m",
                    host=f"h{i % 50}.example",
                    dst=f"203.0.113.{i % 200}",
                    verdict="violation" if i % 10 == 0 else "allow",
                    rule="r" if i % 10 == 0 else None,
                    reason=("because " * 8) if i % 10 == 0 else None,
                )
            )
    return recs


def _per_day(engine: Engine) -> dict[str, dict[int, int]]:
    """Counts per day in each table (the weekly rollup per week)."""
    o, d, w, v = ObservationAggregate, DailyRollup, WeeklyRollup, ViolationRecord
    with engine.connect() as conn:
        hourly: dict[int, int] = {}
        for hour, count in conn.execute(select(o.hour, o.count)):
            hourly[hour - hour % DAY] = hourly.get(hour - hour % DAY, 0) + count
        daily = conn.execute(select(d.day, func.sum(d.count)).group_by(d.day)).all()
        weekly = conn.execute(select(w.week, func.sum(w.count)).group_by(w.week)).all()
        viol: dict[int, int] = {}
        for (ts,) in conn.execute(select(v.ts)):
            day = int(ts // DAY) * DAY
            viol[day] = viol.get(day, 0) + 1
    return {
        "hourly": hourly,
        "daily": {int(k): int(n) for k, n in daily},
        "weekly": {int(k): int(n) for k, n in weekly},
        "viol": viol,
    }


def _expected(recs: list[Rec], keep_from: int) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {"hourly": {}, "daily": {}, "weekly": {}, "viol": {}}
    for r in recs:
        if r.day < keep_from:
            continue
        out["hourly"][r.day] = out["hourly"].get(r.day, 0) + 1
        out["daily"][r.day] = out["daily"].get(r.day, 0) + 1
        week = week_start(r.ts)
        out["weekly"][week] = out["weekly"].get(week, 0) + 1
        if r.v == "violation":
            out["viol"][r.day] = out["viol"].get(r.day, 0) + 1
    return out


@pytest.mark.parametrize(
    ("keep", "now"),
    [
        (3 * DAY, BASE + 30 * DAY + 12 * HOUR),  # a Wednesday: back to the Monday before
        (14 * DAY, BASE + 21 * DAY),  # now a Monday midnight: exact
        (36 * HOUR, BASE + 22 * DAY + 6 * HOUR),
        (10 * DAY, BASE + 20 * DAY + DAY - 1),  # a Sunday's last second
        (90 * DAY, BASE + 30 * DAY),  # nothing old enough
    ],
)
def test_keep_drops_whole_weeks_from_every_table(tmp_path: Path, keep: float, now: float) -> None:
    """'--keep rounds down to the start of a week and so keeps at least what it says (and at
    most six days more)'; hourly rows, both rollups and violations go together."""
    first_kept = week_start(now - keep)
    assert now - keep - WEEK < first_kept <= now - keep
    engine = open_engine(tmp_path / "k.db")
    try:
        recs = _days(35, 12)
        write_all(engine, recs)
        result = prune(engine, keep_seconds=keep, max_bytes=None, now=now)
        assert _per_day(engine) == _expected(recs, first_kept)
        check_rollups(engine)
        gone = [r for r in recs if r.day < first_kept]
        assert result.violations == sum(1 for r in gone if r.v == "violation")
        assert result.removed == bool(gone)
        if gone:
            assert result.before_day == first_kept
            assert result.observations > 0 and result.daily > 0
        else:
            assert result.before_day is None
            assert (result.observations, result.daily, result.violations) == (0, 0, 0)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_keep_and_size_on_postgres(pg_url: str) -> None:
    engine = open_engine(pg_url)
    try:
        recs = _days(28, 8)
        write_all(engine, recs)
        now = BASE + 27 * DAY + HOUR
        prune(engine, keep_seconds=10 * DAY, max_bytes=None, now=now)
        assert _per_day(engine) == _expected(recs, week_start(now - 10 * DAY))
        # A size bound of one byte keeps the newest week and nothing else.
        result = prune(engine, keep_seconds=None, max_bytes=1, now=now)
        assert result.before_day == BASE + 21 * DAY
        assert _per_day(engine) == _expected(recs, BASE + 21 * DAY)
        check_rollups(engine)
        check_rollups(engine)
    finally:
        engine.dispose()


def _size(engine: Engine) -> int:
    with engine.connect() as conn:
        return store_size(conn)


def test_size_bound_brings_the_store_under_it(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    try:
        recs = _days(42, 120)
        write_all(engine, recs)
        before = _size(engine)
        assert before > 1_000_000
        bound = before // 2
        result = prune(engine, keep_seconds=None, max_bytes=bound, now=BASE + 42 * DAY)
        assert result.size_before == before
        assert result.size_after <= bound
        assert result.size_after == _size(engine)
        assert result.before_day is not None
        assert week_start(result.before_day) == result.before_day
        # Whole weeks went, oldest first; the rest is untouched.
        assert _per_day(engine) == _expected(recs, result.before_day)
        check_rollups(engine)
        assert BASE < result.before_day <= BASE + 35 * DAY
        # Already under the bound: nothing more goes.
        again = prune(engine, keep_seconds=None, max_bytes=bound, now=BASE + 42 * DAY)
        assert not again.removed
        assert again.before_day is None
    finally:
        engine.dispose()


def test_size_bound_never_deletes_the_newest_week(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    try:
        recs = _days(24, 30)  # three full weeks and three days
        write_all(engine, recs)
        result = prune(engine, keep_seconds=None, max_bytes=1, now=BASE + 24 * DAY)
        assert result.before_day == BASE + 21 * DAY
        assert _per_day(engine) == _expected(recs, BASE + 21 * DAY)
        # With one week left, a bound it cannot meet deletes nothing.
        result = prune(engine, keep_seconds=None, max_bytes=1, now=BASE + 24 * DAY)
        assert not result.removed
        assert _per_day(engine) == _expected(recs, BASE + 21 * DAY)
    finally:
        engine.dispose()


def test_keep_and_size_together(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    try:
        recs = _days(42, 60)
        write_all(engine, recs)
        now = BASE + 41 * DAY + HOUR
        # keep alone would keep five weeks; the bound asks for fewer.
        bound = _size(engine) // 3
        result = prune(engine, keep_seconds=30 * DAY, max_bytes=bound, now=now)
        assert result.before_day is not None
        assert result.before_day > week_start(now - 30 * DAY)
        assert result.size_after <= bound
        assert _per_day(engine) == _expected(recs, result.before_day)
    finally:
        engine.dispose()


def test_prune_gives_the_pages_back_to_the_file_system(tmp_path: Path) -> None:
    """retention.py: the size bound 'gives the free pages back to the file system (SQLite
    incremental_vacuum)'.

    Fails: ``conn.exec_driver_sql("PRAGMA incremental_vacuum")`` (retention.py, prune) steps
    the statement once through Python's sqlite3, which frees one page per step: after deleting
    half the store the free list still holds all but one of its pages and the file is as big
    as before. (Running the pragma to completion, e.g. ``executescript`` or
    ``incremental_vacuum(N)`` stepped until done, frees them all.)
    """
    path = tmp_path / "v.db"
    engine = open_engine(path)
    write_all(engine, _days(42, 120))
    engine.dispose()  # the last connection closing checkpoints the WAL into the file
    file_before = os.path.getsize(path)
    engine = open_engine(path)
    try:
        result = prune(engine, keep_seconds=14 * DAY, max_bytes=None, now=BASE + 42 * DAY)
        assert result.removed
    finally:
        engine.dispose()
    raw = sqlite3.connect(path)
    try:
        free = raw.execute("PRAGMA freelist_count").fetchone()[0]
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
    finally:
        raw.close()
    assert free <= 2, f"{free} of {pages} pages still on the free list"
    assert os.path.getsize(path) < 0.6 * file_before


def _counts(engine: Engine) -> Any:
    with engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(m)).scalar()
            for m in (ObservationAggregate, DailyRollup, WeeklyRollup, ViolationRecord)
        )


def test_prune_of_an_empty_store(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "e.db")
    try:
        result = prune(engine, keep_seconds=DAY, max_bytes=1, now=BASE)
        assert not result.removed
        assert result.before_day is None
        assert _counts(engine) == (0, 0, 0, 0)
    finally:
        engine.dispose()
