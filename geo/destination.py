"""The Destination record: everything ``geo`` knows about one host name and/or IP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Destination:
    """Who runs an endpoint, where the provider says it processes, and where the IP is."""

    host: str | None
    """The name judged: the SNI, else a name learned from DNS answers for the IP."""
    host_source: str | None = None
    """Where ``host`` came from: ``sni``, ``dns`` (correlated from an answer) or ``query``."""
    provider: str | None = None
    """Register id of the provider (``openai``, ``aws``, ...); None if not an AI endpoint."""
    provider_name: str | None = None
    """The provider's display name."""
    product: str | None = None
    """The register's product for the endpoint (``Amazon Bedrock``, ``GitHub Copilot``)."""
    role: str | None = None
    """The endpoint's role: ``inference``, ``coding-tool``, ``telemetry``, ``doh``, ..."""
    jurisdiction: str | None = None
    """The provider company's home country (ISO alpha-2)."""
    region: str | None = None
    """Cloud region code, from the host name or else from the cloud's published IP ranges."""
    inference: tuple[str, ...] = ()
    """Where the register says inference runs for this endpoint (ISO alpha-2, ``EU``, ``global``,
    ``unknown``), narrowed by a region in the host name."""
    storage: tuple[str, ...] = ()
    """Where the register says data is stored at rest."""
    endpoint_country: str | None = None
    """Where the IP is (GeoIP or the cloud region of a published range); None for anycast."""
    asn: int | None = None
    """Autonomous system number of the IP."""
    as_org: str | None = None
    """Organisation of that autonomous system."""
    cloud: str | None = None
    """Cloud whose published ranges hold the IP (``aws``, ``gcp``, ``azure``, ...)."""
    anycast: bool = False
    """The IP is in a known anycast range, so its location says little."""
    looks_like_ai: bool = False
    """Not in the register, but the name looks like an AI API (the policy's ``unknown_ai``)."""
    confidence: str | None = None
    """How well the register's facts for the endpoint are established."""
    sources: dict[str, str] = field(default_factory=dict)
    """Which file or rule gave each fact, by field name."""
    disagreements: tuple[str, ...] = ()
    """Facts on which sources disagree, each said in one sentence."""

    @property
    def is_ai(self) -> bool:
        """An AI endpoint: the register knows it, and it is not a public DNS resolver (role
        ``doh``), which the register lists only so that DNS over HTTPS can be recognised."""
        return self.provider is not None and self.role != "doh"

    def fields(self) -> dict[str, Any]:
        """The enrichment fields of the Observation JSON Lines contract, in contract order."""
        return {
            "host": self.host,
            "provider": self.provider,
            "role": self.role,
            "region": self.region,
            "inference": list(self.inference),
            "endpoint_country": self.endpoint_country,
            "asn": self.asn,
            "as_org": self.as_org,
            "anycast": self.anycast,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, for ``geo lookup --format json``."""
        return {
            **self.fields(),
            "host_source": self.host_source,
            "provider_name": self.provider_name,
            "product": self.product,
            "jurisdiction": self.jurisdiction,
            "storage": list(self.storage),
            "cloud": self.cloud,
            "looks_like_ai": self.looks_like_ai,
            "confidence": self.confidence,
            "sources": dict(self.sources),
            "disagreements": list(self.disagreements),
        }
