"""`egresswatch run` as a process in a network namespace: what it captured it reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import dns.message
import pytest

from tests.netns import veth_pair, wait_for_file

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

EGRESSWATCH = str(Path(sys.executable).with_name("egresswatch"))


def test_stop_reads_frames_still_queued_in_the_socket(tmp_path: Path) -> None:
    """Frames that passed the kernel filter before SIGTERM are observed, not lost.

    The agent is paused (SIGSTOP) while the queries go out, so they wait in its socket; it is
    then told to stop and resumed. Before the fix it exited having read none of them.
    """
    queries = 9000  # more than two batches (MAX_BATCH) wait in the socket
    out_path, err_path = tmp_path / "out.jsonl", tmp_path / "err.txt"
    with veth_pair() as pair, out_path.open("wb") as out, err_path.open("wb") as err:
        agent = pair.client.ns.popen(
            EGRESSWATCH,
            "run",
            "-i",
            pair.client.ifname,
            "--format",
            "jsonl",
            "--duration",
            "120",
            "--stats",
            "--db",
            str(tmp_path / "store.db"),
            stdout=out,
            stderr=err,
        )
        try:
            wait_for_file(err_path, "capturing on", proc=agent)
            os.kill(agent.pid, signal.SIGSTOP)
            with pair.client.ns.entered():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    for i in range(queries):
                        wire = dns.message.make_query(f"q{i}.drain.test", "A").to_wire()
                        sock.sendto(wire, (pair.server.ip4, 53))
                finally:
                    sock.close()
            os.kill(agent.pid, signal.SIGTERM)
            os.kill(agent.pid, signal.SIGCONT)
            assert agent.wait(timeout=60) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    seen = {json.loads(line)["qname"] for line in out_path.read_text().splitlines()}
    assert seen == {f"q{i}.drain.test" for i in range(queries)}
    counters = json.loads(err_path.read_text().strip().splitlines()[-1])
    assert counters["capture.kernel_drops"] == 0
    assert counters["capture.received"] >= queries
