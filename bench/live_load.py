"""Handshake load on the live agent, with bulk traffic at line rate, and exact drop accounting.

A veth pair between two network namespaces (tests/netns.py, names ``egwL<pid>...``), TSO, GSO
and GRO off by default (``--gso on`` keeps them), so the captures see wire-sized segments.
For ``--duration`` seconds at each rate of ``--rates`` (handshakes per second of each kind):

- **TLS**: ``--tls-procs`` generator processes open TCP connections to the server's port 443,
  each sending a real ClientHello for its own name ``h-NNNNNNN.load.test``; one in four is a
  big one (about 1.9 KB: ALPN padding in place of post-quantum key shares), which takes two
  segments, so the continuation rule and the reassembler are under load too. The server
  answers with a real TLS 1.3 server flight (ServerHello to Finished), the client with its
  own (change_cipher_spec, Finished), then resets the connection (no TIME_WAIT to run the
  ports out). The hellos and flights are made once, in memory, by Python ``ssl`` (OpenSSL)
  with a self-signed certificate, and replayed with the name's digits patched in.
- **QUIC**: ``--quic-procs`` generator processes send one client Initial per handshake
  (``q-NNNNNNN.load.test``), each from a new UDP socket (a new port, as clients do) with a new
  Destination Connection ID: the ClientHello (made once by aioquic, name patched in) goes into
  a CRYPTO frame, padded to 1200 bytes, and the packet is protected with the Initial keys of
  that DCID (aioquic's packet protection); all of them are built before the clock starts. The
  server answers each with the datagrams a real aioquic server sent to the first one (its
  Initial and Handshake packets).
- **Bulk**: one upload to port 8443 and one download from port 9443 (both TLS ports, so the
  upload passes the static filter until the agent excludes it) stream as fast as they can
  for the whole time.

Replaying saves the generators and servers the public-key work of a real handshake, which no
Python process on two cores could do thousands of times a second; on the wire, and so for the
agent, each handshake is what a real one looks like up to the server's flight.

In the client namespace, the agent (``egresswatch run -i VETH --format jsonl --user root
--stats --no-db``, stdout to a file; ``--store`` adds a SQLite store in the temporary folder)
and tcpdump (``-B 32768 -w /dev/null``: the agent's buffer and filter) capture; their CPU is
the time their threads spent on a CPU (schedstat) from the start of the load to the end of the
agent's drain.

Accounting
==========

A handshake is **generated** when the client saw the server's answer to it (TLS: the server
flight came back, so the whole ClientHello was delivered; QUIC: ``sendto`` returned, and on a
veth, which has no queue, the packet then went through the device's taps, where the capture
is). It is **reported** when a line of the agent's JSON Lines output carries its name with
the right kind. Per kind: ``missing`` = generated - reported; ``unexpected`` = reported names
that were never generated, or reported twice (must be 0).

What the agent counts as dropped: handshakes its queue had no room for, by kind
(``queue.dropped_tls``, ``queue.dropped_quic``: the capture thread runs the sensor, so what
crosses the queue, and what is dropped from it, is observations), and frames the kernel could
not queue for the capture thread (``capture.kernel_drops``, ``PACKET_STATISTICS``). A kernel
drop cannot be mapped to a handshake: the frame is gone unseen, and it may have been a
ClientHello (one handshake lost), a continuation of a big one (the same), a SYN (the hello is
still reassembled without it), a server's answer or a bulk segment (nothing lost). The
accounting is therefore, per kind:

- with no kernel drop: ``missing == queue.dropped_<kind>`` exactly: every handshake was
  reported or counted as dropped (**exact**);
- with kernel drops: ``missing <= queue.dropped_<kind> + kernel drops`` (**bounded**);
  ``missing beyond drops`` = max(0, missing - what bounds it) must be 0.

The bench prints per rate: the rate asked and achieved, per kind generated / reported /
missing / dropped by the queue / unexpected, the frames the kernel dropped, the missing beyond
drops, process attribution's figures, the
agent's CPU (also per handshake) and tcpdump's CPU, frames and drops for the same traffic.
The highest rate with no drop is the agent's sustained rate on this machine; the highest with
exact accounting is the rate up to which it says exactly which handshakes it did not judge.

Needs root and network namespaces (and tcpdump for its column); prints why and exits 0
otherwise. ``make bench`` runs it (bench/run.py) with ``--rates 250,1000,2500 --duration
10``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.live_cpu import (  # noqa: E402
    ENV,
    NETNS_PREFIX,
    TCPDUMP_BUFFER,
    final_counters,
    run_seconds,
    tcpdump_counts,
    wait_line,
)
from egresswatch.daemon import QUEUE_BATCHES, QUEUE_OBSERVATIONS  # noqa: E402
from tests.netns import (  # noqa: E402
    VethPair,
    disable_offloads,
    unavailable,
    veth_pair,
    wait_for_port,
)

TLS_PORT, QUIC_PORT, UPLOAD_PORT, DOWNLOAD_PORT = 443, 443, 8443, 9443
TLS_NAME = "h-{:07d}.load.test"
QUIC_NAME = "q-{:07d}.load.test"
NAME = re.compile(r"^([hq])-(\d{7})\.load\.test$")
BIG_EVERY = 4
"""Every fourth TLS handshake carries the big ClientHello."""
BIG_HELLO = 1900
"""Bytes the big ClientHello is padded to (a post-quantum key share's worth, about 1.8 KB)."""
QUIC_DATAGRAM = 1200
CONNECT_TIMEOUT = 3.0
"""Seconds a TLS connection may take to get the server's flight before it counts as failed."""


# -- templates: real handshake bytes, made once in memory -----------------------------------


@dataclass
class Templates:
    """Bytes the generators and servers replay; names patched in at ``*_at``."""

    tls_small: bytes
    tls_small_at: int
    tls_big: bytes
    tls_big_at: int
    tls_server: bytes
    """The server's answer to a ClientHello: ServerHello to Finished (TLS 1.3)."""
    tls_client_end: bytes
    """The client's second flight: change_cipher_spec and Finished."""
    quic_hello: bytes
    """A QUIC ClientHello (handshake message, no record header) from aioquic."""
    quic_hello_at: int
    quic_server: list[bytes] = field(default_factory=list)
    """The datagrams an aioquic server answered the first Initial with."""

    def dump(self, path: Path) -> None:
        data = {k: v.hex() if isinstance(v, bytes) else v for k, v in self.__dict__.items()}
        data["quic_server"] = [d.hex() for d in self.quic_server]
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> Templates:
        data: dict[str, Any] = json.loads(path.read_text())
        for key, value in data.items():
            if isinstance(value, str):
                data[key] = bytes.fromhex(value)
        data["quic_server"] = [bytes.fromhex(d) for d in data["quic_server"]]
        return cls(**data)


def _tls_exchange(
    client: ssl.SSLContext, server: ssl.SSLContext, sni: str
) -> tuple[bytes, bytes, bytes]:
    """(ClientHello, server flight, client's second flight) of one handshake over MemoryBIOs."""
    cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(cin, cout, server_hostname=sni)
    s = server.wrap_bio(sin, sout, server_side=True)
    with contextlib.suppress(ssl.SSLWantReadError):
        c.do_handshake()
    hello = cout.read()
    sin.write(hello)
    with contextlib.suppress(ssl.SSLWantReadError):
        s.do_handshake()
    flight = sout.read()
    cin.write(flight)
    c.do_handshake()
    return hello, flight, cout.read()


def build_templates(folder: Path) -> Templates:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicProtocolVersion

    from tests.e2e_servers import make_cert

    cert, key = make_cert(folder, ["load.test", "*.load.test"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.set_alpn_protocols(["h2", "http/1.1"])

    def client(pad: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2", "http/1.1", *(f"x-load-pad-{i:03d}" for i in range(pad))])
        return ctx

    name = TLS_NAME.format(0)
    small, flight, end = _tls_exchange(client(0), server, name)
    big, pad = small, 0
    while len(big) < BIG_HELLO:  # OpenSSL pads some sizes itself: grow until it is big enough
        pad += 4
        big = _tls_exchange(client(pad), server, name)[0]

    qname = QUIC_NAME.format(0)
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=qname)
    conn = QuicConnection(configuration=config)
    now = time.time()
    conn.connect(("10.0.0.2", QUIC_PORT), now=now)
    first = conn.datagrams_to_send(now=now)[0][0]
    dcid = first[6 : 6 + first[5]]
    opener = CryptoPair()
    opener.setup_initial(dcid, is_client=False, version=QuicProtocolVersion.VERSION_1)
    pos = 6 + len(dcid)
    pos += 1 + first[pos]  # SCID
    token, pos = _varint(first, pos)
    length, pos = _varint(first, pos + token)
    _header, payload, _pn = opener.decrypt_packet(first[: pos + length], pos, 0)
    hello = _crypto_data(payload)
    sconfig = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    sconfig.load_cert_chain(cert, key)
    answer = QuicConnection(configuration=sconfig, original_destination_connection_id=dcid)
    answer.receive_datagram(first, ("10.0.0.1", 40000), now=now)
    replies = [d for d, _addr in answer.datagrams_to_send(now=now)]
    return Templates(
        tls_small=small,
        tls_small_at=small.index(name.encode()) + 2,
        tls_big=big,
        tls_big_at=big.index(name.encode()) + 2,
        tls_server=flight,
        tls_client_end=end,
        quic_hello=hello,
        quic_hello_at=hello.index(qname.encode()) + 2,
        quic_server=replies,
    )


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """RFC 9000 section 16 variable-length integer at ``pos``: (value, next position)."""
    size = 1 << (data[pos] >> 6)
    value = data[pos] & 0x3F
    for byte in data[pos + 1 : pos + size]:
        value = (value << 8) | byte
    return value, pos + size


def _crypto_data(payload: bytes) -> bytes:
    """The CRYPTO stream from offset 0 in a client's first Initial (CRYPTO, PING, PADDING)."""
    pos, out = 0, {}
    while pos < len(payload):
        kind = payload[pos]
        pos += 1
        if kind in (0x00, 0x01):  # PADDING, PING
            continue
        if kind != 0x06:
            msg = f"unexpected frame type {kind:#x} in the template Initial"
            raise ValueError(msg)
        offset, pos = _varint(payload, pos)
        length, pos = _varint(payload, pos)
        out[offset] = payload[pos : pos + length]
        pos += length
    data, at = b"", 0
    while at in out:
        data += out[at]
        at += len(out[at])
    return data


def quic_initial(hello: bytes, dcid: bytes, scid: bytes) -> bytes:
    """A client's first Initial (QUIC v1, packet number 0) carrying ``hello``, 1200 bytes."""
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicProtocolVersion

    crypto = b"\x06\x00" + (0x4000 | len(hello)).to_bytes(2, "big") + hello
    head = b"\xc0\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"
    room = QUIC_DATAGRAM - len(head) - 2 - 1 - 16  # Length, packet number, AEAD tag
    payload = crypto + bytes(max(0, room - len(crypto)))
    header = head + (0x4000 | (1 + len(payload) + 16)).to_bytes(2, "big") + b"\x00"
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=QuicProtocolVersion.VERSION_1)
    return pair.encrypt_packet(header, payload, 0)


def patched(template: bytes, at: int, n: int) -> bytes:
    out = bytearray(template)
    out[at : at + 7] = b"%07d" % n
    return bytes(out)


def check_templates(t: Templates) -> None:
    """The agent's own sensor finds each template's name, so a miss later is not the bytes."""
    from scapy.layers.inet import IP, TCP, UDP

    from probes.live import LINKTYPE_RAW
    from probes.sensor import Sensor

    sensor = Sensor()
    frames = [
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000 + i, dport=443, flags="PA", seq=1)
        / patched(tmpl, at, 7 + i)
        for i, (tmpl, at) in enumerate(((t.tls_small, t.tls_small_at), (t.tls_big, t.tls_big_at)))
    ]  # fmt: skip
    initial = quic_initial(patched(t.quic_hello, t.quic_hello_at, 9), os.urandom(8), os.urandom(8))
    frames.append(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=50000, dport=443) / initial)
    seen = {o.sni for f in frames for o in sensor.frame(1.0, LINKTYPE_RAW, bytes(f))}
    expected = {TLS_NAME.format(7), TLS_NAME.format(8), QUIC_NAME.format(9)}
    if seen != expected:
        msg = f"the sensor read {seen!r} from the templates, not {expected!r}"
        raise SystemExit(msg)


# -- roles: processes run inside the namespaces -------------------------------------------------


def tls_server(templates: Path, port: int) -> None:
    """Accept, read the ClientHello, answer with the server flight, close."""
    t = Templates.load(templates)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _mask in sel.select():
            if key.data is None:
                for _ in range(256):
                    try:
                        conn, _addr = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, True)
                continue
            peer = key.fileobj
            assert isinstance(peer, socket.socket)
            sel.unregister(peer)
            try:
                if peer.recv(65536):
                    peer.send(t.tls_server)
            except OSError:
                pass
            peer.close()


def quic_server(templates: Path, port: int) -> None:
    """Answer every datagram with the server's first datagrams."""
    t = Templates.load(templates)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", port))
    while True:
        _data, addr = sock.recvfrom(65536)
        for reply in t.quic_server:
            try:
                sock.sendto(reply, addr)
            except OSError:
                pass


def bulk_sink(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    conn, _ = srv.accept()
    buf = bytearray(1 << 20)
    while conn.recv_into(buf):
        pass


def _stream(sock: socket.socket) -> None:
    """Send 1 MiB chunks until the peer goes away."""
    chunk = memoryview(bytes(range(256)) * 4096)
    try:
        while True:
            sock.send(chunk)
    except OSError:
        pass


def bulk_source(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    conn, _ = srv.accept()
    _stream(conn)


def bulk_upload(host: str, port: int) -> None:
    _stream(socket.create_connection((host, port)))


def bulk_download(host: str, port: int) -> None:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    buf = bytearray(1 << 20)
    while sock.recv_into(buf):
        pass


def _wait_until(start: float) -> None:
    while (left := start - time.time()) > 0:
        time.sleep(min(left, 0.05))


def tls_generator(argv: list[str]) -> None:
    """TEMPLATES HOST PORT RATE DURATION START INDEX PROCS OUT: paced connections, many at once."""
    templates, host, port = Path(argv[0]), argv[1], int(argv[2])
    rate, duration, start = float(argv[3]), float(argv[4]), float(argv[5])
    index, procs, out = int(argv[6]), int(argv[7]), Path(argv[8])
    t = Templates.load(templates)
    linger = struct.pack("ii", 1, 0)  # close() resets: no TIME_WAIT to run out of ports
    sel = selectors.DefaultSelector()
    opened: dict[int, tuple[socket.socket, int, float]] = {}
    generated: list[int] = []
    failed = 0
    k = 0
    total = int(rate * duration)
    _wait_until(start)
    end = last = start + duration
    while k < total or opened:
        now = time.time()
        due = min(total, int((now - start) * rate) + 1)
        while k < due and len(opened) < 4096:
            n = index + k * procs
            k += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.connect_ex((host, port))
            opened[sock.fileno()] = (sock, n, now)
            sel.register(sock, selectors.EVENT_WRITE, n)
            last = now
        for key, mask in sel.select(timeout=0.002):
            sock, n, _since = opened[key.fd]
            try:
                if mask & selectors.EVENT_WRITE:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise ConnectionError
                    hello = (
                        patched(t.tls_big, t.tls_big_at, n)
                        if n % BIG_EVERY == BIG_EVERY - 1
                        else patched(t.tls_small, t.tls_small_at, n)
                    )
                    if sock.send(hello) != len(hello):
                        raise ConnectionError
                    sel.modify(sock, selectors.EVENT_READ, n)
                    continue
                if not sock.recv(65536):
                    raise ConnectionError
                generated.append(n)
                sock.send(t.tls_client_end)
            except OSError:
                if not generated or generated[-1] != n:
                    failed += 1
            sel.unregister(sock)
            del opened[key.fd]
            sock.close()
        if now > end or len(opened) >= 4096:
            for fd, (sock, _n, since) in list(opened.items()):
                if now - since > CONNECT_TIMEOUT:
                    sel.unregister(sock)
                    del opened[fd]
                    sock.close()
                    failed += 1
    out.write_text(
        json.dumps({"generated": generated, "failed": failed, "asked": total, "span": last - start})
    )


def quic_generator(argv: list[str]) -> None:
    """TEMPLATES HOST PORT RATE DURATION START INDEX PROCS OUT: one Initial per new socket."""
    templates, host, port = Path(argv[0]), argv[1], int(argv[2])
    rate, duration, start = float(argv[3]), float(argv[4]), float(argv[5])
    index, procs, out = int(argv[6]), int(argv[7]), Path(argv[8])
    t = Templates.load(templates)
    total = int(rate * duration)
    numbers = [index + k * procs for k in range(total)]
    datagrams = [
        quic_initial(patched(t.quic_hello, t.quic_hello_at, n), os.urandom(8), os.urandom(8))
        for n in numbers
    ]
    print("built", file=sys.stderr, flush=True)
    generated: list[int] = []
    failed = 0
    _wait_until(start)
    for k, (n, datagram) in enumerate(zip(numbers, datagrams, strict=True)):
        if (ahead := start + k / rate - time.time()) > 0:
            time.sleep(ahead)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(datagram, (host, port))
            generated.append(n)
        except OSError:
            failed += 1
    span = max(duration, time.time() - start)
    out.write_text(
        json.dumps({"generated": generated, "failed": failed, "asked": total, "span": span})
    )


def role(argv: list[str]) -> None:
    """Run one process of the bench (inside a namespace)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    name, *args = argv
    if name == "tls-server":
        tls_server(Path(args[0]), int(args[1]))
    elif name == "quic-server":
        quic_server(Path(args[0]), int(args[1]))
    elif name == "bulk-sink":
        bulk_sink(int(args[0]))
    elif name == "bulk-source":
        bulk_source(int(args[0]))
    elif name == "bulk-upload":
        bulk_upload(args[0], int(args[1]))
    elif name == "bulk-download":
        bulk_download(args[0], int(args[1]))
    elif name == "tls-gen":
        tls_generator(args)
    elif name == "quic-gen":
        quic_generator(args)
    else:
        raise SystemExit(f"unknown role {name!r}")


# -- one run at one rate ----------------------------------------------------------------------


@dataclass
class Kind:
    generated: int = 0
    failed: int = 0
    asked: int = 0
    reported: int = 0
    missing: int = 0
    unexpected: int = 0
    dropped: int = 0
    """Handshakes the agent's queue dropped and counted (``queue.dropped_<kind>``)."""
    span: float = 0.0
    """Seconds from the start to the last handshake begun, the slowest generator's."""

    @property
    def per_second(self) -> float:
        return self.generated / self.span if self.span else 0.0


@dataclass
class Result:
    rate: float
    duration: float
    tls: Kind
    quic: Kind
    kernel_drops: int
    received: int
    agent_cpu: float
    window: float
    td_cpu: float | None
    td_frames: int
    td_drops: int
    counters: dict[str, int]

    @property
    def missing(self) -> int:
        return self.tls.missing + self.quic.missing

    @property
    def dropped(self) -> int:
        """Handshakes the queue dropped, plus frames the kernel dropped."""
        return self.kernel_drops + self.tls.dropped + self.quic.dropped

    @property
    def exact(self) -> bool:
        """Every handshake reported or counted as dropped, kind by kind."""
        return self.kernel_drops == 0 and all(
            k.missing == k.dropped and not k.unexpected for k in (self.tls, self.quic)
        )

    @property
    def unaccounted(self) -> int:
        return sum(max(0, k.missing - k.dropped - self.kernel_drops) for k in (self.tls, self.quic))


NO_ATTRIBUTION = (
    "import sys, egresswatch.cli as cli; cli._attributing = lambda writer: None; "
    "sys.argv[0] = 'egresswatch'; cli.entry()"
)
"""``egresswatch run`` without process attribution (``--no-attribution``; the CLI has no such
switch): for measuring what the rest of the pipeline sustains."""


def agent_argv(ifname: str, store: Path | None, *, attribution: bool = True) -> list[str]:
    """``egresswatch run`` as the bench runs it: JSON Lines on stdout, counters at the end."""
    head = [sys.executable, "-m", "egresswatch"] if attribution else [
        sys.executable, "-c", NO_ATTRIBUTION,
    ]  # fmt: skip
    argv = [*head, "run", "-i", ifname, "--format", "jsonl", "--user", "root", "--stats"]
    return argv + (["--db", str(store)] if store is not None else ["--no-db"])


def _me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", *args]


def run_rate(
    pair: VethPair, folder: Path, rate: float, args: argparse.Namespace, expression: str
) -> Result:
    client, server = pair.client.ns, pair.server.ns
    templates = folder / "templates.json"
    srv4 = pair.server.ip4
    server.popen(*_me("tls-server", str(templates), str(TLS_PORT)), env=ENV)
    server.popen(*_me("quic-server", str(templates), str(QUIC_PORT)), env=ENV)
    server.popen(*_me("bulk-sink", str(UPLOAD_PORT)), env=ENV)
    server.popen(*_me("bulk-source", str(DOWNLOAD_PORT)), env=ENV)
    for port in (TLS_PORT, UPLOAD_PORT, DOWNLOAD_PORT):
        wait_for_port(server, port)
    wait_for_port(server, QUIC_PORT, udp=True)

    jsonl = folder / f"agent-{rate:g}.jsonl"
    store = folder / f"store-{rate:g}.db" if args.store else None
    argv = agent_argv(pair.client.ifname, store, attribution=not args.no_attribution)
    with jsonl.open("wb") as out:
        agent = client.popen(*argv, stdout=out, env=ENV, cwd=str(REPO))
    dump = None
    if shutil.which("tcpdump"):
        dump = client.popen(
            "tcpdump", "-i", pair.client.ifname, "-B", TCPDUMP_BUFFER, "-w", "/dev/null", expression
        )
    early = wait_line(agent, b"capturing on", "stderr", 60, "the agent")
    if dump is not None:
        wait_line(dump, b"listening on", "stderr", 30, "tcpdump")
    client.popen(*_me("bulk-upload", srv4, str(UPLOAD_PORT)), env=ENV)
    client.popen(*_me("bulk-download", srv4, str(DOWNLOAD_PORT)), env=ENV)

    start = time.time() + args.warmup
    gens = []
    outs: dict[str, list[Path]] = {"tls": [], "quic": []}
    for kind, procs in (("tls", args.tls_procs), ("quic", args.quic_procs)):
        for i in range(procs):
            out_path = folder / f"{kind}-{rate:g}-{i}.json"
            outs[kind].append(out_path)
            argv = [str(templates), srv4, str(TLS_PORT), str(rate / procs), str(args.duration)]
            argv += [f"{start:.3f}", str(i), str(procs), str(out_path)]
            gens.append(client.popen(*_me(f"{kind}-gen", *argv), env=ENV))
    _wait_until(start - 0.2)
    procs_cpu = [agent] + ([dump] if dump is not None else [])
    cpu0 = {p.pid: run_seconds(p.pid) for p in procs_cpu}
    t0 = time.monotonic()
    for gen in gens:
        _out, err = gen.communicate(timeout=args.duration + args.warmup + 120)
        if gen.returncode != 0:
            raise SystemExit(f"a generator failed: {err.decode(errors='replace')[-2000:]}")
    # The load is over; the bulk goes on until the agent has read what it was given.
    time.sleep(args.settle)
    cpu = {p.pid: run_seconds(p.pid) - cpu0[p.pid] for p in procs_cpu}
    window = time.monotonic() - t0
    agent.send_signal(signal.SIGTERM)
    _o, err = agent.communicate(timeout=120)
    counters = final_counters(early + err)
    td_frames = td_drops = -1
    if dump is not None:
        dump.send_signal(signal.SIGINT)
        _o, err = dump.communicate(timeout=30)
        td_frames, td_drops = tcpdump_counts(err)
    client.stop_processes()
    server.stop_processes()

    made: dict[str, Kind] = {}
    numbers: dict[str, set[int]] = {}
    for kind, paths in outs.items():
        k = made[kind] = Kind()
        numbers[kind] = set()
        for path in paths:
            data = json.loads(path.read_text())
            k.generated += len(data["generated"])
            k.failed += data["failed"]
            k.asked += data["asked"]
            k.span = max(k.span, data["span"])
            numbers[kind].update(data["generated"])
    seen: dict[str, list[int]] = {"tls": [], "quic": []}
    for line in jsonl.read_text(errors="replace").splitlines():
        obs = json.loads(line)
        match = NAME.match(obs.get("sni") or "")
        if match is None or obs["kind"] not in seen:
            continue
        kind = "tls" if match.group(1) == "h" else "quic"
        if kind != obs["kind"]:
            made[kind].unexpected += 1
            continue
        seen[kind].append(int(match.group(2)))
    for kind, k in made.items():
        k.dropped = counters.get(f"queue.dropped_{kind}", 0)
        got = set(seen[kind])
        k.reported = len(got & numbers[kind])
        k.missing = len(numbers[kind] - got)
        k.unexpected += len(got - numbers[kind]) + (len(seen[kind]) - len(got))
    return Result(
        rate=rate,
        duration=args.duration,
        tls=made["tls"],
        quic=made["quic"],
        kernel_drops=counters.get("capture.kernel_drops", 0),
        received=counters.get("capture.received", 0),
        agent_cpu=cpu[agent.pid],
        window=window,
        td_cpu=cpu[dump.pid] if dump is not None else None,
        td_frames=td_frames,
        td_drops=td_drops,
        counters=counters,
    )


LOSS_COUNTERS = (
    "tcp.memory_evicted", "tcp.overflow", "tcp.gave_up", "tcp.malformed", "tcp.flows_evicted",
    "quic.evicted", "quic.expired", "quic.malformed", "quic.crypto_too_large",
    "quic.tombstones_evicted", "malformed_client_hellos",
)  # fmt: skip
"""Sensor counters that can explain a missing handshake besides a dropped frame."""


def print_result(r: Result) -> None:
    batches = r.counters.get("queue.batches", 0) + r.counters.get("queue.dropped_batches", 0)
    print(
        f"\n  asked {r.rate:,.0f}/s of each kind for {r.duration:g} s"
        f"  (the agent read {r.received:,} frames in {batches:,} batches)"
    )
    print(
        f"  {'kind':<5} {'generated':>9} {'per s':>7} {'failed':>6} {'reported':>9} "
        f"{'missing':>7} {'dropped':>7} {'unexpected':>10}"
    )
    for name, k in (("TLS", r.tls), ("QUIC", r.quic)):
        print(
            f"  {name:<5} {k.generated:>9,} {k.per_second:>7,.0f} {k.failed:>6,} "
            f"{k.reported:>9,} {k.missing:>7,} {k.dropped:>7,} {k.unexpected:>10,}"
        )
    if r.exact:
        verdict = (
            "exact: every handshake reported"
            if r.missing == 0
            else ("exact: every handshake reported or counted as dropped")
        )
    else:
        verdict = "bounded by the kernel's frame drops"
    if r.unaccounted or r.tls.unexpected or r.quic.unexpected:
        verdict = "NOT ACCOUNTED"
    print(
        f"  handshakes dropped by the queue (counted): {r.tls.dropped + r.quic.dropped:,}; "
        f"frames dropped by the kernel: {r.kernel_drops:,}; missing beyond drops: "
        f"{r.unaccounted}  -> {verdict}"
    )
    if r.unaccounted:
        losses = {k: r.counters.get(k, 0) for k in LOSS_COUNTERS if r.counters.get(k, 0)}
        print(f"  sensor loss counters: {losses}")
    c = r.counters
    if "proc.lookups" in c:
        print(
            f"  the agent's queue: {c.get('queue.batches', 0):,} batches in, "
            f"{c.get('queue.dropped_batches', 0):,} dropped (it holds {QUEUE_BATCHES} batches, "
            f"{QUEUE_OBSERVATIONS:,} observations); process attribution: "
            f"{c.get('proc.attributed', 0):,} attributed, {c.get('proc.unattributed', 0):,} not "
            f"({c.get('proc.busy', 0):,} of them to keep up), {c['proc.lookups']:,} look-ups "
            f"({c.get('proc.no_socket', 0):,} found no socket: the generators' sockets live "
            f"about a millisecond), {c.get('proc.early_skipped', 0):,} first-packet look-ups "
            "skipped"
        )
    handshakes = r.tls.generated + r.quic.generated
    per = r.agent_cpu / handshakes * 1e6 if handshakes else 0.0
    line = (
        f"  agent CPU {r.agent_cpu:.2f} s over {r.window:.1f} s ({r.agent_cpu / r.window:.0%} "
        f"of a CPU; {per:.0f} us per handshake)"
    )
    if r.td_cpu is not None:
        line += (
            f"; tcpdump, same filter: {r.td_cpu:.2f} s, {r.td_frames:,} frames, "
            f"{r.td_drops:,} dropped"
        )
    print(line)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        role(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="500,1500,3000", help="handshakes per second of each kind, comma list"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of bulk before load")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds after the load before the agent stops"
    )
    parser.add_argument("--tls-procs", type=int, default=2, help="TLS generator processes")
    parser.add_argument("--quic-procs", type=int, default=1, help="QUIC generator processes")
    parser.add_argument("--gso", choices=["on", "off"], default="off", help="veth offloads")
    parser.add_argument("--store", action="store_true", help="the agent also writes a store")
    parser.add_argument(
        "--no-attribution",
        action="store_true",
        help="run the agent without process attribution (to measure the rest of the pipeline)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if reason := unavailable():
        print(f"  skipped: {reason}")
        return 0
    rates = [float(r) for r in args.rates.split(",") if r]
    folder = Path(tempfile.mkdtemp(prefix="egw-load-"))
    try:
        templates = build_templates(folder)
        check_templates(templates)
        templates.dump(folder / "templates.json")
        print(
            f"  ClientHello {len(templates.tls_small)} and {len(templates.tls_big)} bytes "
            f"(1 in {BIG_EVERY}), QUIC Initial {QUIC_DATAGRAM} bytes; veth offloads {args.gso}; "
            f"bulk upload and download at line rate throughout; "
            f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
        )
        results = []
        offloads = args.gso == "off" and shutil.which("ethtool") is not None
        with veth_pair(gso=args.gso == "on" or offloads, prefix=NETNS_PREFIX) as pair:
            if offloads:
                for side in (pair.client, pair.server):
                    if why := disable_offloads(side):
                        raise SystemExit(why)
            with pair.client.ns.entered():
                from probes.bpf import filter_expression

                expression = filter_expression()
            for rate in rates:
                results.append(run_rate(pair, folder, rate, args, expression))
                print_result(results[-1])
        clean = [r for r in results if r.dropped == 0 and r.missing == 0]
        exact = [r for r in results if r.exact]
        for rows, text in (
            (clean, "sustained with no drop: {} TLS + {} QUIC handshakes/s, every one reported"),
            (exact, "exact accounting up to {} TLS + {} QUIC handshakes/s: every handshake "
             "reported or counted as dropped"),
        ):  # fmt: skip
            if rows:
                best = max(rows, key=lambda r: r.tls.generated + r.quic.generated)
                rates_ = (f"{best.tls.per_second:,.0f}", f"{best.quic.per_second:,.0f}")
                print("\n  " + text.format(*rates_))
        if not clean:
            print("\n  no rate ran without drops")
    finally:
        if args.keep:
            print(f"  files in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
