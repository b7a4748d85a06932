"""Fleet throughput: an agent's outbox through Mosquitto into PostgreSQL, next to the bare
transport.

A host store (SQLite, ``StoreWriter(outbox=True)``) is filled with ``--violations``
violations and ``--flushes`` flushes of ``--destinations`` hourly rows each, the way an agent
that was cut off from its broker for a while would have them queued. Then, against a Mosquitto
of its own (free port, temporary folder) and a PostgreSQL database of its own (created and
dropped on ``--pg``):

- ``egresswatch``: the publisher drains the outbox (QoS 1, each message deleted after its
  PUBACK) while the collector writes every message into PostgreSQL (one transaction per
  message with its exactly-once record, PUBACK after the commit). Timed from the start until
  the last message is committed; the database is then checked against the host store.
- ``mosquitto_sub`` (reference): the same payloads published with QoS 1 by one paho client and
  received by Mosquitto's own ``mosquitto_sub -q 1 -C N``: what the broker and the transport
  cost alone, the ceiling the writes sit under.

Needs ``mosquitto``, ``mosquitto_sub`` and a PostgreSQL that the given URL reaches with the
right to create databases; prints why and exits 0 otherwise. ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from egresswatch.fleet.broker import encode, parse_broker_url  # noqa: E402
from egresswatch.fleet.collector import Collector  # noqa: E402
from egresswatch.fleet.publisher import Publisher, instance_id  # noqa: E402
from egresswatch.store import StoreWriter, open_engine  # noqa: E402
from egresswatch.store.models import (  # noqa: E402
    ObservationAggregate,
    OutboxMessage,
    ViolationRecord,
)
from probes.observation import Observation  # noqa: E402

BASE = 1_795_000_000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _observation(i: int, *, violation: bool) -> Observation:
    host = f"api{i % 50}.deepseek.com" if violation else f"h{i}.example.net"
    extra: dict[str, Any] = {"host": host, "verdict": "violation" if violation else "allow"}
    if violation:
        extra |= {
            "provider": "deepseek",
            "endpoint_country": "CN",
            "rule": "no-deepseek",
            "reason": "not approved",
            "process": "python3",
            "pid": 4242,
        }
    return Observation(
        ts=BASE + i * 0.01,
        kind="tls",
        transport="tcp",
        src="10.0.0.2",
        dst="203.0.113.9",
        sport=1024 + i % 60000,
        dport=443,
        sni=host,
        extra=extra,
    )


def fill(path: Path, violations: int, flushes: int, destinations: int) -> int:
    """Queue the messages; return how many there are."""
    engine = open_engine(path)
    writer = StoreWriter(engine, machine="ws-bench", outbox=True, flush_seconds=1e9)
    per_flush = max(1, violations // max(1, flushes))
    done = 0
    for f in range(flushes):
        for d in range(destinations):
            writer.write(_observation(f * destinations + d, violation=False))
        for _ in range(per_flush if f < flushes - 1 else violations - done):
            writer.write(_observation(done, violation=True))
            done += 1
        writer.flush()
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(OutboxMessage)).scalar_one())
    engine.dispose()
    return total


class Mosquitto:
    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 0\nmax_inflight_messages 0\nuser root\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def _egresswatch(host_db: Path, fleet_url: str, url: str, total: int) -> float:
    host = open_engine(host_db)
    fleet = open_engine(fleet_url)
    config = parse_broker_url(url, {})
    collector = Collector(fleet, config, client_id="egw-bench", min_backoff=0.05)
    publisher = Publisher(host, config, batch=500, poll_seconds=0.05, min_backoff=0.05)
    stop = asyncio.Event()
    col = asyncio.create_task(collector.run(stop))
    while collector.stats.connects == 0:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    pub = asyncio.create_task(publisher.run(stop))
    while collector.stats.written < total:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(col, pub)
    with fleet.connect() as conn, host.connect() as hconn:
        got = conn.execute(select(func.count()).select_from(ViolationRecord)).scalar_one()
        want = hconn.execute(select(func.count()).select_from(ViolationRecord)).scalar_one()
        rows = conn.execute(select(func.sum(ObservationAggregate.count))).scalar_one()
        hrows = hconn.execute(select(func.sum(ObservationAggregate.count))).scalar_one()
    assert (got, rows) == (want, hrows), f"fleet {got}/{rows} != host {want}/{hrows}"
    host.dispose()
    fleet.dispose()
    return elapsed


def _reference(host_db: Path, url: str, total: int) -> float:
    """The same payloads, QoS 1, one paho client to mosquitto_sub."""
    import paho.mqtt.client as mqtt

    host = open_engine(host_db)
    instance = instance_id(host)
    with host.connect() as conn:
        messages = [
            (
                m.topic,
                encode(
                    instance=instance,
                    machine=m.machine,
                    message_id=m.id,
                    created=m.created,
                    body=m.payload,
                ),
            )
            for m in conn.execute(select(OutboxMessage).order_by(OutboxMessage.id))
        ]
    host.dispose()
    port = int(url.rsplit(":", 1)[1])
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-C", str(total),
         "-t", "egresswatch/#"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # subscribed
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(20)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    sub.wait(120)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--violations", type=int, default=20_000)
    parser.add_argument("--flushes", type=int, default=200)
    parser.add_argument("--destinations", type=int, default=200)
    parser.add_argument(
        "--pg",
        default=os.environ.get("EGRESSWATCH_TEST_PG_URL", "postgresql://127.0.0.1:5432/test"),
        help="A PostgreSQL database whose user may create databases.",
    )
    args = parser.parse_args()
    missing = [t for t in ("mosquitto", "mosquitto_sub") if shutil.which(t) is None]
    if missing and not Path("/usr/sbin/mosquitto").exists():
        print(f"  skipped: needs {', '.join(missing)} (apt install mosquitto mosquitto-clients)")
        return
    if shutil.which("mosquitto_sub") is None:
        print("  skipped: needs mosquitto_sub (apt install mosquitto-clients)")
        return
    import psycopg

    name = f"egw_bench_{os.getpid()}"
    try:
        with psycopg.connect(args.pg, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"  skipped: no PostgreSQL at {args.pg} that may create a database ({exc})")
        return
    fleet_url = f"{args.pg.rsplit('/', 1)[0]}/{name}"
    with tempfile.TemporaryDirectory(prefix="egw-fleet-bench-") as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder)
        try:
            host_db = folder / "host.db"
            total = fill(host_db, args.violations, args.flushes, args.destinations)
            kept = folder / "copy.db"
            shutil.copy(host_db, kept)  # the reference reads the same messages
            url = f"mqtt://127.0.0.1:{broker.port}"
            ours = asyncio.run(_egresswatch(host_db, fleet_url, url, total))
            theirs = _reference(kept, url, total)
        finally:
            broker.stop()
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"  {total:,} messages ({args.violations:,} violations, {args.flushes} flushes of "
        f"{args.destinations} hourly rows)"
    )
    print(f"  {'':<34} {'time':>8} {'messages/s':>11}")
    print(
        f"  {'egresswatch outbox -> PostgreSQL':<34} {ours:>7.2f}s {total / ours:>11,.0f}"
        "   (exactly once, checked against the host store)"
    )
    print(f"  {'paho -> mosquitto_sub (transport)':<34} {theirs:>7.2f}s {total / theirs:>11,.0f}")


if __name__ == "__main__":
    main()
