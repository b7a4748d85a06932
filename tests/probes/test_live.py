"""LiveCapture on a veth between two network namespaces, with real clients and servers.

The server namespace runs a TLS server (Python ssl), a DNS responder (dnspython), a QUIC server
(aioquic) and plain TCP bulk senders and sinks; the client namespace runs curl, openssl
s_client, Python ssl, dnspython and aioquic clients. The capture listens in the client
namespace, where the client's traffic is egress. A second capture with a plain filter
(``tcp port 443`` and the like) runs beside it where a test must prove that traffic it expects
to be filtered out really was on the wire.

The peers are this file run as a script (``python test_live.py tls-server 443 ...``) inside a
namespace; see ``peer`` at the bottom.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNI = "egress.test"
PEER_ENV = {**os.environ, "PYTHONPATH": str(REPO)}
BULK = 50 << 20

if __name__ != "__main__":  # the peers (this file as a script) start faster without these
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Packet
    from scapy.utils import RawPcapReader

    from probes import bpf
    from probes.errors import CaptureError
    from probes.live import LINKTYPE_RAW, PACKET_OUTGOING, Frame, LiveCapture
    from tests.netns import (
        Netns,
        VethPair,
        unavailable,
        veth_pair,
        wait_for_operstate,
        wait_for_port,
    )

    pytestmark = [pytest.mark.root, pytest.mark.netns]
    if _why := unavailable():
        pytest.skip(_why, allow_module_level=True)


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``egress.test`` and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("cert")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNI)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNI)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with veth_pair() as made:
        yield made


@pytest.fixture
def wire_pair() -> Iterator[VethPair]:
    """MTU 1280 and no GSO: segments on the veth are wire-sized, as a router would see them."""
    with veth_pair(mtu=1280, gso=False) as made:
        yield made


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (apt install {tool})")


def start_peer(ns: Netns, *args: str, port: int | None = None, udp: bool = False) -> None:
    proc = ns.popen(sys.executable, __file__, *args, env=PEER_ENV)
    if port is not None:
        try:
            wait_for_port(ns, port, udp=udp)
        except TimeoutError:
            proc.kill()
            _out, err = proc.communicate(timeout=5)
            pytest.fail(f"peer {args} did not start: {err.decode(errors='replace')}")


def run_peer(ns: Netns, *args: str, timeout: float = 60) -> str:
    done = ns.run(sys.executable, __file__, *args, env=PEER_ENV, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"peer {args} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


def capture(ns: Netns, interfaces: list[str] | None, **kwargs: object) -> LiveCapture:
    """A LiveCapture opened inside ``ns`` (the socket keeps the namespace)."""
    with ns.entered():
        return LiveCapture(interfaces, **kwargs)  # type: ignore[arg-type]


def frames_of(
    cap: LiveCapture,
    *,
    until: Callable[[list[Frame]], bool] | None = None,
    limit: float = 5.0,
    settle: float = 0.3,
) -> list[Frame]:
    """Frames until ``until`` holds (then ``settle`` seconds more) or ``limit`` seconds pass.

    Without ``until``: what arrives within ``settle`` seconds.
    """
    out: list[Frame] = []
    deadline = time.monotonic() + limit
    while until is not None and time.monotonic() < deadline:
        out += cap.read_frames(0.1)
        if until(out):
            break
    end = time.monotonic() + settle
    while time.monotonic() < end:
        out += cap.read_frames(0.05)
    return out


def l3(frame: bytes) -> Packet:
    return IP(frame) if frame[0] >> 4 == 4 else IPv6(frame)


def tcp_payload(pkt: Packet) -> bytes:
    return bytes(pkt[TCP].payload) if TCP in pkt else b""


def udp_payload(pkt: Packet) -> bytes:
    return bytes(pkt[UDP].payload) if UDP in pkt else b""


@dataclass(frozen=True)
class Flow:
    """What a capture saw of TCP connections to one server port."""

    syns: int
    fins: int
    rsts: int
    client_hellos: list[bytes]
    data_from_server: int
    """Segments with payload from the server port, not counting SYN, FIN or RST ones (those
    pass whole by design: a download's last segment often carries the FIN)."""

    @property
    def ended(self) -> bool:
        return self.rsts > 0 or self.fins >= 2


def tcp_flow(frames: list[Frame], port: int) -> Flow:
    syns = fins = rsts = from_server = 0
    hellos = []
    for f in frames:
        pkt = l3(f.data)
        if TCP not in pkt or port not in (pkt[TCP].sport, pkt[TCP].dport):
            continue
        flags = int(pkt[TCP].flags)
        syns += bool(flags & 0x02)
        fins += bool(flags & 0x01)
        rsts += bool(flags & 0x04)
        payload = tcp_payload(pkt)
        if pkt[TCP].dport == port and payload[:1] == b"\x16" and payload[5:6] == b"\x01":
            hellos.append(payload)
        if pkt[TCP].sport == port and payload and not flags & 0x07:
            from_server += 1
    return Flow(syns, fins, rsts, hellos, from_server)


# -- TLS over TCP -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_curl_clienthello_arrives(pair: VethPair, cert: tuple[Path, Path], family: str) -> None:
    need("curl")
    start_peer(pair.server.ns, "tls-server", "443", *map(str, cert), "5000", port=443)
    cap = capture(pair.client.ns, [pair.client.ifname])
    with cap:
        addr = pair.server.ip4 if family == "ipv4" else f"[{pair.server.ip6}]"
        done = pair.client.ns.run(
            "curl", "-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
            "--resolve", f"{SNI}:443:{addr}", f"https://{SNI}/",
        )  # fmt: skip
        assert done.stdout == b"200"
        frames = frames_of(cap, until=lambda fs: tcp_flow(fs, 443).ended)
    assert all(f.linktype == LINKTYPE_RAW for f in frames)
    assert {f.data[0] >> 4 for f in frames if TCP in l3(f.data)} == {4 if family == "ipv4" else 6}
    flow = tcp_flow(frames, 443)
    assert flow.syns == 2  # SYN and SYN-ACK
    assert flow.ended
    assert len(flow.client_hellos) == 1
    assert SNI.encode() in flow.client_hellos[0]
    # The ClientHello was sent by this namespace: the capture says so.
    hello = next(f for f in frames if tcp_payload(l3(f.data))[:1] == b"\x16")
    assert hello.pkttype == PACKET_OUTGOING
    assert hello.interface == pair.client.ifname


def test_openssl_s_client_clienthello_arrives(pair: VethPair, cert: tuple[Path, Path]) -> None:
    need("openssl")
    start_peer(pair.server.ns, "tls-server", "443", *map(str, cert), "0", port=443)
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        pair.client.ns.run(
            "openssl", "s_client", "-connect", f"{pair.server.ip4}:443", "-servername", SNI,
            input=b"", timeout=20,
        )  # fmt: skip
        frames = frames_of(cap, until=lambda fs: len(tcp_flow(fs, 443).client_hellos) >= 1)
    flow = tcp_flow(frames, 443)
    assert len(flow.client_hellos) == 1
    assert SNI.encode() in flow.client_hellos[0]


def _reassemble_hello(frames: list[Frame], port: int) -> tuple[int, bytes]:
    """(segments, bytes) of the first client-to-server data on ``port``, in sequence order."""
    segments = {}
    for f in frames:
        pkt = l3(f.data)
        if TCP in pkt and pkt[TCP].dport == port and tcp_payload(pkt):
            segments[pkt[TCP].seq] = tcp_payload(pkt)
    if not segments:
        return 0, b""
    data = b""
    seq = min(segments)
    count = 0
    while seq in segments:
        data += segments[seq]
        seq += len(segments[seq])
        count += 1
    return count, data


@pytest.mark.parametrize("port", [443, 8080])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_clienthello_over_several_segments_arrives_whole(
    wire_pair: VethPair, cert: tuple[Path, Path], port: int, family: str
) -> None:
    # 150 ALPN names make a ClientHello of about 3 KB: three segments at MTU 1280. 443 passes as
    # a TLS port, 8080 by the ephemeral-source heuristic.
    pair = wire_pair
    start_peer(pair.server.ns, "tls-server", str(port), *map(str, cert), "100", port=port)
    host = pair.server.ip4 if family == "ipv4" else pair.server.ip6
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        out = run_peer(pair.client.ns, "tls-client", host, str(port), SNI, "150")
        assert out.strip() == "100"
        frames = frames_of(cap, until=lambda fs: tcp_flow(fs, port).ended)
    segments, data = _reassemble_hello(frames, port)
    assert data[:1] == b"\x16"
    record_length = int.from_bytes(data[3:5], "big")
    assert record_length > 2 * 1280
    assert segments >= 3
    assert len(data) >= 5 + record_length, "a continuation segment was filtered out"
    assert SNI.encode() in data[: 5 + record_length]
    assert b"x-egresswatch-0149" in data[: 5 + record_length]


# -- bulk stays in the kernel ------------------------------------------------------------------


@pytest.mark.slow
def test_tls_download_does_not_reach_python(pair: VethPair, cert: tuple[Path, Path]) -> None:
    need("curl")
    start_peer(pair.server.ns, "tls-server", "443", *map(str, cert), str(BULK), port=443)
    cap = capture(pair.client.ns, [pair.client.ifname])
    # The reference sees every packet to or from 443 (its buffer overflows; drops are counted).
    reference = capture(pair.client.ns, [pair.client.ifname], bpf="tcp port 443",
                        buffer_bytes=1 << 20)  # fmt: skip
    with cap, reference:
        done = pair.client.ns.run(
            "curl", "-sk", "--max-time", "60", "-o", "/dev/null", "-w", "%{size_download}",
            "--resolve", f"{SNI}:443:{pair.server.ip4}", f"https://{SNI}/",
            timeout=90,
        )  # fmt: skip
        assert int(done.stdout) == BULK
        frames = frames_of(cap, until=lambda fs: tcp_flow(fs, 443).ended)
        stats, ref = cap.stats(), reference.stats()
    on_wire = ref["kernel_packets"]
    flow = tcp_flow(frames, 443)
    assert len(flow.client_hellos) == 1
    assert on_wire > 1000
    assert len(frames) < 40, f"{len(frames)} frames reached Python"
    assert flow.data_from_server <= 3  # ServerHello and friends (records that start a segment)
    assert sum(len(f.data) for f in frames) < 100_000
    assert stats["filtered_out"] > 0.95 * on_wire


@pytest.mark.slow
@pytest.mark.parametrize("server_port", [443, 8080])
def test_plain_download_does_not_reach_python(wire_pair: VethPair, server_port: int) -> None:
    # Wire-sized segments: tens of thousands of packets, so "tiny" means something.
    pair = wire_pair
    start_peer(pair.server.ns, "tcp-sender", str(server_port), str(BULK), port=server_port)
    cap = capture(pair.client.ns, [pair.client.ifname])
    with cap:
        out = run_peer(pair.client.ns, "tcp-client", pair.server.ip4, str(server_port))
        assert int(out) == BULK
        frames = frames_of(cap, until=lambda fs: tcp_flow(fs, server_port).ended)
        stats = cap.stats()
    assert stats["interface_packets"] > BULK // 1280
    flow = tcp_flow(frames, server_port)
    assert flow.syns == 2
    assert flow.data_from_server == 0
    assert len(frames) < 20, f"{len(frames)} frames reached Python"


def test_gso_upload_stays_in_the_kernel(pair: VethPair) -> None:
    # This host's own upload is handed to the device as super-packets over continuation_max.
    size = 20 << 20
    start_peer(pair.server.ns, "tcp-sink", "443", port=443)
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        assert (
            int(run_peer(pair.client.ns, "tcp-upload", pair.server.ip4, "443", str(size))) == size
        )
        frames = frames_of(cap, until=lambda fs: tcp_flow(fs, 443).ended)
        stats = cap.stats()
    uploaded = sum(len(tcp_payload(l3(f.data))) for f in frames)
    assert stats["kernel_drops"] == 0
    # What passes is the small packets of slow start (under 16 KiB); the bulk does not.
    assert uploaded < size // 20, f"{uploaded} of {size} bytes reached Python"


def _covered(frames: list[Frame], port: int) -> tuple[int, int]:
    """(first sequence number, bytes covered) of the client-to-server data to ``port``."""
    segments = set()
    for f in frames:
        pkt = l3(f.data)
        if TCP in pkt and pkt[TCP].dport == port and tcp_payload(pkt):
            segments.add((pkt[TCP].seq, len(tcp_payload(pkt))))
    # Retransmissions repeat a sequence range; count each byte once.
    covered, end = 0, 0
    for seq, length in sorted(segments):
        covered += max(0, seq + length - max(seq, end))
        end = max(end, seq + length)
    return min(segments)[0] if segments else 0, covered


def fins_seen(count: int) -> Callable[[list[Frame]], bool]:
    """An ``until`` for :func:`frames_of`: ``count`` TCP FINs seen. It looks at each frame
    once, without scapy, so a test reading a flood keeps up with it."""
    seen = [0, 0]  # frames looked at, FINs

    def until(frames: list[Frame]) -> bool:
        for f in frames[seen[0] :]:
            data = f.data
            if data[0] >> 4 == 4 and data[9] == 6:
                seen[1] += data[((data[0] & 15) << 2) + 13] & 1
            elif data[0] >> 4 == 6 and data[6] == 6:
                seen[1] += data[53] & 1
        seen[0] = len(frames)
        return seen[1] >= count

    return until


def background_peer(ns: Netns, *args: str) -> subprocess.Popen[bytes]:
    """A client peer left running while the test reads the capture, as the agent does."""
    return ns.popen(sys.executable, __file__, *args, env=PEER_ENV, stdout=subprocess.PIPE)


def finished(proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"peer failed ({proc.returncode}): {err.decode()[-2000:]}")
    return out.decode()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_wire_sized_upload_stops_after_the_hello_window(wire_pair: VethPair, family: str) -> None:
    # Client-to-server data to a TLS port passes the static filter (it could be a ClientHello's
    # continuation); past the hello window the capture excludes the flow in the kernel.
    pair = wire_pair
    size = 16 << 20
    window = bpf.HELLO_WINDOW
    host = pair.server.ip4 if family == "ipv4" else pair.server.ip6
    start_peer(pair.server.ns, "tcp-sink", "443", port=443)
    # The reference counts every packet to 443 in the kernel (nobody reads it: it drops).
    reference = capture(pair.client.ns, [pair.client.ifname], bpf="tcp dst port 443",
                        buffer_bytes=1 << 16)  # fmt: skip
    with capture(pair.client.ns, [pair.client.ifname]) as cap, reference:
        upload = background_peer(pair.client.ns, "tcp-upload", host, "443", str(size))
        frames = frames_of(
            cap, until=lambda fs: upload.poll() is not None and tcp_flow(fs, 443).ended, limit=60
        )
        assert int(finished(upload)) == size
        stats = cap.stats()
        on_wire = reference.stats()["kernel_packets"]
    flow = tcp_flow(frames, 443)
    assert flow.syns == 2
    assert flow.ended  # FIN and RST pass an excluded flow's prelude
    _first, covered = _covered(frames, 443)
    # Every byte of the window arrived (a hello in it would be whole), and little more.
    assert window <= covered < window + 64 * 1280, covered
    assert on_wire > size // 1280
    assert stats["flows_excluded"] == 1
    assert stats["kernel_drops"] == 0
    assert len(frames) < 200, f"{len(frames)} frames reached Python"
    # The kernel stopped the flow: what was queued when it was told is all that was read and
    # dropped here (kernel_packets counts every frame that passed the filter).
    assert stats["excluded_frames"] < 2000
    assert stats["kernel_packets"] == stats["received"] + stats["excluded_frames"]
    assert stats["kernel_packets"] < on_wire // 4
    assert stats["excluded_now"] == 0  # its FIN ended the exclusion


def test_hello_behind_an_excluded_flow_still_arrives(
    wire_pair: VethPair, cert: tuple[Path, Path]
) -> None:
    # A bulk upload is excluded; a new connection from the same client to the same port, with a
    # ClientHello over three segments, still reaches the sensor whole.
    from probes.sensor import Sensor

    pair = wire_pair
    start_peer(pair.server.ns, "tcp-sink", "443", port=443)
    start_peer(pair.server.ns, "tls-server", "8443", *map(str, cert), "100", port=8443)
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        uploading = pair.client.ns.popen(
            sys.executable, __file__, "tcp-upload", pair.server.ip4, "443", str(64 << 20),
            env=PEER_ENV,
        )  # fmt: skip
        frames = frames_of(cap, until=lambda _fs: cap.stats()["flows_excluded"] > 0, settle=0)
        out = run_peer(pair.client.ns, "tls-client", pair.server.ip4, "8443", "big.egress.test",
                       "150")  # fmt: skip
        assert out.strip() == "100"
        frames += frames_of(cap, until=lambda fs: tcp_flow(fs, 8443).ended)
        assert uploading.wait(60) == 0
        frames += frames_of(cap, until=lambda fs: tcp_flow(fs, 443).ended)
        stats = cap.stats()
    sensor = Sensor()
    seen = [o for f in frames for o in sensor.frame(f.ts, f.linktype, f.data)]
    seen += sensor.finish()
    assert [(o.kind, o.sni, o.dport) for o in seen] == [("tls", "big.egress.test", 8443)]
    assert stats["flows_excluded"] == 1
    assert stats["kernel_drops"] == 0
    assert len(frames) < 300, f"{len(frames)} frames reached Python"


def test_kernel_memory_limits_the_flows_excluded_in_the_kernel(wire_pair: VethPair) -> None:
    # Before Linux 6.9 a socket may hold 20 KiB of filter (net.core.optmem_max), the old and
    # the new program together while one replaces the other: about a dozen IPv6 flows. The
    # capture holds fewer in the kernel and drops the rest's frames itself.
    pair = wire_pair
    optmem = Path("/proc/sys/net/core/optmem_max")
    with pair.client.ns.entered():
        if not optmem.exists():
            pytest.skip("net.core.optmem_max is not per network namespace on this kernel")
    pair.client.ns.run("sysctl", "-q", "-w", "net.core.optmem_max=20480")
    # Paced (24 x 0.4 MB/s) so that the test's reading keeps up with the flows the kernel
    # has no place for: drops here would be the test's, not the capture's.
    count, size = 24, 1 << 20
    start_peer(pair.server.ns, "tcp-sink", "443", port=443)
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        upload = background_peer(pair.client.ns, "tcp-upload-many", pair.server.ip6, "443",
                                 str(size), str(count), "0.15")  # fmt: skip
        frames = frames_of(cap, until=fins_seen(2 * count), limit=90, settle=0.5)
        assert finished(upload).split() == [str(size)] * count
        stats = cap.stats()
    assert stats["flows_excluded"] >= count
    assert 0 < stats["exclusion_capacity"] < count
    assert stats["refilter_failures"] == 0
    assert stats["kernel_drops"] == 0
    # Each flow's window reached Python, and not much more of the 24 MiB.
    uploaded = sum(len(tcp_payload(l3(f.data))) for f in frames)
    assert count * bpf.HELLO_WINDOW <= uploaded < count * (bpf.HELLO_WINDOW + 100 * 1280)
    # The flows beyond the kernel's places were read and dropped here, but only they: not
    # more than their share of the frames past the windows.
    over = count - stats["exclusion_capacity"]
    assert stats["excluded_frames"] < (over + 2) * (size - bpf.HELLO_WINDOW) / 1200, stats
    assert stats["excluded_now"] == stats["excluded_here_now"] == 0  # every FIN ended one


# -- DNS and QUIC ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_dns_query_and_answer_arrive(pair: VethPair, transport: str, family: str) -> None:
    start_peer(pair.server.ns, "dns-server", "53", port=53, udp=True)
    wait_for_port(pair.server.ns, 53)
    server = pair.server.ip4 if family == "ipv4" else pair.server.ip6
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        out = run_peer(pair.client.ns, "dns-query", server, "api.example.test", transport)
        assert out.split() == ["192.0.2.7"]

        def answered(fs: list[Frame]) -> bool:
            return any(b"\xc0\x00\x02\x07" in f.data and 53 in _ports(f) for f in fs)

        frames = frames_of(cap, until=answered)
    dns = [f for f in frames if 53 in _ports(f) and _payload(f)]
    queries = [f for f in dns if _ports(f)[1] == 53]
    answers = [f for f in dns if _ports(f)[0] == 53]
    assert queries and answers
    assert all(b"\x03api\x07example\x04test\x00" in f.data for f in queries)
    assert queries[0].pkttype == PACKET_OUTGOING
    assert answers[0].pkttype != PACKET_OUTGOING


def _ports(f: Frame) -> tuple[int, int]:
    pkt = l3(f.data)
    layer = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    return (layer.sport, layer.dport) if layer is not None else (0, 0)


def _payload(f: Frame) -> bytes:
    pkt = l3(f.data)
    return tcp_payload(pkt) or udp_payload(pkt)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_quic_initial_arrives_and_short_headers_do_not(
    pair: VethPair, cert: tuple[Path, Path], family: str
) -> None:
    start_peer(pair.server.ns, "quic-server", "443", *map(str, cert), port=443, udp=True)
    host = pair.server.ip4 if family == "ipv4" else pair.server.ip6
    cap = capture(pair.client.ns, [pair.client.ifname])
    reference = capture(pair.client.ns, [pair.client.ifname], bpf="udp port 443")
    with cap, reference:
        out = run_peer(pair.client.ns, "quic-client", host, "443", SNI, "200000")
        assert out.strip() == "200000"
        frames = frames_of(cap, settle=0.5)
        on_wire = frames_of(reference, settle=0.5)
    quic = [f for f in frames if 443 in _ports(f)]
    wire = [f for f in on_wire if 443 in _ports(f)]
    short_on_wire = [f for f in wire if not _payload(f)[0] & 0x80]
    assert len(short_on_wire) > 50, "the exchange did not get to 1-RTT packets"
    assert all(_payload(f)[0] & 0xC0 == 0xC0 for f in quic), "a short header reached Python"
    initials = [f for f in quic if _ports(f)[1] == 443 and _payload(f)[0] & 0xF0 == 0xC0]
    assert initials, "no client Initial"
    assert len(initials[0].data) >= 1200  # RFC 9000 14.1: a client Initial datagram is padded
    assert {f.data for f in wire if _payload(f)[0] & 0x80} == {f.data for f in quic}


def test_quic_like_datagrams(pair: VethPair) -> None:
    # Long header with the fixed bit passes on any port; short header and RTP do not.
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        for first in ("c3", "43", "80", "90"):
            run_peer(pair.client.ns, "udp-send", pair.server.ip4, "4433", first + "00000001" * 10)
        frames = frames_of(cap, settle=0.5)
    firsts = {_payload(f)[:1].hex() for f in frames if _ports(f)[1] == 4433}
    assert firsts == {"c3"}


# -- loopback, interfaces, the same view as tcpdump -----------------------------------------


@pytest.mark.parametrize("interfaces", [["lo"], None], ids=["lo", "all"])
def test_loopback_packets_are_seen_once(pair: VethPair, interfaces: list[str] | None) -> None:
    ns = pair.client.ns
    start_peer(ns, "dns-server", "53", port=53, udp=True)
    with capture(ns, interfaces) as cap:
        for server in ("127.0.0.1", "::1"):
            assert run_peer(ns, "dns-query", server, "loop.example.test", "udp").split() == [
                "192.0.2.7"
            ]
        frames = frames_of(cap, settle=0.5)
    dns = [f for f in frames if 53 in _ports(f)]
    assert all(f.interface == "lo" for f in dns)
    assert all(f.pkttype != PACKET_OUTGOING for f in dns)
    # One query and one answer per family, each once, not twice.
    assert sorted((f.data[0] >> 4, _ports(f)[1] == 53) for f in dns) == [
        (4, False), (4, True), (6, False), (6, True),
    ]  # fmt: skip


def test_several_interfaces_share_one_socket(pair: VethPair) -> None:
    # A second veth inside the client namespace: aux0 is captured, its peer aux1 and lo are not.
    ns = pair.client.ns
    ns.run("ip", "link", "add", "aux0", "type", "veth", "peer", "name", "aux1")
    ns.run("ip", "addr", "add", "10.201.0.1/24", "dev", "aux0")
    ns.run("ip", "neigh", "add", "10.201.0.9", "lladdr", "02:00:00:00:00:09", "dev", "aux0")
    ns.run("ip", "link", "set", "aux1", "up")
    ns.run("ip", "link", "set", "aux0", "up")
    wait_for_operstate(ns, "aux0")
    with capture(ns, ["aux0", pair.client.ifname]) as cap:
        assert cap.linktypes == {"aux0": LINKTYPE_RAW, pair.client.ifname: LINKTYPE_RAW}
        for dst in ("10.201.0.9", pair.server.ip4, "127.0.0.1"):
            run_peer(ns, "udp-send", dst, "53", "1234010000010000000000000000010001")
        frames = frames_of(cap, settle=0.5)
    seen = [(f.interface, str(l3(f.data).dst)) for f in frames if _ports(f)[1] == 53]
    assert sorted(seen) == [("aux0", "10.201.0.9"), (pair.client.ifname, pair.server.ip4)]


@pytest.mark.tcpdump
def test_tcpdump_with_the_same_filter_sees_the_same_packets(
    pair: VethPair, cert: tuple[Path, Path], tmp_path: Path
) -> None:
    need("curl")
    start_peer(pair.server.ns, "tls-server", "443", *map(str, cert), "20000", port=443)
    start_peer(pair.server.ns, "dns-server", "53", port=53, udp=True)
    pcap = tmp_path / "tcpdump.pcap"
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        dump = pair.client.ns.popen(
            "tcpdump", "-i", pair.client.ifname, "-U", "-w", str(pcap), cap.expression
        )
        _wait_listening(dump)
        for host in (pair.server.ip4, f"[{pair.server.ip6}]"):
            pair.client.ns.run(
                "curl", "-sk", "--max-time", "10", "-o", "/dev/null",
                "--resolve", f"{SNI}:443:{host}", f"https://{SNI}/",
            )  # fmt: skip
        run_peer(pair.client.ns, "dns-query", pair.server.ip4, "side.example.test", "udp")
        run_peer(pair.client.ns, "dns-query", pair.server.ip6, "side.example.test", "tcp")
        frames = frames_of(cap, settle=1.0)
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    ours = {f.data: f.ts for f in frames if _ports(f) != (0, 0)}
    theirs = {}
    with RawPcapReader(str(pcap)) as reader:
        for data, meta in reader:
            frame = bytes(data[14:])
            if _ports(Frame(0, 0, frame, "", 0)) != (0, 0):
                theirs[frame] = meta.sec + meta.usec / 1e6
    assert len(ours) > 20
    assert set(ours) == set(theirs)
    hellos = [d for d in ours if tcp_payload(l3(d))[:1] == b"\x16"]
    assert len(hellos) >= 4  # two ClientHellos and two ServerHellos
    # Both read the kernel's timestamp of the same packet.
    assert max(abs(ours[d] - theirs[d]) for d in ours) < 0.001


def _wait_listening(proc: subprocess.Popen[bytes], limit: float = 10.0) -> None:
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + limit
    seen = b""
    while time.monotonic() < deadline:
        seen += proc.stderr.read() or b""
        if b"listening on" in seen:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"tcpdump did not start: {seen.decode(errors='replace')}")


# -- through the sensor -----------------------------------------------------------------------


@pytest.mark.slow
def test_sensor_observes_every_handshake_through_live_capture(
    wire_pair: VethPair, cert: tuple[Path, Path]
) -> None:
    # The whole sensing path on what the kernel filter let through, during a 20 MB download:
    # one-segment and three-segment ClientHellos (IPv4, IPv6), DNS, a QUIC Initial.
    from probes.sensor import Sensor

    pair = wire_pair
    start_peer(pair.server.ns, "tls-server", "443", *map(str, cert), str(20 << 20), port=443)
    start_peer(pair.server.ns, "dns-server", "53", port=53, udp=True)
    start_peer(pair.server.ns, "quic-server", "4433", *map(str, cert), port=4433, udp=True)
    with capture(pair.client.ns, None) as cap:
        run_peer(pair.client.ns, "tls-client", pair.server.ip4, "443", "small.egress.test", "0")
        run_peer(pair.client.ns, "tls-client", pair.server.ip6, "443", "big.egress.test", "150")
        run_peer(pair.client.ns, "dns-query", pair.server.ip4, "api.example.test", "udp")
        run_peer(pair.client.ns, "quic-client", pair.server.ip6, "4433", "quic.egress.test", "100")
        frames = frames_of(cap, settle=1.0)
        stats = cap.stats()
    sensor = Sensor()
    seen = []
    for f in frames:
        seen += sensor.frame(f.ts, f.linktype, f.data)
    seen += sensor.finish()
    got = {(o.kind, o.sni or o.qname, o.dst) for o in seen}
    assert got == {
        ("tls", "small.egress.test", pair.server.ip4),
        ("tls", "big.egress.test", pair.server.ip6),
        ("dns", "api.example.test", pair.server.ip4),
        ("quic", "quic.egress.test", pair.server.ip6),
    }
    assert stats["kernel_drops"] == 0
    assert len(frames) < stats["interface_packets"] // 50  # 40 MB of downloads stayed out


# -- the object itself ------------------------------------------------------------------------


def test_no_such_interface(pair: VethPair) -> None:
    with pytest.raises(CaptureError, match=r"^no such interface: 'nope0'$") as info:
        capture(pair.client.ns, ["nope0"])
    assert info.value.path == "nope0"


def test_needs_root_or_cap_net_raw() -> None:
    need("setpriv")
    code = "from probes.live import LiveCapture; LiveCapture(['lo'])"
    done = subprocess.run(
        ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw",
         sys.executable, "-c", code],
        env=PEER_ENV, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.decode().strip().splitlines()[-1] == (
        "probes.errors.CaptureError: capture on lo needs root or CAP_NET_RAW"
    )


def test_bad_filter_and_empty_interface_list() -> None:
    with pytest.raises(CaptureError, match="bad capture filter"):
        LiveCapture(["lo"], bpf="tcp port banana")
    with pytest.raises(CaptureError, match="no interface given"):
        LiveCapture([])


def test_custom_filter(pair: VethPair) -> None:
    with capture(pair.client.ns, [pair.client.ifname], bpf="udp port 9999") as cap:
        for port in ("9999", "53", "9998"):
            run_peer(pair.client.ns, "udp-send", pair.server.ip4, port, "00")
        frames = frames_of(cap, settle=0.5)
    assert [_ports(f)[1] for f in frames] == [9999]


def test_kernel_timestamps(pair: VethPair) -> None:
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        before = time.time()
        run_peer(pair.client.ns, "udp-send", pair.server.ip4, "53", "00" * 12)
        after = time.time()
        time.sleep(0.3)  # the frame waits in the socket: its time is when it was sent
        (frame,) = [f for f in cap.read_frames(1.0) if _ports(f)[1] == 53]
    assert before <= frame.ts <= after


def test_drops_are_counted(pair: VethPair) -> None:
    # A small buffer, a burst of DNS the filter passes, nobody reading: the kernel drops some.
    with capture(pair.client.ns, [pair.client.ifname], buffer_bytes=4096) as cap:
        assert cap.stats()["buffer_bytes"] >= 4096
        run_peer(pair.client.ns, "udp-send", pair.server.ip4, "53", "00" * 100, "2000")
        time.sleep(0.2)
        received = 0
        for _ in range(100):
            batch = cap.read_batch(0.05)
            received += len(batch)
            if not batch:
                break
        stats = cap.stats()
    assert stats["kernel_drops"] > 0
    assert stats["received"] == received
    assert stats["kernel_packets"] >= 2000
    assert stats["kernel_packets"] == stats["received"] + stats["kernel_drops"]


def test_a_busy_read_lingers_and_a_quiet_one_does_not(pair: VethPair) -> None:
    # Three datagrams 150 ms apart. The first comes after a quiet spell: handed over at once
    # (process attribution looks a new flow's owner up at its first packet, before a short
    # client exits). The second comes while the capture is busy (its last read was less than
    # ``linger`` ago): the read gathers the third with it.
    # On a loaded machine a read may come late and find two datagrams already there, so the
    # exact split is checked only where scheduling cannot change it: a lingering read gathers
    # what comes after it, and with no linger the quiet first datagram comes alone.
    for linger, expected in ((0.6, [1, 2]), (0.0, [1, 1, 1])):
        with capture(pair.client.ns, [pair.client.ifname], bpf="udp port 53",
                     linger=linger) as cap:  # fmt: skip
            sender = threading.Thread(
                target=run_peer,
                args=(pair.client.ns, "udp-send", pair.server.ip4, "53", "00" * 12, "3", "0.15"),
            )
            sender.start()
            reads = []
            while sum(reads) < 3:
                got = cap.read_frames(30.0)
                assert got, "the datagrams did not arrive"
                reads.append(len(got))
            sender.join()
            if linger:
                assert reads[-1] >= 2, reads
                assert len(reads) <= len(expected), reads
            else:
                assert reads[0] == 1, reads
    # A filter nothing in the test matches: the kernel's own IPv6 chatter on a new link (MLD
    # reports, which carry a hop-by-hop header the egress filter lets through) must not count.
    with capture(pair.client.ns, [pair.client.ifname], bpf="udp port 53") as cap:
        assert cap.linger == 0.005
        started = time.monotonic()
        assert cap.read_frames(0.05) == []  # nothing came: back after the timeout
        assert time.monotonic() - started < 0.5
    for bad in (-0.1, 2.0):
        with pytest.raises(CaptureError, match="linger must be 0 to 1 second"):
            LiveCapture(["lo"], linger=bad)


def test_default_buffer_and_exclusions(pair: VethPair) -> None:
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        stats = cap.stats()
        assert cap.buffer_bytes >= 32 << 20  # the kernel doubles what it is asked for
        assert stats["exclusion_capacity"] == 128
        assert stats["flows_excluded"] == stats["excluded_frames"] == 0
    # Only the egress filter excludes flows: a caller's own expression gets what it asked for.
    with capture(pair.client.ns, [pair.client.ifname], bpf="tcp") as cap:
        assert "flows_excluded" not in cap.stats()
    off = bpf.FilterSettings(hello_window=None)
    with capture(pair.client.ns, [pair.client.ifname], settings=off) as cap:
        assert "flows_excluded" not in cap.stats()


def test_fileno_iteration_and_close(pair: VethPair) -> None:
    import selectors

    cap = capture(pair.client.ns, [pair.client.ifname], bpf="udp port 53")
    with selectors.DefaultSelector() as sel:
        sel.register(cap, selectors.EVENT_READ)
        assert sel.select(0.05) == []
        run_peer(pair.client.ns, "udp-send", pair.server.ip4, "53", "00" * 12, "3")
        assert sel.select(2.0)
        sel.unregister(cap)
    got = []
    for ts, linktype, frame in cap:
        got.append((ts, linktype, frame))
        if len(got) == 3:
            threading.Timer(0.1, cap.close).start()
    assert len(got) == 3  # the loop ended when close() was called
    with pytest.raises(CaptureError, match="closed"):
        cap.read_batch(0)
    assert cap.stats()["received"] == 3
    cap.close()


def test_default_filter_is_the_egress_filter(pair: VethPair) -> None:
    with pair.client.ns.entered():
        expected = bpf.filter_expression()
    with capture(pair.client.ns, [pair.client.ifname]) as cap:
        assert cap.expression == expected
        assert cap.program.expression == f"({expected})"
        assert cap.interfaces == (pair.client.ifname,)
    with capture(pair.client.ns, ["any"]) as cap:  # libpcap's name for all interfaces
        assert cap.interfaces is None
        assert cap.linktypes == {"any": LINKTYPE_RAW}
        assert cap.program.expression == f"not (ifindex 1 and outbound) and ({expected})"
    with pytest.raises(CaptureError, match="either bpf or settings"):
        LiveCapture(["lo"], bpf="udp", settings=bpf.FilterSettings())


# -- the peers: this file run as a script inside a namespace ----------------------------------


def peer(argv: list[str]) -> None:
    """Servers and clients for the tests above; every one ends within two minutes."""
    import ssl

    signal.alarm(120)
    mode, *args = argv

    # The same dual-stack listener and accept loop as the end-to-end servers.
    from tests.e2e_servers import _listener as listener
    from tests.e2e_servers import _serve as serve

    def send_bulk(conn: socket.socket | ssl.SSLSocket, size: int) -> None:
        # No 0x16 byte: a segment of random bytes that happened to start 16 03 0x would pass
        # as a TLS record (about 1 test run in 100 with 40,000 segments).
        chunk = os.urandom(1 << 16).replace(b"\x16", b"\x17")
        left = size
        while left:
            left -= conn.send(chunk[: min(left, len(chunk))])

    def connect(host: str, port: int) -> socket.socket:
        return socket.create_connection((host, port), timeout=30)

    if mode == "tls-server":  # PORT CERT KEY BODY_SIZE: HTTP/1.1 over TLS
        port, certfile, keyfile, size = int(args[0]), args[1], args[2], int(args[3])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)

        def tls(conn: socket.socket) -> None:
            conn.settimeout(30)
            with ctx.wrap_socket(conn, server_side=True) as tconn:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    more = tconn.recv(4096)
                    if not more:
                        return
                    request += more
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                tconn.sendall(head.encode())
                send_bulk(tconn, size)

        serve(listener(port), tls)
    elif mode == "tcp-sender":  # PORT SIZE: sends SIZE bytes to whoever connects
        size = int(args[1])

        def sender(conn: socket.socket) -> None:
            with conn:
                send_bulk(conn, size)

        serve(listener(int(args[0])), sender)
    elif mode == "tcp-sink":  # PORT: reads to EOF, answers with the count

        def sink(conn: socket.socket) -> None:
            with conn:
                total = 0
                while data := conn.recv(1 << 16):
                    total += len(data)
                conn.sendall(str(total).encode())

        serve(listener(int(args[0])), sink)
    elif mode == "dns-server":  # PORT: every A question gets 192.0.2.7, on UDP and TCP
        import dns.message
        import dns.rrset

        def answer(wire: bytes) -> bytes:
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            name = query.question[0].name
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.7"))
            return response.to_wire()

        udp, tcp = listener(int(args[0]), socket.SOCK_DGRAM), listener(int(args[0]))

        def over_tcp(conn: socket.socket) -> None:
            with conn:
                size = int.from_bytes(conn.recv(2), "big")
                wire = b""
                while len(wire) < size:
                    wire += conn.recv(size - len(wire))
                reply = answer(wire)
                conn.sendall(len(reply).to_bytes(2, "big") + reply)

        threading.Thread(target=serve, args=(tcp, over_tcp), daemon=True).start()
        while True:
            wire, addr = udp.recvfrom(4096)
            udp.sendto(answer(wire), addr)
    elif mode == "quic-server":  # PORT CERT KEY: echoes every stream
        import asyncio

        from aioquic.asyncio import serve as quic_serve
        from aioquic.quic.configuration import QuicConfiguration

        config = QuicConfiguration(is_client=False, alpn_protocols=["echo"])
        config.load_cert_chain(args[1], args[2])

        def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def echo() -> None:
                writer.write(await reader.read())
                writer.write_eof()

            asyncio.ensure_future(echo())  # noqa: RUF006 - lives as long as the server

        async def main() -> None:
            await quic_serve("::", int(args[0]), configuration=config, stream_handler=on_stream)
            await asyncio.Event().wait()

        asyncio.run(main())
    elif mode == "tls-client":  # HOST PORT SNI ALPN_COUNT: prints the body size
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if int(args[3]):
            ctx.set_alpn_protocols([f"x-egresswatch-{i:04d}" for i in range(int(args[3]))])
        with ctx.wrap_socket(connect(args[0], int(args[1])), server_hostname=args[2]) as tconn:
            tconn.sendall(f"GET / HTTP/1.1\r\nHost: {args[2]}\r\n\r\n".encode())
            data = bytearray()
            while more := tconn.recv(1 << 16):
                data += more
        print(len(data) - data.index(b"\r\n\r\n") - 4)
    elif mode == "tcp-client":  # HOST PORT: reads to EOF, prints the count
        total = 0
        with connect(args[0], int(args[1])) as conn:
            while data := conn.recv(1 << 20):
                total += len(data)
        print(total)
    elif mode == "tcp-upload":  # HOST PORT SIZE: sends SIZE bytes, prints the server's count
        with connect(args[0], int(args[1])) as conn:
            send_bulk(conn, int(args[2]))
            conn.shutdown(socket.SHUT_WR)
            print(conn.recv(100).decode())
    elif mode == "tcp-upload-many":  # HOST PORT SIZE COUNT PAUSE: COUNT uploads at once
        pause = float(args[4])

        def paced(conn: socket.socket, size: int) -> None:
            chunk = os.urandom(1 << 16).replace(b"\x16", b"\x17")
            for offset in range(0, size, len(chunk)):
                conn.sendall(chunk[: size - offset])
                time.sleep(pause)

        conns = [connect(args[0], int(args[1])) for _ in range(int(args[3]))]
        workers = [threading.Thread(target=paced, args=(c, int(args[2]))) for c in conns]
        for worker in workers:
            worker.start()
        for worker, conn in zip(workers, conns, strict=True):
            worker.join()
            conn.shutdown(socket.SHUT_WR)
        for conn in conns:
            print(conn.recv(100).decode())
            conn.close()
    elif mode == "dns-query":  # SERVER NAME udp|tcp: prints the A records
        import dns.message
        import dns.query

        query = dns.message.make_query(args[1], "A")
        ask = dns.query.udp if args[2] == "udp" else dns.query.tcp
        response = ask(query, args[0], timeout=5)
        print(" ".join(rr.to_text() for rrset in response.answer for rr in rrset))
    elif mode == "udp-send":  # HOST PORT HEX [COUNT [GAP]]: GAP seconds between datagrams
        family = socket.AF_INET6 if ":" in args[0] else socket.AF_INET
        gap = float(args[4]) if len(args) > 4 else 0.0
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for i in range(int(args[3]) if len(args) > 3 else 1):
                if i and gap:
                    time.sleep(gap)
                sock.sendto(bytes.fromhex(args[2]), (args[0], int(args[1])))
    elif mode == "quic-client":  # HOST PORT SNI SIZE: echoes SIZE bytes, prints the count
        import asyncio

        from aioquic.asyncio import connect as quic_connect
        from aioquic.quic.configuration import QuicConfiguration

        config = QuicConfiguration(is_client=True, alpn_protocols=["echo"], server_name=args[2])
        config.verify_mode = ssl.CERT_NONE

        async def main() -> int:
            async with quic_connect(args[0], int(args[1]), configuration=config) as client:
                reader, writer = await client.create_stream()
                writer.write(os.urandom(int(args[3])))
                writer.write_eof()
                return len(await asyncio.wait_for(reader.read(), 30))

        print(asyncio.run(main()))
    else:
        raise SystemExit(f"unknown peer mode {mode!r}")


if __name__ == "__main__":
    peer(sys.argv[1:])
