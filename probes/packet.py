"""Link, IP and transport decoding: a captured frame in, the innermost TCP or UDP packet out.

Sans-I/O: :class:`PacketDecoder` is fed ``(ts, linktype, frame)`` records, from a capture file or
a live socket alike, and keeps only the IP fragment table between calls. Each record has three
outcomes: a :class:`Packet`; ``None`` (not TCP or UDP, or a fragment of a datagram that is not
complete yet); or :class:`~probes.errors.MalformedPacket` for headers that are invalid or cut
short, which the caller counts and drops.

The decoder sees traffic the way tshark shows it: VLAN tags, MPLS and PPPoE are stepped over,
IP-in-IP, GRE, VXLAN, Geneve and GTP-U tunnels are opened, and fragmented datagrams are
reassembled, so that a QUIC Initial or a DNS answer on a small-MTU link, inside a tunnel or on a
mobile core's user plane is still found.
Captures taken with offloads on are normal: checksums are never checked, an IPv4 total length of
0 (TSO) means "the rest of the frame", and segments bigger than any MTU are fine.

This is the per-packet hot path, and most packets are bulk TCP data that the caller drops at
once; the common cases therefore use one :func:`struct.unpack_from` per header and no objects
besides the returned :class:`Packet`. For the same reason the headers are read by direct
indexing rather than through :class:`probes.cursor.Cursor`: in a traffic-mirroring capture
every packet arrives in a VXLAN, Geneve or GRE tunnel, so even the tunnel headers are hot.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

from probes.errors import MalformedPacket

# Link-layer header types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
DLT_RAW_12: Final = 12
"""DLT_RAW as most BSDs number it; some pcap files carry the DLT instead of LINKTYPE_RAW."""
DLT_RAW_14: Final = 14
"""DLT_RAW as OpenBSD numbers it."""
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081
GTPU_PORT: Final = 2152
_UDP_TUNNEL_PORTS: Final = frozenset({VXLAN_PORT, GENEVE_PORT, GTPU_PORT})

MAX_ENCAPSULATION: Final = 8
"""Tunnels nested deeper than this are treated as malformed, bounding the work per frame."""

MAX_FRAGMENTS_PER_SET: Final = 512
"""Pieces kept per datagram; a 64 KiB datagram on a 576-byte MTU link needs 119."""

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_ETH_MPLS: Final = frozenset({0x8847, 0x8848})
_ETH_PPPOE_SESSION: Final = 0x8864
_ETH_TEB: Final = 0x6558  # transparent Ethernet bridging, Ethernet inside GRE or Geneve

# Address families in the 4-byte header of LINKTYPE_NULL and LINKTYPE_LOOP: AF_INET is 2
# everywhere, AF_INET6 differs by BSD (NetBSD/OpenBSD 24, FreeBSD 28, Darwin 30).
_AF_INET: Final = 2
_AF_INET6: Final = frozenset({24, 28, 30})

_ARPHRD_NETLINK: Final = 824

_IP4_HDR = struct.Struct("!BxHHHxBxx4s4s").unpack_from
_IP6_HDR = struct.Struct("!4xHBx16s16s").unpack_from
_TCP_HDR = struct.Struct("!HHIxxxxBB").unpack_from
_UDP_HDR = struct.Struct("!HHH").unpack_from
_IP6_FRAG = struct.Struct("!BxHI").unpack_from

_STAT_KEYS: Final = (
    "unknown_linktype",
    "not_ip",
    "not_tcp_udp",
    "fragments",
    "reassembled",
    "fragment_evicted",
    "fragment_dropped",
    "tunnel",
)

FragmentKey = tuple[bytes, bytes, int, int]


@dataclass(slots=True)
class Packet:
    """The innermost TCP segment or UDP datagram of a frame."""

    ts: float
    """Capture time, seconds since the epoch."""
    src: bytes
    """Source address, 4 (IPv4) or 16 (IPv6) raw bytes."""
    dst: bytes
    """Destination address, 4 or 16 raw bytes."""
    proto: int
    """6 (TCP) or 17 (UDP)."""
    sport: int
    """Source port."""
    dport: int
    """Destination port."""
    seq: int
    """TCP sequence number; 0 for UDP."""
    flags: int
    """TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN); 0 for UDP."""
    payload: bytes
    """Transport payload: TCP data after the options, or UDP data trimmed to the UDP length."""


class _FragmentSet:
    """The pieces of one IP datagram seen so far, disjoint and sorted by offset."""

    __slots__ = ("first_ts", "nbytes", "pieces", "proto", "total")

    def __init__(self, first_ts: float, proto: int) -> None:
        self.first_ts = first_ts
        self.proto = proto  # IPv4 protocol, or IPv6 next header of the offset-0 fragment
        self.pieces: list[tuple[int, bytes]] = []
        self.nbytes = 0
        self.total = -1  # datagram payload length, known once the last fragment arrives


class PacketDecoder:
    """Decodes captured frames into :class:`Packet` records, reassembling IP fragments.

    The fragment table is bounded three ways, and whatever is thrown away is counted in
    ``stats["fragment_evicted"]``: at most ``max_fragment_sets`` datagrams in progress (the
    oldest goes first), none older than ``fragment_timeout`` seconds of capture time, and at
    most ``max_fragment_memory`` bytes held in all. A datagram that would grow beyond
    ``max_fragment_bytes``, or whose fragments overlap or disagree on its length, is dropped
    and counted in ``stats["fragment_dropped"]``.
    """

    __slots__ = (
        "_frag_bytes",
        "_frags",
        "fragment_timeout",
        "max_fragment_bytes",
        "max_fragment_memory",
        "max_fragment_sets",
        "stats",
    )

    def __init__(
        self,
        *,
        max_fragment_sets: int = 4096,
        fragment_timeout: float = 30.0,
        max_fragment_bytes: int = 65535,
        max_fragment_memory: int = 32 << 20,
    ) -> None:
        self.max_fragment_sets = max_fragment_sets
        self.fragment_timeout = fragment_timeout
        self.max_fragment_bytes = max_fragment_bytes
        self.max_fragment_memory = max_fragment_memory
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        """Counters: ``unknown_linktype``, ``not_ip`` (link layer carries something else),
        ``not_tcp_udp``, ``fragments`` (IP fragments seen), ``reassembled``, ``fragment_evicted``,
        ``fragment_dropped``, ``tunnel`` (encapsulations opened)."""
        # Insertion order is age order, so the oldest set is always first.
        self._frags: OrderedDict[FragmentKey, _FragmentSet] = OrderedDict()
        self._frag_bytes = 0

    @property
    def pending_fragment_sets(self) -> int:
        """Datagrams whose fragments are being held."""
        return len(self._frags)

    @property
    def pending_fragment_bytes(self) -> int:
        """Bytes of fragment data being held."""
        return self._frag_bytes

    def decode(self, ts: float, linktype: int, frame: bytes) -> Packet | None:
        """Return the innermost TCP or UDP packet of ``frame``, or ``None``.

        ``None`` means the frame carries something else, or is a fragment of a datagram that
        is not complete yet. Raises :class:`MalformedPacket` when a header is invalid or cut
        short.
        """
        end = len(frame)
        if linktype == LINKTYPE_ETHERNET:
            # IEEE 802.3: destination, source, EtherType (or 802.3 length).
            if end < 14:
                msg = f"truncated Ethernet header: {end} bytes"
                raise MalformedPacket(msg)
            etype = (frame[12] << 8) | frame[13]
            off = 14
        elif linktype == LINKTYPE_LINUX_SLL:
            # https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html: packet type,
            # ARPHRD_ type, address length, 8 address bytes, protocol type.
            if end < 16:
                msg = f"truncated Linux cooked header: {end} bytes"
                raise MalformedPacket(msg)
            if ((frame[2] << 8) | frame[3]) == _ARPHRD_NETLINK:
                self.stats["not_ip"] += 1
                return None
            etype = (frame[14] << 8) | frame[15]
            off = 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            # https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL2.html: protocol type,
            # reserved, interface index, ARPHRD_ type, packet type, address length, address.
            if end < 20:
                msg = f"truncated Linux cooked v2 header: {end} bytes"
                raise MalformedPacket(msg)
            if ((frame[8] << 8) | frame[9]) == _ARPHRD_NETLINK:
                self.stats["not_ip"] += 1
                return None
            etype = (frame[0] << 8) | frame[1]
            off = 20
        else:
            return self._other_link(ts, linktype, frame, end)

        # Fast path: TCP or UDP straight over IPv4 without options or IPv6 without extension
        # headers, which is nearly every packet. Anything unusual, malformed included, is left
        # to the general path, which reads the headers again and decides.
        if etype == _ETH_IPV4:
            if end - off < 20:
                return self._ip4(ts, frame, off, end, 0)
            vihl, total, _ident, frag, proto, src, dst = _IP4_HDR(frame, off)
            if vihl != 0x45 or frag & 0x3FFF or total < 20:
                return self._ip4(ts, frame, off, end, 0)
            l4 = off + 20
            stop = off + total
        elif etype == _ETH_IPV6:
            if end - off < 40 or frame[off] >> 4 != 6:
                return self._ip6(ts, frame, off, end, 0)
            plen, proto, src, dst = _IP6_HDR(frame, off)
            if not plen:
                return self._ip6(ts, frame, off, end, 0)
            l4 = off + 40
            stop = l4 + plen
        else:
            return self._ethertype(ts, etype, frame, off, end, 0)
        if stop > end:
            stop = end
        if proto == 6:
            if stop - l4 >= 20:
                sport, dport, seq, doff, flags = _TCP_HDR(frame, l4)
                doff = (doff >> 4) << 2
                if doff >= 20 and l4 + doff <= stop:
                    payload = frame[l4 + doff : stop]
                    return Packet(ts, src, dst, 6, sport, dport, seq, flags, payload)
        elif proto == 17 and stop - l4 >= 8:
            sport, dport, length = _UDP_HDR(frame, l4)
            if length >= 8 and dport not in _UDP_TUNNEL_PORTS:
                if l4 + length < stop:
                    stop = l4 + length
                return Packet(ts, src, dst, 17, sport, dport, 0, 0, frame[l4 + 8 : stop])
        if etype == _ETH_IPV4:
            return self._ip4(ts, frame, off, end, 0)
        return self._ip6(ts, frame, off, end, 0)

    def _other_link(self, ts: float, linktype: int, frame: bytes, end: int) -> Packet | None:
        if linktype in (LINKTYPE_RAW, DLT_RAW_12, DLT_RAW_14):
            return self._ip_any(ts, frame, 0, end, 0)
        if linktype == LINKTYPE_IPV4:
            return self._ip4(ts, frame, 0, end, 0)
        if linktype == LINKTYPE_IPV6:
            return self._ip6(ts, frame, 0, end, 0)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            # https://www.tcpdump.org/linktypes/LINKTYPE_NULL.html: a 4-byte address family,
            # in the capturing host's byte order for NULL and in network order for LOOP. The
            # values are small, so whichever end byte is non-zero holds it.
            if end < 4:
                msg = f"truncated loopback header: {end} bytes"
                raise MalformedPacket(msg)
            af = frame[0] | frame[3] if frame[1] == 0 and frame[2] == 0 else -1
            if af == _AF_INET:
                return self._ip4(ts, frame, 4, end, 0)
            if af in _AF_INET6:
                return self._ip6(ts, frame, 4, end, 0)
            self.stats["not_ip"] += 1
            return None
        self.stats["unknown_linktype"] += 1
        return None

    # -- link layer -------------------------------------------------------------------------

    def _ether(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        """An Ethernet frame starting at ``off`` (inside VXLAN, Geneve or GRE)."""
        if end - off < 14:
            msg = f"truncated inner Ethernet header: {end - off} bytes"
            raise MalformedPacket(msg)
        etype = (buf[off + 12] << 8) | buf[off + 13]
        return self._ethertype(ts, etype, buf, off + 14, end, depth)

    def _ethertype(
        self, ts: float, etype: int, buf: bytes, off: int, end: int, depth: int
    ) -> Packet | None:
        # IEEE 802.1Q, and 802.1ad / legacy QinQ outer tags: 2 bytes TCI, then the next
        # EtherType. Tags stack, and every byte consumed bounds the loop.
        while etype in _ETH_VLAN:
            if end - off < 4:
                msg = "truncated VLAN tag"
                raise MalformedPacket(msg)
            etype = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
        if etype == _ETH_IPV4:
            return self._ip4(ts, buf, off, end, depth)
        if etype == _ETH_IPV6:
            return self._ip6(ts, buf, off, end, depth)
        if etype in _ETH_MPLS:
            return self._mpls(ts, buf, off, end, depth)
        if etype == _ETH_PPPOE_SESSION:
            return self._pppoe(ts, buf, off, end, depth)
        self.stats["not_ip"] += 1
        return None

    def _mpls(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 3032 section 2.1: 4-byte label stack entries until the bottom-of-stack bit.
        # Nothing names the payload; like tshark, tell IPv4 and IPv6 by the version nibble.
        while True:
            if end - off < 4:
                msg = "truncated MPLS label stack"
                raise MalformedPacket(msg)
            bottom = buf[off + 2] & 1
            off += 4
            if bottom:
                break
        if off < end and buf[off] >> 4 in (4, 6):
            return self._ip_any(ts, buf, off, end, depth)
        self.stats["not_ip"] += 1
        return None

    def _pppoe(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 2516 section 4: version/type, code, session id, length; then (RFC 1661) the
        # 2-byte PPP protocol field: 0x0021 IPv4, 0x0057 IPv6 (RFC 5072).
        if end - off < 8:
            msg = "truncated PPPoE session header"
            raise MalformedPacket(msg)
        length = (buf[off + 4] << 8) | buf[off + 5]
        proto = (buf[off + 6] << 8) | buf[off + 7]
        end = min(end, off + 6 + length)
        if proto == 0x0021:
            return self._ip4(ts, buf, off + 8, end, depth)
        if proto == 0x0057:
            return self._ip6(ts, buf, off + 8, end, depth)
        self.stats["not_ip"] += 1
        return None

    # -- IP ---------------------------------------------------------------------------------

    def _ip_any(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        if off >= end:
            msg = "empty IP packet"
            raise MalformedPacket(msg)
        version = buf[off] >> 4
        if version == 4:
            return self._ip4(ts, buf, off, end, depth)
        if version == 6:
            return self._ip6(ts, buf, off, end, depth)
        msg = f"IP version {version} in a raw IP frame"
        raise MalformedPacket(msg)

    def _ip4(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 791 section 3.1.
        if end - off < 20:
            msg = f"truncated IPv4 header: {end - off} bytes"
            raise MalformedPacket(msg)
        vihl, total, ident, frag, proto, src, dst = _IP4_HDR(buf, off)
        if vihl >> 4 != 4:
            msg = f"IPv4 header with version {vihl >> 4}"
            raise MalformedPacket(msg)
        ihl = (vihl & 15) << 2
        if ihl < 20:
            msg = f"IPv4 header length {ihl} < 20"
            raise MalformedPacket(msg)
        if total:
            if total < ihl:
                msg = f"IPv4 total length {total} < header length {ihl}"
                raise MalformedPacket(msg)
            # Trim Ethernet padding. A total length beyond the frame means a capture cut
            # by the snapshot length: use what there is.
            if off + total < end:
                end = off + total
        # else: total length 0 is what TSO hands to the capture point; the frame is the packet.
        off += ihl
        if off > end:
            msg = f"IPv4 header length {ihl} beyond the packet"
            raise MalformedPacket(msg)
        if frag & 0x3FFF:
            # More-fragments flag or a non-zero offset (RFC 791 section 3.2).
            done = self._fragment(
                ts, (src, dst, ident, proto), (frag & 0x1FFF) << 3, frag & 0x2000, buf[off:end]
            )
            if done is None:
                return None
            return self._l4(ts, proto, src, dst, done[1], 0, len(done[1]), depth)
        return self._l4(ts, proto, src, dst, buf, off, end, depth)

    def _ip6(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 8200 section 3.
        if end - off < 40:
            msg = f"truncated IPv6 header: {end - off} bytes"
            raise MalformedPacket(msg)
        if buf[off] >> 4 != 6:
            msg = f"IPv6 header with version {buf[off] >> 4}"
            raise MalformedPacket(msg)
        plen, nh, src, dst = _IP6_HDR(buf, off)
        off += 40
        # Payload length 0 is a jumbogram (RFC 2675) or a segmentation-offload super-packet;
        # either way the frame is the packet. Otherwise trim link-layer padding.
        if plen and off + plen < end:
            end = off + plen
        return self._ip6_chain(ts, nh, src, dst, buf, off, end, depth)

    def _ip6_chain(
        self,
        ts: float,
        nh: int,
        src: bytes,
        dst: bytes,
        buf: bytes,
        off: int,
        end: int,
        depth: int,
    ) -> Packet | None:
        # RFC 8200 section 4: extension headers until an upper-layer header. Hop-by-hop (0),
        # routing (43) and destination options (60) share the generic layout, (next header,
        # length in 8-octet units not counting the first); AH (51, RFC 4302 section 2.2)
        # counts 4-octet units not counting the first two. ESP (50) and no next header (59)
        # end the chain with nothing readable, as any non-TCP/UDP protocol does.
        while nh != 6 and nh != 17:
            if nh == 0 or nh == 43 or nh == 60 or nh == 51:
                if end - off < 8:
                    msg = f"truncated IPv6 extension header {nh}"
                    raise MalformedPacket(msg)
                length = (buf[off + 1] + 2) * 4 if nh == 51 else (buf[off + 1] + 1) * 8
                nh = buf[off]
                off += length
                if off > end:
                    msg = f"IPv6 extension header of {length} bytes beyond the packet"
                    raise MalformedPacket(msg)
            elif nh == 44:
                # Section 4.5: next header, reserved, offset (13 bits) | res | M, ident.
                if end - off < 8:
                    msg = "truncated IPv6 fragment header"
                    raise MalformedPacket(msg)
                nh, offm, ident = _IP6_FRAG(buf, off)
                off += 8
                if offm == 0:
                    # An atomic fragment (RFC 6946): the whole packet, processed at once.
                    continue
                # Only the offset-0 fragment's next header counts (section 4.5), so the key
                # leaves it out and the set keeps it.
                done = self._fragment(
                    ts, (src, dst, ident, -1), offm & 0xFFF8, offm & 1, buf[off:end], nh
                )
                if done is None:
                    return None
                nh, data = done
                if depth >= MAX_ENCAPSULATION:
                    msg = "fragments nested too deep"
                    raise MalformedPacket(msg)
                return self._ip6_chain(ts, nh, src, dst, data, 0, len(data), depth + 1)
            else:
                return self._l4(ts, nh, src, dst, buf, off, end, depth)
        return self._l4(ts, nh, src, dst, buf, off, end, depth)

    # -- transport and tunnels --------------------------------------------------------------

    def _l4(
        self,
        ts: float,
        proto: int,
        src: bytes,
        dst: bytes,
        buf: bytes,
        off: int,
        end: int,
        depth: int,
    ) -> Packet | None:
        while proto == 51:
            # IPv4 AH (RFC 4302 section 2): next header, length in 4-octet units minus 2.
            if end - off < 8:
                msg = "truncated AH header"
                raise MalformedPacket(msg)
            proto = buf[off]
            off += (buf[off + 1] + 2) * 4
            if off > end:
                msg = "AH header beyond the packet"
                raise MalformedPacket(msg)
        if proto == 6:
            # RFC 9293 section 3.1: ports, sequence number, acknowledgment number, data
            # offset, flags; options up to the data offset.
            if end - off < 20:
                msg = f"truncated TCP header: {end - off} bytes"
                raise MalformedPacket(msg)
            sport, dport, seq, doff, flags = _TCP_HDR(buf, off)
            doff = (doff >> 4) << 2
            if doff < 20 or off + doff > end:
                msg = f"TCP data offset {doff} with {end - off} bytes of segment"
                raise MalformedPacket(msg)
            return Packet(ts, src, dst, 6, sport, dport, seq, flags, buf[off + doff : end])
        if proto == 17:
            # RFC 768: ports, length (header included), checksum.
            if end - off < 8:
                msg = f"truncated UDP header: {end - off} bytes"
                raise MalformedPacket(msg)
            sport, dport, length = _UDP_HDR(buf, off)
            if length >= 8:
                if off + length < end:
                    end = off + length
            elif length:
                msg = f"UDP length {length} < 8"
                raise MalformedPacket(msg)
            # A length beyond the packet is a capture cut short, and 0 is a jumbogram
            # (RFC 2675 section 4) or an offloaded super-packet: keep what there is.
            if dport in _UDP_TUNNEL_PORTS:
                if dport == VXLAN_PORT:
                    return self._vxlan(ts, buf, off + 8, end, depth)
                if dport == GENEVE_PORT:
                    return self._geneve(ts, buf, off + 8, end, depth)
                inner = _gtpu_pdu(buf, off + 8, end)
                if inner is not None:
                    start, stop = inner
                    if start < stop and buf[start] >> 4 not in (4, 6):
                        # An Ethernet or unstructured PDU session (TS 23.501 section 5.6.10).
                        self.stats["not_ip"] += 1
                        return None
                    self._descend(depth)
                    return self._ip_any(ts, buf, start, stop, depth + 1)
                # GTP signalling (echo, error indication, ...) is itself the UDP packet.
            return Packet(ts, src, dst, 17, sport, dport, 0, 0, buf[off + 8 : end])
        if proto == 4 or proto == 41:
            # IPv4 (RFC 2003) or IPv6 (RFC 4213 section 3.5, RFC 2473) inside IP.
            self._descend(depth)
            if proto == 4:
                return self._ip4(ts, buf, off, end, depth + 1)
            return self._ip6(ts, buf, off, end, depth + 1)
        if proto == 47:
            return self._gre(ts, buf, off, end, depth)
        self.stats["not_tcp_udp"] += 1
        return None

    def _descend(self, depth: int) -> None:
        if depth >= MAX_ENCAPSULATION:
            msg = f"more than {MAX_ENCAPSULATION} nested encapsulations"
            raise MalformedPacket(msg)
        self.stats["tunnel"] += 1

    def _gre(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 2784 section 2 with the key and sequence number of RFC 2890 section 2:
        # C R K S flags and version, protocol type, then checksum and reserved (if C),
        # key (if K), sequence number (if S).
        if end - off < 4:
            msg = "truncated GRE header"
            raise MalformedPacket(msg)
        flags = buf[off]
        if flags & 0x40 or buf[off + 1] & 0x07:
            # RFC 1701 source routing is long obsolete, and version 1 is PPTP's enhanced
            # GRE carrying PPP: neither carries what we look for.
            self.stats["not_tcp_udp"] += 1
            return None
        ptype = (buf[off + 2] << 8) | buf[off + 3]
        off += 4 + 4 * ((flags >> 7) + ((flags >> 5) & 1) + ((flags >> 4) & 1))
        if off > end:
            msg = "truncated GRE header"
            raise MalformedPacket(msg)
        self._descend(depth)
        if ptype == _ETH_TEB:
            return self._ether(ts, buf, off, end, depth + 1)
        return self._ethertype(ts, ptype, buf, off, end, depth + 1)

    def _vxlan(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 7348 section 5: flags, reserved, VNI, reserved; then an Ethernet frame.
        if end - off < 8:
            msg = f"truncated VXLAN header: {end - off} bytes"
            raise MalformedPacket(msg)
        self._descend(depth)
        return self._ether(ts, buf, off + 8, end, depth + 1)

    def _geneve(self, ts: float, buf: bytes, off: int, end: int, depth: int) -> Packet | None:
        # RFC 8926 section 3.4: version and option length (4-byte units), flags, protocol
        # type, VNI, reserved; then the options.
        if end - off < 8:
            msg = f"truncated Geneve header: {end - off} bytes"
            raise MalformedPacket(msg)
        ptype = (buf[off + 2] << 8) | buf[off + 3]
        off += 8 + (buf[off] & 0x3F) * 4
        if off > end:
            msg = "Geneve options beyond the packet"
            raise MalformedPacket(msg)
        self._descend(depth)
        if ptype == _ETH_TEB:
            return self._ether(ts, buf, off, end, depth + 1)
        return self._ethertype(ts, ptype, buf, off, end, depth + 1)

    # -- fragment reassembly ----------------------------------------------------------------

    def _fragment(
        self,
        ts: float,
        key: FragmentKey,
        offset: int,
        more: int,
        data: bytes,
        nh: int = -1,
    ) -> tuple[int, bytes] | None:
        """Add one fragment; once every piece is there, return ``(protocol, payload)``.

        ``nh`` is the IPv6 fragment header's next header, which only counts at offset 0.

        RFC 791 section 3.2 and RFC 8200 section 4.5. Overlapping fragments drop the whole
        datagram, as RFC 5722 requires for IPv6 and as Linux has done for IPv4 since 2018:
        the receiver discards such a datagram, so reassembling it one way or another would
        show traffic that never arrived (and is a classic way to hide it from a monitor).
        An exact repeat of a fragment is a retransmission and is ignored.
        """
        stats = self.stats
        stats["fragments"] += 1
        if more and not data:
            return None
        frags = self._frags
        # Time out by capture time: the oldest sets are first.
        horizon = ts - self.fragment_timeout
        while frags:
            oldest_key = next(iter(frags))
            if frags[oldest_key].first_ts >= horizon:
                break
            self._discard(oldest_key, "fragment_evicted")
        fset = frags.get(key)
        if fset is None:
            while len(frags) >= self.max_fragment_sets:
                self._discard(next(iter(frags)), "fragment_evicted")
            fset = frags[key] = _FragmentSet(ts, key[3])
        stop = offset + len(data)
        if stop > self.max_fragment_bytes or (fset.total >= 0 and stop > fset.total):
            self._discard(key, "fragment_dropped")
            return None
        if not more:
            if fset.total >= 0 and fset.total != stop:
                self._discard(key, "fragment_dropped")
                return None
            if fset.pieces and fset.pieces[-1][0] + len(fset.pieces[-1][1]) > stop:
                self._discard(key, "fragment_dropped")
                return None
            fset.total = stop
        if offset == 0 and nh >= 0:
            fset.proto = nh
        pieces = fset.pieces
        i = bisect_left(pieces, offset, key=itemgetter(0))
        if i < len(pieces) and pieces[i][0] == offset and pieces[i][1] == data:
            return None
        if (i < len(pieces) and pieces[i][0] < stop) or (
            i and pieces[i - 1][0] + len(pieces[i - 1][1]) > offset
        ):
            self._discard(key, "fragment_dropped")
            return None
        if len(pieces) >= MAX_FRAGMENTS_PER_SET:
            self._discard(key, "fragment_dropped")
            return None
        pieces.insert(i, (offset, data))
        fset.nbytes += len(data)
        self._frag_bytes += len(data)
        if fset.nbytes == fset.total:
            # Disjoint pieces inside [0, total) whose sizes add up to total cover it all.
            self._discard(key, None)
            stats["reassembled"] += 1
            return fset.proto, b"".join([piece for _, piece in pieces])
        while frags and self._frag_bytes > self.max_fragment_memory:
            oldest_key = next(iter(frags))
            self._discard(oldest_key, "fragment_evicted")
            if oldest_key == key:
                break
        return None

    def _discard(self, key: FragmentKey, counter: str | None) -> None:
        fset = self._frags.pop(key)
        self._frag_bytes -= fset.nbytes
        if counter is not None:
            self.stats[counter] += 1


def _gtpu_pdu(buf: bytes, off: int, end: int) -> tuple[int, int] | None:
    """Return the ``(start, end)`` of the user packet inside a GTP-U G-PDU.

    ``None`` means another message type: path management or error signalling, not user data.

    3GPP TS 29.281 section 5.1: flags (version 1, PT 1, E, S, PN), message type (255 is a
    G-PDU), length of what follows the first 8 bytes, TEID; then, if any of E, S or PN is set,
    sequence number, N-PDU number and next extension header type; then (section 5.2) extension
    headers, each with a length in 4-octet units and the type of the next one in its last byte.
    """
    if end - off < 8:
        msg = f"truncated GTP-U header: {end - off} bytes"
        raise MalformedPacket(msg)
    flags = buf[off]
    if flags >> 4 != 0x3 or buf[off + 1] != 0xFF:
        return None
    stop = min(end, off + 8 + ((buf[off + 2] << 8) | buf[off + 3]))
    off += 8
    if flags & 0x07:
        if stop - off < 4:
            msg = "truncated GTP-U optional fields"
            raise MalformedPacket(msg)
        next_type = buf[off + 3] if flags & 0x04 else 0
        off += 4
        while next_type:
            if off >= stop or buf[off] == 0:
                msg = "truncated or empty GTP-U extension header"
                raise MalformedPacket(msg)
            off += buf[off] * 4
            if off > stop:
                msg = "GTP-U extension header beyond the packet"
                raise MalformedPacket(msg)
            next_type = buf[off - 1]
    return off, stop
