"""CPU of live capture under bulk traffic: LiveCapture's reading loop next to tcpdump.

A veth pair between two network namespaces (tests/netns.py); a server sends SIZE bytes over
TCP from port 443 to a client. In the client namespace, at the same time and with the same
filter (probes.bpf.filter_expression()):

- ``egresswatch``: a Python process reading ``LiveCapture.read_batch`` in a loop;
- ``tcpdump``: ``tcpdump -i veth -w /dev/null 'FILTER'`` (same 8 MiB kernel buffer).

Each process's CPU (utime + stime from /proc/PID/stat) is sampled when it is ready and again
when the transfer ends, so start-up (Python's imports, libpcap's set-up) is not counted. The
loop waits up to ``--timeout`` (1 s, as tcpdump's packet buffer timeout) per ``read_batch``:
with tick-based accounting, a process that wakes often while the kernel is busy with the
transfer's softirqs gets charged some of them (0.1 s wake-ups showed 0.06 s per 256 MB that
1 s wake-ups did not). The kernel's own work (running the filter, copying into tcpdump's ring)
happens in softirq context and is charged to neither.

A second row does the same transfer the other way (client to server port 443, an upload: what
the client-to-server heuristic of probes/bpf.py is about); ``--download-only`` skips it.
``--no-gso`` makes the veth hand the captures wire-sized segments instead of 64 KB
super-packets, as a router or a device without segmentation offload would.

Needs root and network namespaces; prints why and exits 0 otherwise. ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probes.bpf import filter_expression  # noqa: E402
from tests.netns import VethPair, unavailable, veth_pair, wait_for_port  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TICK = os.sysconf("SC_CLK_TCK")

LOOP = """
import json, signal, sys
from probes.live import LiveCapture
stop = False
def halt(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, halt)
cap = LiveCapture([sys.argv[1]], bpf=sys.argv[2], buffer_bytes=8 << 20)
print("READY", flush=True)
frames = 0
while not stop:
    frames += len(cap.read_batch(float(sys.argv[3])))
cap.close()
print(json.dumps({"frames": frames, **cap.stats()}), flush=True)
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def wait_line(
    proc: subprocess.Popen[bytes], marker: bytes, stream: str, limit: float, name: str
) -> None:
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    os.set_blocking(pipe.fileno(), False)
    seen = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        seen += pipe.read() or b""
        if marker in seen:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise SystemExit(f"{name} did not start: {seen.decode(errors='replace')}")


def run_transfer(
    pair: VethPair, size: int, *, upload: bool, expression: str, timeout: float
) -> dict[str, str]:
    client, server = pair.client.ns, pair.server.ns
    py = sys.executable
    if upload:
        server.popen(py, "-c", SINK, "443", stdout=subprocess.PIPE)
    else:
        server.popen(py, "-c", SENDER, "443", str(size))
    wait_for_port(server, 443)

    ours = client.popen(
        py, "-c", LOOP, pair.client.ifname, expression, str(timeout),
        stdout=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    theirs = client.popen(
        "tcpdump", "-i", pair.client.ifname, "-B", "8192", "-w", "/dev/null", expression,
    )  # fmt: skip
    wait_line(ours, b"READY", "stdout", 30, "the LiveCapture loop")
    wait_line(theirs, b"listening on", "stderr", 30, "tcpdump")
    time.sleep(0.3)
    start = {p.pid: cpu_seconds(p.pid) for p in (ours, theirs)}
    started = time.perf_counter()
    if upload:
        client.run(py, "-c", UPLOADER, pair.server.ip4, "443", str(size), timeout=600)
    else:
        got = client.run(py, "-c", RECEIVER, pair.server.ip4, "443", timeout=600).stdout
        if int(got) != size:
            raise SystemExit(f"the client received {int(got)} bytes of {size}")
    wall = time.perf_counter() - started
    time.sleep(0.3)  # let both drain what the filter passed at the end
    used = {p.pid: cpu_seconds(p.pid) - start[p.pid] for p in (ours, theirs)}

    ours.send_signal(signal.SIGTERM)
    theirs.send_signal(signal.SIGINT)
    out, _ = ours.communicate(timeout=30)
    ours_stats = json.loads(out.decode().strip().splitlines()[-1])
    _, err = theirs.communicate(timeout=30)
    report = err.decode()
    captured = next(
        (line.split()[0] for line in report.splitlines() if "packets captured" in line), "?"
    )
    dropped = next(
        (line.split()[0] for line in report.splitlines() if "dropped by kernel" in line), "?"
    )
    client.stop_processes()
    server.stop_processes()
    return {
        "direction": "upload to :443" if upload else "download from :443",
        "size": f"{size / 2**20:,.0f} MiB",
        "wall": f"{wall:.2f} s",
        "rate": f"{size / wall / 1e9 * 8:.1f} Gbit/s",
        "packets": f"{ours_stats.get('interface_packets', 0):,}",
        "ew_cpu": f"{used[ours.pid]:.3f}",
        "td_cpu": f"{used[theirs.pid]:.3f}",
        "ew_frames": f"{ours_stats['frames']:,}",
        "td_frames": captured,
        "ew_drops": str(ours_stats["kernel_drops"]),
        "td_drops": dropped,
    }


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="bytes to transfer (K, M, G suffixes)")
    parser.add_argument(
        "--download-only", action="store_true", help="skip the upload (client to :443) row"
    )
    parser.add_argument("--no-gso", action="store_true", help="wire-sized segments on the veth")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="read_batch timeout, seconds (tcpdump waits up to 1 s for a block)",
    )
    args = parser.parse_args()
    if reason := unavailable():
        print(f"  skipped: {reason}")
        return 0
    if shutil.which("tcpdump") is None:
        print("  skipped: needs tcpdump")
        return 0
    size = parse_size(args.size)
    rows = []
    with veth_pair(gso=not args.no_gso) as pair:
        with pair.client.ns.entered():
            expression = filter_expression()
        for upload in [False] if args.download_only else [False, True]:
            rows.append(
                run_transfer(pair, size, upload=upload, expression=expression, timeout=args.timeout)
            )
    gso = "off (wire-sized segments)" if args.no_gso else "on (as a host's own NIC)"
    print(f"  veth GSO {gso}; CPU seconds while the transfer ran, same filter, same traffic")
    header = (
        f"  {'transfer':<20} {'size':>9} {'wall':>8} {'rate':>11} {'pkts':>9} "
        f"{'egresswatch CPU':>16} {'tcpdump CPU':>12} {'frames ew/td':>16} {'drops ew/td':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"  {r['direction']:<20} {r['size']:>9} {r['wall']:>8} {r['rate']:>11} "
            f"{r['packets']:>9} {r['ew_cpu'] + ' s':>16} {r['td_cpu'] + ' s':>12} "
            f"{r['ew_frames'] + '/' + r['td_frames']:>16} "
            f"{r['ew_drops'] + '/' + r['td_drops']:>12}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
