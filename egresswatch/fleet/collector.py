"""Collecting every host's messages into the fleet's database.

The collector subscribes to ``egresswatch/+/violations`` and ``egresswatch/+/observations``
with QoS 1 in a persistent session (a fixed client id, clean session off), so the broker keeps
what arrives while the collector is down. Each message is written in one transaction with its
``(instance, machine, id)`` in the ``received`` table: a message delivered twice (QoS 1 is at
least once; a publisher that restarts sends its unacknowledged tail again) finds its name there
and changes nothing. The broker's PUBACK for a message is sent only after that commit, so a
collector that stops between receiving and writing gets the message again.

Rows go through :func:`egresswatch.store.writer.write_batch`, the writer's own code: the fleet
database has the same hourly rows, rollups and violations as the hosts' stores, machine names
taken from the messages (never from the topic alone).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from egresswatch.fleet.broker import (
    OBSERVATIONS,
    VIOLATIONS,
    BadMessage,
    BrokerConfig,
    Envelope,
    decode,
    make_client,
    parse_broker_url,
    raise_if_cancelled,
    stay_connected,
)
from egresswatch.store.keys import AGGREGATE_COLUMNS
from egresswatch.store.models import ReceivedMessage, ViolationRecord
from egresswatch.store.writer import dialect_insert, hourly_from_rows, outbox_topic, write_batch

log = logging.getLogger(__name__)

TOPICS = (f"egresswatch/+/{VIOLATIONS}", f"egresswatch/+/{OBSERVATIONS}")
CLIENT_ID = "egresswatch-collector"
"""The default client id: the broker keeps this session's messages while it is away."""
MAX_ROWS = 10_000
"""Most hourly rows accepted in one message (the publisher sends at most 200)."""

_VIOLATION_COLUMNS = (
    *(c for c in AGGREGATE_COLUMNS if c != "qtype"),
    "ts",
    "sport",
    "sni",
    "alpn",
    "pid",
    "detail",
)


class Outcome(enum.Enum):
    """What became of one message."""

    WRITTEN = "written"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    EXPIRED = "expired"


@dataclass(slots=True)
class CollectorStats:
    """What a collector has done so far."""

    written: int = 0
    """Messages written."""
    duplicates: int = 0
    """Messages already written before (dropped)."""
    malformed: int = 0
    """Messages that were not valid (logged, dropped)."""
    expired: int = 0
    """Messages older than the collector keeps (dropped: retention would delete their rows,
    and no longer knows whether it wrote them before)."""
    connects: int = 0
    """Successful connections to the broker."""
    failures: int = 0
    """Connections that failed or broke, and database errors."""


class Collector:
    """Writes fleet messages into ``engine`` (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        config: BrokerConfig,
        *,
        client_id: str = CLIENT_ID,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        keep_seconds: float | None = None,
        batch: int = 100,
    ) -> None:
        self._batch = batch
        self.engine = engine
        self.keep_seconds = keep_seconds
        """Messages created longer ago than this are dropped (None: none is)."""
        self.config = config
        self.client_id = client_id
        self._postgres = engine.url.get_backend_name() == "postgresql"
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._timeout = timeout
        self.stats = CollectorStats()
        self.subscribed = asyncio.Event()
        """Set once the broker has acknowledged the first subscription. MQTT keeps messages
        only for subscriptions that exist: what hosts publish before a collector's first
        subscription (its persistent session) reaches no one."""

    # -- writing (synchronous: runs in a worker thread) ----------------------------------------

    def handle(self, payload: bytes, topic: str | None = None) -> Outcome:
        """Write one message's rows, unless it was written before or is not valid.

        With ``topic`` (the MQTT topic it came on), a message whose machine is not the one its
        topic names is not valid: a broker that lets each host publish only under its own
        topic then also keeps it from writing rows in another machine's name.

        Raises :class:`SQLAlchemyError` when the database fails: the message is then not
        acknowledged, and the broker delivers it again.
        """
        return self.handle_batch([(payload, topic)])[0]

    def handle_batch(self, messages: Sequence[tuple[bytes, str | None]]) -> list[Outcome]:
        """:meth:`handle` for several messages in one transaction (one commit, one upsert of
        their hourly rows added up): all are written or, if the database fails, none is."""
        outcomes: list[Outcome] = []
        todo: list[tuple[int, Envelope, list[Mapping[str, Any]], dict[str, Any] | None]] = []
        for i, (payload, topic) in enumerate(messages):
            outcome, parsed = self._check(payload, topic)
            outcomes.append(outcome)
            if parsed is not None:
                todo.append((i, *parsed))
        if todo:
            # A copy within the batch is a duplicate of the first: only the first is offered.
            seen: set[tuple[str, str, int]] = set()
            for i, env, _, _ in todo:
                name = (env.instance, env.machine, env.message_id)
                if name in seen:
                    outcomes[i] = Outcome.DUPLICATE
                seen.add(name)
            with self.engine.begin() as conn:
                offered = [env for i, env, _, _ in todo if outcomes[i] is Outcome.WRITTEN]
                new = self._first_time(conn, offered)
                rows: list[Mapping[str, Any]] = []
                violations: list[dict[str, Any]] = []
                for i, env, hourly, violation in todo:
                    if outcomes[i] is Outcome.DUPLICATE:
                        continue
                    if (env.instance, env.machine, env.message_id) not in new:
                        outcomes[i] = Outcome.DUPLICATE
                        continue
                    rows.extend(hourly)
                    if violation is not None:
                        violations.append(violation)
                if violations:
                    conn.execute(ViolationRecord.__table__.insert(), violations)  # type: ignore[attr-defined]
                if rows:
                    write_batch(conn, hourly_from_rows(rows), [], postgres=self._postgres)
        # Counted once committed: a batch that failed is delivered (and counted) again.
        for outcome in outcomes:
            if outcome is Outcome.WRITTEN:
                self.stats.written += 1
            elif outcome is Outcome.DUPLICATE:
                self.stats.duplicates += 1
            elif outcome is Outcome.MALFORMED:
                self.stats.malformed += 1
            else:
                self.stats.expired += 1
        return outcomes

    def _check(
        self, payload: bytes, topic: str | None
    ) -> tuple[Outcome, tuple[Envelope, list[Mapping[str, Any]], dict[str, Any] | None] | None]:
        """(WRITTEN, what to write) for a valid message; else its outcome and None."""
        try:
            env = decode(payload)
            hourly, violation = _rows(env)
            kind = VIOLATIONS if env.type == "violation" else OBSERVATIONS
            if topic is not None and topic != outbox_topic(env.machine, kind):
                msg = f"a message of {env.machine!r} on topic {topic!r}"
                raise BadMessage(msg)
        except (BadMessage, KeyError, TypeError, ValueError) as exc:
            log.warning("dropping a malformed message: %s", exc)
            return Outcome.MALFORMED, None
        if self.keep_seconds is not None and env.created < time.time() - self.keep_seconds:
            log.warning(
                "dropping message %d of %s (%s): older than the %.0f days kept",
                env.message_id,
                env.machine,
                env.instance,
                self.keep_seconds / 86400,
            )
            return Outcome.EXPIRED, None
        return Outcome.WRITTEN, (env, hourly, violation)

    def _first_time(self, conn: Connection, envs: Sequence[Envelope]) -> set[tuple[str, str, int]]:
        """Record ``envs`` as received; return the names of those not received before (one
        statement: INSERT ... ON CONFLICT DO NOTHING RETURNING the names inserted)."""
        table: Table = ReceivedMessage.__table__  # type: ignore[assignment]
        stmt = dialect_insert(table, postgres=self._postgres)
        now = time.time()
        stmt = stmt.values(
            [
                {
                    "instance": env.instance,
                    "machine": env.machine,
                    "message": env.message_id,
                    "received": now,
                }
                for env in envs
            ]
        ).on_conflict_do_nothing(index_elements=["instance", "machine", "message"])
        # RETURNING, not rowcount: a driver may report -1 ("unknown") for a row not inserted.
        stmt = stmt.returning(table.c.instance, table.c.machine, table.c.message)
        return {(str(i), str(m), int(n)) for i, m, n in conn.execute(stmt)}

    # -- the broker ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Collect until ``stop`` is set, reconnecting with backoff."""

        def connect() -> aiomqtt.Client:
            client = make_client(
                self.config,
                identifier=self.client_id,
                clean_session=False,
                timeout=self._timeout,
            )
            # Acknowledge after the commit, not on arrival (paho's default): set before the
            # connection, because the broker sends what it kept as soon as we are in.
            client._client.manual_ack_set(True)
            return client

        async def session(client: aiomqtt.Client) -> None:
            self.stats.connects += 1
            await client.subscribe([(t, 1) for t in TOPICS])
            self.subscribed.set()
            log.info("collecting from %s", self.config.describe())
            await _until_stopped(self._consume(client), stop)

        def failed(exc: BaseException, delay: float) -> None:
            self.stats.failures += 1
            log.warning("collector: %s; retrying in %.1f s", exc, delay)

        await stay_connected(
            stop,
            connect,
            session,
            errors=(aiomqtt.MqttError, OSError, SQLAlchemyError),
            on_error=failed,
            backoff=(self._min_backoff, self._max_backoff),
        )

    async def _consume(self, client: aiomqtt.Client) -> None:
        # What has arrived meanwhile is written in the same transaction (the broker sends up
        # to its in-flight limit, 20 by default, before our acknowledgements).
        async for first in client.messages:
            batch = [first]
            while len(client.messages) > 0 and len(batch) < self._batch:
                batch.append(await anext(client.messages))
            await asyncio.to_thread(
                self.handle_batch, [(_payload(m), m.topic.value) for m in batch]
            )
            for message in batch:
                if message.qos > 0:
                    client._client.ack(message.mid, message.qos)
            raise_if_cancelled()


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    return bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()


def _rows(env: Envelope) -> tuple[list[Mapping[str, Any]], dict[str, Any] | None]:
    """The hourly rows or the violation a message carries, checked against its machine."""
    if env.type == "violation":
        record = env.body.get("violation")
        if not isinstance(record, dict):
            msg = "a violation message without its record"
            raise BadMessage(msg)
        row = {name: record[name] for name in _VIOLATION_COLUMNS}
        if row["machine"] != env.machine:
            msg = f"violation of {row['machine']!r} sent as {env.machine!r}"
            raise BadMessage(msg)
        if not isinstance(row["ts"], int | float) or not isinstance(row["detail"], dict):
            msg = f"bad violation record {record!r:.80}"
            raise BadMessage(msg)
        return [], row
    rows = env.body.get("rows")
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        msg = "an observations message without a list of rows"
        raise BadMessage(msg)
    for row in rows:
        if not isinstance(row, dict) or row.get("machine") != env.machine:
            msg = f"a row not of {env.machine!r}: {row!r:.80}"
            raise BadMessage(msg)
    return rows, None


async def _until_stopped(work: Any, stop: asyncio.Event) -> None:
    """Run the coroutine ``work`` until it ends (its exception raised) or ``stop`` is set."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancelled(stopper)
        if not task.done():
            await _cancelled(task)
    if not task.cancelled():
        task.result()


async def _cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it, without swallowing a cancellation of our own."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def collect_forever(
    broker_url: str,
    engine: Engine,
    *,
    stop: asyncio.Event,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Collector:
    """Collect from ``broker_url`` into ``engine`` (the fleet database) until ``stop`` is set;
    return the collector (its ``stats``). ``options`` go to :class:`Collector`."""
    collector = Collector(engine, parse_broker_url(broker_url, environ), **options)
    await collector.run(stop)
    return collector
