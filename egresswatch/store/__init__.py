"""The store: SQLite by default, PostgreSQL for a fleet, one schema (Alembic migrations).

- :mod:`.engine`: ``--db`` values to engines; creating, migrating or refusing a schema.
- :mod:`.models`: the tables (typed ORM).
- :mod:`.writer`: recording observations, aggregated, in short transactions.
- :mod:`.retention`: ``--keep`` and the size bound.
"""

from egresswatch.store.engine import database_url, describe, open_engine
from egresswatch.store.errors import StoreError, StoreVersionError
from egresswatch.store.writer import StoreWriter

__all__ = [
    "StoreError",
    "StoreVersionError",
    "StoreWriter",
    "database_url",
    "describe",
    "open_engine",
]
