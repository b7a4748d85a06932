"""Alembic environment: run by :func:`egresswatch.store.engine.migrate` on an open connection.

The store upgrades itself when it opens, so there is no alembic.ini: the connection comes in
through ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from egresswatch.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
