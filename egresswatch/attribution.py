"""Which local process made each connection: ``pid``, ``process``, ``user``, ``cgroup``.

A writer placed before enrichment (so that the policy's ``process`` selector sees the name).
DNS questions are not attributed (the resolver's socket is usually a library's or a local
stub's). What could not be attributed says why (``attribution``), and the counts are the
attribution rate.

When
====

At a flow's **first packet** (a TCP SYN, the first QUIC long-header datagram of a UDP 4-tuple),
the capture thread queues a look-up on the socket table's own thread (:meth:`prefetch`): the
process is sending then, so a ``curl`` that lives 50 ms is still there. When the flow's
ClientHello has been parsed, :meth:`attribute` takes that look-up's answer; only where there
was none (the flow began before the agent, or the look-up found nothing) does it ask again,
while the connection is still open.

Under load
==========

Attribution never costs an observation. Each look-up takes about 80 us (sock_diag and a
``readlink``; see :mod:`probes.sockets`), so a host opening thousands of connections a second
can outrun it, and on a busy machine the agent may get only part of a CPU. Then, rather than
stall the pipeline (whose queue would drop frames, and so handshakes), attribution sheds its
own work: first-packet look-ups are skipped while :data:`MAX_PENDING` are queued or while
``pressure()`` says the pipeline is behind (``egresswatch run``: its queue is an eighth full),
and a connection without an answer is not looked up again while :data:`BUSY_PENDING` are
queued or the pipeline is behind; it goes on with ``attribution = "busy"``. Both are counted
(``proc.early_skipped``, ``proc.busy``). A first look-up that found no socket (``no_socket``,
``orphaned``) is not repeated: the socket was gone, and will not come back.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from operator import itemgetter
from typing import Any, Literal, TypeVar

from egresswatch.output import ObservationWriter
from probes.dns import DNS_PORTS
from probes.observation import Observation
from probes.sockets import NotFound, Owner, SocketOwners

LOOKUP_TIMEOUT = 2.0
"""Seconds one look-up may take before the connection goes on unattributed."""
MAX_PENDING = 256
"""First-packet look-ups queued at most (about 20 ms of work); past it a flood of new flows is
counted, not queued."""
BUSY_PENDING = 32
"""A second look-up (the first found nothing, or there was none) is made only while fewer
first-packet look-ups than this are queued."""
MAX_EARLY = 8192
"""First-packet answers kept for their ClientHello at most (the oldest go first)."""
EARLY_MAX_AGE = 120.0
"""Seconds (of capture time) a first-packet answer waits for its ClientHello. A connection
that has sent none by then (a failed one, or one that is not TLS) will not; without this
limit their answers would fill the table, however slowly such connections come."""
UDP_SEEN_SECONDS = 60.0
"""A UDP 4-tuple seen within this many seconds does not start a flow again: a QUIC handshake's
later long-header packets, and the server's, are not looked up."""
MAX_LINEAGE = 4096
"""Processes whose ancestors :attr:`AttributingWriter.lineage` keeps at most."""

V = TypeVar("V")

Flow = tuple[Literal["tcp", "udp"], str, int, str, int]
"""(transport, source address, source port, destination address, destination port)."""


def flow_start(frame: bytes) -> Flow | None:
    """The flow a raw IPv4/IPv6 packet opens: a TCP SYN without ACK, or a UDP datagram that
    starts with a QUIC long header (an Initial). None for anything else, and for DNS (port 53
    on either side): DNS is not attributed, and a quarter of DNS queries would pass for QUIC
    (an id whose first two bits are set).

    Called for every frame the capture reads, so the common case (not a flow's start) is
    decided from a few bytes, without copying the frame."""
    size = len(frame)
    if size < 20:
        return None
    version = frame[0] >> 4
    if version == 4:
        start = (frame[0] & 0x0F) * 4
        if (frame[6] & 0x1F) or frame[7]:
            return None  # a later fragment
        proto = frame[9]
    elif version == 6 and size >= 40:
        start, proto = 40, frame[6]
    else:
        return None
    transport: Literal["tcp", "udp"]
    if proto == 6 and size >= start + 14:
        if frame[start + 13] & 0x12 != 0x02:  # SYN without ACK
            return None
        transport = "tcp"
    elif proto == 17 and size > start + 8 and frame[start + 8] & 0xC0 == 0xC0:
        transport = "udp"
    else:
        return None
    if version == 4:
        src, dst = frame[12:16], frame[16:20]
    else:
        src, dst = frame[8:24], frame[24:40]
    sport, dport = struct.unpack_from("!HH", frame, start)
    if sport in DNS_PORTS or dport in DNS_PORTS:
        return None
    return (
        transport,
        str(ipaddress.ip_address(src)),
        sport,
        str(ipaddress.ip_address(dst)),
        dport,
    )


def _drop_older(table: OrderedDict[Any, V], cutoff: float, time_of: Callable[[V], float]) -> None:
    """Drop the entries at the front of ``table`` (oldest first) whose time is before
    ``cutoff``."""
    while table:
        key, value = next(iter(table.items()))
        if time_of(value) >= cutoff:
            return
        del table[key]


class AttributingWriter:
    """Adds the local process to each connection, then passes it on (module docstring).

    The socket table lives on a thread of its own: pyroute2's messages are built and parsed
    there, and /proc is read there, away from the capture thread.
    """

    def __init__(
        self,
        writer: ObservationWriter,
        owners: Callable[[], SocketOwners] = SocketOwners,
        *,
        pressure: Callable[[], bool] | None = None,
    ) -> None:
        self._writer = writer
        self.pressure = pressure
        """Says whether the pipeline is behind (from any thread); then look-ups are shed."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egresswatch-procs")
        # Made on that thread, used only there.
        self.owners = self._pool.submit(owners).result()
        self.attributed = 0
        self.unattributed = 0
        self.early = 0
        self.early_skipped = 0
        self.early_used = 0
        self.busy = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._answers: OrderedDict[Flow, tuple[float, Future[Owner | NotFound]]] = OrderedDict()
        self._udp_seen: OrderedDict[tuple[str, int, str, int], float] = OrderedDict()
        self.lineage: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        """pid -> its ancestors when it was first read (:attr:`probes.sockets.Owner.ancestors`),
        for the most recent :data:`MAX_LINEAGE` processes named: ``ci`` tells a build's
        processes from others after they and their parents have exited."""

    def prefetch(self, batch: list[tuple[float, int, bytes]]) -> None:
        """At a flow's first packet (from the capture thread): look its owner up now, while a
        short-lived process still holds the socket; the ClientHello takes the answer."""
        behind = self.pressure is not None and self.pressure()
        for ts, _linktype, frame in batch:
            flow = flow_start(frame)
            if flow is None or (flow[0] == "udp" and self._udp_again(flow, ts)):
                continue
            with self._lock:
                if behind or self._pending >= MAX_PENDING:
                    self.early_skipped += 1
                    continue
                self._pending += 1
                self.early += 1
            future = self._pool.submit(self.owners.lookup, *flow, first_packet=True)
            future.add_done_callback(self._done)
            with self._lock:
                answers = self._answers
                answers[flow] = (ts, future)
                answers.move_to_end(flow)
                if len(answers) > MAX_EARLY:
                    answers.popitem(last=False)
                _drop_older(answers, ts - EARLY_MAX_AGE, itemgetter(0))

    def _udp_again(self, flow: Flow, ts: float) -> bool:
        """Whether this UDP 4-tuple (either way round) was seen lately; remember it."""
        _t, src, sport, dst, dport = flow
        key = (src, sport, dst, dport)
        seen = self._udp_seen
        for known in (key, (dst, dport, src, sport)):
            last = seen.get(known)
            if last is not None and ts - last < UDP_SEEN_SECONDS:
                return True
        seen[key] = ts
        seen.move_to_end(key)
        if len(seen) > MAX_EARLY:
            seen.popitem(last=False)
        _drop_older(seen, ts - UDP_SEEN_SECONDS, lambda last: last)
        return False

    def _done(self, _future: Future[Owner | NotFound]) -> None:
        with self._lock:
            self._pending -= 1

    def write(self, obs: Observation) -> None:
        if obs.kind != "dns":
            obs = self.attribute(obs)
        self._writer.write(obs)

    def attribute(self, obs: Observation) -> Observation:
        """``obs`` with ``pid``, ``process``, ``user``, ``cgroup`` (or ``attribution``)."""
        flow: Flow = (obs.transport, obs.src, obs.sport, obs.dst, obs.dport)
        with self._lock:
            early = self._answers.pop(flow, None)
            busy = self._pending >= BUSY_PENDING
        found: Owner | NotFound | None = None
        if early is not None:
            found = self._wait(early[1])
            if isinstance(found, Owner):
                self.early_used += 1
        if found is None or (isinstance(found, NotFound) and found.reason == "no_process"):
            if busy or (self.pressure is not None and self.pressure()):
                self.busy += 1
                self.unattributed += 1
                return replace(obs, extra={**obs.extra, "attribution": "busy"})
            found = self._wait(self._pool.submit(self.owners.lookup, *flow))
        if isinstance(found, NotFound):
            self.unattributed += 1
            return replace(obs, extra={**obs.extra, "attribution": found.reason})
        self.attributed += 1
        if found.ancestors:
            self.lineage[found.pid] = found.ancestors
            self.lineage.move_to_end(found.pid)
            if len(self.lineage) > MAX_LINEAGE:
                self.lineage.popitem(last=False)
        extra = {
            **obs.extra,
            "pid": found.pid,
            "process": found.exe or found.comm,
            "user": found.user,
            "cgroup": found.cgroup,
        }
        return replace(obs, extra=extra)

    @staticmethod
    def _wait(future: Future[Owner | NotFound]) -> Owner | NotFound:
        try:
            return future.result(timeout=LOOKUP_TIMEOUT)
        except TimeoutError:
            return NotFound("no_socket", "the look-up took too long")

    def close(self) -> None:
        self._writer.close()

    def shutdown(self) -> None:
        """Close the socket table and its thread."""
        self._pool.submit(self.owners.close).result()
        self._pool.shutdown()

    def stats(self) -> dict[str, int]:
        """Attribution counts, and the socket table's own (``proc.`` prefixed).

        ``proc.attributed`` and ``proc.unattributed`` are connections; ``proc.early_lookups``
        first-packet look-ups made, ``proc.early_skipped`` ones skipped (too many queued),
        ``proc.early_used`` connections named by one; ``proc.busy`` connections left
        unattributed rather than wait (``attribution = "busy"``).
        """
        return {
            "proc.attributed": self.attributed,
            "proc.unattributed": self.unattributed,
            "proc.early_lookups": self.early,
            "proc.early_skipped": self.early_skipped,
            "proc.early_used": self.early_used,
            "proc.busy": self.busy,
            # Read from here, not on the table's thread: counters and sizes, never a wait
            # behind queued look-ups (the status is written from the event loop).
            **{f"proc.{k}": v for k, v in self.owners.stats().items()},
        }
