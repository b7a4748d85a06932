"""Live capture: a cooked packet socket with the kernel filter of :mod:`probes.bpf`.

:class:`LiveCapture` yields ``(ts, linktype, frame)`` like the file readers of
:mod:`probes.capfile`, so live capture and replay share every line after it.

Choices, and why
================

**A cooked (``SOCK_DGRAM``) ``AF_PACKET`` socket, opened here, not scapy's ``L2ListenSocket``.**
A cooked socket gives every frame from its network-layer header, whatever the interface:
Ethernet, loopback, Wi-Fi, WireGuard and tun (no link header at all), PPP, IPoIB. One filter
program compiled for ``DLT_RAW`` is then right for all of them, so "all interfaces" is one socket
and one program, and interfaces that appear later (a container's veth, a VPN's tun) are covered
without reopening. Frames are reported as ``LINKTYPE_RAW`` (101): IPv4 or IPv6 by the version
nibble. What is lost is the link header (MAC addresses, which say nothing about where traffic
goes). scapy's wrapper binds raw sockets, compiles the filter for one interface's link type
(wrong for the others when listening on all), and turns on promiscuous mode by default; so the
socket is opened here, and scapy (libpcap) compiles the filter
(:func:`probes.bpf.compile_filter`).

**Bytes, not scapy packets.** Frames are read with ``recvmsg_into`` into one reused buffer and
copied once into ``bytes``; building a scapy ``Packet`` per frame costs a hundred times more.

**Kernel timestamps** (``SO_TIMESTAMPNS``, from the ``recvmsg`` control message). Measured on
this design (2 vCPU, 2026): ``recv`` + ``time.time()`` 1.7-2 us per frame, ``recvmsg_into`` with
the timestamp 4-5 us. The difference is paid only for frames that passed the filter (handshakes,
DNS), and ``read_batch`` drains a burst after the event loop wakes, when ``time.time()`` would
stamp every frame of the burst with the drain time rather than its arrival time. ``recvmsg``
also returns the address, which gives the direction (``sll_pkttype``) and the interface name.
``recvmsg`` with a fresh 256 KiB buffer per call cost 20 us (an ``mmap`` per call), hence the
reused buffer. (CPython also looks up the interface name with an ``ioctl`` for every packet
address; that is inside the 4-5 us.)

**Bulk flows leave the kernel filter's way after their hello window.** The static filter lets
client-to-server data through where it may continue a ClientHello; :class:`FlowExclusions`
follows those flows here (a few dict operations per frame that passed) and the filter is
replaced, atomically, by one that also rejects each flow past its first 128 KiB
(:func:`probes.bpf.with_exclusions`; figures in :mod:`probes.bpf`). Frames of an excluded flow
that were already queued are dropped here, so the sensor never sees them.

**A busy read gathers a batch.** When the previous read returned frames less than ``linger``
(5 ms) ago, :meth:`LiveCapture.read_frames` sleeps ``linger`` after the first frame before it
reads what is queued. A thread that keeps up otherwise hands its consumer a batch of one or two
frames per wake-up, and ``egresswatch run`` bounds its queue in batches (512) as well as
frames: a stall of its event loop (process attribution, a store flush, a busy CPU) of a tenth
of a second filled it. Measured with bench/live_load.py (2 vCPUs under load average 7-10, bulk
at line rate on the same veth, the real agent): at 500 TLS + 500 QUIC handshakes/s, 18,519
and 24,313 frames dropped from the queue in 8 s without it, none with it; at 1,000/s each,
46,078 and 34,541 without, 6,602 and 8,146 with; at 2,000/s each without process
attribution, 16,041 and 37,162 without, none with (and 10% less CPU). A read after a quiet
spell does not wait: process attribution looks a flow's owner up at its first packet, and with
a 5 ms wait on every read, 6 of the 14 hellos of tests/test_e2e_live.py lost their process (a
short-lived client had exited). Waiting with ``poll`` (a wake-up per frame) instead of a sleep
cost 40% more CPU and lost frames in the kernel.

**A 32 MiB socket buffer.** What passes the filter waits there while the process is not on a
CPU; the kernel charges it as it fills, so a large limit costs nothing while the agent keeps up.
With 8 MiB, the same bench lost 108-4,921 frames in the kernel at 2,000 and 2,500 handshakes/s
of each kind (4 runs of 4); with 32 MiB none (4 of 4).

**Loopback.** The kernel shows each loopback packet twice (outgoing and incoming); the outgoing
copy is dropped in the kernel filter (``not (ifindex LO and outbound)``), as libpcap drops it
in user space, so each packet is seen once.

**No unfiltered packet.** A socket bound to one interface is created with protocol 0 (it hears
nothing), gets its filter, then binds. A socket for several or all interfaces hears everything
from creation: it gets a reject-all filter, is drained, then gets the real filter (what libpcap
does).

**Several interfaces** share one unbound socket whose filter tests ``ifindex``, so the event
loop has one file descriptor.

Duplicates across interfaces are not removed: with all interfaces, a container's packet shows
on its veth, on the bridge and (after NAT) on the uplink. ``read_frames`` tells which
interface each frame came from.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, NamedTuple, NoReturn, Self

from probes import bpf as bpflib
from probes.errors import CaptureError

log = logging.getLogger(__name__)

LINKTYPE_RAW = 101
"""Raw IPv4/IPv6 (pcap LINKTYPE_RAW): the link type of every frame from :class:`LiveCapture`."""

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS_OLD = 35
SO_TIMESTAMPNS_NEW = 64

PACKET_HOST = 0
"""``sll_pkttype``: to this host."""
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4
"""``sll_pkttype``: sent by this host (or forwarded by it)."""

DEFAULT_BUFFER_BYTES = 32 << 20
"""The socket's receive buffer: a limit the kernel charges as frames wait, not an allocation."""
MAX_BATCH = 4096
"""Most frames one :meth:`LiveCapture.read_batch` returns, so one burst cannot starve a loop."""
DEFAULT_LINGER = 0.005
"""Seconds a busy :meth:`LiveCapture.read_frames` waits after the first frame to gather more."""
MAX_EXCLUDED = 128
"""Most TCP flows excluded in the kernel at once (:class:`FlowExclusions`)."""
MAX_TRACKED = 16384
"""Most TCP flows whose stream offset :class:`FlowExclusions` follows."""
EXCLUSION_TTL = 120.0
"""Seconds after which an excluded flow passes again (and is excluded again if still busy)."""
_ANCILLARY = socket.CMSG_SPACE(16)


class Frame(NamedTuple):
    """One captured frame, with where it came from."""

    ts: float
    """Kernel receive time, seconds since the epoch."""
    linktype: int
    """Always :data:`LINKTYPE_RAW`."""
    data: bytes
    """The packet from its IPv4 or IPv6 header on."""
    interface: str
    """Name of the interface it was seen on."""
    pkttype: int
    """``sll_pkttype``: :data:`PACKET_OUTGOING` for what this host sent, else received."""


class FlowExclusions:
    """Which TCP flows the kernel should stop passing: those past their hello window.

    Sans-I/O: :meth:`frame` is fed every frame the capture reads, with its time, and says
    whether to hand it on; after a call that set :attr:`changed`, the capture attaches
    :func:`probes.bpf.with_exclusions` with :attr:`excluded` (see the module docstring).

    A flow is one direction of a TCP connection, keyed as :func:`~probes.bpf.with_exclusions`
    compares it. Its stream offset counts from the SYN's ISN + 1, or from the first data
    segment seen when the SYN was not. A data segment that ends more than ``window`` bytes in
    excludes the flow; the flow's later data segments that still reach Python (queued before
    the kernel was told) are dropped here, counted in ``excluded_frames``.

    At most ``capacity`` flows are excluded in the kernel (:attr:`excluded`); more are
    excluded here only (their frames are read and dropped) and take a place in the kernel at
    their next frame after one frees, rather than pushing an older one out (which would cost a
    filter update per frame when more bulk flows run than there are places).
    :meth:`shrink` lowers ``capacity`` when the kernel refuses a program that size.

    SYN, FIN and RST pass the kernel's prelude, and end the flow's exclusion (a new connection
    on the same ports, or this one over); so does ``ttl`` seconds (a flow that ended unseen must
    not hold a place for ever: a live one comes back and goes again at its next data segment).
    ``max_tracked`` bounds the flows whose offset is followed and those excluded here only (the
    oldest go first: an evicted flow counts again from its next segment).
    """

    __slots__ = (
        "_bases",
        "_next_expiry",
        "_overflow",
        "capacity",
        "changed",
        "excluded",
        "excluded_frames",
        "exclusions_ended",
        "flows_excluded",
        "max_tracked",
        "ttl",
        "window",
    )

    def __init__(
        self,
        window: int = bpflib.HELLO_WINDOW,
        *,
        capacity: int = MAX_EXCLUDED,
        max_tracked: int = MAX_TRACKED,
        ttl: float = EXCLUSION_TTL,
    ) -> None:
        if window < 1 or capacity < 0 or max_tracked < 1 or ttl <= 0:
            msg = f"bad flow exclusion bounds: {window!r}, {capacity!r}, {max_tracked!r}, {ttl!r}"
            raise ValueError(msg)
        self.window = window
        self.capacity = capacity
        self.max_tracked = max_tracked
        self.ttl = ttl
        self._bases: dict[bytes, int] = {}
        self.excluded: dict[bytes, float] = {}
        """Flows excluded in the kernel (key as :func:`~probes.bpf.with_exclusions` takes it),
        and since when."""
        self._overflow: dict[bytes, float] = {}
        self.changed = False
        """:attr:`excluded` changed since the capture last attached its filter."""
        self.flows_excluded = 0
        self.excluded_frames = 0
        self.exclusions_ended = 0
        self._next_expiry = 0.0

    def frame(self, data: bytes, now: float) -> bool:
        """Look at one frame (IPv4 or IPv6 from its header on); ``False``: drop it."""
        if now >= self._next_expiry:
            self.expire(now)
        version = data[0] >> 4
        if version == 4:
            # Not TCP, or a fragment with an offset: not the prelude's business.
            if data[9] != 6 or data[6] & 0x1F or data[7]:
                return True
            t = (data[0] & 0x0F) << 2
            if len(data) < t + 20:
                return True
            key = data[12:20] + data[t : t + 4]
            # A length field of 0 is a GSO packet over 64 KB (BIG TCP).
            length = (data[2] << 8) | data[3] or len(data)
        elif version == 6:
            if data[6] != 6 or len(data) < 60:
                return True
            t = 40
            key = data[8:44]
            length = 40 + ((data[4] << 8) | data[5]) if data[4] or data[5] else len(data)
        else:
            return True
        flags = data[t + 13]
        if flags & 0x07:  # SYN, FIN or RST
            if flags & 0x02 and not flags & 0x10:  # a client's SYN: the stream starts at ISN + 1
                self._track(key, (int.from_bytes(data[t + 4 : t + 8], "big") + 1) & 0xFFFFFFFF)
            else:
                self._bases.pop(key, None)
            if self.excluded or self._overflow:
                self._end(key)
                if flags & 0x04:  # RST ends both directions
                    reverse = key[4:8] + key[:4] if version == 4 else key[16:32] + key[:16]
                    self._end(reverse + key[-2:] + key[-4:-2])
            return True
        payload = length - t - ((data[t + 12] >> 4) << 2)
        if payload <= 0:
            return True
        if key in self.excluded:
            self.excluded_frames += 1
            return False
        if key in self._overflow:
            self.excluded_frames += 1
            if len(self.excluded) < self.capacity:
                self.excluded[key] = self._overflow.pop(key)
                self.changed = True
            return False
        seq = int.from_bytes(data[t + 4 : t + 8], "big")
        base = self._bases.get(key)
        if base is None:
            self._track(key, seq)
            base = seq
        if self.window < (seq + payload - base) & 0xFFFFFFFF < 1 << 31:
            self._exclude(key, now)
        return True

    def _track(self, key: bytes, base: int) -> None:
        bases = self._bases
        if key not in bases and len(bases) >= self.max_tracked:
            del bases[next(iter(bases))]  # insertion order: the oldest
        bases[key] = base

    def _exclude(self, key: bytes, now: float) -> None:
        self.flows_excluded += 1
        self._next_expiry = min(self._next_expiry, now + self.ttl)
        if len(self.excluded) < self.capacity:
            self.excluded[key] = now
            self.changed = True
            return
        overflow = self._overflow
        if len(overflow) >= self.max_tracked:
            del overflow[next(iter(overflow))]
        overflow[key] = now

    def _end(self, key: bytes) -> None:
        if self.excluded.pop(key, None) is not None:
            self.exclusions_ended += 1
            self.changed = True
        elif self._overflow.pop(key, None) is not None:
            self.exclusions_ended += 1

    def shrink(self, capacity: int) -> None:
        """At most ``capacity`` flows in the kernel from now on (the kernel refused more); the
        newest ones left over stay excluded here."""
        self.capacity = max(0, capacity)
        excluded = self.excluded
        while len(excluded) > self.capacity:
            key, since = excluded.popitem()
            self._overflow[key] = since
            self.changed = True

    def expire(self, now: float) -> None:
        """End exclusions older than ``ttl`` seconds at ``now``."""
        limit = now - self.ttl
        for table in (self.excluded, self._overflow):
            while table:
                key, since = next(iter(table.items()))
                if since > limit:
                    break
                del table[key]
                self.exclusions_ended += 1
                self.changed = self.changed or table is self.excluded
        oldest = [next(iter(t.values())) for t in (self.excluded, self._overflow) if t]
        self._next_expiry = min(oldest) + self.ttl if oldest else now + self.ttl

    def stats(self) -> dict[str, int]:
        """``flows_excluded`` (each time a flow was stopped), ``excluded_now`` (in the kernel),
        ``excluded_here_now`` (over the kernel's capacity: read and dropped here),
        ``excluded_frames`` (frames of excluded flows read and dropped here),
        ``exclusion_capacity`` (flows the kernel's program may hold)."""
        return {
            "flows_excluded": self.flows_excluded,
            "excluded_now": len(self.excluded),
            "excluded_here_now": len(self._overflow),
            "excluded_frames": self.excluded_frames,
            "exclusion_capacity": self.capacity,
        }


class _LinkCounters:
    """Packet counters of interfaces, over rtnetlink (``RTM_GETLINK``, ``IFLA_STATS64``).

    The netlink socket is opened with the capture socket, so both belong to the same network
    namespace even if the caller moves between namespaces later. Sysfs would show the namespace
    that mounted it.
    """

    _NLMSG_ERROR = 2
    _NLMSG_DONE = 3
    _RTM_NEWLINK = 16
    _RTM_GETLINK = 18
    _IFLA_STATS64 = 23
    _MAX_MESSAGES = 100_000

    def __init__(self, ifindexes: frozenset[int] | None) -> None:
        self._ifindexes = ifindexes
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.settimeout(1.0)
        self._seq = 0

    def packets(self) -> int | None:
        """Sum of rx and tx packets of the watched interfaces; ``None`` when unavailable."""
        self._seq += 1
        # nlmsghdr (len, type, flags=NLM_F_REQUEST|NLM_F_DUMP, seq, pid) + ifinfomsg (16 bytes)
        request = struct.pack("=IHHII", 32, self._RTM_GETLINK, 0x301, self._seq, 0)
        request += struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
        total = 0
        seen = 0
        try:
            self._sock.send(request)
            while seen < self._MAX_MESSAGES:
                data = self._sock.recv(1 << 16)
                pos = 0
                while pos + 16 <= len(data):
                    length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
                    if length < 16:
                        return None
                    seen += 1
                    if seq == self._seq:
                        if kind == self._NLMSG_DONE:
                            return total
                        if kind == self._NLMSG_ERROR:
                            return None
                        if kind == self._RTM_NEWLINK:
                            total += self._stats(data, pos, pos + length)
                    pos += (length + 3) & ~3
        except OSError:
            return None
        return None

    def _stats(self, data: bytes, start: int, end: int) -> int:
        (index,) = struct.unpack_from("=i", data, start + 20)
        if self._ifindexes is not None and index not in self._ifindexes:
            return 0
        pos = start + 32  # after nlmsghdr (16) and ifinfomsg (16)
        while pos + 4 <= end:
            alen, atype = struct.unpack_from("=HH", data, pos)
            if alen < 4:
                break
            if atype == self._IFLA_STATS64 and alen >= 4 + 16:
                rx, tx = struct.unpack_from("=QQ", data, pos + 4)
                return int(rx + tx)
            pos += (alen + 3) & ~3
        return 0

    def close(self) -> None:
        self._sock.close()


class LiveCapture:
    """Frames from live interfaces that passed the kernel filter.

    ``interfaces``: names to capture on; ``None`` (or ``any``) for all interfaces of the current
    network namespace, including ones that appear later. The filter is
    :func:`probes.bpf.compile_filter` for ``settings`` (defaults when ``None``), and TCP flows
    past ``settings.hello_window`` are then excluded in the kernel (:class:`FlowExclusions`);
    ``bpf``: a libpcap expression to use instead, as it is (``""`` passes everything).
    ``buffer_bytes``: the kernel receive buffer; frames that arrive while it is full are dropped
    and counted. ``linger``: seconds a busy read waits to gather a batch (0: never).

    ``expression`` is the protocol filter as tcpdump would take it; ``program`` the compiled
    program (with the interface and loopback tests), before any flow exclusion.

    Use :meth:`fileno` and :meth:`read_batch` from an event loop, or iterate. Raises
    :class:`~probes.errors.CaptureError` with a one-line message when the capture cannot start.
    """

    def __init__(
        self,
        interfaces: Sequence[str] | None = None,
        *,
        bpf: str | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        settings: bpflib.FilterSettings | None = None,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if isinstance(interfaces, str):
            interfaces = [interfaces]
        names = None if interfaces is None else list(dict.fromkeys(interfaces))
        if names is not None and "any" in names:  # libpcap's name for all interfaces
            names = None
        if names is not None and not names:
            msg = "no interface given (pass None to capture on all interfaces)"
            raise CaptureError(msg)
        if buffer_bytes <= 0:
            msg = f"buffer_bytes must be positive: {buffer_bytes!r}"
            raise CaptureError(msg)
        if not 0 <= linger <= 1:
            msg = f"linger must be 0 to 1 second: {linger!r}"
            raise CaptureError(msg)
        self.linger = linger
        """Seconds a busy read waits after the first frame to gather more (module docstring)."""
        where = "all interfaces" if names is None else ", ".join(names)
        ifindexes: dict[str, int] = {}
        for name in names or ():
            try:
                ifindexes[name] = socket.if_nametoindex(name)
            except OSError:
                msg = f"no such interface: {name!r}"
                raise CaptureError(msg, path=name) from None
        try:
            loopback: int | None = socket.if_nametoindex("lo")
        except OSError:
            loopback = None
        if names is not None and loopback not in ifindexes.values():
            loopback = None

        if bpf is not None and settings is not None:
            msg = "give either bpf or settings, not both"
            raise CaptureError(msg)
        bound = names is not None and len(names) == 1
        on = () if names is None or bound else sorted(ifindexes.values())
        self.expression: str
        self.program: bpflib.Program
        self._gate: FlowExclusions | None = None
        if bpf is None:
            self.expression = bpflib.filter_expression(settings)
            self.program = bpflib.compile_filter(settings, ifindexes=on, loopback_ifindex=loopback)
            window = (settings or bpflib.FilterSettings()).hello_window
            capacity = min(MAX_EXCLUDED, bpflib.exclusion_capacity(self.program))
            if window is not None:
                self._gate = FlowExclusions(window, capacity=capacity)
        else:
            self.expression = bpf
            live = bpflib.live_expression(bpf, ifindexes=on, loopback_ifindex=loopback)
            self.program = bpflib.compile_expression(live)
        self.interfaces: tuple[str, ...] | None = None if names is None else tuple(names)
        """The interfaces captured on; ``None`` for all."""
        self.linktypes: dict[str, int] = dict.fromkeys(names or ["any"], LINKTYPE_RAW)
        """Link type of the frames from each interface (``any`` for all): LINKTYPE_RAW."""

        try:
            sock = socket.socket(
                socket.AF_PACKET, socket.SOCK_DGRAM, 0 if bound else socket.htons(ETH_P_ALL)
            )
        except PermissionError:
            msg = f"capture on {where} needs root or CAP_NET_RAW"
            raise CaptureError(msg, path=where) from None
        except OSError as exc:
            msg = f"cannot open a packet socket for {where}: {exc.strerror or exc}"
            raise CaptureError(msg, path=where) from None
        try:
            self.buffer_bytes = self._set_buffer(sock, buffer_bytes)
            """The receive buffer the kernel granted (it doubles what it is asked for)."""
            self._ts_format = self._enable_timestamps(sock)
            sock.setblocking(False)
            if bound:
                assert names is not None
                bpflib.attach(sock, self.program)
                sock.bind((names[0], ETH_P_ALL))
            else:
                bpflib.attach(sock, bpflib.REJECT_ALL)
                self._drain(sock)
                bpflib.attach(sock, self.program)
            sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reading resets the counters
        except OSError as exc:
            sock.close()
            msg = f"cannot capture on {where}: {exc.strerror or exc}"
            raise CaptureError(msg, path=where) from None
        self._sock = sock
        self._where = where
        self._closed = False
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._buf = bytearray(bpflib.SNAPLEN)
        self._view = memoryview(self._buf)
        self._received = 0
        self._last_read = -1.0
        self._not_ip = 0
        self._kernel_packets = 0
        self._kernel_drops = 0
        self._refilter_failures = 0
        self._counters: _LinkCounters | None
        try:
            self._counters = _LinkCounters(None if names is None else frozenset(ifindexes.values()))
        except OSError:
            self._counters = None
        self._link_base = self._counters.packets() if self._counters else None
        self._link_packets: int | None = None

    @staticmethod
    def _set_buffer(sock: socket.socket, size: int) -> int:
        try:
            # Root may exceed net.core.rmem_max; the kernel doubles the value for bookkeeping.
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    @staticmethod
    def _enable_timestamps(sock: socket.socket) -> tuple[int, str]:
        """Ask for nanosecond receive times; ``(cmsg type, struct format of the timespec)``."""
        try:
            # struct __kernel_timespec: two 64-bit fields on every architecture (Linux 5.1+).
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS_NEW, 1)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS_OLD, 1)
            return SO_TIMESTAMPNS_OLD, "@ll"
        return SO_TIMESTAMPNS_NEW, "=qq"

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        for _ in range(1_000_000):
            try:
                sock.recv(1, socket.MSG_TRUNC)
            except BlockingIOError:
                return

    # -- reading ------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor: readable when :meth:`read_batch` has frames."""
        return self._sock.fileno()

    def read_frames(self, timeout: float, max_frames: int = MAX_BATCH) -> list[Frame]:
        """Frames that arrive within ``timeout`` seconds, with interface and direction.

        Waits at most ``timeout`` for the first frame; when the previous read returned frames
        less than ``linger`` seconds ago, then ``linger`` seconds more (a sleep, not a wake-up
        per frame); then takes what is queued, up to ``max_frames``. An empty list means
        nothing arrived. Raises :class:`~probes.errors.CaptureError` when the
        interface goes away or the capture is closed.
        """
        out: list[Frame] = []
        self._read(out, timeout, max_frames, True)
        return out

    def _read(self, out: list[Any], timeout: float, max_frames: int, full: bool) -> None:
        """:meth:`read_frames` (``full``: as :class:`Frame`) or :meth:`read_batch` into ``out``."""
        if self._closed:
            msg = f"capture on {self._where} is closed"
            raise CaptureError(msg, path=self._where)
        if not self._poll.poll(max(0, int(timeout * 1000))):
            return
        if self.linger and time.monotonic() - self._last_read < self.linger:
            time.sleep(self.linger)  # busy: gather a batch
        self._read_queued(out, max_frames, full)
        if out:
            self._last_read = time.monotonic()
        self._received += len(out)

    def _read_queued(self, out: list[Any], max_frames: int, full: bool) -> None:
        """Append the frames queued in the socket to ``out``, up to ``max_frames`` in all: as
        :class:`Frame` when ``full``, else as ``(ts, linktype, data)``."""
        recvmsg_into = self._sock.recvmsg_into
        buffers = (self._buf,)
        view = self._view
        ts_type, ts_fmt = self._ts_format
        unpack = struct.unpack_from
        gate = self._gate
        append = out.append
        for _ in range(max_frames - len(out)):
            try:
                size, ancdata, _flags, address = recvmsg_into(buffers, _ANCILLARY)
            except BlockingIOError:
                return
            except OSError as exc:
                if self._closed:
                    return
                self._raise_read(exc)
            if address[1] != ETH_P_IP and address[1] != ETH_P_IPV6:
                self._not_ip += 1
                continue
            ts = 0.0
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == ts_type and len(data) >= 16:
                    sec, nsec = unpack(ts_fmt, data)
                    ts = sec + nsec * 1e-9
            if not ts:
                ts = time.time()
            data = bytes(view[:size])
            if gate is not None:
                keep = gate.frame(data, ts)
                if gate.changed:
                    self._refilter(gate)
                if not keep:
                    continue
            if full:
                append(Frame(ts, LINKTYPE_RAW, data, address[0], address[2]))
            else:
                append((ts, LINKTYPE_RAW, data))

    def _refilter(self, gate: FlowExclusions) -> None:
        """Attach the filter with the flows ``gate`` excludes now. The new program replaces
        the old one atomically: nothing queued is lost, nothing unfiltered gets in."""
        while True:
            gate.changed = False
            try:
                bpflib.attach(self._sock, bpflib.with_exclusions(self.program, gate.excluded))
            except OSError as exc:
                if exc.errno == errno.ENOMEM and gate.excluded:
                    # The kernel charges a filter to the socket (net.core.optmem_max, 20 KiB
                    # before Linux 6.9), the old and the new one together while one replaces
                    # the other: hold one flow fewer, the newest. The old program stays until
                    # one fits; this happens once per flow the capacity loses.
                    gate.shrink(len(gate.excluded) - 1)
                    continue
                self._refilter_failures += 1
                log.warning("cannot update the capture filter on %s: %s", self._where, exc)
            return

    def read_batch(
        self, timeout: float, max_frames: int = MAX_BATCH
    ) -> list[tuple[float, int, bytes]]:
        """``(ts, linktype, frame)`` of the frames that arrive within ``timeout`` seconds.

        For an event loop: call it when :meth:`fileno` is readable (``timeout=0``) or let it
        wait. See :meth:`read_frames` for the interface and direction of each frame.
        """
        out: list[tuple[float, int, bytes]] = []
        self._read(out, timeout, max_frames, False)
        return out

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        """Every frame until :meth:`close` (from another thread or a signal handler)."""
        while not self._closed:
            try:
                batch = self.read_batch(0.5)
            except CaptureError:
                if self._closed:
                    return
                raise
            yield from batch

    def _raise_read(self, exc: OSError) -> NoReturn:
        if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
            msg = f"interface went away while capturing on {self._where}"
        else:
            msg = f"cannot read from capture on {self._where}: {exc.strerror or exc}"
        raise CaptureError(msg, path=self._where) from None

    # -- bookkeeping --------------------------------------------------------------------------

    def _snapshot(self) -> None:
        """Fold the kernel's counters into ours; read the interface counters."""
        if self._closed:
            return
        with contextlib.suppress(OSError):
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            packets, drops = struct.unpack("=II", raw)
            # The kernel resets the counters on each read and counts drops in tp_packets.
            self._kernel_packets += packets
            self._kernel_drops += drops
        if self._counters is not None and self._link_base is not None:
            now = self._counters.packets()
            if now is not None:
                self._link_packets = max(0, now - self._link_base)

    def stats(self) -> dict[str, int]:
        """Counters since the capture started; still readable after :meth:`close`.

        - ``received``: frames returned to the caller;
        - ``kernel_packets``: frames that passed the filter, dropped ones included
          (``PACKET_STATISTICS`` ``tp_packets``);
        - ``kernel_drops``: frames that passed the filter and were lost because the receive
          buffer was full (``tp_drops``);
        - ``not_ip``: frames skipped because they were neither IPv4 nor IPv6;
        - ``interface_packets``: packets the captured interfaces sent and received (their rx and
          tx counters over rtnetlink; a loopback packet counts twice); absent when unreadable;
        - ``filtered_out``: ``interface_packets - kernel_packets``, what the filter kept in the
          kernel (an estimate: the two are read at slightly different times);
        - ``buffer_bytes``: the receive buffer the kernel granted;
        - with the egress filter, :meth:`FlowExclusions.stats`: ``flows_excluded``,
          ``excluded_now``, ``excluded_here_now``, ``excluded_frames`` (read, then dropped as
          past their flow's hello window: ``kernel_packets`` = ``received`` + ``kernel_drops``
          + ``not_ip`` + ``excluded_frames``), ``exclusion_capacity``; and
          ``refilter_failures``, filter updates the kernel refused.
        """
        self._snapshot()
        out = {
            "received": self._received,
            "kernel_packets": self._kernel_packets,
            "kernel_drops": self._kernel_drops,
            "not_ip": self._not_ip,
            "buffer_bytes": self.buffer_bytes,
        }
        if self._gate is not None:
            out.update(self._gate.stats())
            out["refilter_failures"] = self._refilter_failures
        if self._link_packets is not None:
            out["interface_packets"] = self._link_packets
            out["filtered_out"] = max(0, self._link_packets - self._kernel_packets)
        return out

    def close(self) -> None:
        """Stop capturing; the counters stay readable. Safe to call twice."""
        if self._closed:
            return
        self._snapshot()
        self._closed = True
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(self._sock.fileno())
        self._sock.close()
        if self._counters is not None:
            self._counters.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LiveCapture {self._where} {'closed' if self._closed else 'open'}>"
