"""Which local process made each connection: ``pid``, ``process``, ``user``, ``cgroup``.

A writer placed before enrichment (so that the policy's ``process`` selector sees the name).
For each TLS or QUIC observation it asks :class:`probes.sockets.SocketOwners` for the socket's
owner while the connection is still open: the ClientHello has just left, so the socket lives
at least until the server answers. DNS questions are not attributed (the resolver's socket is
usually a library's or a local stub's). What could not be attributed says why
(``attribution``), and the counts are the attribution rate.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Literal

from egresswatch.output import ObservationWriter
from probes.observation import Observation
from probes.sockets import NotFound, Owner, SocketOwners

LOOKUP_TIMEOUT = 2.0
"""Seconds one look-up may take before the connection goes on unattributed."""
MAX_PENDING = 1024
"""Early look-ups queued at most; past it a flood of new flows is counted, not queued."""
MAX_LINEAGE = 4096
"""Processes whose ancestors :attr:`AttributingWriter.lineage` keeps at most."""

Flow = tuple[Literal["tcp", "udp"], str, int, str, int]
"""(transport, source address, source port, destination address, destination port)."""


def flow_start(frame: bytes) -> Flow | None:
    """The flow a raw IPv4/IPv6 packet opens: a TCP SYN without ACK, or a UDP datagram that
    starts with a QUIC long header (an Initial). None for anything else."""
    if len(frame) < 20:
        return None
    version = frame[0] >> 4
    if version == 4:
        start = (frame[0] & 0x0F) * 4
        if struct.unpack_from("!H", frame, 6)[0] & 0x1FFF:
            return None  # a later fragment
        proto, src, dst = frame[9], frame[12:16], frame[16:20]
    elif version == 6 and len(frame) >= 40:
        start, proto, src, dst = 40, frame[6], frame[8:24], frame[24:40]
    else:
        return None
    l4 = frame[start:]
    transport: Literal["tcp", "udp"]
    if proto == 6 and len(l4) >= 14:
        flags = l4[13]
        if not (flags & 0x02 and not flags & 0x10):
            return None
        transport = "tcp"
    elif proto == 17 and len(l4) > 8 and l4[8] & 0xC0 == 0xC0:
        transport = "udp"
    else:
        return None
    sport, dport = struct.unpack_from("!HH", l4, 0)
    return (
        transport,
        str(ipaddress.ip_address(src)),
        sport,
        str(ipaddress.ip_address(dst)),
        dport,
    )


class AttributingWriter:
    """Adds the local process to each connection, then passes it on.

    The socket table lives on a thread of its own: pyroute2 runs an event loop of its own
    inside each call, which cannot run on a thread whose asyncio loop is already running (the
    agent's). Each look-up waits for that thread, a millisecond or so.
    """

    def __init__(
        self, writer: ObservationWriter, owners: Callable[[], SocketOwners] = SocketOwners
    ) -> None:
        self._writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egresswatch-procs")
        # Made on that thread, used only there.
        self.owners = self._pool.submit(owners).result()
        self.attributed = 0
        self.unattributed = 0
        self.early = 0
        self.early_skipped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self.lineage: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        """pid -> its ancestors when it was first read (:attr:`probes.sockets.Owner.ancestors`),
        for the most recent :data:`MAX_LINEAGE` processes named: ``ci`` tells a build's
        processes from others after they and their parents have exited."""

    def prefetch(self, batch: list[tuple[float, int, bytes]]) -> None:
        """At a flow's first packet (from the capture thread): look its owner up now, while a
        short-lived process still holds the socket; the ClientHello's look-up finds it later."""
        for _ts, _linktype, frame in batch:
            flow = flow_start(frame)
            if flow is None:
                continue
            with self._lock:
                if self._pending >= MAX_PENDING:
                    self.early_skipped += 1
                    continue
                self._pending += 1
                self.early += 1
            future = self._pool.submit(self.owners.lookup, *flow, first_packet=True)
            future.add_done_callback(self._done)

    def _done(self, _future: Future[Owner | NotFound]) -> None:
        with self._lock:
            self._pending -= 1

    def write(self, obs: Observation) -> None:
        if obs.kind != "dns":
            obs = self.attribute(obs)
        self._writer.write(obs)

    def attribute(self, obs: Observation) -> Observation:
        """``obs`` with ``pid``, ``process``, ``user``, ``cgroup`` (or ``attribution``)."""
        found: Owner | NotFound
        try:
            found = self._pool.submit(
                self.owners.lookup, obs.transport, obs.src, obs.sport, obs.dst, obs.dport
            ).result(timeout=LOOKUP_TIMEOUT)
        except TimeoutError:
            found = NotFound("no_socket", "the look-up took too long")
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

    def close(self) -> None:
        self._writer.close()

    def shutdown(self) -> None:
        """Close the socket table and its thread."""
        self._pool.submit(self.owners.close).result()
        self._pool.shutdown()

    def stats(self) -> dict[str, int]:
        """Attribution counts, and the socket table's own (``proc.`` prefixed)."""
        return {
            "proc.attributed": self.attributed,
            "proc.unattributed": self.unattributed,
            "proc.early_lookups": self.early,
            "proc.early_skipped": self.early_skipped,
            **{f"proc.{k}": v for k, v in self._pool.submit(self.owners.stats).result().items()},
        }
