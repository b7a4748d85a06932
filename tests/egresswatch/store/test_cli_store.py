"""The store through the installed command: replay --db, report, db info, db prune."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from egresswatch.store import open_engine
from egresswatch.store.models import ObservationAggregate, ViolationRecord

from .model import DAY, Rec, write_all

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "demo" / "egresswatch-demo.pcapng"
GEO = REPO / "geo" / "sample"
POLICY = REPO / "examples" / "policies" / "eu-only-inference.toml"
HAVE_FORMATS = (REPO / "egresswatch" / "report" / "formats" / "__init__.py").exists()
needs_formats = pytest.mark.skipif(not HAVE_FORMATS, reason="report formats not written yet")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("egresswatch: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The demo capture replayed into a store, and the JSON Lines printed meanwhile."""
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    result = cli("replay", DEMO, "--geo-dir", GEO, "--policy", POLICY, "--db", db)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows
    return db, rows


def test_replay_db_stores_what_jsonl_shows(demo_store: tuple[Path, list[dict]]) -> None:
    db, rows = demo_store
    engine = open_engine(db)
    try:
        with engine.connect() as conn:
            violations = conn.execute(select(ViolationRecord)).all()
            hourly = conn.execute(select(ObservationAggregate)).all()
    finally:
        engine.dispose()
    bad = [r for r in rows if r.get("verdict") == "violation"]
    assert bad, "the demo has violations"
    assert len(violations) == len(bad)
    assert Counter((v.host, v.dst, v.rule) for v in violations) == Counter(
        (r["host"], r["dst"], r["rule"]) for r in bad
    )
    want = Counter((r["host"], r["dst"], r["verdict"]) for r in rows)
    got: Counter[tuple[str | None, str, str]] = Counter()
    for h in hourly:
        got[(h.host, h.dst, h.verdict)] += h.count
    assert got == want
    # The machine defaults to the capture's file name.
    assert {h.machine for h in hourly} == {DEMO.name}


@needs_formats
def test_report_jsonl_by_host_on_the_demo(demo_store: tuple[Path, list[dict]]) -> None:
    db, rows = demo_store
    result = cli("report", "--db", db, "--format", "jsonl", "--by", "host")
    assert result.returncode == 0, result.stderr
    got = {r["host"]: r for r in map(json.loads, result.stdout.splitlines())}
    conns = Counter(r["host"] for r in rows if r["kind"] != "dns")
    dns = Counter(r["host"] for r in rows if r["kind"] == "dns")
    bad = Counter(r["host"] for r in rows if r["kind"] != "dns" and r["verdict"] == "violation")
    for host in set(conns) | set(dns):
        assert (got[host]["connections"], got[host]["dns"], got[host]["violation"]) == (
            conns[host],
            dns[host],
            bad[host],
        ), host


@needs_formats
def test_report_violations_jsonl_on_the_demo(demo_store: tuple[Path, list[dict]]) -> None:
    db, rows = demo_store
    result = cli("report", "--db", db, "--format", "jsonl", "--verdict", "violation")
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    bad = [r for r in rows if r.get("verdict") == "violation"]
    assert sorted((r["ts"], r["host"], r["rule"]) for r in listed) == sorted(
        (r["ts"], r["host"], r["rule"]) for r in bad
    )


@needs_formats
def test_report_new_since_last_through_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    engine = open_engine(db)
    write_all(
        engine,
        [Rec(ts=time.time() - 60, machine="m", verdict="violation", rule="r", host="x.example")],
    )
    engine.dispose()
    args = ("report", "--db", db, "--format", "json", "--new-since-last")
    peek = cli(*args, "--peek")
    assert peek.returncode == 0, peek.stderr
    assert json.loads(peek.stdout)["summary"]["violations"] == 1
    first = cli(*args)
    assert json.loads(first.stdout)["summary"]["violations"] == 1
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["summary"]["violations"] == 0


# -- refusing ----------------------------------------------------------------------------------


@needs_formats
def test_report_on_a_newer_database_exits_2_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    open_engine(db).dispose()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE alembic_version SET version_num = '0099_future'")
    raw.commit()
    raw.close()
    result = cli("report", "--db", db, "--format", "jsonl")
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert "newer egresswatch" in line and "0099_future" in line
    assert result.stdout == ""


@needs_formats
def test_report_on_a_foreign_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE contacts (name TEXT)")
    raw.commit()
    raw.close()
    result = cli("report", "--db", db, "--format", "jsonl")
    assert result.returncode in (2, 3), result.stderr
    assert "not an egresswatch database" in one_error_line(result)


@needs_formats
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not a database at all\n" * 50, id="text"),
        pytest.param(b"SQLite format 3\x00" + b"\xa5" * 8000, id="corrupt"),
    ],
)
def test_report_on_a_corrupt_file_exits_3_with_one_line(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(content)
    result = cli("report", "--db", db, "--format", "jsonl")
    assert result.returncode == 3, result.stderr
    one_error_line(result)
    assert db.read_bytes() == content


@needs_formats
@pytest.mark.parametrize("form", ["path", "url"])
def test_report_on_a_missing_path_exits_3_and_creates_nothing(tmp_path: Path, form: str) -> None:
    db = tmp_path / "no-such-dir" / "missing.db"
    value = str(db) if form == "path" else f"sqlite:///{db}"
    result = cli("report", "--db", value, "--format", "jsonl")
    assert result.returncode == 3, result.stderr
    assert "no database" in one_error_line(result)
    assert not db.exists()
    assert not db.parent.exists()


def test_db_commands_on_a_missing_path(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    for args in (("db", "info"), ("db", "prune", "--keep", "30d")):
        result = cli(*args, "--db", db)
        assert result.returncode == 3, result.stderr
        one_error_line(result)
        assert not db.exists()


# -- db info and db prune ----------------------------------------------------------------------


def test_db_info(demo_store: tuple[Path, list[dict]]) -> None:
    db, rows = demo_store
    result = cli("db", "info", "--db", db)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "schema:" in out
    n_bad = sum(1 for r in rows if r.get("verdict") == "violation")
    assert any(line.split()[:2] == ["violations:", str(n_bad)] for line in out.splitlines())


def test_db_prune_keep(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    now = time.time()
    # One observation a day for 40 days back, every one a violation.
    recs = [
        Rec(ts=now - d * DAY, machine="m", verdict="violation", rule="r", host=f"d{d}.example")
        for d in range(40)
    ]
    engine = open_engine(db)
    write_all(engine, recs)
    engine.dispose()

    result = cli("db", "prune", "--db", db, "--keep", "20d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("removed ")
    engine = open_engine(db)
    try:
        with engine.connect() as conn:
            kept = conn.execute(select(ViolationRecord.ts)).scalars().all()
            hours = conn.execute(select(ObservationAggregate.hour)).scalars().all()
    finally:
        engine.dispose()
    # At least 20 days are kept (whole periods go, so maybe more), and the oldest went.
    assert all(now - ts <= 40 * DAY for ts in kept)
    assert {round((now - ts) / DAY) for ts in kept} >= set(range(21))
    assert min(kept) > now - 39.5 * DAY
    assert len(hours) == len(kept)


def test_db_prune_needs_an_option_and_valid_values(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    open_engine(db).dispose()
    assert cli("db", "prune", "--db", db).returncode == 2
    bad_keep = cli("db", "prune", "--db", db, "--keep", "ninety days")
    assert bad_keep.returncode == 2
    assert "--keep" in bad_keep.stderr
    bad_size = cli("db", "prune", "--db", db, "--max-db-size", "lots")
    assert bad_size.returncode == 2
    assert "--max-db-size" in bad_size.stderr
