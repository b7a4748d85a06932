"""A replay killed with SIGKILL while it writes leaves a store that opens, holding exactly the
violations it had committed: a prefix of what a complete run stores, whole rows only."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.synth import PcapWriter, Traffic, client_hello
from egresswatch.store import open_engine

REPO = Path(__file__).resolve().parents[2]
EGRESSWATCH = [sys.executable, "-m", "egresswatch"]
GEO = REPO / "geo" / "sample"
POLICY = """
version = 1
[[rule]]
id = "no-deepseek"
action = "deny"
provider = "deepseek"
reason = "not approved (SEC-1)"
"""


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 connections, one in three to a denied provider, each its own violation."""
    path = tmp_path_factory.mktemp("crash") / "many.pcap"
    hellos = {name: client_hello(name) for name in ("api.deepseek.com", "pypi.org")}
    with path.open("wb") as fh:
        traffic = Traffic(PcapWriter(fh), start=1_790_000_000.0)
        for i in range(60_000):
            name = "api.deepseek.com" if i % 3 == 0 else "pypi.org"
            addr = "116.205.40.112" if i % 3 == 0 else "151.101.64.223"
            traffic.tcp(
                f"10.0.{i % 200}.2", 10_000 + i % 50_000, addr, 443, hellos[name], handshake=False
            )
    return path


def _replay(capture: Path, policy: Path, db: Path) -> subprocess.Popen[bytes]:
    with db.with_suffix(".err").open("ab") as err:
        return _start(capture, policy, db, err)


def _start(capture: Path, policy: Path, db: Path, err: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *EGRESSWATCH,
            "replay",
            "--geo-dir",
            str(GEO),
            "--policy",
            str(policy),
            "--db",
            str(db),
            str(capture),
        ],
        stdout=subprocess.DEVNULL,
        stderr=err,  # type: ignore[arg-type]
        cwd=REPO,
    )


def _violations(db: Path) -> list[tuple[float, int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT ts, sport, src FROM violations ORDER BY id").fetchall()


def _committed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM violations").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet


def test_sigkill_mid_write_keeps_every_committed_violation(capture: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    full_db = tmp_path / "full.db"
    done = _replay(capture, policy, full_db)
    assert done.wait(timeout=600) == 0, full_db.with_suffix(".err").read_text()
    full = _violations(full_db)
    assert len(full) == 20_000

    for attempt, delay in enumerate((0.0, 0.3, 0.9)):
        db = tmp_path / f"killed{attempt}.db"
        proc = _replay(capture, policy, db)
        deadline = time.monotonic() + 120
        while _committed(db) == 0:
            assert proc.poll() is None, "replay ended before it committed anything"
            assert time.monotonic() < deadline, "no violation committed within 120 s"
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the replay finished before it was killed"

        # It opens: migrations see a current schema, SQLite finds no damage.
        engine = open_engine(db)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
            hourly = conn.exec_driver_sql("SELECT sum(count) FROM observations").scalar_one()
            daily = conn.exec_driver_sql("SELECT sum(count) FROM daily").scalar_one()
        engine.dispose()
        # The counts were written in the same transactions as each other.
        assert hourly == daily
        kept = _violations(db)
        # Mid-write: some committed, not all; exactly the first ones, in order.
        assert 0 < len(kept) < len(full)
        assert kept == full[: len(kept)]

        # And the agent can go on writing to it.
        again = _replay(capture, policy, db)
        assert again.wait(timeout=600) == 0
        assert len(_violations(db)) == len(kept) + len(full)
