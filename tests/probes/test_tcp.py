"""probes.tcp: ClientHellos and DNS messages out of TCP segments in any order, bounded."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probes.tcp
from probes.packet import Packet
from probes.tcp import TcpReassembler, TcpResult
from probes.tls import ClientHello, read_record_client_hello
from tests.factories import (
    ACK,
    CLIENT,
    FIN,
    HANG,
    PSH,
    RST,
    SERVER,
    SYN,
    dns_query,
    dns_response,
    dns_tcp,
    large_client_hello,
    openssl_client_hello,
    records,
    segments,
    syn,
    syn_ack,
    tcp,
    unrecord,
)

HELLO = openssl_client_hello("api.openai.com", alpn=["h2", "http/1.1"])
BIG = large_client_hello(17_000)  # two records, as OpenSSL cut it
# A hello in several small records, to put record boundaries on segment boundaries.
MULTI = records(unrecord(HELLO), 120)


def parsed(data: bytes) -> ClientHello:
    hello = read_record_client_hello(data)
    assert hello is not None
    return hello


def feed(r: TcpReassembler, packets: list[Packet]) -> list[TcpResult]:
    out: list[TcpResult] = []
    for p in packets:
        out += r.segment(p)
    return out


def hellos(results: list[TcpResult]) -> list[ClientHello]:
    return [x.client_hello for x in results if x.client_hello is not None]


# ---------------------------------------------------------------------------------------------
# In order, out of order, duplicated, overlapping
# ---------------------------------------------------------------------------------------------


def test_syn_then_hello_in_one_segment() -> None:
    r = TcpReassembler()
    pkt = tcp(HELLO, seq=1001)
    out = feed(r, [syn(isn=1000), pkt])
    assert len(out) == 1
    assert out[0].pkt is pkt
    assert out[0].client_hello == parsed(HELLO)
    assert out[0].dns_message is None
    assert r.stats["client_hellos"] == 1
    assert (r.live_flows, r.tombstones) == (0, 1)


@pytest.mark.parametrize("with_syn", [True, False], ids=["syn", "no-syn"])
@pytest.mark.parametrize(
    ("data", "bounds"),
    [
        (BIG, [1400, 2800, 16389]),  # the last cut is the record boundary
        (BIG, [5, 9, 8000]),  # record and handshake headers cut apart
        (MULTI, [125, 250, 375]),  # every cut on a record boundary
        (HELLO, [1, 2, 3]),
    ],
    ids=["big", "big-headers", "multi-record", "tiny-first"],
)
def test_all_permutations(data: bytes, bounds: list[int], with_syn: bool) -> None:
    want = parsed(data)
    segs = segments(data, bounds, isn=5000)
    assert len(segs) == 4
    for order in itertools.permutations(segs):
        r = TcpReassembler()
        out = feed(r, ([syn(isn=5000)] if with_syn else []) + list(order))
        assert hellos(out) == [want], [p.seq for p in order]
        # The packet that completed it is the one that filled the last hole.
        assert out[0].pkt is order[-1]
        assert r.live_flows == 0


def test_permutations_with_plaintext_prefix_and_no_syn() -> None:
    """STARTTLS picked up mid-stream: plaintext segments, then the hello, in any order."""
    plain = b"EHLO me\r\n" + b"STARTTLS\r\n"
    want = parsed(BIG)
    stream = plain + BIG
    pkts = segments(stream, [9, len(plain), len(plain) + 1400, len(plain) + 9000])
    for order in itertools.permutations(pkts):
        r = TcpReassembler()
        assert hellos(feed(r, list(order))) == [want]


@pytest.mark.parametrize("seed", range(40))
def test_retransmissions_overlapping_different_boundaries(seed: int) -> None:
    """Each segment is lost with some chance and resent under another segmentation."""
    rng = random.Random(seed)
    data = BIG if seed % 2 else MULTI
    isn = rng.choice([1000, 2**32 - 3000, 2**32 - 1, rng.randrange(2**32)])
    first = segments(data, sorted(rng.sample(range(1, len(data)), 12)), isn=isn)
    again = segments(data, sorted(rng.sample(range(1, len(data)), 7)), isn=isn)
    sent = [p for p in first if rng.random() > 0.3]
    sent += [p for p in first if rng.random() < 0.3]  # duplicates
    rng.shuffle(sent)
    sent += again
    r = TcpReassembler()
    out = feed(r, ([syn(isn=isn)] if seed % 3 else []) + sent)
    assert hellos(out) == [parsed(data)]


def test_conflicting_overlap_contiguous_bytes_win() -> None:
    """Bytes already in order are never replaced by a retransmission that disagrees."""
    segs = segments(HELLO, [200], isn=10)
    forged = tcp(b"\x00" * 50, seq=segs[0].seq + 150)
    r = TcpReassembler()
    out = feed(r, [syn(isn=10), segs[0], forged, segs[1]])
    assert hellos(out) == [parsed(HELLO)]
    assert r.stats["retransmissions"] == 1
    # An out-of-order segment overtaken by an in-order one that covers it is dropped.
    early_forged = tcp(b"\x00" * 50, seq=segs[1].seq + 100)
    r = TcpReassembler()
    out = feed(r, [syn(isn=10), early_forged, segs[1], segs[0]])
    assert hellos(out) == [parsed(HELLO)]


@pytest.mark.parametrize("isn", [2**32 - 1, 2**32 - 2, 2**32 - 700, 2**32 - 15000, 0])
def test_sequence_wraparound(isn: int) -> None:
    want = parsed(BIG)
    segs = segments(BIG, range(1400, len(BIG), 1400), isn=isn)
    assert any(p.seq < 100_000 for p in segs) or isn == 0
    for with_syn in (True, False):
        for order in (segs, segs[::-1]):
            r = TcpReassembler()
            out = feed(r, ([syn(isn=isn)] if with_syn else []) + list(order))
            assert hellos(out) == [want]


def test_segment_from_before_stream_start_is_trimmed() -> None:
    """A retransmission that begins before ISN + 1 (it cannot, but captures lie) is trimmed."""
    r = TcpReassembler()
    out = feed(r, [syn(isn=99), tcp(b"junk" + HELLO, seq=96)])
    assert hellos(out) == [parsed(HELLO)]


def test_tcp_fast_open_hello_in_syn() -> None:
    r = TcpReassembler()
    out = feed(r, [tcp(HELLO, seq=4000, flags=SYN)])
    assert hellos(out) == [parsed(HELLO)]
    # A retransmitted SYN with the same ISN changes nothing.
    r = TcpReassembler()
    a, b = segments(HELLO, [300], isn=4000)
    out = feed(r, [syn(isn=4000), a, syn(isn=4000), b])
    assert hellos(out) == [parsed(HELLO)]


# ---------------------------------------------------------------------------------------------
# Where the TLS stream starts
# ---------------------------------------------------------------------------------------------


def smtp_starttls(client_hello: bytes) -> tuple[list[Packet], list[Packet]]:
    """An SMTP session up to STARTTLS and the client's hello; (client side, server side)."""
    c_isn, s_isn = 100, 900
    server = SERVER[0], 25
    c_stream = b"EHLO client.example\r\n" + b"STARTTLS\r\n" + client_hello
    s_stream = b"220 mx ESMTP\r\n" + b"250-mx\r\n250 STARTTLS\r\n" + b"220 2.0.0 Ready\r\n"
    cut_c = [21, 31, 31 + 300]
    client = [syn(isn=c_isn, dst=server), *segments(c_stream, cut_c, isn=c_isn, dst=server)]
    srv = [
        syn_ack(isn=s_isn, src=server),
        *segments(s_stream, [14, 37], isn=s_isn, src=server, dst=CLIENT),
    ]
    return client, srv


def test_starttls_smtp() -> None:
    client, server = smtp_starttls(HELLO)
    r = TcpReassembler()
    # Interleaved as on the wire: banner, EHLO, reply, STARTTLS, ready, hello.
    order = [
        client[0],
        server[0],
        server[1],
        client[1],
        server[2],
        client[2],
        server[3],
        client[3],
        client[4],
    ]
    assert hellos(feed(r, order)) == [parsed(HELLO)]
    assert r.stats["not_tls"] == 0
    assert r.live_flows == 0


def test_starttls_hello_before_plaintext_arrives() -> None:
    client, _ = smtp_starttls(HELLO)
    r = TcpReassembler()
    assert hellos(feed(r, [client[0], client[4], client[3], client[2], client[1]])) == [
        parsed(HELLO)
    ]


@pytest.mark.parametrize(
    "prelude",
    [
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
        b"\x05\x01\x00",  # SOCKS5 greeting
        b"a001 STARTTLS\r\n",  # IMAP
    ],
    ids=["http-connect", "postgres", "socks5", "imap"],
)
@pytest.mark.parametrize("pipelined", [False, True])
def test_plaintext_then_hello(prelude: bytes, pipelined: bool) -> None:
    """The hello follows a plaintext request in its own segment, or right behind it."""
    stream = prelude + HELLO
    bounds = [len(prelude) + 400] if pipelined else [len(prelude), len(prelude) + 400]
    r = TcpReassembler()
    out = feed(r, [syn(isn=1), *segments(stream, bounds, isn=1)])
    assert hellos(out) == [parsed(HELLO)]


@pytest.mark.parametrize(
    "first",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x9c\x81\x00\x11"],
    ids=["ssh", "h2c", "binary"],
)
def test_not_tls_after_syn_is_a_tombstone(first: bytes) -> None:
    r = TcpReassembler()
    feed(r, [syn(isn=1), tcp(first, seq=2)])
    assert r.stats["not_tls"] == 1
    assert (r.live_flows, r.tombstones) == (0, 1)
    tracked = r.stats["segments_tracked"]
    feed(r, [tcp(b"x" * 1400, seq=2 + len(first) + 1400 * i) for i in range(100)])
    assert r.stats["segments_tracked"] == tracked


def test_midstream_tls_is_a_tombstone() -> None:
    r = TcpReassembler()
    feed(r, [tcp(b"\x17\x03\x03\x40\x11" + b"\xaa" * 1395, seq=77)])
    assert r.stats["not_tls"] == 1 and r.tombstones == 1


def test_server_hello_without_syn_ack_is_not_a_client() -> None:
    server_hello = records(b"\x02\x00\x00\x46\x03\x03" + b"\x00" * 70, version=0x0303)
    r = TcpReassembler()
    out = feed(r, [tcp(server_hello, seq=5, src=SERVER, dst=CLIENT)])
    assert out == []
    assert r.stats["not_tls"] == 1 and r.stats["malformed"] == 0


def test_later_record_first_is_not_taken_as_start() -> None:
    """No SYN; the segment holding the second record (starts 16 03 01) arrives first."""
    pkts = segments(MULTI, [125], isn=50)
    assert pkts[1].payload[:3] == b"\x16\x03\x01"
    r = TcpReassembler()
    assert hellos(feed(r, [pkts[1], pkts[0]])) == [parsed(MULTI)]


def test_watching_budget_gives_up() -> None:
    r = TcpReassembler(max_segments_per_flow=8)
    feed(r, [tcp(b"q" * 100, seq=100 * i) for i in range(9)])
    assert r.stats["gave_up"] == 1
    assert (r.live_flows, r.tombstones) == (0, 1)
    assert r.buffered_bytes() == 0


# ---------------------------------------------------------------------------------------------
# Decided flows are cheap; the server side is decided at once
# ---------------------------------------------------------------------------------------------


def test_bulk_after_hello_stays_on_the_fast_path() -> None:
    r = TcpReassembler()
    base = 1000 + 1 + len(HELLO)
    feed(r, [syn(isn=1000), syn_ack(isn=50), tcp(HELLO, seq=1001)])
    before = dict(r.stats)
    bulk_up = [tcp(b"\x17\x03\x03" + b"u" * 1397, seq=base + 1400 * i) for i in range(500)]
    bulk_down = [tcp(b"d" * 1400, seq=51 + 1400 * i, src=SERVER, dst=CLIENT) for i in range(500)]
    acks = [tcp(seq=base, flags=ACK) for _ in range(500)]
    assert feed(r, bulk_up + bulk_down + acks) == []
    assert r.stats == before  # not one of them went past the tombstone check
    assert (r.live_flows, r.tombstones) == (0, 2)


def test_malformed_hello_is_counted_not_raised() -> None:
    bad = bytearray(HELLO)
    bad[9] = 0x07  # legacy_version major byte
    r = TcpReassembler()
    assert feed(r, [syn(isn=1), tcp(bytes(bad), seq=2)]) == []
    assert r.stats["malformed"] == 1 and r.tombstones == 1
    bad_suites = bytearray(HELLO)
    bad_suites[9 + 2 + 32 + 1 + 32 + 1] ^= 1  # cipher_suites length made odd
    r = TcpReassembler()
    assert feed(r, [syn(isn=1), tcp(bytes(bad_suites), seq=2)]) == []
    assert r.stats["malformed"] == 1


# ---------------------------------------------------------------------------------------------
# Ends, bounds, time
# ---------------------------------------------------------------------------------------------


def test_rst_ends_both_directions() -> None:
    r = TcpReassembler()
    a, _b = segments(HELLO, [300], isn=1)
    feed(r, [syn(isn=1), syn_ack(isn=9), a])
    assert (r.live_flows, r.tombstones) == (1, 1)
    feed(r, [tcp(seq=10, flags=RST | ACK, src=SERVER, dst=CLIENT)])
    assert (r.live_flows, r.tombstones) == (0, 0)
    assert r.stats["flows_closed"] == 2


def test_fin_ends_a_flow_but_waits_for_a_hole() -> None:
    r = TcpReassembler()
    a, b = segments(HELLO, [300], isn=1)
    fin_b = tcp(b.payload, seq=b.seq, flags=FIN | ACK | PSH)
    assert feed(r, [syn(isn=1), fin_b]) == []
    assert r.live_flows == 1  # a hole before the FIN: keep
    assert hellos(feed(r, [a])) == [parsed(HELLO)]
    feed(r, [tcp(seq=b.seq + len(b.payload) + 1, flags=FIN | ACK)])
    assert (r.live_flows, r.tombstones) == (0, 0)


def test_fin_on_a_watching_flow_ends_it() -> None:
    r = TcpReassembler()
    feed(r, [syn(isn=1), tcp(b"HELO x\r\n", seq=2), tcp(seq=10, flags=FIN | ACK)])
    assert (r.live_flows, r.tombstones) == (0, 0)


def test_max_flows_evicts_tombstones_first() -> None:
    r = TcpReassembler(max_flows=10)
    # Five tombstones (server sides), then twenty clients with half a hello each.
    for port in range(5):
        feed(r, [syn_ack(src=SERVER, dst=(CLIENT[0], 2000 + port))])
    half = HELLO[:200]
    for port in range(20):
        feed(
            r,
            [
                syn(isn=1, src=(CLIENT[0], 3000 + port)),
                tcp(half, seq=2, src=(CLIENT[0], 3000 + port)),
            ],
        )
        assert r.live_flows + r.tombstones <= 10
    assert r.tombstones == 0
    assert r.live_flows == 10
    assert r.stats["flows_evicted"] == 15
    # The newest flows survived and still complete.
    last = (CLIENT[0], 3019)
    assert hellos(feed(r, [tcp(HELLO[200:], seq=202, src=last)])) == [parsed(HELLO)]


def test_stalled_flow_does_not_block_others() -> None:
    r = TcpReassembler()
    stalled = segments(BIG, [1400], isn=1, src=(CLIENT[0], 40000))
    feed(r, [syn(isn=1, src=(CLIENT[0], 40000)), stalled[1]])  # first segment never comes
    out = []
    for port in range(40001, 40050):
        src = (CLIENT[0], port)
        out += feed(r, [syn(isn=7, src=src), *segments(HELLO, [100], isn=7, src=src)])
    assert len(hellos(out)) == 49
    assert r.live_flows == 1


def test_out_of_order_segment_limit_overflows() -> None:
    r = TcpReassembler(max_segments_per_flow=4)
    pkts = segments(BIG, range(100, 1000, 100), isn=1)
    feed(r, [syn(isn=1), *pkts[1:]])
    assert r.stats["overflow"] == 1
    assert (r.live_flows, r.tombstones) == (0, 1)


def test_flow_bytes_limit_overflows() -> None:
    r = TcpReassembler(max_flow_bytes=4000)
    out = feed(r, [syn(isn=1), *segments(BIG, range(1400, len(BIG), 1400), isn=1)])
    assert out == []
    assert r.stats["overflow"] == 1
    assert r.buffered_bytes() == 0
    # Out of order, the held bytes are what overflows: here overlapping retransmissions.
    r = TcpReassembler(max_flow_bytes=4000)
    feed(r, [syn(isn=1), tcp(BIG[100:2100], seq=102), tcp(BIG[200:2200], seq=202)])
    assert r.stats["overflow"] == 0
    feed(r, [tcp(BIG[300:2300], seq=302)])
    assert r.stats["overflow"] == 1
    # Bytes beyond the window a hello must fit in are not held.
    r = TcpReassembler(max_flow_bytes=4000)
    feed(r, [syn(isn=1), tcp(BIG[3000:6000], seq=3002)])
    assert r.buffered_bytes() == 1000
    # A segment that starts beyond it means the hello's start was lost for good.
    feed(r, [tcp(BIG[4000:5000], seq=4002)])
    assert r.stats["overflow"] == 1
    assert (r.live_flows, r.tombstones) == (0, 1)


def test_lost_first_segment_then_bulk_goes_cheap() -> None:
    """The capture lost the hello's first segment (nDPI's tls_missing_ch_frag)."""
    r = TcpReassembler()
    pkts = segments(HELLO + b"\x17" * 200_000, range(100, 200_000, 1400), isn=1)
    feed(r, [syn(isn=1), *pkts[1:60]])
    assert r.stats["overflow"] == 1 and r.live_flows == 0
    tracked = r.stats["segments_tracked"]
    feed(r, pkts[60:])
    assert r.stats["segments_tracked"] == tracked


def test_idle_timeout() -> None:
    r = TcpReassembler(idle_timeout=30)
    a, _ = segments(HELLO, [300], isn=1, ts=100.0)
    feed(r, [syn(isn=1, ts=100.0), a, syn_ack(ts=100.0)])
    assert (r.live_flows, r.tombstones) == (1, 1)
    r.expire(120.0)
    assert (r.live_flows, r.tombstones) == (1, 1)
    r.expire(131.0)
    assert (r.live_flows, r.tombstones) == (0, 0)
    assert r.stats["flows_expired"] == 2


def test_housekeeping_runs_on_packet_time() -> None:
    r = TcpReassembler(idle_timeout=10)
    feed(r, [syn(isn=1, ts=0.0), tcp(HELLO[:100], seq=2, ts=0.0)])
    feed(r, [syn(isn=1, src=(CLIENT[0], 1), ts=50.0)])
    assert r.live_flows == 1
    assert r.stats["flows_expired"] == 1


def test_bad_limits_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TcpReassembler(max_flows=0)


# ---------------------------------------------------------------------------------------------
# DNS over TCP
# ---------------------------------------------------------------------------------------------

RESOLVER = ("9.9.9.9", 53)
Q1, Q2 = dns_query("api.openai.com", qid=1), dns_query("api.anthropic.com", "AAAA", qid=2)
R1 = dns_response(Q1, "203.0.113.5")
R2 = dns_response(Q2)


def dns_messages(results: list[TcpResult]) -> list[bytes]:
    assert all(x.client_hello is None for x in results)
    return [x.dns_message for x in results if x.dns_message is not None]


def test_dns_two_messages_in_one_segment_and_one_split() -> None:
    r = TcpReassembler()
    c2s = dns_tcp(Q1, Q2)
    s2c = dns_tcp(R1, R2)
    client = segments(c2s, [], isn=10, dst=RESOLVER)  # both queries in one segment
    server = segments(
        s2c, [1, 2, 20, len(R1) + 2, len(R1) + 3], isn=70, src=RESOLVER, dst=CLIENT
    )  # lengths and messages cut apart
    out = feed(r, [syn(isn=10, dst=RESOLVER), syn_ack(isn=70, src=RESOLVER), *client])
    assert dns_messages(out) == [Q1, Q2]
    assert all(x.pkt is client[0] for x in out)
    out = feed(r, server)
    assert dns_messages(out) == [R1, R2]
    assert out[0].pkt.sport == 53 and out[0].pkt.src == server[0].src
    assert r.stats["dns_messages"] == 4


@pytest.mark.parametrize("with_syn", [True, False])
def test_dns_out_of_order_and_retransmitted(with_syn: bool) -> None:
    stream = dns_tcp(R1, R2, R1)
    pkts = segments(
        stream, [10, 40, len(R1) + 2, len(R1) + 30], isn=2**32 - 20, src=RESOLVER, dst=CLIENT
    )
    order = [pkts[0], pkts[2], pkts[1], pkts[1], pkts[4], pkts[3]]
    r = TcpReassembler()
    pre = [syn_ack(isn=2**32 - 20, src=RESOLVER)] if with_syn else []
    assert dns_messages(feed(r, pre + order)) == [R1, R2, R1]


def test_dns_out_of_step_is_malformed() -> None:
    r = TcpReassembler()
    out = feed(r, [syn(isn=1, dst=RESOLVER), tcp(b"\x00\x05hello", seq=2, dst=RESOLVER)])
    assert out == []
    assert r.stats["malformed"] == 1 and r.tombstones == 1


def test_dns_message_larger_than_limit_overflows() -> None:
    r = TcpReassembler(max_flow_bytes=100)
    big = dns_query("a" * 60 + ".example") * 2
    feed(r, [syn(isn=1, dst=RESOLVER), tcp(dns_tcp(big)[:50], seq=2, dst=RESOLVER)])
    assert r.stats["overflow"] == 1


def test_dns_port_is_not_searched_for_hellos() -> None:
    r = TcpReassembler()
    out = feed(r, [syn(isn=1, dst=RESOLVER), tcp(HELLO, seq=2, dst=RESOLVER)])
    assert hellos(out) == []


def test_dns_long_stream_rebases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets are re-based on long streams; with a tiny threshold, every message re-bases."""
    monkeypatch.setattr(probes.tcp, "_REBASE", 10)
    stream = dns_tcp(*([Q1, R2] * 5))
    pkts = segments(stream, range(7, len(stream), 7), isn=2**32 - 100, dst=RESOLVER)
    order = [p for pair in zip(pkts[1::2], pkts[::2], strict=False) for p in pair]
    order += pkts[len(order) :]
    r = TcpReassembler()
    assert dns_messages(feed(r, [syn(isn=2**32 - 100, dst=RESOLVER), *order])) == [Q1, R2] * 5


# ---------------------------------------------------------------------------------------------
# Hypothesis: any segments, never an exception, always within bounds
# ---------------------------------------------------------------------------------------------

PIECES = [
    HELLO,
    BIG[:3000],
    BIG[3000:9000],
    MULTI[:500],
    dns_tcp(Q1, R1),
    b"EHLO x\r\n",
    b"\x17\x03\x03\x00\x10" + b"z" * 16,
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03",
]


@st.composite
def packet(draw: st.DrawFn) -> Packet:
    kind = draw(st.sampled_from(["piece", "random", "empty"]))
    if kind == "piece":
        data = draw(st.sampled_from(PIECES))
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, len(data)))
        payload = data[a:b]
    elif kind == "random":
        payload = draw(st.binary(max_size=300))
    else:
        payload = b""
    return tcp(
        payload,
        seq=draw(st.sampled_from([0, 1, 2**32 - 1, 2**31]) | st.integers(0, 2**32 - 1)),
        flags=draw(st.sampled_from([ACK, ACK | PSH, SYN, SYN | ACK, FIN | ACK, RST, 0xFF])),
        src=(
            draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"])),
            draw(st.sampled_from([53, 443, 5000])),
        ),
        dst=(draw(st.sampled_from(["10.0.0.1", "10.0.0.2"])), draw(st.sampled_from([53, 443]))),
        ts=draw(st.floats(0, 1000, allow_nan=False)),
    )


@settings(max_examples=300, deadline=HANG, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packet(), max_size=60))
def test_arbitrary_segments_never_raise_and_stay_bounded(pkts: list[Packet]) -> None:
    r = TcpReassembler(max_flows=6, max_flow_bytes=4000, max_segments_per_flow=5, idle_timeout=100)
    for p in pkts:
        for result in r.segment(p):
            assert (result.client_hello is None) != (result.dns_message is None)
        assert r.live_flows + r.tombstones <= 6
        assert r.buffered_bytes() <= r.live_flows * 4000


@settings(max_examples=150, deadline=HANG, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([HELLO, BIG, MULTI]),
    st.lists(st.integers(1, 20_000), max_size=12),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_any_segmentation_any_order_one_hello(
    data: bytes, bounds: list[int], isn: int, with_syn: bool, rng: random.Random
) -> None:
    pkts = segments(data, bounds, isn=isn)
    pkts += [rng.choice(pkts) for _ in range(rng.randint(0, 3))]  # duplicates
    rng.shuffle(pkts)
    r = TcpReassembler()
    out = feed(r, ([syn(isn=isn)] if with_syn else []) + pkts)
    assert hellos(out) == [parsed(data)]


def test_all_buffers_together_stay_under_max_total_bytes() -> None:
    """Many flows, each holding a partial hello under its own bound, cannot exceed the total."""
    limit = 256 << 10
    r = TcpReassembler(max_total_bytes=limit, max_flows=100_000)
    head = bytes([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3F, 0xFC]) + b"\x03\x03" + bytes(1000)
    for i in range(3000):
        pkt = Packet(
            ts=1.0 + i * 1e-4,
            src=bytes([10, 0, i >> 8 & 0xFF, i & 0xFF]),
            dst=b"\x0a\x00\x00\x01",
            proto=6,
            sport=40000,
            dport=443,
            seq=1000,
            flags=0x18,
            payload=head,
        )
        assert r.segment(pkt) == []
        # Checked every 1024 new flows: the overshoot is at most that many partial hellos.
        assert r.buffered_bytes() <= limit + 1024 * len(head)
    r.expire(2.0)
    assert r.buffered_bytes() <= limit
    assert r.stats["memory_evicted"] > 0
