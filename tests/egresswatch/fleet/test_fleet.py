"""The fleet end to end: a host's StoreWriter(outbox=True) in SQLite, the publisher, a Mosquitto
of the test's own, the collector, and PostgreSQL; the broker stopped, the publisher killed,
messages delivered twice; passwords and TLS."""

from __future__ import annotations

import asyncio
import datetime
import gc
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import Engine, func, select

from egresswatch.fleet.broker import encode, parse_broker_url
from egresswatch.fleet.collector import Collector, Outcome
from egresswatch.fleet.publisher import Publisher, instance_id, publish_forever
from egresswatch.store import StoreWriter, open_engine
from egresswatch.store.models import (
    Base,
    OutboxMessage,
    ReceivedMessage,
    ViolationRecord,
)
from probes.observation import Observation

from .conftest import Broker

BASE = 1_795_000_000.0  # 2026-11-18, a Wednesday
FAST_PUB: dict[str, Any] = {
    "poll_seconds": 0.05,
    "min_backoff": 0.05,
    "max_backoff": 0.3,
    "publish_timeout": 3.0,
}
FAST_COL: dict[str, Any] = {"min_backoff": 0.05, "max_backoff": 0.3, "timeout": 3.0}
COMPARED = ("observations", "hourly", "daily", "weekly", "totals", "daily_facets", "violations")

pytestmark = [pytest.mark.mosquitto]


async def collecting(
    url: str,
    fleet: Engine,
    *,
    stop: asyncio.Event,
    environ: dict[str, str] | None = None,
    **options: Any,
) -> asyncio.Task[Collector]:
    """A collector running until ``stop``, returned once its subscription is in place: what a
    host publishes before the collector's first subscription reaches no one (MQTT keeps
    messages only for subscriptions that exist), so a test that started both at once raced."""
    collector = Collector(fleet, parse_broker_url(url, environ), **options)

    async def run() -> Collector:
        await collector.run(stop)
        return collector

    task = asyncio.create_task(run())
    waiting = asyncio.create_task(collector.subscribed.wait())
    await asyncio.wait({task, waiting}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        await task  # it failed: say why
    assert collector.subscribed.is_set(), "the collector did not subscribe within 20 s"
    return task


def violation(i: int) -> Observation:
    host = f"api{i % 3}.deepseek.com"
    return Observation(
        ts=BASE + i * 1.5,
        kind="tls",
        transport="tcp",
        src="10.0.0.2",
        dst="203.0.113.9",
        sport=20000 + i,
        dport=443,
        sni=host,
        alpn=("h2", "http/1.1"),
        extra={
            "host": host,
            "provider": "deepseek",
            "inference": ["CN"],
            "endpoint_country": "CN",
            "asn": 64500,
            "verdict": "violation",
            "rule": "no-cn",
            "reason": "inference runs in CN",
            "process": "python3",
            "pid": 4242,
        },
    )


def allowed(i: int) -> Observation:
    return Observation(
        ts=BASE + i * 97.0,
        kind="quic",
        transport="udp",
        src="10.0.0.2",
        dst="198.51.100.7",
        sport=50000 + i % 7,
        dport=443,
        sni="api.anthropic.com",
        extra={"provider": "anthropic", "verdict": "allow", "endpoint_country": "US"},
    )


def host_store(path: Path, machine: str = "ws-17") -> tuple[Engine, StoreWriter]:
    engine = open_engine(path)
    return engine, StoreWriter(engine, machine=machine, outbox=True)


def write(writer: StoreWriter, observations: list[Observation]) -> None:
    for obs in observations:
        writer.write(obs)
    writer.flush()


def table(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    """Every row of ``name`` without its id, in a stable order."""
    t = Base.metadata.tables[name]
    cols = [c for c in t.c if c.name != "id"]
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(*cols))]
    return sorted(rows, key=repr)


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def observed(engine: Engine) -> int:
    with engine.connect() as conn:
        got = conn.execute(select(func.sum(Base.metadata.tables["observations"].c["count"])))
        return int(got.scalar_one() or 0)


async def until(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def _ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxMessage.id)).scalars())


def assert_exactly_once(fleet: Engine, n: int) -> None:
    """Every violation once, by content (machine, time, port), and no other."""
    with fleet.connect() as conn:
        keys = conn.execute(
            select(ViolationRecord.machine, ViolationRecord.ts, ViolationRecord.sport)
        ).all()
    per = Counter(tuple(k) for k in keys)
    doubled = [k for k, c in per.items() if c > 1]
    assert len(keys) == n, (len(keys), n, doubled[:3], count(fleet, ReceivedMessage))
    assert max(per.values()) == 1


def assert_same(host: Engine, fleet: Engine) -> None:
    for name in COMPARED:
        assert table(host, name) == table(fleet, name), name


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def stopped(stop: asyncio.Event, *tasks: asyncio.Task[Any]) -> list[Any]:
    stop.set()
    return list(await asyncio.gather(*tasks))


# -- (a) publish and collect, row for row -----------------------------------------------------


@pytest.mark.postgres
def test_violations_and_observations_reach_postgres_row_for_row(
    tmp_path: Path, broker: Broker, pg_url: str
) -> None:
    host, writer = host_store(tmp_path / "host.db")
    fleet = open_engine(pg_url)
    n = 40

    async def scenario() -> None:
        stop = asyncio.Event()
        col = await collecting(broker.url, fleet, stop=stop, **FAST_COL)
        pub = asyncio.create_task(publish_forever(host, broker.url, stop=stop, **FAST_PUB))
        for part in range(4):  # four flushes: the same hourly rows are upserted again
            write(writer, [violation(i) for i in range(part * 10, part * 10 + 10)])
            write(writer, [allowed(i) for i in range(part * 30, part * 30 + 30)])
        await until(lambda: count(host, OutboxMessage) == 0, what="outbox drained")
        await until(lambda: observed(fleet) == n + 120, what="observations in PG")
        collector, publisher = await stopped(stop, col, pub)
        assert isinstance(publisher, Publisher)
        assert isinstance(collector, Collector)
        assert publisher.stats.published == collector.stats.written
        assert collector.stats.malformed == 0

    run(scenario())
    assert_exactly_once(fleet, n)
    assert_same(host, fleet)
    with fleet.connect() as conn:
        machines = set(conn.execute(select(ReceivedMessage.machine, ReceivedMessage.instance)))
    assert machines == {("ws-17", instance_id(host))}
    fleet.dispose()
    host.dispose()


# -- (b) the must-hold: the broker goes away and comes back ----------------------------------


@pytest.mark.postgres
def test_broker_stopped_and_restarted_every_violation_arrives_exactly_once(
    tmp_path: Path, broker: Broker, pg_url: str
) -> None:
    host, writer = host_store(tmp_path / "host.db")
    fleet = open_engine(pg_url)

    async def scenario() -> None:
        stop = asyncio.Event()
        col = await collecting(broker.url, fleet, stop=stop, **FAST_COL)
        pub = asyncio.create_task(publish_forever(host, broker.url, stop=stop, **FAST_PUB))
        write(writer, [violation(i) for i in range(0, 50)])
        await until(lambda: count(fleet, ViolationRecord) == 50, what="first 50")

        broker.stop()
        # The host keeps recording while the broker is away: the outbox fills.
        for start in range(50, 200, 25):
            write(writer, [violation(i) for i in range(start, start + 25)])
            await asyncio.sleep(0.1)
        assert count(host, ViolationRecord) == 200
        assert count(host, OutboxMessage) >= 150
        broker.start()

        write(writer, [violation(i) for i in range(200, 260)])
        await until(lambda: count(fleet, ViolationRecord) >= 260, what="all 260")
        await until(lambda: count(host, OutboxMessage) == 0, what="outbox drained")
        await asyncio.sleep(0.3)  # a late duplicate, if any, would land now
        collector, publisher = await stopped(stop, col, pub)
        assert publisher.stats.failures >= 1
        assert collector.stats.failures >= 1

    run(scenario())
    assert_exactly_once(fleet, 260)
    assert_same(host, fleet)
    fleet.dispose()
    host.dispose()


# -- (c) the publisher killed mid-drain and started again -------------------------------------


@pytest.mark.postgres
def test_publisher_cancelled_mid_drain_resumes_without_loss_or_double_count(
    tmp_path: Path, broker: Broker, pg_url: str
) -> None:
    path = tmp_path / "host.db"
    host, writer = host_store(path)
    fleet = open_engine(pg_url)
    n = 1500
    write(writer, [violation(i) for i in range(n)])
    total = count(host, OutboxMessage)
    assert total > n

    async def scenario() -> None:
        stop = asyncio.Event()
        col = await collecting(broker.url, fleet, stop=stop, **FAST_COL)
        pub_stop = asyncio.Event()
        pub = asyncio.create_task(
            publish_forever(host, broker.url, stop=pub_stop, batch=20, **FAST_PUB)
        )
        await until(lambda: count(host, OutboxMessage) < total - 100, what="drain started")
        pub.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pub
        left = count(host, OutboxMessage)
        assert 0 < left < total, "cancelled mid-drain"

        # A new process: a new engine on the same file, a new publisher.
        again = open_engine(path)
        pub2 = asyncio.create_task(publish_forever(again, broker.url, stop=stop, **FAST_PUB))
        await until(lambda: count(fleet, ViolationRecord) >= n, what="all violations")
        await until(lambda: count(again, OutboxMessage) == 0, what="outbox drained")
        await asyncio.sleep(0.3)
        await stopped(stop, col, pub2)
        again.dispose()

    run(scenario())
    assert_exactly_once(fleet, n)
    assert_same(host, fleet)
    fleet.dispose()
    host.dispose()


# -- (d) duplicate deliveries, re-created stores, malformed messages --------------------------


@pytest.mark.postgres
def test_a_message_delivered_twice_is_counted_once(
    tmp_path: Path, broker: Broker, pg_url: str
) -> None:
    host, writer = host_store(tmp_path / "host.db")
    fleet = open_engine(pg_url)
    write(writer, [violation(1), allowed(1)])
    with host.connect() as conn:
        messages = conn.execute(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    instance = instance_id(host)
    payloads = [
        encode(
            instance=instance,
            machine=m.machine,
            message_id=m.id,
            created=m.created,
            body=m.payload,
        )
        for m in messages
    ]
    collector = Collector(fleet, _config(broker), **FAST_COL)

    async def scenario() -> None:
        stop = asyncio.Event()
        col = asyncio.create_task(collector.run(stop))
        await until(lambda: collector.stats.connects == 1, what="collector connected")
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(messages[0].topic, b"not json", qos=1)
            for _ in range(2):
                for m, payload in zip(messages, payloads, strict=True):
                    await client.publish(m.topic, payload, qos=1)
        await until(
            lambda: collector.stats.written + collector.stats.duplicates == 2 * len(messages),
            what="all four deliveries",
        )
        await stopped(stop, col)

    run(scenario())
    assert collector.stats.malformed == 1
    assert collector.stats.written == len(messages)
    assert collector.stats.duplicates == len(messages)
    assert count(fleet, ReceivedMessage) == len(messages)
    assert_exactly_once(fleet, 1)
    assert observed(fleet) == 2
    # Straight through handle(): the same again changes nothing.
    assert collector.handle(payloads[0]) is Outcome.DUPLICATE
    assert_same(host, fleet)
    fleet.dispose()
    host.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_batch_is_written_in_one_transaction_each_message_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    host, writer = host_store(tmp_path / "host.db")
    url = request.getfixturevalue("pg_url") if backend == "postgres" else tmp_path / "fleet.db"
    fleet = open_engine(url)
    for i in range(3):
        write(writer, [violation(i), allowed(i)])
    instance = instance_id(host)
    with host.connect() as conn:
        messages = [
            (encode(instance=instance, machine=m.machine, message_id=m.id, created=m.created,
                    body=m.payload), m.topic)
            for m in conn.execute(select(OutboxMessage).order_by(OutboxMessage.id))
        ]  # fmt: skip
    assert len(messages) == 6
    collector = Collector(fleet, parse_broker_url("mqtt://127.0.0.1"))
    first = [messages[0], messages[1], messages[0], (b"{}", None), messages[2]]
    assert collector.handle_batch(first) == [
        Outcome.WRITTEN, Outcome.WRITTEN, Outcome.DUPLICATE, Outcome.MALFORMED, Outcome.WRITTEN,
    ]  # fmt: skip
    # A later batch: what was written before is a duplicate, the rest is written.
    assert collector.handle_batch(messages) == [Outcome.DUPLICATE] * 3 + [Outcome.WRITTEN] * 3
    assert (collector.stats.written, collector.stats.duplicates) == (6, 4)
    assert_exactly_once(fleet, 3)
    assert_same(host, fleet)
    fleet.dispose()
    host.dispose()


def test_a_message_on_another_machines_topic_is_refused(tmp_path: Path) -> None:
    # A host may publish only under its own topic (broker ACL); the collector makes that mean
    # something by refusing a message whose machine is not the one its topic names.
    host, writer = host_store(tmp_path / "host.db")
    fleet = open_engine(tmp_path / "fleet.db")
    write(writer, [violation(1)])
    with host.connect() as conn:
        (m,) = conn.execute(
            select(OutboxMessage).where(OutboxMessage.topic.endswith("/violations"))
        ).all()
    payload = encode(
        instance=instance_id(host), machine=m.machine, message_id=m.id, created=m.created,
        body=m.payload,
    )  # fmt: skip
    collector = Collector(fleet, parse_broker_url("mqtt://127.0.0.1"))
    assert collector.handle(payload, "egresswatch/other-host/violations") is Outcome.MALFORMED
    assert collector.handle(payload, m.topic.replace("violations", "observations")) is (
        Outcome.MALFORMED
    )
    assert count(fleet, ViolationRecord) == 0
    assert collector.handle(payload, m.topic) is Outcome.WRITTEN
    assert count(fleet, ViolationRecord) == 1
    fleet.dispose()
    host.dispose()


@pytest.mark.postgres
def test_a_recreated_store_reuses_outbox_ids_without_collision(
    tmp_path: Path, broker: Broker, pg_url: str
) -> None:
    fleet = open_engine(pg_url)
    # The same machine, its database deleted and made again: outbox ids start over.
    first, w1 = host_store(tmp_path / "one.db")
    second, w2 = host_store(tmp_path / "two.db")
    write(w1, [violation(1)])
    write(w2, [violation(2)])
    ids = [_ids(e) for e in (first, second)]
    assert ids[0] == ids[1]  # both stores start at 1
    assert instance_id(first) != instance_id(second)

    async def scenario() -> None:
        stop = asyncio.Event()
        col = await collecting(broker.url, fleet, stop=stop, **FAST_COL)
        pubs = [
            asyncio.create_task(publish_forever(e, broker.url, stop=stop, **FAST_PUB))
            for e in (first, second)
        ]
        await until(lambda: count(fleet, ViolationRecord) == 2, what="both violations")
        await stopped(stop, col, *pubs)

    run(scenario())
    assert_exactly_once(fleet, 2)
    for e in (first, second, fleet):
        e.dispose()


# -- (e) user name and password; TLS ----------------------------------------------------------


def _config(broker: Broker, environ: dict[str, str] | None = None) -> Any:
    from egresswatch.fleet.broker import parse_broker_url

    return parse_broker_url(broker.url, environ or {})


# paho leaves the socket of a refused TLS handshake or login for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.postgres
def test_password_from_the_environment(
    tmp_path: Path, make_broker: Callable[..., Broker], pg_url: str
) -> None:
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("needs mosquitto_passwd (apt install mosquitto-clients or mosquitto)")
    pwfile = tmp_path / "passwords"
    subprocess.run([passwd, "-b", "-c", str(pwfile), "egw", "s3cret word"], check=True)
    pwfile.chmod(0o600)
    broker = make_broker(extra=f"password_file {pwfile}\nallow_anonymous false\n")
    url = f"mqtt://egw@127.0.0.1:{broker.port}"
    good = {"EGRESSWATCH_BROKER_PASSWORD": "s3cret word"}
    bad = {"EGRESSWATCH_BROKER_PASSWORD": "guess"}
    host, writer = host_store(tmp_path / "host.db")
    fleet = open_engine(pg_url)
    write(writer, [violation(i) for i in range(5)])

    async def scenario() -> None:
        stop = asyncio.Event()
        wrong = asyncio.create_task(publish_forever(host, url, stop=stop, environ=bad, **FAST_PUB))
        anonymous = asyncio.create_task(
            publish_forever(host, f"mqtt://127.0.0.1:{broker.port}", stop=stop, **FAST_PUB)
        )
        await asyncio.sleep(1.0)
        refused = await stopped(stop, wrong, anonymous)
        for publisher in refused:
            assert publisher.stats.connects == 0
            assert publisher.stats.failures >= 1
        assert count(host, OutboxMessage) > 0

        stop = asyncio.Event()
        col = await collecting(url, fleet, stop=stop, environ=good, **FAST_COL)
        pub = asyncio.create_task(publish_forever(host, url, stop=stop, environ=good, **FAST_PUB))
        await until(lambda: count(fleet, ViolationRecord) == 5, what="5 violations")
        await stopped(stop, col, pub)

    run(scenario())
    gc.collect()
    assert_exactly_once(fleet, 5)
    fleet.dispose()
    host.dispose()


def _make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 and localhost it signed."""
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egresswatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_pem.chmod(0o600)
    return ca_pem, cert_pem, key_pem


# paho leaves the socket of a refused TLS handshake or login for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.postgres
def test_tls_with_the_ca_from_the_environment(
    tmp_path: Path, make_broker: Callable[..., Broker], pg_url: str
) -> None:
    ca, cert, key = _make_ca(tmp_path)
    broker = make_broker(scheme="mqtts", extra=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    env = {"EGRESSWATCH_BROKER_CA": str(ca)}
    host, writer = host_store(tmp_path / "host.db")
    fleet = open_engine(pg_url)
    write(writer, [violation(i) for i in range(5)])

    async def scenario() -> None:
        stop = asyncio.Event()
        # Without the CA the server's certificate is not trusted: nothing is sent.
        untrusted = asyncio.create_task(
            publish_forever(host, broker.url, stop=stop, environ={}, **FAST_PUB)
        )
        await asyncio.sleep(0.8)
        (publisher,) = await stopped(stop, untrusted)
        assert publisher.stats.connects == 0
        assert count(host, OutboxMessage) > 0

        stop = asyncio.Event()
        col = await collecting(broker.url, fleet, stop=stop, environ=env, **FAST_COL)
        pub = asyncio.create_task(
            publish_forever(host, broker.url, stop=stop, environ=env, **FAST_PUB)
        )
        await until(lambda: count(fleet, ViolationRecord) == 5, what="5 violations over TLS")
        await stopped(stop, col, pub)

    run(scenario())
    gc.collect()
    assert_exactly_once(fleet, 5)
    fleet.dispose()
    host.dispose()


def test_status_counts_the_outbox_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long outage fills the outbox; the status (written every 5 s) counts at most
    # PENDING_COUNTED messages and says there are more, and names the oldest.
    import egresswatch.fleet.publisher as publisher

    engine, writer = host_store(tmp_path / "host.db")
    publisher_ = Publisher(engine, parse_broker_url("mqtt://127.0.0.1:1"))
    empty = publisher_.status()
    assert (empty["pending"], empty["pending_over"], empty["oldest_pending"]) == (0, False, None)
    started = time.time()
    write(writer, [violation(i) for i in range(12)])
    monkeypatch.setattr(publisher, "PENDING_COUNTED", 10)
    full = publisher_.status()
    assert (full["pending"], full["pending_over"]) == (10, True)
    assert started - 5 <= full["oldest_pending"] <= time.time()
    monkeypatch.setattr(publisher, "PENDING_COUNTED", 100)
    assert (publisher_.status()["pending"], publisher_.status()["pending_over"]) == (
        count(engine, OutboxMessage),
        False,
    )
