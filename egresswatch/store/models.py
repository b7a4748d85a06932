"""The store's tables, as SQLAlchemy 2 typed ORM classes.

Three kinds of row, sized for a busy machine kept for months:

- :class:`ObservationAggregate` (``observations``): every observation, aggregated per machine,
  destination (name, address, port), process, verdict and UTC hour, with a count and the first
  and last time seen. A workstation that opens ten thousand connections an hour to the same
  API writes one row, not ten thousand.
- Rollups without the address, port and source (:class:`HourlyRollup`, :class:`DailyRollup`,
  :class:`WeeklyRollup`, :class:`TotalRollup`, and the fleet-wide :class:`DailyFacets`), so
  that a grouped report over months reads a few rows per key and period instead of one per
  destination and hour. Written in the same transaction as the hourly rows, so all agree.
- :class:`ViolationRecord` (``violations``): every violation individually, with everything
  needed to act on it (time, machine, process, addresses, ports, names, where, which rule, why,
  and the whole observation).
- :class:`ReviewMark` (``review_marks``): when a report last asked for what is new.

Times are seconds since the epoch (UTC): integers for the hour and day buckets, floats for
first and last seen. Aggregated rows are found by a 16-byte digest of their descriptive columns
(``key``), unique together with the bucket, so that the upsert works on SQLite and PostgreSQL
alike even where a column is NULL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# An autoincrementing 64-bit id that is SQLite's ROWID alias there (INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a fixed naming convention, so migrations name things stably."""

    metadata = MetaData(naming_convention=NAMING)


class _Described:
    """The descriptive columns shared by aggregated rows and violations (DESIGN.md names)."""

    machine: Mapped[str] = mapped_column(String(255))
    """The agent's machine name (``run``), or the capture's name (``replay``)."""
    kind: Mapped[str] = mapped_column(String(8))
    """``tls``, ``quic`` or ``dns``."""
    transport: Mapped[str] = mapped_column(String(8))
    """``tcp`` or ``udp``."""
    src: Mapped[str] = mapped_column(String(64))
    """Source address."""
    dst: Mapped[str] = mapped_column(String(64))
    """Destination address."""
    dport: Mapped[int] = mapped_column(Integer)
    """Destination port."""
    host: Mapped[str | None] = mapped_column(Text)
    """The destination name judged (SNI, else from DNS); the question name for ``dns``."""
    provider: Mapped[str | None] = mapped_column(String(64))
    """Register id of the provider, NULL when not an AI endpoint."""
    role: Mapped[str | None] = mapped_column(String(32))
    """The endpoint's role in the register."""
    region: Mapped[str | None] = mapped_column(String(64))
    """Cloud region code when known."""
    inference: Mapped[str | None] = mapped_column(String(255))
    """Where the register says inference runs, comma-separated ISO codes."""
    endpoint_country: Mapped[str | None] = mapped_column(String(8))
    """Where the destination address is."""
    asn: Mapped[int | None] = mapped_column(BigInteger)
    """Autonomous system of the destination address."""
    as_org: Mapped[str | None] = mapped_column(String(255))
    """Its organisation."""
    anycast: Mapped[bool] = mapped_column(default=False)
    """The address is in a known anycast range."""
    ech: Mapped[bool] = mapped_column(default=False)
    """The ClientHello carried an ECH extension (GREASE included)."""
    verdict: Mapped[str] = mapped_column(String(16))
    """``allow``, ``warn``, ``violation``, or ``audit`` when recorded without a policy."""
    rule: Mapped[str | None] = mapped_column(String(255))
    """The rule id or built-in name that decided."""
    reason: Mapped[str | None] = mapped_column(Text)
    """One sentence a person can read."""
    process: Mapped[str | None] = mapped_column(String(255))
    """Executable name of the local process, where it was attributed."""


class ObservationAggregate(_Described, Base):
    """Observations per machine, destination, process and verdict, per UTC hour."""

    __tablename__ = "observations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    hour: Mapped[int] = mapped_column(BigInteger)
    """Start of the UTC hour, seconds since the epoch."""
    key: Mapped[bytes] = mapped_column(LargeBinary(16))
    """Digest of the descriptive columns: the aggregation key within the hour."""
    qtype: Mapped[str | None] = mapped_column(String(16))
    """DNS question type (``dns``)."""
    count: Mapped[int] = mapped_column(BigInteger)
    """How many times it was seen in the hour."""
    first_seen: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch."""
    last_seen: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch."""

    __table_args__ = (
        UniqueConstraint("hour", "key"),
        Index(None, "host", "hour"),
        Index(None, "verdict", "hour"),
    )


class _Rollup:
    """The columns of a rollup row: the report's grouping keys (no address or port)."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[bytes] = mapped_column(LargeBinary(16))
    """Digest of the columns below (:data:`~egresswatch.store.keys.DAILY_COLUMNS`): the
    aggregation key within the period, the same in every rollup."""
    machine: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(8))
    host: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(32))
    endpoint_country: Mapped[str | None] = mapped_column(String(8))
    verdict: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String(255))
    process: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    """The latest reason recorded for the row (not part of the key)."""
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class HourlyRollup(_Rollup, Base):
    """Counts per UTC hour, without address, port or source: the edges of a report's time
    range (``--since 12h``) read these instead of the per-destination hourly rows."""

    __tablename__ = "hourly"

    hour: Mapped[int] = mapped_column(BigInteger)
    """Start of the UTC hour, seconds since the epoch."""

    __table_args__ = (UniqueConstraint("hour", "key"),)


class DailyRollup(_Rollup, Base):
    """Counts per UTC day."""

    __tablename__ = "daily"

    day: Mapped[int] = mapped_column(BigInteger)
    """Start of the UTC day, seconds since the epoch."""

    __table_args__ = (UniqueConstraint("day", "key"),)


class WeeklyRollup(_Rollup, Base):
    """Counts per week (Monday 00:00 UTC): what grouped reports over long spans read."""

    __tablename__ = "weekly"

    week: Mapped[int] = mapped_column(BigInteger)
    """Start of the week, seconds since the epoch."""

    __table_args__ = (UniqueConstraint("week", "key"),)


class TotalRollup(_Rollup, Base):
    """Counts over the whole store (what is kept): grouped reports with no time filter read
    one row per key. Rebuilt from the weekly rollups when retention deletes weeks."""

    __tablename__ = "totals"

    __table_args__ = (UniqueConstraint("key"),)


class DailyFacets(Base):
    """Counts per UTC day for the parts of a report beside its rows (the timeline, verdicts,
    countries, rules) and for ``--by day``: fleet-wide, without names, machines or processes,
    so a few hundred rows a day whatever the fleet's size."""

    __tablename__ = "daily_facets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    day: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[bytes] = mapped_column(LargeBinary(16))
    """Digest of :data:`~egresswatch.store.keys.FACET_COLUMNS`."""
    verdict: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    endpoint_country: Mapped[str | None] = mapped_column(String(8))
    rule: Mapped[str | None] = mapped_column(String(255))
    provider: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("day", "key"),)


class ViolationRecord(_Described, Base):
    """One violation, kept individually."""

    __tablename__ = "violations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch of the packet that completed the observation."""
    sport: Mapped[int] = mapped_column(Integer)
    """Source port."""
    sni: Mapped[str | None] = mapped_column(Text)
    """Server name from the ClientHello."""
    alpn: Mapped[list[str]] = mapped_column(JSON, default=list)
    """ALPN protocols offered."""
    pid: Mapped[int | None] = mapped_column(BigInteger)
    """Local process id, where attributed."""
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The whole observation as JSON Lines would carry it."""

    __table_args__ = (
        Index(None, "ts"),
        Index(None, "rule", "host", "ts"),
        Index(None, "host", "ts"),
    )


class ReviewMark(Base):
    """When ``report --new-since-last`` last ran under a name: the review's bookmark."""

    __tablename__ = "review_marks"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    ts: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch of the review."""
    last_violation: Mapped[int] = mapped_column(BigInteger, default=0)
    """The highest violation id the review saw: later ids are the ones it has not."""


class StoreInstance(Base):
    """The store's own random id, made once when the table is created (migration 0003): with
    the machine and an outbox id it names a published message, so that a store deleted and
    created again (whose outbox ids start over) never collides with what it sent before."""

    __tablename__ = "store_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    """Always 1: one row."""
    instance: Mapped[str] = mapped_column(String(64))
    """32 random hex digits."""
    created: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch."""


class OutboxMessage(Base):
    """A message for the fleet's broker, written in the same transaction as the rows it
    describes and deleted once the broker has acknowledged it (``egresswatch.fleet``)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    """Increasing, never reused (AUTOINCREMENT on SQLite), even after the rows are deleted."""
    created: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch."""
    machine: Mapped[str] = mapped_column(String(255))
    """The writer's machine name (also inside the payload's rows)."""
    topic: Mapped[str] = mapped_column(String(512))
    """The MQTT topic, ``egresswatch/<machine>/violations`` or ``.../observations``."""
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The message body (``type`` and ``violation`` or ``rows``), without the envelope."""

    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's own form


class ReceivedMessage(Base):
    """A fleet message already written (collector): inserted in the same transaction as its
    rows, so a message delivered twice is written once."""

    __tablename__ = "received"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance: Mapped[str] = mapped_column(String(64))
    """The sending store's instance id."""
    machine: Mapped[str] = mapped_column(String(255))
    """The sending machine."""
    message: Mapped[int] = mapped_column(BigInteger)
    """The outbox id in the sending store."""
    received: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch."""

    __table_args__ = (UniqueConstraint("instance", "machine", "message"),)
