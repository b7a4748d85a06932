"""FlowExclusions (probes/live.py): which TCP flows the live capture stops in the kernel.

Sans-I/O, so no root: frames built with scapy are fed with a time, and the answers (hand the
frame on or not, the flows to exclude) are checked. The kernel side, the prelude that
:func:`probes.bpf.with_exclusions` puts before the filter, is tested in test_bpf.py, and the
two together on a veth in test_live.py.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from probes import bpf
from probes.live import FlowExclusions

CLIENT4, SERVER4 = "10.0.0.1", "10.0.0.2"
CLIENT6, SERVER6 = "fd00::1", "fd00::2"
WINDOW = 10_000
MSS = 1000


def seg(
    seq: int,
    size: int = MSS,
    flags: str = "A",
    *,
    six: bool = False,
    sport: int = 40000,
    dport: int = 443,
    reply: bool = False,
) -> bytes:
    """One TCP segment, client to server (``reply``: server to client), as captured."""
    src, dst = (CLIENT6, SERVER6) if six else (CLIENT4, SERVER4)
    if reply:
        src, dst, sport, dport = dst, src, dport, sport
    tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq & 0xFFFFFFFF, ack=1)
    l3 = IPv6(src=src, dst=dst) if six else IP(src=src, dst=dst)
    return bytes(l3 / tcp / Raw(bytes(size))) if size else bytes(l3 / tcp)


def key_of(frame: bytes) -> bytes:
    """The flow key as bpf.with_exclusions compares it."""
    if frame[0] >> 4 == 4:
        ihl = (frame[0] & 15) * 4
        return frame[12:20] + frame[ihl : ihl + 4]
    return frame[8:44]


def upload(gate: FlowExclusions, isn: int, count: int, **kw: object) -> list[bool]:
    """A SYN at ``isn`` and ``count`` full segments; the answers for the segments."""
    assert gate.frame(seg(isn, 0, "S", **kw), 1.0)  # type: ignore[arg-type]
    return [gate.frame(seg(isn + 1 + i * MSS, **kw), 1.0) for i in range(count)]  # type: ignore[arg-type]


@pytest.mark.parametrize("six", [False, True], ids=["ipv4", "ipv6"])
def test_a_flow_is_excluded_past_its_window(six: bool) -> None:
    gate = FlowExclusions(WINDOW)
    answers = upload(gate, 5000, WINDOW // MSS, six=six)
    assert all(answers)
    assert not gate.excluded  # the window's last byte is still in it
    assert not gate.changed
    # The segment that crosses the window is handed on (its first bytes are in the window).
    crossing = seg(5001 + WINDOW, six=six)
    assert gate.frame(crossing, 1.0)
    assert gate.changed
    assert list(gate.excluded) == [key_of(crossing)]
    assert len(key_of(crossing)) == (36 if six else 12)
    # What is still queued behind it is dropped here; bare ACKs and the other direction are not
    # the flow's data.
    assert not gate.frame(seg(5001 + WINDOW + MSS, six=six), 1.0)
    assert gate.frame(seg(5001 + WINDOW + MSS, 0, six=six), 1.0)
    assert gate.frame(seg(9, six=six, reply=True), 1.0)
    assert gate.stats() == {
        "flows_excluded": 1,
        "excluded_now": 1,
        "excluded_here_now": 0,
        "excluded_frames": 1,
        "exclusion_capacity": gate.capacity,
    }


def test_the_key_is_what_the_kernel_prelude_compares() -> None:
    frame = seg(1, sport=0x1234, dport=0x5678)
    gate = FlowExclusions(1)
    gate.frame(frame, 1.0)
    gate.frame(seg(1 + MSS, sport=0x1234, dport=0x5678), 1.0)
    (key,) = gate.excluded
    assert key == bytes([10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0x56, 0x78])
    bpf.with_exclusions(bpf.compile_expression("tcp"), gate.excluded)  # accepted as a key


def test_ip_options_move_the_tcp_header() -> None:
    gate = FlowExclusions(WINDOW)
    with_options = IP(src=CLIENT4, dst=SERVER4, options=b"\x01\x01\x01\x00")
    first = bytes(with_options / TCP(sport=40000, dport=443, seq=1, flags="A") / Raw(bytes(MSS)))
    assert first[0] & 15 == 6
    gate.frame(first, 1.0)
    far = bytes(
        with_options / TCP(sport=40000, dport=443, seq=1 + WINDOW, flags="A") / Raw(bytes(MSS))
    )
    gate.frame(far, 1.0)
    assert list(gate.excluded) == [key_of(first)]
    assert key_of(first)[8:] == bytes.fromhex("9c4001bb")  # the ports, after the options


def test_without_the_syn_the_first_segment_seen_is_the_start() -> None:
    gate = FlowExclusions(WINDOW)
    assert all(gate.frame(seg(777 + i * MSS), 1.0) for i in range(WINDOW // MSS))
    assert not gate.excluded
    gate.frame(seg(777 + WINDOW), 1.0)
    assert gate.excluded


def test_sequence_numbers_wrap() -> None:
    gate = FlowExclusions(WINDOW)
    isn = 0xFFFFFFFF - 3 * MSS
    assert all(upload(gate, isn, WINDOW // MSS))
    assert not gate.excluded
    gate.frame(seg(isn + 1 + WINDOW), 1.0)
    assert gate.excluded


def test_a_retransmission_from_before_the_start_is_not_far() -> None:
    gate = FlowExclusions(WINDOW)
    upload(gate, 5000, 3)
    assert gate.frame(seg(5000 - 50_000), 1.0)  # "before" in serial-number arithmetic
    assert not gate.excluded


def test_a_big_gso_packet_counts_by_its_length() -> None:
    # BIG TCP: an IPv4 total length of 0 means "over 64 KB"; the frame's own length counts.
    gate = FlowExclusions(WINDOW)
    gate.frame(seg(0, 0, "S"), 1.0)
    big = bytearray(seg(1, 2 * WINDOW))
    big[2:4] = b"\x00\x00"
    gate.frame(bytes(big), 1.0)
    assert gate.excluded


@pytest.mark.parametrize("six", [False, True], ids=["ipv4", "ipv6"])
def test_syn_fin_and_rst_end_an_exclusion(six: bool) -> None:
    gate = FlowExclusions(WINDOW)
    upload(gate, 0, WINDOW // MSS + 2, six=six)
    assert gate.excluded
    gate.changed = False
    # Its FIN passes the prelude, and ends it.
    assert gate.frame(seg(WINDOW * 3, 0, "FA", six=six), 2.0)
    assert not gate.excluded
    assert gate.changed
    # A new connection on the same ports counts from its own SYN.
    assert all(upload(gate, 10**6, WINDOW // MSS, six=six))
    assert not gate.excluded
    gate.frame(seg(10**6 + 1 + WINDOW, six=six), 3.0)
    assert gate.excluded
    # A RST from the server ends the client's direction too.
    assert gate.frame(seg(1, 0, "R", six=six, reply=True), 4.0)
    assert not gate.excluded
    # And a SYN on the same ports while excluded (the old connection's end was not seen).
    upload(gate, 0, WINDOW // MSS + 2, six=six)
    assert gate.excluded
    assert gate.frame(seg(2**31, 0, "S", six=six), 5.0)
    assert not gate.excluded
    assert gate.exclusions_ended == 3


def test_exclusions_end_after_their_ttl_and_come_back() -> None:
    gate = FlowExclusions(WINDOW, ttl=60.0)
    upload(gate, 0, WINDOW // MSS + 2)
    assert gate.excluded
    gate.changed = False
    assert gate.frame(seg(0, 100, sport=50000), 30.0)  # another flow: time passes
    assert gate.excluded
    assert gate.frame(seg(0, 100, sport=50000), 61.5)
    assert not gate.excluded
    assert gate.changed
    # Still sending: excluded again at its next segment, which is handed on.
    assert gate.frame(seg(1 + 20 * WINDOW), 62.0)
    assert gate.excluded
    assert gate.flows_excluded == 2


def ports(keys: object) -> list[int]:
    return [int.from_bytes(k[8:10], "big") for k in keys]  # type: ignore[attr-defined]


def test_flows_over_the_capacity_are_dropped_here_until_a_place_frees() -> None:
    gate = FlowExclusions(WINDOW, capacity=3)
    for port in range(40000, 40005):
        upload(gate, 0, WINDOW // MSS + 1, sport=port)
    # The first three hold the kernel's places; nobody is pushed out (no filter churn).
    assert ports(gate.excluded) == [40000, 40001, 40002]
    assert gate.stats()["excluded_here_now"] == 2
    assert gate.flows_excluded == 5
    gate.changed = False
    # The other two are dropped here.
    assert not gate.frame(seg(1 + 2 * WINDOW, sport=40004), 2.0)
    assert not gate.changed
    # 40001 ends; 40004's next frame takes its place in the kernel.
    gate.frame(seg(1 + 3 * WINDOW, 0, "FA", sport=40001), 2.0)
    assert gate.changed
    assert not gate.frame(seg(1 + 3 * WINDOW, sport=40004), 2.0)
    assert ports(gate.excluded) == [40000, 40002, 40004]
    assert gate.stats()["excluded_here_now"] == 1
    # 40003's FIN ends it too, though it never had a place in the kernel.
    gate.changed = False
    gate.frame(seg(1 + 3 * WINDOW, 0, "FA", sport=40003), 2.0)
    assert gate.stats()["excluded_here_now"] == 0
    assert not gate.changed
    assert gate.exclusions_ended == 2


def test_shrink_keeps_the_flows_excluded_here() -> None:
    # The kernel refused a program that size: the newest flows leave it, still excluded.
    gate = FlowExclusions(WINDOW, capacity=4)
    for port in range(40000, 40004):
        upload(gate, 0, WINDOW // MSS + 1, sport=port)
    gate.changed = False
    gate.shrink(2)
    assert gate.changed
    assert ports(gate.excluded) == [40000, 40001]
    assert gate.stats()["exclusion_capacity"] == 2
    assert not gate.frame(seg(1 + 2 * WINDOW, sport=40003), 2.0)  # still dropped
    assert ports(gate.excluded) == [40000, 40001]  # and no place for it
    gate.shrink(0)
    assert not gate.excluded
    assert not gate.frame(seg(1 + 2 * WINDOW, sport=40000), 2.0)
    assert gate.stats()["excluded_here_now"] == 4


def test_ttl_applies_to_the_flows_excluded_here() -> None:
    gate = FlowExclusions(WINDOW, capacity=0, ttl=10.0)
    upload(gate, 0, WINDOW // MSS + 1)
    assert gate.stats()["excluded_here_now"] == 1
    assert gate.frame(seg(0, 10, sport=50000), 11.5)
    assert gate.stats()["excluded_here_now"] == 0
    assert not gate.changed  # the kernel's program never held it


def test_tracked_flows_are_bounded() -> None:
    gate = FlowExclusions(WINDOW, max_tracked=2)
    for port in (40000, 40001, 40002):
        gate.frame(seg(0, 0, "S", sport=port), 1.0)
    # 40000 was forgotten: its far segment is taken as its start, not as far.
    assert gate.frame(seg(1 + 2 * WINDOW, sport=40000), 1.0)
    assert not gate.excluded
    assert gate.frame(seg(1 + 2 * WINDOW, sport=40002), 1.0)
    assert len(gate.excluded) == 1


def test_what_is_not_a_tcp_segment_passes_untouched() -> None:
    gate = FlowExclusions(1)
    frames = [
        bytes(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=40000, dport=443) / Raw(bytes(5000))),
        bytes(IP(src=CLIENT4, dst=SERVER4, frag=100, proto=6) / Raw(bytes(MSS))),
        bytes(IPv6(src=CLIENT6, dst=SERVER6, nh=44) / Raw(bytes(MSS))),
        bytes(IP(src=CLIENT4, dst=SERVER4, proto=6) / Raw(bytes(10))),  # truncated TCP
        b"\x00" * 60,
    ]
    for _ in range(3):
        assert all(gate.frame(f, 1.0) for f in frames)
    assert not gate.excluded


def test_bad_bounds() -> None:
    with pytest.raises(ValueError, match="bad flow exclusion bounds"):
        FlowExclusions(0)
    with pytest.raises(ValueError, match="bad flow exclusion bounds"):
        FlowExclusions(WINDOW, ttl=0)
    with pytest.raises(ValueError, match="bad flow exclusion bounds"):
        FlowExclusions(WINDOW, capacity=-1)


def test_hello_window_setting() -> None:
    assert bpf.FilterSettings().hello_window == bpf.HELLO_WINDOW
    # The window is not part of the static expression tcpdump takes.
    assert bpf.filter_expression(bpf.FilterSettings(hello_window=None)) == bpf.filter_expression()
    with pytest.raises(ValueError, match="hello_window out of range"):
        bpf.FilterSettings(hello_window=0)
