"""probes.sockets against the real kernel: sockets of this process, short-lived children, netns.

No kernel is mocked: every socket here is real, found with sock_diag and /proc.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes.errors import CaptureError
from probes.sockets import (
    Bounded,
    NotFound,
    Owner,
    SocketOwners,
    _ancestors,
    _cgroup_v2,
    _start_time,
)
from tests.netns import veth_pair

LOOPBACKS = ["127.0.0.1", "::1"]


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _self_cgroup() -> str:
    return _cgroup_v2(Path("/proc/self/cgroup").read_text())


@pytest.fixture
def owners() -> Iterator[SocketOwners]:
    with SocketOwners() as found:
        yield found


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    ip = getattr(request, "param", "127.0.0.1")
    with socket.socket(_family(ip), socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        sock.listen(16)
        yield sock


def _assert_is_me(owner: Owner | NotFound, sock: socket.socket) -> None:
    assert isinstance(owner, Owner), owner
    assert owner.pid == os.getpid()
    assert owner.comm == Path("/proc/self/comm").read_text().strip()
    assert owner.exe == os.path.basename(os.readlink("/proc/self/exe"))
    assert owner.uid == os.geteuid() == 0
    assert owner.user == "root"
    assert owner.cgroup == _self_cgroup()
    assert owner.inode == os.fstat(sock.fileno()).st_ino
    assert owner.source == "live"


@pytest.mark.parametrize("listener", LOOPBACKS, indirect=True)
def test_tcp_connection_of_this_process(owners: SocketOwners, listener: socket.socket) -> None:
    ip, port = listener.getsockname()[:2]
    with socket.create_connection((ip, port)) as client:
        server, _ = listener.accept()
        with server:
            lport = client.getsockname()[1]
            _assert_is_me(owners.lookup("tcp", ip, lport, ip, port, first_packet=True), client)
            # the accepted end is a flow too, seen from the other side
            _assert_is_me(owners.lookup("tcp", ip, port, ip, lport, first_packet=True), server)
    assert owners.stats()["attributed"] == 2


@pytest.mark.parametrize("ip", LOOPBACKS)
def test_connected_udp_socket_of_this_process(owners: SocketOwners, ip: str) -> None:
    with socket.socket(_family(ip), socket.SOCK_DGRAM) as sock:
        sock.connect((ip, 443))
        lport = sock.getsockname()[1]
        _assert_is_me(owners.lookup("udp", ip, lport, ip, 443, first_packet=True), sock)


@pytest.mark.parametrize("ip", LOOPBACKS)
def test_unconnected_udp_socket_is_found_by_its_port(owners: SocketOwners, ip: str) -> None:
    # QUIC clients often send with sendto() from a socket bound to the wildcard address
    with socket.socket(_family(ip), socket.SOCK_DGRAM) as sock:
        sock.sendto(b"initial", (ip, 9))
        lport = sock.getsockname()[1]
        _assert_is_me(owners.lookup("udp", ip, lport, ip, 9, first_packet=True), sock)


def test_ipv4_flow_of_a_dual_stack_socket(owners: SocketOwners, listener: socket.socket) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client:
        client.connect(("::ffff:127.0.0.1", listener.getsockname()[1]))
        lport = client.getsockname()[1]
        found = owners.lookup("tcp", "127.0.0.1", lport, *listener.getsockname(), first_packet=True)
        _assert_is_me(found, client)
        listener.accept()[0].close()


def test_no_socket_is_said_not_found(owners: SocketOwners) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    found = owners.lookup("tcp", "127.0.0.1", port, "127.0.0.1", 1)
    assert isinstance(found, NotFound)
    assert found.reason == "no_socket"
    assert f"127.0.0.1:{port}" in found.detail
    assert owners.stats()["no_socket"] == 1


def test_flow_table_answers_after_the_socket_is_gone(
    owners: SocketOwners, listener: socket.socket
) -> None:
    ip, port = listener.getsockname()
    client = socket.create_connection((ip, port))
    server, _ = listener.accept()
    lport = client.getsockname()[1]
    first = owners.lookup("tcp", ip, lport, ip, port, first_packet=True)
    assert isinstance(first, Owner)
    client.close()  # FIN_WAIT: the kernel keeps the socket, without an inode
    assert owners.lookup("tcp", ip, lport, ip, port) == first
    assert owners.stats()["flow_hits"] == 1
    again = owners.lookup("tcp", ip, lport, ip, port, first_packet=True)
    assert isinstance(again, NotFound)
    assert again.reason == "orphaned"
    assert again.uid == 0
    server.close()
    owners.forget("tcp", ip, lport, ip, port)
    assert isinstance(owners.lookup("tcp", ip, lport, ip, port), NotFound)


class _OneShotServer:
    """Accepts one connection, hands its peer to the test, answers when told to."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.peer: tuple[str, int] | None = None
        self.accepted = threading.Event()
        self.answer = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(20)
        conn, peer = self.listener.accept()
        with conn:
            self.peer = peer[:2]
            self.accepted.set()
            self.answer.wait(20)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("listener", LOOPBACKS, indirect=True)
def test_short_lived_curl_is_named_and_remembered_after_exit(
    owners: SocketOwners, listener: socket.socket
) -> None:
    ip, port = listener.getsockname()[:2]
    server = _OneShotServer(listener)
    host = f"[{ip}]" if ":" in ip else ip
    curl = subprocess.Popen(
        ["curl", "-sS", "--max-time", "20", f"http://{host}:{port}/"], stdout=subprocess.PIPE
    )
    assert server.accepted.wait(20)
    assert server.peer is not None
    peer_ip, peer_port = server.peer
    found = owners.lookup("tcp", peer_ip, peer_port, ip, port, first_packet=True)
    assert isinstance(found, Owner), found
    assert (found.pid, found.comm, found.exe) == (curl.pid, "curl", "curl")
    assert found.uid == 0
    assert found.cgroup == _self_cgroup()
    server.answer.set()
    out, _ = curl.communicate(timeout=20)
    assert out == b"ok"
    server.thread.join(5)
    # the process is gone; the flow's later packets (its ClientHello) still get it
    assert owners.lookup("tcp", peer_ip, peer_port, ip, port) == found
    # a table that never saw the flow cannot name it: the socket closed before its lookup
    with SocketOwners() as late:
        missed = late.lookup("tcp", peer_ip, peer_port, ip, port)
    assert isinstance(missed, NotFound)
    assert missed.reason in {"orphaned", "no_socket"}


CHILD = """
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(conn.getsockname()[1], flush=True)
sys.stdin.readline()
# pass the socket away in a message nobody has received yet, then exit: the socket lives on
# with its inode, and no process's fd table holds it
socket.send_fds(socket.socket(fileno=int(sys.argv[2])), [b"x"], [conn.fileno()])
"""


def test_exited_owner_is_remembered_from_the_scan(
    owners: SocketOwners, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    here, there = socket.socketpair()
    with here, there:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port), str(there.fileno())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[there.fileno()],
        )
        assert child.stdout is not None and child.stdin is not None
        lport = int(child.stdout.readline())
        accepted, _ = listener.accept()
        seen = owners.lookup("tcp", "127.0.0.1", lport, "127.0.0.1", port, first_packet=True)
        assert isinstance(seen, Owner)
        assert seen.pid == child.pid
        child.stdin.write(b"go\n")
        child.stdin.close()
        assert child.wait(20) == 0
        child.stdout.close()
        again = owners.lookup("tcp", "127.0.0.1", lport, "127.0.0.1", port, first_packet=True)
        assert isinstance(again, Owner), again
        assert again.source == "remembered"
        assert (again.pid, again.comm, again.inode) == (seen.pid, seen.comm, seen.inode)
        assert owners.stats()["remembered"] == 1
        accepted.close()
        _, fds, _, _ = socket.recv_fds(here, 16, 1)
        os.close(fds[0])


def test_full_scans_are_rate_limited(listener: socket.socket) -> None:
    now = [100.0]
    here, there = socket.socketpair()
    with here, there, SocketOwners(full_scan_interval=5.0, clock=lambda: now[0]) as owners:
        client = socket.create_connection(listener.getsockname())
        flow = ("127.0.0.1", client.getsockname()[1], *listener.getsockname())
        listener.accept()[0].close()
        # in flight in a message, the socket keeps its inode but no fd table holds it
        socket.send_fds(here, [b"x"], [client.fileno()])
        client.close()
        for _ in range(3):
            found = owners.lookup("tcp", *flow, first_packet=True)
            assert isinstance(found, NotFound)
            assert found.reason == "no_process"
            assert found.inode > 0
        stats = owners.stats()
        assert (stats["refreshes"], stats["full_scans"], stats["full_scans_skipped"]) == (3, 1, 2)
        now[0] += 5.0
        owners.lookup("tcp", *flow, first_packet=True)
        assert owners.stats()["full_scans"] == 2
        _, fds, _, _ = socket.recv_fds(there, 16, 1)
        os.close(fds[0])


def test_a_recent_owner_is_read_whatever_the_rate_limit(listener: socket.socket) -> None:
    # This process is old (in the first listing, not young) and opens connection after
    # connection: once it has held a socket, its new ones are found even while full scans are
    # rate-limited by a miss just before.
    now = [100.0]
    here, there = socket.socketpair()
    with here, there, SocketOwners(full_scan_interval=5.0, clock=lambda: now[0]) as owners:
        first = socket.create_connection(listener.getsockname())
        flow = ("127.0.0.1", first.getsockname()[1], *listener.getsockname())
        found = owners.lookup("tcp", *flow, first_packet=True)
        assert isinstance(found, Owner) and found.pid == os.getpid()
        # a miss: the socket is in flight in a message, no fd table holds it
        lost = socket.create_connection(listener.getsockname())
        lost_flow = ("127.0.0.1", lost.getsockname()[1], *listener.getsockname())
        socket.send_fds(here, [b"x"], [lost.fileno()])
        lost.close()
        missed = owners.lookup("tcp", *lost_flow, first_packet=True)
        assert isinstance(missed, NotFound) and missed.reason == "no_process"
        second = socket.create_connection(listener.getsockname())
        flow = ("127.0.0.1", second.getsockname()[1], *listener.getsockname())
        found = owners.lookup("tcp", *flow, first_packet=True)
        assert isinstance(found, Owner), found
        assert (found.pid, found.source) == (os.getpid(), "live")
        stats = owners.stats()
        assert stats["recent_hits"] == 1
        assert stats["full_scans"] == 2  # the first connection's and the miss's
        _, fds, _, _ = socket.recv_fds(there, 16, 1)
        os.close(fds[0])
        for sock in (first, second):
            sock.close()
        for _ in range(3):
            listener.accept()[0].close()


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_sock_diag_is_asked_in_the_namespace_of_the_socket() -> None:
    home = os.readlink("/proc/thread-self/ns/net")
    with veth_pair() as pair:
        with pair.server.ns.entered():
            listener = socket.socket()
        with listener:
            listener.bind((pair.server.ip4, 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            server = _OneShotServer(listener)
            curl = pair.client.ns.popen(
                "curl", "-sS", "--max-time", "20", f"http://{pair.server.ip4}:{port}/"
            )
            assert server.accepted.wait(20)
            assert server.peer is not None
            flow = ("tcp", *server.peer, pair.server.ip4, port)
            with SocketOwners() as host:
                missed = host.lookup(*flow, first_packet=True)  # type: ignore[arg-type]
            assert isinstance(missed, NotFound)
            assert missed.reason == "no_socket"
            with SocketOwners(netns=f"/run/netns/{pair.client.ns.name}") as inside:
                found = inside.lookup(*flow, first_packet=True)  # type: ignore[arg-type]
            assert isinstance(found, Owner), found
            assert (found.pid, found.comm) == (curl.pid, "curl")
            server.answer.set()
            curl.wait(20)
            server.thread.join(5)
        # this thread is back in its own namespace
        assert os.readlink("/proc/thread-self/ns/net") == home


def test_missing_namespace_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open network namespace"):
        SocketOwners(netns=tmp_path / "nope")


def test_start_time_survives_a_comm_with_parentheses(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    fields = " ".join(str(n) for n in range(3, 23))  # fields 3..22; 22 is the start time
    (tmp_path / "42" / "stat").write_text(f"42 (a) b (c) {fields} 23 24\n")
    assert _start_time(str(tmp_path), 42) == 22
    assert _start_time(str(tmp_path), 43) is None


def test_cgroup_v2_line_only() -> None:
    assert _cgroup_v2("4:memory:/x\n0::/system.slice/ci.service\n") == "/system.slice/ci.service"
    assert _cgroup_v2("4:memory:/x\n1:name=systemd:/y\n") == ""


@given(
    limit=st.integers(1, 8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=60),
)
def test_bounded_table_keeps_the_most_recently_used(
    limit: int, ops: list[tuple[bool, int]]
) -> None:
    table: Bounded[int, int] = Bounded(limit)
    model: list[int] = []  # keys, least recently used first
    evicted = 0
    for is_put, key in ops:
        if is_put:
            table.put(key, key * 10)
            if key in model:
                model.remove(key)
            model.append(key)
            if len(model) > limit:
                model.pop(0)
                evicted += 1
        else:
            value = table.get(key)
            assert value == (key * 10 if key in model else None)
            if key in model:
                model.remove(key)
                model.append(key)
        assert table.keys() == model
        assert len(table) <= limit
    assert table.evictions == evicted


@given(
    limit=st.integers(1, 8),
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get", "wait"]), st.integers(0, 12)), max_size=60
    ),
)
def test_bounded_table_forgets_what_was_not_used_for_max_age(
    limit: int, ops: list[tuple[str, int]]
) -> None:
    now = [0.0]
    table: Bounded[int, int] = Bounded(limit, max_age=10.0, clock=lambda: now[0])
    used: dict[int, float] = {}  # key -> last use, least recently used first
    for op, key in ops:
        if op == "wait":
            now[0] += key  # 0-12 seconds
            continue
        fresh = key in used and now[0] - used[key] <= 10.0
        if op == "get":
            assert table.get(key) == (key * 10 if fresh else None)
            used.pop(key, None)
            if fresh:
                used[key] = now[0]
            continue
        table.put(key, key * 10)
        used.pop(key, None)
        used[key] = now[0]
        for old in [k for k, t in used.items() if now[0] - t > 10.0]:
            del used[old]
        while len(used) > limit:
            del used[next(iter(used))]
        assert table.keys() == list(used)
    assert len(table) <= limit


def test_a_table_with_max_age_holds_the_current_rate_not_all_history() -> None:
    now = [0.0]
    table: Bounded[int, int] = Bounded(100_000, max_age=60.0, clock=lambda: now[0])
    for key in range(10_000):  # ten new keys a second for 1,000 seconds
        now[0] = key / 10
        table.put(key, key)
    assert len(table) == 601  # the last minute, and the key put now
    assert table.expired == 10_000 - 601
    assert table.evictions == 0


def test_bounded_table_needs_room() -> None:
    with pytest.raises(ValueError, match="room for one entry"):
        Bounded(0)


def _fake_proc(root: Path, parents: dict[int, int]) -> str:
    for pid, ppid in parents.items():
        (root / str(pid)).mkdir()
        rest = " ".join(str(n) for n in range(5, 23))
        (root / str(pid) / "stat").write_text(f"{pid} (sh (x)) S {ppid} {rest}\n")
    return str(root)


def test_ancestors_are_the_parent_chain_up_to_init(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {40: 30, 30: 20, 20: 1, 50: 0})
    assert _ancestors(proc, 40) == (30, 20)
    assert _ancestors(proc, 20) == ()
    assert _ancestors(proc, 50) == ()  # a child of the kernel (pid 0)
    assert _ancestors(proc, 99) == ()  # gone


def test_ancestors_stop_where_a_parent_is_gone_or_loops(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {40: 30, 30: 25, 60: 61, 61: 60})
    assert _ancestors(proc, 40) == (30, 25)  # 25 unreadable: the chain ends with it
    assert _ancestors(proc, 60) == (61, 60)  # a loop (only a lying /proc) ends


def test_an_owner_names_its_ancestors() -> None:
    # A shell that runs a client and waits: the client's owner names the shell and this test
    # as its ancestors.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    script = (
        f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port})); sys.stdin.read()"
    )
    # The client holds its connection until its stdin closes.
    shell = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} -c "{script}"; exit 0'], stdin=subprocess.PIPE
    )
    try:
        conn, peer = listener.accept()
        with SocketOwners() as owners:
            found = owners.lookup("tcp", "127.0.0.1", peer[1], "127.0.0.1", port)
        assert isinstance(found, Owner), found
        assert found.ancestors[:2] == (shell.pid, os.getpid())
        conn.close()
    finally:
        assert shell.stdin is not None
        shell.stdin.close()
        shell.wait(20)
        listener.close()
