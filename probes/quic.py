"""QUIC Initial packets of a client, sans-I/O: decryption and CRYPTO frame reassembly.

A QUIC client's first flight is readable by anyone on the path: Initial packets are protected with
keys derived from the Destination Connection ID the client chose (RFC 9001 section 5.2), so
the ClientHello inside, with its server_name, is recoverable without any secret. This module
recovers it. :class:`QuicTracker` is fed UDP datagrams with their time and 4-tuple and hands back
one :class:`QuicInitial` per client connection, once the whole ClientHello has arrived.

Packet protection (key derivation, header protection, AEAD) is aioquic's code
(:class:`aioquic.quic.crypto.CryptoContext`); this module decides which keys apply, walks the
packets of a datagram and reassembles the CRYPTO stream.

Versions: QUIC v1 (RFC 9000/9001), v2 (RFC 9369) and its provisional code point 0x709a50c4,
IETF drafts 22 to 34, Facebook mvfst (0xfaceb001, 0xfaceb002, 0xfaceb00e), Google T050/T051
(gQUIC framing but a TLS ClientHello), and reserved "forcing version negotiation" versions
0x?a?a?a?a, whose Initials some clients fill with a real ClientHello. Google Q0xx (QUIC crypto,
no TLS) is not handled: counted as ``unsupported_version``.

How a server's Initial is told from a client's: the 4-tuple. A datagram whose reversed 4-tuple
belongs to a client connection already seen is the server's side; its Initials are skipped
without any decryption (``server_initials``), and the SCID the server chose is remembered,
because the client's later Initials use it as their DCID (RFC 9000 section 7.2). When the
client's first Initial was never seen (capture started late, state evicted), a server Initial is
tried with client keys derived from its own DCID, fails the AEAD tag and is counted as
``decrypt_failed``, not as ``malformed``: that is cheap (keys are cached per DCID) and harmless.
Ports are not used: QUIC servers listen anywhere (4433, 784 for DoQ, 8443 ...).

A connection is keyed by 4-tuple, version and the client's original DCID; later DCIDs of the
same connection (the server's choice) become aliases, found either from the server's Initial or,
when only egress is captured, by trying the keys of the connections already on that 4-tuple.
A new DCID after Retry, or a new version after Version Negotiation, is a new connection and
yields its own result.

What is counted, in :attr:`QuicTracker.stats`:

``datagrams``, ``packets``
    datagrams fed, long-header packets walked (those with a Length field);
``coalesced``
    packets found after the first one of a datagram (RFC 9000 section 12.2);
``initials``
    Initial packets seen in either direction, of which ``decrypted`` opened with client keys,
    ``decrypt_failed`` opened with none, ``server_initials`` were skipped as the server's, and
    ``after_complete`` belonged to a connection whose ClientHello was already returned;
``client_hellos``
    results returned;
``unsupported_version``, ``version_negotiation``, ``retry``, ``other_long_header``
    packets skipped for what they are;
``malformed``
    packets (or the rest of a packet) that are not valid QUIC: bad header, bad frames, a
    CRYPTO stream that does not start with a ClientHello;
``trailing``
    bytes after the last valid packet of a datagram that are not a packet of the same
    connection (random padding some stacks append);
``crypto_too_large``
    CRYPTO frames reaching beyond ``max_crypto_bytes`` (dropped), or a ClientHello that
    announces more (its connection dropped);
``evicted``, ``expired``
    incomplete connections dropped to stay within bounds, or after ``timeout``;
``tombstones_evicted``
    completed connections forgotten to make room (a retransmission of theirs could be
    reported again).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from aioquic._crypto import CryptoError
from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
)
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

from probes.cursor import Cursor
from probes.errors import MalformedQUIC

__all__ = ["QuicInitial", "QuicTracker", "is_quic_long_header"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QuicInitial:
    """A client's complete ClientHello, recovered from its Initial packets."""

    version: int
    """QUIC version of the Initial packets, e.g. ``0x00000001``."""
    dcid: bytes
    """The client's original Destination Connection ID (the one its Initial keys come from)."""
    scid: bytes
    """The client's Source Connection ID."""
    crypto: bytes
    """The ClientHello handshake message: type (1) + length (3) + body."""


# --- Versions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    """What differs between versions for a client Initial."""

    name: str
    salt: bytes
    """initial_salt of RFC 9001 section 5.2 (and of each draft)."""
    v2_labels: bool
    """HKDF labels "quicv2 key/iv/hp" (RFC 9369 section 3.3.2) instead of "quic key/iv/hp"."""
    initial_type: int
    """Long Packet Type bits of an Initial: 0 in v1, 1 in v2 (RFC 9369 section 3.2)."""
    retry_type: int
    """Long Packet Type bits of a Retry: 3 in v1, 0 in v2."""
    gquic_frames: bool = False
    """Google T05x: gQUIC frame types inside (CRYPTO is 0x08), not RFC 9000 section 19."""


# Salts: RFC 9001 section 5.2 (v1), RFC 9369 section 3.3.1 (v2); for the drafts the salt of
# draft-ietf-quic-tls-NN section 5.2; for mvfst and Google T05x, the values Wireshark and nDPI
# use (packet-quic.c, protocols/quic.c), which decrypt the captures in the tests.
_SALT_D22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_V2_DRAFT = bytes.fromhex("a707c203a59b47184a1d62ca570406ea7ae3e5d3")
_SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
_SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

_V1 = _Spec("v1", INITIAL_SALT_VERSION_1, v2_labels=False, initial_type=0, retry_type=3)
_V2 = _Spec("v2", INITIAL_SALT_VERSION_2, v2_labels=True, initial_type=1, retry_type=0)
_V2_DRAFT = _Spec("v2-draft", _SALT_V2_DRAFT, v2_labels=True, initial_type=1, retry_type=0)
_D22 = _Spec("draft-22", _SALT_D22, v2_labels=False, initial_type=0, retry_type=3)
_D23 = _Spec("draft-23", _SALT_D23, v2_labels=False, initial_type=0, retry_type=3)
_D29 = _Spec("draft-29", _SALT_D29, v2_labels=False, initial_type=0, retry_type=3)
_T050 = _Spec("T050", _SALT_T050, v2_labels=False, initial_type=0, retry_type=3, gquic_frames=True)
_T051 = _Spec("T051", _SALT_T051, v2_labels=False, initial_type=0, retry_type=3, gquic_frames=True)

_SPECS: dict[int, tuple[_Spec, ...]] = {
    QuicProtocolVersion.VERSION_1: (_V1,),
    QuicProtocolVersion.VERSION_2: (_V2,),
    0x709A50C4: (_V2_DRAFT,),
    0xFF000016: (_D22,),
    **{0xFF000000 | n: (_D23,) for n in range(23, 29)},
    **{0xFF000000 | n: (_D29,) for n in range(29, 33)},
    0xFF000021: (_V1,),  # draft-33 and -34 already use the final salt
    0xFF000022: (_V1,),
    0xFACEB001: (_D22,),  # mvfst on draft-22
    0xFACEB002: (_D23,),  # mvfst on draft-27
    0xFACEB00E: (_D23,),  # mvfst experimental
    0x54303530: (_T050,),
    0x54303531: (_T051,),
}

# RFC 9000 section 15: versions 0x?a?a?a?a are reserved to exercise version negotiation. Their
# packet format and keys are whatever the client picked; clients that send a real ClientHello
# in them (the interop runner's "V" test, quic-go) use the keys of their own default version.
_RESERVED: tuple[_Spec, ...] = (_V1, _D29)


def _specs(version: int) -> tuple[_Spec, ...]:
    specs = _SPECS.get(version)
    if specs is not None:
        return specs
    if version & 0x0F0F0F0F == 0x0A0A0A0A:
        return _RESERVED
    return ()


def is_quic_long_header(payload: bytes) -> bool:
    """Cheap pre-check: does ``payload`` start with a long-header packet this module reads?

    RFC 8999 section 5.1: the high bit of the first byte is set, then a 4-byte version, a
    1-byte DCID length and the DCID. The version must be one :class:`QuicTracker` can decrypt,
    which keeps out DNS and other UDP whose first byte happens to have the high bit set. The
    fixed bit is not required (RFC 9287 lets it be greased), nor a minimum size, so later and
    coalesced Initials pass too.
    """
    return (
        len(payload) >= 7
        and payload[0] & 0x80 != 0
        and payload[5] <= 20
        and len(payload) >= 7 + payload[5]
        and bool(_specs(int.from_bytes(payload[1:5], "big")))
    )


# --- Reassembly --------------------------------------------------------------------------------

_Tuple = tuple[bytes, int, bytes, int]
_Key = tuple[bytes, int, bytes, int, int, bytes]
_CacheKey = tuple[bytes, bool, bytes]

_MAX_ALIASES = 4
_NONZERO = re.compile(rb"[^\x00]")


class _Conn:
    """One client connection: its Initial keys' inputs and the CRYPTO stream so far.

    Keys themselves live in the tracker's bounded cache, not here: an OpenSSL AES-GCM context
    costs kilobytes, and thousands of connections (or tombstones) would hold them for nothing.
    """

    __slots__ = (
        "done",
        "keys",
        "largest_pn",
        "last_seen",
        "odcid",
        "pending",
        "pending_bytes",
        "prefix",
        "scid",
        "spec",
        "tup",
        "version",
    )

    def __init__(
        self, tup: _Tuple, version: int, spec: _Spec, odcid: bytes, scid: bytes, ts: float
    ) -> None:
        self.tup = tup
        self.version = version
        self.spec = spec
        self.odcid = odcid
        self.scid = scid
        self.keys: list[_Key] = [(*tup, version, odcid)]
        self.prefix = bytearray()
        """CRYPTO bytes from offset 0 with no gap."""
        self.pending: list[tuple[int, bytearray]] = []
        """Disjoint ranges beyond the prefix, by offset, kept until the gap fills."""
        self.pending_bytes = 0
        self.largest_pn = 0
        self.last_seen = ts
        self.done = False

    @property
    def buffered(self) -> int:
        return len(self.prefix) + self.pending_bytes

    def add(self, offset: int, data: bytes) -> None:
        """Place one CRYPTO frame's data.

        Duplicates, overlaps and shifted retransmissions cost nothing: what is held is the
        union of the ranges received, so a client cannot inflate it past the size of its own
        stream. Where ranges overlap the first bytes received stand (RFC 9000 section 2.2 lets
        a receiver assume retransmitted data is identical).
        """
        end = offset + len(data)
        have = len(self.prefix)
        if end <= have:
            return
        if offset <= have:
            self.prefix += data[have - offset :]
            self._drain()
            return
        start, merged = offset, bytearray(data)
        keep: list[tuple[int, bytearray]] = []
        for o, d in self.pending:
            e = o + len(d)
            if e < start or o > start + len(merged):
                keep.append((o, d))
                continue
            lo, hi = min(o, start), max(e, start + len(merged))
            union = bytearray(hi - lo)
            union[start - lo : start - lo + len(merged)] = merged
            union[o - lo : e - lo] = d
            start, merged = lo, union
        keep.append((start, merged))
        keep.sort(key=lambda piece: piece[0])
        self.pending = keep
        self.pending_bytes = sum(len(d) for _, d in keep)

    def _drain(self) -> None:
        """Append the pending ranges that the prefix now reaches."""
        while self.pending and self.pending[0][0] <= len(self.prefix):
            o, d = self.pending.pop(0)
            self.pending_bytes -= len(d)
            have = len(self.prefix)
            if o + len(d) > have:
                self.prefix += d[have - o :]

    def release(self) -> None:
        """Become a tombstone: forget the bytes, keep the identity."""
        self.done = True
        self.prefix = bytearray()
        self.pending = []
        self.pending_bytes = 0


class _TooLarge(Exception):
    """The ClientHello announces more than ``max_crypto_bytes``."""


# --- Frames ------------------------------------------------------------------------------------


def _crypto_frames(plain: bytes, spec: _Spec) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, data)`` of each CRYPTO frame of a decrypted Initial payload.

    RFC 9000 section 17.2.2: an Initial carries only PADDING, PING, ACK, CRYPTO and
    CONNECTION_CLOSE frames; anything else is a protocol violation, raised as
    :class:`MalformedQUIC` after the frames before it were yielded.
    """
    c = Cursor(plain, MalformedQUIC)
    end = c.end
    while c.pos < end:
        if plain[c.pos] == 0:
            # PADDING (section 19.1) fills most of a client's first Initial: skip the run at C
            # speed rather than one frame per byte.
            m = _NONZERO.search(plain, c.pos)
            c.pos = m.start() if m else end
            continue
        if spec.gquic_frames:
            # Google T05x keeps gQUIC frame types: CRYPTO is 0x08 with varint offset and
            # length, PING 0x07. Its ACK layout differs from RFC 9000; stop there, the
            # ClientHello comes first.
            ftype = c.uint8()
            if ftype == 0x08:
                offset = c.varint()
                yield offset, c.bytes(c.varint())
            elif ftype != 0x07:
                return
            continue
        ftype = c.varint()
        if ftype == 0x06:
            # CRYPTO (section 19.6): Offset (i), Length (i), Crypto Data.
            offset = c.varint()
            yield offset, c.bytes(c.varint())
        elif ftype == 0x01:
            pass  # PING (section 19.2)
        elif ftype in (0x02, 0x03):
            # ACK (section 19.3): Largest, Delay, Range Count, First Range, ranges, [ECN].
            c.varint()
            c.varint()
            count = c.varint()
            c.varint()
            if count > c.remaining() // 2:
                msg = f"ACK frame claims {count} ranges in {c.remaining()} bytes"
                raise MalformedQUIC(msg)
            for _ in range(2 * count):
                c.varint()
            if ftype == 0x03:
                c.varint()
                c.varint()
                c.varint()
        elif ftype in (0x1C, 0x1D):
            # CONNECTION_CLOSE (section 19.19): Error Code, [Frame Type], Reason. 0x1d is not
            # allowed in an Initial (section 12.4) but is harmless to read past.
            c.varint()
            if ftype == 0x1C:
                c.varint()
            c.skip(c.varint())
        else:
            msg = f"frame type {ftype:#x} is not allowed in an Initial packet"
            raise MalformedQUIC(msg)


# --- Tracker -----------------------------------------------------------------------------------

_STAT_KEYS = (
    "datagrams",
    "packets",
    "coalesced",
    "initials",
    "decrypted",
    "decrypt_failed",
    "server_initials",
    "after_complete",
    "client_hellos",
    "unsupported_version",
    "version_negotiation",
    "retry",
    "other_long_header",
    "malformed",
    "trailing",
    "crypto_too_large",
    "evicted",
    "expired",
    "tombstones_evicted",
)


class QuicTracker:
    """Recovers each client's ClientHello from the Initial packets in a stream of datagrams.

    Feed every UDP datagram (both directions) to :meth:`datagram`; it returns the ClientHellos
    that the datagram completed. State is bounded: at most ``max_connections`` connections
    (incomplete ones and tombstones of completed ones), ``max_crypto_bytes`` of CRYPTO data per
    connection, ``max_buffered_bytes`` over all of them, and nothing older than ``timeout``
    seconds of packet time. A bad packet is counted in :attr:`stats`, never raised.

    ``max_buffered_bytes`` and ``max_cached_keys`` go beyond the three bounds every caller
    sets: the first caps memory over all connections (``max_connections`` times
    ``max_crypto_bytes`` would be a gigabyte), evicting the oldest incomplete connection; the
    second caps the cache of Initial keys, about 5 KiB each with OpenSSL's contexts, which
    also spares re-deriving keys (about 55 microseconds) for every packet of a connection.
    """

    def __init__(
        self,
        *,
        max_connections: int = 16384,
        max_crypto_bytes: int = 65536,
        timeout: float = 60.0,
        max_buffered_bytes: int = 16 * 1024 * 1024,
        max_cached_keys: int = 1024,
    ) -> None:
        self.max_connections = max(1, max_connections)
        self.max_crypto_bytes = max_crypto_bytes
        self.timeout = timeout
        self.max_buffered_bytes = max_buffered_bytes
        self.max_cached_keys = max(1, max_cached_keys)
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        # Both in least-recently-seen order; incomplete connections are kept apart from
        # tombstones so that making room drops tombstones first.
        self._live: OrderedDict[_Key, _Conn] = OrderedDict()
        self._done: OrderedDict[_Key, _Conn] = OrderedDict()
        self._index: dict[_Key, _Conn] = {}
        """Primary key and aliases (later DCIDs) of every connection."""
        self._by_tuple: dict[_Tuple, list[_Conn]] = {}
        self._buffered = 0
        self._keys: OrderedDict[_CacheKey, CryptoContext] = OrderedDict()

    @property
    def connections(self) -> int:
        """Connections held, tombstones included (at most ``max_connections``)."""
        return len(self._live) + len(self._done)

    @property
    def buffered_bytes(self) -> int:
        """CRYPTO bytes held over all incomplete connections."""
        return self._buffered

    @property
    def cached_keys(self) -> int:
        """Initial key sets held in the cache (at most ``max_cached_keys``)."""
        return len(self._keys)

    # -- public -------------------------------------------------------------------------------

    def datagram(
        self, ts: float, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes
    ) -> list[QuicInitial]:
        """Process one UDP payload sent from ``src:sport`` to ``dst:dport`` at time ``ts``."""
        stats = self.stats
        stats["datagrams"] += 1
        self.expire(ts)
        out: list[QuicInitial] = []
        tup = (src, sport, dst, dport)
        pos = 0
        first_dcid: bytes | None = None
        n = len(payload)
        # RFC 9000 section 12.2: a datagram may coalesce several long-header packets, each
        # delimited by its Length field; a short-header packet has none and runs to the end.
        while pos < n and payload[pos] & 0x80:
            try:
                pos, first_dcid = self._packet(ts, tup, payload, pos, first_dcid, out)
            except MalformedQUIC as exc:
                if first_dcid is None:
                    stats["malformed"] += 1
                    log.debug("malformed QUIC packet from %r: %s", tup, exc)
                else:
                    stats["trailing"] += 1
                break
            if pos < 0:
                break
        return out

    def expire(self, now: float) -> None:
        """Forget connections not seen for ``timeout`` seconds before ``now``."""
        limit = now - self.timeout
        for table, stat in ((self._live, "expired"), (self._done, None)):
            while table:
                conn = next(iter(table.values()))
                if conn.last_seen >= limit:
                    break
                self._drop(conn)
                if stat is not None:
                    self.stats[stat] += 1

    # -- packets ------------------------------------------------------------------------------

    def _packet(
        self,
        ts: float,
        tup: _Tuple,
        payload: bytes,
        start: int,
        first_dcid: bytes | None,
        out: list[QuicInitial],
    ) -> tuple[int, bytes | None]:
        """Handle the long-header packet at ``start``; return where the next one starts.

        A negative position means "stop walking this datagram".
        """
        stats = self.stats
        trailing = first_dcid is not None
        # RFC 9000 section 17.2 (long header): first byte, Version (32), DCID Len (8), DCID,
        # SCID Len (8), SCID, then version-specific fields.
        c = Cursor(payload, MalformedQUIC, start)
        first = c.uint8()
        version = c.uint32()
        if version == 0:
            # Version Negotiation (section 17.2.1) has no Length: it is the whole datagram.
            stats["trailing" if trailing else "version_negotiation"] += 1
            return -1, first_dcid
        specs = _specs(version)
        if not specs:
            stats["trailing" if trailing else "unsupported_version"] += 1
            return -1, first_dcid
        dcid_len = c.uint8()
        if dcid_len > 20:
            msg = f"DCID length {dcid_len} > 20"
            raise MalformedQUIC(msg)
        dcid = c.bytes(dcid_len)
        scid_len = c.uint8()
        if scid_len > 20:
            msg = f"SCID length {scid_len} > 20"
            raise MalformedQUIC(msg)
        scid = c.bytes(scid_len)
        if trailing and dcid != first_dcid:
            # Section 12.2: "Receivers SHOULD ignore any subsequent packets with a different
            # Destination Connection ID than the first packet in the datagram."
            stats["trailing"] += 1
            return -1, first_dcid
        ptype = (first >> 4) & 0x03
        spec = specs[0]
        if ptype == spec.retry_type:
            # Retry (section 17.2.5) has no Length either. The client's next Initial carries a
            # new DCID, hence new keys and a new connection here.
            stats["retry"] += 1
            return -1, dcid
        if ptype == spec.initial_type:
            c.skip(c.varint())  # Token (section 17.2.2)
        length = c.varint()
        pn_offset = c.pos
        end = pn_offset + length
        if end > len(payload):
            msg = f"packet Length {length} runs past the datagram ({len(payload) - pn_offset})"
            raise MalformedQUIC(msg)
        stats["packets"] += 1
        if trailing:
            stats["coalesced"] += 1
        if ptype != spec.initial_type:
            stats["other_long_header"] += 1  # 0-RTT or Handshake
            return end, dcid
        stats["initials"] += 1
        packet = payload[start:end]
        result = self._initial(ts, tup, version, specs, dcid, scid, packet, pn_offset - start)
        if result is not None:
            out.append(result)
        return end, dcid

    def _initial(
        self,
        ts: float,
        tup: _Tuple,
        version: int,
        specs: tuple[_Spec, ...],
        dcid: bytes,
        scid: bytes,
        packet: bytes,
        pn_offset: int,
    ) -> QuicInitial | None:
        stats = self.stats
        reverse = self._by_tuple.get((tup[2], tup[3], tup[0], tup[1]))
        if reverse:
            # The server's side of a connection whose client we saw. Remember the SCID it
            # chose: the client switches its DCID to it (RFC 9000 section 7.2).
            stats["server_initials"] += 1
            for peer in reversed(reverse):
                if peer.version == version and peer.scid == dcid:
                    self._alias(peer, scid)
                    break
            return None

        conn = self._index.get((*tup, version, dcid))
        opened: tuple[bytes, int] | None = None
        if conn is not None:
            if conn.done:
                stats["after_complete"] += 1
                self._touch(conn, ts)
                return None
            opened = self._open(conn.spec, conn.odcid, packet, pn_offset, conn.largest_pn)
        else:
            # A DCID not seen yet: either the server-chosen DCID of a connection on this
            # 4-tuple (its keys still come from the original DCID, RFC 9001 section 5.2), or
            # a new connection (first Initial, or after Retry or Version Negotiation).
            for cand in reversed(self._by_tuple.get(tup, ())):
                if cand.version != version:
                    continue
                opened = self._open(cand.spec, cand.odcid, packet, pn_offset, cand.largest_pn)
                if opened is not None:
                    conn = cand
                    self._alias(conn, dcid)
                    break
            if conn is not None and conn.done:
                stats["after_complete"] += 1
                self._touch(conn, ts)
                return None
            if conn is None:
                for spec in specs:
                    opened = self._open(spec, dcid, packet, pn_offset, 0)
                    if opened is not None:
                        conn = self._new(tup, version, spec, dcid, scid, ts)
                        break
        if conn is None or opened is None:
            stats["decrypt_failed"] += 1
            return None
        stats["decrypted"] += 1
        plain, pn = opened
        conn.largest_pn = max(conn.largest_pn, pn)
        self._touch(conn, ts)
        return self._feed(conn, plain)

    def _open(
        self, spec: _Spec, odcid: bytes, packet: bytes, pn_offset: int, expected_pn: int
    ) -> tuple[bytes, int] | None:
        """Decrypt with the client Initial keys of ``odcid``: (payload, packet number) or None.

        ``expected_pn`` is the largest packet number seen on the connection, against which a
        truncated one is expanded (RFC 9000 section 17.1, appendix A.3).
        """
        ctx = self._context(spec, odcid)
        try:
            # RFC 9001 section 5.4 (header protection) and 5.3 (AEAD), done by aioquic.
            _, plain, pn, _ = ctx.decrypt_packet(packet, pn_offset, expected_pn)
        except CryptoError:
            return None
        return plain, pn

    def _context(self, spec: _Spec, odcid: bytes) -> CryptoContext:
        key = (spec.salt, spec.v2_labels, odcid)
        ctx = self._keys.get(key)
        if ctx is not None:
            self._keys.move_to_end(key)
            return ctx
        # RFC 9001 section 5.2: initial_secret = HKDF-Extract(initial_salt, client_dcid);
        # client_initial_secret = HKDF-Expand-Label(initial_secret, "client in", "", 32).
        # Only the client direction is derived: server keys are never needed.
        algorithm = cipher_suite_hash(INITIAL_CIPHER_SUITE)
        initial_secret = hkdf_extract(algorithm, spec.salt, odcid)
        secret = hkdf_expand_label(
            algorithm, initial_secret, b"client in", b"", algorithm.digest_size
        )
        # aioquic picks the "quicv2" labels by the version it is given (RFC 9369 section 3.3.2).
        labels = QuicProtocolVersion.VERSION_2 if spec.v2_labels else QuicProtocolVersion.VERSION_1
        ctx = CryptoContext()
        ctx.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=labels)
        self._keys[key] = ctx
        if len(self._keys) > self.max_cached_keys:
            self._keys.popitem(last=False)
        return ctx

    def _feed(self, conn: _Conn, plain: bytes) -> QuicInitial | None:
        stats = self.stats
        before = conn.buffered
        try:
            for offset, data in _crypto_frames(plain, conn.spec):
                if offset + len(data) > self.max_crypto_bytes:
                    # Beyond any ClientHello we would accept; what is held stays below the
                    # limit because only the union of ranges is kept.
                    stats["crypto_too_large"] += 1
                    continue
                conn.add(offset, data)
        except MalformedQUIC as exc:
            # The frames before the bad one were sent all the same: keep them.
            stats["malformed"] += 1
            log.debug("malformed frames in a QUIC Initial from %r: %s", conn.tup, exc)
        self._buffered += conn.buffered - before
        result: QuicInitial | None = None
        try:
            result = self._complete(conn)
        except _TooLarge:
            stats["crypto_too_large"] += 1
            self._finish(conn)
        except MalformedQUIC as exc:
            stats["malformed"] += 1
            log.debug("QUIC CRYPTO stream of %r is not a ClientHello: %s", conn.tup, exc)
            self._finish(conn)
        if self._buffered > self.max_buffered_bytes:
            self._shrink()
        return result

    def _complete(self, conn: _Conn) -> QuicInitial | None:
        prefix = conn.prefix
        if not prefix:
            return None
        # RFC 9001 section 4.1.3: the client's Initial CRYPTO stream starts with its
        # ClientHello; RFC 8446 section 4: msg_type (1) = client_hello, length (3).
        if prefix[0] != 0x01:
            msg = f"CRYPTO stream starts with handshake type {prefix[0]:#x}, not ClientHello"
            raise MalformedQUIC(msg)
        if len(prefix) < 4:
            return None
        need = 4 + int.from_bytes(prefix[1:4], "big")
        if need > self.max_crypto_bytes:
            raise _TooLarge
        if len(prefix) < need:
            return None
        result = QuicInitial(conn.version, conn.odcid, conn.scid, bytes(prefix[:need]))
        self.stats["client_hellos"] += 1
        self._finish(conn)
        return result

    # -- state ---------------------------------------------------------------------------------

    def _new(
        self, tup: _Tuple, version: int, spec: _Spec, dcid: bytes, scid: bytes, ts: float
    ) -> _Conn:
        while len(self._live) + len(self._done) >= self.max_connections:
            if self._done:
                self._drop(next(iter(self._done.values())))
                self.stats["tombstones_evicted"] += 1
            else:
                self._drop(next(iter(self._live.values())))
                self.stats["evicted"] += 1
        conn = _Conn(tup, version, spec, dcid, scid, ts)
        key = conn.keys[0]
        self._live[key] = conn
        self._index[key] = conn
        self._by_tuple.setdefault(tup, []).append(conn)
        return conn

    def _alias(self, conn: _Conn, dcid: bytes) -> None:
        key = (*conn.tup, conn.version, dcid)
        if len(conn.keys) > _MAX_ALIASES or key in self._index:
            return
        conn.keys.append(key)
        self._index[key] = conn

    def _touch(self, conn: _Conn, ts: float) -> None:
        conn.last_seen = max(conn.last_seen, ts)
        (self._done if conn.done else self._live).move_to_end(conn.keys[0])

    def _finish(self, conn: _Conn) -> None:
        """Turn ``conn`` into a tombstone."""
        self._buffered -= conn.buffered
        conn.release()
        key = conn.keys[0]
        self._live.pop(key, None)
        self._done[key] = conn

    def _drop(self, conn: _Conn) -> None:
        if not conn.done:
            self._buffered -= conn.buffered
        key = conn.keys[0]
        (self._done if conn.done else self._live).pop(key, None)
        for k in conn.keys:
            if self._index.get(k) is conn:
                del self._index[k]
        peers = self._by_tuple.get(conn.tup)
        if peers is not None:
            peers.remove(conn)
            if not peers:
                del self._by_tuple[conn.tup]

    def _shrink(self) -> None:
        while self._buffered > self.max_buffered_bytes and self._live:
            self._drop(next(iter(self._live.values())))
            self.stats["evicted"] += 1
