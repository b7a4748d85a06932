"""Which packets open a flow, for process attribution's early look."""

from __future__ import annotations

from bench.synth import ACK, PSH, SYN, ip_frame, quic_initial_datagrams, tcp_segment, udp_datagram
from egresswatch.attribution import flow_start


def _raw(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return ip_frame(src, dst, proto, l4)[14:]  # without the Ethernet header


def test_a_syn_opens_a_tcp_flow_v4_and_v6() -> None:
    syn = tcp_segment(40000, 443, 1, 0, SYN, b"")
    assert flow_start(_raw("10.0.0.2", "192.0.2.1", 6, syn)) == (
        "tcp", "10.0.0.2", 40000, "192.0.2.1", 443,
    )  # fmt: skip
    assert flow_start(_raw("fd00::1", "2001:db8::1", 6, syn)) == (
        "tcp", "fd00::1", 40000, "2001:db8::1", 443,
    )  # fmt: skip


def test_other_tcp_segments_do_not() -> None:
    for flags in (SYN | ACK, ACK, ACK | PSH):
        segment = tcp_segment(40000, 443, 1, 1, flags, b"x")
        assert flow_start(_raw("10.0.0.2", "192.0.2.1", 6, segment)) is None


def test_a_quic_initial_opens_a_udp_flow_and_dns_does_not() -> None:
    initial = quic_initial_datagrams("api.example.com", 1)[0]
    assert flow_start(_raw("10.0.0.2", "192.0.2.1", 17, udp_datagram(50000, 443, initial))) == (
        "udp", "10.0.0.2", 50000, "192.0.2.1", 443,
    )  # fmt: skip
    dns = udp_datagram(50001, 53, b"\x12\x34\x01\x00" + b"\x00" * 8)
    assert flow_start(_raw("10.0.0.2", "192.0.2.53", 17, dns)) is None


def test_short_or_odd_frames_are_ignored() -> None:
    for frame in (b"", b"\x45" * 10, b"\x00" * 40, b"\x60" + b"\x00" * 10):
        assert flow_start(frame) is None
