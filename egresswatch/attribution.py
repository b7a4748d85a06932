"""Which local process made each connection: ``pid``, ``process``, ``user``, ``cgroup``.

A writer placed before enrichment (so that the policy's ``process`` selector sees the name).
For each TLS or QUIC observation it asks :class:`probes.sockets.SocketOwners` for the socket's
owner while the connection is still open: the ClientHello has just left, so the socket lives
at least until the server answers. DNS questions are not attributed (the resolver's socket is
usually a library's or a local stub's). What could not be attributed says why
(``attribution``), and the counts are the attribution rate.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from egresswatch.output import ObservationWriter
from probes.observation import Observation
from probes.sockets import NotFound, Owner, SocketOwners

LOOKUP_TIMEOUT = 2.0
"""Seconds one look-up may take before the connection goes on unattributed."""


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
            **{f"proc.{k}": v for k, v in self._pool.submit(self.owners.stats).result().items()},
        }
