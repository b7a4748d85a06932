"""The kernel filter of probes/bpf.py: exactly the right packets pass.

One table of packets built with scapy, each with the verdict the filter must give, checked three
ways: by libpcap's own interpreter (``tcpdump -r`` on a pcap of the table, as LINKTYPE_RAW and as
Ethernet), and by the kernel (the table sent over a veth into a namespace where a
``LiveCapture`` listens with the compiled program attached).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from probes import bpf
from probes.errors import CaptureError

FLOOR = 32768
CLIENT_PORT = 40000

# A ClientHello record header (handshake, TLS 1.0 record version, length 512, ClientHello).
CH_START = bytes.fromhex("1603010200") + b"\x01\x00\x01\xfc\x03\x03" + bytes(32)
RANDOM = bytes(range(7, 250, 3)) * 5  # continuation-like bytes: no record header
QUIC_INITIAL = bytes.fromhex("c300000001") + bytes(40)  # long header, fixed bit, v1, Initial
QUIC_SHORT = bytes.fromhex("43") + bytes(40)  # short header (1-RTT)
RTP = bytes.fromhex("8060") + bytes(40)  # RTP v2: 10xxxxxx, no fixed bit
BIG = bytes(range(256)) * 160  # 40 KB: a GSO super-packet's worth
HEADERS = 20 + 20  # IPv4 and TCP headers without options; IPv6 takes 20 more, see cases()
DNS_QUERY = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")


@dataclass(frozen=True)
class Case:
    name: str
    packet: Packet
    passes: bool

    @property
    def raw(self) -> bytes:
        return bytes(self.packet)


_ids = iter(range(1, 1_000_000))


def _v4(l4: Packet, *, flags: str = "DF", **kw: object) -> Packet:
    # A unique IP id keeps every packet of the table distinct as bytes.
    return IP(src="10.200.0.1", dst="10.200.0.77", id=next(_ids), flags=flags, **kw) / l4


def _v6(l4: Packet) -> Packet:
    return IPv6(src="fd00:e6::1", dst="fd00:e6::77", fl=next(_ids)) / l4


def _tcp(sport: int, dport: int, flags: str = "A", payload: bytes = b"", **kw: object) -> Packet:
    seg = TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000, window=500, **kw)
    return seg / Raw(payload) if payload else seg


def _udp(sport: int, dport: int, payload: bytes = b"") -> Packet:
    dgram = UDP(sport=sport, dport=dport)
    return dgram / Raw(payload) if payload else dgram


def transport_cases() -> list[tuple[str, Packet, bool]]:
    """(name, TCP or UDP layer, passes): the same for IPv4 and IPv6."""
    c, s = CLIENT_PORT, 443
    opts = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("NOP", None)] * 2
    return [
        ("syn", _tcp(c, s, "S"), True),
        ("syn-ack", _tcp(s, c, "SA"), True),
        ("syn with options", _tcp(c, 8080, "S", options=opts), True),
        ("fin-ack from the server", _tcp(s, c, "FA"), True),
        ("fin-ack from a high port", _tcp(50000, c, "FA"), True),
        ("rst", _tcp(s, c, "R"), True),
        ("bare ack client to 443", _tcp(c, s), False),
        ("bare ack server to client", _tcp(s, c), False),
        ("bare ack client to 8080", _tcp(c, 8080), False),
        ("ClientHello to 443", _tcp(c, s, "PA", CH_START), True),
        ("ClientHello to port 80 from port 5000", _tcp(5000, 80, "PA", CH_START), True),
        ("ClientHello between two high ports", _tcp(50000, 40001, "PA", CH_START), True),
        ("ClientHello with TCP options", _tcp(5000, 80, "PA", CH_START, options=opts), True),
        ("ServerHello record from 443", _tcp(s, c, "PA", bytes.fromhex("160303007a02")), True),
        ("record version 03 04", _tcp(s, c, "A", bytes.fromhex("16030400")), True),
        ("record version 03 05 is not TLS", _tcp(s, c, "A", bytes.fromhex("16030500")), False),
        ("application data from 443", _tcp(s, c, "A", bytes.fromhex("1703030400") + RANDOM), False),
        ("download from 443", _tcp(s, c, "A", RANDOM), False),
        ("download from 8080", _tcp(8080, c, "A", RANDOM), False),
        ("download from 443 with options", _tcp(s, c, "A", RANDOM, options=opts), False),
        ("download from 443, PSH", _tcp(s, c, "PA", RANDOM), False),
        ("1 byte 16 from the server", _tcp(s, c, "A", b"\x16"), False),
        ("2 bytes 16 03 from the server", _tcp(s, c, "A", b"\x16\x03"), False),
        ("3 bytes 16 03 01 from the server", _tcp(s, c, "A", b"\x16\x03\x01"), True),
        ("continuation to 443", _tcp(c, s, "A", RANDOM), True),
        ("continuation to 8443", _tcp(c, 8443, "A", RANDOM), True),
        ("continuation to 853", _tcp(c, 853, "A", RANDOM), True),
        ("continuation from an ephemeral port to 8080", _tcp(c, 8080, "A", RANDOM), True),
        (
            "continuation from 65000 (another OS's range) to 8080",
            _tcp(65000, 8080, "A", RANDOM),
            True,
        ),
        ("continuation from the floor to 32767", _tcp(FLOOR, FLOOR - 1, "A", RANDOM), True),
        ("1 byte to 443", _tcp(c, s, "A", b"\x00"), True),
        ("continuation of 16 KiB exactly", _tcp(c, s, "A", BIG[: 16384 - HEADERS]), True),
        ("upload super-packet, 16 KiB + 1", _tcp(c, s, "A", BIG[: 16385 - HEADERS]), False),
        ("upload super-packet, 40 KB", _tcp(c, 8080, "A", BIG), False),
        ("ClientHello super-packet, 40 KB", _tcp(c, s, "PA", CH_START + BIG), True),
        ("FIN super-packet, 40 KB", _tcp(c, s, "FA", BIG), True),
        ("high port to high port", _tcp(c, 50000, "A", RANDOM), False),
        ("client below the floor to 8080", _tcp(FLOOR - 1, 8080, "A", RANDOM), False),
        ("server 443 to port 80", _tcp(s, 80, "A", RANDOM), False),
        ("dns over tcp, response", _tcp(53, c, "A", RANDOM), True),
        ("dns over tcp, bare ack", _tcp(c, 53), True),
        ("dns over udp, query", _udp(c, 53, DNS_QUERY), True),
        ("dns over udp, response", _udp(53, c, DNS_QUERY), True),
        ("dns over udp, empty", _udp(c, 53), True),
        ("QUIC Initial to 443", _udp(c, 443, QUIC_INITIAL), True),
        ("QUIC long header to another port", _udp(c, 7777, QUIC_INITIAL), True),
        ("QUIC long header from the server", _udp(443, c, bytes.fromhex("e1") + bytes(30)), True),
        ("QUIC short header", _udp(c, 443, QUIC_SHORT), False),
        ("QUIC short header from the server", _udp(443, c, QUIC_SHORT), False),
        ("RTP media", _udp(c, 5004, RTP), False),
        ("udp empty payload", _udp(c, 443), False),
        ("mDNS", _udp(5353, 5353, DNS_QUERY), False),
    ]


def cases() -> list[Case]:
    out = []
    for name, l4, passes in transport_cases():
        out.append(Case(f"v4 {name}", _v4(l4.copy()), passes))
        six = l4.copy()
        if "16 KiB" in name:  # the same total length needs 20 bytes less payload under IPv6
            six[Raw].load = six[Raw].load[:-20]
        out.append(Case(f"v6 {name}", _v6(six), passes))
    more = [
        Case("v4 ICMP echo", _v4(ICMP()), False),
        Case("v6 ICMPv6 echo", _v6(ICMPv6EchoRequest()), False),
        Case("v4 GRE", _v4(Raw(bytes(24)), proto=47), False),
        Case(
            "v4 with IP options, ClientHello",
            _v4(_tcp(5000, 80, "PA", CH_START), options=b"\x01\x01\x01\x00"),
            True,
        ),
        Case(
            "v4 with IP options, download",
            _v4(_tcp(443, CLIENT_PORT, "A", RANDOM), options=b"\x01\x01\x01\x00"),
            False,
        ),
        Case(
            "v4 first fragment (MF) of a download",
            _v4(_tcp(443, CLIENT_PORT, "A", RANDOM), flags="MF"),
            True,
        ),
        Case("v4 later fragment", _v4(Raw(RANDOM), flags="", frag=100, proto=6), True),
        Case(
            "v6 fragment header",
            _v6(IPv6ExtHdrFragment(id=7, m=1) / _tcp(443, 4000, "A", RANDOM)),
            True,
        ),
        Case(
            "v6 hop-by-hop then a download",
            _v6(IPv6ExtHdrHopByHop() / _tcp(443, CLIENT_PORT, "A", RANDOM)),
            True,
        ),
        # BIG TCP: a GSO super-packet above 64 KB has a length field of 0 (here a short one).
        Case("v4 total length 0, upload", _v4(_tcp(CLIENT_PORT, 443, "A", RANDOM), len=0), False),
        Case(
            "v6 payload length 0, upload",
            IPv6(src="fd00:e6::1", dst="fd00:e6::77", fl=9999, plen=0)
            / _tcp(CLIENT_PORT, 443, "A", RANDOM),
            False,
        ),
        Case(
            "v4 total length 0, ClientHello",
            _v4(_tcp(CLIENT_PORT, 443, "PA", CH_START), len=0),
            True,
        ),
        Case("v6 destination options then UDP", _v6(IPv6ExtHdrDestOpt() / _udp(1, 2, RTP)), True),
    ]
    return out + more


CASES = cases()


def test_cases_are_distinct() -> None:
    raws = [c.raw for c in CASES]
    assert len(set(raws)) == len(raws)
    assert len({c.name for c in CASES}) == len(CASES)


# -- the expression and the program ---------------------------------------------------------


def _returns(program: bpf.Program) -> set[int]:
    return {k for code, _jt, _jf, k in program.instructions if code == 0x06}


def test_expression_compiles_for_raw_and_ethernet() -> None:
    expr = bpf.filter_expression()
    for linktype in (bpf.DLT_RAW, bpf.DLT_EN10MB):
        program = bpf.compile_expression(expr, linktype)
        assert 50 < len(program.instructions) < bpf.BPF_MAXINSNS
        assert _returns(program) == {0, bpf.SNAPLEN}


def test_compiled_filter_is_the_expression_with_live_tests() -> None:
    settings = bpf.FilterSettings(ephemeral_floor=FLOOR)
    program = bpf.compile_filter(settings, ifindexes=[2, 3], loopback_ifindex=1)
    expr = bpf.filter_expression(settings)
    assert program.expression == bpf.live_expression(expr, ifindexes=[2, 3], loopback_ifindex=1)
    assert _returns(program) == {0, bpf.SNAPLEN}
    whole, continuation = bpf.filter_parts(settings)
    assert expr == f"({whole}) or ({continuation})"
    assert "tcp[2:2] = 443" not in whole
    assert "tcp[2:2] = 443" in continuation
    assert "ip[2:2] != 0 and ip[2:2] <= 16384" in continuation
    assert "ip6[4:2] != 0 and ip6[4:2] <= 16344" in continuation


def test_expression_follows_settings() -> None:
    expr = bpf.filter_expression(bpf.FilterSettings(tls_ports=(4433,), ephemeral_floor=49152))
    assert "tcp[2:2] = 4433" in expr
    assert "ip6[42:2] = 4433" in expr
    assert "tcp[2:2] = 443 " not in expr
    assert "tcp[0:2] >= 49152 and tcp[2:2] < 49152" in expr
    assert "ip6[40:2] >= 49152 and ip6[42:2] < 49152" in expr
    relaxed = bpf.filter_expression(bpf.FilterSettings(quic_fixed_bit=False))
    assert "udp[8] & 0x80 = 0x80" in relaxed
    whole, _continuation = bpf.filter_parts(bpf.FilterSettings(extra="udp port 5353"))
    assert whole.endswith(" or (udp port 5353)")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tls_ports": (0,)},
        {"tls_ports": (70000,)},
        {"dns_ports": ()},
        {"ephemeral_floor": 0},
        {"continuation_max": 0},
    ],
)
def test_settings_reject_bad_ports(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"out of range|at least one"):
        bpf.FilterSettings(**kwargs)  # type: ignore[arg-type]


def test_local_port_range(tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("1024\t65000\n")
    assert bpf.local_port_range(path) == (1024, 65000)
    path.write_text("nonsense")
    assert bpf.local_port_range(path) == bpf.DEFAULT_EPHEMERAL_RANGE
    assert bpf.local_port_range(tmp_path / "missing") == bpf.DEFAULT_EPHEMERAL_RANGE
    low, high = bpf.local_port_range()
    assert 0 < low <= high <= 65535


def test_floor_defaults_to_the_local_range() -> None:
    low, _high = bpf.local_port_range()
    assert f"tcp[0:2] >= {low} and tcp[2:2] < {low}" in bpf.filter_expression()


def test_bad_expression_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match=r"bad capture filter 'tcp port nonsense'"):
        bpf.compile_expression("tcp port nonsense")


def test_live_expression() -> None:
    assert bpf.live_expression("udp", ifindexes=[3, 1], loopback_ifindex=1) == (
        "(ifindex 1 or ifindex 3) and not (ifindex 1 and outbound) and (udp)"
    )
    assert bpf.live_expression("udp") == "(udp)"
    assert bpf.live_expression("", loopback_ifindex=1) == "not (ifindex 1 and outbound)"
    # ifindex and outbound read kernel metadata: they compile for a live socket (SKF_AD_*).
    program = bpf.compile_expression(
        bpf.live_expression(bpf.filter_expression(), ifindexes=[1, 2], loopback_ifindex=1)
    )
    skf_ad = {k for code, _jt, _jf, k in program.instructions if k >= 0xFFFFF000 and code & 7 == 0}
    assert skf_ad == {0xFFFFF000 + 4, 0xFFFFF000 + 8}  # SKF_AD_PKTTYPE, SKF_AD_IFINDEX


def test_attach_and_detach_on_a_plain_socket() -> None:
    # SO_ATTACH_FILTER works on any socket; the kernel checks the program there.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        bpf.attach(sock, bpf.compile_expression(bpf.filter_expression()))
        bpf.attach(sock, bpf.REJECT_ALL)
        sock.setsockopt(socket.SOL_SOCKET, bpf.SO_DETACH_FILTER, 0)


# -- libpcap's interpreter: tcpdump -r -------------------------------------------------------


def _tcpdump_passes(tmp_path: Path, expression: str, *, ethernet: bool) -> set[bytes]:
    source = tmp_path / ("eth.pcap" if ethernet else "raw.pcap")
    kept = tmp_path / "kept.pcap"
    eth = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0))[:12]
    frames = []
    for case in CASES:
        ethertype = b"\x86\xdd" if case.raw[0] >> 4 == 6 else b"\x08\x00"
        frames.append(eth + ethertype + case.raw if ethernet else case.raw)
    write_pcap(source, 1 if ethernet else 101, frames)
    subprocess.run(
        ["tcpdump", "-r", str(source), "-w", str(kept), expression],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return {frame[14:] if ethernet else frame for frame in read_pcap(kept)}


def write_pcap(path: Path, linktype: int, frames: list[bytes]) -> None:
    """A classic pcap file (microsecond timestamps) holding ``frames`` whole."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for i, frame in enumerate(frames):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a classic little-endian pcap file (what tcpdump -w writes here)."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    frames, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        frames.append(data[pos + 16 : pos + 16 + caplen])
        pos += 16 + caplen
    return frames


def _report(passed: set[bytes], cases: list[Case]) -> list[str]:
    wrong = []
    for case in cases:
        if (case.raw in passed) != case.passes:
            wrong.append(f"{case.name}: expected {'pass' if case.passes else 'reject'}")
    return wrong


@pytest.mark.tcpdump
@pytest.mark.parametrize("ethernet", [False, True], ids=["raw", "ethernet"])
def test_tcpdump_agrees_with_the_table(tmp_path: Path, ethernet: bool) -> None:
    expr = bpf.filter_expression(bpf.FilterSettings(ephemeral_floor=FLOOR))
    passed = _tcpdump_passes(tmp_path, expr, ethernet=ethernet)
    assert _report(passed, CASES) == []


@pytest.mark.tcpdump
def test_tcpdump_without_the_fixed_bit_passes_rtp(tmp_path: Path) -> None:
    expr = bpf.filter_expression(bpf.FilterSettings(ephemeral_floor=FLOOR, quic_fixed_bit=False))
    passed = _tcpdump_passes(tmp_path, expr, ethernet=False)
    flipped = {"v4 RTP media", "v6 RTP media"}
    expected = [Case(c.name, c.packet, c.passes or c.name in flipped) for c in CASES]
    assert _report(passed, expected) == []


# -- the kernel: the table over a veth, into a LiveCapture ---------------------------------


@pytest.mark.root
@pytest.mark.netns
def test_kernel_agrees_with_the_table() -> None:
    from probes.live import LiveCapture
    from tests.netns import unavailable, veth_pair

    if reason := unavailable():
        pytest.skip(reason)
    small = [c for c in CASES if len(c.raw) <= 1500]  # the veth's MTU; the rest: next test
    with veth_pair() as pair:
        with pair.server.ns.entered():
            assert bpf.local_port_range()[0] == FLOOR, "the namespace has another port range"
            capture = LiveCapture([pair.server.ifname])
            unfiltered = LiveCapture([pair.server.ifname], bpf="")
        try:
            # Addressed to the server's MAC; the IP destination is nobody's, so the server's
            # stack drops them quietly after the capture has seen them.
            _send(pair, [case.packet for case in small])
            raws = {c.raw for c in small}
            passed = _collect(capture, raws, want=sum(c.passes for c in small))
            everything = _collect(unfiltered, raws, want=len(small))
        finally:
            capture.close()
            unfiltered.close()
    assert everything == raws, "the veth lost packets of the table: the check below means nothing"
    assert _report(passed, small) == []


def _send(pair: object, packets: list[Packet]) -> None:
    from tests.netns import VethPair

    assert isinstance(pair, VethPair)
    with pair.client.ns.entered():
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sender:
        sender.bind((pair.client.ifname, 0))
        for packet in packets:
            sender.send(bytes(Ether(src=pair.client.mac, dst=pair.server.mac) / packet))


@pytest.mark.root
@pytest.mark.netns
def test_kernel_passes_super_packets_whole_or_not_at_all() -> None:
    # Packets over 1500 bytes, as GSO hands them to a capture: the table's big ones, sent over a
    # veth with a 65000-byte MTU.
    from probes.live import LiveCapture
    from tests.netns import unavailable, veth_pair

    if reason := unavailable():
        pytest.skip(reason)
    big = [c for c in CASES if len(c.raw) > 1500]
    assert len(big) == 10
    with veth_pair(mtu=65000) as pair:
        with pair.server.ns.entered():
            capture = LiveCapture([pair.server.ifname])
        with capture:
            _send(pair, [c.packet for c in big])
            raws = {c.raw for c in big}
            passed = _collect(capture, raws, want=sum(c.passes for c in big))
    assert _report(passed, big) == []


@pytest.mark.root
@pytest.mark.netns
def test_kernel_follows_settings() -> None:
    from probes.live import LiveCapture
    from tests.netns import unavailable, veth_pair

    if reason := unavailable():
        pytest.skip(reason)
    settings = bpf.FilterSettings(tls_ports=(4433,), ephemeral_floor=50000)
    sent = {
        "to 4433": (_v4(_tcp(1000, 4433, "A", RANDOM)), True),
        "to 443, not listed": (_v4(_tcp(1000, 443, "A", RANDOM)), False),
        "from 50001": (_v6(_tcp(50001, 8080, "A", RANDOM)), True),
        "from 40000, below this floor": (_v6(_tcp(40000, 8080, "A", RANDOM)), False),
    }
    with veth_pair() as pair:
        with pair.server.ns.entered():
            capture = LiveCapture([pair.server.ifname], settings=settings)
        with capture:
            _send(pair, [p for p, _ in sent.values()])
            raws = {bytes(p) for p, _ in sent.values()}
            passed = _collect(capture, raws, want=2)
    assert {name for name, (p, _) in sent.items() if bytes(p) in passed} == {
        name for name, (_, passes) in sent.items() if passes
    }


def _collect(capture: object, raws: set[bytes], *, want: int, limit: float = 5.0) -> set[bytes]:
    from probes.live import LiveCapture

    assert isinstance(capture, LiveCapture)
    got: set[bytes] = set()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for _ts, _lt, frame in capture.read_batch(0.2):
            if frame in raws:
                got.add(frame)
        if len(got) >= want:
            # Anything else that should not have passed has arrived by now too.
            for _ts, _lt, frame in capture.read_batch(0.3):
                if frame in raws:
                    got.add(frame)
            break
    return got


# -- the prelude that excludes flows (with_exclusions) ------------------------------------------


def _flow_key(packet: Packet) -> bytes:
    raw = bytes(packet)
    if raw[0] >> 4 == 4:
        ihl = (raw[0] & 15) * 4
        return raw[12:20] + raw[ihl : ihl + 4]
    return raw[8:44]


def exclusion_cases() -> tuple[list[bytes], list[Case]]:
    """(excluded flow keys, packets with the verdict of the egress filter behind the prelude)."""
    c, s = CLIENT_PORT, 443
    v4 = _v4(_tcp(c, s, "A", RANDOM))
    v6 = _v6(_tcp(c, s, "A", RANDOM))
    opts = _v4(_tcp(c + 1, s, "A", RANDOM), options=b"\x01\x01\x01\x00")
    keys = [_flow_key(v4), _flow_key(v6), _flow_key(opts)]
    table = []
    for family, make in (("v4", _v4), ("v6", _v6)):
        table += [
            Case(f"{family} excluded flow's data", make(_tcp(c, s, "A", RANDOM)), False),
            Case(f"{family} excluded flow's record start", make(_tcp(c, s, "PA", CH_START)), False),
            Case(f"{family} excluded flow's SYN", make(_tcp(c, s, "S")), True),
            Case(f"{family} excluded flow's FIN", make(_tcp(c, s, "FA", RANDOM)), True),
            Case(f"{family} excluded flow's RST", make(_tcp(c, s, "R")), True),
            Case(f"{family} another source port", make(_tcp(c + 7, s, "A", RANDOM)), True),
            Case(f"{family} ports swapped", make(_tcp(s, c, "PA", CH_START)), True),
            Case(f"{family} UDP with the same ports", make(_udp(c, s, QUIC_INITIAL)), True),
        ]
    table += [
        Case(
            "v4 excluded flow with IP options",
            _v4(_tcp(c + 1, s, "A", RANDOM), options=b"\x01\x01\x01\x00"),
            False,
        ),
        Case(
            "v4 same ports, another destination",
            IP(src="10.200.0.1", dst="10.200.0.78", id=next(_ids)) / _tcp(c, s, "A", RANDOM),
            True,
        ),
        Case(
            "v4 same ports, another source",
            IP(src="10.200.0.3", dst="10.200.0.77", id=next(_ids)) / _tcp(c, s, "A", RANDOM),
            True,
        ),
        Case(
            "v6 same ports, another destination",
            IPv6(src="fd00:e6::1", dst="fd00:e6::78", fl=next(_ids)) / _tcp(c, s, "A", RANDOM),
            True,
        ),
        Case(
            "v6 same ports, another source (last word)",
            IPv6(src="fd00:e6::3", dst="fd00:e6::77", fl=next(_ids)) / _tcp(c, s, "A", RANDOM),
            True,
        ),
        Case(
            "v4 excluded flow, later fragment", _v4(Raw(RANDOM), flags="", frag=100, proto=6), True
        ),
        Case(
            "v6 excluded flow behind a hop-by-hop header",
            _v6(IPv6ExtHdrHopByHop() / _tcp(c, s, "A", RANDOM)),
            True,
        ),
    ]
    return keys, table


def test_exclusions_compile_to_what_the_kernel_takes() -> None:
    base = bpf.compile_filter(bpf.FilterSettings(ephemeral_floor=FLOOR), ifindexes=[2])
    assert bpf.with_exclusions(base, []) is base
    keys, _table = exclusion_cases()
    program = bpf.with_exclusions(base, keys)
    assert program.instructions[-len(base.instructions) :] == base.instructions
    added = len(program.instructions) - len(base.instructions)
    assert added <= bpf.EXCLUSION_OVERHEAD + 2 * bpf.EXCLUDED_V4_INSNS + bpf.EXCLUDED_V6_INSNS
    assert bpf.with_exclusions(base, reversed(keys)) == program  # the order does not matter
    # As many IPv6 flows as the capacity allows, and one IPv4 flow: a valid program (the
    # kernel may still refuse it for memory, net.core.optmem_max, but not as invalid).
    room = bpf.exclusion_capacity(base)
    assert room > 128
    many = [bytes(32) + n.to_bytes(4, "big") for n in range(room - 2)] + [bytes(12)]
    biggest = bpf.with_exclusions(base, many)
    assert len(biggest.instructions) <= bpf.BPF_MAXINSNS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            bpf.attach(sock, biggest)
        except OSError as exc:
            assert exc.errno == errno.ENOMEM, exc
    with pytest.raises(ValueError, match="above 4096"):
        bpf.with_exclusions(base, [*many, *(b"\xff" * 32 + bytes([0, 0, 0, n]) for n in range(3))])
    with pytest.raises(ValueError, match="12 \\(IPv4\\) or 36 \\(IPv6\\) bytes"):
        bpf.with_exclusions(base, [bytes(13)])


@pytest.mark.root
@pytest.mark.netns
def test_kernel_excludes_the_flows_and_nothing_else() -> None:
    from tests.netns import unavailable, veth_pair

    if reason := unavailable():
        pytest.skip(reason)
    keys, table = exclusion_cases()
    with veth_pair() as pair:
        with pair.server.ns.entered():
            assert bpf.local_port_range()[0] == FLOOR, "the namespace has another port range"
            base = bpf.compile_filter(bpf.FilterSettings(ephemeral_floor=FLOOR))
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        with sock:
            bpf.attach(sock, bpf.with_exclusions(base, keys))
            sock.bind((pair.server.ifname, 0x0003))
            sock.settimeout(0.5)
            _send(pair, [case.packet for case in table])
            passed: set[bytes] = set()
            with contextlib.suppress(TimeoutError):
                while True:
                    passed.add(sock.recv(1 << 16))
    assert _report(passed, table) == []
