"""CPU of live capture under bulk traffic: the ``egresswatch run`` agent next to tcpdump.

A veth pair between two network namespaces (tests/netns.py, names ``egwL<pid>...``); a server
sends SIZE bytes over TCP from port 443 to a client (download), then the client sends SIZE bytes
to the server's port 443 (upload: what the client-to-server rule of probes/bpf.py is about).
In the client namespace, at the same time and with the same filter
(probes.bpf.filter_expression()):

- ``egresswatch``: the real agent, ``egresswatch run -i VETH --no-db --format jsonl
  --user root --stats`` (stdout to /dev/null), capture thread, sensor, enrichment, process
  attribution and output all in;
- ``tcpdump``: ``tcpdump -i VETH -B 32768 -w /dev/null 'FILTER'`` (the agent's 32 MiB buffer,
  ``probes.live.DEFAULT_BUFFER_BYTES``).

Each process's CPU is the time its threads spent on a CPU (``/proc/PID/task/*/schedstat``, in
nanoseconds; utime + stime are sampled at the 250 Hz tick here, too coarse for tenths of a
second), read when it is ready and again when the transfer ends, so start-up (imports,
libpcap's set-up) is not counted. The kernel's filtering and copying mostly run in softirq
context on the sender's and receiver's time, but a softirq that runs while a capture process
is on the CPU counts as its (this kernel has no IRQ time accounting): a process that wakes
often under load is charged some of the transfer's kernel work. ``--subject loop`` measures a
bare ``LiveCapture.read_batch`` loop instead of the agent (the capture alone).

Both GSO settings run by default (``--gso on|off|both``): on, the veth hands the captures 64 KB
super-packets, as a host's own NIC does; off, wire-sized segments, as a router or a device
without segmentation offload would see them: TSO, GSO and GRO off with ``ethtool -K``, at 5-9
Gbit/s of 1448-byte segments here (``veth_pair(gso=False)``, one segment per packet from TCP
itself, manages 0.4 Gbit/s; it is the fallback without ethtool).

A third process runs beside them: ``floor``, the same agent command capturing on ``lo`` of the
client namespace, which carries none of the traffic. Its CPU is what the agent costs on that
row whatever it captures: its timers and event loop (about 30 wake-ups a second when idle:
``READ_WAIT`` is 0.25 s in egresswatch/daemon.py, where tcpdump wakes once a second), and the
softirq work of the transfer that runs while it is on the CPU and is charged to it.

The pass mark (issue 5): the agent's CPU at most 2x tcpdump's. A row passes when it is, or
when what the agent used beyond the floor is, give or take 10 ms (``ok (floor)``: what the
agent spends on one connection, its SYN, process attribution and observation, which tcpdump
does not do; 2.5 ticks of the 250 Hz clock). The floor is printed, so a row that only passes
by it says so. Needs root and network namespaces; prints why and exits 0
otherwise. ``make bench`` runs it (bench/run.py) with ``--size 512M``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probes.bpf import filter_expression  # noqa: E402
from probes.live import DEFAULT_BUFFER_BYTES  # noqa: E402
from tests.netns import (  # noqa: E402
    VethPair,
    disable_offloads,
    unavailable,
    veth_pair,
    wait_for_port,
)

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TCPDUMP_BUFFER = str(DEFAULT_BUFFER_BYTES >> 10)
"""tcpdump's ``-B`` (KiB): the agent's socket buffer."""
NETNS_PREFIX = "egwL"
"""Namespaces made by the live benchmarks are named ``egwL<pid>...``."""
TARGET = 2.0
"""Issue 5: the agent may use at most this many times tcpdump's CPU."""
SLACK = 0.010
"""Seconds of CPU below which the comparison over the floor says nothing (see the docstring)."""

LOOP = """
import json, signal, sys
from probes.live import LiveCapture
stop = False
def halt(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, halt)
cap = LiveCapture([sys.argv[1]], bpf=sys.argv[2] or None)
print("capturing on", file=sys.stderr, flush=True)
frames = 0
while not stop:
    frames += len(cap.read_batch(0.25))
cap.close()
print(json.dumps({f"capture.{k}": v for k, v in cap.stats().items()}), file=sys.stderr)
"""

SENDER = """
import socket, sys
size = int(sys.argv[2])
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn, _ = srv.accept()
chunk = memoryview(bytes(range(256)) * 4096)
left = size
while left:
    left -= conn.send(chunk[: min(left, len(chunk))])
conn.close()
"""

RECEIVER = """
import socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.connect((sys.argv[1], int(sys.argv[2])))
buf = bytearray(1 << 20)
total = 0
while n := sock.recv_into(buf):
    total += n
print(total)
"""

SINK = """
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn, _ = srv.accept()
buf = bytearray(1 << 20)
total = 0
while n := conn.recv_into(buf):
    total += n
print(total)
"""

UPLOADER = """
import socket, sys
size = int(sys.argv[3])
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
chunk = memoryview(bytes(range(256)) * 4096)
left = size
while left:
    left -= sock.send(chunk[: min(left, len(chunk))])
sock.close()
"""


def run_seconds(pid: int) -> float:
    """Time ``pid``'s threads spent on a CPU (``/proc/PID/task/*/schedstat``), in seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended
    return total / 1e9


def wait_line(
    proc: subprocess.Popen[bytes], marker: bytes, stream: str, limit: float, name: str
) -> bytes:
    """Wait until ``proc`` printed ``marker`` on ``stream``; what it printed so far."""
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    os.set_blocking(pipe.fileno(), False)
    seen = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        seen += pipe.read() or b""
        if marker in seen:
            return seen
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise SystemExit(f"{name} did not start: {seen.decode(errors='replace')[-2000:]}")


def agent_argv(ifname: str, *, subject: str, expression: str) -> list[str]:
    """The command line of the process measured against tcpdump."""
    if subject == "loop":
        return [sys.executable, "-c", LOOP, ifname, expression]
    return [
        sys.executable, "-m", "egresswatch", "run", "-i", ifname, "--no-db",
        "--format", "jsonl", "--user", "root", "--stats",
    ]  # fmt: skip


def final_counters(stderr: bytes) -> dict[str, int]:
    """The counters ``run --stats`` prints last on stderr (one JSON object)."""
    for line in reversed(stderr.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise SystemExit(f"no counters from the agent: {stderr.decode(errors='replace')[-2000:]}")


def tcpdump_counts(stderr: bytes) -> tuple[int, int]:
    """``(captured, dropped by kernel)`` from tcpdump's closing lines."""
    report = stderr.decode(errors="replace").splitlines()
    captured = next((int(x.split()[0]) for x in report if "packets captured" in x), -1)
    dropped = next((int(x.split()[0]) for x in report if "dropped by kernel" in x), -1)
    return captured, dropped


@dataclass
class Row:
    direction: str
    gso: bool
    size: int
    wall: float
    packets: int
    ew_cpu: float
    td_cpu: float
    floor_cpu: float
    ew_frames: int
    td_frames: int
    ew_drops: int
    td_drops: int
    excluded: int

    @property
    def ratio(self) -> float:
        return self.ew_cpu / self.td_cpu if self.td_cpu > 0 else float("inf")

    @property
    def verdict(self) -> str:
        if self.ew_cpu <= TARGET * self.td_cpu:
            return "ok"
        if self.ew_cpu - self.floor_cpu <= TARGET * self.td_cpu + SLACK:
            return "ok (floor)"
        return "OVER TARGET"


def run_transfer(pair: VethPair, size: int, *, upload: bool, expression: str, subject: str) -> Row:
    client, server = pair.client.ns, pair.server.ns
    py = sys.executable
    if upload:
        server.popen(py, "-c", SINK, "443", stdout=subprocess.PIPE)
    else:
        server.popen(py, "-c", SENDER, "443", str(size))
    wait_for_port(server, 443)

    argv = agent_argv(pair.client.ifname, subject=subject, expression=expression)
    # cwd: ``python -m`` puts the working directory first on sys.path.
    ours = client.popen(*argv, stdout=subprocess.DEVNULL, env=ENV, cwd=str(REPO))
    theirs = client.popen(
        "tcpdump", "-i", pair.client.ifname, "-B", TCPDUMP_BUFFER, "-w", "/dev/null", expression,
    )  # fmt: skip
    floor = client.popen(
        *agent_argv("lo", subject=subject, expression=expression),
        stdout=subprocess.DEVNULL,
        env=ENV,
        cwd=str(REPO),
    )
    early = wait_line(ours, b"capturing on", "stderr", 60, "the agent")
    wait_line(theirs, b"listening on", "stderr", 30, "tcpdump")
    wait_line(floor, b"capturing on", "stderr", 60, "the agent on lo")
    time.sleep(1.0)  # the agent's threads and event loop start after that line
    procs = (ours, theirs, floor)
    start = {p.pid: run_seconds(p.pid) for p in procs}
    started = time.perf_counter()
    if upload:
        client.run(py, "-c", UPLOADER, pair.server.ip4, "443", str(size), timeout=600)
    else:
        got = client.run(py, "-c", RECEIVER, pair.server.ip4, "443", timeout=600).stdout
        if int(got) != size:
            raise SystemExit(f"the client received {int(got)} bytes of {size}")
    wall = time.perf_counter() - started
    time.sleep(0.5)  # let both drain what the filter passed at the end
    used = {p.pid: run_seconds(p.pid) - start[p.pid] for p in procs}

    ours.send_signal(signal.SIGTERM)
    theirs.send_signal(signal.SIGINT)
    _, err = ours.communicate(timeout=60)
    counters = final_counters(early + err)
    _, err = theirs.communicate(timeout=30)
    captured, dropped = tcpdump_counts(err)
    client.stop_processes()
    server.stop_processes()
    return Row(
        direction="upload to :443" if upload else "download from :443",
        gso=pair.gso,
        size=size,
        wall=wall,
        packets=counters.get("capture.interface_packets", 0),
        ew_cpu=used[ours.pid],
        td_cpu=used[theirs.pid],
        floor_cpu=used[floor.pid],
        ew_frames=counters.get("capture.received", 0),
        td_frames=captured,
        ew_drops=counters.get("capture.kernel_drops", 0)
        + counters.get("queue.dropped_observations", 0),
        td_drops=dropped,
        excluded=counters.get("capture.flows_excluded", 0),
    )


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def print_rows(rows: list[Row], subject: str) -> None:
    name = "egresswatch run" if subject == "agent" else "LiveCapture loop"
    print(
        f"  CPU seconds (schedstat) while the transfer ran: ew = {name}, td = tcpdump, same "
        f"filter, same traffic;\n  floor = the same agent on lo (no traffic there); target: "
        f"ew at most {TARGET:g}x td (or ew - floor, give or take {SLACK * 1000:.0f} ms)"
    )
    print(
        f"  {'transfer':<19} {'GSO':>3} {'size':>7} {'wall':>7} {'Gbit/s':>6} {'pkts':>9} "
        f"{'ew CPU':>7} {'td CPU':>7} {'floor':>6} {'ew/td':>6} {'frames ew/td':>15} "
        f"{'drops ew/td':>11} {'excl':>4}  verdict"
    )
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio < 1000 else ">999"
        print(
            f"  {r.direction:<19} {'on' if r.gso else 'off':>3} {r.size / 2**20:>5,.0f}Mi "
            f"{r.wall:>6.2f}s {r.size / r.wall / 1e9 * 8:>6.1f} {r.packets:>9,} "
            f"{r.ew_cpu:>6.3f}s {r.td_cpu:>6.3f}s {r.floor_cpu:>5.3f}s {ratio:>6} "
            f"{f'{r.ew_frames:,}/{r.td_frames:,}':>15} {f'{r.ew_drops}/{r.td_drops}':>11} "
            f"{r.excluded:>4}  {r.verdict}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="bytes per transfer (K, M, G suffixes)")
    parser.add_argument("--gso", choices=["on", "off", "both"], default="both")
    parser.add_argument("--no-gso", action="store_true", help="same as --gso off")
    parser.add_argument("--download-only", action="store_true", help="skip the upload rows")
    parser.add_argument("--upload-only", action="store_true", help="skip the download rows")
    parser.add_argument(
        "--subject",
        choices=["agent", "loop"],
        default="agent",
        help="agent: `egresswatch run`; loop: a bare LiveCapture.read_batch loop",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run every row this many times")
    args = parser.parse_args()
    if reason := unavailable():
        print(f"  skipped: {reason}")
        return 0
    if shutil.which("tcpdump") is None:
        print("  skipped: needs tcpdump")
        return 0
    size = parse_size(args.size)
    gsos = {"on": [True], "off": [False], "both": [True, False]}["off" if args.no_gso else args.gso]
    directions = [False, True]
    if args.download_only:
        directions = [False]
    elif args.upload_only:
        directions = [True]
    rows = []
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"  load average before: {load} ({os.cpu_count()} CPUs)")
    for gso in gsos:
        # Offloads are turned off with ethtool where there is one; else one segment per packet.
        with veth_pair(gso=gso or shutil.which("ethtool") is not None, prefix=NETNS_PREFIX) as pair:
            if not gso and shutil.which("ethtool") is not None:
                for side in (pair.client, pair.server):
                    if why := disable_offloads(side):
                        raise SystemExit(why)
                pair = dataclasses.replace(pair, gso=False)
            with pair.client.ns.entered():
                expression = filter_expression()
            for upload in directions:
                for _ in range(args.repeat):
                    rows.append(
                        run_transfer(
                            pair, size, upload=upload, expression=expression, subject=args.subject
                        )
                    )
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"  load average after: {load}")
    print_rows(rows, args.subject)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
