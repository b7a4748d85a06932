"""The first schema: hourly observation aggregates and individual violations.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _described() -> list[sa.Column[object]]:
    """The descriptive columns both tables share (DESIGN.md names)."""
    return [
        sa.Column("machine", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("src", sa.String(length=64), nullable=False),
        sa.Column("dst", sa.String(length=64), nullable=False),
        sa.Column("dport", sa.Integer(), nullable=False),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("inference", sa.String(length=255), nullable=True),
        sa.Column("endpoint_country", sa.String(length=8), nullable=True),
        sa.Column("asn", sa.BigInteger(), nullable=True),
        sa.Column("as_org", sa.String(length=255), nullable=True),
        sa.Column("anycast", sa.Boolean(), nullable=False),
        sa.Column("ech", sa.Boolean(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("process", sa.String(length=255), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "observations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(length=16), nullable=False),
        sa.Column("qtype", sa.String(length=16), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        *_described(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
        sa.UniqueConstraint("hour", "key", name=op.f("uq_observations_hour_key")),
    )
    op.create_index(op.f("ix_observations_host_hour"), "observations", ["host", "hour"])
    op.create_index(op.f("ix_observations_verdict_hour"), "observations", ["verdict", "hour"])
    op.create_table(
        "violations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("sport", sa.Integer(), nullable=False),
        sa.Column("sni", sa.Text(), nullable=True),
        sa.Column("alpn", sa.JSON(), nullable=False),
        sa.Column("pid", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        *_described(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_violations")),
    )
    op.create_index(op.f("ix_violations_ts"), "violations", ["ts"])
    op.create_index(op.f("ix_violations_rule_host_ts"), "violations", ["rule", "host", "ts"])
    op.create_index(op.f("ix_violations_host_ts"), "violations", ["host", "ts"])


def downgrade() -> None:
    op.drop_table("violations")
    op.drop_table("observations")
