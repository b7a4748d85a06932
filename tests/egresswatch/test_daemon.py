"""The agent behind `egresswatch run`: SIGHUP reloads (a bad policy keeps the old one),
`egresswatch status` reads the running agent, overload is counted, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from egresswatch.daemon import Agent, AgentConfig
from egresswatch.enrichment import ObservationEnricher
from geo.enrich import Enricher
from probes.observation import Observation
from tests.netns import veth_pair, wait_for_file

EGRESSWATCH = str(Path(sys.executable).with_name("egresswatch"))
GOOD = 'version = 1\n[[rule]]\nid = "a"\naction = "deny"\nhost = "x.example"\n'
GOOD2 = GOOD + '[[rule]]\nid = "b"\naction = "allow"\nhost = "y.example"\n'
BROKEN = 'version = 1\n[[rule]]\nid = "a"\naction = "deny"\n'  # a rule without a selector


def _status(db: Path) -> tuple[int, dict[str, object]]:
    import subprocess

    done = subprocess.run(
        [EGRESSWATCH, "status", "--db", str(db), "--format", "json"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    doc = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, doc


def _wait_status(db: Path, check: object, limit: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + limit
    doc: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, doc = _status(db)
        if doc and check(doc):  # type: ignore[operator]
            return doc
        time.sleep(0.2)
    raise AssertionError(f"status never matched: {doc}")


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_sighup_reload_status_and_clean_stop(tmp_path: Path) -> None:
    policy, db, err = tmp_path / "policy.toml", tmp_path / "agent.db", tmp_path / "err.txt"
    policy.write_text(GOOD)
    with veth_pair() as pair, err.open("wb") as err_file, open(os.devnull, "wb") as out:
        agent = pair.client.ns.popen(
            EGRESSWATCH, "run", "-i", pair.client.ifname, "--format", "jsonl",
            "--policy", str(policy), "--db", str(db), "--duration", "120",
            stdout=out, stderr=err_file,
        )  # fmt: skip
        try:
            wait_for_file(err, "capturing on", proc=agent)
            doc = _wait_status(db, lambda d: d.get("running"))
            assert "1 rules" in str(doc["policy"])
            code, _ = _status(db)
            assert code == 0

            policy.write_text(BROKEN)
            os.kill(agent.pid, signal.SIGHUP)
            text = wait_for_file(err, "keeping the policy in force", proc=agent)
            assert "selector" in text
            doc = _wait_status(db, lambda d: d["counters"]["reload_failures"] == 1)  # type: ignore[index]
            assert "1 rules" in str(doc["policy"]) and "reload failed" in str(doc["policy"])

            policy.write_text(GOOD2)
            os.kill(agent.pid, signal.SIGHUP)
            doc = _wait_status(db, lambda d: d["counters"]["reloads"] == 1)  # type: ignore[index]
            assert "2 rules" in str(doc["policy"])

            os.kill(agent.pid, signal.SIGTERM)
            assert agent.wait(timeout=30) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    code, doc = _status(db)
    assert code == 3
    assert doc["running"] is False


class _Frames:
    """A capture stand-in that hands over prepared batches (the queue logic under test)."""

    def __init__(self, batches: int) -> None:
        self.left = batches

    def read_batch(self, timeout: float) -> list[tuple[float, int, bytes]]:
        if self.left <= 0:
            time.sleep(min(timeout, 0.01))
            return []
        self.left -= 1
        return [(time.time(), 101, b"\x45" + b"\x00" * 19)] * 10

    def stats(self) -> dict[str, int]:
        return {}


KINDS = ("tls", "quic", "dns", "tls", "tls", "quic", "dns", "tls", "quic", "tls")


def _observe(_sensor: object, batch: list[object]) -> list[Observation]:
    """Each frame completes an observation (4 DNS answers and 6 handshakes in 10)."""
    return [
        Observation(ts=1.0, kind=kind, transport="udp" if kind != "tls" else "tcp",  # type: ignore[arg-type]
                    src="10.0.0.2", dst="192.0.2.1", sport=40000, dport=443)
        for kind, _frame in zip(KINDS, batch, strict=True)
    ]  # fmt: skip


class _Slow:
    """A sink slower than the capture: overload. ``probe`` runs at each write."""

    def __init__(self, probe: Callable[[], None] | None = None) -> None:
        self.seen: list[Observation] = []
        self.probe = probe

    def write(self, obs: Observation) -> None:
        if self.probe is not None:
            self.probe()
        self.seen.append(obs)
        time.sleep(0.0005)

    def close(self) -> None:
        pass


def _agent(sink: _Slow, batches: int, **queue: int) -> Agent:
    return Agent(
        _Frames(batches=batches),  # type: ignore[arg-type]
        sink,
        ObservationEnricher(Enricher()),
        AgentConfig(policy_file=None, geo_dir=Path("/nonexistent"), status_path=None, duration=3),
        **queue,
    )


def test_overload_drops_are_counted_exactly_not_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    import egresswatch.daemon as daemon

    monkeypatch.setattr(daemon, "observe", _observe)
    sink = _Slow()
    agent = _agent(sink, 400, queue_batches=8)
    asyncio.run(agent.run())
    c = agent.counters
    # Every batch either went through the queue or was counted as dropped, observation by
    # observation and kind by kind: what was judged plus what was dropped is all there was.
    assert c["queue.batches"] + c["queue.dropped_batches"] == 400
    assert c["queue.dropped_batches"] > 0
    assert c["queue.dropped_observations"] == 10 * c["queue.dropped_batches"]
    for kind in ("tls", "quic", "dns"):
        judged = sum(1 for o in sink.seen if o.kind == kind)
        assert judged + c[f"queue.dropped_{kind}"] == 400 * KINDS.count(kind)


@pytest.mark.parametrize(("batches", "observations"), [(1000, 35), (3, 1000)])
def test_the_queue_is_bounded_in_observations_too(
    monkeypatch: pytest.MonkeyPatch, batches: int, observations: int
) -> None:
    import egresswatch.daemon as daemon

    # 10 observations a batch: at most 3 batches fit under 35 (or under 3 batches).
    seen: list[int] = []
    monkeypatch.setattr(daemon, "observe", _observe)
    agent = _agent(
        _Slow(lambda: seen.append(agent._queued)),
        400,
        queue_batches=batches,
        queue_observations=observations,
    )
    asyncio.run(agent.run())
    c = agent.counters
    assert c["queue.batches"] + c["queue.dropped_batches"] == 400
    assert c["queue.dropped_batches"] > 0
    assert max(seen) <= 30  # what was still queued behind the batch being written
    assert agent._queued == 0


def test_the_agent_says_when_it_is_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # Process attribution sheds its look-ups when the queue is an eighth full: behind() turns
    # true with the queue filling, and false again once it has drained.
    import egresswatch.daemon as daemon

    states: list[tuple[int, bool]] = []
    monkeypatch.setattr(daemon, "observe", _observe)
    agent = _agent(
        _Slow(lambda: states.append((agent._queued, agent.behind()))),
        200,
        queue_batches=1000,
        queue_observations=800,
    )
    asyncio.run(agent.run())
    assert all(behind == (queued > 100) for queued, behind in states)
    assert any(behind for _q, behind in states)
    assert not agent.behind()


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_drops_root_to_the_service_user_keeping_cap_net_raw_only() -> None:
    import shutil
    import tempfile

    import dns.message

    from egresswatch.privileges import CAP_NET_RAW, effective_capabilities

    # Not under pytest's tmp_path: its parents are private to root, and `nobody` must reach
    # the store.
    folder = Path(tempfile.mkdtemp(prefix="egresswatch-drop-", dir="/tmp"))
    db, err = folder / "agent.db", folder / "err.txt"
    try:
        with veth_pair() as pair, err.open("wb") as err_file, open(os.devnull, "wb") as out:
            agent = pair.client.ns.popen(
                EGRESSWATCH, "run", "-i", pair.client.ifname, "--format", "jsonl",
                "--db", str(db), "--duration", "60", "--user", "nobody",
                stdout=out, stderr=err_file,
            )  # fmt: skip
            try:
                text = wait_for_file(err, "running as nobody", proc=agent)
                status = Path(f"/proc/{agent.pid}/status").read_text()
                uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
                assert uids.split()[1:] == ["65534"] * 4, uids
                assert effective_capabilities(agent.pid) == 1 << CAP_NET_RAW, text
                # It still captures and stores, as nobody.
                with pair.client.ns.entered():
                    import socket

                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        wire = dns.message.make_query("after-drop.test", "A").to_wire()
                        sock.sendto(wire, (pair.server.ip4, 53))
                    finally:
                        sock.close()
                _wait_status(db, lambda d: d["counters"].get("observations", 0) >= 1)  # type: ignore[index]
                os.kill(agent.pid, signal.SIGTERM)
                assert agent.wait(timeout=30) == 0
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
        import sqlite3

        with sqlite3.connect(db) as conn:
            hosts = [h for (h,) in conn.execute("SELECT host FROM observations")]
        assert "after-drop.test" in hosts
        assert db.stat().st_uid == 65534
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_status_text_shows_drops_by_kind_attribution_and_the_fleet(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from egresswatch.cli import main

    db = tmp_path / "agent.db"
    counters = {
        "frames": 1200, "observations": 300, "capture.kernel_drops": 4,
        "queue.dropped_tls": 7, "queue.dropped_quic": 2, "queue.dropped_dns": 1,
        "proc.attributed": 90, "proc.unattributed": 10, "proc.busy": 6,
    }  # fmt: skip
    doc = {
        "pid": os.getpid(), "running": True, "updated": time.time(), "uptime": 65,
        "interfaces": ["eth0"], "db": str(db), "policy": "none (audit)", "geo_dir": "/x",
        "geo_data_age": None, "violations": 3, "counters": counters,
        "fleet": {
            "broker": "mqtt://broker:1883", "connected": False, "published": 41,
            "pending": 100_000, "pending_over": True, "oldest_pending": time.time() - 7200,
            "last_error": "connection refused",
        },
    }  # fmt: skip
    (tmp_path / "agent.db.status.json").write_text(json.dumps(doc))
    done = CliRunner().invoke(main, ["status", "--db", str(db)])
    assert done.exit_code == 0, done.output
    assert "4 frames by the kernel" in done.output
    assert "7 TLS and 2 QUIC handshakes, 1 DNS answers" in done.output
    assert "90% of connections attributed (6 left unattributed to keep up)" in done.output
    assert (
        "fleet:        mqtt://broker:1883 not connected, 41 published, 100,000+ waiting "
        "(oldest 2h 0m ago); last error: connection refused"
    ) in done.output
