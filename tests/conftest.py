"""Test-wide wiring: markers that skip with a reason naming what is missing, and CI strictness.

On a user's machine, a test that needs root, network namespaces, tshark, tcpdump, Mosquitto or
PostgreSQL skips and says which. Under ``CI=true`` nothing may skip: a skip is turned into a
failure, so a CI machine that lacks something cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO.parent / "shared" / "captures"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@cache
def _netns_ok() -> str | None:
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    name = f"ewprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


PG_ADMIN_URL = os.environ.get("EGRESSWATCH_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")


@cache
def _postgres_ok() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "needs psycopg (pip install 'psycopg[binary]')"
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"needs PostgreSQL at {PG_ADMIN_URL} ($EGRESSWATCH_TEST_PG_URL): {first}"
    return None


def _missing(marker: str) -> str | None:
    """Why a test with ``marker`` cannot run here, or None when it can."""
    if marker == "root":
        return None if os.geteuid() == 0 else "needs root (raw sockets)"
    if marker == "netns":
        return _netns_ok()
    if marker in {"tshark", "tcpdump"}:
        return None if shutil.which(marker) else f"needs {marker} (apt install {marker})"
    if marker == "postgres":
        return _postgres_ok()
    if marker == "mosquitto":
        return None if shutil.which("mosquitto") else "needs mosquitto (apt install mosquitto)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers():
        reason = _missing(mark.name)
        if reason:
            pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true, which must run every test: {reason}"


@pytest.fixture(scope="session")
def captures() -> Path:
    """The real captures in ../shared/captures (nDPI's test suite)."""
    if not CAPTURES.is_dir():
        pytest.skip(f"needs the shared captures folder at {CAPTURES}")
    return CAPTURES


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped after), as a ``--db`` URL."""
    import psycopg

    reason = _postgres_ok()
    if reason:
        pytest.skip(reason)
    name = f"egw_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
