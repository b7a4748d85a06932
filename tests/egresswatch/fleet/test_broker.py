"""``--broker`` URLs, the envelope, and the outbox the store writer fills (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from egresswatch.errors import ConfigError
from egresswatch.fleet.broker import BadMessage, BrokerConfig, decode, encode, parse_broker_url
from egresswatch.fleet.collector import Collector, Outcome
from egresswatch.store import StoreWriter, open_engine
from egresswatch.store.models import OutboxMessage, ViolationRecord
from egresswatch.store.writer import OUTBOX_ROWS, outbox_topic

from .test_fleet import allowed, table, violation


@pytest.mark.parametrize(
    ("url", "env", "want"),
    [
        ("mqtt://broker.example", {}, BrokerConfig("broker.example", 1883, tls=False)),
        ("mqtts://broker.example", {}, BrokerConfig("broker.example", 8883, tls=True)),
        (
            "mqtts://agent%40ws@10.0.0.1:9883",
            {"EGRESSWATCH_BROKER_PASSWORD": "pw"},
            BrokerConfig("10.0.0.1", 9883, tls=True, username="agent@ws", password="pw"),
        ),
    ],
)
def test_broker_urls(url: str, env: dict[str, str], want: BrokerConfig) -> None:
    assert parse_broker_url(url, env) == want


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mqtt://user:hunter2@host", "EGRESSWATCH_BROKER_PASSWORD"),
        ("http://host", "not a broker URL"),
        ("host:1883", "not a broker URL"),
        ("mqtt://host:99999", "bad port"),
        ("mqtt://host/topic", "only user, host and port"),
        ("mqtt://:1883", "no host"),
    ],
)
def test_bad_broker_urls(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_broker_url(url, {})
    assert "hunter2" not in str(info.value)


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        parse_broker_url("mqtts://h", {"EGRESSWATCH_BROKER_CA": str(tmp_path / "nope.pem")})


def test_envelope_round_trip_and_refusals() -> None:
    body = {"type": "violation", "violation": {"machine": "m"}}
    raw = encode(instance="ab" * 16, machine="m", message_id=7, created=1.5, body=body)
    env = decode(raw)
    assert (env.instance, env.machine, env.message_id, env.type) == ("ab" * 16, "m", 7, "violation")
    for bad in (b"\xff", b"[]", b'{"format": 2}', raw.replace(b'"id":7', b'"id":"7"')):
        with pytest.raises(BadMessage):
            decode(bad)


def test_topics_are_one_level_per_machine() -> None:
    assert outbox_topic("ws-17", "violations") == "egresswatch/ws-17/violations"
    assert outbox_topic("a/b+#", "observations") == "egresswatch/a_b__/observations"
    assert outbox_topic("", "violations") == "egresswatch/_/violations"


def test_the_outbox_is_written_with_the_rows_and_ids_are_never_reused(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    writer = StoreWriter(engine, machine="ws", outbox=True)
    for i in range(3):
        writer.write(violation(i))
    for i in range(OUTBOX_ROWS + 5):
        writer.write(allowed(i * 40))  # distinct hours: many hourly rows
    writer.flush()
    with engine.connect() as conn:
        messages = conn.execute(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        violations = conn.execute(select(ViolationRecord)).all()
    kinds = [m.payload["type"] for m in messages]
    assert kinds.count("violation") == 3
    rows = [r for m in messages if m.payload["type"] == "observations" for r in m.payload["rows"]]
    assert all(len(m.payload.get("rows", ())) <= OUTBOX_ROWS for m in messages)
    assert sum(r["count"] for r in rows) == 3 + OUTBOX_ROWS + 5
    assert {m.topic for m in messages} == {
        "egresswatch/ws/violations",
        "egresswatch/ws/observations",
    }
    sent = [m.payload["violation"] for m in messages if m.payload["type"] == "violation"]
    assert sorted(v["ts"] for v in sent) == sorted(v.ts for v in violations)
    json.dumps([m.payload for m in messages])  # plain JSON all through
    last = messages[-1].id
    with engine.begin() as conn:
        conn.execute(delete(OutboxMessage))
    writer.write(violation(99))
    writer.flush()
    with engine.connect() as conn:
        assert min(conn.execute(select(OutboxMessage.id)).scalars()) > last
    engine.dispose()


def test_without_the_flag_nothing_goes_to_the_outbox(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "s.db")
    writer = StoreWriter(engine, machine="ws")
    writer.write(violation(1))
    writer.flush()
    assert table(engine, "outbox") == []
    engine.dispose()


def test_the_collector_writes_the_same_rows_into_sqlite_too(tmp_path: Path) -> None:
    host = open_engine(tmp_path / "host.db")
    writer = StoreWriter(host, machine="ws", outbox=True)
    for i in range(10):
        writer.write(violation(i))
        writer.write(allowed(i))
    writer.flush()
    fleet = open_engine(tmp_path / "fleet.db")
    collector = Collector(fleet, parse_broker_url("mqtt://unused", {}))
    with host.connect() as conn:
        messages = conn.execute(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    for m in messages:
        raw = encode(
            instance="i" * 32, machine=m.machine, message_id=m.id, created=0, body=m.payload
        )
        assert collector.handle(raw) is Outcome.WRITTEN
        assert collector.handle(raw) is Outcome.DUPLICATE
    for name in ("observations", "hourly", "daily", "weekly", "totals", "daily_facets"):
        assert table(host, name) == table(fleet, name), name
    assert table(host, "violations") == table(fleet, "violations")
    # A row claiming another machine than its message is refused.
    forged = json.loads(
        encode(
            instance="j" * 32, machine="other", message_id=1, created=0, body=messages[0].payload
        )
    )
    assert collector.handle(json.dumps(forged).encode()) is Outcome.MALFORMED
    host.dispose()
    fleet.dispose()
