"""Per-flow TCP reassembly of ClientHellos, and in-order streams for DNS over TCP.

Sans-I/O: :meth:`TcpReassembler.segment` is fed decoded TCP segments (with their capture time)
and returns what they completed; :meth:`TcpReassembler.expire` is fed the time. Nothing here
touches a socket or a clock.

A flow is one direction of one connection, keyed by ``(src, dst, sport, dport)``. Each flow is
in one of three states:

* **watching**: where the TLS stream starts is not known yet (no SYN was captured, or the
  connection began in plaintext, as STARTTLS, HTTP CONNECT, SOCKS or PostgreSQL's SSLRequest
  do). Each segment is checked, cheaply, for the start of a handshake record; segments are
  kept (bounded) in case they turn out to follow it. A budget of segments ends the watch.
* **assembling**: the stream offset of the first byte is known (the SYN's ISN + 1, or the
  segment that starts the handshake record). Segments are placed by sequence number, modulo
  2^32, whatever order, duplication or overlap they arrive in; in-order bytes go to an
  incremental :class:`~probes.tls.ClientHelloReader` (TLS) or are cut into length-prefixed
  messages (DNS over TCP, RFC 7766 section 8).
* **tombstone**: the flow has given what it can (its ClientHello), or cannot give anything (the
  server side, a non-TLS protocol, an established TLS session picked up mid-stream, a malformed
  hello, a bound hit). A tombstone is one dict entry, so the rest of a bulk transfer costs one
  lookup per packet.

Overlapping bytes that differ are resolved in favour of the bytes that became contiguous
first: in-order bytes are never replaced, and a segment held out of order gives only the bytes
that nothing in order has covered by the time its hole is filled.

Every table and buffer is bounded; hitting a bound is counted in :attr:`TcpReassembler.stats`
and ends that flow, never the reassembler. Only the first ClientHello of a connection is
reported: a second one after a HelloRetryRequest must repeat the same server_name (RFC 8446
section 4.1.2), and by then the flow is a tombstone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from probes.errors import MalformedTLS
from probes.tls import (
    HANDSHAKE_SERVER_HELLO,
    MAX_RECORD_LENGTH,
    ClientHello,
    ClientHelloReader,
)

if TYPE_CHECKING:
    # Only read, never built, here: the decoder owns the record.
    from probes.packet import Packet

log = logging.getLogger(__name__)

# RFC 9293 section 3.1: control bits in the flags byte.
FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10
_CONTROL = SYN | FIN | RST

# RFC 9293 section 3.4: sequence numbers are compared modulo 2^32; a difference of 2^31 or more
# is read as "before", which is the usual serial-number arithmetic (RFC 1982).
_MASK = 0xFFFFFFFF
_HALF = 1 << 31
# A DNS stream re-bases its offsets well before they could wrap.
_REBASE = 1 << 30

# RFC 8446 section 5.1 record header bytes: content type, legacy_record_version (0x0300 to
# 0x0304 in practice). 22 is handshake; 20, 21, 23 and 24 are the other content types, whose
# presence at a segment start means the TLS session is already under way.
_HANDSHAKE = 0x16
_OTHER_RECORD_TYPES = frozenset({0x14, 0x15, 0x17, 0x18})

# RFC 7766 section 8 / RFC 1035 section 4.2.2: a DNS message over TCP is preceded by a two-byte
# length; 12 bytes is the DNS header, so anything shorter means the stream is out of step.
_DNS_HEADER = 12

# Bytes that can open a protocol that later switches to TLS on the same connection. Text
# protocols (SMTP, IMAP, POP3, FTP, XMPP, NNTP, LDAP's 0x30, HTTP CONNECT, PROXY v1, MySQL's
# SSLRequest length byte 0x20) begin with printable ASCII or whitespace; the binary ones listed
# are PostgreSQL's SSLRequest length (0x00), SOCKS 4 and 5, TDS pre-login (0x12, MS SQL) and TPKT
# (0x03, RDP). Anything else at offset 0 after a SYN is not going to carry a ClientHello.
_PRELUDE_FIRST_BYTES = frozenset(
    {0x09, 0x0A, 0x0D, *range(0x20, 0x7F), 0x00, 0x04, 0x05, 0x12, 0x03}
)
# Text protocols that are known never to switch to TLS in-band.
_NOT_STARTTLS = (b"SSH-", b"PRI * HTTP/2.0")


@dataclass(frozen=True, slots=True)
class TcpResult:
    """One complete ClientHello, or one complete DNS-over-TCP message."""

    pkt: Packet
    """The segment that completed it; its addresses and ports are the sending side's."""
    client_hello: ClientHello | None
    """The ClientHello, for TLS flows."""
    dns_message: bytes | None
    """One DNS message without its two-byte length prefix, for flows on ``stream_ports``."""


FlowKey = tuple[bytes, bytes, int, int]


class _Flow:
    """Per-direction state of a flow that is watching or assembling."""

    __slots__ = (
        "base",
        "buf",
        "dns",
        "early",
        "early_bytes",
        "isn",
        "last",
        "next",
        "pending",
        "pending_bytes",
        "reader",
        "watched",
    )

    def __init__(self, *, dns: bool, base: int | None, isn: int | None, now: float) -> None:
        self.dns = dns
        # Absolute sequence number of stream offset 0 (None while watching).
        self.base = base
        self.isn = isn
        self.last = now
        # Offset (from base) of the first byte not yet received in order.
        self.next = 0
        # Out-of-order segments by offset from base.
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        # Segments seen while watching, as (absolute seq, payload), oldest first.
        self.early: list[tuple[int, bytes]] = []
        self.early_bytes = 0
        self.watched = 0
        self.reader: ClientHelloReader | None = None if dns else ClientHelloReader()
        # DNS: in-order bytes not yet cut into messages.
        self.buf = bytearray()

    def held(self) -> int:
        reader = self.reader.held if self.reader is not None else 0
        return self.pending_bytes + self.early_bytes + len(self.buf) + reader


class TcpReassembler:
    """Completes ClientHellos (and DNS-over-TCP messages) from TCP segments in any order.

    ``max_flows`` bounds the flows tracked, tombstones included (the oldest tombstone goes
    first, then the oldest live flow); ``max_flow_bytes`` and ``max_segments_per_flow`` bound
    what one flow may hold, and ``max_segments_per_flow`` is also the watching budget;
    ``idle_timeout`` (packet time) ends flows that stop; ``stream_ports`` are the ports (either
    side) whose flows carry length-prefixed DNS messages in both directions.

    ``max_total_bytes`` caps the buffers of all flows together: the per-flow bounds alone would
    let ``max_flows`` half-sent hellos hold gigabytes. It is checked in :meth:`expire` and after
    every 1024 new flows (each flow holds at most ``max_flow_bytes``), so the overshoot is
    bounded too.
    """

    def __init__(
        self,
        *,
        max_flows: int = 65536,
        max_flow_bytes: int = 65536,
        max_segments_per_flow: int = 64,
        idle_timeout: float = 120.0,
        stream_ports: frozenset[int] = frozenset({53}),
        max_total_bytes: int = 32 << 20,
    ) -> None:
        if max_flows < 1 or max_flow_bytes < 1 or max_segments_per_flow < 1:
            msg = "max_flows, max_flow_bytes and max_segments_per_flow must be at least 1"
            raise ValueError(msg)
        self.max_flows = max_flows
        self.max_flow_bytes = max_flow_bytes
        self.max_total_bytes = max_total_bytes
        self._created_since_check = 0
        self.max_segments_per_flow = max_segments_per_flow
        self.idle_timeout = idle_timeout
        self.stream_ports = stream_ports
        self._flows: dict[FlowKey, _Flow] = {}
        # Tombstones: key -> time of the last packet, for the idle timeout.
        self._dead: dict[FlowKey, float] = {}
        self._next_expire: float | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "segments_tracked",
                "flows_created",
                "flows_evicted",
                "flows_expired",
                "flows_closed",
                "client_hellos",
                "dns_messages",
                "malformed",
                "not_tls",
                "segments_out_of_order",
                "retransmissions",
                "overflow",
                "gave_up",
                "memory_evicted",
            ),
            0,
        )
        """Counters: ``segments_tracked`` went past the tombstone fast path; ``not_tls``
        flows were proven to carry no ClientHello; ``overflow`` flows hit a buffer bound;
        ``gave_up`` flows were watched for their budget without a handshake starting;
        ``memory_evicted`` live flows were dropped, oldest first, to keep all buffers together
        under ``max_total_bytes``."""

    # -- gauges ------------------------------------------------------------------------------

    @property
    def live_flows(self) -> int:
        """Flows watching or assembling."""
        return len(self._flows)

    @property
    def tombstones(self) -> int:
        """Flows decided, kept as one dict entry each."""
        return len(self._dead)

    def buffered_bytes(self) -> int:
        """Payload bytes held over all flows (walks the table: for tests and diagnostics)."""
        return sum(f.held() for f in self._flows.values())

    # -- the fast path -----------------------------------------------------------------------

    def segment(self, pkt: Packet) -> list[TcpResult]:
        """Feed one TCP segment; returns the ClientHellos and DNS messages it completed."""
        flags = pkt.flags
        if not flags & _CONTROL:
            # A pure ACK says nothing, and a decided flow's data is not looked at: together
            # these are nearly every packet of a bulk transfer.
            if not pkt.payload:
                return []
            key = (pkt.src, pkt.dst, pkt.sport, pkt.dport)
            dead = self._dead
            if key in dead:
                dead[key] = pkt.ts
                return []
        else:
            key = (pkt.src, pkt.dst, pkt.sport, pkt.dport)
        return self._track(pkt, key, flags)

    # -- the slow path -----------------------------------------------------------------------

    def _track(self, pkt: Packet, key: FlowKey, flags: int) -> list[TcpResult]:
        stats = self.stats
        stats["segments_tracked"] += 1
        now = pkt.ts
        nxt = self._next_expire
        if nxt is None or now >= nxt or now < nxt - 2 * self.idle_timeout:
            # Housekeeping by packet time, a few times per timeout; the last test catches a
            # clock that jumped backwards (merged captures).
            if nxt is not None:
                self.expire(now)
            self._next_expire = now + self.idle_timeout / 4

        if flags & RST:
            # RFC 9293 section 3.10.7.4: a reset ends the connection in both directions. Its
            # payload, if any, is diagnostic text, not stream data.
            reverse = (pkt.dst, pkt.src, pkt.dport, pkt.sport)
            for k in (key, reverse):
                if self._flows.pop(k, None) is not None or self._dead.pop(k, None) is not None:
                    stats["flows_closed"] += 1
            return []

        out: list[TcpResult] = []
        payload = pkt.payload
        flow = self._flows.get(key)
        if flags & SYN:
            flow = self._syn(pkt, key, flow)
            if flow is None:
                return out
            if payload:
                # TCP Fast Open (RFC 7413): data in a SYN starts at ISN + 1.
                self._data(flow, key, pkt, (pkt.seq + 1) & _MASK, payload, out)
        elif flow is not None:
            flow.last = now
            if payload:
                self._data(flow, key, pkt, pkt.seq, payload, out)
        elif key in self._dead:
            # A FIN on a tombstone: the flow is over.
            del self._dead[key]
            stats["flows_closed"] += 1
            return out
        elif payload:
            is_dns = pkt.sport in self.stream_ports or pkt.dport in self.stream_ports
            # Picked up without its SYN. For DNS the segment is taken as a message boundary
            # (a misplaced guess shows as a length below the header size, counted and dropped);
            # for TLS, where the stream starts is found by watching.
            flow = self._new(
                key, _Flow(dns=is_dns, base=pkt.seq if is_dns else None, isn=None, now=now)
            )
            self._data(flow, key, pkt, pkt.seq, payload, out)

        if flags & FIN and key in self._flows:
            flow = self._flows[key]
            # A FIN ends the direction, but a hole before it may still be filled by a
            # retransmission: keep a flow that is mid-way through a message until it times out.
            if not (flow.pending or flow.buf or (flow.reader is not None and flow.reader.held)):
                del self._flows[key]
                stats["flows_closed"] += 1
        elif flags & FIN and key in self._dead:
            del self._dead[key]
            stats["flows_closed"] += 1
        return out

    def _syn(self, pkt: Packet, key: FlowKey, flow: _Flow | None) -> _Flow | None:
        """Start (or restart) a flow on a SYN or SYN-ACK; None when there is nothing to track."""
        is_dns = pkt.sport in self.stream_ports or pkt.dport in self.stream_ports
        isn = pkt.seq
        if flow is not None and flow.isn == isn:
            # A retransmitted SYN: keep what was gathered.
            flow.last = pkt.ts
            return flow
        # A new connection on the same ports replaces whatever was there.
        self._flows.pop(key, None)
        self._dead.pop(key, None)
        if pkt.flags & ACK and not is_dns:
            # The SYN-ACK's sender is the server; a server never sends a ClientHello, so its
            # direction (often the bulk of the bytes) is a tombstone from the start.
            self._bury(key, pkt.ts)
            return None
        return self._new(key, _Flow(dns=is_dns, base=(isn + 1) & _MASK, isn=isn, now=pkt.ts))

    def _new(self, key: FlowKey, flow: _Flow) -> _Flow:
        self._make_room()
        self._created_since_check += 1
        if self._created_since_check >= 1024:
            self._enforce_memory()
        self._flows[key] = flow
        self.stats["flows_created"] += 1
        return flow

    def _enforce_memory(self) -> None:
        self._created_since_check = 0
        flows = self._flows
        total = sum(f.held() for f in flows.values())
        while total > self.max_total_bytes and flows:
            key = next(iter(flows))  # insertion order: the oldest live flow first
            total -= flows.pop(key).held()
            self.stats["memory_evicted"] += 1

    def _make_room(self) -> None:
        while len(self._flows) + len(self._dead) >= self.max_flows:
            # Dicts keep insertion order, so the first key is the oldest. A tombstone costs
            # nothing to lose (the flow is re-learned cheaply); a live flow may cost a hello.
            table: dict[FlowKey, _Flow] | dict[FlowKey, float] = self._dead or self._flows
            if not table:
                return
            del table[next(iter(table))]
            self.stats["flows_evicted"] += 1

    def _bury(self, key: FlowKey, now: float) -> None:
        """Make ``key`` a tombstone."""
        if self._flows.pop(key, None) is None:
            self._make_room()
        self._dead[key] = now

    # -- payload -----------------------------------------------------------------------------

    def _data(
        self,
        flow: _Flow,
        key: FlowKey,
        pkt: Packet,
        seq: int,
        payload: bytes,
        out: list[TcpResult],
    ) -> None:
        if flow.base is None:
            self._watch(flow, key, pkt, seq, payload, out)
            return
        if not flow.dns and self.max_flow_bytes <= (seq - flow.base) & _MASK < _HALF:
            # The client is sending past where its hello could end, so the hello's missing
            # bytes were delivered and will not be resent: this capture lost them. Without
            # this a bulk upload behind a lost first segment would stay on the slow path.
            self._give_up(key, "overflow")
            return
        was_empty = flow.next == 0
        fresh = self._place(flow, key, seq, payload)
        if fresh is None:
            return
        if flow.dns:
            self._dns(flow, key, pkt, fresh, out)
        elif was_empty and fresh[0] != _HANDSHAKE:
            # The first bytes after the SYN are not a TLS record: plaintext first, or not TLS.
            if fresh.startswith(_NOT_STARTTLS) or fresh[0] not in _PRELUDE_FIRST_BYTES:
                self._give_up(key, "not_tls")
                return
            self._to_watching(flow, key, pkt, fresh, out)
        else:
            self._tls(flow, key, pkt, fresh, out)

    def _place(self, flow: _Flow, key: FlowKey, seq: int, payload: bytes) -> bytes | None:
        """Put a segment in its place; the bytes that became contiguous, if any.

        Bytes before what is already contiguous are retransmissions and are dropped; a segment
        beyond is kept until the hole before it is filled.
        """
        stats = self.stats
        assert flow.base is not None
        offset = (seq - flow.base) & _MASK
        if offset >= _HALF:
            # Starts before stream offset 0: keep only what lies after it.
            skip = (1 << 32) - offset
            if skip >= len(payload):
                stats["retransmissions"] += 1
                return None
            payload = payload[skip:]
            offset = 0
        if not flow.dns:
            # A ClientHello lies within the first max_flow_bytes of the TLS stream: anything
            # beyond is of no use (segments held while watching may reach that far).
            room = self.max_flow_bytes - offset
            if room <= 0:
                return None
            if len(payload) > room:
                payload = payload[:room]
        have = flow.next
        if offset > have:
            stats["segments_out_of_order"] += 1
            pending = flow.pending
            old = pending.get(offset)
            if old is not None:
                stats["retransmissions"] += 1
                if len(old) >= len(payload):
                    return None
                flow.pending_bytes -= len(old)
            pending[offset] = payload
            flow.pending_bytes += len(payload)
            if len(pending) > self.max_segments_per_flow or flow.held() > self.max_flow_bytes:
                self._give_up(key, "overflow")
            return None
        end = offset + len(payload)
        if end <= have:
            stats["retransmissions"] += 1
            return None
        if offset < have:
            # Overlaps bytes already placed, with different segment boundaries.
            stats["retransmissions"] += 1
            payload = payload[have - offset :]
        if not flow.pending:
            flow.next = end
            return payload
        parts = [payload]
        have = end
        pending = flow.pending
        for off in sorted(pending):
            if off > have:
                break
            part = pending.pop(off)
            flow.pending_bytes -= len(part)
            if off + len(part) > have:
                parts.append(part[have - off :])
                have = off + len(part)
        flow.next = have
        return b"".join(parts)

    def _give_up(self, key: FlowKey, reason: str) -> None:
        self.stats[reason] += 1
        self._bury(key, self._flows[key].last if key in self._flows else 0.0)

    # -- TLS ---------------------------------------------------------------------------------

    def _tls(
        self, flow: _Flow, key: FlowKey, pkt: Packet, fresh: bytes, out: list[TcpResult]
    ) -> None:
        reader = flow.reader
        assert reader is not None
        try:
            hello = reader.feed(fresh)
        except MalformedTLS as exc:
            if reader.handshake_type == HANDSHAKE_SERVER_HELLO:
                # A server's side picked up without its SYN-ACK.
                self._give_up(key, "not_tls")
            else:
                log.debug("malformed ClientHello from %r: %s", key, exc)
                self._give_up(key, "malformed")
            return
        if hello is not None:
            self.stats["client_hellos"] += 1
            self._bury(key, pkt.ts)
            out.append(TcpResult(pkt, hello, None))
        elif flow.next >= self.max_flow_bytes:
            self._give_up(key, "overflow")

    def _watch(
        self,
        flow: _Flow,
        key: FlowKey,
        pkt: Packet,
        seq: int,
        payload: bytes,
        out: list[TcpResult],
    ) -> None:
        """A segment of a flow whose TLS start is not known: does a handshake start here?"""
        start = _handshake_start(payload)
        if start == _UNDER_WAY:
            # TLS is already running (picked up mid-stream): its ClientHello was missed.
            self._give_up(key, "not_tls")
        elif start < 0:
            self._remember(flow, key, seq, payload)
        else:
            self._begin(flow, key, pkt, seq, payload, start, out)

    def _remember(self, flow: _Flow, key: FlowKey, seq: int, payload: bytes) -> None:
        """Keep a watched segment in case the handshake's first segment arrives after it."""
        flow.watched += 1
        if flow.watched > self.max_segments_per_flow:
            self._give_up(key, "gave_up")
            return
        early = flow.early
        early.append((seq, payload))
        flow.early_bytes += len(payload)
        while len(early) > self.max_segments_per_flow or flow.early_bytes > self.max_flow_bytes:
            flow.early_bytes -= len(early.pop(0)[1])

    def _begin(
        self,
        flow: _Flow,
        key: FlowKey,
        pkt: Packet,
        seq: int,
        payload: bytes,
        start: int,
        out: list[TcpResult],
    ) -> None:
        """The TLS stream starts at ``payload[start]``: assemble from there."""
        base = flow.base = (seq + start) & _MASK
        flow.next = 0
        early = flow.early
        flow.early = []
        flow.early_bytes = 0
        parts = []
        fresh = self._place(flow, key, base, payload[start:])
        if fresh:
            parts.append(fresh)
        for s, p in early:
            # Segments before the start fall away as retransmissions; those after are placed.
            if key not in self._flows:
                return
            more = self._place(flow, key, s, p)
            if more:
                parts.append(more)
        if parts and key in self._flows:
            self._tls(flow, key, pkt, b"".join(parts), out)

    def _to_watching(
        self, flow: _Flow, key: FlowKey, pkt: Packet, fresh: bytes, out: list[TcpResult]
    ) -> None:
        """The stream opened in plaintext: watch for the handshake (STARTTLS and the like).

        ``fresh`` is the stream from offset 0; segments already held beyond it are looked at
        too, in stream order, since the handshake may be among them.
        """
        assert flow.base is not None
        base = flow.base
        segments = [(base, fresh)]
        segments += [((base + off) & _MASK, p) for off, p in sorted(flow.pending.items())]
        flow.base = None
        flow.next = 0
        flow.pending = {}
        flow.pending_bytes = 0
        for i, (seq, payload) in enumerate(segments):
            start = _handshake_start(payload)
            if start == _UNDER_WAY:
                self._give_up(key, "not_tls")
                return
            if start >= 0:
                flow.early = segments[:i] + segments[i + 1 :]
                self._begin(flow, key, pkt, seq, payload, start, out)
                return
        for seq, payload in segments:
            if key not in self._flows:
                return
            self._remember(flow, key, seq, payload)

    # -- DNS over TCP ------------------------------------------------------------------------

    # RFC 7766 section 8 (after RFC 1035 section 4.2.2): "DNS clients and servers SHOULD pass
    # the two-octet length field, and the message described by that length field, to the TCP
    # layer at the same time", but need not; messages may also be pipelined back to back.
    def _dns(
        self, flow: _Flow, key: FlowKey, pkt: Packet, fresh: bytes, out: list[TcpResult]
    ) -> None:
        buf = flow.buf
        buf += fresh
        while len(buf) >= 2:
            length = (buf[0] << 8) | buf[1]
            if length < _DNS_HEADER:
                log.debug("DNS over TCP from %r out of step: length %d", key, length)
                self._give_up(key, "malformed")
                return
            if 2 + length > self.max_flow_bytes:
                self._give_up(key, "overflow")
                return
            if len(buf) < 2 + length:
                break
            out.append(TcpResult(pkt, None, bytes(buf[2 : 2 + length])))
            del buf[: 2 + length]
            self.stats["dns_messages"] += 1
        if len(buf) + flow.pending_bytes > self.max_flow_bytes:
            self._give_up(key, "overflow")
            return
        if flow.next > _REBASE:
            # Keep offsets far from the 2^31 ambiguity on a long-lived stream.
            assert flow.base is not None
            shift = flow.next
            flow.base = (flow.base + shift) & _MASK
            flow.next = 0
            flow.pending = {off - shift: p for off, p in flow.pending.items()}

    # -- time --------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Forget flows and tombstones idle for longer than ``idle_timeout`` at time ``now``."""
        cutoff = now - self.idle_timeout
        flows = self._flows
        stale = [k for k, f in flows.items() if f.last < cutoff]
        for k in stale:
            del flows[k]
        dead = self._dead
        stale_dead = [k for k, t in dead.items() if t < cutoff]
        for k in stale_dead:
            del dead[k]
        self.stats["flows_expired"] += len(stale) + len(stale_dead)
        self._enforce_memory()


_UNDER_WAY = -2


def _handshake_start(data: bytes) -> int:
    """Where a ClientHello record starts in a segment: 0, an offset, -1 for nowhere, or
    ``_UNDER_WAY`` when the segment opens with a record that shows TLS is already running
    (application data, alert, change_cipher_spec) or that this is the server's side."""
    first = data[0]
    n = len(data)
    if n < 2 or (data[1] == 3 and (n < 3 or data[2] <= 4)):
        if first == _HANDSHAKE:
            if n < 6 or data[5] == 1:
                # Checked up to what has arrived; the reader checks the rest as it comes.
                if n < 10 or _hello_at(data, 0):
                    return 0
            elif data[5] == 2:
                return _UNDER_WAY
            # Else a later record of a hello split over several records, whose segment came
            # first: not the start.
        elif first in _OTHER_RECORD_TYPES and n >= 5:
            return _UNDER_WAY
    return _find_hello(data)


def _hello_at(data: bytes, i: int) -> bool:
    """``data[i:i+10]`` is a record header, handshake header and legacy_version major byte that
    could open a ClientHello (RFC 8446 sections 5.1, 4, 4.1.2)."""
    return (
        data[i] == _HANDSHAKE
        and data[i + 1] == 3
        and data[i + 2] <= 4
        and 0 < ((data[i + 3] << 8) | data[i + 4]) <= MAX_RECORD_LENGTH
        and data[i + 5] == 1
        # The hello length: at most MAX_CLIENT_HELLO_BODY, so its top byte is 0 to 2.
        and data[i + 6] <= 2
        and data[i + 9] == 3
    )


def _find_hello(data: bytes) -> int:
    """Offset of a ClientHello record that starts inside ``data`` (not at 0), or -1.

    For a client that sends its hello right behind a plaintext request (a pipelined SOCKS or
    HTTP CONNECT) in the same segment. Demands the record header, the handshake header and the
    legacy_version's first byte in this segment (10 bytes), so a chance match in other bytes is
    unlikely; a hello whose first 10 bytes straddle two segments is not found this way.
    """
    i = data.find(b"\x16\x03", 1)
    end = len(data) - 10
    while 0 <= i <= end:
        if _hello_at(data, i):
            return i
        i = data.find(b"\x16\x03", i + 1)
    return -1
