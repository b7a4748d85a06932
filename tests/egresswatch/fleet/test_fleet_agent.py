"""The fleet end to end, with the real commands: ``egresswatch run --broker``, ``egresswatch
collect`` into PostgreSQL, and a Mosquitto of the test's own that the test stops and starts
again. The agent captures on the host's end of a veth pair whose other end is in a namespace
of the test's own, where the TLS server is; the broker and PostgreSQL are on loopback, so the
agent reaches them, and nothing else on the machine is captured.

- The broker goes away for a while: the agent goes on recording, its outbox fills, and once the
  broker is back every violation made meanwhile reaches PostgreSQL, each exactly once.
- The agent is killed with SIGKILL while the broker is away and started again: no committed
  violation is lost, and it resumes publishing where it stopped.
- ``report --db postgresql://...`` reads the fleet database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from egresswatch.store import open_engine
from egresswatch.store.models import ViolationRecord
from tests import e2e_servers as servers
from tests.egresswatch.fleet.conftest import Broker
from tests.netns import PREFIX, Netns, cleanup_stale, wait_for_port

pytestmark = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.mosquitto,
    pytest.mark.postgres,
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[3]
EGRESSWATCH = str(Path(sys.executable).with_name("egresswatch"))
DENIED = "api.deepseek.com"
POLICY = """
version = 1
[[rule]]
id = "no-deepseek"
action = "deny"
provider = "deepseek"
reason = "not approved (SEC-123)"
"""


@contextlib.contextmanager
def host_veth() -> Iterator[tuple[str, Netns, str]]:
    """A namespace joined to this one by a veth pair: (the host's interface, the namespace,
    its address). Deleting the namespace deletes both ends."""
    cleanup_stale()
    pid = os.getpid()
    ns = Netns(f"{PREFIX}{pid}xf")
    host_if, subnet = f"ewf{pid % 100000}", f"10.201.{pid % 250}"

    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)

    ip("netns", "add", ns.name)
    try:
        ip("-n", ns.name, "link", "set", "lo", "up")
        ip("link", "add", host_if, "type", "veth", "peer", "name", "veth-f", "netns", ns.name)
        ip("addr", "add", f"{subnet}.1/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns.name, "addr", "add", f"{subnet}.2/24", "dev", "veth-f")
        ip("-n", ns.name, "link", "set", "veth-f", "up")
        yield host_if, ns, f"{subnet}.2"
    finally:
        ns.stop_processes()
        subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)


class TlsServer:
    """tests/e2e_servers.py's TLS server on port 443 in ``ns``, at ``address``."""

    def __init__(self, folder: Path, ns: Netns, address: str) -> None:
        cert, key = servers.make_cert(folder, [DENIED])
        self.address = address
        self.port = 443
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        ns.popen(
            sys.executable, str(REPO / "tests" / "e2e_servers.py"), "tls-server",
            str(self.port), str(cert), str(key), env=env,
        )  # fmt: skip
        wait_for_port(ns, self.port, limit=30)

    def handshakes(self, n: int) -> None:
        """``n`` TLS connections to the denied name (one violation each)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for _ in range(n):
            with (
                socket.create_connection((self.address, self.port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=DENIED) as conn,
            ):
                conn.sendall(f"GET / HTTP/1.1\r\nHost: {DENIED}\r\n\r\n".encode())
                conn.recv(1 << 16)
            time.sleep(0.02)


class Agent:
    """``egresswatch run --broker`` capturing on ``interface``, its store in ``folder``."""

    def __init__(self, folder: Path, broker: Broker, policy: Path, interface: str) -> None:
        self.interface = interface
        self.db = folder / "agent.db"
        self.status_path = folder / "agent.db.status.json"
        self.folder = folder
        self.broker = broker
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.status_path.unlink(missing_ok=True)
        out = (self.folder / f"agent-{self.starts}.out").open("wb")
        err = (self.folder / f"agent-{self.starts}.err").open("wb")
        self.process = subprocess.Popen(
            [EGRESSWATCH, "run", "-i", self.interface, "--user", "root", "--format", "jsonl",
             "--db", str(self.db), "--policy", str(self.policy), "--broker", self.broker.url,
             "--stats"],
            stdout=out, stderr=err,
        )  # fmt: skip
        out.close()
        err.close()
        _until(lambda: self.status() is not None, what="the agent's status file")
        time.sleep(0.5)  # the capture is open before the status is first written; be sure

    def status(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return doc

    def stderr(self) -> str:
        return (self.folder / f"agent-{self.starts}.err").read_text(errors="replace")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(30)
        self.process = None
        return code

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _until(
    check: Callable[[], bool], *, timeout: float = 30.0, what: str, why: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{why()}")
        time.sleep(0.1)


def _violations(url: str) -> list[tuple[str, float, int]]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ViolationRecord.machine, ViolationRecord.ts, ViolationRecord.sport)
            ).all()
    finally:
        engine.dispose()
    return sorted((str(m), float(t), int(p)) for m, t, p in rows)


@pytest.fixture
def lab(
    tmp_path: Path, make_broker: Callable[..., Broker], pg_url: str
) -> Iterator[tuple[Agent, Broker, TlsServer, subprocess.Popen[bytes], str]]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    broker = make_broker()
    with host_veth() as (interface, ns, address):
        server = TlsServer(tmp_path, ns, address)
        with (tmp_path / "collector.err").open("wb") as err:
            collector = subprocess.Popen(
                [EGRESSWATCH, "collect", "--broker", broker.url, "--db", pg_url, "--stats"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        agent = Agent(tmp_path, broker, policy, interface)
        try:
            yield agent, broker, server, collector, pg_url
        finally:
            if agent.alive():
                agent.kill()
            if collector.poll() is None:
                collector.kill()
                collector.wait(10)


def test_broker_away_then_back_every_violation_once_and_sigkill_resumes(
    lab: tuple[Agent, Broker, TlsServer, subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    agent, broker, server, collector, pg_url = lab
    agent.start()

    # Broker up: violations flow through to PostgreSQL.
    server.handshakes(3)
    _until(lambda: len(_violations(pg_url)) == 3, what="3 violations in PostgreSQL")

    # Broker away: the agent keeps recording and its outbox fills.
    broker.stop()
    before = agent.status()
    assert before is not None
    server.handshakes(4)

    def queued() -> bool:
        doc = agent.status()
        return (
            doc is not None
            and doc["violations"] == 7
            and doc["fleet"]["pending"] >= 4
            and not doc["fleet"]["connected"]
        )

    _until(
        queued,
        what="7 violations recorded and at least 4 messages waiting",
        why=lambda: f"{agent.status()}\n{agent.stderr()}\n{_violations(str(agent.db))}",
    )
    now = agent.status()
    assert now is not None
    assert agent.alive()
    assert now["counters"]["frames"] > before["counters"]["frames"]
    assert now["fleet"]["failures"] >= 1
    assert len(_violations(str(agent.db))) == 7
    assert len(_violations(pg_url)) == 3

    # Killed with SIGKILL while the broker is away, started again: nothing committed is lost.
    agent.kill()
    assert len(_violations(str(agent.db))) == 7
    agent.start()
    server.handshakes(3)
    _until(
        lambda: len(_violations(str(agent.db))) == 10,
        what="10 violations in the store",
        why=lambda: f"{_violations(str(agent.db))}\n{agent.stderr()}\n{agent.status()}",
    )

    # Broker back: everything reaches PostgreSQL, each violation once.
    broker.start()
    _until(lambda: len(_violations(pg_url)) == 10, timeout=60, what="10 violations in PostgreSQL")
    time.sleep(2.0)  # anything sent twice would have arrived by now
    fleet = _violations(pg_url)
    assert fleet == _violations(str(agent.db))
    assert len(set(fleet)) == 10
    _until(
        lambda: (agent.status() or {}).get("fleet", {}).get("pending") == 0,
        what="the outbox drained",
    )

    assert agent.terminate() == 0, agent.stderr()
    collector.terminate()
    assert collector.wait(30) == 0
    err = (tmp_path / "collector.err").read_text()
    counters = json.loads(err.strip().splitlines()[-1])
    assert counters["collector.malformed"] == 0

    # The security team's report reads the fleet database.
    done = subprocess.run(
        [EGRESSWATCH, "report", "--db", pg_url, "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["violations"] == 10, report["summary"]
