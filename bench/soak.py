"""Issue 5 soak: the live agent's memory stays flat under steady, ever-changing traffic.

Two network namespaces (``egwS<pid>c`` for the client, ``egwS<pid>s`` for the servers) joined by
a veth pair; the server namespace answers on a whole /16 and a /64 (an AnyIP ``local`` route),
so every new name can resolve to an address of its own. Nothing leaves the namespaces.

- **Servers** (server namespace, one asyncio process): TLS on TCP 443 (Python ``ssl``, EC P-256),
  QUIC v1 on UDP 443 (aioquic), DNS on UDP and TCP 53 (dnspython). The DNS server answers every
  name under ``soak.test`` and every name of the provider register with an address chosen from
  the name (A and AAAA, a CNAME chain for ``*.cdn.soak.test``, an HTTPS record with ``ech`` for
  a few names), so destinations keep changing for the whole run.
- **The agent** (client namespace): ``egresswatch run --user root --format jsonl -i veth-c
  --db DIR/store.db --policy DIR/policy.toml --geo-dir geo/sample``, stdout to /dev/null.
  The policy denies DeepSeek, Moonshot and ``*.api.baseten.co`` (a fresh name each time), so
  violations are written to the store all along.
- **The client** (client namespace, one asyncio process): at ``--rate`` TLS handshakes per
  second, each to a new name most of the time (``n<counter>.<group>.soak.test``, fresh Azure
  OpenAI resource names, fresh Baseten names) and to fixed AI provider names from the register
  otherwise (``api.openai.com``, ``api.anthropic.com``, ...); most connections first resolve
  their name (UDP, some over TCP, some AAAA then IPv6, some HTTPS queries); a few carry no SNI
  (named by the agent from DNS). At ``--quic-rate`` aioquic handshakes per second. Each TLS
  connection sends one HTTP/1.1 request and reads the answer.

Every ``--sample`` seconds the agent's ``VmRSS``, ``VmHWM`` and ``RssAnon`` (``/proc/PID/status``)
and its status file (``DIR/store.db.status.json``) are recorded (``DIR/samples.csv``). At the end:
RSS after the warm-up, at each 10-minute mark and at the end, the least-squares slope in MB/hour
over the post-warm-up samples (and over its second half), a verdict, and what the client made
next to what the agent saw (its counters and the store's per-kind totals).

Verdict, on ``RssAnon`` (the agent's own memory; the rest of RSS is file pages the kernel can
take back, mostly the store's SQLite mmap, which grows with the file): **FLAT** when the
least-squares slope after the warm-up is below ``--threshold`` MB/hour (default 5);
**BOUNDED** when it is not but the slope over the second half is (tables that fill up to their
bound and stop); **GROWING** otherwise. 5 MB/hour is well above the allocator's noise (a few MB
up or down over an hour) and well below any per-connection leak at these rates: 80 new names a
second is about 290,000 an hour, so the smallest Python object (16 bytes) kept per name is
4.6 MB/hour, and a real per-destination record (100-300 bytes) is 30-90 MB/hour.

The agent's bounded tables take about 15 minutes to fill at the default rate: the SQLite page
cache (16 MiB, ``egresswatch/store/engine.py``), the DNS correlator (65,536 address-name pairs,
``geo/correlate.py``), the destination and IP facts caches (16,384 entries each, ``geo/``).
A soak shorter than 20 minutes after its warm-up therefore gives no verdict, only its figures;
``make bench`` runs one as a smoke test (the agent keeps up, every handshake is seen), ``make soak``
the hour that decides.

``--tracemalloc`` runs the agent under ``python -X tracemalloc=N`` (``--trace-frames``) with a
thread that takes a snapshot after the warm-up and then every ``--trace-every`` seconds and
writes the biggest growth since the first (by traceback) to ``DIR/tracemalloc.txt``; tracing
slows the agent several times over, so lower ``--rate`` with it. ``--census`` is the cheap
alternative: after the warm-up and every ``--trace-every`` seconds the agent counts its objects
by type and lists its big containers by owner, with what changed since the census before
(``DIR/census.txt``); it holds the agent up for about a second each time. ``--keep DIR`` keeps
the store, logs and samples; ``--report DIR`` prints the report again from a kept DIR.

Needs root and network namespaces; prints why and exits 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PREFIX = "egwS"
NETNS_DIR = Path("/run/netns")
CLIENT4, SERVER4 = "10.211.0.1", "10.211.0.2"
CLIENT6, SERVER6 = "fd00:211::1", "fd00:211::2"
ANY4 = "10.212.0.0/16"
"""Every address of this prefix is the server's (AnyIP): one address per name."""
ANY6 = "fd00:212::/64"
SHORT = 1200.0
"""Post-warm-up seconds below which no verdict is given (see the module docstring)."""
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PY = sys.executable
EGRESSWATCH = str(Path(sys.executable).with_name("egresswatch"))

# Fixed names from the provider register, mixed into the traffic as a developer's tools would.
AI_HOSTS = [
    "api.openai.com", "chatgpt.com", "api.anthropic.com", "claude.ai", "statsig.anthropic.com",
    "generativelanguage.googleapis.com", "cloudcode-pa.googleapis.com", "api.githubcopilot.com",
    "copilot-proxy.githubusercontent.com", "api.mistral.ai", "api.eu.mistral.ai", "api.groq.com",
    "api.cohere.com", "api.together.ai", "api.fireworks.ai", "api.perplexity.ai", "api.x.ai",
    "router.huggingface.co", "openrouter.ai", "api2.cursor.sh", "server.codeium.com",
    "api.deepseek.com", "api.moonshot.cn", "open.bigmodel.cn", "dashscope-intl.aliyuncs.com",
    "bedrock-runtime.eu-central-1.amazonaws.com", "bedrock-runtime.us-east-1.amazonaws.com",
    "europe-west4-aiplatform.googleapis.com", "api.jetbrains.ai", "cody-gateway.sourcegraph.com",
]  # fmt: skip
DENIED_AI_HOSTS = {"api.deepseek.com", "api.moonshot.cn"}
"""The policy below denies their providers."""
QUIC_AI_HOSTS = ["generativelanguage.googleapis.com", "chatgpt.com", "claude.ai", "api.x.ai"]
ECH_NAMES = ("ech.soak.test", "chatgpt.com", "claude.ai")

POLICY = """\
version = 1

[audit]
scope = "ai"
unknown_ai = "warn"
unverifiable = "warn"

[residency]
unknown_location = "allow"

[[rule]]
id = "no-cn-vendors"
action = "deny"
provider = ["deepseek", "moonshot"]
reason = "soak: not approved"

[[rule]]
id = "no-baseten"
action = "deny"
host = "*.api.baseten.co"
reason = "soak: a fresh name per connection, each one a violation"
"""


# -- namespaces -------------------------------------------------------------------------------


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=check, timeout=10)


def unavailable() -> str | None:
    """Why the soak cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and packet capture"
    if shutil.which("ip") is None:
        return "needs iproute2"
    probe = f"{PREFIX}{os.getpid()}p"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def cleanup_stale() -> None:
    """Delete namespaces of earlier soaks whose process is gone."""
    for path in NETNS_DIR.glob(f"{PREFIX}*") if NETNS_DIR.is_dir() else ():
        digits = "".join(c for c in path.name[len(PREFIX) :] if c.isdigit())
        if digits and not Path(f"/proc/{digits}").exists():
            _ip("netns", "del", path.name, check=False)


@dataclass(frozen=True)
class Lab:
    client: str
    server: str

    def argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    cleanup_stale()
    tag = f"{PREFIX}{os.getpid()}"
    made = Lab(f"{tag}c", f"{tag}s")
    try:
        for ns in (made.client, made.server):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", made.client, "link", "add", "veth-c", "type", "veth",
            "peer", "name", "veth-s", "netns", made.server)  # fmt: skip
        for ns, ifname, ip4, ip6 in (
            (made.client, "veth-c", CLIENT4, CLIENT6),
            (made.server, "veth-s", SERVER4, SERVER6),
        ):
            _ip("-n", ns, "addr", "add", f"{ip4}/24", "dev", ifname)
            _ip("-n", ns, "addr", "add", f"{ip6}/64", "dev", ifname, "nodad")
            _ip("-n", ns, "link", "set", ifname, "up")
        _ip("-n", made.server, "route", "add", "local", ANY4, "dev", "lo")
        _ip("-n", made.server, "-6", "route", "add", "local", ANY6, "dev", "lo")
        _ip("-n", made.client, "route", "add", ANY4, "via", SERVER4)
        _ip("-n", made.client, "-6", "route", "add", ANY6, "via", SERVER6)
        deadline = time.monotonic() + 5
        for ns, ifname in ((made.client, "veth-c"), (made.server, "veth-s")):
            while time.monotonic() < deadline:
                state = subprocess.run(
                    ["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{ifname}/operstate"],
                    capture_output=True, text=True, check=False,
                ).stdout.strip()  # fmt: skip
                if state == "up":
                    break
                time.sleep(0.05)
        yield made
    finally:
        for ns in (made.client, made.server):
            _ip("netns", "del", ns, check=False)


# -- the servers (server namespace) -----------------------------------------------------------


def address_for(name: str, family: int) -> str:
    """The address the soak's DNS gives ``name``: one of a /16 (or /64) chosen by its hash."""
    h = int.from_bytes(hashlib.blake2s(name.encode(), digest_size=4).digest(), "big")
    if family == 6:
        return f"fd00:212::{h >> 16:x}:{h & 0xFFFF:x}"
    third, fourth = (h >> 8) & 0xFF, h % 254 + 1
    return f"10.212.{third}.{fourth}"


def serve(folder: Path) -> None:
    import asyncio
    import ssl

    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset
    from aioquic.asyncio.server import serve as quic_serve
    from aioquic.quic.configuration import QuicConfiguration

    from tests.e2e_servers import ECH_B64

    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    page = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def https(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(page)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    def answer(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = question.rdtype
        owner = question.name
        if name.endswith(".cdn.soak.test"):
            # A CNAME chain, as CDNs answer: the address belongs to the edge name.
            edge = f"edge{int(hashlib.md5(name.encode()).hexdigest()[:4], 16) % 64}.e.soak.test"
            target = dns.name.from_text(edge)
            response.answer.append(
                dns.rrset.from_text(owner, 60, dns.rdataclass.IN, dns.rdatatype.CNAME, edge + ".")
            )
            owner, name = target, edge
        if rdtype == dns.rdatatype.A:
            data = address_for(name, 4)
        elif rdtype == dns.rdatatype.AAAA:
            data = address_for(name, 6)
        elif rdtype == dns.rdatatype.HTTPS:
            data = f'1 . alpn="h2,h3" ech="{ECH_B64}"' if name in ECH_NAMES else '1 . alpn="h2"'
        else:
            response.set_rcode(dns.rcode.NOERROR)
            return bytes(response.to_wire())
        response.answer.append(dns.rrset.from_text(owner, 60, dns.rdataclass.IN, rdtype, data))
        return bytes(response.to_wire())

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            with contextlib.suppress(Exception):
                self.transport.sendto(answer(data), addr)

    async def dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
            reply = answer(await asyncio.wait_for(reader.readexactly(size), 10))
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.start_server(https, None, 443, ssl=ctx, backlog=1024)
        await asyncio.start_server(dns_tcp, None, 53, backlog=256)
        await loop.create_datagram_endpoint(Udp, local_addr=("::", 53))  # IPv4 too
        config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        config.load_cert_chain(cert, key)
        await quic_serve("::", 443, configuration=config)
        (folder / "servers.ready").write_text("ready")
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    asyncio.run(main())


# -- the client (client namespace) ------------------------------------------------------------


class Traffic:
    """Makes the soak's connections at a steady rate; counts what it made."""

    def __init__(self, rate: float, quic_rate: float, seed: int, names: int = 0) -> None:
        import ssl

        self.names = names
        self.rate = rate
        self.quic_rate = quic_rate
        self.rng = random.Random(seed)
        self.counter = 0
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "tls_attempts", "tls_hellos", "tls_ok", "tls_failed", "tls_no_sni",
                "tls_v6", "tls_ai", "tls_new_names", "tls_denied",
                "quic_attempts", "quic_ok", "quic_failed",
                "dns_queries", "dns_tcp", "dns_answered", "dns_failed", "skipped_busy",
            ),
            0,
        )  # fmt: skip
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.inflight = 0

    def name(self) -> tuple[str, str]:
        """A destination name and its kind (``new``, ``ai``, ``denied``)."""
        r = self.rng.random()
        self.counter += 1
        n = self.counter % self.names if self.names else self.counter
        if r < 0.20:
            host = self.rng.choice(AI_HOSTS)
            return host, "denied" if host in DENIED_AI_HOSTS else "ai"
        if r < 0.25:
            return f"m{n}.api.baseten.co", "denied"
        if r < 0.30:
            return f"res{n}.openai.azure.com", "ai"
        group = ("app", "cdn", "static", "telemetry", "repo")[n % 5]
        return f"n{n}.{group}.soak.test", "new"

    async def query(self, name: str, qtype: str) -> list[str]:
        import dns.asyncquery
        import dns.message
        import dns.rdatatype

        msg = dns.message.make_query(name, qtype)
        self.counts["dns_queries"] += 1
        try:
            if self.rng.random() < 0.1:
                self.counts["dns_tcp"] += 1
                reply = await dns.asyncquery.tcp(msg, SERVER4, timeout=5)
            else:
                reply = await dns.asyncquery.udp(msg, SERVER4, timeout=5)
        except Exception:
            self.counts["dns_failed"] += 1
            return []
        self.counts["dns_answered"] += 1
        out = []
        for rrset in reply.answer:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                out += [r.to_text() for r in rrset]
        return out

    async def tls(self) -> None:
        import asyncio

        name, kind = self.name()
        self.counts["tls_attempts"] += 1
        self.counts["tls_ai" if kind == "ai" else "tls_new_names"] += kind != "denied"
        family = 6 if self.rng.random() < 0.2 else 4
        if self.rng.random() < 0.05:
            await self.query(name, "HTTPS")
        resolved = self.rng.random() < 0.85
        if resolved:
            found = await self.query(name, "AAAA" if family == 6 else "A")
            address = found[0] if found else address_for(name, family)
        else:
            address = address_for(name, family)  # a cached answer, as resolvers keep
        sni: str | None = name
        if self.rng.random() < 0.03:
            sni = None
            self.counts["tls_no_sni"] += 1
        # A denied name is a violation when the agent can name the connection: by its SNI, or
        # by the DNS answer it saw just before.
        self.counts["tls_denied"] += kind == "denied" and (sni is not None or resolved)
        self.counts["tls_v6"] += family == 6
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET)
        sock.setblocking(False)
        writer = None
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, 443)), 10)
            self.counts["tls_hellos"] += 1
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=self.ctx, server_hostname=sni or "", ssl_handshake_timeout=10
            )
            writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            await asyncio.wait_for(reader.read(), 10)
            self.counts["tls_ok"] += 1
        except Exception:
            self.counts["tls_failed"] += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 5)
            else:
                sock.close()

    async def quic(self) -> None:
        import asyncio
        import ssl

        from aioquic.asyncio.client import connect
        from aioquic.quic.configuration import QuicConfiguration

        self.counter += 1
        n = self.counter % self.names if self.names else self.counter
        ai = self.rng.random() < 0.5
        sni = self.rng.choice(QUIC_AI_HOSTS) if ai else f"q{n}.quic.soak.test"
        family = 6 if self.rng.random() < 0.3 else 4
        if self.rng.random() < 0.5:
            await self.query(sni, "AAAA" if family == 6 else "A")
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], server_name=sni, verify_mode=ssl.CERT_NONE
        )
        self.counts["quic_attempts"] += 1
        try:
            async with asyncio.timeout(10):
                async with connect(SERVER6 if family == 6 else SERVER4, 443, configuration=config):
                    pass
            self.counts["quic_ok"] += 1
        except Exception:
            self.counts["quic_failed"] += 1

    async def run(self, duration: float, out: Path) -> None:
        import asyncio

        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        launched = {"tls": 0, "quic": 0}
        next_write = 0.0
        while (elapsed := time.monotonic() - started) < duration:
            for kind, rate in (("tls", self.rate), ("quic", self.quic_rate)):
                due = int(elapsed * rate) - launched[kind]
                for _ in range(max(0, due)):
                    launched[kind] += 1
                    if len(tasks) >= 400:
                        self.counts["skipped_busy"] += 1
                        continue
                    task = asyncio.create_task(self.tls() if kind == "tls" else self.quic())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if elapsed >= next_write:
                self.write(out)
                next_write = elapsed + 2
            await asyncio.sleep(0.01)
        if tasks:
            await asyncio.wait(tasks, timeout=20)
        self.write(out)

    def write(self, out: Path) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts))
        tmp.replace(out)


def client(duration: float, rate: float, quic_rate: float, names: int, out: Path) -> None:
    import asyncio

    traffic = Traffic(rate, quic_rate, seed=os.getpid(), names=names)
    asyncio.run(traffic.run(duration, out))


# -- the agent under tracemalloc --------------------------------------------------------------


def traced_agent(argv: list[str], out: Path, first: float, every: float) -> None:
    """``egresswatch`` ARGV with a thread writing tracemalloc growth to ``out``."""
    import tracemalloc

    mine = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<unknown>"),
        tracemalloc.Filter(False, "*/linecache.py"),
    ]

    def take() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(mine)

    def dump() -> None:
        time.sleep(first)
        base = take()
        with out.open("w") as fh:
            fh.write(f"baseline at {first:.0f} s: {_traced(base) / 1e6:.1f} MB traced\n")
        mark = first
        while True:
            time.sleep(every)
            mark += every
            snap = take()
            stats = snap.compare_to(base, "traceback")
            with out.open("a") as fh:
                fh.write(
                    f"\n=== at {mark:.0f} s: {_traced(snap) / 1e6:.1f} MB traced; "
                    "biggest growth since the baseline ===\n"
                )
                for stat in stats[:15]:
                    fh.write(
                        f"{stat.size_diff / 1e6:+.2f} MB ({stat.count_diff:+d} blocks), "
                        f"now {stat.size / 1e6:.2f} MB\n"
                    )
                    for line in stat.traceback.format(limit=12, most_recent_first=True):
                        fh.write(f"    {line}\n")
            del snap, stats

    _agent_beside(dump, argv)


def census_agent(argv: list[str], out: Path, first: float, every: float) -> None:
    """``egresswatch`` ARGV with a thread writing a census of its objects to ``out``.

    Far cheaper than tracemalloc (the agent runs at full speed between censuses): after
    ``first`` seconds and then every ``every``, the count of GC-tracked objects by type, and every
    big container (a dict, list, set or deque of over 1,000 items, found as a referent of a
    tracked object, so the untracked dicts of plain values count too) named by its owner and
    attribute, each with its change since the census before.
    """
    import collections
    import gc

    kinds = (dict, list, set, collections.OrderedDict, collections.deque)

    def owner_of(holder: object, item: object) -> str:
        if isinstance(holder, dict):
            for key, value in holder.items():
                if value is item:
                    return f"dict[{key!r:.40}]"
            return "dict"
        attrs = getattr(holder, "__dict__", None) or {}
        for key, value in attrs.items():
            if value is item:
                return f"{type(holder).__qualname__}.{key}"
        for key in getattr(type(holder), "__slots__", ()):
            if getattr(holder, key, None) is item:
                return f"{type(holder).__qualname__}.{key}"
        return type(holder).__qualname__

    def take() -> tuple[collections.Counter[str], dict[int, tuple[str, int]]]:
        counts: collections.Counter[str] = collections.Counter()
        big: dict[int, tuple[str, int]] = {}
        for obj in gc.get_objects():
            counts[type(obj).__qualname__] += 1
            for ref in gc.get_referents(obj):
                if isinstance(ref, kinds) and id(ref) not in big and len(ref) > 1000:
                    big[id(ref)] = (owner_of(obj, ref), len(ref))
        return counts, big

    def run() -> None:
        time.sleep(first)
        mark = first
        before, big_before = take()
        while True:
            with out.open("a") as fh:
                fh.write(f"\n=== at {mark:.0f} s: {sys.getallocatedblocks():,} blocks ===\n")
                for name, count in before.most_common(25):
                    fh.write(f"{count:>10,}  {name}\n")
                fh.write("--- containers over 1,000 items ---\n")
                for name, size in sorted(big_before.values(), key=lambda v: -v[1])[:40]:
                    fh.write(f"{size:>10,}  {name}\n")
            time.sleep(every)
            mark += every
            counts, big = take()
            with out.open("a") as fh:
                fh.write(f"\n=== growth to {mark:.0f} s ===\n")
                for name, delta in (counts - before).most_common(15):
                    fh.write(f"{delta:>+10,}  {name} (now {counts[name]:,})\n")
                for key, (name, size) in big.items():
                    old = big_before.get(key, (name, 0))[1]
                    if size - old > 500:
                        fh.write(f"{size - old:>+10,}  container {name} (now {size:,})\n")
            before, big_before = counts, big

    _agent_beside(run, argv)


def _agent_beside(watch: Callable[[], None], argv: list[str]) -> None:
    """``egresswatch`` ARGV in this process, with ``watch`` on a thread of its own."""
    threading.Thread(target=watch, daemon=True).start()
    from egresswatch.cli import main

    main(argv, prog_name="egresswatch")


def _traced(snap: Any) -> int:
    return sum(stat.size for stat in snap.statistics("filename"))


# -- the orchestrator -------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss: float
    hwm: float
    anon: float
    counters: dict[str, Any]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and RssAnon of ``pid`` in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of proc(5)), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB/hour; 0 with fewer than 2 points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 3600 if sxx else 0.0


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def wait_file(path: Path, limit: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start (no {path.name}); see {path.parent}")


def store_totals(db: Path) -> dict[str, int]:
    """Observations per kind and violations kept, from the agent's SQLite store."""
    out: dict[str, int] = {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return out
    with contextlib.closing(con):
        for kind, total in con.execute("SELECT kind, SUM(count) FROM observations GROUP BY kind"):
            out[kind] = int(total)
        out["violations"] = con.execute("SELECT COUNT(*) FROM violations").fetchone()[0]
    return out


def soak(args: argparse.Namespace) -> int:
    if reason := unavailable():
        print(f"  skipped: {reason}")
        return 0
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="egw-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    from tests.e2e_servers import make_cert

    make_cert(folder, ["soak.test", "*.soak.test"])
    policy = folder / "policy.toml"
    policy.write_text(POLICY)
    db = folder / "store.db"
    status_path = folder / "store.db.status.json"
    client_out = folder / "client.json"
    procs: list[subprocess.Popen[bytes]] = []
    # SIGTERM (a CI time limit, kill) ends the soak through the same clean-up as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(
        f"  soak: {args.duration:.0f} s ({args.warmup:.0f} s warm-up), TLS {args.rate:g}/s, "
        f"QUIC {args.quic_rate:g}/s; files in {folder}",
        flush=True,
    )
    samples: list[Sample] = []
    cpu: float | None = None
    try:
        with lab() as made:
            servers = subprocess.Popen(
                made.argv(made.server, PY, __file__, "--role", "server", "--dir", str(folder)),
                env=ENV, stdout=subprocess.DEVNULL, stderr=(folder / "servers.log").open("wb"),
            )  # fmt: skip
            procs.append(servers)
            wait_file(folder / "servers.ready", 30, servers, "the servers")
            total = args.duration
            run_args = [
                "run", "--user", "root", "--format", "jsonl", "-i", "veth-c",
                "--db", str(db), "--policy", str(policy), "--geo-dir", str(REPO / "geo" / "sample"),
                "--duration", str(total + 120),  # a backstop; stopped with SIGTERM before
            ]  # fmt: skip
            if args.census:
                agent_argv = [
                    PY, __file__, "--role", "census", "--dir", str(folder),
                    "--trace-first", str(args.warmup), "--trace-every", str(args.trace_every),
                    "--", *run_args,
                ]  # fmt: skip
            elif args.tracemalloc:
                agent_argv = [
                    PY, "-X", f"tracemalloc={args.trace_frames}", __file__, "--role", "agent",
                    "--dir", str(folder), "--trace-first", str(args.warmup),
                    "--trace-every", str(args.trace_every), "--", *run_args,
                ]  # fmt: skip
            else:
                agent_argv = [EGRESSWATCH, *run_args]
            agent = subprocess.Popen(
                made.argv(made.client, *agent_argv),
                env=ENV, stdout=subprocess.DEVNULL, stderr=(folder / "agent.log").open("wb"),
            )  # fmt: skip
            procs.append(agent)
            wait_file(status_path, 60, agent, "the agent")
            pid = int(read_json(status_path).get("pid") or agent.pid)
            time.sleep(1)
            traffic = subprocess.Popen(
                made.argv(
                    made.client, PY, __file__, "--role", "client", "--dir", str(folder),
                    "--duration", str(total), "--rate", str(args.rate),
                    "--quic-rate", str(args.quic_rate), "--names", str(args.names),
                ),
                env=ENV, stdout=subprocess.DEVNULL, stderr=(folder / "client.log").open("wb"),
            )  # fmt: skip
            procs.append(traffic)
            samples = watch(args, pid, status_path, client_out, folder, traffic, agent)
            traffic.wait(60)
            time.sleep(3)  # the last handshakes reach the agent
            cpu = cpu_seconds(pid)
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
            servers.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                servers.wait(10)
    except KeyboardInterrupt:
        print("  interrupted", flush=True)
        return 130
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    status = read_json(status_path)
    if cpu is not None and status.get("uptime"):
        status["cpu"] = 100 * cpu / float(status["uptime"])
    report(args, samples, status, read_json(client_out), store_totals(db))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def watch(
    args: argparse.Namespace,
    pid: int,
    status_path: Path,
    client_out: Path,
    folder: Path,
    traffic: subprocess.Popen[bytes],
    agent: subprocess.Popen[bytes],
) -> list[Sample]:
    samples: list[Sample] = []
    started = time.monotonic()
    next_print = 0.0
    with (folder / "samples.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["t", "rss_mb", "hwm_mb", "anon_mb", "frames", "observations",
                      "violations", "queue_dropped", "kernel_drops", "tls_attempts",
                      "sqlite_mb", "python_blocks"])  # fmt: skip
        while traffic.poll() is None:
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited early; see {folder / 'agent.log'}")
            t = time.monotonic() - started
            try:
                mem = proc_status(pid)
            except OSError:
                break
            status = read_json(status_path)
            counters = status.get("counters", {})
            made = read_json(client_out)
            sample = Sample(t, mem["VmRSS"], mem["VmHWM"], mem.get("RssAnon", 0.0), counters)
            samples.append(sample)
            out.writerow([
                f"{t:.1f}", f"{sample.rss:.2f}", f"{sample.hwm:.2f}", f"{sample.anon:.2f}",
                counters.get("frames"), counters.get("observations"), status.get("violations"),
                counters.get("queue.dropped_observations"), counters.get("capture.kernel_drops"),
                made.get("tls_attempts"), f"{_mb(counters.get('memory.sqlite')):.2f}",
                counters.get("memory.python_blocks"),
            ])  # fmt: skip
            fh.flush()
            if t >= next_print:
                next_print = t + args.print_every
                print(
                    f"  t={t:6.0f} s  RSS {sample.rss:6.1f} MB  HWM {sample.hwm:6.1f} MB  "
                    f"anon {sample.anon:6.1f} MB  "
                    f"observations {counters.get('observations', 0):>9}  "
                    f"violations {status.get('violations', 0):>7}  "
                    f"made tls {made.get('tls_hellos', 0):>8} "
                    f"quic {made.get('quic_attempts', 0):>6} dns {made.get('dns_queries', 0):>8}",
                    flush=True,
                )
            time.sleep(args.sample)
    return samples


def _at(samples: list[Sample], t: float) -> Sample | None:
    return min(samples, key=lambda s: abs(s.t - t)) if samples else None


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    status: dict[str, Any],
    made: dict[str, int],
    stored: dict[str, int],
) -> None:
    if not samples:
        print("  no samples")
        return
    post = [s for s in samples if s.t >= args.warmup]
    end = samples[-1]
    print("\n  agent memory, MB (t from the start of traffic; file = RSS - RssAnon)")
    print(
        f"  {'mark':<16}{'t s':>7}{'RSS':>9}{'RssAnon':>9}{'file':>8}{'VmHWM':>9}"
        f"{'SQLite':>8}{'anon-SQLite':>12}"
    )
    marks: list[tuple[str, Sample | None]] = [("after warm-up", _at(samples, args.warmup))]
    minute = 600.0
    while minute < end.t - 30:
        if minute > args.warmup:
            marks.append((f"{minute / 60:.0f} min", _at(samples, minute)))
        minute += 600
    marks.append(("end", end))
    for label, s in marks:
        if s is not None:
            print(
                f"  {label:<16}{s.t:>7.0f}{s.rss:>9.1f}{s.anon:>9.1f}{s.rss - s.anon:>8.1f}"
                f"{s.hwm:>9.1f}{_sqlite(s):>8.1f}{s.anon - _sqlite(s):>12.1f}"
            )
    if len(post) < 3:
        print("  too few samples after the warm-up for a slope")
        return
    half = [s for s in post if s.t >= (post[0].t + post[-1].t) / 2]
    slopes = {
        (what, part): slope([(s.t, s.anon if what == "anon" else s.rss) for s in samples_])
        for what in ("rss", "anon")
        for part, samples_ in (("all", post), ("half", half))
    }
    print(
        f"\n  after the warm-up: {len(post)} samples over {post[-1].t - post[0].t:.0f} s; "
        f"RssAnon {min(s.anon for s in post):.1f}..{max(s.anon for s in post):.1f} MB, "
        f"RSS {min(s.rss for s in post):.1f}..{max(s.rss for s in post):.1f} MB"
    )
    print(
        f"  least-squares slope, MB/hour: RssAnon {slopes['anon', 'all']:+.2f} "
        f"(second half {slopes['anon', 'half']:+.2f}); RSS {slopes['rss', 'all']:+.2f} "
        f"(second half {slopes['rss', 'half']:+.2f})"
    )
    quarter = post[-max(3, len(post) // 4) :]
    print(
        f"  over the last quarter ({quarter[0].t:.0f}..{quarter[-1].t:.0f} s): RssAnon "
        f"{slope([(s.t, s.anon) for s in quarter]):+.2f} MB/hour, of it SQLite's page caches "
        f"{slope([(s.t, _sqlite(s)) for s in quarter]):+.2f}; RssAnon without SQLite over the "
        f"whole soak {slope([(s.t, s.anon - _sqlite(s)) for s in post]):+.2f}, second half "
        f"{slope([(s.t, s.anon - _sqlite(s)) for s in half]):+.2f}"
    )
    # Where the private memory stopped moving: from then on every sample is within 3% of the
    # final quarter's median.
    tail = sorted(s.anon for s in post[-max(1, len(post) // 4) :])
    level = tail[len(tail) // 2]
    settled = post[-1].t
    for s in reversed(post):
        if abs(s.anon - level) > 0.03 * level:
            break
        settled = s.t
    print(f"  RssAnon has stayed within 3% of {level:.1f} MB since t={settled:.0f} s")
    whole, late = slopes["anon", "all"], slopes["anon", "half"]
    if post[-1].t - post[0].t < SHORT:
        verdict = (
            f"NONE: a soak this short ends while the agent's bounded tables are still filling "
            f"(about 15 minutes at {args.rate:g} handshakes/s); run the full hour for a verdict"
        )
    elif whole < args.threshold:
        verdict = "FLAT"
    elif late < args.threshold:
        verdict = f"BOUNDED (bounded tables filled until t={settled:.0f} s, then flat)"
    else:
        verdict = "GROWING"
    print(
        f"  verdict: {verdict} (threshold {args.threshold:g} MB/hour on the RssAnon slope after "
        "the warm-up, and on its second half; RssAnon is the agent's own memory, the file pages "
        "are the kernel's, mostly the store's mmap)"
    )
    if "cpu" in status:
        print(f"  agent CPU: {status['cpu']:.1f}% of one core on average")
    counters = status.get("counters", {})
    print("\n  generated by the client vs observed by the agent")
    print(f"  {'':<26}{'generated':>11}{'agent counters':>16}{'store':>10}")
    rows = [
        ("TLS ClientHellos", made.get("tls_hellos", 0), counters.get("tcp.client_hellos"),
         stored.get("tls")),
        ("QUIC handshakes", made.get("quic_attempts", 0), counters.get("quic.client_hellos"),
         stored.get("quic")),
        ("DNS queries", made.get("dns_queries", 0), counters.get("dns.queries"),
         stored.get("dns")),
        ("violations (denied names)", made.get("tls_denied", 0), status.get("violations"),
         stored.get("violations")),
    ]  # fmt: skip
    for label, gen, seen, kept in rows:
        print(f"  {label:<26}{gen:>11}{_n(seen):>16}{_n(kept):>10}")
    print(
        f"  client: {json.dumps(made)}\n  agent: observations {counters.get('observations')}, "
        f"frames {counters.get('frames')}, "
        f"queue drops {counters.get('queue.dropped_observations')} observations, "
        f"kernel drops {counters.get('capture.kernel_drops')}"
    )
    print(f"  agent counters: {json.dumps(counters, sort_keys=True)}")


def _mb(value: object) -> float:
    return float(value) / (1 << 20) if isinstance(value, int | float) else 0.0


def _sqlite(s: Sample) -> float:
    """SQLite's own allocations at ``s`` (page caches; bounded per connection), MB."""
    return _mb(s.counters.get("memory.sqlite"))


def report_again(args: argparse.Namespace, folder: Path) -> int:
    """The report of a soak kept with ``--keep``, from its files."""
    samples = []
    with (folder / "samples.csv").open() as fh:
        for row in csv.DictReader(fh):
            samples.append(
                Sample(
                    float(row["t"]),
                    float(row["rss_mb"]),
                    float(row["hwm_mb"]),
                    float(row["anon_mb"]),
                    {"memory.sqlite": float(row.get("sqlite_mb") or 0) * (1 << 20)},
                )
            )
    status = read_json(folder / "store.db.status.json")
    report(
        args, samples, status, read_json(folder / "client.json"), store_totals(folder / "store.db")
    )
    return 0


def _n(value: object) -> str:
    return "-" if value is None else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=3600, help="seconds of traffic, warm-up included"
    )
    parser.add_argument("--warmup", type=float, default=120, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=100, help="TLS handshakes per second")
    parser.add_argument("--quic-rate", type=float, default=5, help="QUIC handshakes per second")
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples")
    parser.add_argument("--print-every", type=float, default=60, help="progress lines, seconds")
    parser.add_argument("--threshold", type=float, default=5, help="flat below this, MB/hour")
    parser.add_argument("--tracemalloc", action="store_true", help="trace the agent's memory")
    parser.add_argument(
        "--census",
        action="store_true",
        help="write the agent's object counts and growing containers to DIR/census.txt",
    )
    parser.add_argument(
        "--trace-every",
        type=float,
        default=120,
        help="seconds between tracemalloc dumps or censuses",
    )
    parser.add_argument(
        "--trace-frames", type=int, default=4, help="frames kept per allocation with --tracemalloc"
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the store, logs and samples here")
    parser.add_argument("--report", metavar="DIR", help="print the report of a kept soak again")
    parser.add_argument(
        "--names",
        type=int,
        default=0,
        help="reuse new names after this many (0: every name new, the default); a short soak "
        "with a small pool reaches the steady state of per-destination tables within its warm-up",
    )
    # Internal: the parts run inside the namespaces.
    roles = ["soak", "server", "client", "agent", "census"]
    parser.add_argument("--role", choices=roles, default="soak", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--trace-first", type=float, default=120, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        serve(Path(args.dir))
        return 0
    if args.role == "client":
        client(args.duration, args.rate, args.quic_rate, args.names, Path(args.dir) / "client.json")
        return 0
    if args.role == "census":
        census_agent(args.rest, Path(args.dir) / "census.txt", args.trace_first, args.trace_every)
        return 0
    if args.role == "agent":
        traced_agent(
            args.rest, Path(args.dir) / "tracemalloc.txt", args.trace_first, args.trace_every
        )
        return 0
    if args.report:
        return report_again(args, Path(args.report))
    return soak(args)


if __name__ == "__main__":
    raise SystemExit(main())
