"""The fleet: the outbox (messages for the broker), the store's instance id, and the collector's
received messages.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    instance = op.create_table(
        "store_instance",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_instance")),
    )
    assert instance is not None
    op.bulk_insert(instance, [{"id": 1, "instance": uuid.uuid4().hex, "created": time.time()}])
    op.create_table(
        "outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("machine", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=512), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        # SQLite reuses the largest ROWID once it is deleted; AUTOINCREMENT never does, and a
        # reused id would be taken by the collector for a message it already has.
        sqlite_autoincrement=True,
    )
    op.create_table(
        "received",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("machine", sa.String(length=255), nullable=False),
        sa.Column("message", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_received")),
        sa.UniqueConstraint(
            "instance", "machine", "message", name=op.f("uq_received_instance_machine_message")
        ),
    )


def downgrade() -> None:
    op.drop_table("received")
    op.drop_table("outbox")
    op.drop_table("store_instance")
