"""Publishing a store's outbox to the fleet's MQTT broker.

The store writer queues messages in the ``outbox`` table in the same transaction as the rows
they describe (``StoreWriter(outbox=True)``). :class:`Publisher` drains that table in id order:
each message is published with QoS 1 and deleted only after the broker's PUBACK (aiomqtt's
``publish`` returns when it arrives), so a message is never lost; one acknowledged but not yet
deleted when the process stops is sent again after the restart, and the collector, which
knows every ``(instance, machine, id)`` it has written, drops the copy. When the broker goes
away the publisher reconnects with exponential backoff while the writer keeps filling the
outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from sqlalchemy import Engine, delete, func, select

from egresswatch.fleet.broker import (
    BrokerConfig,
    encode,
    make_client,
    parse_broker_url,
    raise_if_cancelled,
    sleep_unless,
    stay_connected,
)
from egresswatch.store.models import OutboxMessage, StoreInstance

log = logging.getLogger(__name__)

PENDING_COUNTED = 100_000
"""Outbox messages the status counts at most."""


def instance_id(engine: Engine) -> str:
    """The store's random instance id (made by migration 0003)."""
    with engine.connect() as conn:
        found = conn.execute(select(StoreInstance.instance).where(StoreInstance.id == 1))
        value = found.scalar_one_or_none()
    if value is None:  # pragma: no cover - the migration inserts it
        msg = f"{engine.url!r} has no store instance id"
        raise RuntimeError(msg)
    return value


@dataclass(slots=True)
class PublisherStats:
    """What a publisher has done so far."""

    published: int = 0
    """Messages acknowledged by the broker and deleted from the outbox."""
    connects: int = 0
    """Successful connections to the broker."""
    failures: int = 0
    """Connections that failed or broke."""
    connected: bool = False
    """Connected to the broker now."""
    last_error: str | None = None
    """Why the last connection failed or broke."""


class Publisher:
    """Drains ``engine``'s outbox to the broker (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        config: BrokerConfig,
        *,
        batch: int = 100,
        poll_seconds: float = 0.5,
        publish_timeout: float = 10.0,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        linger_seconds: float = 3.0,
        window: int = 20,
    ) -> None:
        self._window = window
        self.engine = engine
        self.config = config
        self._linger = linger_seconds
        self._batch = batch
        self._poll = poll_seconds
        self._timeout = publish_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._instance: str | None = None
        self.stats = PublisherStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, reconnecting with backoff when the broker is away.

        Once ``stop`` is set, a connected publisher goes on sending what is in the outbox for
        up to ``linger_seconds``; what is left waits for the next start."""
        if self._instance is None:
            self._instance = await asyncio.to_thread(instance_id, self.engine)
        instance = self._instance

        async def session(client: aiomqtt.Client) -> None:
            self.stats.connects += 1
            self.stats.connected = True
            log.info("publishing to %s", self.config.describe())
            await self._drain(client, instance, stop)

        def failed(exc: BaseException, delay: float) -> None:
            self.stats.failures += 1
            self.stats.last_error = str(exc) or type(exc).__name__
            log.warning("broker %s: %s; retrying in %.1f s", self.config.describe(), exc, delay)

        def closed() -> None:
            self.stats.connected = False

        await stay_connected(
            stop,
            lambda: make_client(self.config, timeout=self._timeout),
            session,
            errors=(aiomqtt.MqttError, OSError),
            on_error=failed,
            backoff=(self._min_backoff, self._max_backoff),
            on_close=closed,
        )

    async def _drain(self, client: aiomqtt.Client, instance: str, stop: asyncio.Event) -> None:
        deadline: float | None = None
        while True:
            raise_if_cancelled()
            if stop.is_set():
                # Stopping: send what is left for a little while (the last flush of an agent
                # that stops), then leave the rest to the next start.
                now = asyncio.get_running_loop().time()
                deadline = deadline if deadline is not None else now + self._linger
                if now >= deadline:
                    return
            rows = await asyncio.to_thread(self._fetch)
            if not rows:
                if stop.is_set():
                    return
                await sleep_unless(stop, self._poll)
                continue
            acked: list[int] = []
            try:
                for start in range(0, len(rows), self._window):
                    window = rows[start : start + self._window]
                    # QoS 1, several in flight: each publish returns once its PUBACK is in.
                    # They go out in this order (paho sends as each is called), so the outbox
                    # still reaches the broker in id order.
                    results = await asyncio.gather(
                        *(self._publish(client, instance, row) for row in window),
                        return_exceptions=True,
                    )
                    acked.extend(
                        row.id for row, r in zip(window, results, strict=True) if r is None
                    )
                    for result in results:
                        if isinstance(result, BaseException):
                            raise result
                    raise_if_cancelled()
            finally:
                if acked:
                    # Also when cancelled or disconnected mid-batch: what the broker has is
                    # not sent again (a copy would only be dropped by the collector).
                    await asyncio.shield(asyncio.to_thread(self._delete, acked))
                    self.stats.published += len(acked)

    async def _publish(self, client: aiomqtt.Client, instance: str, row: Any) -> None:
        payload = encode(
            instance=instance,
            machine=row.machine,
            message_id=row.id,
            created=row.created,
            body=row.payload,
        )
        await client.publish(row.topic, payload, qos=1, timeout=self._timeout)

    def status(self) -> dict[str, Any]:
        """For the agent's status: the broker, the counters, and what waits in the outbox
        (counted up to :data:`PENDING_COUNTED`, so that a long outage does not make each
        status write scan a large outbox; ``pending_over`` says when there is more)."""
        with self.engine.connect() as conn:
            waiting = select(OutboxMessage.id).limit(PENDING_COUNTED + 1).subquery()
            pending = conn.execute(select(func.count()).select_from(waiting)).scalar_one()
            # The outbox is written in order: the lowest id is the oldest message.
            oldest = conn.execute(
                select(OutboxMessage.created).order_by(OutboxMessage.id).limit(1)
            ).scalar()
        return {
            "broker": self.config.describe(),
            "connected": self.stats.connected,
            "published": self.stats.published,
            "connects": self.stats.connects,
            "failures": self.stats.failures,
            "last_error": self.stats.last_error,
            "pending": min(int(pending), PENDING_COUNTED),
            "pending_over": int(pending) > PENDING_COUNTED,
            "oldest_pending": oldest,
        }

    def _fetch(self) -> Sequence[Any]:
        query = select(OutboxMessage).order_by(OutboxMessage.id).limit(self._batch)
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def _delete(self, ids: list[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))


async def publish_forever(
    engine: Engine,
    broker_url: str,
    *,
    stop: asyncio.Event,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Publisher:
    """Drain ``engine``'s outbox to ``broker_url`` until ``stop`` is set; return the publisher
    (its ``stats``). ``options`` go to :class:`Publisher`. Raises ConfigError for a bad URL."""
    publisher = Publisher(engine, parse_broker_url(broker_url, environ), **options)
    await publisher.run(stop)
    return publisher
