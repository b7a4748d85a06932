"""Shared test factories: protocol bytes made by real stacks, and small builders around them.

Real bytes first: ClientHellos come from OpenSSL (through :mod:`ssl` memory BIOs, so nothing
touches the network) and from aioquic. The builders only cut, re-frame or extend such bytes;
their encoders are written here from the RFCs, independently of the parsers under test.

Sections: TLS ClientHellos from real stacks; TLS framing; editing a real hello; TCP segments;
DNS messages.
"""

from __future__ import annotations

import ipaddress
import itertools
import ssl
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dns.message
import dns.rrset
from aioquic import tls as aioquic_tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from C

from probes.observation import Observation
from probes.packet import Packet

HANG = timedelta(seconds=2)
"""Hypothesis deadline for parser and reassembler properties: far above any honest example
(a few ms), so it fails a hang or a quadratic blow-up, not a busy CI machine."""

# ---------------------------------------------------------------------------------------------
# TLS ClientHellos from real stacks
# ---------------------------------------------------------------------------------------------


def openssl_client_hello(
    server_hostname: str | None = "example.com",
    *,
    alpn: Sequence[str] = (),
    maximum_version: ssl.TLSVersion | None = None,
    minimum_version: ssl.TLSVersion | None = None,
) -> bytes:
    """OpenSSL's ClientHello as the record-layer bytes it would write to a TCP socket.

    ``server_hostname`` goes into SNI (Python IDNA-encodes non-ASCII names); ``None`` sends no
    SNI. The handshake is started on memory BIOs and stopped when OpenSSL waits for the server.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    if minimum_version is not None:
        ctx.minimum_version = minimum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = outgoing.read()
    assert data[:1] == b"\x16", data[:16]
    return data


def aioquic_client_hello(
    server_name: str | None = "example.com", *, alpn: Sequence[str] = ("h3",)
) -> bytes:
    """aioquic's ClientHello as a handshake message (no records), as QUIC CRYPTO frames carry.

    It carries a QUIC transport_parameters extension (0x39) like a real QUIC client's.
    """
    ctx = aioquic_tls.Context(is_client=True, alpn_protocols=list(alpn), server_name=server_name)
    ctx.handshake_extensions = [(0x39, bytes.fromhex("0104800075300304800100000e0108"))]
    buffers = {epoch: Buffer(capacity=16384) for epoch in aioquic_tls.Epoch}
    ctx.handle_message(b"", buffers)
    data: bytes = buffers[aioquic_tls.Epoch.INITIAL].data
    assert data[:1] == b"\x01", data[:16]
    return data


def large_client_hello(min_size: int = 16_500, server_hostname: str = "big.example") -> bytes:
    """An OpenSSL ClientHello of at least ``min_size`` bytes, as records.

    OpenSSL 3.0 has no post-quantum key share (1.2 KB for X25519MLKEM768), so a long ALPN list
    makes the size; past 2^14 bytes of handshake OpenSSL itself splits it over several records,
    as clients with huge hellos do.
    """
    count = min_size // 250 + 1
    names = [f"p{i:03d}-" + "x" * 240 for i in range(count)]
    data = openssl_client_hello(server_hostname, alpn=names)
    assert len(data) >= min_size
    return data


# ---------------------------------------------------------------------------------------------
# TLS framing (RFC 8446 section 5.1 records, section 4 handshake header)
# ---------------------------------------------------------------------------------------------


def unrecord(data: bytes) -> bytes:
    """The concatenated fragments of the handshake records in ``data`` (which must be whole)."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        ctype, _version, length = struct.unpack_from(">BHH", data, pos)
        assert ctype == 22, f"record type {ctype} at {pos}"
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    assert pos == len(data)
    return bytes(out)


def record_sizes(data: bytes) -> list[int]:
    """Fragment lengths of the records in ``data``."""
    sizes = []
    pos = 0
    while pos < len(data):
        length = struct.unpack_from(">H", data, pos + 3)[0]
        sizes.append(length)
        pos += 5 + length
    return sizes


def records(message: bytes, size: int = 16384, *, version: int = 0x0301, ctype: int = 22) -> bytes:
    """Frame ``message`` in records whose fragments are at most ``size`` bytes."""
    out = bytearray()
    for pos in range(0, len(message), size):
        fragment = message[pos : pos + size]
        out += struct.pack(">BHH", ctype, version, len(fragment)) + fragment
    return bytes(out)


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    """A handshake message: type (1), uint24 length, body."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


# ---------------------------------------------------------------------------------------------
# Editing a real hello
# ---------------------------------------------------------------------------------------------

GREASE = (0x0A0A, 0x1A1A, 0x2A2A, 0x3A3A, 0x4A4A, 0x5A5A, 0x6A6A, 0x7A7A, 0x8A8A, 0x9A9A)


@dataclass
class HelloParts:
    """A ClientHello body cut into its fields, extensions kept raw, to edit and re-join."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: list[int]
    compression: bytes
    extensions: list[tuple[int, bytes]] = field(default_factory=list)

    @classmethod
    def split(cls, body: bytes) -> HelloParts:
        """Cut a ClientHello body (RFC 8446 section 4.1.2) that has an extensions block."""
        version = struct.unpack_from(">H", body, 0)[0]
        random = body[2:34]
        pos = 34
        sid = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + len(sid)
        (n,) = struct.unpack_from(">H", body, pos)
        suites = list(struct.unpack_from(f">{n // 2}H", body, pos + 2))
        pos += 2 + n
        comp = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + len(comp)
        (total,) = struct.unpack_from(">H", body, pos)
        pos += 2
        end = pos + total
        assert end == len(body)
        exts = []
        while pos < end:
            etype, elen = struct.unpack_from(">HH", body, pos)
            exts.append((etype, body[pos + 4 : pos + 4 + elen]))
            pos += 4 + elen
        return cls(version, random, sid, suites, comp, exts)

    def join(self) -> bytes:
        """The ClientHello body again."""
        ext = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in self.extensions)
        return (
            struct.pack(">H", self.legacy_version)
            + self.random
            + bytes([len(self.session_id)])
            + self.session_id
            + struct.pack(">H", 2 * len(self.cipher_suites))
            + struct.pack(f">{len(self.cipher_suites)}H", *self.cipher_suites)
            + bytes([len(self.compression)])
            + self.compression
            + struct.pack(">H", len(ext))
            + ext
        )


def edit_hello(
    message: bytes,
    *,
    first: Iterable[tuple[int, bytes]] = (),
    last: Iterable[tuple[int, bytes]] = (),
    replace: Mapping[int, bytes] | None = None,
    drop: Iterable[int] = (),
) -> bytes:
    """A handshake ClientHello with extensions added in front/at the end, replaced or dropped.

    ``message`` is a handshake-layer ClientHello (type, length, body); so is the result.
    """
    parts = HelloParts.split(message[4:])
    gone = set(drop)
    new = dict(replace or {})
    parts.extensions = [
        *first,
        *((t, new.get(t, d)) for t, d in parts.extensions if t not in gone),
        *last,
    ]
    return handshake(parts.join())


def server_name_ext(*entries: bytes | tuple[int, bytes]) -> bytes:
    """server_name extension data (RFC 6066 section 3): host_name entries, or (type, name)."""
    body = b""
    for entry in entries:
        name_type, name = entry if isinstance(entry, tuple) else (0, entry)
        body += bytes([name_type]) + struct.pack(">H", len(name)) + name
    return struct.pack(">H", len(body)) + body


def alpn_ext(*names: bytes) -> bytes:
    """ALPN extension data (RFC 7301 section 3.1)."""
    body = b"".join(bytes([len(n)]) + n for n in names)
    return struct.pack(">H", len(body)) + body


def supported_versions_ext(*versions: int) -> bytes:
    """supported_versions extension data of a ClientHello (RFC 8446 section 4.2.1)."""
    return bytes([2 * len(versions)]) + struct.pack(f">{len(versions)}H", *versions)


def chromium_like(message: bytes) -> bytes:
    """Reshape a real hello the way Chromium sends it: GREASE (RFC 8701) in cipher suites,
    extensions and supported_versions, and a GREASE encrypted_client_hello (0xfe0d)."""
    parts = HelloParts.split(message[4:])
    parts.cipher_suites.insert(0, GREASE[1])
    exts = dict(parts.extensions)
    versions = struct.unpack(f">{exts[43][0] // 2}H", exts[43][1:]) if 43 in exts else ()
    # An outer ECH extension: type outer(0), HPKE suite, config id, enc, payload (draft 22 5).
    ech = b"\x00" + struct.pack(">HHB", 1, 1, 0x42) + struct.pack(">H", 32) + b"\x11" * 32
    ech += struct.pack(">H", 144) + b"\x22" * 144
    parts.extensions = [
        (GREASE[2], b""),
        *(
            (t, supported_versions_ext(GREASE[3], *versions) if t == 43 else d)
            for t, d in parts.extensions
            if t != 21
        ),
        (0xFE0D, ech),
        (GREASE[4], b"\x00"),
    ]
    return handshake(parts.join())


# ---------------------------------------------------------------------------------------------
# TCP segments
# ---------------------------------------------------------------------------------------------

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

CLIENT = ("192.0.2.10", 51000)
SERVER = ("198.51.100.20", 443)


def tcp(
    payload: bytes = b"",
    *,
    seq: int = 1000,
    flags: int = ACK | PSH,
    src: tuple[str, int] = CLIENT,
    dst: tuple[str, int] = SERVER,
    ts: float = 1_000_000.0,
) -> Packet:
    """One TCP segment from ``src`` to ``dst`` (address text, port)."""
    return Packet(
        ts=ts,
        src=ipaddress.ip_address(src[0]).packed,
        dst=ipaddress.ip_address(dst[0]).packed,
        proto=6,
        sport=src[1],
        dport=dst[1],
        seq=seq & 0xFFFFFFFF,
        flags=flags,
        payload=payload,
    )


def cut(data: bytes, bounds: Iterable[int]) -> list[tuple[int, bytes]]:
    """Cut ``data`` at the given offsets: ``[(offset, piece), ...]`` covering all of it."""
    points = sorted({0, *(b for b in bounds if 0 < b < len(data)), len(data)})
    return [(a, data[a:b]) for a, b in itertools.pairwise(points)]


def segments(
    data: bytes,
    bounds: Iterable[int],
    *,
    isn: int = 1000,
    src: tuple[str, int] = CLIENT,
    dst: tuple[str, int] = SERVER,
    ts: float = 1_000_000.0,
) -> list[Packet]:
    """``data`` as TCP segments cut at ``bounds``, the stream starting at ``isn + 1``."""
    return [
        tcp(piece, seq=isn + 1 + off, src=src, dst=dst, ts=ts + i * 0.001)
        for i, (off, piece) in enumerate(cut(data, bounds))
    ]


def syn(
    *,
    isn: int = 1000,
    src: tuple[str, int] = CLIENT,
    dst: tuple[str, int] = SERVER,
    ts: float = 1_000_000.0,
) -> Packet:
    """The client's SYN."""
    return tcp(seq=isn, flags=SYN, src=src, dst=dst, ts=ts)


def syn_ack(
    *,
    isn: int = 7000,
    src: tuple[str, int] = SERVER,
    dst: tuple[str, int] = CLIENT,
    ts: float = 1_000_000.0,
) -> Packet:
    """The server's SYN-ACK."""
    return tcp(seq=isn, flags=SYN | ACK, src=src, dst=dst, ts=ts)


# ---------------------------------------------------------------------------------------------
# DNS messages (dnspython)
# ---------------------------------------------------------------------------------------------


def dns_query(name: str, rdtype: str = "A", *, qid: int = 0x1234) -> bytes:
    """A DNS query in wire format."""
    msg = dns.message.make_query(name, rdtype)
    msg.id = qid
    wire: bytes = msg.to_wire()
    return wire


def dns_response(query: bytes, *answers: str) -> bytes:
    """A response to ``query`` with A records for the given addresses."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    name = q.question[0].name
    for addr in answers:
        r.answer.append(dns.rrset.from_text(name, 300, "IN", "A", addr))
    wire: bytes = r.to_wire()
    return wire


def dns_tcp(*messages: bytes) -> bytes:
    """Messages as a DNS-over-TCP stream: each with its two-byte length (RFC 1035 4.2.2)."""
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)


class KeptObservations:
    """An observation writer that keeps what it is given (``seen``), for a stage under test."""

    def __init__(self) -> None:
        self.seen: list[Observation] = []

    def write(self, obs: Observation) -> None:
        self.seen.append(obs)

    def close(self) -> None:
        pass
