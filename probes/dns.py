"""DNS: parse messages and pair queries with responses into ``dns`` observations. Sans-I/O.

Two parts:

- :func:`parse_dns` turns one DNS message (RFC 1035 section 4) into a :class:`DnsMessage` with the
  few facts egresswatch needs: the first question, the addresses and CNAME targets that answer
  it, and whether an HTTPS/SVCB answer carries an ECH config (RFC 9460, POLICY.md rule 5).
- :class:`DnsTracker` is fed every message seen on a DNS port and turns each query into one
  :class:`~probes.observation.Observation` (``kind="dns"``), carrying the answers of its
  response when that is seen.

Why the header, names and answer section are read with :class:`~probes.cursor.Cursor` and not
``dns.message.from_wire``: on the DNS of the bundled captures ``from_wire`` costs 5 to 10 times
as much (about 270 us against 28 us per response, 73 us against 17 us per query, CPU time on a
busy two-core machine), most of it hashing names for RRsets we never look at (authority,
additional, DNSSEC), and it refuses a whole message for one bad record that tshark
shows around (an A record with no address, a second OPT, a TSIG we have no key for, a response
cut short by IP fragmentation or the snap length). Here we read only what we use, tolerate
damage after the first question, and keep dnspython for what it does best: mnemonics
(``dns.rdatatype``, ``dns.rcode``) and HTTPS/SVCB rdata, whose SvcParams it validates
(``dns.rdata.from_wire``). Name decoding follows dnspython's rules exactly (same compression
pointer checks, same 255-octet limit, same text escapes), and the tests hold the two to the same
answers on messages dnspython builds and on random bytes.

Choices that are not obvious:

- ``answers`` holds every A/AAAA address and CNAME target in the response, in wire order,
  from all three record sections: what tshark's ``dns.a``/``dns.aaaa``/``dns.cname`` show, so
  the record of what the resolver said is complete. ``resolved`` is the subset that serves the
  question: answer-section records whose owner is the question name or a name reached from it
  through CNAMEs (or HTTPS/SVCB AliasMode targets). Glue in the authority and additional
  sections and answers for unrelated owners are not in it, because every address in
  ``resolved`` is later taken to serve ``qname``.
- Only opcode QUERY yields answers and ``ech_config``. IQUERY (obsolete, RFC 3425) has no
  question; NOTIFY (RFC 1996) and UPDATE (RFC 2136) put a zone in the question and records in
  the other sections that are not resolution results. They are still observed, with their
  question (the zone) when there is one, because they too are DNS leaving the machine.
- A response without a question (FORMERR, NOTIMP) pairs with the query of the same flow and id.
- The tracker takes whole messages. DNS over TCP (RFC 1035 section 4.2.2, RFC 7766) is
  reassembled and stripped of its two-byte length prefixes by :mod:`probes.tcp` first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import dns.exception
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.svcbbase

from probes.cursor import Cursor
from probes.errors import MalformedDNS
from probes.observation import Observation, Transport, format_ip

__all__ = [
    "DNS_PORTS",
    "NOT_EGRESS_PORTS",
    "DnsMessage",
    "DnsTracker",
    "looks_like_dns",
    "parse_dns",
]

DNS_PORTS = frozenset({53})
"""Ports on which DNS is expected (RFC 1035 section 4.2)."""

NOT_EGRESS_PORTS = frozenset({5353, 5355})
"""mDNS (RFC 6762) and LLMNR (RFC 4795): link-local name resolution, not egress."""

_HEADER_LEN = 12
_MAX_NAME_OCTETS = 255  # RFC 1035 section 2.3.4, counting length octets and the root
_MAX_POINTER_HOPS = 16  # as dnspython's dns.name.MAX_COMPRESSION_POINTER_CHAIN

_CLASS_IN = 1
_TYPE_A = 1
_TYPE_CNAME = 5
_TYPE_AAAA = 28
_TYPE_OPT = 41
_TYPE_SVCB = 64
_TYPE_HTTPS = 65
_OPCODE_QUERY = 0

# dnspython's text form of a label (dns.name._escapify): printable ASCII as is, its special
# characters behind a backslash, every other octet as \DDD. Names are lower-cased first, which
# commutes with the escaping because no escaped octet is an ASCII letter.
_SPECIAL = b'"().;\\@$'
_SAFE = bytes(c for c in range(0x21, 0x7F) if c not in _SPECIAL)
_SAFE_NAME = _SAFE + b"."
_ESCAPE = tuple(
    "\\" + chr(c) if c in _SPECIAL else chr(c) if 0x20 < c < 0x7F else f"\\{c:03d}"
    for c in range(256)
)


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """The facts egresswatch takes from one DNS message."""

    id: int
    """Message ID (RFC 1035 section 4.1.1)."""
    is_response: bool
    """QR bit."""
    opcode: int
    """0 QUERY, 1 IQUERY, 2 STATUS, 4 NOTIFY, 5 UPDATE, 6 DSO."""
    rcode: str
    """Response code mnemonic (``NOERROR``, ``NXDOMAIN``), extended by the OPT record if any."""
    qname: str | None
    """First question name: lower case, no trailing dot, dnspython escapes; ``.`` for the root;
    ``None`` when the message has no question."""
    qtype: str | None
    """First question type mnemonic (``A``, ``HTTPS``, ``TYPE65534``); ``None`` with no question
    or when the message ends inside it."""
    answers: tuple[str, ...]
    """Every A/AAAA address and CNAME target in the response, all sections, in wire order
    (responses to opcode QUERY only)."""
    ech_config: bool
    """An HTTPS/SVCB answer for ``qname`` (ServiceMode) carries the ``ech`` SvcParam (RFC 9460
    section 14.3.2, key 5)."""
    qdcount: int = 1
    """Questions announced in the header (only the first is used)."""
    truncated: bool = False
    """TC bit: the server cut the response; the client will usually retry over TCP."""
    https_targets: tuple[str, ...] = ()
    """TargetNames of HTTPS/SVCB answers for ``qname`` (``.`` in ServiceMode resolved to the
    owner), where the client will connect."""
    https_hints: tuple[str, ...] = ()
    """ipv4hint/ipv6hint addresses of those answers, which a client may connect to before its
    A/AAAA answers arrive (RFC 9460 section 7.3)."""
    skipped_answers: int = 0
    """A/AAAA/CNAME/HTTPS/SVCB answer records left out: owner outside the CNAME chain, or rdata
    that does not decode."""
    complete: bool = True
    """Every record of every section was framed correctly (False: cut short or damaged after the
    first question)."""
    resolved: tuple[str, ...] = ()
    """The part of ``answers`` that answers ``qname``: its CNAME chain in the answer section."""


@cache
def _type_text(value: int) -> str:
    # At most 65536 entries; dnspython's enum lookups are slow enough to be worth caching.
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(value))


@cache
def _rcode_text(value: int) -> str:
    # At most 4096 entries (12-bit extended rcode).
    return dns.rcode.to_text(dns.rcode.Rcode.make(value))


def _label_text(label: bytes) -> str:
    label = label.lower()
    if not label.translate(None, _SAFE):
        return label.decode("ascii")
    return "".join([_ESCAPE[c] for c in label])


def _name_text(labels: list[bytes]) -> str:
    if not labels:
        return "."
    joined = b".".join(labels).lower()
    # Whole name at once when no label needs an escape (a dot inside a label does).
    if not joined.translate(None, _SAFE_NAME) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")
    return ".".join([_label_text(label) for label in labels])


_Names = dict[int, tuple[str, int, int]]
"""Names read so far in one message: start offset -> (text, end of first segment, pointer hops)."""


# RFC 1035 section 4.1.4: a name is a sequence of labels ending in a zero octet or in a pointer
# (two octets, top bits 11) to a prior occurrence. As dnspython does, every pointer must go
# strictly backwards, at most 16 hops, and a pointer's target may not run into the part of the
# name already read, so a hostile message cannot loop us. Label types 01 and 10 (RFC 6891
# section 5 retired the extended label types) are refused.
def _read_name(wire: bytes, cur: Cursor, names: _Names) -> str:
    start = cur.pos
    if cur.remaining() >= 2 and wire[start] >= 0xC0:
        # A name that is just a pointer to a name read before: answer owners are nearly always
        # C0 0C, the question. Taking the text read then is the same as following the pointer
        # when the rules below hold: the target's first segment ends before this name, and
        # one more hop stays within the limit.
        hit = names.get(((wire[start] & 0x3F) << 8) | wire[start + 1])
        if hit is not None and hit[1] <= start and hit[2] < _MAX_POINTER_HOPS:
            cur.skip(2)
            return hit[0]
    labels = _read_labels(wire, cur)
    text = _name_text(labels[0])
    names[start] = (text, cur.pos, labels[1])
    return text


def _read_labels(wire: bytes, cur: Cursor) -> tuple[list[bytes], int]:
    """The labels of the name at ``cur`` and the number of pointers followed."""
    labels: list[bytes] = []
    octets = 1
    seg = cur
    start = cur.pos
    lowest = cur.pos
    hops = 0
    while True:
        count = seg.uint8()
        if count == 0:
            return labels, hops
        if count < 0x40:
            labels.append(seg.bytes(count))
            octets += count + 1
            if octets > _MAX_NAME_OCTETS:
                msg = f"name longer than 255 octets at offset {start}"
                raise MalformedDNS(msg)
        elif count >= 0xC0:
            target = ((count & 0x3F) << 8) | seg.uint8()
            if target >= lowest:
                msg = f"compression pointer to {target} does not point backwards"
                raise MalformedDNS(msg)
            hops += 1
            if hops > _MAX_POINTER_HOPS:
                msg = f"compression pointer chain longer than {_MAX_POINTER_HOPS}"
                raise MalformedDNS(msg)
            lowest = target
            seg = Cursor(memoryview(wire)[:start], MalformedDNS, target)
            start = target
        else:
            msg = f"unsupported label type {count:#04x} at offset {seg.pos - 1}"
            raise MalformedDNS(msg)


def _skip_name(cur: Cursor) -> None:
    # Framing only: a pointer ends the name where it stands, so nothing is followed.
    while True:
        count = cur.uint8()
        if count == 0:
            return
        if count < 0x40:
            cur.skip(count)
        elif count >= 0xC0:
            cur.skip(1)
            return
        else:
            msg = f"unsupported label type {count:#04x} at offset {cur.pos - 1}"
            raise MalformedDNS(msg)


@dataclass(slots=True)
class _Answer:
    owner: str
    rtype: int
    value: str | None = None  # address, CNAME target or HTTPS/SVCB target
    alias: bool = False  # HTTPS/SVCB AliasMode
    ech: bool = False
    hints: tuple[str, ...] = ()


# RFC 9460 section 2.2: SvcPriority, TargetName, SvcParams. dnspython validates the SvcParams
# (section 7 value formats, section 8 mandatory keys); a record it refuses is one a client
# would drop too, so it proves no ECH config.
def _svcb(owner: str, rtype: int, wire: bytes, start: int, length: int) -> _Answer | None:
    try:
        rd = dns.rdata.from_wire(
            dns.rdataclass.IN, dns.rdatatype.RdataType.make(rtype), wire, start, length
        )
    except Exception:  # dnspython raises many types on hostile rdata; all mean "unusable"
        return None
    if not isinstance(rd, dns.rdtypes.svcbbase.SVCBBase):
        return None
    target = _name_text(list(rd.target.labels[:-1]))
    if rd.priority == 0:
        # Section 2.4.2: AliasMode; SvcParams are ignored, "." means no service.
        return _Answer(owner, rtype, None if target == "." else target, alias=True)
    hints: list[str] = []
    for key in (dns.rdtypes.svcbbase.ParamKey.IPV4HINT, dns.rdtypes.svcbbase.ParamKey.IPV6HINT):
        param = rd.params.get(key)
        if param is not None:
            hints.extend(str(address) for address in param.addresses)
    return _Answer(
        owner,
        rtype,
        owner if target == "." else target,  # section 2.5.2: "." is the owner in ServiceMode
        ech=dns.rdtypes.svcbbase.ParamKey.ECH in rd.params,
        hints=tuple(hints),
    )


def _read_answer(wire: bytes, cur: Cursor, names: _Names) -> _Answer | None:
    # RFC 1035 section 4.1.3: NAME, TYPE, CLASS, TTL, RDLENGTH, RDATA.
    return _read_rdata(wire, cur, names, _read_name(wire, cur, names))


def _read_rdata(wire: bytes, cur: Cursor, names: _Names, owner: str) -> _Answer | None:
    """The rest of a record after its owner NAME: TYPE, CLASS, TTL, RDLENGTH, RDATA."""
    rtype = cur.uint16()
    rclass = cur.uint16()
    cur.skip(4)  # TTL
    with cur.block(2) as length:
        start = cur.pos
        cur.skip(length)
    if rclass != _CLASS_IN and rtype != _TYPE_CNAME:
        return None  # A, AAAA and HTTPS are defined for class IN only (section 3.4.1)
    if rtype == _TYPE_A and length == 4:
        return _Answer(owner, rtype, str(ipaddress.IPv4Address(wire[start : start + 4])))
    if rtype == _TYPE_AAAA and length == 16:
        return _Answer(owner, rtype, str(ipaddress.IPv6Address(wire[start : start + 16])))
    if rtype == _TYPE_CNAME:
        rdata = Cursor(memoryview(wire)[: start + length], MalformedDNS, start)
        try:
            target = _read_name(wire, rdata, names)
        except MalformedDNS:
            return _Answer(owner, rtype)
        return _Answer(owner, rtype, target if rdata.eof() else None)
    if rtype in (_TYPE_HTTPS, _TYPE_SVCB):
        return _svcb(owner, rtype, wire, start, length) or _Answer(owner, rtype)
    if rtype in (_TYPE_A, _TYPE_AAAA):
        return _Answer(owner, rtype)  # wrong RDLENGTH: counted as skipped
    return None


def _other_record(
    wire: bytes, cur: Cursor, names: _Names, into: list[str] | None
) -> tuple[int, int]:
    """Frame one record read for ``answers`` only; keep its address or CNAME target in ``into``.

    The owner is framed, not decoded: it is not used, and a damaged one (a pointer that does
    not go backwards) must not end the reading, which tshark goes on with.
    """
    start = cur.pos
    rtype, ttl = _skip_rr(cur)
    if into is not None and rtype in (_TYPE_A, _TYPE_AAAA, _TYPE_CNAME):
        end = cur.pos
        cur.pos = start
        _skip_name(cur)
        rec = _read_rdata(wire, cur, names, "")
        cur.pos = end
        if rec is not None and rec.value is not None:
            into.append(rec.value)
    return rtype, ttl


def _skip_rr(cur: Cursor) -> tuple[int, int]:
    """Frame one record; return its TYPE and TTL (the OPT record keeps flags there)."""
    _skip_name(cur)
    rtype = cur.uint16()
    cur.skip(2)
    ttl = cur.uint32()
    with cur.block(2) as length:
        cur.skip(length)
    return rtype, ttl


def _chain(qname: str, records: list[_Answer]) -> set[str]:
    """The question name and every name reached from it by CNAME or AliasMode target."""
    edges: dict[str, list[str]] = {}
    for rec in records:
        if rec.value is not None and (rec.rtype == _TYPE_CNAME or rec.alias):
            edges.setdefault(rec.owner, []).append(rec.value)
    owners = {qname}
    todo = [qname]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in owners:
                owners.add(target)
                todo.append(target)
    return owners


def parse_dns(wire: bytes) -> DnsMessage:
    """Parse one DNS message (no TCP length prefix).

    Raises :class:`~probes.errors.MalformedDNS` when the header is short, the first question's
    name cannot be read, or a message without a question is not framed correctly. Damage after
    the first question only ends the reading there (``complete`` is then False): the question
    is what an egress auditor needs most, and tshark shows it for such messages too.
    """
    wire = bytes(wire)
    if len(wire) < _HEADER_LEN:
        msg = f"DNS header needs {_HEADER_LEN} bytes, got {len(wire)}"
        raise MalformedDNS(msg)
    cur = Cursor(wire, MalformedDNS)
    # RFC 1035 section 4.1.1: ID, flags (QR, Opcode, AA, TC, RD, RA, Z, AD, CD, RCODE), and the
    # QDCOUNT, ANCOUNT, NSCOUNT and ARCOUNT of the four sections.
    ident = cur.uint16()
    flags = cur.uint16()
    qdcount = cur.uint16()
    ancount = cur.uint16()
    nscount = cur.uint16()
    arcount = cur.uint16()
    is_response = bool(flags & 0x8000)
    opcode = (flags >> 11) & 0xF
    rcode = flags & 0xF

    qname: str | None = None
    qtype: str | None = None
    complete = True
    records: list[_Answer] = []
    others: list[str] = []
    names: _Names = {}
    unusable = 0
    if qdcount:
        # RFC 1035 section 4.1.2: QNAME, QTYPE, QCLASS. Only the first is used (RFC 9619 allows
        # one), but every question is framed to reach the answers.
        qname = _read_name(wire, cur, names)
    try:
        if qdcount:
            qtype = _type_text(cur.uint16())
            cur.skip(2)
            for _ in range(qdcount - 1):
                _skip_name(cur)
                cur.skip(4)
        keep_other = is_response and opcode == _OPCODE_QUERY
        for _ in range(ancount):
            if keep_other and qname is not None:
                rec = _read_answer(wire, cur, names)
                if rec is not None:
                    records.append(rec)
            else:
                # No question, so no chain: the answer section only adds to ``answers``.
                _other_record(wire, cur, names, others if keep_other else None)
        for _ in range(nscount):
            _other_record(wire, cur, names, others if keep_other else None)
        opt_seen = False
        for _ in range(arcount):
            rtype, ttl = _other_record(wire, cur, names, others if keep_other else None)
            if rtype == _TYPE_OPT and not opt_seen:
                # RFC 6891 section 6.1.3: the OPT TTL's top octet extends RCODE by 8 high bits.
                rcode |= (ttl >> 24) << 4
                opt_seen = True
    except MalformedDNS:
        if not qdcount:
            raise  # nothing but a header: accept it only when the rest is well formed
        complete = False

    resolved: list[str] = []
    answers: list[str] = []
    targets: list[str] = []
    hints: list[str] = []
    ech = False
    if records and qname is not None:
        owners = _chain(qname, records)
        for rec in records:
            if rec.value is not None and rec.rtype in (_TYPE_A, _TYPE_AAAA, _TYPE_CNAME):
                answers.append(rec.value)
            if rec.owner not in owners or rec.value is None:
                unusable += 1
            elif rec.rtype in (_TYPE_A, _TYPE_AAAA, _TYPE_CNAME):
                resolved.append(rec.value)
            elif not rec.alias:
                ech = ech or rec.ech
                if rec.value not in targets:
                    targets.append(rec.value)
                hints.extend(h for h in rec.hints if h not in hints)
    return DnsMessage(
        id=ident,
        is_response=is_response,
        opcode=opcode,
        rcode=_rcode_text(rcode),
        qname=qname,
        qtype=qtype,
        answers=tuple(dict.fromkeys(answers + others)),
        resolved=tuple(resolved),
        ech_config=ech,
        qdcount=qdcount,
        truncated=bool(flags & 0x0200),
        https_targets=tuple(targets),
        https_hints=tuple(hints),
        skipped_answers=unusable,
        complete=complete,
    )


def looks_like_dns(wire: bytes) -> bool:
    """A strict guess that a UDP payload on a port other than 53 is a plain DNS query or response.

    For the capture source to try on payloads no other parser claims (DNSCrypt fetches its
    certificate with a plain TXT query on port 443). One question, opcode QUERY, Z bit clear,
    every section well formed and nothing after it.
    """
    try:
        msg = parse_dns(wire)
    except MalformedDNS:
        return False
    if msg.qdcount != 1 or msg.opcode != _OPCODE_QUERY or not msg.complete or msg.qtype is None:
        return False
    if wire[3] & 0x40:  # Z, RFC 1035 section 4.1.1: must be zero
        return False
    return _framed_length(wire) == len(wire)


def _framed_length(wire: bytes) -> int:
    """Octets taken by the header and every section, or -1 when they do not frame."""
    cur = Cursor(wire, MalformedDNS, 4)
    try:
        qdcount = cur.uint16()
        records = cur.uint16() + cur.uint16() + cur.uint16()
        for _ in range(qdcount):
            _skip_name(cur)
            cur.skip(4)
        for _ in range(records):
            _skip_rr(cur)
    except MalformedDNS:
        return -1
    return cur.pos


# Client address, client port, server address, server port, message ID; then with the question.
_FlowId = tuple[bytes, int, bytes, int, int]
_Key = tuple[bytes, int, bytes, int, int, str | None, str | None]


@dataclass(slots=True)
class _Pending:
    first_ts: float
    last_ts: float
    transport: Transport
    src: bytes
    sport: int
    dst: bytes
    dport: int
    qname: str | None
    qtype: str | None


class DnsTracker:
    """Pairs DNS queries with responses; one observation per query.

    Fed every DNS message in packet order through :meth:`message`; call :meth:`expire` as time
    passes (``message`` also does, by packet time) and :meth:`flush` at the end of input.

    - A query waits up to ``query_timeout`` seconds (packet time, from its last retransmission)
      for its response, then is emitted with no answers and ``rcode=None``.
    - A response is paired by client address and port, server address and port, ID, and
      question (name case-insensitive, type). The observation is in the query's direction
      (client to resolver) and carries the response's time, rcode and answers.
    - A response whose query was not seen (the capture started late) is emitted alone, turned
      to the client-to-resolver direction. So is a response that comes after its query was
      emitted unanswered (``late_responses``): the query then has two observations.
    - Retransmitted queries, and duplicate responses within ``query_timeout`` of the pair being
      completed (a capture on two interfaces sees both), add no observation.
    - At most ``max_pending`` queries wait; the oldest is then emitted unanswered (``evicted``).
      As many completed keys are remembered, for ``query_timeout``, to recognise duplicates.

    ``stats`` counts what happened: ``queries``, ``responses``, ``paired``,
    ``unpaired_responses``, ``late_responses``, ``unanswered`` (emitted by timeout or flush),
    ``evicted``, ``retransmits``, ``duplicate_responses``, ``malformed``, ``ignored``
    (mDNS/LLMNR ports), ``skipped_answers`` (answer records outside the CNAME chain or
    undecodable).
    """

    def __init__(self, *, query_timeout: float = 5.0, max_pending: int = 16384) -> None:
        if max_pending < 1:
            msg = f"max_pending must be positive, got {max_pending!r}"
            raise ValueError(msg)
        self.query_timeout = query_timeout
        self.max_pending = max_pending
        self._pending: OrderedDict[_Key, _Pending] = OrderedDict()
        self._by_flow: dict[_FlowId, list[_Key]] = {}
        # Keys completed within query_timeout: completion time, and whether a response was seen.
        self._done: OrderedDict[_Key, tuple[float, bool]] = OrderedDict()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "queries",
                "responses",
                "paired",
                "unpaired_responses",
                "late_responses",
                "unanswered",
                "evicted",
                "retransmits",
                "duplicate_responses",
                "malformed",
                "ignored",
                "skipped_answers",
            ),
            0,
        )

    @property
    def pending(self) -> int:
        """Queries waiting for their response."""
        return len(self._pending)

    def message(
        self,
        ts: float,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        transport: str,
        wire: bytes,
    ) -> list[Observation]:
        """Feed one DNS message; return the observations it completes.

        ``src`` and ``dst`` are 4- or 16-byte addresses of this packet's sender and receiver;
        ``transport`` is ``udp`` (``wire`` is the datagram's payload) or ``tcp`` (``wire`` is
        one message without its two-byte length prefix, as :mod:`probes.tcp` delivers it).
        Malformed messages are counted, never raised. The result also holds queries that
        ``ts`` expires (see :meth:`expire`).
        """
        if transport not in ("udp", "tcp"):
            msg = f"transport must be 'udp' or 'tcp', got {transport!r}"
            raise ValueError(msg)
        out: list[Observation] = []
        if sport in NOT_EGRESS_PORTS or dport in NOT_EGRESS_PORTS:
            self.stats["ignored"] += 1
        else:
            self._one(out, ts, src, sport, dst, dport, "udp" if transport == "udp" else "tcp", wire)
        # Expire after handling the packet, so that a retransmission sent exactly at the
        # timeout (glibc retries after 5 s, our default) refreshes its query instead of
        # finding it just expired.
        out.extend(self.expire(ts))
        return out

    def expire(self, now: float) -> list[Observation]:
        """Emit queries that got no response within ``query_timeout`` of ``now``."""
        out: list[Observation] = []
        deadline = now - self.query_timeout
        pending = self._pending
        while pending:
            key, entry = next(iter(pending.items()))
            if entry.last_ts > deadline:
                break
            self._remove(key)
            self.stats["unanswered"] += 1
            self._remember(key, now, answered=False)
            out.append(self._unanswered(entry))
        done = self._done
        while done and next(iter(done.values()))[0] <= deadline:
            done.popitem(last=False)
        return out

    def flush(self) -> list[Observation]:
        """At end of input: emit every query still waiting, forget everything else."""
        out = [self._unanswered(entry) for entry in self._pending.values()]
        self.stats["unanswered"] += len(out)
        self._pending.clear()
        self._by_flow.clear()
        self._done.clear()
        return out

    def _one(
        self,
        out: list[Observation],
        ts: float,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        transport: Transport,
        wire: bytes,
    ) -> None:
        try:
            msg = parse_dns(wire)
        except MalformedDNS:
            self.stats["malformed"] += 1
            return
        if msg.is_response:
            self.stats["responses"] += 1
            self.stats["skipped_answers"] += msg.skipped_answers
            self._response(out, ts, src, sport, dst, dport, transport, msg)
        else:
            self.stats["queries"] += 1
            self._query(out, ts, src, sport, dst, dport, transport, msg)

    def _query(
        self,
        out: list[Observation],
        ts: float,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        transport: Transport,
        msg: DnsMessage,
    ) -> None:
        key: _Key = (src, sport, dst, dport, msg.id, msg.qname, msg.qtype)
        entry = self._pending.get(key)
        if entry is not None:
            self.stats["retransmits"] += 1
            entry.last_ts = max(entry.last_ts, ts)
            self._pending.move_to_end(key)
            return
        if key in self._done:
            # Sent again after its answer, or after it was emitted unanswered: nothing new; a
            # response to it is still reported (as a late response).
            self.stats["retransmits"] += 1
            return
        self._pending[key] = _Pending(
            ts, ts, transport, src, sport, dst, dport, msg.qname, msg.qtype
        )
        self._by_flow.setdefault(key[:5], []).append(key)
        if len(self._pending) > self.max_pending:
            oldest, entry = next(iter(self._pending.items()))
            self._remove(oldest)
            self.stats["evicted"] += 1
            self._remember(oldest, ts, answered=False)
            out.append(self._unanswered(entry))

    def _response(
        self,
        out: list[Observation],
        ts: float,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        transport: Transport,
        msg: DnsMessage,
    ) -> None:
        # The response travels resolver -> client: the client is its destination.
        key: _Key = (dst, dport, src, sport, msg.id, msg.qname, msg.qtype)
        if msg.qname is None:
            # No question (FORMERR, NOTIMP, IQUERY): any query of this flow and ID.
            keys = self._by_flow.get((dst, dport, src, sport, msg.id))
            if keys:
                key = keys[0]
        entry = self._pending.get(key)
        if entry is not None:
            self._remove(key)
            self.stats["paired"] += 1
            self._remember(key, ts, answered=True)
            out.append(
                _observation(
                    ts,
                    entry.transport,
                    entry.src,
                    entry.sport,
                    entry.dst,
                    entry.dport,
                    entry.qname,
                    entry.qtype,
                    msg,
                )
            )
            return
        done = self._done.get(key)
        if done is not None and done[1]:
            self.stats["duplicate_responses"] += 1
            return
        # Its query was emitted unanswered (the response came after query_timeout), or was
        # never seen: report the response on its own, in the query's direction.
        self.stats["late_responses" if done is not None else "unpaired_responses"] += 1
        self._remember(key, ts, answered=True)
        out.append(_observation(ts, transport, dst, dport, src, sport, msg.qname, msg.qtype, msg))

    def _remember(self, key: _Key, ts: float, *, answered: bool) -> None:
        self._done[key] = (ts, answered)
        self._done.move_to_end(key)
        if len(self._done) > self.max_pending:
            self._done.popitem(last=False)

    def _remove(self, key: _Key) -> None:
        del self._pending[key]
        flow: _FlowId = key[:5]
        keys = self._by_flow.get(flow)
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._by_flow[flow]

    @staticmethod
    def _unanswered(entry: _Pending) -> Observation:
        return _observation(
            entry.first_ts,
            entry.transport,
            entry.src,
            entry.sport,
            entry.dst,
            entry.dport,
            entry.qname,
            entry.qtype,
            None,
        )


def _observation(
    ts: float,
    transport: Transport,
    client: bytes,
    cport: int,
    server: bytes,
    sport: int,
    qname: str | None,
    qtype: str | None,
    response: DnsMessage | None,
) -> Observation:
    """One DNS observation, client to resolver, with the response's facts when there is one."""
    return Observation(
        ts=ts,
        kind="dns",
        transport=transport,
        src=format_ip(client),
        dst=format_ip(server),
        sport=cport,
        dport=sport,
        qname=qname,
        qtype=qtype,
        answers=response.answers if response else (),
        resolved=response.resolved if response else (),
        ech_config=response.ech_config if response else False,
        rcode=response.rcode if response else None,
    )
