"""Attribution rate of short-lived clients: N ``curl`` runs, each looked up at its SYN.

A packet socket on ``lo`` sees each SYN as it leaves (the outgoing copy, the earliest a capture
can), and :class:`probes.sockets.SocketOwners` looks its flow up at once, as the capture loop
will at a flow's first packet. Every curl lives only as long as its fetch from a local HTTP
server (a few ms; ``--server-delay`` adds a round trip). Prints how many flows were named, how
many of them as the right curl, and the lookup latency. Needs root (``AF_PACKET``) and curl::

    .venv/bin/python -m bench.attribution -n 200 --concurrency 8 --server-delay 0
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections import Counter
from typing import Any

from probes.sockets import NotFound, Owner, SocketOwners

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def serve(listener: socket.socket, delay: float, stop: threading.Event) -> None:
    """Answer every HTTP request with a tiny response after ``delay`` seconds."""

    def answer(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                if delay:
                    time.sleep(delay)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass

    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def launch(n: int, concurrency: int, url: str, pids: set[int], done: threading.Event) -> None:
    """Run ``n`` curls, at most ``concurrency`` at a time; record their pids."""
    running: list[subprocess.Popen[bytes]] = []
    for _ in range(n):
        while len(running) >= concurrency:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.001)
        proc = subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", "--max-time", "10", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pids.add(proc.pid)
        running.append(proc)
    for proc in running:
        proc.wait(20)
    done.set()


def syn_of(frame: bytes, port: int) -> tuple[str, int, str, int] | None:
    """``(src, sport, dst, dport)`` of an IPv4 TCP SYN (no ACK) to ``port``, else ``None``."""
    if len(frame) < 40 or frame[0] >> 4 != 4 or frame[9] != socket.IPPROTO_TCP:
        return None
    ihl = (frame[0] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, ihl)
    flags = frame[ihl + 13]
    if dport != port or flags & 0x12 != 0x02:
        return None
    return socket.inet_ntoa(frame[12:16]), sport, socket.inet_ntoa(frame[16:20]), dport


def measure(n: int = 200, concurrency: int = 8, server_delay: float = 0.0) -> dict[str, Any]:
    """Run the measurement; return its numbers (also printed by :func:`main`)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    port = listener.getsockname()[1]
    stop, done = threading.Event(), threading.Event()
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    cap.bind(("lo", ETH_P_ALL))
    cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    cap.settimeout(0.1)
    pids: set[int] = set()
    results: list[Owner | NotFound] = []
    latencies: list[float] = []
    server = threading.Thread(target=serve, args=(listener, server_delay, stop), daemon=True)
    server.start()
    owners = SocketOwners()
    url = f"http://127.0.0.1:{port}/"
    launcher = threading.Thread(target=launch, args=(n, concurrency, url, pids, done))
    started = time.perf_counter()
    launcher.start()
    try:
        while not (done.is_set() and len(results) >= n):
            try:
                frame, addr = cap.recvfrom(65535)
            except TimeoutError:
                if done.is_set():
                    break
                continue
            if addr[2] != PACKET_OUTGOING:  # lo shows each packet twice; take the first copy
                continue
            flow = syn_of(frame, port)
            if flow is None:
                continue
            t0 = time.perf_counter()
            results.append(owners.lookup("tcp", *flow, first_packet=True))
            latencies.append(time.perf_counter() - t0)
    finally:
        elapsed = time.perf_counter() - started
        launcher.join(30)
        stop.set()
        server.join(2)
        cap.close()
        listener.close()
        owners.close()
    named = [r for r in results if isinstance(r, Owner)]
    right = [r for r in named if r.pid in pids and r.comm == "curl"]
    ms = sorted(x * 1000 for x in latencies) or [0.0]
    return {
        "curls": n,
        "syns_seen": len(results),
        "attributed": len(named),
        "attributed_to_the_right_curl": len(right),
        "rate": len(right) / n,
        "not_found": dict(Counter(r.reason for r in results if isinstance(r, NotFound))),
        "remembered": sum(r.source == "remembered" for r in named),
        "lookup_ms_p50": statistics.median(ms),
        "lookup_ms_p95": ms[int(0.95 * (len(ms) - 1))],
        "lookup_ms_max": ms[-1],
        "wall_s": elapsed,
        "stats": owners.stats(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="curl runs")
    parser.add_argument("--concurrency", type=int, default=8, help="curls at once")
    parser.add_argument(
        "--server-delay", type=float, default=0.0, help="ms the server waits before answering"
    )
    args = parser.parse_args()
    out = measure(args.n, args.concurrency, args.server_delay / 1000)
    stats = out.pop("stats")
    for key, value in out.items():
        print(f"{key:30} {value:.3f}" if isinstance(value, float) else f"{key:30} {value}")
    print("stats", stats)


if __name__ == "__main__":
    main()
