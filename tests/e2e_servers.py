"""Servers, clients and a reordering relay for ``tests/test_e2e_live.py``, run inside namespaces.

Run as a script (``python tests/e2e_servers.py MODE ARGS...``) inside a network namespace made by
:mod:`tests.netns`; every mode ends by itself within :data:`LIFETIME` seconds (``SIGALRM``), and
the servers and the relay also end on ``SIGTERM``. Modes:

- ``tls-server PORT CERT KEY``: HTTP/1.1 over TLS (Python ``ssl``, ALPN ``http/1.1``), answers
  every request with a small HTML page naming the SNI it was reached by;
- ``quic-server PORT CERT KEY``: aioquic, QUIC v1 and v2, ALPN ``h3`` or ``echo``; echoes streams;
- ``dns-server PORT``: dnspython, UDP and TCP, answers from :data:`ZONE` (A, AAAA, CNAME chains,
  HTTPS with and without an ``ech`` SvcParam), NXDOMAIN for anything else;
- ``tls-client HOST PORT SNI ALPN_COUNT``: Python ``ssl``; ``ALPN_COUNT`` padding protocols after
  ``http/1.1`` make the ClientHello about 2 KB;
- ``quic-client HOST PORT SNI VERSION ALPN_COUNT [DATAGRAM]``: aioquic handshake with one QUIC
  version (``1`` or ``2``) and a ping; padding protocols after ``h3`` make the ClientHello span
  two Initial packets; ``DATAGRAM`` is aioquic's datagram size (default 1200);
- ``dns-query SERVER NAME TYPE udp|tcp [edns]``: dnspython, with EDNS (4096 bytes) when asked;
  prints the answer section;
- ``reorder-relay IFNAME SERVER_MAC SERVER4 SERVER6 MTU4 READY_FILE``: see :func:`reorder_relay`.

The zone and the names live here so that the test and the servers share one table.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

LIFETIME = 240
"""Seconds after which any mode stops by itself (a test run is far shorter)."""
PAGE_MARKER = "egresswatch-e2e-page"
QUIC_PADDING = "x-egresswatch-quic-padding-"
TLS_PADDING = "x-egresswatch-tls-padding-"


def ech_config_list() -> bytes:
    """A well-formed ECHConfigList (draft-ietf-tls-esni, version 0xfe0d) with one config."""
    public_name = b"public.e2e.test"
    contents = (
        bytes([7])  # config_id
        + struct.pack("!H", 0x0020)  # kem_id DHKEM(X25519, HKDF-SHA256)
        + struct.pack("!H", 32)
        + bytes(range(32))  # public_key
        + struct.pack("!HHH", 4, 0x0001, 0x0001)  # cipher_suites: HKDF-SHA256, AES-128-GCM
        + bytes([0])  # maximum_name_length
        + bytes([len(public_name)])
        + public_name
        + struct.pack("!H", 0)  # extensions
    )
    config = struct.pack("!HH", 0xFE0D, len(contents)) + contents
    return struct.pack("!H", len(config)) + config


ECH_B64 = base64.b64encode(ech_config_list()).decode()

ZONE: dict[tuple[str, str], list[tuple[str, str]]] = {
    # (owner, type) -> [(type, rdata)]; CNAMEs are followed by the server.
    ("a.dns.e2e.test", "A"): [("A", "10.200.0.2"), ("A", "10.200.0.3")],
    ("aaaa.dns.e2e.test", "AAAA"): [("AAAA", "fd00:e6::2")],
    ("www.dns.e2e.test", "*"): [("CNAME", "edge.dns.e2e.test.")],
    ("edge.dns.e2e.test", "*"): [("CNAME", "cdn.e2e-cdn.test.")],
    ("cdn.e2e-cdn.test", "A"): [("A", "10.200.0.2")],
    ("cdn.e2e-cdn.test", "AAAA"): [("AAAA", "fd00:e6::2")],
    ("ech.dns.e2e.test", "HTTPS"): [("HTTPS", f'1 . alpn="h2,h3" ech="{ECH_B64}"')],
    ("noech.dns.e2e.test", "HTTPS"): [("HTTPS", '1 . alpn="h2"')],
    ("tcp-a.dns.e2e.test", "A"): [("A", "10.200.0.2")],
    ("tcp-aaaa.dns.e2e.test", "AAAA"): [("AAAA", "fd00:e6::2"), ("AAAA", "fd00:e6::3")],
    ("tcp-www.dns.e2e.test", "*"): [("CNAME", "tcp-edge.dns.e2e.test.")],
    ("tcp-edge.dns.e2e.test", "*"): [("CNAME", "cdn.e2e-cdn.test.")],
    # About 2 KB of answers: with EDNS the UDP response leaves the server in IP fragments.
    ("big.dns.e2e.test", "A"): [("A", f"10.200.1.{i}") for i in range(1, 121)],
    ("big6.dns.e2e.test", "AAAA"): [("AAAA", f"fd00:e6::1:{i:x}") for i in range(1, 71)],
    ("tcp-ech.dns.e2e.test", "HTTPS"): [("HTTPS", f'1 . alpn="h3" ech="{ECH_B64}"')],
}


def zone_answers(qname: str, qtype: str) -> list[tuple[str, str, str]]:
    """``(owner, type, rdata)`` records answering ``qname``/``qtype``, CNAME chain first."""
    out: list[tuple[str, str, str]] = []
    owner = qname.lower().rstrip(".")
    for _ in range(8):  # bounded: chains in ZONE are at most two deep
        alias = ZONE.get((owner, "*"))
        if alias:
            out += [(owner, rtype, rdata) for rtype, rdata in alias]
            owner = alias[0][1].rstrip(".")
            continue
        out += [(owner, rtype, rdata) for rtype, rdata in ZONE.get((owner, qtype), [])]
        break
    return out


def make_cert(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (EC P-256) for ``names`` and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# -- servers ----------------------------------------------------------------------------------


def _listener(port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A dual-stack socket on ``port`` (IPv4 and IPv6)."""
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    return sock


def _serve(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _addr = sock.accept()
        threading.Thread(target=_quietly, args=(handle, conn), daemon=True).start()


def _quietly(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        with conn:
            conn.settimeout(30)
            handle(conn)
    except (OSError, ValueError):
        pass  # a client that hangs up early (openssl s_client) is not the server's problem


def tls_server(port: int, certfile: str, keyfile: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols(["http/1.1"])
    names: dict[int, str] = {}

    def remember(sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: object) -> None:
        names[id(sslobj)] = name or "-"

    ctx.sni_callback = remember

    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tconn:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 16384:
                more = tconn.recv(4096)
                if not more:
                    return
                request += more
            sni = names.pop(id(tconn), "-")
            body = f"<html><body><p id=m>{PAGE_MARKER} {sni}</p></body></html>".encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            tconn.sendall(head.encode() + body)

    _serve(_listener(port), handle)


def quic_server(port: int, certfile: str, keyfile: str) -> None:
    import asyncio

    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.packet import QuicProtocolVersion

    config = QuicConfiguration(is_client=False, alpn_protocols=["h3", "echo"])
    config.supported_versions = [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2]
    config.load_cert_chain(certfile, keyfile)

    async def main() -> None:
        await serve("::", port, configuration=config)
        await asyncio.Event().wait()

    asyncio.run(main())


def dns_server(port: int) -> None:
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    def answer(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        qtype = dns.rdatatype.to_text(question.rdtype)
        records = zone_answers(question.name.to_text(), qtype)
        if not records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        for owner, rtype, rdata in records:
            response.answer.append(dns.rrset.from_text(owner + ".", 60, "IN", rtype, rdata))
        return response.to_wire()

    udp, tcp = _listener(port, socket.SOCK_DGRAM), _listener(port)

    def over_tcp(conn: socket.socket) -> None:
        for _ in range(16):  # a few messages per connection (RFC 7766 pipelining)
            head = _recv_exactly(conn, 2)
            if not head:
                return
            wire = _recv_exactly(conn, int.from_bytes(head, "big"))
            reply = answer(wire)
            conn.sendall(len(reply).to_bytes(2, "big") + reply)

    threading.Thread(target=_serve, args=(tcp, over_tcp), daemon=True).start()
    while True:
        wire, addr = udp.recvfrom(65535)
        try:
            udp.sendto(answer(wire), addr)
        except Exception as exc:  # a bad query must not stop the server
            print(f"dns-server: {exc!r}", file=sys.stderr)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            return b""
        data += more
    return data


# -- clients ----------------------------------------------------------------------------------


def tls_client(host: str, port: int, sni: str, padding: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1", *(f"{TLS_PADDING}{i:03d}" for i in range(padding))])
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tconn,
    ):
        tconn.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
        data = bytearray()
        while (more := tconn.recv(1 << 16)) and len(data) < 1 << 20:
            data += more
    print(data.decode(errors="replace"))


def quic_client(host: str, port: int, sni: str, version: int, padding: int, datagram: int) -> None:
    import asyncio

    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.packet import QuicProtocolVersion

    alpn = ["h3", *(f"{QUIC_PADDING}{i:03d}" for i in range(padding))]
    config = QuicConfiguration(
        is_client=True, alpn_protocols=alpn, server_name=sni, max_datagram_size=datagram
    )
    config.verify_mode = ssl.CERT_NONE
    chosen = {1: QuicProtocolVersion.VERSION_1, 2: QuicProtocolVersion.VERSION_2}[version]
    config.supported_versions = [chosen]

    async def main() -> str:
        async with connect(host, port, configuration=config) as client:
            await asyncio.wait_for(client.ping(), 20)
            return f"version=0x{client._quic._version:08x}"  # for the test log

    print(asyncio.run(asyncio.wait_for(main(), 60)))


def dns_query(server: str, name: str, qtype: str, transport: str, edns: bool) -> None:
    import dns.message
    import dns.query

    query = dns.message.make_query(name, qtype, use_edns=0 if edns else None, payload=4096)
    ask = dns.query.udp if transport == "udp" else dns.query.tcp
    response = ask(query, server, timeout=10)
    print(" | ".join(rrset.to_text() for rrset in response.answer))


# -- the reordering relay ---------------------------------------------------------------------

TUN_NAME = "ewr0"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_HOLD = 0.05
"""Seconds a held packet waits for the packet that should overtake it."""


def reorder_relay(
    ifname: str, server_mac: str, server4: str, server6: str, mtu4: int, ready: str
) -> None:
    """Send the client's packets to the server reordered, where reordering hurts a parser most.

    A TUN device takes the routes to the server's two addresses (IPv4 with route MTU ``mtu4``, so
    that large UDP datagrams are fragmented); this loop reads each IP packet the client's kernel
    sends and writes it onto ``ifname`` with a packet socket, so captures on ``ifname`` see what
    this loop sends, in the order it sends it. Answers from the server come back on ``ifname``
    as usual. Held back until the next packet of the same flow has gone out (at most
    :data:`_HOLD` seconds):

    - a TCP segment that starts a TLS record longer than the segment (the first segment of a
      ClientHello spanning several), so its continuation arrives first;
    - the first fragment of a fragmented IPv4 or IPv6 datagram (the others arrive first);
    - the first QUIC long-header datagram of a UDP flow (a second Initial overtakes the first).

    This is what ``tc netem reorder`` would do, deterministically, and in kernels without
    ``sch_netem``. Counters go to stderr when the relay stops.
    """
    import fcntl

    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, _TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), _IFF_TUN | _IFF_NO_PI))
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    mac = bytes.fromhex(server_mac.replace(":", ""))

    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)

    ip("link", "set", TUN_NAME, "mtu", "1280", "up")
    ip("route", "replace", f"{server4}/32", "dev", TUN_NAME, "mtu", "lock", str(mtu4))
    ip("-6", "route", "replace", f"{server6}/128", "dev", TUN_NAME)
    Path(ready).write_text("ready\n")

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    held: dict[tuple[object, ...], tuple[float, bytes]] = {}
    seen_udp_flows: set[tuple[object, ...]] = set()
    counts = {"packets": 0, "held": 0, "overtaken": 0, "timed_out": 0, "dropped": 0}
    deadline = time.monotonic() + LIFETIME

    def send(packet: bytes) -> None:
        proto = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
        out.sendto(packet, (ifname, proto, 0, 0, mac))

    while not stopping and time.monotonic() < deadline:
        readable, _w, _x = select.select([tun], [], [], 0.01)
        now = time.monotonic()
        if readable:
            packet = os.read(tun, 65535)
            counts["packets"] += 1
            key, flow, hold = _classify(packet, server4, server6, seen_udp_flows)
            if key is None:
                counts["dropped"] += 1  # not for the server (router solicitations and such)
                continue
            if hold and flow not in held:
                held[flow] = (now, packet)
                counts["held"] += 1
                continue
            send(packet)
            if flow in held:
                send(held.pop(flow)[1])
                counts["overtaken"] += 1
        for flow, (since, packet) in list(held.items()):
            if now - since > _HOLD:
                send(packet)
                del held[flow]
                counts["timed_out"] += 1
    for _since, packet in held.values():
        send(packet)
    print(json.dumps(counts), file=sys.stderr, flush=True)


def _classify(
    packet: bytes, server4: str, server6: str, seen_udp_flows: set[tuple[object, ...]]
) -> tuple[tuple[object, ...] | None, tuple[object, ...], bool]:
    """``(key or None to drop, flow to hold under, hold this one?)`` for one IP packet."""
    version = packet[0] >> 4
    flow: tuple[object, ...]
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
        if dst != server4:
            return None, (), False
        proto = packet[9]
        ident, frag = struct.unpack("!HH", packet[4:8])
        more, offset = bool(frag & 0x2000), frag & 0x1FFF
        if more or offset:
            flow = ("frag", packet[12:20], ident)
            return flow, flow, more and offset == 0
        l4 = packet[ihl:]
    elif version == 6:
        dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
        if dst != server6:
            return None, (), False
        proto = packet[6]
        l4 = packet[40:]
        if proto == 44 and len(packet) >= 48:  # Fragment header (RFC 8200 section 4.5)
            frag, ident = struct.unpack("!HI", packet[42:48])
            flow = ("frag6", packet[8:40], ident)
            return flow, flow, bool(frag & 1) and frag >> 3 == 0
    else:
        return None, (), False
    if proto == 6 and len(l4) >= 20:
        sport, dport = struct.unpack("!HH", l4[:4])
        payload = l4[(l4[12] >> 4) * 4 :]
        flow = ("tcp", version, sport, dport)
        starts_long_record = (
            len(payload) >= 5
            and payload[0] == 0x16
            and payload[1] == 0x03
            and struct.unpack("!H", payload[3:5])[0] + 5 > len(payload)
        )
        return flow, flow, starts_long_record
    if proto == 17 and len(l4) >= 9:
        sport, dport = struct.unpack("!HH", l4[:4])
        flow = ("udp", version, sport, dport)
        first = flow not in seen_udp_flows and l4[8] & 0xC0 == 0xC0
        seen_udp_flows.add(flow)
        return flow, flow, first
    return ("other",), ("other", proto), False


def main(argv: list[str]) -> None:
    signal.alarm(LIFETIME)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    mode, *args = argv
    if mode == "tls-server":
        tls_server(int(args[0]), args[1], args[2])
    elif mode == "quic-server":
        quic_server(int(args[0]), args[1], args[2])
    elif mode == "dns-server":
        dns_server(int(args[0]))
    elif mode == "tls-client":
        tls_client(args[0], int(args[1]), args[2], int(args[3]))
    elif mode == "quic-client":
        datagram = int(args[5]) if len(args) > 5 else 1200
        quic_client(args[0], int(args[1]), args[2], int(args[3]), int(args[4]), datagram)
    elif mode == "dns-query":
        dns_query(args[0], args[1], args[2], args[3], args[4:] == ["edns"])
    elif mode == "reorder-relay":
        reorder_relay(args[0], args[1], args[2], args[3], int(args[4]), args[5])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
