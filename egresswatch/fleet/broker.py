"""The MQTT side shared by the publisher and the collector: ``--broker`` URLs, clients, and the
message envelope.

A ``--broker`` value is ``mqtt://[user@]host[:port]`` (port 1883) or ``mqtts://...`` for TLS
(port 8883; the system's CAs, or the file named by ``EGRESSWATCH_BROKER_CA``). The password
comes from ``EGRESSWATCH_BROKER_PASSWORD``, never from the command line: a URL that carries one
is refused.

Every message is one JSON object (UTF-8), the envelope::

    {"format": 1, "instance": "<32 hex>", "machine": "ws-17", "id": 42, "created": 1795.0,
     "type": "violation", "violation": {...}}          # one violation record
    {"format": 1, ..., "type": "observations", "rows": [{...}, ...]}   # hourly deltas

``(instance, machine, id)`` names a message: ``id`` is the sender's outbox id, ``instance`` a
random id its store made once, so a database created again does not reuse names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from egresswatch.errors import ConfigError

FORMAT = 1
"""The envelope's format version."""
PASSWORD_ENV = "EGRESSWATCH_BROKER_PASSWORD"  # noqa: S105 - the variable's name, not a password
CA_ENV = "EGRESSWATCH_BROKER_CA"
VIOLATIONS = "violations"
OBSERVATIONS = "observations"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where the broker is and how to log in."""

    host: str
    """Host name or address."""
    port: int
    """TCP port (1883 for mqtt, 8883 for mqtts unless given)."""
    tls: bool
    """``mqtts``: TLS, with the server's certificate checked."""
    username: str | None = None
    """From the URL."""
    password: str | None = None
    """From ``EGRESSWATCH_BROKER_PASSWORD``."""
    ca_file: str | None = None
    """From ``EGRESSWATCH_BROKER_CA``; the system's CAs when None."""

    def describe(self) -> str:
        """The URL without a password, for messages."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_broker_url(value: str, environ: Mapping[str, str] | None = None) -> BrokerConfig:
    """The :class:`BrokerConfig` for a ``--broker`` value; :class:`ConfigError` if it is bad."""
    env = os.environ if environ is None else environ
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        msg = f"not a broker URL: {value!r} (use mqtt://[user@]host[:port] or mqtts://...)"
        raise ConfigError(msg)
    if parts.password is not None:
        msg = (
            f"the broker URL {value.replace(parts.password, '***')!r} carries a password: "
            f"put it in ${PASSWORD_ENV} instead, never on the command line"
        )
        raise ConfigError(msg)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        msg = f"a broker URL names only user, host and port: {value!r}"
        raise ConfigError(msg)
    try:
        port = parts.port
    except ValueError as exc:
        msg = f"bad port in broker URL {value!r}"
        raise ConfigError(msg) from exc
    if not parts.hostname:
        msg = f"no host in broker URL {value!r}"
        raise ConfigError(msg)
    tls = parts.scheme == "mqtts"
    ca = env.get(CA_ENV) or None
    if ca is not None and not os.path.isfile(ca):
        msg = f"${CA_ENV} names {ca!r}, which is not a file"
        raise ConfigError(msg)
    return BrokerConfig(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=env.get(PASSWORD_ENV) or None,
        ca_file=ca,
    )


def raise_if_cancelled() -> None:
    """Raise the current task's pending cancellation, if one was swallowed.

    On Python 3.11, ``asyncio.wait_for`` (which aiomqtt awaits for every publish, connect and
    disconnect) returns normally when the cancellation arrives just as its future completes
    (CPython gh-86296): the task is then marked cancelling but goes on running. Checked in
    every loop that aiomqtt calls, so that a stopped publisher or collector really stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set; a cancellation goes through."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails: paho drops such a socket
    without closing it, which leaks the descriptor until the garbage collector finds it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def close_socket(client: aiomqtt.Client) -> None:
    """Close what paho left of a connection that failed (a refused login leaves the socket
    open); through paho, so that aiomqtt stops watching the descriptor first."""
    paho = client._client
    if paho.socket() is not None:
        paho._sock_close()


async def stay_connected(
    stop: asyncio.Event,
    connect: Callable[[], aiomqtt.Client],
    session: Callable[[aiomqtt.Client], Awaitable[None]],
    *,
    errors: tuple[type[BaseException], ...],
    on_error: Callable[[BaseException, float], None],
    backoff: tuple[float, float],
    on_close: Callable[[], None] | None = None,
) -> None:
    """Run ``session`` on a connected client from ``connect()`` until ``stop`` is set; after
    one of ``errors`` (told to ``on_error`` with the coming delay), connect again after a delay
    that doubles from ``backoff[0]`` up to ``backoff[1]`` and starts over once connected.
    The publisher and the collector both live in this loop."""
    low, high = backoff
    delay = low
    while not stop.is_set():
        client = connect()
        try:
            async with client:
                delay = low
                await session(client)
        except errors as exc:
            on_error(exc, delay)
        finally:
            if on_close is not None:
                on_close()
            close_socket(client)
        raise_if_cancelled()
        if stop.is_set():
            break
        await sleep_unless(stop, delay)
        delay = min(delay * 2, high)


def make_client(
    config: BrokerConfig,
    *,
    identifier: str | None = None,
    clean_session: bool | None = None,
    timeout: float = 10.0,
) -> aiomqtt.Client:
    """An (unconnected) aiomqtt client for ``config``: MQTT 3.1.1, TLS for ``mqtts``."""
    context = None
    if config.tls:
        context = ssl.create_default_context(cafile=config.ca_file)
        context.sslsocket_class = _ClosingSSLSocket
    return aiomqtt.Client(
        config.host,
        config.port,
        username=config.username,
        password=config.password,
        identifier=identifier,
        clean_session=clean_session,
        tls_context=context,
        timeout=timeout,
        keepalive=30,
    )


def encode(
    *, instance: str, machine: str, message_id: int, created: float, body: Mapping[str, Any]
) -> bytes:
    """The envelope's bytes."""
    envelope = {
        "format": FORMAT,
        "instance": instance,
        "machine": machine,
        "id": message_id,
        "created": created,
        **body,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class BadMessage(ValueError):
    """A message that is not a valid envelope (the collector counts and drops it)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message."""

    instance: str
    machine: str
    message_id: int
    created: float
    type: str
    body: dict[str, Any]
    """The whole JSON object."""


def decode(payload: bytes) -> Envelope:
    """The :class:`Envelope` in ``payload``; :class:`BadMessage` if it is not one."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"not JSON: {payload[:60]!r}"
        raise BadMessage(msg) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        msg = f"not an egresswatch message (format {FORMAT}): {payload[:60]!r}"
        raise BadMessage(msg)
    instance, machine, mid = obj.get("instance"), obj.get("machine"), obj.get("id")
    kind = obj.get("type")
    if not (isinstance(instance, str) and 0 < len(instance) <= 64):
        msg = f"bad instance {instance!r}"
        raise BadMessage(msg)
    if not (isinstance(machine, str) and 0 < len(machine) <= 255):
        msg = f"bad machine {machine!r}"
        raise BadMessage(msg)
    if not isinstance(mid, int) or isinstance(mid, bool) or mid < 0:
        msg = f"bad message id {mid!r}"
        raise BadMessage(msg)
    if kind not in ("violation", "observations"):
        msg = f"unknown message type {kind!r}"
        raise BadMessage(msg)
    created = obj.get("created")
    return Envelope(
        instance=instance,
        machine=machine,
        message_id=mid,
        created=float(created) if isinstance(created, int | float) else 0.0,
        type=kind,
        body=obj,
    )
