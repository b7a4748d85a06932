"""Rollups (hourly, daily, weekly, total), daily facets, and review marks for ``--new-since-last``.

The rollups are filled from the hourly rows already in the database, so a store written by
the first schema reports the same numbers after the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from egresswatch.store.keys import DAILY_COLUMNS, DAY, FACET_COLUMNS, HOUR, WEEK, digest

WEEK_OFFSET = 3 * DAY

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BATCH = 5000


def _rollup_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("key", sa.LargeBinary(length=16), nullable=False),
        sa.Column("machine", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("endpoint_country", sa.String(length=8), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=255), nullable=True),
        sa.Column("process", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
    ]


def upgrade() -> None:
    hourly = op.create_table(
        "hourly",
        *_rollup_columns(),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hourly")),
        sa.UniqueConstraint("hour", "key", name=op.f("uq_hourly_hour_key")),
    )
    daily = op.create_table(
        "daily",
        *_rollup_columns(),
        sa.Column("day", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daily")),
        sa.UniqueConstraint("day", "key", name=op.f("uq_daily_day_key")),
    )
    op.create_table(
        "weekly",
        *_rollup_columns(),
        sa.Column("week", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_weekly")),
        sa.UniqueConstraint("week", "key", name=op.f("uq_weekly_week_key")),
    )
    op.create_table(
        "totals",
        *_rollup_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_totals")),
        sa.UniqueConstraint("key", name=op.f("uq_totals_key")),
    )
    facets = op.create_table(
        "daily_facets",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("day", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("endpoint_country", sa.String(length=8), nullable=True),
        sa.Column("rule", sa.String(length=255), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daily_facets")),
        sa.UniqueConstraint("day", "key", name=op.f("uq_daily_facets_day_key")),
    )
    op.create_table(
        "review_marks",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("last_violation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_review_marks")),
    )
    _backfill(hourly, "hour", HOUR)
    _backfill(daily, "day", DAY)
    _backfill_facets(facets)
    # Weekly rows from the daily ones, totals from the weekly ones: the key is the same digest
    # in every rollup.
    columns = ", ".join(("key", *DAILY_COLUMNS))
    week = f"(day + {WEEK_OFFSET}) / {WEEK} * {WEEK} - {WEEK_OFFSET}"
    op.execute(
        f"INSERT INTO weekly (week, {columns}, reason, count, first_seen, last_seen) "  # noqa: S608 - constants only
        f"SELECT {week}, {columns}, max(reason), sum(count), min(first_seen), max(last_seen) "
        f"FROM daily GROUP BY {week}, {columns}"
    )
    op.execute(
        f"INSERT INTO totals ({columns}, reason, count, first_seen, last_seen) "  # noqa: S608 - constants only
        f"SELECT {columns}, max(reason), sum(count), min(first_seen), max(last_seen) "
        f"FROM weekly GROUP BY {columns}"
    )


def _backfill_facets(facets: sa.Table | None) -> None:
    assert facets is not None
    daily = sa.table(
        "daily",
        *(sa.column(c) for c in ("day", "count", "first_seen", "last_seen", *FACET_COLUMNS)),
    )
    keys = [daily.c[name] for name in FACET_COLUMNS]
    query = sa.select(
        daily.c.day,
        *keys,
        sa.func.sum(daily.c.count),
        sa.func.min(daily.c.first_seen),
        sa.func.max(daily.c.last_seen),
    ).group_by(daily.c.day, *keys)
    bind = op.get_bind()
    rows = []
    for day, *values, count, first, last in bind.execute(query):
        rows.append(
            {
                "day": day,
                "key": digest(values),
                **dict(zip(FACET_COLUMNS, values, strict=True)),
                "count": count,
                "first_seen": first,
                "last_seen": last,
            }
        )
        if len(rows) >= BATCH:
            bind.execute(facets.insert(), rows)
            rows = []
    if rows:
        bind.execute(facets.insert(), rows)


def _backfill(table: sa.Table | None, bucket: str, size: int) -> None:
    assert table is not None
    obs = sa.table(
        "observations",
        *(
            sa.column(name)
            for name in ("hour", "count", "first_seen", "last_seen", "reason", *DAILY_COLUMNS)
        ),
    )
    day = (obs.c.hour - obs.c.hour % size).label(bucket)
    keys = [obs.c[name] for name in DAILY_COLUMNS]
    query = sa.select(
        day,
        *keys,
        sa.func.max(obs.c.reason),
        sa.func.sum(obs.c.count),
        sa.func.min(obs.c.first_seen),
        sa.func.max(obs.c.last_seen),
    ).group_by(day, *keys)
    bind = op.get_bind()
    batch: list[dict[str, object]] = []
    for row in bind.execute(query):
        values = dict(zip(DAILY_COLUMNS, row[1 : 1 + len(DAILY_COLUMNS)], strict=True))
        reason, count, first, last = row[1 + len(DAILY_COLUMNS) :]
        batch.append(
            {
                bucket: row[0],
                "key": digest(list(values.values())),
                **values,
                "reason": reason,
                "count": count,
                "first_seen": first,
                "last_seen": last,
            }
        )
        if len(batch) >= BATCH:
            bind.execute(table.insert(), batch)
            batch = []
    if batch:
        bind.execute(table.insert(), batch)


def downgrade() -> None:
    op.drop_table("review_marks")
    op.drop_table("daily_facets")
    op.drop_table("totals")
    op.drop_table("weekly")
    op.drop_table("daily")
    op.drop_table("hourly")
