"""Opening a store: URLs, SQLite pragmas, creating, reopening, refusing (engine.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from egresswatch.store import StoreError, StoreVersionError, database_url, open_engine
from egresswatch.store.engine import (
    SCHEMA_REVISIONS,
    current_revision,
    make_engine,
    migrate,
    schema_heads,
    schema_revisions,
)
from egresswatch.store.models import Base, ObservationAggregate

from .model import BASE, Rec, write_all

TABLES = {*Base.metadata.tables, "alembic_version"}


def _snapshot(path: Path) -> tuple[bytes, int]:
    """Bytes and mtime of the database file (what 'left unchanged' means)."""
    return path.read_bytes(), path.stat().st_mtime_ns


def assert_unchanged(path: Path, before: tuple[bytes, int]) -> None:
    data, mtime = _snapshot(path)
    changed = [i for i in range(min(len(data), len(before[0]))) if data[i] != before[0][i]]
    assert (len(data), changed[:16], mtime) == (len(before[0]), [], before[1]), (
        "the database file was modified (byte offsets changed: "
        f"{changed[:16]}; 18-19 = journal mode, 24-27 = change counter)"
    )


# -- URLs --------------------------------------------------------------------------------------


def test_database_url_forms(tmp_path: Path) -> None:
    bare = database_url(tmp_path / "x.db")
    assert bare.get_backend_name() == "sqlite"
    assert bare.database == str(tmp_path / "x.db")
    assert database_url("relative.db").database == str(Path("relative.db").absolute())
    assert database_url("sqlite:////tmp/y.db").database == "/tmp/y.db"
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(StoreError, match="unsupported database"):
        database_url("mysql://u@h/db")


def test_describe_hides_password() -> None:
    from egresswatch.store import describe

    shown = describe(database_url("postgresql://user:s3cret@db.example/fleet"))
    assert "s3cret" not in shown
    assert "db.example/fleet" in shown


# -- a new SQLite store ------------------------------------------------------------------------


def test_new_sqlite_store_has_head_schema_wal_and_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "new.db"
    notes: list[str] = []
    engine = open_engine(path, notify=notes.append)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES
            assert current_revision(conn) == schema_heads()[-1]
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
    finally:
        engine.dispose()
    assert notes == []  # creating is not migrating
    # Persistent settings are in the file itself, seen by any other client.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (schema_heads()[-1],)
        ]
    finally:
        raw.close()


def test_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    engine = open_engine(path)
    write_all(engine, [Rec(ts=BASE + 10, machine="m"), Rec(ts=BASE + 20, machine="m")])
    with engine.connect() as conn:
        schema = conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master").all()
        version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
    engine.dispose()

    notes: list[str] = []
    again = open_engine(path, notify=notes.append)
    try:
        assert notes == []
        assert migrate(again) == schema_heads()[-1]  # "the revision it had before"
        with again.connect() as conn:
            assert conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master").all() == schema
            assert conn.exec_driver_sql("PRAGMA schema_version").scalar() == version
            total = conn.execute(select(func.sum(ObservationAggregate.count))).scalar()
            assert total == 2
    finally:
        again.dispose()


def test_migrate_says_new_for_a_new_store() -> None:
    engine = make_engine(database_url("sqlite://"))
    try:
        assert migrate(engine) == "new"
        assert migrate(engine) == schema_heads()[-1]
    finally:
        engine.dispose()


def test_openers_at_once_all_succeed(tmp_path: Path) -> None:
    """engine.py: the schema is created 'under a lock so that two processes opening it at once
    do not both migrate'. Four openers of one new store at once (eight times): every one gets
    the store.

    Fails (in most rounds): ``migrate`` first checks the revision on a connection taken
    outside the lock (engine.py, ``migrate``: ``with engine.connect() as conn: if
    current_revision(conn) == head``). Connecting runs the connect pragmas, and
    ``PRAGMA auto_vacuum=INCREMENTAL`` / ``journal_mode=WAL`` write the file header; the
    migrating opener, which read the database in a deferred transaction before its first DDL,
    then gets SQLITE_BUSY at once (a stale snapshot is not retried): StoreError "database is
    locked". Taking the lock before any connection, or BEGIN IMMEDIATE for the migration,
    avoids it.
    """
    errors: list[str] = []
    for round_ in range(8):
        path = tmp_path / f"race{round_}.db"
        barrier = threading.Barrier(4)

        def opener(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                open_engine(path).dispose()
            except Exception as exc:
                errors.append(f"{path.name}: {exc}")

        threads = [threading.Thread(target=opener) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        raw = sqlite3.connect(path)
        try:
            assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
                (schema_heads()[-1],)
            ]
        finally:
            raw.close()
    assert errors == []


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_new_store_schema_is_the_models(backend: str, request: pytest.FixtureRequest) -> None:
    from .test_migration import schema_diff

    url = "sqlite://" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_engine(url)
    try:
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_known_revisions_are_the_scripts() -> None:
    assert schema_revisions() == SCHEMA_REVISIONS
    assert schema_heads() == (SCHEMA_REVISIONS[-1],)


# -- refusing ----------------------------------------------------------------------------------


def _newer(path: Path) -> None:
    """A store written by a newer egresswatch: its schema revision is unknown here."""
    engine = open_engine(path)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()


def test_newer_database_is_refused_with_exit_2_and_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    _newer(path)
    with pytest.raises(StoreVersionError) as info:
        open_engine(path)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    assert "newer egresswatch" in message
    assert "0099_future" in message
    assert str(path) in message
    # Still the newer revision: nothing was migrated or stamped.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0099_future",)
        ]
    finally:
        raw.close()


def test_newer_database_file_is_left_untouched(tmp_path: Path) -> None:
    """StoreVersionError: 'refused, left untouched'. Not one byte of the file may change.

    Fails: every SQLite connection runs ``PRAGMA auto_vacuum=INCREMENTAL``
    (engine.py, _sqlite_connect), which on an existing database is a write transaction (the
    header's change counter moves, and so does the mtime), before the version is checked.
    """
    path = tmp_path / "newer.db"
    _newer(path)
    before = _snapshot(path)
    with pytest.raises(StoreVersionError):
        open_engine(path)
    assert_unchanged(path, before)


def test_newer_database_in_rollback_journal_mode_is_left_untouched(tmp_path: Path) -> None:
    """A newer egresswatch may not use WAL; refusing it must not convert it either.

    Fails: ``PRAGMA journal_mode=WAL`` runs on connect, before the version check, and
    rewrites the file header (bytes 18-19) for good.
    """
    path = tmp_path / "newer-rollback.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    raw.execute("INSERT INTO alembic_version VALUES ('0099_future')")
    raw.execute("CREATE TABLE observations (id INTEGER PRIMARY KEY)")
    raw.commit()
    raw.close()
    before = _snapshot(path)
    with pytest.raises(StoreVersionError):
        open_engine(path)
    assert_unchanged(path, before)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        raw.close()


def _foreign(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE contacts (name TEXT, email TEXT)")
    raw.execute("INSERT INTO contacts VALUES ('a', 'a@example.com')")
    raw.commit()
    raw.close()


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other-app.db"
    _foreign(path)
    with pytest.raises(StoreError) as info:
        open_engine(path)
    assert not isinstance(info.value, StoreVersionError)
    message = str(info.value)
    assert "not an egresswatch database" in message
    assert "contacts" in message
    assert "\n" not in message
    raw = sqlite3.connect(path)
    try:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert names == {"contacts"}  # nothing was created in it
    finally:
        raw.close()


def test_foreign_sqlite_database_is_left_untouched(tmp_path: Path) -> None:
    """Someone else's database given to --db by mistake must come back as it was.

    Fails: the connect hook switches it to WAL (and writes its header) before the schema is
    looked at; the other application now finds its database in WAL mode.
    """
    path = tmp_path / "other-app.db"
    _foreign(path)
    before = _snapshot(path)
    with pytest.raises(StoreError):
        open_engine(path)
    assert_unchanged(path, before)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"these are my notes, not a database\n" * 20, id="text"),
        pytest.param(b"SQLite format 3\x00" + b"\xa5" * 4000, id="garbage-after-magic"),
    ],
)
def test_not_a_database_is_a_store_error_exit_3(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        open_engine(path)
    assert info.value.exit_code == 3
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_new_postgres_store_has_head_schema_and_reopens(pg_url: str) -> None:
    engine = open_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= TABLES
            assert current_revision(conn) == schema_heads()[-1]
    finally:
        engine.dispose()
    notes: list[str] = []
    again = open_engine(pg_url, notify=notes.append)
    try:
        assert notes == []
        assert migrate(again) == schema_heads()[-1]
    finally:
        again.dispose()


@pytest.mark.postgres
def test_newer_postgres_database_is_refused(pg_url: str) -> None:
    engine = open_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    with pytest.raises(StoreVersionError) as info:
        open_engine(pg_url)
    assert info.value.exit_code == 2
    engine = make_engine(database_url(pg_url))
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == "0099_future"
    finally:
        engine.dispose()


def test_the_page_cache_is_set_per_engine(tmp_path: Path) -> None:
    # Reports get a large page cache; the agent's writer a small one (memory held for ever).
    from egresswatch.store.engine import CACHE_KIB, WRITER_CACHE_KIB

    for kib in (CACHE_KIB, WRITER_CACHE_KIB):
        engine = open_engine(tmp_path / f"c{kib}.db", cache_kib=kib)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -kib
        engine.dispose()


def test_sqlite_memory_is_what_the_library_holds(tmp_path: Path) -> None:
    # The agent's status reports it (memory.sqlite): the soak tells SQLite's page caches from
    # the rest of its private memory.
    from egresswatch.store.engine import sqlite_memory

    before = sqlite_memory()
    assert before is not None
    engine = open_engine(tmp_path / "m.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE filler (x BLOB)")
        for _ in range(200):
            conn.exec_driver_sql("INSERT INTO filler VALUES (randomblob(4000))")
    during = sqlite_memory()
    assert during is not None and during > before
    engine.dispose()
