"""Building blocks for the end-to-end policy scenarios: geo data, captures, the CLI, expectations.

A scenario is a capture built from real handshake bytes (OpenSSL ClientHellos, aioquic Initials,
dnspython DNS messages), a geo data folder whose IP -> country/ASN map is written here, a policy
TOML, and the verdict and rule that ../shared/POLICY.md prescribes for every connection. The
verdicts come from the real command, ``egresswatch replay --format jsonl``, run as a subprocess.

Every connection in a capture gets its own client port, so an output line is matched to the
connection that produced it by (kind, client port), never by its position.
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset

from bench.synth import PcapngWriter, Traffic, client_hello, dns_pair
from geo.sample.build import write_mmdb
from tests.factories import chromium_like, records, unrecord

REPO = Path(__file__).resolve().parents[2]
EGRESSWATCH = REPO / ".venv" / "bin" / "egresswatch"

# ---------------------------------------------------------------------------------------------
# Geo data: our own IP -> country / ASN map, so that every expectation rests on a known fact
# ---------------------------------------------------------------------------------------------

CLIENT = "10.20.0.5"
RESOLVER = "10.20.0.1"

# Addresses by where the geo folder says they are. Documentation and benchmarking prefixes only.
DE = "192.0.2.10"  # Germany, AS64510
NL = "192.0.2.140"  # Netherlands, AS64511
US = "198.51.100.10"  # United States, AS64520
CN = "198.51.100.140"  # China, AS64530
CH = "203.0.113.10"  # Switzerland, AS64540
GB = "203.0.113.140"  # United Kingdom, AS64541
SE = "198.18.0.10"  # Sweden, AS64550
NO = "198.18.1.10"  # Norway (EEA, not EU), AS64551
JP = "198.18.2.10"  # Japan, AS64552
FR = "198.18.3.10"  # France, AS64553
HK = "198.18.4.10"  # Hong Kong, AS64554
IE = "198.18.5.10"  # Ireland, AS64555
ASN_ONLY = "198.18.8.10"  # an ASN (64560) but no country in any database
ANYCAST = "198.18.7.10"  # in a published Cloudflare range: anycast, location proves nothing
NOWHERE = "198.19.200.10"  # in no database and no range file
DE6 = "2001:db8:1::10"  # Germany, IPv6, AS64510

# network, country (or None), ASN (or None), AS organisation
NETWORKS: tuple[tuple[str, str | None, int | None, str | None], ...] = (
    ("192.0.2.0/25", "DE", 64510, "Example Cloud GmbH"),
    ("192.0.2.128/25", "NL", 64511, "Example Cloud Europe B.V."),
    ("198.51.100.0/25", "US", 64520, "Example Hosting Inc."),
    ("198.51.100.128/25", "CN", 64530, "Example Networks Co., Ltd."),
    ("203.0.113.0/25", "CH", 64540, "Example Hosting AG"),
    ("203.0.113.128/25", "GB", 64541, "Example Hosting Ltd"),
    ("198.18.0.0/24", "SE", 64550, "Example Nordic AB"),
    ("198.18.1.0/24", "NO", 64551, "Example Norge AS"),
    ("198.18.2.0/24", "JP", 64552, "Example Networks KK"),
    ("198.18.3.0/24", "FR", 64553, "Example France SAS"),
    ("198.18.4.0/24", "HK", 64554, "Example Hong Kong Ltd"),
    ("198.18.5.0/24", "IE", 64555, "Example Ireland Ltd"),
    ("198.18.7.0/24", "US", 64570, "Example Anycast LLC"),
    ("198.18.8.0/24", None, 64560, "Example Transit LLC"),
    ("2001:db8:1::/48", "DE", 64510, "Example Cloud GmbH"),
)
ANYCAST_RANGE = "198.18.7.0/24"

_EU = {"DE", "NL", "FR", "SE", "IE"}
_CONTINENT = {
    "DE": "EU",
    "NL": "EU",
    "FR": "EU",
    "SE": "EU",
    "IE": "EU",
    "NO": "EU",
    "CH": "EU",
    "GB": "EU",
    "US": "NA",
    "CN": "AS",
    "JP": "AS",
    "HK": "AS",
}


def _city_record(country: str) -> dict[str, Any]:
    code: dict[str, Any] = {"iso_code": country, "names": {"en": country}}
    if country in _EU:
        code["is_in_european_union"] = True
    continent = _CONTINENT[country]
    return {
        "continent": {"code": continent, "names": {"en": continent}},
        "country": code,
        "registered_country": dict(code),
        "location": {"accuracy_radius": 100, "latitude": 1.5, "longitude": 2.5},
    }


def build_geo_dir(folder: Path) -> Path:
    """A geo folder: GeoLite2-City and -ASN layouts from :data:`NETWORKS`, one Cloudflare file."""
    folder.mkdir(parents=True, exist_ok=True)
    city = [(ipaddress.ip_network(net), _city_record(cc)) for net, cc, _asn, _org in NETWORKS if cc]
    asn = [
        (
            ipaddress.ip_network(net),
            {"autonomous_system_number": number, "autonomous_system_organization": org},
        )
        for net, _cc, number, org in NETWORKS
        if number is not None
    ]
    write_mmdb(folder / "GeoLite2-City.mmdb", "GeoLite2-City", city)
    write_mmdb(folder / "GeoLite2-ASN.mmdb", "GeoLite2-ASN", asn)
    (folder / "cloudflare-ips-v4.txt").write_text(ANYCAST_RANGE + "\n", encoding="ascii")
    return folder


# ---------------------------------------------------------------------------------------------
# Captures
# ---------------------------------------------------------------------------------------------


def ech_config_list(public_name: str) -> bytes:
    """An ECHConfigList (draft-ietf-tls-esni-22 section 4) with one X25519 / HKDF-SHA256 config."""
    key = bytes(range(1, 33))
    contents = (
        bytes([0x2A])  # config_id
        + struct.pack(">H", 0x0020)  # kem_id: DHKEM(X25519, HKDF-SHA256)
        + struct.pack(">H", len(key))
        + key
        + struct.pack(">H", 4)
        + struct.pack(">HH", 0x0001, 0x0001)  # HKDF-SHA256, AES-128-GCM
        + bytes([0])  # maximum_name_length
        + bytes([len(public_name)])
        + public_name.encode("ascii")
        + struct.pack(">H", 0)  # no extensions
    )
    config = struct.pack(">HH", 0xFE0D, len(contents)) + contents
    return struct.pack(">H", len(config)) + config


def https_pair(qname: str, *, ech_public_name: str | None, qid: int) -> tuple[bytes, bytes]:
    """A DNS HTTPS (type 65) query and its answer, with an ech= parameter when asked."""
    query = dns.message.make_query(qname, "HTTPS", id=qid)
    response = dns.message.make_response(query)
    params = 'alpn="h2,h3"'
    if ech_public_name is not None:
        params += " ech=" + base64.b64encode(ech_config_list(ech_public_name)).decode("ascii")
    owner = qname.rstrip(".") + "."
    response.answer.append(dns.rrset.from_text(owner, 300, "IN", "HTTPS", f"1 . {params}"))
    wire_q: bytes = query.to_wire()
    wire_r: bytes = response.to_wire()
    return wire_q, wire_r


def with_ech_extension(hello_records: bytes) -> bytes:
    """The same OpenSSL hello reshaped as Chromium sends it, with an encrypted_client_hello.

    The extension's shape (outer type, HPKE suite, config id, enc, payload) is the same whether
    it is GREASE or real ECH; only the name beside it and the DNS tell them apart (POLICY.md).
    """
    return records(chromium_like(unrecord(hello_records)))


@dataclass(frozen=True)
class Expect:
    """What POLICY.md says about one observation."""

    verdict: str | None
    """``allow``, ``warn``, ``violation``; None for a DNS line (not judged)."""
    rule: str | frozenset[str | None] | None
    """The deciding rule id or built-in name; a set where POLICY.md leaves a tie open."""
    host: str | None = None
    """When given, the ``host`` field the connection must be judged by."""
    why: str = ""
    """The POLICY.md sentence behind the expectation, for the failure message."""


@dataclass(frozen=True)
class Conn:
    """One observation the capture will produce, and what the policy must say about it."""

    cid: str
    kind: str
    sport: int
    expect: Expect
    dst: str


@dataclass
class Capture:
    """Writes a pcapng conversation by conversation, handing out unique client ports."""

    conns: list[Conn] = field(default_factory=list)
    _ops: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    _port: int = 40000

    def _next_port(self) -> int:
        self._port += 1
        return self._port

    def _add(self, cid: str, kind: str, dst: str, expect: Expect) -> int:
        if any(c.cid == cid for c in self.conns):
            msg = f"duplicate connection id {cid!r}"
            raise ValueError(msg)
        port = self._next_port()
        self.conns.append(Conn(cid, kind, port, expect, dst))
        return port

    def tls(
        self,
        cid: str,
        sni: str | None,
        dst: str,
        expect: Expect,
        *,
        dport: int = 443,
        ech: bool = False,
    ) -> None:
        """A TCP connection whose first flight is OpenSSL's ClientHello for ``sni``.

        ``ech`` adds an encrypted_client_hello extension (GREASE-shaped; real when the name
        beside it is a client-facing name or DNS published an ECH config for the name).
        """
        port = self._add(cid, "tls", dst, expect)
        hello = client_hello(sni)
        if ech:
            hello = with_ech_extension(hello)
        self._ops.append(("tls", (port, dst, dport, hello)))

    def quic(self, cid: str, sni: str | None, dst: str, expect: Expect) -> None:
        """aioquic's Initial datagrams for ``sni`` (None: no server_name)."""
        port = self._add(cid, "quic", dst, expect)
        self._ops.append(("quic", (port, dst, sni)))

    def dns(self, cid: str, qname: str, answers: Sequence[str], qtype: str = "A") -> None:
        """A DNS query and response (an answer that is not an address is a CNAME)."""
        port = self._add(cid, "dns", RESOLVER, DNS_NOT_JUDGED)
        self._ops.append(("dns", (port, qname, tuple(answers), qtype)))

    def https_rr(self, cid: str, qname: str, *, ech_public_name: str | None) -> None:
        """A DNS HTTPS query and response for ``qname``, with an ECH config when given."""
        port = self._add(cid, "dns", RESOLVER, DNS_NOT_JUDGED)
        self._ops.append(("https", (port, qname, ech_public_name)))

    def write(self, path: Path) -> Path:
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        with path.open("wb") as fh:
            traffic = Traffic(PcapngWriter(fh), start=1_790_000_000.0, seed=3)
            for qid, (op, args) in enumerate(self._ops, start=1):
                if op == "tls":
                    port, dst, dport, hello = args
                    client = "fd00::5" if ":" in dst else CLIENT
                    traffic.tcp(client, port, dst, dport, hello)
                elif op == "quic":
                    port, dst, sni = args
                    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
                    config.server_name = sni
                    conn = QuicConnection(configuration=config)
                    conn.connect((dst, 443), now=0.0)
                    for data, _addr in conn.datagrams_to_send(now=0.0):
                        traffic.udp(CLIENT, port, dst, 443, data)
                elif op == "dns":
                    port, qname, answers, qtype = args
                    query, response = dns_pair(qname, answers, qtype, qid=qid)
                    traffic.udp(CLIENT, port, RESOLVER, 53, query)
                    traffic.udp(RESOLVER, 53, CLIENT, port, response, 0.01)
                else:
                    port, qname, public = args
                    query, response = https_pair(qname, ech_public_name=public, qid=qid)
                    traffic.udp(CLIENT, port, RESOLVER, 53, query)
                    traffic.udp(RESOLVER, 53, CLIENT, port, response, 0.01)
                # Time passes between conversations, as on a real machine.
                traffic.now += 0.5
        return path


DNS_NOT_JUDGED = Expect(
    None, None, why="DNS questions are recorded and name later connections but are not judged."
)

# ---------------------------------------------------------------------------------------------
# Running the command and reading its answer
# ---------------------------------------------------------------------------------------------

CONTRACT_FIELDS = (
    "ts",
    "kind",
    "transport",
    "src",
    "dst",
    "sport",
    "dport",
    "sni",
    "alpn",
    "ech",
    "qname",
    "qtype",
    "answers",
    "host",
    "provider",
    "role",
    "region",
    "inference",
    "endpoint_country",
    "asn",
    "as_org",
    "anycast",
    "verdict",
    "rule",
    "reason",
    "pid",
    "process",
)


@dataclass(frozen=True)
class Run:
    """The command's exit status, stderr and JSON lines."""

    returncode: int
    stderr: str
    rows: list[dict[str, Any]]


def hermetic_env() -> dict[str, str]:
    """The environment without EGRESSWATCH_* settings, so only the arguments decide."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSWATCH_")}
    env["COLUMNS"] = "200"
    return env


@dataclass(frozen=True)
class Result:
    """What a command invocation left: exit status, stdout, stderr."""

    returncode: int
    stdout: str
    stderr: str


def egresswatch(*args: str | Path, in_process: bool = True) -> Result:
    """Run ``egresswatch ARGS``: in this interpreter through click's runner (fast: the register
    and databases load once per session), or as the installed command in a subprocess."""
    argv = [str(a) for a in args]
    if in_process:
        from click.testing import CliRunner

        # Looked up at run time: the scenarios treat the command as a black box, and its
        # internals (under active development) are not part of what they type-check.
        main = importlib.import_module("egresswatch.cli").main
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EGRESSWATCH_")}
        result = CliRunner().invoke(main, argv, env=unset, catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)
    command = [str(EGRESSWATCH)] if EGRESSWATCH.exists() else [sys.executable, "-m", "egresswatch"]
    done = subprocess.run(
        [*command, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=hermetic_env(),
        cwd=REPO,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def replay(capture: Path, policy: Path, geo_dir: Path, *, in_process: bool = True) -> Run:
    """``egresswatch replay --format jsonl --geo-dir DIR --policy FILE CAPTURE``, parsed."""
    result = egresswatch(
        "replay",
        "--format",
        "jsonl",
        "--geo-dir",
        geo_dir,
        "--policy",
        policy,
        capture,
        in_process=in_process,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return Run(result.returncode, result.stderr, rows)


def row_for(run: Run, conn: Conn) -> dict[str, Any]:
    """The one output line produced by ``conn`` (matched by kind and client port)."""
    found = [r for r in run.rows if r.get("kind") == conn.kind and r.get("sport") == conn.sport]
    assert len(found) == 1, (
        f"{conn.cid}: expected one {conn.kind} line from client port {conn.sport}, "
        f"got {len(found)}; stderr: {run.stderr.strip()!r}"
    )
    return found[0]


def summary(row: Mapping[str, Any]) -> str:
    keys = (
        *("kind", "sni", "host", "dst", "dport", "provider", "role", "region", "inference"),
        *("endpoint_country", "asn", "anycast", "ech", "verdict", "rule", "reason"),
    )
    return ", ".join(f"{k}={row.get(k)!r}" for k in keys)


def is_sentence(text: object) -> bool:
    """One readable sentence: non-empty text with words, on one line."""
    return (
        isinstance(text, str)
        and len(text.strip()) >= 8
        and " " in text.strip()
        and "\n" not in text
        and any(ch.isalpha() for ch in text)
    )


def check(row: Mapping[str, Any], conn: Conn, rule_reasons: Mapping[str, str]) -> list[str]:
    """Every way ``row`` departs from ``conn.expect`` (empty when it matches)."""
    exp = conn.expect
    problems: list[str] = []
    if conn.kind == "dns":
        # Not judged: no warn or violation, and no rule decided anything.
        if row.get("verdict") not in (None, "allow"):
            problems.append(f"verdict {row.get('verdict')!r} on a DNS line (not judged)")
        if row.get("rule") is not None:
            problems.append(f"rule {row.get('rule')!r} on a DNS line (not judged)")
        return problems
    if row.get("verdict") != exp.verdict:
        problems.append(f"verdict {row.get('verdict')!r}, expected {exp.verdict!r}")
    rules = exp.rule if isinstance(exp.rule, frozenset) else frozenset({exp.rule})
    if row.get("rule") not in rules:
        want = " or ".join(repr(r) for r in sorted(rules, key=str))
        problems.append(f"rule {row.get('rule')!r}, expected {want}")
    if exp.host is not None and row.get("host") != exp.host:
        problems.append(f"host {row.get('host')!r}, expected {exp.host!r}")
    reason = row.get("reason")
    if not is_sentence(reason):
        problems.append(f"reason {reason!r} is not a readable sentence")
    rule = row.get("rule")
    # "a reason a person can read without the policy open": when a rule with its own reason
    # decided, that reason must reach the reader.
    own = rule_reasons.get(rule) if isinstance(rule, str) else None
    if own is not None and isinstance(reason, str) and own not in reason:
        problems.append(f"reason {reason!r} does not carry rule {rule!r}'s own reason")
    return problems


def describe_failure(conn: Conn, row: Mapping[str, Any], problems: Iterable[str]) -> str:
    lines = [f"connection {conn.cid!r}: " + "; ".join(problems)]
    if conn.expect.why:
        lines.append(f"POLICY.md: {conn.expect.why}")
    lines.append(f"output: {summary(row)}")
    return "\n".join(lines)
