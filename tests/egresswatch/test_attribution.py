"""Which packets open a flow, for process attribution's early look; how the answers are used,
and what happens when look-ups cannot keep up."""

from __future__ import annotations

import threading

from bench.synth import ACK, PSH, SYN, ip_frame, quic_initial_datagrams, tcp_segment, udp_datagram
from egresswatch.attribution import (
    BUSY_PENDING,
    EARLY_MAX_AGE,
    MAX_PENDING,
    UDP_SEEN_SECONDS,
    AttributingWriter,
    flow_start,
)
from probes.observation import Observation
from probes.sockets import NotFound, Owner
from tests.factories import KeptObservations


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
    # A query id whose first two bits are set looks like a long header: port 53 says DNS.
    dns = udp_datagram(50001, 53, b"\xc2\x34\x01\x00" + b"\x00" * 8)
    assert flow_start(_raw("10.0.0.2", "192.0.2.53", 17, dns)) is None


def test_dns_over_tcp_is_not_a_flow_to_attribute() -> None:
    syn = tcp_segment(40000, 53, 1, 0, SYN, b"")
    assert flow_start(_raw("10.0.0.2", "192.0.2.53", 6, syn)) is None


def test_short_or_odd_frames_are_ignored() -> None:
    for frame in (b"", b"\x45" * 10, b"\x00" * 40, b"\x60" + b"\x00" * 10):
        assert flow_start(frame) is None


# -- AttributingWriter, with a socket table that answers from a script -------------------------


class ScriptedOwners:
    """Stands in for SocketOwners: records look-ups; ``gate`` holds them until set."""

    def __init__(
        self, answers: dict[int, Owner | NotFound | list[Owner | NotFound]], gate: threading.Event
    ) -> None:
        self.answers = answers  # by local port; a list is answered in order, the last repeated
        self.gate = gate
        self.calls: list[tuple[str, int, bool]] = []

    def lookup(
        self, proto: str, src: str, sport: int, dst: str, dport: int, *, first_packet: bool = False
    ) -> Owner | NotFound:
        self.gate.wait(10)
        self.calls.append((proto, sport, first_packet))
        answer = self.answers.get(sport, NotFound("no_socket", "none"))
        if isinstance(answer, list):
            return answer.pop(0) if len(answer) > 1 else answer[0]
        return answer

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


def _owner(pid: int) -> Owner:
    return Owner(pid, "curl", "curl", 0, "root", "/ci", 1000 + pid, "live", (1,))


def _writer(
    answers: dict[int, Owner | NotFound | list[Owner | NotFound]], *, open_gate: bool = True
) -> tuple[AttributingWriter, ScriptedOwners, KeptObservations, threading.Event]:
    gate = threading.Event()
    if open_gate:
        gate.set()
    table = ScriptedOwners(answers, gate)
    kept = KeptObservations()
    return AttributingWriter(kept, lambda: table), table, kept, gate  # type: ignore[arg-type,return-value]


def _syn(sport: int) -> tuple[float, int, bytes]:
    return (1.0, 101, _raw("10.0.0.2", "192.0.2.1", 6, tcp_segment(sport, 443, 1, 0, SYN, b"")))


def _hello(sport: int, transport: str = "tcp") -> Observation:
    return Observation(
        ts=1.1, kind="tls" if transport == "tcp" else "quic", transport=transport,  # type: ignore[arg-type]
        src="10.0.0.2", dst="192.0.2.1", sport=sport, dport=443, sni="api.example.com",
    )  # fmt: skip


def test_the_first_packets_answer_names_the_hello_without_a_second_lookup() -> None:
    writer, table, kept, _ = _writer({40000: _owner(7)})
    writer.prefetch([_syn(40000)])
    writer.write(_hello(40000))
    assert table.calls == [("tcp", 40000, True)]
    assert kept.seen[0].extra["pid"] == 7
    assert writer.stats()["proc.early_used"] == 1
    assert writer.lineage[7] == (1,)
    writer.shutdown()


def test_no_first_packet_answer_asks_again() -> None:
    # The first look-up found nothing (the process had not been scanned yet): the hello asks
    # again; and a flow whose first packet was not seen is asked for once.
    writer, table, kept, _ = _writer(
        {40001: [NotFound("no_process", "x"), _owner(9)], 40002: _owner(8)}
    )
    writer.prefetch([_syn(40001)])
    writer.write(_hello(40001))
    writer.write(_hello(40002))
    assert table.calls == [("tcp", 40001, True), ("tcp", 40001, False), ("tcp", 40002, False)]
    assert [o.extra["pid"] for o in kept.seen] == [9, 8]
    writer.shutdown()


def test_a_quic_handshakes_later_packets_and_the_servers_are_not_looked_up() -> None:
    writer, table, kept, _ = _writer({50000: _owner(5)})
    initials = quic_initial_datagrams("api.example.com", 1)
    client = _raw("10.0.0.2", "192.0.2.1", 17, udp_datagram(50000, 443, initials[0]))
    server = _raw("192.0.2.1", "10.0.0.2", 17, udp_datagram(443, 50000, initials[0]))
    writer.prefetch([(1.0, 101, client), (1.01, 101, server), (1.02, 101, client)])
    writer.write(_hello(50000, "udp"))
    assert table.calls == [("udp", 50000, True)]
    assert kept.seen[0].extra["pid"] == 5
    # The same 4-tuple a minute later is a new flow (a new process may have the port).
    writer.prefetch([(62.0, 101, client)])
    assert writer.stats()["proc.early_lookups"] == 2
    writer.shutdown()


def test_a_flood_is_counted_not_waited_for() -> None:
    # The socket table is stuck: first-packet look-ups past MAX_PENDING are skipped, and a
    # hello without an answer goes on at once, unattributed as "busy"; nothing is lost.
    writer, table, kept, gate = _writer({}, open_gate=False)
    writer.prefetch([_syn(30000 + i) for i in range(MAX_PENDING + 10)])
    writer.write(_hello(29999))  # its first packet was never seen
    assert kept.seen[0].extra["attribution"] == "busy"
    assert "pid" not in kept.seen[0].extra
    gate.set()
    stats = writer.stats()
    assert stats["proc.early_lookups"] == MAX_PENDING
    assert stats["proc.early_skipped"] == 10
    assert stats["proc.busy"] == 1
    assert all(first for _p, _port, first in table.calls)
    writer.shutdown()


def test_a_quiet_table_is_asked_even_below_the_busy_mark() -> None:
    writer, _, kept, _ = _writer({41000: _owner(3)})
    writer.prefetch([_syn(42000 + i) for i in range(BUSY_PENDING - 1)])
    writer.write(_hello(41000))
    assert kept.seen[0].extra["pid"] == 3
    writer.shutdown()


def test_a_socket_gone_at_the_first_packet_is_not_looked_for_again() -> None:
    writer, table, kept, _ = _writer({40003: NotFound("no_socket", "gone")})
    writer.prefetch([_syn(40003)])
    writer.write(_hello(40003))
    assert table.calls == [("tcp", 40003, True)]
    assert kept.seen[0].extra["attribution"] == "no_socket"
    writer.shutdown()


def test_a_pipeline_that_is_behind_sheds_lookups_not_connections() -> None:
    writer, table, kept, _ = _writer({40004: _owner(4), 40005: _owner(5)})
    behind = [False]
    writer.pressure = lambda: behind[0]
    writer.prefetch([_syn(40004)])
    behind[0] = True
    writer.prefetch([_syn(40005)])  # skipped: the queue is filling
    writer.write(_hello(40004))  # answered at its first packet: still named
    writer.write(_hello(40005))
    assert [o.extra.get("pid", o.extra.get("attribution")) for o in kept.seen] == [4, "busy"]
    assert table.calls == [("tcp", 40004, True)]
    stats = writer.stats()
    assert (stats["proc.early_skipped"], stats["proc.busy"]) == (1, 1)
    writer.shutdown()


def test_answers_no_hello_came_for_are_dropped_with_age() -> None:
    # Connections that never send a ClientHello (failed, or not TLS) leave their first-packet
    # answers behind: they are dropped once older than EARLY_MAX_AGE of capture time, and the
    # UDP 4-tuples once older than UDP_SEEN_SECONDS, so neither table keeps all history.
    writer, table, kept, _ = _writer({40006: _owner(6)})
    initial = quic_initial_datagrams("api.example.com", 1)[0]
    for i in range(50):
        ts = i * 10.0
        syn = _raw("10.0.0.2", "192.0.2.1", 6, tcp_segment(30000 + i, 443, 1, 0, SYN, b""))
        quic = _raw("10.0.0.2", "192.0.2.1", 17, udp_datagram(20000 + i, 443, initial))
        writer.prefetch([(ts, 101, syn), (ts, 101, quic)])
    assert len(writer._answers) == 2 * (EARLY_MAX_AGE // 10 + 1)
    assert len(writer._udp_seen) == UDP_SEEN_SECONDS // 10 + 1
    # A hello within the limit still gets its answer.
    writer.prefetch([(500.0, 101, _syn(40006)[2])])
    writer.write(_hello(40006))
    assert kept.seen[0].extra["pid"] == 6
    assert len(table.calls) == 101
    writer.shutdown()
