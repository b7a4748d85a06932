"""Tests for probes.packet: link types, IP, tunnels, fragments, malformed input, real captures.

Frames are built with scapy and the decoder's view is compared with scapy's own dissection of
the same bytes. Every scapy layer gets explicit addresses, so that scapy never resolves a MAC
address or a route (which could put an ARP request on the wire).
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header, GTPEchoRequest, GTPHeader, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import (
    ARP,
    GRE,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
)
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import NoPayload, Padding, Raw
from scapy.packet import Packet as ScapyPacket

from probes.capfile import open_capture
from probes.errors import MalformedPacket
from probes.packet import (
    DLT_RAW_12,
    DLT_RAW_14,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    MAX_ENCAPSULATION,
    Packet,
    PacketDecoder,
)

CAPTURES = Path(__file__).parents[2].parent / "shared" / "captures"
REAL = sorted(CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else []

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.7"}
V4B = {"src": "10.1.2.3", "dst": "10.9.8.7"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:ffff::443"}
V6B = {"src": "fd00::a", "dst": "fd00::b"}
TCP_SEG = TCP(sport=40001, dport=8443, seq=0xDEADBEEF, flags="PA") / Raw(b"client hello bytes")
UDP_DGRAM = UDP(sport=40002, dport=8853) / Raw(b"a quic initial, say")
TS = 1_700_000_000.25


def eth(payload: ScapyPacket) -> ScapyPacket:
    return Ether(**MAC) / payload


def scapy_view(pkt: ScapyPacket, ts: float = TS) -> Packet:
    """The innermost TCP/UDP packet as scapy dissects it."""
    ip: ScapyPacket | None = None
    found: tuple[ScapyPacket, ScapyPacket] | None = None
    layer = pkt
    while not isinstance(layer, NoPayload):
        if isinstance(layer, IP | IPv6):
            ip = layer
        if isinstance(layer, TCP | UDP):
            assert ip is not None
            found = (ip, layer)
        layer = layer.payload
    assert found is not None
    ip, l4 = found
    family = socket.AF_INET if isinstance(ip, IP) else socket.AF_INET6
    tcp = isinstance(l4, TCP)
    payload = l4.payload
    if isinstance(payload, Padding):
        payload = NoPayload()
    elif payload.getlayer(Padding) is not None:
        payload = payload.copy()
        payload.getlayer(Padding).underlayer.remove_payload()
    return Packet(
        ts=ts,
        src=socket.inet_pton(family, ip.src),
        dst=socket.inet_pton(family, ip.dst),
        proto=6 if tcp else 17,
        sport=l4.sport,
        dport=l4.dport,
        seq=l4.seq if tcp else 0,
        flags=int(l4.flags) & 0xFF if tcp else 0,
        payload=bytes(payload),
    )


def decode(linktype: int, frame: bytes, decoder: PacketDecoder | None = None) -> Packet | None:
    return (decoder or PacketDecoder()).decode(TS, linktype, frame)


def null_header(af: int, order: str) -> bytes:
    return struct.pack(order + "I", af)


# (id, linktype, wire bytes, scapy packet whose dissection is the truth)
def _cases() -> list[tuple[str, int, bytes, ScapyPacket]]:
    cases: list[tuple[str, int, bytes, ScapyPacket]] = []

    def add(name: str, linktype: int, pkt: ScapyPacket) -> None:
        wire = bytes(pkt)
        cases.append((name, linktype, wire, pkt.__class__(wire)))

    def add_raw(name: str, linktype: int, prefix: bytes, ip_pkt: ScapyPacket) -> None:
        wire = bytes(ip_pkt)
        cases.append((name, linktype, prefix + wire, ip_pkt.__class__(wire)))

    for l4name, l4 in (("tcp", TCP_SEG), ("udp", UDP_DGRAM)):
        v4 = IP(**V4) / l4
        v6 = IPv6(**V6) / l4
        add(f"eth-v4-{l4name}", LINKTYPE_ETHERNET, eth(v4))
        add(f"eth-v6-{l4name}", LINKTYPE_ETHERNET, eth(v6))
        add(f"sll-v4-{l4name}", LINKTYPE_LINUX_SLL, CookedLinux(proto=0x0800) / v4)
        add(f"sll-v6-{l4name}", LINKTYPE_LINUX_SLL, CookedLinux(proto=0x86DD) / v6)
        add(f"sll2-v4-{l4name}", LINKTYPE_LINUX_SLL2, CookedLinuxV2(proto=0x0800) / v4)
        add(f"sll2-v6-{l4name}", LINKTYPE_LINUX_SLL2, CookedLinuxV2(proto=0x86DD) / v6)
        for lt in (LINKTYPE_RAW, DLT_RAW_12, DLT_RAW_14):
            add(f"raw{lt}-v4-{l4name}", lt, v4)
            add(f"raw{lt}-v6-{l4name}", lt, v6)
        add(f"ipv4-{l4name}", LINKTYPE_IPV4, v4)
        add(f"ipv6-{l4name}", LINKTYPE_IPV6, v6)
        for order in ("<", ">"):
            add_raw(f"null{order}-v4-{l4name}", LINKTYPE_NULL, null_header(2, order), v4)
            for af in (24, 28, 30):
                add_raw(f"null{order}{af}-v6-{l4name}", LINKTYPE_NULL, null_header(af, order), v6)
        add_raw(f"loop-v4-{l4name}", LINKTYPE_LOOP, null_header(2, ">"), v4)
        add_raw(f"loop-v6-{l4name}", LINKTYPE_LOOP, null_header(30, ">"), v6)

        add(f"vlan-{l4name}", 1, eth(Dot1Q(vlan=10) / v4))
        add(f"qinq-{l4name}", 1, eth(Dot1AD(vlan=100) / Dot1Q(vlan=10) / v6))
        # scapy does not dissect the legacy 0x9100 outer tag: the truth is the IP packet.
        wire = bytes(eth(Dot1Q(vlan=1, type=0x9100) / Dot1Q(vlan=2) / v4))
        cases.append((f"qinq-9100-{l4name}", 1, wire, IP(bytes(v4))))
        add(f"vlan-x3-{l4name}", 1, eth(Dot1AD(vlan=1) / Dot1AD(vlan=2) / Dot1Q(vlan=3) / v4))
        add(f"sll-vlan-{l4name}", LINKTYPE_LINUX_SLL, CookedLinux(proto=0x8100) / Dot1Q() / v4)
        add(f"mpls-{l4name}", 1, eth(MPLS(label=16, s=0) / MPLS(label=17, s=1) / v4))
        add(f"mpls-v6-{l4name}", 1, eth(MPLS(label=16, s=1) / v6))
        add(f"pppoe-v4-{l4name}", 1, eth(PPPoE(sessionid=7) / PPP(proto=0x0021) / v4))
        add(f"pppoe-v6-{l4name}", 1, eth(PPPoE(sessionid=7) / PPP(proto=0x0057) / v6))

        opts = [IPOption_NOP(), IPOption_RR(routers=["192.0.2.9"])]
        add(f"v4-options-{l4name}", 1, eth(IP(options=opts, **V4) / l4))
        nh = 6 if l4name == "tcp" else 17
        add(
            f"v6-ext-{l4name}",
            1,
            eth(
                IPv6(**V6)
                / IPv6ExtHdrHopByHop()
                / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
                / IPv6ExtHdrDestOpt()
                / l4
            ),
        )
        # AH length counts 32-bit words minus 2 (RFC 4302 section 2.2): 24 bytes -> 4.
        # scapy leaves what follows AH undissected: the truth is the packet without it.
        ah = AH(nh=nh, payloadlen=4, spi=1, icv=b"\0" * 12)
        wire = bytes(eth(IPv6(**V6) / ah / l4))
        cases.append((f"v6-ah-{l4name}", 1, wire, IPv6(bytes(IPv6(**V6) / l4))))
        wire = bytes(eth(IP(proto=51, **V4) / ah / l4))
        cases.append((f"v4-ah-{l4name}", 1, wire, IP(bytes(IP(**V4) / l4))))
        add(f"v6-atomic-fragment-{l4name}", 1, eth(IPv6(**V6) / IPv6ExtHdrFragment(id=9) / l4))

        # Tunnels: the innermost packet is the one returned.
        add(f"6in4-{l4name}", 1, eth(IP(**V4B) / IPv6(**V6) / l4))
        add(f"4in4-{l4name}", 1, eth(IP(**V4B) / IP(**V4) / l4))
        add(f"4in6-{l4name}", 1, eth(IPv6(**V6B) / IP(**V4) / l4))
        add(f"6in6-{l4name}", 1, eth(IPv6(**V6B) / IPv6(**V6) / l4))
        add(f"gre-v4-{l4name}", 1, eth(IP(**V4B) / GRE() / IP(**V4) / l4))
        add(f"gre-v6-{l4name}", 1, eth(IPv6(**V6B) / GRE(proto=0x86DD) / IPv6(**V6) / l4))
        gre_all = GRE(chksum_present=1, key_present=1, key=99, seqnum_present=1, sequence_number=5)
        add(f"gre-key-seq-csum-{l4name}", 1, eth(IP(**V4B) / gre_all / IP(**V4) / l4))
        add(
            f"gre-teb-{l4name}",
            1,
            eth(IP(**V4B) / GRE(proto=0x6558, key_present=1, key=1) / eth(IP(**V4) / l4)),
        )
        add(
            f"vxlan-{l4name}",
            1,
            eth(IP(**V4B) / UDP(sport=51000, dport=4789) / VXLAN(vni=42) / eth(IPv6(**V6) / l4)),
        )
        add(
            f"geneve-{l4name}",
            1,
            eth(
                IPv6(**V6B)
                / UDP(sport=51000, dport=6081)
                / GENEVE(proto=0x6558, vni=7)
                / eth(IP(**V4) / l4)
            ),
        )
        gtp = IP(**V4B) / UDP(sport=2152, dport=2152)
        add(f"gtpu-{l4name}", 1, eth(gtp / GTP_U_Header(teid=5) / IP(**V4) / l4))
        add(f"gtpu-seq-{l4name}", 1, eth(gtp / GTP_U_Header(teid=5, S=1, seq=7) / IPv6(**V6) / l4))
        add(
            f"gtpu-ext-{l4name}",
            1,
            eth(
                gtp
                / GTP_U_Header(teid=5, E=1, next_ex=0x85)
                / GTPPDUSessionContainer(QFI=9)
                / IP(**V4)
                / l4
            ),
        )
        add(
            f"vxlan-in-gre-over-sll2-{l4name}",
            LINKTYPE_LINUX_SLL2,
            CookedLinuxV2(proto=0x0800)
            / IP(**V4B)
            / GRE()
            / IP(src="10.0.0.1", dst="10.0.0.2")
            / UDP(sport=1, dport=4789)
            / VXLAN()
            / eth(Dot1Q(vlan=5) / IPv6(**V6) / l4),
        )
    # GTP signalling is not a tunnelled packet: the UDP datagram itself is returned.
    add(
        "gtp-echo", 1, eth(IP(**V4B) / UDP(sport=2152, dport=2152) / GTPHeader() / GTPEchoRequest())
    )
    return cases


CASES = _cases()


@pytest.mark.parametrize(
    ("linktype", "wire", "truth"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decodes_like_scapy(linktype: int, wire: bytes, truth: ScapyPacket) -> None:
    decoder = PacketDecoder()
    assert decoder.decode(TS, linktype, wire) == scapy_view(truth)


@pytest.mark.parametrize(
    ("linktype", "wire", "truth"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_truncated_prefix(linktype: int, wire: bytes, truth: ScapyPacket) -> None:
    # A capture cut short by the snapshot length: headers cut -> MalformedPacket; payload cut
    # -> the packet with the payload that was captured.
    full = scapy_view(truth)
    for cut in range(len(wire)):
        try:
            got = decode(linktype, wire[:cut])
        except MalformedPacket:
            continue
        if got is None:
            continue
        assert full.payload.startswith(got.payload), cut
        got.payload = full.payload
        assert got == full, cut


def test_trailing_bytes_are_ignored() -> None:
    # Ethernet padding and trailers beyond the IP total length are not payload.
    pkt = eth(IP(**V4) / UDP(sport=1, dport=2) / Raw(b"ab")) / Padding(b"\0" * 20 + b"FCS!")
    got = decode(1, bytes(pkt))
    assert got is not None
    assert got.payload == b"ab"
    pkt6 = eth(IPv6(**V6) / TCP(sport=1, dport=2) / Raw(b"xyz")) / Padding(b"\xff" * 9)
    got6 = decode(1, bytes(pkt6))
    assert got6 is not None
    assert got6.payload == b"xyz"


def test_tso_total_length_zero_uses_the_frame() -> None:
    payload = b"s" * 3000  # bigger than any Ethernet MTU: a TSO super-segment
    got = decode(1, bytes(eth(IP(len=0, **V4) / TCP(sport=1, dport=2) / Raw(payload))))
    assert got is not None
    assert got.payload == payload


def test_ipv6_payload_length_zero_uses_the_frame() -> None:
    payload = b"j" * 2000
    got = decode(1, bytes(eth(IPv6(plen=0, **V6) / UDP(sport=1, dport=2, len=0) / Raw(payload))))
    assert got is not None
    assert got.payload == payload


def test_ip_total_length_beyond_capture_uses_what_there_is() -> None:
    wire = bytes(eth(IP(**V4) / TCP(sport=1, dport=2) / Raw(b"q" * 100)))[:-40]
    got = decode(1, wire)
    assert got is not None
    assert got.payload == b"q" * 60


@pytest.mark.parametrize(
    ("length", "expected"), [(8 + 3, b"abc"), (8 + 50, b"abcdefgh"), (0, b"abcdefgh")]
)
def test_udp_length(length: int, expected: bytes) -> None:
    got = decode(1, bytes(eth(IP(**V4) / UDP(sport=1, dport=2, len=length) / Raw(b"abcdefgh"))))
    assert got is not None
    assert got.payload == expected


def test_checksums_are_not_checked() -> None:
    wire = bytes(eth(IP(chksum=0x1234, **V4) / TCP(sport=1, dport=2, chksum=0) / Raw(b"x")))
    assert decode(1, wire) is not None


@pytest.mark.parametrize(
    ("name", "linktype", "wire"),
    [
        ("ethernet short", 1, b"\0" * 13),
        ("sll short", 113, b"\0" * 15),
        ("sll2 short", 276, b"\0" * 19),
        ("null short", 0, b"\2\0\0"),
        ("raw empty", 101, b""),
        ("raw version 5", 101, b"\x50" + b"\0" * 40),
        ("ipv4 linktype with v6", LINKTYPE_IPV4, bytes(IPv6(**V6) / UDP_DGRAM)),
        ("ipv6 linktype with v4", LINKTYPE_IPV6, bytes(IP(**V4) / UDP_DGRAM) + b"\0" * 20),
        ("ihl 4", 1, bytes(eth(IP(ihl=4, **V4) / UDP_DGRAM))),
        ("ihl beyond packet", 1, bytes(eth(IP(ihl=15, **V4) / UDP(sport=1, dport=2)))),
        ("total length < ihl", 1, bytes(eth(IP(len=12, **V4) / UDP_DGRAM))),
        ("tcp data offset 4", 1, bytes(eth(IP(**V4) / TCP(dataofs=4, sport=1, dport=2)))),
        ("tcp data offset beyond", 1, bytes(eth(IP(**V4) / TCP(dataofs=15, sport=1, dport=2)))),
        ("tcp header cut", 1, bytes(eth(IP(**V4) / TCP(sport=1, dport=2)))[:-1]),
        ("udp length 5", 1, bytes(eth(IP(**V4) / UDP(sport=1, dport=2, len=5)))),
        (
            "v6 ext header beyond",
            1,
            bytes(eth(IPv6(**V6) / IPv6ExtHdrDestOpt(len=200) / UDP_DGRAM)),
        ),
        ("gre cut", 1, bytes(eth(IP(**V4) / GRE(key_present=1, key=1)))[:-2]),
        ("vxlan cut", 1, bytes(eth(IP(**V4) / UDP(sport=1, dport=4789) / Raw(b"\x08\0\0")))),
        (
            "geneve options beyond",
            1,
            bytes(eth(IP(**V4) / UDP(sport=1, dport=6081) / GENEVE(optionlen=9))),
        ),
        ("gtp cut", 1, bytes(eth(IP(**V4) / UDP(sport=1, dport=2152) / Raw(b"\x30\xff\x00")))),
        (
            "gtp extension beyond",
            1,
            bytes(
                eth(
                    IP(**V4)
                    / UDP(sport=1, dport=2152)
                    / GTP_U_Header(gtp_type=255, E=1, next_ex=0x85, length=8)
                    / Raw(b"\x09\x00")
                )
            ),
        ),
        (
            "gtp empty extension",
            1,
            bytes(
                eth(
                    IP(**V4)
                    / UDP(sport=1, dport=2152)
                    / GTP_U_Header(gtp_type=255, E=1, next_ex=0x85)
                    / Raw(b"\x00\x00\x00\x00")
                )
            ),
        ),
    ],
)
def test_malformed(name: str, linktype: int, wire: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode(linktype, wire)


def test_nesting_is_bounded() -> None:
    inner = IP(**V4) / TCP_SEG
    for _ in range(MAX_ENCAPSULATION):
        inner = IP(**V4B) / inner
    assert decode(LINKTYPE_RAW, bytes(inner)) == scapy_view(IP(bytes(inner)))
    with pytest.raises(MalformedPacket, match="nested encapsulations"):
        decode(LINKTYPE_RAW, bytes(IP(**V4B) / inner))


@pytest.mark.parametrize(
    ("linktype", "wire", "counter"),
    [
        (1, bytes(Ether(type=0x0806, **MAC) / ARP(psrc="192.0.2.1", pdst="192.0.2.2")), "not_ip"),
        (1, bytes(Ether(type=60, **MAC)) + b"\xaa\xaa\x03" + b"\0" * 50, "not_ip"),
        (1, bytes(eth(IP(**V4) / ICMP())), "not_tcp_udp"),
        (1, bytes(eth(IPv6(nh=50, **V6) / Raw(b"\0" * 16))), "not_tcp_udp"),
        (1, bytes(eth(IPv6(nh=59, **V6))), "not_tcp_udp"),
        (1, bytes(eth(IPv6(**V6) / IPv6ExtHdrHopByHop(nh=58) / Raw(b"\x80\0\0\0"))), "not_tcp_udp"),
        (1, bytes(eth(IP(**V4) / GRE(version=1, proto=0x880B) / Raw(b"\0" * 8))), "not_tcp_udp"),
        (1, bytes(eth(MPLS(s=1) / Raw(b"\0" * 30))), "not_ip"),
        (1, bytes(eth(PPPoE() / PPP(proto=0xC021) / Raw(b"\0" * 8))), "not_ip"),
        (113, bytes(CookedLinux(lladdrtype=824, proto=0) / Raw(b"\0" * 20)), "not_ip"),
        (276, bytes(CookedLinuxV2(lladdrtype=824, proto=0) / Raw(b"\0" * 20)), "not_ip"),
        (0, null_header(99, "<") + bytes(IP(**V4) / TCP_SEG), "not_ip"),
        (147, bytes(eth(IP(**V4) / TCP_SEG)), "unknown_linktype"),
    ],
)
def test_not_tcp_or_udp(linktype: int, wire: bytes, counter: str) -> None:
    decoder = PacketDecoder()
    assert decoder.decode(TS, linktype, wire) is None
    assert decoder.stats[counter] == 1
    assert sum(decoder.stats.values()) == 1 + decoder.stats["tunnel"]


def test_tunnels_are_counted() -> None:
    decoder = PacketDecoder()
    wire = bytes(
        eth(
            IP(**V4B) / UDP(sport=9, dport=4789) / VXLAN() / eth(IP(**V4B) / IPv6(**V6) / UDP_DGRAM)
        )
    )
    assert decoder.decode(TS, 1, wire) is not None
    assert decoder.stats["tunnel"] == 2


# -- fragments --------------------------------------------------------------------------------


def v4_fragments(
    payload_len: int = 1200, fragsize: int = 64, ident: int = 77
) -> tuple[list[bytes], Packet]:
    data = (bytes(range(256)) * 8)[:payload_len]
    whole = IP(id=ident, **V4) / UDP(sport=5353, dport=40000) / Raw(data)
    return [bytes(eth(f)) for f in fragment(whole, fragsize=fragsize)], scapy_view(IP(bytes(whole)))


def v6_fragments(
    payload_len: int = 1500, fragsize: int = 200, ident: int = 5
) -> tuple[list[bytes], Packet]:
    whole = (
        IPv6(**V6)
        / IPv6ExtHdrFragment(id=ident)
        / UDP(sport=40003, dport=443)
        / Raw((bytes(range(256)) * 8)[:payload_len])
    )
    frags = [bytes(eth(f)) for f in fragment6(whole, fragsize)]
    return frags, scapy_view(IPv6(bytes(whole)))


@pytest.mark.parametrize("make", [v4_fragments, v6_fragments], ids=["v4", "v6"])
@pytest.mark.parametrize("seed", range(8))
def test_fragments_in_any_order(make: Callable[[], tuple[list[bytes], Packet]], seed: int) -> None:
    frames, expected = make()
    random.Random(seed).shuffle(frames)
    decoder = PacketDecoder()
    results = [decoder.decode(TS, 1, f) for f in frames]
    assert results[:-1] == [None] * (len(frames) - 1)
    assert results[-1] == expected
    assert decoder.stats["fragments"] == len(frames)
    assert decoder.stats["reassembled"] == 1
    assert (decoder.pending_fragment_sets, decoder.pending_fragment_bytes) == (0, 0)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_fragments_any_permutation_with_duplicates(data: st.DataObject) -> None:
    frames, expected = data.draw(st.sampled_from([v4_fragments(300, 32), v6_fragments(700, 150)]))
    order = data.draw(st.permutations(range(len(frames))))
    dups = data.draw(st.lists(st.sampled_from(order[:-1] or order), max_size=3))
    decoder = PacketDecoder()
    sequence = [frames[i] for i in order[:-1]] + [frames[i] for i in dups] + [frames[order[-1]]]
    results = [decoder.decode(TS, 1, f) for f in sequence]
    assert results[-1] == expected
    assert results[:-1] == [None] * (len(sequence) - 1)


def test_fragmented_tunnel_is_reassembled_then_opened() -> None:
    whole = IP(id=3, **V4B) / IPv6(**V6) / UDP(sport=1, dport=2) / Raw(b"z" * 900)
    decoder = PacketDecoder()
    results = [decoder.decode(TS, 1, bytes(eth(f))) for f in fragment(whole, fragsize=256)]
    assert results[-1] == scapy_view(IP(bytes(whole)))
    assert decoder.stats["tunnel"] == 1


def test_overlapping_fragments_drop_the_datagram() -> None:
    # RFC 5722 for IPv6, and what Linux does for IPv4: never guess between two versions.
    first = IP(id=1, flags="MF", frag=0, proto=17, **V4) / Raw(
        b"\x00\x01\x00\x02\x00\x20\x00\x00" + b"a" * 16
    )
    overlap = IP(id=1, flags="MF", frag=2, proto=17, **V4) / Raw(b"b" * 16)
    last = IP(id=1, frag=3, proto=17, **V4) / Raw(b"c" * 8)
    decoder = PacketDecoder()
    assert decoder.decode(TS, 1, bytes(eth(first))) is None
    assert decoder.decode(TS, 1, bytes(eth(overlap))) is None
    assert decoder.stats["fragment_dropped"] == 1
    assert decoder.decode(TS, 1, bytes(eth(last))) is None
    assert decoder.stats["reassembled"] == 0


def test_conflicting_last_fragments_drop_the_datagram() -> None:
    a = IP(id=2, frag=4, proto=17, **V4) / Raw(b"c" * 8)
    b = IP(id=2, frag=5, proto=17, **V4) / Raw(b"c" * 8)
    decoder = PacketDecoder()
    assert decoder.decode(TS, 1, bytes(eth(a))) is None
    assert decoder.decode(TS, 1, bytes(eth(b))) is None
    assert decoder.stats["fragment_dropped"] == 1
    assert decoder.pending_fragment_sets == 0


def test_fragment_beyond_max_bytes_is_dropped() -> None:
    decoder = PacketDecoder()
    wire = bytes(eth(IP(id=9, frag=8190, proto=17, **V4) / Raw(b"x" * 100)))
    assert decoder.decode(TS, 1, wire) is None
    assert decoder.stats["fragment_dropped"] == 1
    assert decoder.pending_fragment_sets == 0


def test_fragments_time_out_by_capture_time() -> None:
    frames, _ = v4_fragments()
    decoder = PacketDecoder(fragment_timeout=30.0)
    assert decoder.decode(100.0, 1, frames[0]) is None
    assert [decoder.decode(131.0, 1, f) for f in frames[1:]] == [None] * (len(frames) - 1)
    assert decoder.stats["fragment_evicted"] == 1
    assert decoder.stats["reassembled"] == 0


def test_fragment_sets_are_bounded() -> None:
    decoder = PacketDecoder(max_fragment_sets=4)
    for ident in range(10):
        frames, _ = v4_fragments(ident=ident)
        assert decoder.decode(TS, 1, frames[0]) is None
    assert decoder.pending_fragment_sets == 4
    assert decoder.stats["fragment_evicted"] == 6
    # The newest sets survived and still complete.
    frames, expected = v4_fragments(ident=9)
    assert [decoder.decode(TS, 1, f) for f in frames[1:]][-1] == expected


def test_fragment_memory_is_bounded() -> None:
    decoder = PacketDecoder(max_fragment_memory=1000)
    for ident in range(50):
        frames, _ = v4_fragments(ident=ident)
        decoder.decode(TS, 1, frames[0])
        assert decoder.pending_fragment_bytes <= 1000
    assert decoder.stats["fragment_evicted"] > 0


@settings(max_examples=100, deadline=None)
@given(
    frags=st.lists(
        st.tuples(
            st.sampled_from([V4, V4B]),
            st.integers(0, 3),  # ident
            st.integers(0, 8191),  # offset in 8-byte units
            st.booleans(),  # more fragments
            st.integers(0, 1480),  # data length
            st.floats(0, 100),  # time
        ),
        max_size=200,
    )
)
def test_fragment_flood_stays_bounded(
    frags: list[tuple[dict[str, str], int, int, bool, int, float]],
) -> None:
    decoder = PacketDecoder(max_fragment_sets=3, max_fragment_memory=4096, fragment_timeout=10)
    for addrs, ident, offset, more, length, ts in frags:
        ip = IP(id=ident, frag=offset, flags="MF" if more else 0, proto=17, **addrs)
        try:
            decoder.decode(ts, LINKTYPE_RAW, bytes(ip / Raw(b"\x55" * length)))
        except MalformedPacket:
            pass
        assert decoder.pending_fragment_sets <= 3
        assert decoder.pending_fragment_bytes <= 4096
        held = sum(s.nbytes for s in decoder._frags.values())
        assert held == decoder.pending_fragment_bytes


# -- hypothesis: arbitrary and mutated input --------------------------------------------------

LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276]


def check(decoder: PacketDecoder, linktype: int, frame: bytes) -> None:
    try:
        got = decoder.decode(TS, linktype, frame)
    except MalformedPacket as exc:
        assert exc.__cause__ is None
        return
    if got is not None:
        assert got.proto in (6, 17)
        assert len(got.src) == len(got.dst) in (4, 16)
        assert 0 <= got.sport < 65536
        assert 0 <= got.dport < 65536
        assert isinstance(got.payload, bytes)


@settings(max_examples=1000, deadline=200)
@given(linktype=st.sampled_from([*LINKTYPES, 147]), frame=st.binary(max_size=200))
def test_fuzz_arbitrary_frames(linktype: int, frame: bytes) -> None:
    check(PacketDecoder(), linktype, frame)


@settings(max_examples=1000, deadline=200)
@given(
    case=st.sampled_from(CASES),
    edits=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 400),
)
def test_fuzz_mutated_frames(
    case: tuple[str, int, bytes, ScapyPacket], edits: list[tuple[int, int]], cut: int
) -> None:
    _, linktype, wire, _ = case
    data = bytearray(wire)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    check(PacketDecoder(), linktype, bytes(data[: cut or None]))


# -- real captures ----------------------------------------------------------------------------

TSHARK_FIELDS = [
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.flags",
    "tcp.len",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
]


def tshark_view(fields: dict[str, str], ts: float) -> Packet | None:
    """The innermost TCP/UDP packet as tshark shows it (last occurrence of each field)."""
    layers = fields["frame.protocols"].split(":")
    ips = [x for x in layers if x in ("ip", "ipv6")]
    l4 = [x for x in layers if x in ("tcp", "udp")]
    if not ips or not l4:
        return None
    v = "ip" if ips[-1] == "ip" else "ipv6"
    family = socket.AF_INET if v == "ip" else socket.AF_INET6
    src = socket.inet_pton(family, fields[f"{v}.src"])
    dst = socket.inet_pton(family, fields[f"{v}.dst"])
    if l4[-1] == "tcp":
        return Packet(
            ts,
            src,
            dst,
            6,
            int(fields["tcp.srcport"]),
            int(fields["tcp.dstport"]),
            int(fields["tcp.seq_raw"]),
            int(fields["tcp.flags"], 16) & 0xFF,
            b"\0" * int(fields["tcp.len"]),
        )
    return Packet(
        ts,
        src,
        dst,
        17,
        int(fields["udp.srcport"]),
        int(fields["udp.dstport"]),
        0,
        0,
        b"\0" * (int(fields["udp.length"]) - 8),
    )


@pytest.mark.tshark
@pytest.mark.skipif(not REAL, reason=f"real captures not found in {CAPTURES}")
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is needed for ground truth")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_capture_matches_tshark(path: Path) -> None:
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=l"]
    for field in TSHARK_FIELDS:
        cmd += ["-e", field]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    decoder = PacketDecoder()
    compared = 0
    with open_capture(path) as reader:
        for line, (ts, linktype, frame) in zip(lines, reader, strict=True):
            fields = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
            layers = fields["frame.protocols"].split(":")
            got = decoder.decode(ts, linktype, frame)
            if {"icmp", "icmpv6"} & set(layers):
                # tshark also dissects the packet quoted inside an ICMP error.
                continue
            expected = tshark_view(fields, ts)
            if got is None or expected is None:
                assert got == expected, fields
                continue
            # tshark gives the length on the wire; a snapshot length may have cut the payload.
            assert len(got.payload) <= len(expected.payload), fields
            got.payload = expected.payload
            assert got == expected, fields
            compared += 1
    assert compared > 0
