"""The Observation record: one event seen leaving the machine.

Its JSON form is the Observation JSON Lines contract of DESIGN.md. Field names are fixed; later
work adds fields, never renames or removes them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal["tls", "quic", "dns"]
Transport = Literal["tcp", "udp"]


def format_ip(raw: bytes) -> str:
    """Print a 4- or 16-byte address the way :mod:`ipaddress` prints it."""
    return str(ipaddress.ip_address(raw))


def format_ts(ts: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-24T03:32:11.123456Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Observation:
    """One TLS ClientHello, QUIC Initial ClientHello or DNS question seen on the wire."""

    ts: float
    """Capture time, seconds since the epoch, of the packet that completed the observation."""
    kind: Kind
    """``tls`` (TCP ClientHello), ``quic`` (QUIC Initial ClientHello) or ``dns``."""
    transport: Transport
    """``tcp`` or ``udp``."""
    src: str
    """Source address (the client), as :mod:`ipaddress` prints it."""
    dst: str
    """Destination address (the server or resolver)."""
    sport: int
    """Source port."""
    dport: int
    """Destination port."""
    sni: str | None = None
    """Server name from the ClientHello (tls, quic); ``None`` when absent."""
    alpn: tuple[str, ...] = ()
    """ALPN protocols offered (tls, quic)."""
    ech: bool = False
    """The ClientHello carries an encrypted_client_hello extension (0xfe0d), GREASE included."""
    qname: str | None = None
    """DNS question name without the trailing dot, lower case (dns)."""
    qtype: str | None = None
    """DNS question type mnemonic, e.g. ``A``, ``AAAA``, ``HTTPS`` (dns)."""
    answers: tuple[str, ...] = ()
    """A/AAAA addresses and CNAME targets in the response, in wire order, every section (dns)."""
    tls_versions: tuple[str, ...] = ()
    """TLS versions offered in supported_versions, e.g. ``("1.3", "1.2")`` (tls, quic)."""
    quic_version: str | None = None
    """QUIC version of the Initial packet as hex, e.g. ``0x00000001`` (quic)."""
    ech_config: bool = False
    """An HTTPS/SVCB answer carried an ECH config for ``qname`` (dns)."""
    resolved: tuple[str, ...] = ()
    """The answers that serve ``qname`` (its CNAME chain in the answer section), for naming
    later connections; glue and unrelated records are left out (dns)."""
    rcode: str | None = None
    """DNS response code, e.g. ``NOERROR``, ``NXDOMAIN``; ``None`` when no response was seen."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Fields added by later layers (enrichment, verdicts), emitted after the fixed ones."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the Observation JSON Lines contract."""
        out: dict[str, Any] = {
            "ts": format_ts(self.ts),
            "kind": self.kind,
            "transport": self.transport,
            "src": self.src,
            "dst": self.dst,
            "sport": self.sport,
            "dport": self.dport,
            "sni": self.sni,
            "alpn": list(self.alpn),
            "ech": self.ech,
            "qname": self.qname,
            "qtype": self.qtype,
            "answers": list(self.answers),
            "tls_versions": list(self.tls_versions),
            "quic_version": self.quic_version,
            "ech_config": self.ech_config,
            "resolved": list(self.resolved),
            "rcode": self.rcode,
        }
        out.update(self.extra)
        return out
