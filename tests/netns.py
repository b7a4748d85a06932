"""Two network namespaces joined by a veth pair, for tests that need real traffic.

Traffic stays inside namespaces the test creates; they are deleted on the way out, on failure
too, and stale ones left by a killed run are deleted the next time a pair is made::

    from tests.netns import unavailable, veth_pair

    pytestmark = [pytest.mark.root, pytest.mark.netns]

    def test_something(tmp_path):
        with veth_pair(mtu=1280) as pair:
            server = pair.server.ns.popen("python3", "-m", "http.server", "80")
            pair.client.ns.run("curl", f"http://{pair.server.ip4}/", timeout=10)
            with pair.client.ns.entered():        # this thread is now inside the namespace
                sock = socket.socket(...)         # and so is everything it opens

``unavailable()`` says why namespaces cannot be made here (not root, no ``ip``, a kernel or
container that refuses), or ``None``. ``veth_pair(mtu=..., gso=False)`` gives wire-sized
segments instead of GSO super-packets; ``wait_for_port`` and ``wait_for_operstate`` wait (with a
time limit) for a server or an interface; ``Netns.popen`` processes are stopped before their
namespace is deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PREFIX = "ewt"
"""Every namespace made here is named ``ewt<pid>x<n><side>`` so stale ones can be found."""
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
CLIENT4, SERVER4 = "10.200.0.1", "10.200.0.2"
CLIENT6, SERVER6 = "fd00:e6::1", "fd00:e6::2"

_counter = itertools.count()


def _ip(*argv: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *argv], capture_output=True, text=True, check=check, timeout=timeout
    )


@cache
def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces and veth pairs"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip netns`)"
    name = f"{PREFIX}{os.getpid()}probe"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Netns:
    """One named network namespace; the processes started in it are stopped with it."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, *argv: str) -> list[str]:
        """``argv`` wrapped to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        *argv: str,
        timeout: float = 30,
        check: bool = True,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the namespace and wait for it (at most ``timeout`` seconds)."""
        return subprocess.run(
            self.argv(*argv),
            capture_output=True,
            check=check,
            timeout=timeout,
            input=input,
            env=env,
        )

    def popen(self, *argv: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace; it is killed when the namespace goes."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.argv(*argv), **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into the namespace for the ``with`` block.

        Sockets opened inside keep the namespace after the block ends. Only this thread moves.
        """
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(NETNS_DIR / self.name, os.O_RDONLY)
        try:
            _setns(there)
            try:
                yield
            finally:
                _setns(here)
        finally:
            os.close(there)
            os.close(here)

    def stop_processes(self, grace: float = 3.0) -> None:
        """Terminate every process started with :meth:`popen`, then kill what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for proc in self.procs:
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self.procs.clear()


@dataclass(frozen=True)
class Side:
    """One end of the veth pair."""

    ns: Netns
    ifname: str
    """The veth inside ``ns``."""
    ip4: str
    ip6: str
    mac: str


@dataclass(frozen=True)
class VethPair:
    """``client`` and ``server`` namespaces joined by one veth; loopback up in both."""

    client: Side
    server: Side
    mtu: int
    gso: bool


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces a killed test run left behind (their pid is gone); return their names.

    Only names that start with ``prefix`` followed by a pid are looked at."""
    gone = []
    for path in NETNS_DIR.glob(f"{prefix}*") if NETNS_DIR.is_dir() else ():
        digits = "".join(itertools.takewhile(str.isdigit, path.name[len(prefix) :]))
        if digits and not Path(f"/proc/{digits}").exists():
            _ip("netns", "del", path.name, check=False)
            gone.append(path.name)
    return gone


def _mac(ns: Netns, ifname: str) -> str:
    out = ns.run("cat", f"/sys/class/net/{ifname}/address").stdout.decode().strip()
    return out


@contextlib.contextmanager
def veth_pair(
    *, mtu: int | None = None, ipv6: bool = True, gso: bool = True, prefix: str = PREFIX
) -> Iterator[VethPair]:
    """Make a client and a server namespace joined by a veth pair; delete both afterwards.

    Addresses: client 10.200.0.1 / fd00:e6::1, server 10.200.0.2 / fd00:e6::2 (each pair has
    its own namespaces, so pairs never clash). IPv6 addresses skip duplicate address detection
    so they work at once. ``mtu`` sets both ends (default 1500). ``gso=False`` limits both ends
    to one segment per packet (``gso_max_segs 1``), so captures see wire-sized TCP segments as a
    router or the far end would, instead of the 64 KB super-packets a sender hands to its NIC.
    ``prefix`` starts the namespaces' names (``<prefix><pid>x<n>c`` and ``...s``), so that
    tools sharing a machine can tell theirs apart; stale ones with the same prefix are deleted.
    """
    cleanup_stale(prefix)
    tag = f"{prefix}{os.getpid()}x{next(_counter)}"
    client, server = Netns(f"{tag}c"), Netns(f"{tag}s")
    made: list[Netns] = []
    try:
        for ns in (client, server):
            _ip("netns", "add", ns.name)
            made.append(ns)
            _ip("-n", ns.name, "link", "set", "lo", "up")
        # Interface names must be unique only within a namespace, so they can be fixed.
        _ip(
            "-n",
            client.name,
            "link",
            "add",
            "veth-c",
            "type",
            "veth",
            "peer",
            "name",
            "veth-s",
            "netns",
            server.name,
        )
        for ns, ifname, ip4, ip6 in (
            (client, "veth-c", CLIENT4, CLIENT6),
            (server, "veth-s", SERVER4, SERVER6),
        ):
            if mtu is not None:
                _ip("-n", ns.name, "link", "set", ifname, "mtu", str(mtu))
            if not gso:
                _ip("-n", ns.name, "link", "set", ifname, "gso_max_segs", "1")
            _ip("-n", ns.name, "addr", "add", f"{ip4}/24", "dev", ifname)
            if ipv6:
                _ip("-n", ns.name, "addr", "add", f"{ip6}/64", "dev", ifname, "nodad")
            _ip("-n", ns.name, "link", "set", ifname, "up")
        pair = VethPair(
            client=Side(client, "veth-c", CLIENT4, CLIENT6, _mac(client, "veth-c")),
            server=Side(server, "veth-s", SERVER4, SERVER6, _mac(server, "veth-s")),
            mtu=mtu or 1500,
            gso=gso,
        )
        _wait_up(pair)
        yield pair
    finally:
        for ns in made:
            ns.stop_processes()
        for ns in made:
            _ip("netns", "del", ns.name, check=False)


def _wait_up(pair: VethPair, limit: float = 5.0) -> None:
    for side in (pair.client, pair.server):
        wait_for_operstate(side.ns, side.ifname, limit=limit)


def wait_for_operstate(ns: Netns, ifname: str, *, limit: float = 5.0) -> None:
    """Wait until ``ifname`` in ``ns`` is operationally up.

    Until the kernel's link watcher runs (up to a second after ``ip link set up``) the device
    keeps its no-op queue and drops what is sent; traffic before that would be lost.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        state = ns.run("cat", f"/sys/class/net/{ifname}/operstate").stdout
        if state.strip() == b"up":
            return
        time.sleep(0.05)
    msg = f"{ifname} in {ns.name} did not come up within {limit} s"
    raise RuntimeError(msg)


def wait_for_port(ns: Netns, port: int, *, udp: bool = False, limit: float = 10.0) -> None:
    """Wait until something listens on ``port`` in ``ns`` (``ss``), at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    flag = "-uln" if udp else "-tln"
    while time.monotonic() < deadline:
        out = ns.run("ss", "-H", flag, f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    msg = f"nothing listens on {'udp' if udp else 'tcp'} port {port} in {ns.name} after {limit} s"
    raise TimeoutError(msg)


# -- link tuning for end-to-end tests (tests/test_e2e_live.py) ---------------------------------


def disable_offloads(side: Side) -> str | None:
    """Turn off TSO, GSO and GRO on ``side``'s veth (``ethtool -K``); say why not, or ``None``.

    With them off the kernel hands the capture point wire-sized segments, as a NIC without
    offloads would; ``veth_pair(gso=False)`` gets most of the way without ethtool.
    """
    if shutil.which("ethtool") is None:
        return "ethtool is not installed (apt install ethtool); offloads left as they are"
    done = side.ns.run(
        "ethtool", "-K", side.ifname, "tso", "off", "gso", "off", "gro", "off", check=False
    )
    if done.returncode != 0:
        return f"ethtool -K {side.ifname} failed: {done.stderr.decode(errors='replace').strip()}"
    return None


def set_route_mtu(side: Side, prefix: str, mtu: int) -> None:
    """Route ``prefix`` out of ``side``'s veth with a locked path MTU of ``mtu``.

    An IPv4 route MTU below the link's gives smaller TCP segments (MSS ``mtu - 40``) and makes the
    kernel fragment larger UDP datagrams, while IPv6 on the same link keeps the link MTU (an
    interface MTU below 1280 would switch IPv6 off).
    """
    family = "-6" if ":" in prefix else "-4"
    _ip(family, "-n", side.ns.name, "route", "replace", prefix, "dev", side.ifname,
        "mtu", "lock", str(mtu))  # fmt: skip


def wait_for_file(
    path: Path, text: str, *, limit: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> str:
    """Wait until ``path`` holds ``text`` (a process's log line); return the file's text.

    Gives up after ``limit`` seconds, or early when ``proc`` has exited, with
    :class:`TimeoutError` carrying what the file held.
    """
    deadline = time.monotonic() + limit
    content = ""
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    msg = f"{path} did not show {text!r} within {limit} s: {content[-2000:]!r}"
    raise TimeoutError(msg)
