"""A Mosquitto of the test's own, on a free port, that a test may stop and start again.

Never the shared broker on 1883: these tests kill theirs. Persistence is on (in the test's
temporary folder) so that QoS 1 sessions and queued messages survive a restart.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process under a config written to ``folder``."""

    def __init__(self, folder: Path, *, extra: str = "", scheme: str = "mqtt") -> None:
        self.folder = folder
        self.port = free_port()
        self.scheme = scheme
        self.host = "127.0.0.1"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> None:
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        conf = self.folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {data}/",
            "max_queued_messages 0",
            "user root",
            f"log_dest file {self.log}",
        ]
        if "password_file" not in self.extra:
            lines.append("allow_anonymous true")
        conf.write_text("\n".join(lines) + "\n" + self.extra)
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err} {self._log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self._log()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def _log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start brokers (``make_broker(folder, extra=...)``); all stopped after the test."""
    started: list[Broker] = []

    def factory(folder: Path | None = None, **kwargs: str) -> Broker:
        broker = Broker(folder or tmp_path, **kwargs)
        broker.start()
        started.append(broker)
        return broker

    yield factory
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """A running broker of the test's own."""
    return make_broker()
