"""Process attribution: which local process owns a TCP or UDP flow (Linux).

:class:`SocketOwners` answers ``lookup("tcp", local_ip, local_port, remote_ip, remote_port)``
with an :class:`Owner` (pid, comm, exe, uid, user, cgroup) or a :class:`NotFound` that says why.

How
===

1. **The socket, from the kernel.** One ``SOCK_DIAG_BY_FAMILY`` request (inet_diag, not a
   dump: the kernel looks the 4-tuple up in its hash tables) gives the socket's inode and uid.
   The request and the answer are pyroute2's message classes (``inet_diag_req``,
   ``inet_diag_msg``), sent and read on a plain blocking ``NETLINK_SOCK_DIAG`` socket: 43 us a
   lookup, where pyroute2's own :class:`~pyroute2.DiagSocket`, which runs an asyncio loop
   inside each call, took 143 us (500 lookups of local connections, this machine). TCP is
   looked up as the socket sees itself (src = local). ``udp_dump_one`` looks a socket up as
   the receiver of a datagram *from* src *to* dst ("src and dst are swapped for historical
   reasons", net/ipv4/udp_diag.c), so UDP asks with src = remote; that also finds an
   unconnected socket bound to a wildcard address, which is what many QUIC clients use.
2. **Inode to pid, from /proc.** A table ``inode -> (pid, fd)`` filled by reading the
   ``/proc/PID/fd/*`` links (``socket:[INODE]``). A hit is checked with one ``readlink`` of that
   fd; the process is described from what was read of it before while its start time and
   executable are the same (a process is read once per ``exec``, not per flow). A miss
   refreshes the table: first only the young pids, those that appeared in a listing
   of /proc less than ``young`` seconds ago (newest first: a short-lived ``curl`` is a new
   pid), then the few processes most recently named (:data:`RECENT_OWNERS`: a long-running
   client opens connection after connection), then the other pids, those that
   held sockets before first, stopping at the one that holds the inode; a full pass that finds
   nothing is not repeated within ``full_scan_interval`` seconds. So no lookup costs a whole
   /proc scan except a rate-limited one, and lookups are per flow, not per packet (3.).
3. **Per flow, once.** What was found is kept per flow in a bounded table, so the ClientHello
   of a flow (or a later packet) gets the answer found at its first packet, even after the
   process exited.

Both tables are bounded by size and by age (:data:`FLOW_MAX_AGE`, :data:`INODE_MAX_AGE`): each
connection brings a new flow and a new inode, so without the age limit they would fill to
their size limit however slowly connections come, and the agent's memory would creep for hours.

When to look up
===============

As early as possible: at the **first packet of a flow** on the capture side (the TCP SYN, the
first UDP datagram of a QUIC connection), with ``first_packet=True``. The process is sending
then, so its socket exists; a ``curl`` that lives 50 ms may be gone by the time its ClientHello is
parsed, or it may close the socket 1 ms after the handshake on a fast path.

What cannot be attributed (an honest :class:`NotFound`)
=======================================================

- ``no_socket``: the kernel has no socket for the 4-tuple: it was closed and freed before the
  lookup, the flow is not local, or it lives in another network namespace. A netlink socket
  sees only the namespace it was opened in: pass ``netns=`` (``/run/netns/NAME`` or
  ``/proc/PID/ns/net``) and use one :class:`SocketOwners` per namespace watched.
- ``orphaned``: the socket still exists (TIME_WAIT, FIN_WAIT after ``close``) but no file holds
  it any more: the kernel reports inode 0, and nothing links it to a process.
- ``no_process``: the socket has an inode but no fd in /proc holds it now, and the inode was not
  in the table (the owner exited between the kernel's answer and the scan, the socket is held by
  a process in another pid namespace, /proc is not readable for that pid without root, or the
  full scan is rate-limited).

The one fallback: when the table saw the inode in a process's fd table earlier (a scan for
another flow) and that process has gone since, the owner is answered from what the scan kept
(``Owner.source == "remembered"``).

Not covered: threads that unshared their fd table (``/proc/PID/task/TID/fd``), sockets passed
over Unix sockets (the first pid found wins), an ``exec`` between a scan and the exit of a
remembered process (the remembered comm and exe are the ones before it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import pwd
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pyroute2.netlink import NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, SS_ALL, inet_diag_msg, inet_diag_req

from probes.errors import CaptureError
from probes.observation import Transport

K = TypeVar("K")
V = TypeVar("V")

Reason = Literal["no_socket", "orphaned", "no_process"]
_CLONE_NEWNET = 0x40000000
_NOCOOKIE = 0xFFFF_FFFF_FFFF_FFFF
"""``INET_DIAG_NOCOOKIE`` in both halves: match the 4-tuple, whatever the socket's cookie."""
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass(frozen=True, slots=True)
class Owner:
    """The process that held a flow's socket."""

    pid: int
    """Process id (thread-group leader) in the pid namespace of this program."""
    comm: str
    """``/proc/PID/comm``: the name the process gave itself (15 bytes at most)."""
    exe: str
    """Basename of ``/proc/PID/exe``; empty when unreadable (no root, kernel thread)."""
    uid: int
    """Effective uid of the process."""
    user: str
    """User name of ``uid``, or the number as text when it has no name."""
    cgroup: str
    """cgroup v2 path (the ``0::`` line of ``/proc/PID/cgroup``); empty on a v1-only host."""
    inode: int
    """The socket's inode (``socket:[INODE]``)."""
    source: Literal["live", "remembered"] = "live"
    """``live``: read from the running process; ``remembered``: it had exited, so this is what
    an earlier /proc scan saw."""
    ancestors: tuple[int, ...] = ()
    """Parent, grandparent, ... (pid 1 and the kernel's 0 left out), as they were when the
    process was first read: a build's short-lived ``sh -c curl`` is told from another program
    even after the shell has exited (``egresswatch ci``'s process-tree scope)."""


@dataclass(frozen=True, slots=True)
class NotFound:
    """No process could be named for a flow, and why."""

    reason: Reason
    """``no_socket``, ``orphaned`` or ``no_process`` (see the module docstring)."""
    detail: str
    """One line for a person, with the flow."""
    inode: int = 0
    """The socket's inode when the kernel had one."""
    uid: int | None = None
    """The socket's uid when the kernel had the socket (the creator's, even when orphaned)."""


class Bounded(Generic[K, V]):
    """A dict with a maximum size that drops the least recently used entry to make room and,
    with ``max_age``, the entries not used for longer than ``max_age`` seconds (by ``clock``).

    Without an age limit a table that only ever receives new keys (flows, socket inodes) grows
    until it is full, however slowly; with one it holds what the last ``max_age`` seconds
    brought, so its size follows the current rate instead of all history.
    """

    def __init__(
        self,
        limit: int,
        *,
        max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            msg = f"a bounded table needs room for one entry, not {limit!r}"
            raise ValueError(msg)
        self.limit = limit
        self.max_age = max_age
        self.evictions = 0
        """Entries dropped to make room."""
        self.expired = 0
        """Entries dropped for age."""
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or ``None`` (also when it has
        not been used for ``max_age`` seconds)."""
        item = self._items.get(key)
        if item is None:
            return None
        now = self._clock()
        if self.max_age is not None and now - item[0] > self.max_age:
            del self._items[key]
            self.expired += 1
            return None
        self._items[key] = (now, item[1])
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        """Set ``key``; drop the entries too old to keep, then the least recently used ones
        while the table is over its limit."""
        now = self._clock()
        items = self._items
        items[key] = (now, value)
        items.move_to_end(key)
        if self.max_age is not None:
            # Least recently used first: the stale entries are at the front.
            cutoff = now - self.max_age
            while True:
                oldest = next(iter(items))
                if items[oldest][0] >= cutoff:
                    break
                del items[oldest]
                self.expired += 1
        while len(items) > self.limit:
            items.popitem(last=False)
            self.evictions += 1

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value, or ``None``."""
        item = self._items.pop(key, None)
        return None if item is None else item[1]

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._items)


@dataclass(frozen=True, slots=True)
class _Proc:
    """What a scan kept of a process, for answering after it exits."""

    start: int
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat): tells pid reuse."""
    comm: str
    exe: str
    uid: int
    cgroup: str
    ancestors: tuple[int, ...] = ()


FlowKey = tuple[str, bytes, int, bytes, int]

FLOW_MAX_AGE = 300.0
"""Seconds a flow's answer is kept after its last use: its ClientHello follows its first
packet within a round trip or two, so five minutes is ample, and a host that makes a new
connection every few seconds does not fill the table over a day."""
RECENT_OWNERS = 8
"""The processes most recently named by a lookup, whose fd tables a miss reads before (and
whatever the rate limit of) a full scan."""
INODE_MAX_AGE = 600.0
"""Seconds a socket inode a scan saw is kept unused: most are looked up within seconds of the
scan that found them (a connection pool opening several at once), or never (sockets closed
since)."""


class SocketOwners:
    """Find the local process of a TCP or UDP flow: sock_diag for the inode, /proc for the pid.

    Not thread-safe: one per capture loop. Close it (or use ``with``) to release the netlink
    socket.
    """

    def __init__(
        self,
        *,
        netns: str | os.PathLike[str] | None = None,
        max_flows: int = 16384,
        max_inodes: int = 65536,
        max_procs: int = 4096,
        flow_max_age: float = FLOW_MAX_AGE,
        inode_max_age: float = INODE_MAX_AGE,
        full_scan_interval: float = 1.0,
        young: float = 2.0,
        proc: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._diag = _open_diag(netns)
        self._sequence = 0
        self._proc = proc
        self._clock = clock
        self.full_scan_interval = full_scan_interval
        self.young = young
        self._flows: Bounded[FlowKey, Owner] = Bounded(max_flows, max_age=flow_max_age, clock=clock)
        self._inodes: Bounded[int, tuple[int, int]] = Bounded(
            max_inodes, max_age=inode_max_age, clock=clock
        )
        self._procs: Bounded[int, _Proc] = Bounded(max_procs)
        self._recent: OrderedDict[int, None] = OrderedDict()
        """The last :data:`RECENT_OWNERS` processes named, most recent last."""
        self._first_seen: dict[int, float] = {}
        """pid -> when a refresh first listed it (-inf: in the first listing)."""
        self._last_full = -float("inf")
        self._users: dict[int, str] = {}
        self._counts = dict.fromkeys(
            (
                "lookups",
                "flow_hits",
                "inode_hits",
                "refreshes",
                "recent_hits",
                "full_scans",
                "full_scans_skipped",
                "scanned_pids",
                "attributed",
                "remembered",
                "no_socket",
                "orphaned",
                "no_process",
                "diag_errors",
            ),
            0,
        )

    def __enter__(self) -> SocketOwners:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the netlink socket; the tables stay readable."""
        self._diag.close()

    def lookup(
        self,
        proto: Transport,
        local_ip: str,
        local_port: int,
        remote_ip: str,
        remote_port: int,
        *,
        first_packet: bool = False,
    ) -> Owner | NotFound:
        """The process of the flow; ``first_packet=True`` at a flow's first packet.

        A flow seen before answers from the flow table, even when its process has exited;
        ``first_packet`` asks the kernel again (a new flow on a reused 4-tuple). A
        :class:`NotFound` is not kept, so a later lookup of the flow tries again.
        """
        self._counts["lookups"] += 1
        local = ipaddress.ip_address(local_ip).packed
        remote = ipaddress.ip_address(remote_ip).packed
        key: FlowKey = (proto, local, local_port, remote, remote_port)
        if not first_packet:
            known = self._flows.get(key)
            if known is not None:
                self._counts["flow_hits"] += 1
                return known
        flow = f"{proto} {local_ip}:{local_port} -> {remote_ip}:{remote_port}"
        found = self._socket(proto, local, local_port, remote, remote_port)
        if found is None:
            self._counts["no_socket"] += 1
            return NotFound("no_socket", f"no socket for {flow} in this network namespace")
        inode, uid = found
        if inode == 0:
            self._counts["orphaned"] += 1
            return NotFound("orphaned", f"the socket of {flow} is closed (no inode)", 0, uid)
        result = self._owner(inode)
        if result is None:
            self._counts["no_process"] += 1
            detail = f"no process holds socket:[{inode}] of {flow}"
            return NotFound("no_process", detail, inode, uid)
        self._counts["attributed"] += 1
        if result.source == "remembered":
            self._counts["remembered"] += 1
        else:
            recent = self._recent
            recent[result.pid] = None
            recent.move_to_end(result.pid)
            if len(recent) > RECENT_OWNERS:
                recent.popitem(last=False)
        self._flows.put(key, result)
        return result

    def forget(
        self, proto: Transport, local_ip: str, local_port: int, remote_ip: str, remote_port: int
    ) -> None:
        """Drop a flow's entry (the capture side saw it end)."""
        local = ipaddress.ip_address(local_ip).packed
        remote = ipaddress.ip_address(remote_ip).packed
        self._flows.pop((proto, local, local_port, remote, remote_port))

    def stats(self) -> dict[str, int]:
        """Counters since creation, and the size of each table.

        - ``lookups``: calls of :meth:`lookup`; ``flow_hits``: answered from the flow table;
        - ``inode_hits``: the inode table named a pid that still held the socket;
        - ``refreshes``: misses that read /proc; ``scanned_pids``: fd tables read by them;
          ``recent_hits``: refreshes answered by the :data:`RECENT_OWNERS` processes named
          most recently;
        - ``full_scans``: refreshes that went on to the pids seen before;
          ``full_scans_skipped``: ones refused because the last one was too recent;
        - ``attributed``: lookups (not flow hits) that named a process, ``remembered`` of them
          from a scan's memory; ``no_socket``, ``orphaned``, ``no_process``: the
          :class:`NotFound` reasons; ``diag_errors``: netlink requests that failed;
        - ``flows``, ``inodes``, ``procs``: table sizes; ``evictions``: entries dropped by the
          three tables to stay within their limits; ``expired``: flows and inodes dropped for
          age (:data:`FLOW_MAX_AGE`, :data:`INODE_MAX_AGE`).
        """
        out = dict(self._counts)
        out["flows"] = len(self._flows)
        out["inodes"] = len(self._inodes)
        out["procs"] = len(self._procs)
        out["evictions"] = self._flows.evictions + self._inodes.evictions + self._procs.evictions
        out["expired"] = self._flows.expired + self._inodes.expired
        return out

    # -- the kernel ---------------------------------------------------------------------------

    def _socket(
        self, proto: Transport, local: bytes, lport: int, remote: bytes, rport: int
    ) -> tuple[int, int] | None:
        """``(inode, uid)`` of the socket of a 4-tuple, or ``None`` when there is none."""
        if len(local) != len(remote):
            return None
        self._sequence = sequence = self._sequence % 0xFFFF_FFFF + 1
        req = inet_diag_req()
        req["header"]["type"] = SOCK_DIAG_BY_FAMILY
        req["header"]["flags"] = NLM_F_REQUEST
        req["header"]["sequence_number"] = sequence
        req["sdiag_family"] = socket.AF_INET if len(local) == 4 else socket.AF_INET6
        req["sdiag_protocol"] = _PROTOCOLS[proto]
        req["idiag_states"] = SS_ALL
        if proto == "udp":  # udp_dump_one: the socket that would receive from src to dst
            local, lport, remote, rport = remote, rport, local, lport
        req["idiag_src"] = struct.unpack(">4I", local.ljust(16, b"\0"))
        req["idiag_dst"] = struct.unpack(">4I", remote.ljust(16, b"\0"))
        req["idiag_sport"] = lport
        req["idiag_dport"] = rport
        req["idiag_if"] = 0
        req["idiag_cookie"] = _NOCOOKIE
        req.encode()
        try:
            self._diag.send(req.data)
            while True:
                data = self._diag.recv(_DIAG_ANSWER)
                # nlmsghdr: length, type, flags, sequence number, port id
                mtype, seq = _NLMSGHDR.unpack_from(data, 4)[0::2]
                if seq == sequence:
                    break  # else the late answer to an earlier request that timed out
        except OSError:  # a timeout, or the socket refused: a counted miss
            self._counts["diag_errors"] += 1
            return None
        if mtype == NLMSG_ERROR:
            return None  # ENOENT: no such socket
        if mtype != SOCK_DIAG_BY_FAMILY:
            self._counts["diag_errors"] += 1
            return None
        msg = inet_diag_msg(data)
        msg.decode()
        return int(msg["idiag_inode"]), int(msg["idiag_uid"])

    # -- /proc --------------------------------------------------------------------------------

    def _owner(self, inode: int) -> Owner | None:
        gone: int | None = None
        held = self._inodes.get(inode)
        if held is not None:
            pid, fd = held
            if _link(f"{self._proc}/{pid}/fd/{fd}") == f"socket:[{inode}]":
                owner = self._describe(pid, inode)
                if owner is not None:
                    self._counts["inode_hits"] += 1
                    return owner
            if not os.path.exists(f"{self._proc}/{pid}"):
                gone = pid
            self._inodes.pop(inode)
        held = self._refresh(inode)
        if held is not None:
            owner = self._describe(held[0], inode)
            if owner is not None:
                return owner
            gone = held[0]
        if gone is not None:
            return self._remembered(gone, inode)
        return None

    def _refresh(self, inode: int) -> tuple[int, int] | None:
        """Read fd tables until one holds ``inode``: new and young pids, then (rate-limited) all.

        A pid first read less than ``young`` seconds ago is read again: a process forked
        shortly before opens its socket after its first reading (``fork``, ``exec``, resolve,
        ``connect``), and short-lived clients are what a full scan arrives too late for.
        """
        self._counts["refreshes"] += 1
        now = self._clock()
        pids = _pids(self._proc)
        live = set(pids)
        for gone in self._first_seen.keys() - live:
            del self._first_seen[gone]
        # the processes of the first listing were there before us: not young
        born = now if self._first_seen else -float("inf")
        for pid in live - self._first_seen.keys():
            self._first_seen[pid] = born
        fresh = [pid for pid in pids if now - self._first_seen[pid] < self.young]
        found = self._scan(fresh, inode)
        if found is not None:
            return found
        # Processes that held sockets before (most recently seen first) open most new ones:
        # the few most recent are read every time (a long-running client, an editor's
        # language server, opens connection after connection), the rest in a full scan.
        seen = set(fresh)
        recent = [pid for pid in reversed(self._recent) if pid in live and pid not in seen]
        found = self._scan(recent, inode)
        if found is not None:
            self._counts["recent_hits"] += 1
            return found
        if now - self._last_full < self.full_scan_interval:
            self._counts["full_scans_skipped"] += 1
            return None
        self._counts["full_scans"] += 1
        seen.update(recent)
        owners = [pid for pid in reversed(self._procs.keys()) if pid in live and pid not in seen]
        seen.update(owners)
        found = self._scan([*owners, *(pid for pid in pids if pid not in seen)], inode)
        if found is None:
            self._last_full = now
        return found

    def _scan(self, pids: Iterable[int], inode: int) -> tuple[int, int] | None:
        """Read the fd tables of ``pids`` (in order) into the inode table; stop at ``inode``."""
        for pid in pids:
            self._counts["scanned_pids"] += 1
            found = None
            sockets = False
            try:
                with os.scandir(f"{self._proc}/{pid}/fd") as entries:
                    for entry in entries:
                        link = _link(entry.path)
                        if not link.startswith("socket:["):
                            continue
                        sockets = True
                        held = int(link[8:-1])
                        self._inodes.put(held, (pid, int(entry.name)))
                        if held == inode:
                            found = (pid, int(entry.name))
            except OSError:  # exited, or not ours to read without root
                continue
            if sockets:
                self._keep(pid)
            if found is not None:
                return found
        return None

    def _keep(self, pid: int) -> None:
        """Keep what a later answer needs if ``pid`` exits (unless already kept for it)."""
        start = _start_time(self._proc, pid)
        if start is None:
            return
        if self._unchanged(pid, start) is not None:
            return
        proc = self._read(pid, start)
        if proc is not None:
            self._procs.put(pid, proc)

    def _unchanged(self, pid: int, start: int) -> _Proc | None:
        """What was kept of ``pid`` if it is the same process (start time) and has not called
        ``exec`` since (a forked child inherits sockets); else ``None``."""
        kept = self._procs.get(pid)
        if kept is None or kept.start != start:
            return None
        exe = _link(f"{self._proc}/{pid}/exe")
        if not exe or os.path.basename(exe.removesuffix(" (deleted)")) != kept.exe:
            return None
        return kept

    def _read(self, pid: int, start: int) -> _Proc | None:
        base = f"{self._proc}/{pid}"
        try:
            with open(f"{base}/comm", encoding="utf-8", errors="replace") as fh:
                comm = fh.read().rstrip("\n")
            with open(f"{base}/status", encoding="utf-8", errors="replace") as fh:
                uid = _euid(fh.read())
            with open(f"{base}/cgroup", encoding="utf-8", errors="replace") as fh:
                cgroup = _cgroup_v2(fh.read())
        except OSError:
            return None
        exe = _link(f"{base}/exe")
        exe = os.path.basename(exe.removesuffix(" (deleted)"))
        return _Proc(start, comm, exe, uid, cgroup, _ancestors(self._proc, pid))

    def _describe(self, pid: int, inode: int) -> Owner | None:
        """``pid`` as it is now; ``None`` if gone. What was read of it before is used again
        while its start time and executable are the same (an ``exec`` changes the latter)."""
        start = _start_time(self._proc, pid)
        if start is None:
            return None
        kept = self._unchanged(pid, start)
        if kept is not None:
            return self._make(pid, kept, inode, "live")
        proc = self._read(pid, start)
        if proc is None or _start_time(self._proc, pid) != start:
            return None
        self._procs.put(pid, proc)
        return self._make(pid, proc, inode, "live")

    def _remembered(self, pid: int, inode: int) -> Owner | None:
        proc = self._procs.get(pid)
        return None if proc is None else self._make(pid, proc, inode, "remembered")

    def _make(
        self, pid: int, proc: _Proc, inode: int, source: Literal["live", "remembered"]
    ) -> Owner:
        return Owner(pid, proc.comm, proc.exe, proc.uid, self._user(proc.uid), proc.cgroup,
                     inode, source, proc.ancestors)  # fmt: skip

    def _user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name


NETLINK_SOCK_DIAG = 4
_NLMSGHDR = struct.Struct("=HHII")
"""nlmsghdr after its length: type, flags, sequence number, port id."""
_DIAG_ANSWER = 8192
"""Bytes read for one answer: an inet_diag_msg (72) with no attributes asked for, or an
error (36), with room to spare."""
DIAG_TIMEOUT = 1.0
"""Seconds one sock_diag request may take (the kernel answers in microseconds)."""


def _open_diag(netns: str | os.PathLike[str] | None) -> socket.socket:
    """A bound ``NETLINK_SOCK_DIAG`` socket, opened inside ``netns`` when given (it keeps that
    namespace)."""
    with _entered(netns):
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        diag.bind((0, 0))
        diag.settimeout(DIAG_TIMEOUT)
    except OSError:
        diag.close()
        raise
    return diag


@contextlib.contextmanager
def _entered(netns: str | os.PathLike[str] | None) -> Iterator[None]:
    """Move this thread into the network namespace at ``netns`` for the block."""
    if netns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        there = os.open(netns, os.O_RDONLY)
    except OSError as exc:
        msg = f"cannot open network namespace {os.fspath(netns)!r}: {exc.strerror}"
        raise CaptureError(msg) from exc
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.setns(there, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            msg = f"cannot enter network namespace {os.fspath(netns)!r}: {os.strerror(err)}"
            raise CaptureError(msg)
        try:
            yield
        finally:
            if libc.setns(here, _CLONE_NEWNET) != 0:  # pragma: no cover - only if /proc lies
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
    finally:
        os.close(here)
        os.close(there)


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _pids(proc: str) -> list[int]:
    """Process ids in /proc, newest (highest) first."""
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    return sorted((int(name) for name in names if name.isdigit()), reverse=True)


MAX_ANCESTORS = 64
"""Most ancestors read for one process (a deeper tree is cut there)."""


def _stat_fields(proc: str, pid: int) -> list[bytes]:
    """Fields 3 on of ``/proc/PID/stat`` (state, ppid, ...); empty when unreadable."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return []
    # comm (field 2) may hold spaces and parentheses: fields resume after the last ')'
    return stat[stat.rfind(b")") + 2 :].split()


def _start_time(proc: str, pid: int) -> int | None:
    fields = _stat_fields(proc, pid)
    return int(fields[19]) if len(fields) > 19 else None


def _ancestors(proc: str, pid: int) -> tuple[int, ...]:
    """The parent chain of ``pid`` up to (not including) pid 1, as far as it is readable."""
    chain: list[int] = []
    current = pid
    while len(chain) < MAX_ANCESTORS:
        fields = _stat_fields(proc, current)
        if len(fields) < 2:
            break
        current = int(fields[1])
        if current <= 1 or current in chain:
            break
        chain.append(current)
    return tuple(chain)


def _euid(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    return -1


def _cgroup_v2(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""
