"""The kernel-side capture filter: only handshakes, DNS and what reassembly needs reach Python.

:func:`filter_expression` writes a libpcap filter expression from :class:`FilterSettings`;
:func:`compile_filter` compiles it with libpcap through scapy for a link type (``DLT_RAW`` for
the cooked packet socket of :mod:`probes.live`); :func:`attach` hands the program to a socket
with ``SO_ATTACH_FILTER``. Bulk transfers are rejected in the kernel and never cost a system
call, a copy or a Python object.

What passes, for IPv4 and IPv6:

- TCP segments with SYN (the reassembler needs the initial sequence number), FIN or RST (the
  flow ends);
- TCP segments whose payload starts a TLS handshake record (``16 03 00``..``16 03 04``), on any
  port and in either direction;
- client-to-server TCP data, by the port heuristic below, for the segments that carry the rest
  of a ClientHello longer than one segment (they look like random bytes), up to
  ``continuation_max`` (16 KiB) per packet;
- DNS: UDP and TCP with port 53 on either side (``dns_ports``);
- QUIC long-header datagrams: UDP whose first payload byte has the header-form and fixed bits
  (``0xc0``) set; ``quic_fixed_bit=False`` asks for the header-form bit (``0x80``) alone;
- IP fragments (IPv4 MF or a fragment offset; IPv6 with a Fragment header), since a fragment
  cannot be classified without reassembly.

Every accepted packet is kept whole (:data:`SNAPLEN`, 256 KiB, above any GSO/GRO
super-packet).

IPv6 is written with ``ip6[...]`` offsets because libpcap's ``tcp[...]`` and ``udp[...]`` index
IPv4 only. Those offsets hold for the common case of TCP or UDP straight after the fixed 40-byte
header; an IPv6 packet whose next header is an extension header (Hop-by-Hop, Routing, Fragment,
Destination Options, AH, Mobility, HIP, Shim6, experimental) is passed whole and left to the
decoder.

The client-to-server heuristic, and its limits
==============================================

A continuation segment of a ClientHello carries no marker; the filter keeps TCP segments with
payload (never bare ACKs) when

- the destination port is one of ``tls_ports`` (443, 8443, 853, 993, 995, ...), or
- the source port is at or above the bottom of the local ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``, 32768 by default) and the destination port
  below it: a client talking to a server.

A download comes from a server port to an ephemeral port and fails both tests, so it stays in
the kernel. The top of the range is not used: a source port above it is still a client (other
systems pick from 49152-65535; Windows in a VM behind this host) and a download never matches
anyway, since its destination port is ephemeral.

Packets longer than ``continuation_max`` (16 KiB) do not pass by this rule. Those are the GSO
super-packets (up to 64 KB) in which a host hands its own uploads to the network device, and
which the capture point sees before segmentation. A ClientHello is written in one go, so on the
host that sends it it is one super-packet starting with its record header (passed by the record
rule); its continuations are separate packets only on the wire (forwarded or received traffic,
at most an MTU each) or merged by GRO (only the ClientHello's own tail, since a TLS client sends
nothing more until the server answers). Measured with bench/live_cpu.py (veth with GSO,
2 vCPUs, tcpdump beside it): a 1 GB upload to port 443 passed 10,000-16,700 frames to Python
(0.4-0.8 s of CPU, 3,000-10,000 of them dropped by the full socket buffer, where handshakes of
other connections would have been lost too) without the cap, and 120-360 frames with it (0.02-
0.04 s, no drops).

Limits, each a trade made on purpose:

- **Wire-sized uploads reach Python, up to the hello window.** Client-to-server data to a TLS
  port or from an ephemeral port is indistinguishable from a ClientHello continuation without
  per-flow state, which a classic BPF program cannot keep. Where uploads are seen as
  wire-sized segments (a device without TSO/GSO, traffic forwarded from other hosts without
  GRO), the live capture keeps that state in Python instead and stops each flow in the kernel
  past its first ``hello_window`` bytes (below).
- **0-RTT and TCP Fast Open.** Data sent right behind a multi-segment ClientHello can be GRO-
  merged with its tail into one packet over ``continuation_max``, which is then rejected.
- **Continuations to an unlisted high port are lost.** A TLS server on a port at or above the
  ephemeral floor and not in ``tls_ports`` (a dev server on 50051, a port-forward on 40000):
  the first segment passes by its record header, the rest does not. Add the port to
  ``tls_ports``.
- **Other clients' ranges.** A client whose ephemeral range starts below this host's floor (an
  administrator's 1024-65535) to a server port above that floor is not recognised.
- **Traffic this host serves.** Uploads *to* a server on this host are client-to-server too
  and pass.
- **Extension headers and tunnels.** IPv6 with extension headers passes whole; traffic inside
  GRE, VXLAN, IP-in-IP or IPsec on the outer interface does not pass (capture on the tunnel
  interface, where it is plain).
- **Fragments** all pass, in both directions.
- **QUIC.** Requiring the fixed bit keeps RTP/SRTP media (first byte ``10xxxxxx``) out of
  Python; a client that greases the QUIC bit (RFC 9287) on its very first Initial would be
  missed. Handshake, 0-RTT and Retry packets also have the long-header form and pass.

Flows past their hello window
=============================

A ClientHello lies within the first 64 KiB of its TLS stream (the reassembler's bound), and a
plaintext prelude before it (STARTTLS, HTTP CONNECT) is short; ``hello_window`` (128 KiB)
covers both. :class:`probes.live.FlowExclusions` follows the stream offset of each
client-to-server flow the filter passes (from its SYN) and, when one goes past the window, the
capture attaches :func:`with_exclusions`: the same program behind a prelude that rejects that
flow's data segments (its SYN, FIN and RST still pass, so its end, or a new connection on the
same ports, is seen). The prelude compares the addresses and ports exactly; each flow costs
the kernel one instruction per packet while the ports differ, and at most 128 flows are held
(fewer where the kernel's socket memory, ``net.core.optmem_max``, does not allow more).

Measured with bench/live_cpu.py (2 vCPUs, load average under 1.5, veth with TSO/GSO/GRO off:
1448-byte segments at 4-8 Gbit/s, the ``egresswatch run`` agent next to tcpdump with the static
filter): a 1 GiB upload to port 443 passed 743,000 frames to tcpdump (0.28 s of CPU); the agent
read 118,000-244,000 of them, lost 500,000-624,000 more in its socket (handshakes of other
connections would have gone with them) and used 0.77-1.46 s. With the flow excluded past its
window: 95 frames, no drop, 0.014 s (tcpdump 0.21 s). With GSO on, the small packets of the same
upload: 740-770 frames and 0.09 s before, 8 frames and 0.006 s after. With
``veth_pair(gso=False)`` (0.4 Gbit/s), 1 GiB: 751,835 frames and 5.9 s before, 95 frames and
0.12-0.19 s after (tcpdump 1.1-2.1 s).

Live-only primitives (``ifindex``, ``outbound``) are added by :func:`live_expression`; they read
kernel metadata and cannot be tested against a savefile, so the protocol part stays separate
and is checked with ``tcpdump -r`` in the tests (tests/probes/test_bpf.py).
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probes.errors import CaptureError

DLT_RAW = 12
"""libpcap's DLT for raw IPv4/IPv6 on Linux; files record it as LINKTYPE_RAW (101)."""
DLT_EN10MB = 1
"""Ethernet."""
SNAPLEN = 262144
"""Bytes kept of each accepted packet: tcpdump's default, above any GSO/GRO packet in practice."""

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
BPF_MAXINSNS = 4096
"""The kernel's limit on a classic socket filter."""

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h) for the hand-written prelude.
_BPF_RET_K = 0x06  # ret #k
_LDB_ABS = 0x30  # ldb [k]
_LDH_ABS = 0x28  # ldh [k]
_LDW_ABS = 0x20  # ld [k]
_LDB_IND = 0x50  # ldb [x + k]
_LDW_IND = 0x40  # ld [x + k]
_LDX_MSH = 0xB1  # ldx 4 * ([k] & 0xf): the IPv4 header length
_LD_MEM = 0x60  # ld M[k] (scratch memory, 16 words)
_ST = 0x02  # st M[k]
_RSH_K = 0x74  # rsh #k
_JA = 0x05  # ja +k (32-bit offset: the only jump that reaches far)
_JEQ_K = 0x15  # jeq #k, +jt, +jf (8-bit offsets)
_JSET_K = 0x45  # jset #k, +jt, +jf

EXCLUDED_V4_INSNS = 7
"""Instructions the prelude of :func:`with_exclusions` spends per IPv4 flow."""
EXCLUDED_V6_INSNS = 19
"""Instructions the prelude of :func:`with_exclusions` spends per IPv6 flow."""
EXCLUSION_OVERHEAD = 49
"""Instructions of the prelude besides its flows (version, protocol and flag tests, loads)."""

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)

DEFAULT_TLS_PORTS: tuple[int, ...] = (
    443,  # HTTPS
    8443,  # HTTPS, alternate
    9443,  # HTTPS, alternate
    4443,  # HTTPS, alternate
    6443,  # Kubernetes API
    853,  # DNS over TLS, DNS over QUIC
    993,  # IMAPS
    995,  # POP3S
    465,  # SMTPS
    587,  # submission (STARTTLS)
    636,  # LDAPS
    3269,  # LDAP global catalogue over TLS
    5061,  # SIP over TLS
    5223,  # XMPP over TLS, APNs
    8883,  # MQTT over TLS
    990,  # FTPS control
    992,  # telnet over TLS
    563,  # NNTPS
)
"""Destination ports whose client-to-server data always passes (for ClientHello continuations)."""

HELLO_WINDOW = 128 << 10
"""Default :attr:`FilterSettings.hello_window`: the reassembler's 64 KiB for the hello
(:class:`probes.tcp.TcpReassembler` ``max_flow_bytes``) plus as much again for a plaintext
prelude before it (STARTTLS, HTTP CONNECT, PostgreSQL's SSLRequest)."""

IPV6_EXTENSION_HEADERS: tuple[int, ...] = (0, 43, 44, 51, 60, 135, 139, 140, 253, 254)
"""Next-header values after which the fixed ``ip6[40...]`` offsets do not hold (RFC 8200 4,
RFC 7045): the packet is passed whole. 44 is the Fragment header."""

Instruction = tuple[int, int, int, int]
"""One classic BPF instruction: ``(code, jt, jf, k)``."""


class sock_filter(ctypes.Structure):  # the kernel's name (linux/filter.h)
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class sock_fprog(ctypes.Structure):  # the kernel's name (linux/filter.h)
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(sock_filter)))


def local_port_range(path: str | Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The local ephemeral port range, ``(low, high)``; the kernel default when unreadable.

    The file is per network namespace: it is read in the namespace of the calling thread.
    """
    try:
        low, high = (int(part) for part in Path(path).read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    if not 0 < low <= high <= 65535:
        return DEFAULT_EPHEMERAL_RANGE
    return low, high


def _ports(ports: Iterable[int], what: str) -> tuple[int, ...]:
    out = tuple(sorted(set(ports)))
    for port in out:
        if not 0 < port < 65536:
            msg = f"{what}: port out of range: {port!r}"
            raise ValueError(msg)
    return out


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """What the kernel filter lets through; see the module docstring."""

    tls_ports: Sequence[int] = DEFAULT_TLS_PORTS
    """Destination ports whose client-to-server data passes (ClientHello continuations)."""
    ephemeral_floor: int | None = None
    """Lowest local ephemeral port; ``None`` reads it from ``ip_local_port_range``."""
    dns_ports: Sequence[int] = (53,)
    """UDP and TCP ports whose traffic passes in both directions."""
    continuation_max: int = 16384
    """Longest packet (IP header on) that passes only by the client-to-server rule.

    Read from the IP length fields, so the expression means the same on any link type. A
    length field of 0 (a GSO super-packet above 64 KB, "BIG TCP") counts as too long."""
    quic_fixed_bit: bool = True
    """QUIC long headers must also have the fixed bit (``0x40``); keeps RTP/SRTP out."""
    extra: str | None = field(default=None)
    """A libpcap expression ORed in, for anything else the caller wants to see."""
    hello_window: int | None = HELLO_WINDOW
    """Client-to-server bytes of a TCP flow within which its ClientHello must lie; a live
    capture stops passing the flow's later data in the kernel (:func:`with_exclusions`).
    ``None`` never stops a flow. Not part of :func:`filter_expression`."""

    def __post_init__(self) -> None:
        _ports(self.tls_ports, "tls_ports")
        _ports(self.dns_ports, "dns_ports")
        if not self.dns_ports:
            msg = "dns_ports: at least one port is needed"
            raise ValueError(msg)
        if not 40 < self.continuation_max <= 65535:
            msg = f"continuation_max out of range: {self.continuation_max!r}"
            raise ValueError(msg)
        if self.ephemeral_floor is not None and not 0 < self.ephemeral_floor < 65536:
            msg = f"ephemeral_floor out of range: {self.ephemeral_floor!r}"
            raise ValueError(msg)
        if self.hello_window is not None and not 0 < self.hello_window < 1 << 31:
            msg = f"hello_window out of range: {self.hello_window!r}"
            raise ValueError(msg)


def _either(field_a: str, field_b: str, ports: Sequence[int]) -> str:
    return " or ".join(f"{f} = {p}" for p in ports for f in (field_a, field_b))


def _any_of(field_: str, values: Sequence[int]) -> str:
    return " or ".join(f"{field_} = {v}" for v in values)


def filter_parts(settings: FilterSettings | None = None) -> tuple[str, str]:
    """The two halves of the filter: ``(whole, continuation)``.

    ``whole`` passes handshake starts, SYN/FIN/RST, DNS, QUIC long headers, fragments and IPv6
    with extension headers; ``continuation`` passes client-to-server TCP data by the port
    heuristic, up to ``continuation_max`` bytes per packet (by the IP length field).

    Loads of payload bytes are each guarded by a payload length test that comes first: a classic
    BPF program that loads past the end of a packet returns 0 at once, which would reject a
    packet that a later alternative accepts.
    """
    s = settings or FilterSettings()
    floor = s.ephemeral_floor if s.ephemeral_floor is not None else local_port_range()[0]
    tls = _ports(s.tls_ports, "tls_ports")
    dns = _ports(s.dns_ports, "dns_ports")
    quic = 0xC0 if s.quic_fixed_bit else 0x80

    # IPv4: libpcap's tcp[] and udp[] follow the IHL and test the fragment offset themselves.
    doff4 = "((tcp[12] & 0xf0) >> 2)"
    paylen4 = f"(ip[2:2] - ((ip[0] & 0x0f) << 2) - {doff4})"
    record4 = f"({paylen4} > 2 and tcp[{doff4}:2] = 0x1603 and tcp[{doff4} + 2] < 5)"
    whole4 = (
        "(ip and ((ip[6:2] & 0x3fff != 0)"
        f" or (ip[9] = 6 and ((tcp[13] & 0x07 != 0)"
        f" or {_either('tcp[0:2]', 'tcp[2:2]', dns)} or {record4}))"
        f" or (ip[9] = 17 and ({_either('udp[0:2]', 'udp[2:2]', dns)}"
        f" or (udp[4:2] > 8 and udp[8] & {quic:#04x} = {quic:#04x})))))"
    )
    cont4 = (
        f"(ip and ip[9] = 6 and {paylen4} > 0 and ({_any_of('tcp[2:2]', tls)}"
        f" or (tcp[0:2] >= {floor} and tcp[2:2] < {floor}))"
        f" and ip[2:2] != 0 and ip[2:2] <= {s.continuation_max})"
    )

    # IPv6 without extension headers: TCP or UDP header at offset 40.
    doff6 = "((ip6[52] & 0xf0) >> 2)"
    paylen6 = f"(ip6[4:2] - {doff6})"
    record6 = f"({paylen6} > 2 and ip6[40 + {doff6}:2] = 0x1603 and ip6[42 + {doff6}] < 5)"
    whole6 = (
        f"(ip6 and ({_any_of('ip6[6]', IPV6_EXTENSION_HEADERS)}"
        f" or (ip6[6] = 6 and ((ip6[53] & 0x07 != 0)"
        f" or {_either('ip6[40:2]', 'ip6[42:2]', dns)} or {record6}))"
        f" or (ip6[6] = 17 and ({_either('ip6[40:2]', 'ip6[42:2]', dns)}"
        f" or (ip6[44:2] > 8 and ip6[48] & {quic:#04x} = {quic:#04x})))))"
    )
    cont6 = (
        f"(ip6 and ip6[6] = 6 and {paylen6} > 0 and ({_any_of('ip6[42:2]', tls)}"
        f" or (ip6[40:2] >= {floor} and ip6[42:2] < {floor}))"
        f" and ip6[4:2] != 0 and ip6[4:2] <= {s.continuation_max - 40})"
    )
    whole = f"{whole4} or {whole6}"
    if s.extra:
        whole = f"{whole} or ({s.extra})"
    return whole, f"{cont4} or {cont6}"


def filter_expression(settings: FilterSettings | None = None) -> str:
    """The filter as one libpcap expression, as tcpdump takes it (also on a savefile)."""
    whole, continuation = filter_parts(settings)
    return f"({whole}) or ({continuation})"


def live_expression(
    expression: str, *, ifindexes: Sequence[int] = (), loopback_ifindex: int | None = None
) -> str:
    """``expression`` limited to ``ifindexes`` (none: every interface), minus loopback duplicates.

    The kernel shows each loopback packet twice, outgoing and incoming; as libpcap does, the
    outgoing copy is dropped, here in the kernel. ``loopback_ifindex`` is the index of ``lo``
    when the capture can see it. ``ifindex`` and ``outbound`` read the packet's metadata, so the
    result works on a live socket only, never on a savefile.
    """
    parts = []
    if ifindexes:
        parts.append("(" + " or ".join(f"ifindex {i}" for i in sorted(set(ifindexes))) + ")")
    if loopback_ifindex is not None:
        parts.append(f"not (ifindex {loopback_ifindex} and outbound)")
    if expression.strip():
        parts.append(f"({expression})")
    return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled classic BPF program."""

    expression: str
    """The libpcap expression it was compiled from."""
    linktype: int
    """The DLT it was compiled for."""
    instructions: tuple[Instruction, ...]
    """``(code, jt, jf, k)`` per instruction; accepting returns give :data:`SNAPLEN`."""


REJECT_ALL = Program("less 0", DLT_RAW, ((_BPF_RET_K, 0, 0, 0),))
"""``ret #0``: attached before binding so nothing unfiltered is queued."""


def compile_expression(expression: str, linktype: int = DLT_RAW) -> Program:
    """Compile ``expression`` with libpcap (through scapy) for ``linktype``.

    Raises :class:`~probes.errors.CaptureError` naming the expression when libpcap refuses it or
    is missing.
    """
    try:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        msg = f"scapy is not available to compile the capture filter: {exc}"
        raise CaptureError(msg) from exc
    try:
        bpf = compile_filter(expression, linktype=linktype)
    except ImportError as exc:
        msg = "libpcap is needed to compile the capture filter (apt install libpcap0.8)"
        raise CaptureError(msg) from exc
    except Scapy_Exception as exc:
        msg = f"bad capture filter {expression!r}: {exc}"
        raise CaptureError(msg) from exc
    try:
        count = int(bpf.bf_len)
        insns = []
        for i in range(count):
            ins = bpf.bf_insns[i]
            code, jt, jf, k = int(ins.code), int(ins.jt), int(ins.jf), int(ins.k) & 0xFFFFFFFF
            if code == _BPF_RET_K and k != 0:  # accepting: keep the whole packet
                k = SNAPLEN
            insns.append((code, jt, jf, k))
    finally:
        free_filter(bpf)
    if count > BPF_MAXINSNS:
        msg = f"capture filter compiles to {count} instructions, above the kernel's {BPF_MAXINSNS}"
        raise CaptureError(msg)
    return Program(expression, linktype, tuple(insns))


def compile_filter(
    settings: FilterSettings | None = None,
    *,
    linktype: int = DLT_RAW,
    ifindexes: Sequence[int] = (),
    loopback_ifindex: int | None = None,
) -> Program:
    """The egress filter for ``settings``, with the live-only tests of :func:`live_expression`."""
    expression = live_expression(
        filter_expression(settings), ifindexes=ifindexes, loopback_ifindex=loopback_ifindex
    )
    return compile_expression(expression, linktype)


def attach(sock: socket.socket, program: Program) -> None:
    """Attach ``program`` to ``sock`` (``SO_ATTACH_FILTER``), replacing any filter it had."""
    insns = (sock_filter * len(program.instructions))(
        *(sock_filter(code, jt, jf, k) for code, jt, jf, k in program.instructions)
    )
    fprog = sock_fprog(len(program.instructions), insns)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    # setsockopt copies the program into the kernel; insns may be freed after this line.
    del insns


def exclusion_capacity(program: Program) -> int:
    """How many IPv6 flows (the larger kind) :func:`with_exclusions` can put before
    ``program`` within the kernel's :data:`BPF_MAXINSNS`."""
    room = BPF_MAXINSNS - len(program.instructions) - EXCLUSION_OVERHEAD
    return max(0, room // EXCLUDED_V6_INSNS)


def with_exclusions(program: Program, flows: Iterable[bytes]) -> Program:
    """``program`` behind a prelude that rejects the data segments of ``flows``.

    Each flow is one direction of a TCP connection, as the bytes the prelude compares: the
    IPv4 source and destination addresses followed by the four bytes of source and destination
    port (12 bytes; ``ip[12:20] + tcp[0:4]``), or the IPv6 ones (36 bytes; ``ip6[8:44]``).
    Segments of those flows with SYN, FIN or RST still go on to ``program`` (a new connection
    on the same ports, the end of this one), as do IPv4 fragments with an offset, IPv6 with
    extension headers and everything that is not TCP. The result is for :data:`DLT_RAW`, like
    the programs of :class:`~probes.live.LiveCapture`; its ``expression`` is ``program``'s.

    A flow costs the kernel one comparison per packet while its ports differ (a packet's port
    pair is loaded once), :data:`EXCLUDED_V4_INSNS` or :data:`EXCLUDED_V6_INSNS` instructions
    of program. Raises :class:`ValueError` for a key of another length or a result over
    :data:`BPF_MAXINSNS`.
    """
    keys = set(flows)
    if not keys:
        return program
    if bad := [k for k in keys if len(k) not in (12, 36)]:
        msg = f"a flow key is 12 (IPv4) or 36 (IPv6) bytes: {bad[0]!r}"
        raise ValueError(msg)
    v4 = sorted(k for k in keys if len(k) == 12)
    v6 = sorted(k for k in keys if len(k) == 36)
    main = "main"
    # (code, jt, jf, k); a far jump's k is a label, resolved once every position is known.
    asm: list[tuple[int, int, int, int | str]] = []
    labels: dict[str, int] = {}

    def emit(code: int, jt: int = 0, jf: int = 0, k: int | str = 0) -> None:
        asm.append((code, jt, jf, k))

    def word(key: bytes, at: int) -> int:
        return int.from_bytes(key[at : at + 4], "big")

    emit(_LDB_ABS, k=0)
    emit(_RSH_K, k=4)  # the IP version
    emit(_JEQ_K, 0, 1, 4)
    emit(_JA, k="v4" if v4 else main)
    emit(_JEQ_K, 0, 1, 6)
    emit(_JA, k="v6" if v6 else main)
    emit(_JA, k=main)
    # Each section loads the addresses and ports from the packet once into scratch memory
    # (M[]); the flows compare against M[]. A packet load becomes several eBPF instructions in
    # the kernel's conversion, a scratch load one, and the converted size is what the socket is
    # charged (net.core.optmem_max).
    if v4:
        labels["v4"] = len(asm)
        emit(_LDB_ABS, k=9)  # protocol
        emit(_JEQ_K, 1, 0, 6)
        emit(_JA, k=main)
        emit(_LDH_ABS, k=6)  # a fragment offset: no TCP header here
        emit(_JSET_K, 0, 1, 0x1FFF)
        emit(_JA, k=main)
        emit(_LDX_MSH, k=0)  # X = the IPv4 header's length: the TCP header follows
        emit(_LDB_IND, k=13)  # TCP flags: SYN, FIN and RST go on
        emit(_JSET_K, 0, 1, 0x07)
        emit(_JA, k=main)
        for slot, at in enumerate((12, 16)):  # source and destination address
            emit(_LDW_ABS, k=at)
            emit(_ST, k=slot)
        emit(_LDW_IND, k=0)  # A = source and destination port
        emit(_ST, k=2)
        for key in v4:
            # On a port mismatch A still holds the ports: on to the next flow.
            emit(_JEQ_K, 0, EXCLUDED_V4_INSNS - 1, word(key, 8))
            emit(_LD_MEM, k=0)
            emit(_JEQ_K, 0, 3, word(key, 0))
            emit(_LD_MEM, k=1)
            emit(_JEQ_K, 0, 1, word(key, 4))
            emit(_BPF_RET_K, k=0)
            emit(_LD_MEM, k=2)  # the ports again for the next flow
        emit(_JA, k=main)
    if v6:
        labels["v6"] = len(asm)
        emit(_LDB_ABS, k=6)  # next header: TCP right after the fixed header only
        emit(_JEQ_K, 1, 0, 6)
        emit(_JA, k=main)
        emit(_LDB_ABS, k=40 + 13)
        emit(_JSET_K, 0, 1, 0x07)
        emit(_JA, k=main)
        for slot in range(8):  # source and destination address, a word at a time
            emit(_LDW_ABS, k=8 + 4 * slot)
            emit(_ST, k=slot)
        emit(_LDW_ABS, k=40)
        emit(_ST, k=8)
        for key in v6:
            emit(_JEQ_K, 0, EXCLUDED_V6_INSNS - 1, word(key, 32))
            for slot in range(8):
                emit(_LD_MEM, k=slot)
                emit(_JEQ_K, 0, 15 - 2 * slot, word(key, 4 * slot))
            emit(_BPF_RET_K, k=0)
            emit(_LD_MEM, k=8)
        emit(_JA, k=main)
    labels[main] = len(asm)
    prelude: list[Instruction] = []
    for i, (code, jt, jf, k) in enumerate(asm):
        if isinstance(k, str):
            k = labels[k] - (i + 1)
        prelude.append((code, jt, jf, k))
    total = len(prelude) + len(program.instructions)
    if total > BPF_MAXINSNS:
        msg = f"{len(keys)} excluded flows make {total} instructions, above {BPF_MAXINSNS}"
        raise ValueError(msg)
    return Program(program.expression, program.linktype, (*prelude, *program.instructions))
