"""Opening a store: the URL, the engine and its pragmas, and the schema's version.

``open_store`` is the one way in. It turns a ``--db`` value into an engine (a bare path means
SQLite; ``postgresql://`` means PostgreSQL through psycopg 3), and brings the schema to the
version this egresswatch writes: a new database is created, an older one is migrated (Alembic,
under a lock so that two processes opening it at once do not both migrate), and one written by
a newer egresswatch is refused, untouched, with a message that says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from egresswatch.store.errors import StoreError, StoreVersionError

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_REVISIONS = ("0001", "0002", "0003")
"""Every schema revision, oldest first; the last is the one this version writes. Kept here so
that opening a current store does not load Alembic (a test checks it against the scripts)."""

# Pragmas for every SQLite connection: they last as long as the connection and write nothing
# to the file, so opening a database that is then refused leaves it as it was. With WAL (set
# once, in the file, by `migrate`) and synchronous=NORMAL a commit survives the process being
# killed (only a power cut can lose the last commits, never corrupt the file). busy_timeout
# waits out another writer's commit.
SQLITE_PRAGMAS = (
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA mmap_size=268435456",
    "PRAGMA journal_size_limit=67108864",
)
CACHE_KIB = 65536
"""SQLite's page cache per connection, for reports over a large store (the mmap serves reads
beyond it)."""
WRITER_CACHE_KIB = 16384
"""The page cache of the agent's and the collector's connections: they write recent hours and
read little; 64 MiB per connection would only be memory held for ever."""


def database_url(value: str | Path) -> URL:
    """The SQLAlchemy URL for a ``--db`` value: a URL as is, a bare path as SQLite.

    ``postgresql://`` (and ``postgres://``) select the psycopg 3 driver, the one installed.
    """
    raw = str(value)
    if "://" not in raw:
        return URL.create("sqlite", database=str(Path(raw).expanduser().absolute()))
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        msg = f"not a database URL: {raw!r} (use sqlite:///PATH, postgresql://..., or a path)"
        raise StoreError(msg) from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        msg = (
            f"unsupported database {url.get_backend_name()!r} in {raw!r}: use SQLite or PostgreSQL"
        )
        raise StoreError(msg)
    return url


def describe(url: URL) -> str:
    """The URL with any password hidden, for messages and report headers."""
    return url.render_as_string(hide_password=True)


def _sqlite_connect(cache_kib: int) -> Callable[[sqlite3.Connection, object], None]:
    def connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see
        # _sqlite_begin), so that DDL is transactional too: a migration cut short leaves the
        # old schema, not half of the new one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        finally:
            cursor.close()

    return connect


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def make_engine(url: URL, *, cache_kib: int = CACHE_KIB) -> Engine:
    """An engine for ``url`` with the store's settings (pragmas on SQLite; ``cache_kib``: the
    page cache of each connection)."""
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # Connections come from a pool and may serve another thread than the one that opened
        # them (the ci command writes from its capture thread); never two at once.
        engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect(cache_kib))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def schema_heads() -> tuple[str, ...]:
    """The head revisions of the migration scripts (loads Alembic)."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory(str(MIGRATIONS)).get_heads())


def schema_revisions() -> tuple[str, ...]:
    """Every revision of the migration scripts, oldest first (loads Alembic)."""
    from alembic.script import ScriptDirectory

    walk = ScriptDirectory(str(MIGRATIONS)).walk_revisions()
    return tuple(reversed([script.revision for script in walk]))


def current_revision(connection: Connection) -> str | None:
    """The database's schema revision, None when it has none."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    found = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return found[0] if found else None


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time: a lock file beside SQLite, an advisory lock on PG."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            yield
            return
        with open(url.database + ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(7429871)"))
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(7429871)"))
            conn.commit()


def migrate(engine: Engine, *, notify: Callable[[str], None] | None = None) -> str:
    """Bring ``engine``'s schema to this version's head; return the revision it had before.

    Raises :class:`StoreVersionError` for a database written by a newer egresswatch, and
    :class:`StoreError` for one that is not an egresswatch database at all.
    """
    head = SCHEMA_REVISIONS[-1]
    with engine.connect() as conn:
        # Reading only: nothing is written until the database is known to be ours.
        if current_revision(conn) == head:
            return head  # the usual case, without a lock or Alembic
    from alembic import command

    with _migration_lock(engine):
        with engine.connect() as conn:
            before = _check(conn, engine, head)
            if before == head:
                return before
            if conn.dialect.name == "sqlite":
                _sqlite_file_settings(conn, new=before is None)
        with engine.begin() as conn:
            before = _check(conn, engine, head)
            if before == head:
                return before
            if before is not None and notify is not None:
                notify(f"migrating {describe(engine.url)} from schema {before} to {head}")
            command.upgrade(_alembic_config(conn), "head")
            return before or "new"


def _check(conn: Connection, engine: Engine, head: str) -> str | None:
    """The database's revision, after refusing one that is foreign or newer."""
    before = current_revision(conn)
    if before is None:
        tables = set(inspect(conn).get_table_names())
        if tables:
            shown = ", ".join(sorted(tables)[:5])
            msg = (
                f"{describe(engine.url)} is not an egresswatch database (it has tables "
                f"{shown} but no schema revision); give --db a new file or database"
            )
            raise StoreError(msg)
    elif before not in SCHEMA_REVISIONS:
        msg = (
            f"{describe(engine.url)} was written by a newer egresswatch (schema "
            f"revision {before!r}; this version knows up to {head!r}): upgrade "
            "egresswatch to read it, or use another --db"
        )
        raise StoreVersionError(msg)
    return before


def _sqlite_file_settings(conn: Connection, *, new: bool) -> None:
    """The settings SQLite keeps in the file, made once, outside any transaction: WAL, and
    (before the first table exists) incremental auto-vacuum, so retention can give pages back."""
    conn.rollback()  # end the read transaction: these cannot change inside one
    raw: Any = conn.connection.driver_connection  # autocommit: see _sqlite_connect
    if new:
        raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = raw.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode not in ("wal", "memory"):  # an in-memory database keeps its journal in memory
        msg = f"cannot put {describe(conn.engine.url)} in WAL mode (it stays {mode!r})"
        raise StoreError(msg)


def open_engine(
    value: str | Path,
    *,
    notify: Callable[[str], None] | None = None,
    cache_kib: int = CACHE_KIB,
) -> Engine:
    """Open (creating or migrating as needed) the store at ``value`` and return its engine."""
    url = database_url(value)
    engine = make_engine(url, cache_kib=cache_kib)
    try:
        migrate(engine, notify=notify)
    except (StoreError, StoreVersionError):
        engine.dispose()
        raise
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        engine.dispose()
        msg = f"cannot open {describe(url)}: {_first_line(exc)}"
        raise StoreError(msg) from exc
    return engine


def sqlite_memory() -> int | None:
    """Bytes SQLite holds in this process now (``sqlite3_memory_used``: page caches, schema,
    statements), or ``None`` where the library cannot be asked (a statically linked one)."""
    lib = _sqlite_library()
    return None if lib is None else int(lib.sqlite3_memory_used())


@functools.cache
def _sqlite_library() -> Any:
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
    except (OSError, AttributeError):
        return None
    return lib


def _first_line(exc: BaseException) -> str:
    original: Any = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
