"""The sensing pipeline: frames in, Observations out.

One :class:`Sensor` owns the decoder and the three protocol trackers and routes each packet:

* TCP -> :class:`probes.tcp.TcpReassembler`, which completes ClientHellos and DNS-over-TCP
  messages;
* UDP port 53 -> :class:`probes.dns.DnsTracker` (mDNS and LLMNR are local, not egress);
* other UDP that starts with a QUIC long header of a version we read ->
  :class:`probes.quic.QuicTracker`, whose complete CRYPTO stream goes to the same ClientHello
  parser as TCP; other UDP that is plainly DNS (on a port other than 53) -> the DNS tracker.

It is sans-I/O: the caller feeds ``(ts, linktype, frame)`` from a file or a live socket and
passes time in through the packets, so replaying a capture and watching live share every line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from probes.dns import DNS_PORTS, NOT_EGRESS_PORTS, DnsTracker, looks_like_dns
from probes.errors import Malformed, MalformedPacket
from probes.observation import Kind, Observation, Transport, format_ip
from probes.packet import Packet, PacketDecoder
from probes.quic import QuicTracker, is_quic_long_header
from probes.tcp import TcpReassembler
from probes.tls import ClientHello, read_handshake_client_hello, tls_version_name

# Housekeeping (timeouts of half-open flows, unanswered DNS queries) runs when packet time has
# moved on by this much, so its cost is spread thin and replay stays deterministic.
EXPIRE_INTERVAL = 1.0
_NOTHING: tuple[Observation, ...] = ()


class Sensor:
    """Turns captured frames into :class:`Observation` records."""

    def __init__(
        self,
        *,
        decoder: PacketDecoder | None = None,
        tcp: TcpReassembler | None = None,
        quic: QuicTracker | None = None,
        dns: DnsTracker | None = None,
    ) -> None:
        self.decoder = decoder or PacketDecoder()
        self.tcp = tcp or TcpReassembler()
        self.quic = quic or QuicTracker()
        self.dns = dns or DnsTracker()
        self.frames = 0
        self.malformed_packets = 0
        self.malformed_client_hellos = 0
        self.observations = 0
        # Packet-time window inside which no housekeeping is due; (0, 0) until the first frame.
        self._expire_low = 0.0
        self._expire_high = 0.0
        self._decode = self.decoder.decode
        self._segment = self.tcp.segment

    def frame(self, ts: float, linktype: int, frame: bytes) -> Sequence[Observation]:
        """Feed one captured frame; returns the observations it completed (usually none)."""
        # The hot path: most frames are bulk data of flows already decided. Keep it to one
        # decode, one comparison and one dict lookup in the reassembler.
        self.frames += 1
        out: list[Observation] | None = None
        if not self._expire_low <= ts < self._expire_high:
            # Also taken when the clock jumps backwards (merged captures).
            out = self.expire(ts) if self._expire_high else []
            self._expire_low = ts
            self._expire_high = ts + EXPIRE_INTERVAL
        try:
            pkt = self._decode(ts, linktype, frame)
        except MalformedPacket:
            self.malformed_packets += 1
            return out or _NOTHING
        if pkt is None:
            return out or _NOTHING
        if pkt.proto == 6:
            results = self._segment(pkt)
            if not results:
                return out or _NOTHING
            if out is None:
                out = []
            for result in results:
                if result.client_hello is not None:
                    out.append(self._hello(result.pkt, result.client_hello, "tls", "tcp"))
                elif result.dns_message is not None:
                    r = result.pkt
                    out.extend(
                        self.dns.message(
                            r.ts, r.src, r.sport, r.dst, r.dport, "tcp", result.dns_message
                        )
                    )
        elif pkt.proto == 17:
            if out is None:
                out = []
            self._udp(pkt, out)
        else:
            return out or _NOTHING
        self.observations += len(out)
        return out

    def _udp(self, pkt: Packet, out: list[Observation]) -> None:
        sport, dport = pkt.sport, pkt.dport
        if dport in DNS_PORTS or sport in DNS_PORTS:
            out.extend(self.dns.message(pkt.ts, pkt.src, sport, pkt.dst, dport, "udp", pkt.payload))
            return
        if dport in NOT_EGRESS_PORTS or sport in NOT_EGRESS_PORTS:
            return
        payload = pkt.payload
        if not is_quic_long_header(payload):
            # Plain DNS on another port (DNSCrypt fetches its certificate with a TXT query on
            # 443). The header test first (one question, opcode QUERY, Z clear) keeps the cost
            # of a full parse off ordinary UDP.
            if (
                len(payload) >= 17
                and payload[4:6] == b"\x00\x01"
                and not payload[2] & 0x78
                and not payload[3] & 0x40
                and looks_like_dns(payload)
            ):
                out.extend(self.dns.message(pkt.ts, pkt.src, sport, pkt.dst, dport, "udp", payload))
            return
        for initial in self.quic.datagram(pkt.ts, pkt.src, sport, pkt.dst, dport, payload):
            try:
                hello = read_handshake_client_hello(initial.crypto)
            except Malformed:
                self.malformed_client_hellos += 1
                continue
            if hello is not None:
                out.append(self._hello(pkt, hello, "quic", "udp", initial.version))

    @staticmethod
    def _hello(
        pkt: Packet,
        hello: ClientHello,
        kind: Kind,
        transport: Transport,
        quic_version: int | None = None,
    ) -> Observation:
        return Observation(
            ts=pkt.ts,
            kind=kind,
            transport=transport,
            src=format_ip(pkt.src),
            dst=format_ip(pkt.dst),
            sport=pkt.sport,
            dport=pkt.dport,
            sni=hello.sni,
            alpn=hello.alpn,
            ech=hello.ech,
            tls_versions=tuple(tls_version_name(v) for v in hello.supported_versions),
            quic_version=None if quic_version is None else f"0x{quic_version:08x}",
        )

    def expire(self, now: float) -> list[Observation]:
        """Time out idle flows and unanswered queries; returns the DNS observations that ends."""
        self.tcp.expire(now)
        self.quic.expire(now)
        out = self.dns.expire(now)
        self.observations += len(out)
        return out

    def finish(self) -> list[Observation]:
        """End of input: emit everything still pending (unanswered DNS queries)."""
        out = self.dns.flush()
        self.observations += len(out)
        return out

    def run(self, frames: Iterable[tuple[float, int, bytes]]) -> Iterator[Observation]:
        """Feed every frame and yield observations as they complete, then the pending ones."""
        frame = self.frame
        for ts, linktype, data in frames:
            out = frame(ts, linktype, data)
            if out:
                yield from out
        yield from self.finish()

    def stats(self) -> dict[str, int]:
        """Counters of every stage, flat, with a prefix per stage."""
        out = {
            "frames": self.frames,
            "observations": self.observations,
            "malformed_packets": self.malformed_packets,
            "malformed_client_hellos": self.malformed_client_hellos,
        }
        for prefix, part in (
            ("decode", self.decoder.stats),
            ("tcp", self.tcp.stats),
            ("quic", self.quic.stats),
            ("dns", self.dns.stats),
        ):
            for key, value in part.items():
                out[f"{prefix}.{key}"] = value
        return out
