"""probes/dns.py: parse_dns, looks_like_dns and DnsTracker.

Messages are built by dnspython in the test; real ones come from the nDPI captures in
../shared/captures, read with scapy (the project's own capture reader is written in parallel)
and checked against tshark. dnspython's own ``from_wire`` is the oracle for the differential
tests: wherever it accepts a message, parse_dns must read the same question, ``answers`` (every
A/AAAA/CNAME value of every section) and ``resolved`` (the question name's CNAME chain).
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import itertools
import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import dns.tsigkeyring
import dns.update
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.dns import (
    DNS_PORTS,
    NOT_EGRESS_PORTS,
    DnsMessage,
    DnsTracker,
    looks_like_dns,
    parse_dns,
)
from probes.errors import MalformedDNS

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"

CLIENT = socket.inet_pton(socket.AF_INET, "192.0.2.10")
RESOLVER = socket.inet_pton(socket.AF_INET, "198.51.100.53")
CLIENT6 = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
RESOLVER6 = socket.inet_pton(socket.AF_INET6, "2001:db8::53")
ECH_CONFIG_LIST = base64.b64encode(b"\x00\x04\xfe\x0d\x00\x00").decode()  # length + 4 octets

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
CNAME = dns.rdatatype.CNAME
HTTPS = dns.rdatatype.HTTPS


# --- factories ---------------------------------------------------------------------------------


def query(name: str | dns.name.Name = "www.example.com", rdtype: Any = "A", **kw: Any) -> Any:
    ident = kw.pop("id", 0x1234)
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = ident
    return q


def response(q: Any, *records: tuple[str, str, str], rcode: int = 0, **kw: Any) -> Any:
    """A response to ``q`` with answer records given as (owner, type, rdata text)."""
    r = dns.message.make_response(q, **kw)
    for owner, rdtype, text in records:
        r.answer.append(dns.rrset.from_text(owner, 300, "IN", rdtype, text))
    r.set_rcode(rcode)
    return r


def wire(m: Any) -> bytes:
    return bytes(m.to_wire())


def feed_query(t: DnsTracker, ts: float, m: Any, sport: int = 40000) -> list[Any]:
    return t.message(ts, CLIENT, sport, RESOLVER, 53, "udp", wire(m))


def feed_response(t: DnsTracker, ts: float, m: Any, dport: int = 40000) -> list[Any]:
    return t.message(ts, RESOLVER, 53, CLIENT, dport, "udp", wire(m))


# The e7.whatsapp.net response of ndpi__dns.pcap (frame 5), and the IQUERY pair of
# ndpi__dns_invert_query.pcapng: real bytes for the mutation tests.
WHATSAPP_RESPONSE = bytes.fromhex(
    "784381800001000800000000026537087768617473617070036e65740000010001c00c00010001000000"
    "3c0004a92ddbebc00c000100010000003c0004a92f288ec00c000100010000003c0004a92df879c00c00"
    "0100010000003c00046ca8b0eac00c000100010000003c0004a92df8bdc00c000100010000003c0004a9"
    "2df8b4c00c000100010000003c0004a9354f4fc00c000100010000003c0004a92ddbe8"
)
IQUERY = bytes.fromhex("77fc09000000000100000000033231360235380332303201340000010001000000000000")
IQUERY_RESPONSE = bytes.fromhex("77fc89840000000000000000")


# --- parse_dns: messages made by dnspython -----------------------------------------------------


def test_query() -> None:
    m = parse_dns(wire(query("WWW.Example.COM", "AAAA")))
    assert m == DnsMessage(
        id=0x1234,
        is_response=False,
        opcode=0,
        rcode="NOERROR",
        qname="www.example.com",
        qtype="AAAA",
        answers=(),
        ech_config=False,
        qdcount=1,
    )


def test_whatsapp_fixture_is_what_tshark_shows() -> None:
    m = parse_dns(WHATSAPP_RESPONSE)
    assert (m.id, m.qname, m.qtype, m.rcode) == (0x7843, "e7.whatsapp.net", "A", "NOERROR")
    assert m.answers[0] == "169.45.219.235" and len(m.answers) == 8


def test_cname_chain_in_answer_order() -> None:
    q = query("www.example.com")
    r = response(
        q,
        ("www.example.com.", "CNAME", "Edge.Example.NET."),
        ("edge.example.net.", "CNAME", "a1.cdn.example."),
        ("a1.cdn.example.", "A", "192.0.2.1"),
        ("a1.cdn.example.", "A", "192.0.2.2"),
    )
    m = parse_dns(wire(r))
    assert m.is_response and m.rcode == "NOERROR"
    assert m.resolved == ("edge.example.net", "a1.cdn.example", "192.0.2.1", "192.0.2.2")
    assert m.answers == m.resolved  # nothing outside the chain


def test_chain_out_of_order_and_aaaa() -> None:
    # Some servers put the address before the CNAME that leads to it.
    q = query("api.example.com", "AAAA")
    r = response(
        q,
        ("lb.example.net.", "AAAA", "2001:db8::1"),
        ("api.example.com.", "CNAME", "lb.example.net."),
    )
    m = parse_dns(wire(r))
    assert m.resolved == ("2001:db8::1", "lb.example.net")
    assert m.answers == m.resolved


def test_records_outside_the_chain_are_in_answers_not_resolved() -> None:
    q = query("www.example.com")
    r = response(
        q,
        ("www.example.com.", "A", "192.0.2.1"),
        ("evil.example.org.", "A", "203.0.113.66"),
        ("evil.example.org.", "CNAME", "www.example.com."),
    )
    r.additional.append(dns.rrset.from_text("ns1.example.com.", 300, "IN", "A", "192.0.2.53"))
    m = parse_dns(wire(r))
    assert m.resolved == ("192.0.2.1",)
    # Everything tshark's dns.a/dns.cname show, in wire order: the off-chain owner, then glue.
    assert m.answers == ("192.0.2.1", "203.0.113.66", "www.example.com", "192.0.2.53")
    assert m.skipped_answers == 2


def test_glue_is_in_answers_but_not_resolved() -> None:
    q = query("www.example.com", "AAAA")
    r = response(q)
    r.authority.append(dns.rrset.from_text("example.com.", 300, "IN", "NS", "ns1.example.com."))
    r.additional.append(dns.rrset.from_text("ns1.example.com.", 300, "IN", "A", "192.0.2.53"))
    r.additional.append(dns.rrset.from_text("ns1.example.com.", 300, "IN", "AAAA", "2001:db8::53"))
    m = parse_dns(wire(r))
    assert m.resolved == ()
    assert m.answers == ("192.0.2.53", "2001:db8::53")
    assert m.skipped_answers == 0  # only answer-section records are counted as skipped


def test_answers_in_wire_order_across_sections_without_repeats() -> None:
    q = query("www.example.com")
    r = response(
        q,
        ("www.example.com.", "CNAME", "edge.example.net."),
        ("edge.example.net.", "A", "192.0.2.1"),
    )
    r.authority.append(dns.rrset.from_text("example.net.", 300, "IN", "A", "192.0.2.99"))
    r.authority.append(
        dns.rrset.from_text("old.example.net.", 300, "IN", "CNAME", "Edge.Example.NET.")
    )
    r.additional.append(dns.rrset.from_text("edge.example.net.", 300, "IN", "A", "192.0.2.1"))
    r.additional.append(dns.rrset.from_text("ns.example.net.", 300, "IN", "AAAA", "2001:db8::53"))
    r.additional.append(dns.rrset.from_text("ns.example.net.", 300, "CH", "TXT", "x"))
    m = parse_dns(wire(r))
    assert m.resolved == ("edge.example.net", "192.0.2.1")
    assert m.answers == ("edge.example.net", "192.0.2.1", "192.0.2.99", "2001:db8::53")
    assert m.complete


def test_query_records_are_not_answers() -> None:
    # Only responses to QUERY carry answers; a query's sections are not resolution results.
    q = query("www.example.com")
    q.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1"))
    q.additional.append(dns.rrset.from_text("ns.example.com.", 300, "IN", "A", "192.0.2.53"))
    m = parse_dns(wire(q))
    assert (m.is_response, m.answers, m.resolved) == (False, (), ())


def test_nxdomain() -> None:
    q = query("nope.example.com")
    r = response(q, rcode=dns.rcode.NXDOMAIN)
    r.authority.append(dns.rrset.from_text("example.com.", 300, "IN", "SOA", "ns. host. 1 2 3 4 5"))
    m = parse_dns(wire(r))
    assert (m.rcode, m.answers, m.resolved) == ("NXDOMAIN", (), ())


def test_nxdomain_after_cname_keeps_the_cname() -> None:
    q = query("www.example.com")
    r = response(q, ("www.example.com.", "CNAME", "gone.example.net."), rcode=dns.rcode.NXDOMAIN)
    m = parse_dns(wire(r))
    assert m.answers == m.resolved == ("gone.example.net",)


def test_extended_rcode_from_opt() -> None:
    q = query("www.example.com", use_edns=0)
    r = response(q)
    r.set_rcode(dns.rcode.BADVERS)  # 16: needs the OPT record's upper 8 bits (RFC 6891 6.1.3)
    m = parse_dns(wire(r))
    assert m.rcode == "BADVERS"


def test_truncated_bit() -> None:
    q = query("big.example.com", "TXT")
    r = response(q)
    r.flags |= dns.flags.TC
    m = parse_dns(wire(r))
    assert m.truncated and m.answers == m.resolved == () and m.qtype == "TXT"


def test_https_with_ech() -> None:
    q = query("crypto.example.com", "HTTPS")
    text = f'1 . alpn="h2,h3" ech="{ECH_CONFIG_LIST}" ipv4hint=192.0.2.7 ipv6hint=2001:db8::7'
    m = parse_dns(wire(response(q, ("crypto.example.com.", "HTTPS", text))))
    assert m.qtype == "HTTPS" and m.ech_config
    assert m.https_targets == ("crypto.example.com",)  # "." in ServiceMode is the owner
    assert m.https_hints == ("192.0.2.7", "2001:db8::7")
    assert m.answers == m.resolved == ()  # hints are not A/AAAA records


def test_https_without_ech() -> None:
    q = query("plain.example.com", "HTTPS")
    m = parse_dns(
        wire(response(q, ("plain.example.com.", "HTTPS", '1 svc.Example.NET. alpn="h2"')))
    )
    assert not m.ech_config
    assert m.https_targets == ("svc.example.net",)


def test_https_behind_cname_and_alias_mode() -> None:
    q = query("www.example.com", "HTTPS")
    r = response(
        q,
        ("www.example.com.", "CNAME", "front.example.net."),
        ("front.example.net.", "HTTPS", "0 pool.example.org."),
        ("pool.example.org.", "HTTPS", f'1 . ech="{ECH_CONFIG_LIST}"'),
        ("unrelated.example.", "HTTPS", f'1 . ech="{ECH_CONFIG_LIST}"'),
    )
    m = parse_dns(wire(r))
    assert m.ech_config
    assert m.https_targets == ("pool.example.org",)
    assert m.answers == m.resolved == ("front.example.net",)
    assert m.skipped_answers == 1


def test_ech_for_another_name_does_not_count() -> None:
    q = query("www.example.com", "HTTPS")
    r = response(q, ("other.example.com.", "HTTPS", f'1 . ech="{ECH_CONFIG_LIST}"'))
    assert not parse_dns(wire(r)).ech_config


def test_svcb_record_is_read_like_https() -> None:
    q = query("_dns.resolver.arpa", "SVCB")
    r = response(q, ("_dns.resolver.arpa.", "SVCB", '1 dns.example.net. alpn="dot"'))
    m = parse_dns(wire(r))
    assert (m.qtype, m.https_targets, m.ech_config) == ("SVCB", ("dns.example.net",), False)


def test_lower_case_and_0x20_randomisation() -> None:
    m = parse_dns(wire(query("2.SeCURednS.aVasT.CoM", "TXT")))
    assert m.qname == "2.securedns.avast.com"


def test_idna_stays_an_a_label() -> None:
    assert parse_dns(wire(query("www.xn--mnich-kva.com"))).qname == "www.xn--mnich-kva.com"
    name = dns.name.from_unicode("www.münich.com")
    assert parse_dns(wire(query(name))).qname == "www.xn--mnich-kva.com"


@pytest.mark.parametrize(
    "labels",
    [
        [b"a.b", b"example"],  # a dot inside a label
        [b"sp ace", b"t\tab"],
        [b"\x00\x01\xff", b"bin"],
        [b'q"u(o)t;e@$\\', b"x"],
        [b"*", b"example", b"com"],
        [b"UPPER\xc4"],
    ],
)
def test_hostile_names_keep_dnspythons_escapes(labels: list[bytes]) -> None:
    name = dns.name.Name([*labels, b""])
    m = parse_dns(wire(query(name)))
    assert m.qname == name.to_text(omit_final_dot=True).lower()


def test_root_name() -> None:
    m = parse_dns(wire(query(dns.name.root, "NS")))
    assert (m.qname, m.qtype) == (".", "NS")


def test_unknown_type_mnemonic() -> None:
    assert parse_dns(wire(query("x.example", 65534))).qtype == "TYPE65534"


def test_several_questions_use_the_first() -> None:
    q = query("first.example.com")
    q.question.append(dns.rrset.RRset(dns.name.from_text("second.example.com"), IN, AAAA))
    r = response(q, ("first.example.com.", "A", "192.0.2.1"))
    for m in (parse_dns(wire(q)), parse_dns(wire(r))):
        assert (m.qname, m.qtype, m.qdcount) == ("first.example.com", "A", 2)
    assert parse_dns(wire(r)).answers == parse_dns(wire(r)).resolved == ("192.0.2.1",)


def test_inverse_query_has_no_question() -> None:
    m = parse_dns(IQUERY)
    assert (m.opcode, m.qname, m.qtype, m.answers, m.resolved, m.qdcount) == (
        1,
        None,
        None,
        (),
        (),
        0,
    )
    r = parse_dns(IQUERY_RESPONSE)
    assert (r.is_response, r.rcode, r.qname) == (True, "NOTIMP", None)


def test_update_observes_the_zone_but_no_answers() -> None:
    u = dns.update.UpdateMessage("example.com")
    u.add("host", 300, "A", "10.0.0.1")
    m = parse_dns(wire(u))
    assert (m.opcode, m.qname, m.qtype, m.answers) == (5, "example.com", "SOA", ())
    # A response echoes the zone; its sections are not resolution results, whichever they are.
    r = dns.message.make_response(u)
    r.prerequisite.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    r.update.append(dns.rrset.from_text("host.example.com.", 300, "IN", "A", "10.0.0.1"))
    r.additional.append(dns.rrset.from_text("ns.example.com.", 300, "IN", "AAAA", "2001:db8::1"))
    m = parse_dns(wire(r))
    assert (m.opcode, m.is_response, m.answers, m.resolved) == (5, True, (), ())


def test_notify() -> None:
    q = query("example.com", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    q.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    r.additional.append(dns.rrset.from_text("ns.example.com.", 300, "IN", "A", "192.0.2.53"))
    m = parse_dns(wire(r))
    assert (m.opcode, m.qname, m.answers, m.resolved) == (4, "example.com", (), ())


def test_tsig_signed_message_needs_no_key() -> None:
    keyring = dns.tsigkeyring.from_text({"key.": base64.b64encode(b"secret" * 4).decode()})
    q = query("www.example.com")
    q.use_tsig(keyring, keyname="key.")
    r = response(q, ("www.example.com.", "A", "192.0.2.1"))
    r.use_tsig(keyring, keyname="key.")
    raw = wire(r)
    with pytest.raises(dns.message.UnknownTSIGKey):
        dns.message.from_wire(raw)
    m = parse_dns(raw)
    assert m.answers == m.resolved == ("192.0.2.1",)  # the TSIG record is not an address


# --- parse_dns: damaged input ------------------------------------------------------------------


def _rr(name: bytes, rtype: int, rdata: bytes) -> bytes:
    return (
        name
        + rtype.to_bytes(2, "big")
        + b"\x00\x01"
        + b"\x00\x00\x00\x3c"
        + (len(rdata).to_bytes(2, "big") + rdata)
    )


def _header(ident: int, flags: int, qd: int, an: int, ns: int = 0, ar: int = 0) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in (ident, flags, qd, an, ns, ar))


QNAME = b"\x03www\x07example\x03com\x00"


def test_bad_address_rdata_skips_that_record_only() -> None:
    # An A record with no address: dnspython refuses the whole message, tshark shows the rest.
    raw = (
        _header(1, 0x8180, 1, 3)
        + QNAME
        + b"\x00\x01\x00\x01"
        + _rr(b"\xc0\x0c", 1, b"")
        + _rr(b"\xc0\x0c", 1, bytes([192, 0, 2, 9]))
        + _rr(b"\xc0\x0c", 28, b"\x20\x01")
    )
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(raw)
    m = parse_dns(raw)
    assert (m.qname, m.answers, m.resolved, m.skipped_answers, m.complete) == (
        "www.example.com",
        ("192.0.2.9",),
        ("192.0.2.9",),
        2,
        True,
    )


def test_damaged_glue_owner_does_not_end_the_reading() -> None:
    # The owner of an additional A record is a compression pointer forwards (dnspython refuses
    # the message). Its name is not needed for ``answers``: as tshark does, the address is kept
    # and the OPT record after it still extends RCODE to BADVERS.
    head = _header(5, 0x8180, 1, 1, 0, 2) + QNAME + b"\x00\x01\x00\x01"
    head += _rr(b"\xc0\x0c", 1, bytes([192, 0, 2, 1]))
    forward = len(head) + 2 + 10 + 4  # the OPT record's owner, the root
    opt = b"\x00\x00\x29\x10\x00\x01\x00\x00\x00\x00\x00"  # EDNS, extended RCODE 1
    raw = head + _rr((0xC000 | forward).to_bytes(2, "big"), 1, bytes([192, 0, 2, 53])) + opt
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(raw)
    m = parse_dns(raw)
    assert (m.rcode, m.complete) == ("BADVERS", True)
    assert (m.answers, m.resolved) == (("192.0.2.1", "192.0.2.53"), ("192.0.2.1",))


def test_response_without_question_keeps_every_section() -> None:
    # FORMERR with no question: no chain, so nothing is resolved, but every address is in
    # ``answers`` (tshark's dns.a shows both), answer section included. The additional record's
    # owner points at itself; being only framed, it does not make the message malformed.
    raw = _header(2, 0x8181, 0, 1, 0, 1) + _rr(b"\x00", 1, bytes([192, 0, 2, 7]))
    raw += _rr((0xC000 | len(raw)).to_bytes(2, "big"), 1, bytes([192, 0, 2, 8]))
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(raw)
    m = parse_dns(raw)
    assert (m.qname, m.rcode, m.complete) == (None, "FORMERR", True)
    assert (m.answers, m.resolved, m.skipped_answers) == (("192.0.2.7", "192.0.2.8"), (), 0)


def test_response_cut_short_keeps_question_and_answers_read() -> None:
    q = query("www.example.com", use_edns=0)
    r = response(q, ("www.example.com.", "A", "192.0.2.1"), ("www.example.com.", "A", "192.0.2.2"))
    raw = wire(r)
    m = parse_dns(raw[:-5])  # inside the OPT record, as an IP fragment would leave it
    assert (m.answers, m.resolved, m.complete) == (("192.0.2.1", "192.0.2.2"),) * 2 + (False,)
    m = parse_dns(raw[: raw.index(bytes([192, 0, 2, 2]))])
    assert (m.qname, m.answers, m.resolved, m.complete) == (
        "www.example.com",
        ("192.0.2.1",),
        ("192.0.2.1",),
        False,
    )


def test_response_cut_short_in_the_glue() -> None:
    q = query("www.example.com")
    r = response(q, ("www.example.com.", "A", "192.0.2.1"))
    r.additional.append(dns.rrset.from_text("ns1.example.com.", 300, "IN", "A", "192.0.2.53"))
    r.additional.append(dns.rrset.from_text("ns2.example.com.", 300, "IN", "A", "192.0.2.54"))
    raw = wire(r)
    m = parse_dns(raw[: raw.index(bytes([192, 0, 2, 54])) + 3])
    assert (m.answers, m.resolved, m.complete) == (
        ("192.0.2.1", "192.0.2.53"),
        ("192.0.2.1",),
        False,
    )


def test_trailing_bytes_are_ignored() -> None:
    raw = wire(response(query(), ("www.example.com.", "A", "192.0.2.1")))
    assert parse_dns(raw + b"\x00\x00junk") == parse_dns(raw)


def test_every_prefix_of_a_response() -> None:
    raw = WHATSAPP_RESPONSE
    full = parse_dns(raw)
    question_end = 12 + len(b"\x02e7\x08whatsapp\x03net\x00")
    for n in range(len(raw)):
        if n < question_end:
            with pytest.raises(MalformedDNS):
                parse_dns(raw[:n])
            continue
        m = parse_dns(raw[:n])
        assert m.qname == full.qname and not m.complete
        assert full.answers[: len(m.answers)] == m.answers
        assert full.resolved[: len(m.resolved)] == m.resolved == m.answers


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "header needs 12 bytes"),
        (b"\x00" * 11, "header needs 12 bytes"),
        (_header(1, 0x0100, 1, 0) + b"\x03www", "truncated"),
        (_header(1, 0x0100, 1, 0) + b"\xc0\x0c\x00\x01\x00\x01", "does not point backwards"),
        (_header(1, 0x0100, 1, 0) + b"\x01a\xc0\x0e\x00\x01\x00\x01", "does not point backwards"),
        (_header(1, 0x0100, 1, 0) + b"\x41" + b"a" * 65 + b"\x00", "label type 0x41"),
        (_header(1, 0x0100, 1, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00", "longer than 255"),
        # No question, and what follows is not a record: not a DNS message at all.
        (_header(1, 0x0100, 0, 1) + b"\x05ab", "truncated"),
    ],
)
def test_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedDNS, match=message):
        parse_dns(raw)


def _pointer_pile(k: int) -> bytes:
    """A response for "a" whose CNAME target is reached through 1 + k compression pointers.

    The pile sits in the rdata of an unknown type, which nobody reads as names: each pointer
    points at the one before it, the first at the question name.
    """
    question = b"\x01a\x00\x00\x01\x00\x01"  # offset 12
    pile_at = 12 + len(question) + 2 + 10  # after the first answer's owner and fixed fields
    pile = b"".join(
        (0xC000 | (12 if i == 0 else pile_at + 2 * (i - 1))).to_bytes(2, "big") for i in range(k)
    )
    last = (0xC000 | (pile_at + 2 * (k - 1))).to_bytes(2, "big")
    return (
        _header(1, 0x8180, 1, 2)
        + question
        + _rr(b"\xc0\x0c", 65280, pile)
        + _rr(b"\xc0\x0c", 5, last)
    )


def test_pointer_chain_limit() -> None:
    ok, too_long = _pointer_pile(15), _pointer_pile(16)  # 16 hops allowed, as in dnspython
    assert parse_dns(ok).answers == parse_dns(ok).resolved == ("a",)
    assert_same_as_dnspython(ok)
    with pytest.raises(dns.name.PointerChainTooLong):
        dns.message.from_wire(too_long)
    m = parse_dns(too_long)
    assert (m.qname, m.answers, m.resolved, m.skipped_answers) == ("a", (), (), 1)


def _https_response(ech: bytes) -> bytes:
    # RFC 9460 section 2.2: SvcPriority 1, TargetName ".", alpn=h2, then ech (key 5).
    rdata = b"\x00\x01\x00" + b"\x00\x01\x00\x03\x02h2" + b"\x00\x05" + len(ech).to_bytes(2, "big")
    return (
        _header(1, 0x8180, 1, 1) + QNAME + b"\x00\x41\x00\x01" + _rr(b"\xc0\x0c", 65, rdata + ech)
    )


def test_https_rdata_dnspython_refuses_is_no_ech() -> None:
    good = _https_response(b"\x00\x04\xfe\x0d\x00\x00")
    assert parse_dns(good).ech_config
    # An ech value that is not an ECHConfigList (RFC 9849 section 4): a client drops it.
    bad = _https_response(b"\xff\xff")
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(bad)
    m = parse_dns(bad)
    assert m.qname == "www.example.com" and not m.ech_config and m.skipped_answers == 1


def test_compressed_question_name_pointing_into_earlier_question() -> None:
    q = query("www.example.com")
    q.question.append(dns.rrset.RRset(dns.name.from_text("mail.example.com"), IN, A))
    raw = wire(q)
    assert b"\xc0" in raw[12:]  # dnspython compressed the second question
    assert parse_dns(raw).qname == "www.example.com"


def test_looks_like_dns() -> None:
    assert looks_like_dns(wire(query("2.SeCURednS.aVasT.CoM", "TXT")))
    assert looks_like_dns(WHATSAPP_RESPONSE)
    assert not looks_like_dns(WHATSAPP_RESPONSE + b"\x00")  # trailing bytes
    assert not looks_like_dns(WHATSAPP_RESPONSE[:-1])
    assert not looks_like_dns(IQUERY)  # no question
    assert not looks_like_dns(b"\xc3\x00\x00\x00\x01" + bytes(40))  # a QUIC long header
    z = bytearray(wire(query()))
    z[3] |= 0x40
    assert not looks_like_dns(bytes(z))


def test_constants() -> None:
    assert 53 in DNS_PORTS
    assert {5353, 5355} <= NOT_EGRESS_PORTS


# --- differential tests against dnspython ------------------------------------------------------


def _reference_value(rdtype: int, rd: Any) -> str | None:
    """The text parse_dns gives an A/AAAA address or CNAME target; None for other records."""
    if rdtype in (A, AAAA) and rd.rdclass == IN:
        # As ipaddress prints it, like Observation.dst (::ffff:0:0, not ::ffff:0.0.0.0), so
        # that an answer and the address later connected to compare equal.
        return str(ipaddress.ip_address(rd.address))
    if rdtype == CNAME:
        return str(rd.target.to_text(omit_final_dot=True).lower())
    return None


def reference(raw: bytes) -> DnsMessage | None:
    """What dnspython's from_wire reads, in our terms; None when it refuses the message.

    ``answers``: every A/AAAA/CNAME value of the answer, authority and additional sections, in
    wire order, first occurrence kept. ``resolved``: the answer-section values whose owner is
    the question name or reached from it by CNAMEs, in wire order, repeats kept. Both only for
    responses to opcode QUERY.
    """
    try:
        m = dns.message.from_wire(raw, keyring=False, one_rr_per_rrset=True, ignore_trailing=True)
    except Exception:
        return None
    q = m.question[0] if m.question else None
    answers: list[str] = []
    resolved: list[str] = []
    is_query_response = bool(m.flags & dns.flags.QR) and m.opcode() == dns.opcode.QUERY
    if is_query_response:
        # One RR per RRset, so the sections' RRsets are the records in wire order. OPT and TSIG
        # are kept apart by dnspython; neither is an address.
        for section in (m.answer, m.authority, m.additional):
            for rrset in section:
                for rd in rrset:
                    value = _reference_value(rrset.rdtype, rd)
                    if value is not None:
                        answers.append(value)
    if is_query_response and q is not None:
        records = [(rrset.name, rrset.rdtype, rd) for rrset in m.answer for rd in rrset]
        chain = {q.name}
        grew = True
        while grew:
            grew = False
            for owner, rdtype, rd in records:
                if rdtype == CNAME and owner in chain and rd.target not in chain:
                    chain.add(rd.target)
                    grew = True
        for owner, rdtype, rd in records:
            value = _reference_value(rdtype, rd)
            if owner in chain and value is not None:
                resolved.append(value)
    return DnsMessage(
        id=m.id,
        is_response=bool(m.flags & dns.flags.QR),
        opcode=int(m.opcode()),
        rcode=dns.rcode.to_text(m.rcode()),
        qname=None if q is None else q.name.to_text(omit_final_dot=True).lower(),
        qtype=None if q is None else dns.rdatatype.to_text(q.rdtype),
        answers=tuple(dict.fromkeys(answers)),
        resolved=tuple(resolved),
        ech_config=False,
        qdcount=len(m.question),
        truncated=bool(m.flags & dns.flags.TC),
    )


def assert_same_as_dnspython(raw: bytes) -> None:
    ref = reference(raw)
    try:
        ours = parse_dns(raw)
    except MalformedDNS:
        assert ref is None, f"dnspython reads {raw.hex()} but parse_dns refuses it"
        return
    if ref is None:
        return
    assert (ours.id, ours.is_response, ours.opcode, ours.qname, ours.qtype, ours.truncated) == (
        ref.id,
        ref.is_response,
        ref.opcode,
        ref.qname,
        ref.qtype,
        ref.truncated,
    )
    assert ours.rcode == ref.rcode
    # Queries and other opcodes included: both are then empty.
    assert ours.answers == ref.answers
    assert ours.resolved == ref.resolved
    assert ours.complete and ours.qdcount == ref.qdcount


labels = st.binary(min_size=1, max_size=12)
names = st.lists(labels, max_size=5).map(lambda ls: dns.name.Name([*ls, b""]))
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@st.composite
def dns_responses(draw: st.DrawFn) -> bytes:
    qname = draw(names)
    q = dns.message.make_query(qname, draw(st.sampled_from(["A", "AAAA", "HTTPS", "TXT"])))
    r = dns.message.make_response(q)
    chain = [qname, *draw(st.lists(names, max_size=3))]
    rdatas: list[tuple[dns.name.Name, dns.rdata.Rdata]] = [
        (a, dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, b)) for a, b in itertools.pairwise(chain)
    ]
    rdatas += [(chain[-1], dns.rdtypes.IN.A.A(IN, A, x)) for x in draw(st.lists(ipv4, max_size=3))]
    rdatas += [
        (chain[-1], dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, x)) for x in draw(st.lists(ipv6, max_size=2))
    ]
    rdatas += [
        (draw(names), dns.rdtypes.IN.A.A(IN, A, x)) for x in draw(st.lists(ipv4, max_size=2))
    ]
    for owner, rd in draw(st.permutations(rdatas)):
        r.answer.append(dns.rrset.from_rdata(owner, 60, rd))
    # Authority and additional records: glue, stray CNAMEs, and repeats of answer values (which
    # ``answers`` keeps once). None of them is resolved, whatever its owner.
    others = st.one_of(
        ipv4.map(lambda x: dns.rdtypes.IN.A.A(IN, A, x)),
        ipv6.map(lambda x: dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, x)),
        names.map(lambda n: dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, n)),
        *([st.sampled_from([rd for _owner, rd in rdatas])] if rdatas else []),
    )
    for section in (r.authority, r.additional):
        for rd in draw(st.lists(others, max_size=3)):
            owner = draw(st.one_of(names, st.sampled_from(chain)))
            section.append(dns.rrset.from_rdata(owner, 60, rd))
    if draw(st.booleans()):
        r.additional.append(dns.rrset.from_text("ns.example.", 60, "IN", "A", "192.0.2.53"))
    r.set_rcode(draw(st.sampled_from([0, 2, 3])))
    return bytes(r.to_wire())


@settings(max_examples=400, deadline=None)
@given(dns_responses())
def test_same_answers_and_resolved_as_dnspython(raw: bytes) -> None:
    ref = reference(raw)
    assert ref is not None
    assert_same_as_dnspython(raw)
    assert set(ref.resolved) <= set(ref.answers)


@settings(max_examples=300, deadline=None)
@given(names, st.integers(0, 65535))
def test_same_question_as_dnspython(qname: dns.name.Name, rdtype: int) -> None:
    raw = bytes(dns.message.make_query(qname, rdtype).to_wire())
    assert parse_dns(raw).qname == qname.to_text(omit_final_dot=True).lower()
    assert_same_as_dnspython(raw)


# --- hypothesis: hostile bytes -----------------------------------------------------------------

REAL_MESSAGES = [
    WHATSAPP_RESPONSE,
    IQUERY,
    IQUERY_RESPONSE,
    bytes(
        response(
            query("crypto.example.com", "HTTPS", use_edns=0),
            ("crypto.example.com.", "CNAME", "c.example.net."),
            ("c.example.net.", "HTTPS", f'1 . alpn=h2 ech="{ECH_CONFIG_LIST}" ipv4hint=192.0.2.1'),
        ).to_wire()
    ),
]


def _parse_or_malformed(raw: bytes) -> None:
    try:
        parse_dns(raw)
    except MalformedDNS:
        pass
    looks_like_dns(raw)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    _parse_or_malformed(raw)
    assert_same_as_dnspython(raw)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_real_header(tail: bytes) -> None:
    # Random bytes rarely make a header that claims a question; this does.
    raw = _header(7, 0x8180, 1, 3, 1, 1) + tail
    _parse_or_malformed(raw)
    assert_same_as_dnspython(raw)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(REAL_MESSAGES)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at:]
        elif action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif raw:
            del raw[at]
    return bytes(raw)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_mutations_of_real_messages(raw: bytes) -> None:
    _parse_or_malformed(raw)
    assert_same_as_dnspython(raw)


@st.composite
def pointer_soup(draw: st.DrawFn) -> bytes:
    """A response whose names are labels and compression pointers to any earlier offset.

    Exercises the pointer rules (backwards only, no overlap, 16 hops) and the reuse of names
    already read, where parse_dns and dnspython must agree on every message. The records are
    spread over the answer, authority and additional sections, whose CNAME targets are read
    for ``answers`` too.
    """

    def name(before: int) -> bytes:
        out = b"".join(
            bytes([len(label)]) + label
            for label in draw(st.lists(st.binary(min_size=1, max_size=4), max_size=2))
        )
        if draw(st.booleans()) or before == 0:
            return out + b"\x00"
        return out + (0xC000 | draw(st.integers(0, before + len(out)))).to_bytes(2, "big")

    count = draw(st.integers(1, 5))
    an = draw(st.integers(0, count))
    ns = draw(st.integers(0, count - an))
    raw = bytearray(_header(1, 0x8180, 1, an, ns, count - an - ns))
    raw += name(len(raw)) + b"\x00\x01\x00\x01"
    for _ in range(count):
        raw += name(len(raw))
        if draw(st.booleans()):
            raw += b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + draw(
                st.binary(min_size=4, max_size=4)
            )
        else:
            start = len(raw) + 10
            target = name(start)
            raw += b"\x00\x05\x00\x01\x00\x00\x00\x3c" + len(target).to_bytes(2, "big") + target
    return bytes(raw)


@settings(max_examples=1500, deadline=None)
@given(pointer_soup())
def test_compression_pointers_as_dnspython(raw: bytes) -> None:
    # Compares answers (every section) and resolved (the answer section's chain).
    assert_same_as_dnspython(raw)


# --- DnsTracker --------------------------------------------------------------------------------


def test_query_and_response_make_one_observation() -> None:
    t = DnsTracker()
    q = query("www.example.com")
    assert feed_query(t, 100.0, q) == []
    [o] = feed_response(t, 100.02, response(q, ("www.example.com.", "A", "192.0.2.1")))
    assert (o.kind, o.transport, o.src, o.sport, o.dst, o.dport) == (
        "dns",
        "udp",
        "192.0.2.10",
        40000,
        "198.51.100.53",
        53,
    )
    assert (o.ts, o.qname, o.qtype, o.answers, o.resolved, o.rcode, o.ech_config) == (
        100.02,
        "www.example.com",
        "A",
        ("192.0.2.1",),
        ("192.0.2.1",),
        "NOERROR",
        False,
    )
    assert t.pending == 0 and t.flush() == []
    assert t.stats["paired"] == 1 and t.stats["queries"] == 1 and t.stats["responses"] == 1


def test_observation_json_contract() -> None:
    t = DnsTracker()
    q = query("www.example.com", "HTTPS")
    feed_query(t, 1.0, q)
    [o] = feed_response(
        t, 1.5, response(q, ("www.example.com.", "HTTPS", f'1 . ech="{ECH_CONFIG_LIST}"'))
    )
    d = o.to_dict()
    assert d["kind"] == "dns" and d["qname"] == "www.example.com" and d["qtype"] == "HTTPS"
    assert d["answers"] == [] and d["ech_config"] is True and d["rcode"] == "NOERROR"
    assert d["resolved"] == []
    assert d["sni"] is None and d["ts"] == "1970-01-01T00:00:01.500000Z"


def test_glue_reaches_the_observation_in_answers_only() -> None:
    t = DnsTracker()
    q = query("www.example.com")
    feed_query(t, 1.0, q)
    r = response(
        q,
        ("www.example.com.", "CNAME", "edge.example.net."),
        ("edge.example.net.", "A", "192.0.2.1"),
    )
    r.authority.append(dns.rrset.from_text("example.net.", 300, "IN", "NS", "ns.example.net."))
    r.additional.append(dns.rrset.from_text("ns.example.net.", 300, "IN", "A", "192.0.2.53"))
    [o] = feed_response(t, 1.1, r)
    assert o.answers == ("edge.example.net", "192.0.2.1", "192.0.2.53")
    assert o.resolved == ("edge.example.net", "192.0.2.1")
    d = o.to_dict()
    assert (d["answers"], d["resolved"]) == (list(o.answers), list(o.resolved))


def test_ipv6_and_tcp() -> None:
    t = DnsTracker()
    q = query("v6.example.com", "AAAA")
    r = response(q, ("v6.example.com.", "AAAA", "2001:db8::99"))
    # Over TCP, probes.tcp hands over whole messages without their length prefix.
    assert t.message(1.0, CLIENT6, 50000, RESOLVER6, 53, "tcp", wire(q)) == []
    [o] = t.message(1.1, RESOLVER6, 53, CLIENT6, 50000, "tcp", wire(r))
    assert (o.transport, o.src, o.dst, o.answers, o.resolved) == (
        "tcp",
        "2001:db8::10",
        "2001:db8::53",
        ("2001:db8::99",),
        ("2001:db8::99",),
    )


def test_unanswered_query_expires_after_timeout_of_packet_time() -> None:
    t = DnsTracker(query_timeout=2.0)
    feed_query(t, 10.0, query("slow.example.com"))
    assert t.expire(11.9) == []
    [o] = t.expire(12.0)
    assert (o.ts, o.qname, o.answers, o.resolved, o.rcode) == (
        10.0,
        "slow.example.com",
        (),
        (),
        None,
    )
    assert t.stats["unanswered"] == 1 and t.pending == 0


def test_a_later_packet_expires_old_queries() -> None:
    t = DnsTracker(query_timeout=2.0)
    feed_query(t, 10.0, query("slow.example.com"))
    out = feed_query(t, 13.0, query("next.example.com", id=9), sport=40001)
    assert [o.qname for o in out] == ["slow.example.com"]


def test_flush_emits_everything_pending() -> None:
    t = DnsTracker()
    for i in range(3):
        feed_query(t, 1.0 + i, query(f"q{i}.example.com"), sport=40000 + i)
    out = t.flush()
    assert [o.qname for o in out] == ["q0.example.com", "q1.example.com", "q2.example.com"]
    assert all(o.rcode is None for o in out) and t.pending == 0


def test_retransmitted_query_gives_one_observation() -> None:
    t = DnsTracker(query_timeout=5.0)
    q = query("retry.example.com")
    feed_query(t, 0.0, q)
    feed_query(t, 5.0, q)  # glibc retries after exactly its 5 s timeout
    feed_query(t, 9.0, q)
    [o] = feed_response(t, 9.5, response(q, ("retry.example.com.", "A", "192.0.2.1")))
    assert o.ts == 9.5 and o.answers == ("192.0.2.1",)
    assert t.stats["retransmits"] == 2 and t.flush() == []


def test_retransmit_after_unanswered_emission_and_late_response() -> None:
    t = DnsTracker(query_timeout=1.0)
    q = query("late.example.com")
    feed_query(t, 0.0, q)
    [first] = t.expire(1.0)
    assert feed_query(t, 1.5, q) == []  # the same query again: nothing new
    [late] = feed_response(t, 1.6, response(q, ("late.example.com.", "A", "192.0.2.1")))
    assert first.rcode is None and late.answers == late.resolved == ("192.0.2.1",)
    assert (late.src, late.dst) == ("192.0.2.10", "198.51.100.53")
    assert t.stats["late_responses"] == 1 and t.stats["unpaired_responses"] == 0
    assert t.flush() == []


def test_response_without_query_is_turned_around() -> None:
    t = DnsTracker()
    q = query("late-start.example.com")
    [o] = feed_response(t, 3.0, response(q, ("late-start.example.com.", "A", "192.0.2.1")))
    assert (o.src, o.sport, o.dst, o.dport, o.ts) == ("192.0.2.10", 40000, "198.51.100.53", 53, 3.0)
    assert o.answers == o.resolved == ("192.0.2.1",) and t.stats["unpaired_responses"] == 1


def test_duplicate_response_is_dropped() -> None:
    t = DnsTracker()
    q = query("dup.example.com")
    r = response(q, ("dup.example.com.", "A", "192.0.2.1"))
    feed_query(t, 0.0, q)
    assert len(feed_response(t, 0.1, r)) == 1
    assert feed_response(t, 0.1, r) == []
    assert t.stats["duplicate_responses"] == 1


def test_pairing_needs_same_flow_id_and_question() -> None:
    t = DnsTracker()
    q = query("a.example.com")
    feed_query(t, 0.0, q)
    other_id = response(query("a.example.com", id=0x9999))
    other_name = response(query("b.example.com"))
    other_type = response(query("a.example.com", "AAAA"))
    for r in (other_id, other_name, other_type):
        assert len(feed_response(t, 0.1, r)) == 1  # each on its own
    assert len(feed_response(t, 0.1, response(q), dport=40001)) == 1  # other client port
    assert t.pending == 1 and t.stats["paired"] == 0
    [o] = feed_response(t, 0.2, response(query("A.EXAMPLE.com")))  # 0x20 case echoed
    assert o.qname == "a.example.com" and t.stats["paired"] == 1


def test_a_and_aaaa_with_the_same_id_pair_separately() -> None:
    t = DnsTracker()
    qa, qaaaa = query("dual.example.com", "A"), query("dual.example.com", "AAAA")
    feed_query(t, 0.0, qa)
    feed_query(t, 0.0, qaaaa)
    [o6] = feed_response(t, 0.1, response(qaaaa, ("dual.example.com.", "AAAA", "2001:db8::1")))
    [o4] = feed_response(t, 0.2, response(qa, ("dual.example.com.", "A", "192.0.2.1")))
    assert (o4.qtype, o4.answers, o6.qtype, o6.answers) == (
        "A",
        ("192.0.2.1",),
        "AAAA",
        ("2001:db8::1",),
    )


def test_response_without_question_pairs_by_flow_and_id() -> None:
    t = DnsTracker()
    feed_query(t, 0.0, query("formerr.example.com"))
    formerr = _header(0x1234, 0x8181, 0, 0)
    [o] = t.message(0.1, RESOLVER, 53, CLIENT, 40000, "udp", formerr)
    assert (o.qname, o.rcode) == ("formerr.example.com", "FORMERR")
    # With a record but still no question: its address is an answer, nothing is resolved.
    feed_query(t, 1.0, query("formerr.example.com", id=0x4321))
    formerr = _header(0x4321, 0x8181, 0, 0, 0, 1) + _rr(b"\x00", 1, bytes([192, 0, 2, 9]))
    [o] = t.message(1.1, RESOLVER, 53, CLIENT, 40000, "udp", formerr)
    assert (o.qname, o.rcode, o.answers, o.resolved) == (
        "formerr.example.com",
        "FORMERR",
        ("192.0.2.9",),
        (),
    )


def test_inverse_query_pair() -> None:
    t = DnsTracker()
    assert t.message(0.0, CLIENT, 18427, RESOLVER, 53, "udp", IQUERY) == []
    [o] = t.message(0.005, RESOLVER, 53, CLIENT, 18427, "udp", IQUERY_RESPONSE)
    assert (o.qname, o.qtype, o.rcode) == (None, None, "NOTIMP")


def test_pending_table_is_bounded() -> None:
    t = DnsTracker(max_pending=3)
    out = []
    for i in range(5):
        out += feed_query(t, float(i), query(f"q{i}.example.com"), sport=40000 + i)
    assert t.pending == 3 and t.stats["evicted"] == 2
    assert [o.qname for o in out] == ["q0.example.com", "q1.example.com"]
    assert all(o.rcode is None for o in out)
    # The evicted query's response still gets reported, on its own.
    [late] = feed_response(t, 5.0, response(query("q0.example.com")))
    assert late.rcode == "NOERROR" and t.stats["late_responses"] == 1


def test_malformed_is_counted_never_raised() -> None:
    t = DnsTracker()
    assert t.message(0.0, CLIENT, 40000, RESOLVER, 53, "udp", b"\x01\x02") == []
    assert t.message(0.0, CLIENT, 40000, RESOLVER, 53, "tcp", b"\x00\x02\x01\x02") == []
    assert t.stats["malformed"] == 2


def test_mdns_and_llmnr_are_ignored() -> None:
    t = DnsTracker()
    raw = wire(query("printer.local"))
    assert t.message(0.0, CLIENT, 5353, RESOLVER, 5353, "udp", raw) == []
    assert t.message(0.0, CLIENT, 40000, RESOLVER, 5355, "udp", raw) == []
    assert t.stats["ignored"] == 2 and t.pending == 0


def test_bad_transport_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="transport"):
        DnsTracker().message(0.0, CLIENT, 1, RESOLVER, 53, "sctp", b"")


def test_ech_config_reaches_the_observation() -> None:
    t = DnsTracker()
    q = query("crypto.example.com", "HTTPS")
    feed_query(t, 0.0, q)
    r = response(q, ("crypto.example.com.", "HTTPS", f'1 . ech="{ECH_CONFIG_LIST}"'))
    [o] = feed_response(t, 0.1, r)
    assert o.ech_config and o.qtype == "HTTPS"


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[float, bool, str, int, bytes]]:
    pool = [
        *REAL_MESSAGES,
        wire(query("www.example.com")),
        wire(response(query("www.example.com"), ("www.example.com.", "A", "192.0.2.1"))),
    ]
    events = []
    ts = 0.0
    for _ in range(draw(st.integers(0, 40))):
        ts += draw(st.floats(0, 3, allow_nan=False))
        raw = draw(st.one_of(st.sampled_from(pool), mutated(), st.binary(max_size=40)))
        transport = draw(st.sampled_from(["udp", "tcp"]))
        events.append((ts, draw(st.booleans()), transport, draw(st.integers(40000, 40003)), raw))
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic())
def test_tracker_never_raises_and_stays_bounded(
    events: list[tuple[float, bool, str, int, bytes]],
) -> None:
    t = DnsTracker(query_timeout=2.0, max_pending=4)
    seen = 0
    for ts, outbound, transport, port, raw in events:
        if outbound:
            out = t.message(ts, CLIENT, port, RESOLVER, 53, transport, raw)
        else:
            out = t.message(ts, RESOLVER, 53, CLIENT, port, transport, raw)
        seen += len(out)
        assert all(o.kind == "dns" for o in out)
        assert t.pending <= 4
        assert len(t._done) <= 4
    seen += len(t.flush())
    assert t.pending == 0
    s = t.stats
    assert (
        seen
        == s["paired"]
        + s["unpaired_responses"]
        + s["late_responses"]
        + s["unanswered"]
        + (s["evicted"])
    )


# --- real captures against tshark --------------------------------------------------------------

DNS_CAPTURES = [
    "ndpi__dns.pcap",
    "ndpi__dns_ambiguous_names.pcap",
    "ndpi__bad-dns-traffic.pcap",
    "ndpi__dns_fragmented.pcap",
    "ndpi__dns_invert_query.pcapng",
    "ndpi__punycode-idn.pcap",
    "ndpi__android.pcap",
    "ndpi__iphone.pcap",
    "ndpi__KakaoTalk_chat.pcap",
    "ndpi__avast_securedns.pcapng",
    "ndpi__zoom.pcap",
    "ndpi__vxlan.pcap",
    "ndpi__6in4tunnel.pcap",
    "ndpi__tls_heur__vmess-tcp-tls.pcapng",
]


def capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"needs the shared capture {path} (nDPI test captures, see SOURCES.tsv)")
    return path


def _scapy_packets(path: Path) -> Iterator[Any]:
    """Every packet, IPv4 and IPv6 fragments put back together as scapy does."""
    # scapy.all, not single layers: it binds what the captures need (PPPoE in 802.1Q for
    # ndpi__dns.pcap, VXLAN on UDP 4789, Linux cooked capture) so the inner packets are read.
    from scapy.all import IPv6, IPv6ExtHdrFragment, defragment, defragment6, rdpcap

    pieces: dict[tuple[str, str, int], list[Any]] = {}
    for p in defragment(rdpcap(str(path))):
        if IPv6ExtHdrFragment in p:
            key = (p[IPv6].src, p[IPv6].dst, p[IPv6ExtHdrFragment].id)
            pieces.setdefault(key, []).append(p)
            if p[IPv6ExtHdrFragment].m == 0:
                yield defragment6(pieces.pop(key))
            continue
        yield p


@cache
def ours(name: str) -> tuple[tuple[Any, ...], dict[str, int]]:
    """Our observations of a capture.

    The innermost IP + UDP/TCP of each packet (so VXLAN and 6in4 are read inside); UDP port 53,
    or plain DNS that looks_like_dns on another port (DNSCrypt's certificate query on 443);
    TCP port 53 split at its length prefixes. ICMP errors quoting a DNS packet are not fed:
    scapy reads the quoted headers as IPerror/UDPerror, which are not the types matched here.
    """
    from scapy.all import IP, TCP, UDP, IPv6, Padding

    t = DnsTracker()
    out: list[Any] = []
    streams: dict[tuple[bytes, int, bytes, int], bytearray] = {}
    for p in _scapy_packets(capture(name)):
        ip = l4 = None
        layer = p
        while layer is not None and layer.name != "NoPayload":
            if type(layer) in (IP, IPv6):
                ip = layer
            elif type(layer) in (UDP, TCP) and ip is not None:
                l4 = (ip, layer)
            layer = layer.payload if layer.payload else None
        if l4 is None:
            continue
        ip, seg = l4
        family = socket.AF_INET if type(ip) is IP else socket.AF_INET6
        src, dst = socket.inet_pton(family, ip.src), socket.inet_pton(family, ip.dst)
        payload = bytes(seg.payload)
        padding = seg.getlayer(Padding)
        if padding is not None:  # Ethernet trailer, not TCP/UDP payload
            payload = payload[: len(payload) - len(bytes(padding))]
        ts = float(p.time)
        if type(seg) is UDP:
            if 53 in (seg.sport, seg.dport) or looks_like_dns(payload):
                out += t.message(ts, src, seg.sport, dst, seg.dport, "udp", payload)
        elif 53 in (seg.sport, seg.dport):
            # probes.tcp's job in the product; here the captures' DNS over TCP is in order.
            buf = streams.setdefault((src, seg.sport, dst, seg.dport), bytearray())
            buf += payload
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                length = int.from_bytes(buf[:2], "big")
                message = bytes(buf[2 : 2 + length])
                del buf[: 2 + length]
                out += t.message(ts, src, seg.sport, dst, seg.dport, "tcp", message)
    out += t.flush()
    return tuple(out), dict(t.stats)


def _tshark_fields(path: Path) -> list[list[str]]:
    # The brief's ground truth, with an aggregator no name in these captures contains.
    cmd = [
        "tshark", "-n", "-r", str(path), "-Y", "dns && !mdns && !llmnr", "-T", "fields",
        "-E", "aggregator=\x1f", "-e", "dns.flags.response", "-e", "dns.qry.name",
        "-e", "dns.a", "-e", "dns.aaaa", "-e", "dns.cname",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout
    return [line.split("\t") for line in out.decode("utf-8", "replace").splitlines()]


_Response = tuple[str | None, tuple[str, ...], tuple[str, ...]]


@dataclass
class Truth:
    qnames: set[str] = field(default_factory=set)
    flat_answers: set[str] = field(default_factory=set)
    """Every dns.a/dns.aaaa/dns.cname, whichever section it is in (the brief's fields)."""
    not_answers: set[str] = field(default_factory=set)
    """Values tshark shows in messages that have no ``answers``: queries, and responses to
    opcodes other than QUERY."""
    responses: collections.Counter[_Response] = field(default_factory=collections.Counter)
    """(qname, answers, resolved) for each response tshark dissects: ``answers`` is every
    dns.a/dns.aaaa/dns.cname of the message in wire order, first occurrence kept (opcode QUERY
    only); ``resolved`` the answer-section ones whose owner is on the question name's chain."""


def _tshark_name(text: str) -> str:
    return "." if text == "<Root>" else text.lower()


_VALUE_FIELDS = frozenset({"dns.a", "dns.aaaa", "dns.cname"})


def _show(element: ET.Element, name: str) -> str | None:
    """The ``show`` of the first field called ``name`` under ``element``."""
    return next((f.get("show", "") for f in element.iter("field") if f.get("name") == name), None)


def _values(element: ET.Element) -> list[str]:
    """dns.a/dns.aaaa/dns.cname under ``element``, in document (wire) order."""
    return [
        _tshark_name(f.get("show", ""))
        for f in element.iter("field")
        if f.get("name") in _VALUE_FIELDS
    ]


def _tshark_chain(qname: str | None, proto: ET.Element) -> tuple[str, ...]:
    """Answer-section values on the chain from ``qname``, built from tshark's dissection.

    Owners (dns.resp.name) are followed through CNAME targets (dns.cname) and HTTPS/SVCB
    AliasMode targets (dns.svcb.svcpriority 0, dns.svcb.targetname), as RFC 1034 section 3.6.2
    and RFC 9460 section 2.4.2 describe.
    """
    if qname is None:
        return ()
    records: list[tuple[str, str | None, str | None]] = []  # owner, value, name it leads to
    for section in proto.findall("field"):
        if section.get("show") != "Answers":
            continue
        for rr in section.findall("field"):
            owner = _tshark_name(_show(rr, "dns.resp.name") or "")
            values = _values(rr)
            value = values[0] if values else None
            leads = _show(rr, "dns.cname")
            if _show(rr, "dns.svcb.svcpriority") == "0":
                leads = _show(rr, "dns.svcb.targetname")
            records.append((owner, value, None if leads is None else _tshark_name(leads)))
    chain = {qname}
    grew = True
    while grew:
        grew = False
        for owner, _value, leads in records:
            if owner in chain and leads is not None and leads not in chain:
                chain.add(leads)
                grew = True
    return tuple(value for owner, value, _ in records if owner in chain and value is not None)


@cache
def truth(name: str) -> Truth:
    path = capture(name)
    t = Truth()
    for row in _tshark_fields(path):
        t.qnames.update(_tshark_name(q) for q in row[1].split("\x1f") if q)
        for column in row[2:]:
            t.flat_answers.update(_tshark_name(v) for v in column.split("\x1f") if v)
    # Per message, from the dissection tree. ICMP errors quote DNS packets that we do not read.
    cmd = [
        "tshark", "-n", "-r", str(path), "-Y", "dns && !mdns && !llmnr && !icmp && !icmpv6",
        "-T", "pdml",
    ]  # fmt: skip
    pdml = subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout
    for packet in ET.fromstring(pdml).iter("packet"):
        for proto in (p for p in packet.iter("proto") if p.get("name") == "dns"):
            values = _values(proto)
            qname = _show(proto, "dns.qry.name")
            qname = None if qname is None else _tshark_name(qname)
            if _show(proto, "dns.flags.response") != "1" or _show(proto, "dns.flags.opcode") != "0":
                t.not_answers.update(values)
                if _show(proto, "dns.flags.response") == "1":
                    t.responses[(qname, (), ())] += 1
                continue
            t.responses[(qname, tuple(dict.fromkeys(values)), _tshark_chain(qname, proto))] += 1
    return t


@pytest.mark.tshark
@pytest.mark.parametrize("name", DNS_CAPTURES)
def test_capture_questions_match_tshark(name: str) -> None:
    observed, _stats = ours(name)
    qnames = {o.qname for o in observed if o.qname is not None}
    t = truth(name)
    assert t.qnames - qnames == set(), "questions tshark shows that we miss"
    assert qnames - t.qnames == set(), "questions tshark does not show"


@pytest.mark.tshark
@pytest.mark.parametrize("name", DNS_CAPTURES)
def test_capture_answers_match_tshark(name: str) -> None:
    observed, _stats = ours(name)
    answers = {a for o in observed for a in o.answers}
    resolved = {a for o in observed for a in o.resolved}
    t = truth(name)
    # answers: every dns.a/dns.aaaa/dns.cname of every response, glue included.
    assert answers == {a for _qname, values, _chain in t.responses for a in values}
    # resolved: only the answer-section values on the question name's chain.
    assert resolved == {a for _qname, _values, chain in t.responses for a in chain}
    # Every value tshark's fields show is ours, except in queries and non-QUERY opcodes.
    assert t.flat_answers - answers <= t.not_answers


@pytest.mark.tshark
@pytest.mark.parametrize("name", DNS_CAPTURES)
def test_capture_responses_pair_as_tshark_shows(name: str) -> None:
    """Every response tshark dissects is in exactly one observation, with the same values.

    ``answers`` equal to the response's dns.a/dns.aaaa/dns.cname in wire order (every section)
    and ``resolved`` to its answer-section chain, response by response.
    """
    observed, stats = ours(name)
    answered = collections.Counter(
        (o.qname, o.answers, o.resolved) for o in observed if o.rcode is not None
    )
    assert answered == truth(name).responses
    assert stats["malformed"] == 0 and stats["duplicate_responses"] == 0


def test_dns_capture_observations_in_detail() -> None:
    observed, stats = ours("ndpi__dns.pcap")
    by_name = {o.qname: o for o in observed}
    late_start = by_name["www.l.google.com"]  # frame 1: a response whose query was not captured
    assert (late_start.src, late_start.dport, late_start.qtype) == ("192.168.170.8", 53, "AAAA")
    assert late_start.dst == "192.168.170.20" and late_start.sport == 32795
    whatsapp = by_name["e7.whatsapp.net"]
    assert whatsapp.answers[0] == "169.45.219.235" and len(whatsapp.answers) == 8
    assert whatsapp.resolved == whatsapp.answers  # answer section only, all for the question
    assert stats["unpaired_responses"] == 1 and stats["paired"] == 2


def test_fragmented_capture_tcp_and_retransmission() -> None:
    observed, stats = ours("ndpi__dns_fragmented.pcap")
    tcp = [o for o in observed if o.transport == "tcp"]
    assert [(o.qname, o.qtype, o.rcode) for o in tcp] == [("weberlab.de", "DNSKEY", "NOERROR")] * 2
    # Frames 36 and 37: the same query 5.0 s apart (glibc's retry), one observation.
    assert stats["retransmits"] == 1 and stats["unanswered"] == 0
    pa = next(o for o in observed if o.qname == "pa.weberlab.de")  # reassembled from fragments
    assert pa.resolved == ("2001:470:1f0b:1024::2",)
    # tshark's dns.aaaa/dns.a: the answer, then the glue of ns1/ns2.weberdns.de (additional).
    assert pa.answers == (
        "2001:470:1f0b:1024::2",
        "2001:470:765b::a25:53",
        "2001:470:1f0b:16b0::a26:53",
        "193.24.227.238",
        "194.247.5.14",
    )
