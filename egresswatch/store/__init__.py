"""The store: SQLite by default, PostgreSQL for a fleet, one schema (Alembic migrations).

- :mod:`.engine`: ``--db`` values to engines; creating, migrating or refusing a schema.
- :mod:`.models`: the tables (typed ORM).
- :mod:`.writer`: recording observations, aggregated, in short transactions.
- :mod:`.retention`: ``--keep`` and the size bound.
"""

from typing import TYPE_CHECKING, Any

from egresswatch.store.engine import database_url, describe, open_engine
from egresswatch.store.errors import StoreError, StoreVersionError

if TYPE_CHECKING:
    from egresswatch.store.writer import StoreWriter


def __getattr__(name: str) -> Any:
    # The writer (and SQLAlchemy's dialect insert constructs) load only when something writes.
    if name == "StoreWriter":
        from egresswatch.store.writer import StoreWriter

        return StoreWriter
    raise AttributeError(name)


__all__ = [
    "StoreError",
    "StoreVersionError",
    "StoreWriter",
    "database_url",
    "describe",
    "open_engine",
]
