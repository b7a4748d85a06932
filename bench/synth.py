"""Synthetic traffic whose handshakes come from real stacks, for the demo, benchmarks and tests.

ClientHellos are OpenSSL's (Python ``ssl`` over memory BIOs), QUIC Initials are aioquic's, DNS
messages are dnspython's. Only the framing (Ethernet, IPv4/IPv6, TCP, UDP) is built here, with
checksums left zero as in a capture taken with offloads on, which the sensor must accept.
"""

from __future__ import annotations

import ipaddress
import os
import random
import ssl
import struct
from collections.abc import Iterable, Sequence
from functools import cache
from typing import BinaryIO

import dns.message
import dns.rdatatype
import dns.rrset
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

ETH_IPV4 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
ETH_IPV6 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


class PcapWriter:
    """Classic pcap, microsecond timestamps, Ethernet link type."""

    def __init__(self, stream: BinaryIO, linktype: int = 1) -> None:
        self._stream = stream
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        self.count = 0

    def write(self, ts: float, frame: bytes) -> None:
        sec = int(ts)
        usec = round((ts - sec) * 1e6)
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self._stream.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
        self.count += 1


class PcapngWriter:
    """pcapng with one Ethernet interface, nanosecond timestamps (if_tsresol = 9)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        stream.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        stream.write(_block(1, struct.pack("<HHI", 1, 0, 262144) + tsresol))
        self.count = 0

    def write(self, ts: float, frame: bytes) -> None:
        ns = round(ts * 1e9)
        pad = b"\x00" * (-len(frame) % 4)
        body = struct.pack("<IIIII", 0, ns >> 32, ns & 0xFFFFFFFF, len(frame), len(frame))
        self._stream.write(_block(6, body + frame + pad))
        self.count += 1


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ip_frame(src: str, dst: str, proto: int, l4: bytes, *, ident: int = 0) -> bytes:
    """Ethernet + IPv4 or IPv6 around a transport segment."""
    s, d = _addr(src), _addr(dst)
    if len(s) == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0, s, d)
        return ETH_IPV4 + hdr + l4
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, s, d)
    return ETH_IPV6 + hdr + l4


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def udp_datagram(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


@cache
def _client_context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_hello(
    sni: str | None, alpn: Sequence[str] = ("h2", "http/1.1"), *, big: bool = False
) -> bytes:
    """OpenSSL's first flight (the ClientHello record) for ``sni``.

    ``big`` offers a long ALPN list so that the hello is about 2 KB, the size of a Chromium
    hello with a post-quantum key share, and must span two TCP segments.
    """
    protocols = tuple(alpn)
    if big:
        protocols += tuple(f"x-egresswatch-padding-{i:03d}" for i in range(60))
    ctx = _client_context(protocols)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def quic_initial_datagrams(
    sni: str, version: int = 1, alpn: Sequence[str] = ("h3",)
) -> list[bytes]:
    """The datagrams aioquic sends first as a client: Initial(s) carrying the ClientHello."""
    config = QuicConfiguration(is_client=True, alpn_protocols=list(alpn), server_name=sni)
    config.supported_versions = [version]
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.1", 443), now=0.0)
    return [data for data, _addr in conn.datagrams_to_send(now=0.0)]


def dns_pair(
    qname: str, answers: Iterable[str], qtype: str = "A", *, qid: int = 0
) -> tuple[bytes, bytes]:
    """A query and its response; an answer that is not an address becomes a CNAME."""
    query = dns.message.make_query(qname, qtype, id=qid)
    response = dns.message.make_response(query)
    owner = qname.rstrip(".") + "."
    for value in answers:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            response.answer.append(dns.rrset.from_text(owner, 300, "IN", "CNAME", value + "."))
            owner = value + "."
            continue
        rtype = "A" if ip.version == 4 else "AAAA"
        response.answer.append(dns.rrset.from_text(owner, 300, "IN", rtype, str(ip)))
    return query.to_wire(), response.to_wire()


class Traffic:
    """Writes whole conversations, advancing a clock so that packets come in time order."""

    def __init__(
        self, writer: PcapWriter | PcapngWriter, *, start: float = 1_780_000_000.0, seed: int = 7
    ) -> None:
        self.writer = writer
        self.now = start
        self.rng = random.Random(seed)
        self._bulk = bytes([0x17]) + os.urandom(1447)

    def _emit(self, frame: bytes, gap: float = 0.0002) -> None:
        self.now += gap
        self.writer.write(self.now, frame)

    def tcp(
        self,
        client: str,
        cport: int,
        server: str,
        sport: int,
        first_flight: bytes,
        *,
        mss: int = 1448,
        out_of_order: bool = False,
        retransmit: bool = False,
        handshake: bool = True,
        down_segments: int = 0,
        up_segments: int = 0,
    ) -> None:
        """A TCP connection whose client speaks ``first_flight`` first, then optional bulk."""
        cseq, sseq = self.rng.getrandbits(32), self.rng.getrandbits(32)
        if handshake:
            self._emit(ip_frame(client, server, 6, tcp_segment(cport, sport, cseq, 0, SYN, b"")))
            self._emit(
                ip_frame(
                    server, client, 6, tcp_segment(sport, cport, sseq, cseq + 1, SYN | ACK, b"")
                )
            )
            self._emit(
                ip_frame(client, server, 6, tcp_segment(cport, sport, cseq + 1, sseq + 1, ACK, b""))
            )
        seq = (cseq + 1) & 0xFFFFFFFF
        ack = (sseq + 1) & 0xFFFFFFFF
        chunks = [first_flight[i : i + mss] for i in range(0, len(first_flight), mss)]
        segments = []
        for chunk in chunks:
            segments.append(
                ip_frame(client, server, 6, tcp_segment(cport, sport, seq, ack, ACK | PSH, chunk))
            )
            seq = (seq + len(chunk)) & 0xFFFFFFFF
        order = list(range(len(segments)))
        if out_of_order and len(order) > 1:
            order.reverse()
        for i in order:
            self._emit(segments[i])
        if retransmit:
            self._emit(segments[0], 0.2)
        for n in range(down_segments):
            self._emit(
                ip_frame(server, client, 6, tcp_segment(sport, cport, ack, seq, ACK, self._bulk)),
                0.00001,
            )
            ack = (ack + len(self._bulk)) & 0xFFFFFFFF
            if n % 2:
                self._emit(
                    ip_frame(client, server, 6, tcp_segment(cport, sport, seq, ack, ACK, b"")),
                    0.00001,
                )
        for _ in range(up_segments):
            self._emit(
                ip_frame(client, server, 6, tcp_segment(cport, sport, seq, ack, ACK, self._bulk)),
                0.00001,
            )
            seq = (seq + len(self._bulk)) & 0xFFFFFFFF
        self._emit(ip_frame(client, server, 6, tcp_segment(cport, sport, seq, ack, FIN | ACK, b"")))

    def udp(
        self, src: str, sport: int, dst: str, dport: int, payload: bytes, gap: float = 0.0002
    ) -> None:
        self._emit(ip_frame(src, dst, 17, udp_datagram(sport, dport, payload)), gap)

    def quic(
        self,
        client: str,
        cport: int,
        server: str,
        sni: str,
        version: int = 1,
        *,
        reverse: bool = False,
    ) -> None:
        datagrams = quic_initial_datagrams(sni, version)
        if reverse:
            datagrams.reverse()
        for data in datagrams:
            self.udp(client, cport, server, 443, data)

    def dns(
        self,
        client: str,
        cport: int,
        resolver: str,
        qname: str,
        answers: Iterable[str],
        qtype: str = "A",
    ) -> None:
        query, response = dns_pair(qname, answers, qtype, qid=self.rng.getrandbits(16))
        self.udp(client, cport, resolver, 53, query)
        self.udp(resolver, 53, client, cport, response, 0.01)


DEMO_HOSTS = (
    ("api.openai.com", "162.159.140.245"),
    ("api.anthropic.com", "160.79.104.10"),
    ("bedrock-runtime.eu-central-1.amazonaws.com", "3.124.0.20"),
    ("europe-west4-aiplatform.googleapis.com", "142.250.179.202"),
    ("api.deepseek.com", "116.205.40.112"),
    ("copilot-proxy.githubusercontent.com", "140.82.113.22"),
    ("api.mistral.ai", "104.18.30.12"),
    ("pypi.org", "151.101.64.223"),
)


def write_demo(stream: BinaryIO) -> int:
    """The bundled demo capture: a developer machine reaching AI endpoints and a registry."""
    traffic = Traffic(PcapngWriter(stream), start=1_790_000_000.0)
    client, resolver = "192.168.1.23", "192.168.1.1"
    port = 50000
    for name, addr in DEMO_HOSTS:
        port += 7
        traffic.dns(client, port, resolver, name, [addr])
        port += 1
        traffic.tcp(
            client,
            port,
            addr,
            443,
            client_hello(name, big=name.startswith("api.openai")),
            out_of_order=name.startswith("api.openai"),
            down_segments=6,
        )
    traffic.dns(client, port + 1, resolver, "generativelanguage.googleapis.com", ["142.250.74.106"])
    traffic.quic(client, port + 2, "142.250.74.106", "generativelanguage.googleapis.com", 1)
    traffic.quic(client, port + 3, "142.250.74.106", "gemini.google.com", 0x6B3343CF)
    return traffic.writer.count


def write_mixed(
    stream: BinaryIO,
    *,
    connections: int = 4000,
    bulk_segments: int = 220,
    quic_connections: int = 400,
    dns_exchanges: int = 2000,
    seed: int = 11,
) -> dict[str, int]:
    """A large capture of a busy machine: mostly bulk data, with thousands of connections.

    A fifth of the ClientHellos span two segments (post-quantum size), half of those arrive
    out of order and some are retransmitted; a fifth of the traffic is IPv6. Returns what was
    written, including the expected number of distinct observations of each kind.
    """
    rng = random.Random(seed)
    traffic = Traffic(PcapWriter(stream), seed=seed)
    names = [f"host{i}.svc{i % 37}.example.net" for i in range(300)]
    hellos = {n: client_hello(n) for n in names}
    big = {n: client_hello(n, big=True) for n in names[:60]}
    quics = {
        n: quic_initial_datagrams(n, 1 if i % 3 else 0x6B3343CF) for i, n in enumerate(names[:50])
    }
    counts = {"tls": 0, "tls_out_of_order": 0, "quic": 0, "dns": 0}
    plan = ["tls"] * connections + ["quic"] * quic_connections + ["dns"] * dns_exchanges
    rng.shuffle(plan)
    for i, what in enumerate(plan):
        v6 = i % 5 == 0
        client = "2001:db8::23" if v6 else "10.1.0.23"
        server = f"2001:db8:1::{i % 4000 + 1:x}" if v6 else f"198.18.{i % 200}.{i % 250 + 1}"
        port = 32768 + i % 28000
        name = names[i % len(names)]
        if what == "tls":
            is_big = name in big and rng.random() < 0.7
            ooo = is_big and rng.random() < 0.5
            traffic.tcp(
                client,
                port,
                server,
                443,
                big[name] if is_big else hellos[name],
                out_of_order=ooo,
                retransmit=rng.random() < 0.05,
                down_segments=rng.randint(bulk_segments // 2, bulk_segments * 3 // 2),
            )
            counts["tls"] += 1
            counts["tls_out_of_order"] += ooo
        elif what == "quic":
            qname = names[i % 50]
            for data in quics[qname]:
                traffic.udp(client, port, server, 443, data)
            counts["quic"] += 1
        else:
            traffic.dns(client, port, "10.1.0.1" if not v6 else "2001:db8::1", name, [server])
            counts["dns"] += 1
    counts["packets"] = traffic.writer.count
    return counts


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the bundled demo capture")
    parser.add_argument("out")
    args = parser.parse_args()
    with open(args.out, "wb") as fh:
        n = write_demo(fh)
    print(f"wrote {n} packets to {args.out}")
