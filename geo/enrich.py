"""Enrichment: a host name and/or an IP in, a :class:`Destination` out.

The register (through :class:`geo.hosts.HostMatcher`) says whose endpoint a name is, its role,
the provider's home country and where the provider documents inference; IP intelligence
(:class:`geo.ipintel.IpIntel`) says where the address is and which network announces it; the
DNS correlator names an address that came without a name. Results are cached, because a busy
machine reaches the same few endpoints over and over.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from geo.correlate import DnsCorrelator
from geo.destination import Destination
from geo.hosts import HostMatch, HostMatcher, looks_like_ai_api
from geo.register import load_register

if TYPE_CHECKING:
    from geo.ipintel import IpFacts, IpIntel


class Enricher:
    """Turns (name, IP) into a :class:`Destination`; pure given its data and the time passed in."""

    def __init__(
        self,
        matcher: HostMatcher | None = None,
        intel: IpIntel | None = None,
        correlator: DnsCorrelator | None = None,
        *,
        cache_size: int = 16384,
    ) -> None:
        self.matcher = matcher if matcher is not None else HostMatcher(load_register())
        self.intel = intel
        # Not ``correlator or ...``: an empty correlator is falsy (it has a length), and its
        # bounds would be silently replaced by the defaults.
        self.correlator = correlator if correlator is not None else DnsCorrelator()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str | None, str | None, str | None], Destination] = (
            OrderedDict()
        )
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_geo_dir(cls, geo_dir: str | Path | None, *, safe: bool = True) -> Enricher:
        """The packaged register plus whatever databases and range files ``geo_dir`` holds.

        ``safe`` reads MaxMind-format databases with maxminddb's pure-Python decoder: its C
        extension can crash the process on a database damaged in place, and an agent must not
        die of a bad file. The cost is small because IP facts are cached.
        """
        from geo.ipintel import IpIntel

        return cls(intel=IpIntel.from_dir(geo_dir, safe=safe))

    def learn_dns(self, qname: str, addresses: tuple[str, ...] | list[str], ts: float) -> None:
        """Feed a DNS answer to the correlator (the addresses that serve ``qname``)."""
        if qname and addresses:
            self.correlator.learn(qname, addresses, ts)

    def destination(
        self,
        host: str | None,
        ip: str | None = None,
        *,
        now: float = 0.0,
        host_source: str | None = None,
    ) -> Destination:
        """Everything known about ``host`` (a server name) reached at ``ip``.

        With no host, a name learned from earlier DNS answers for ``ip`` is used.
        """
        if not host and ip:
            host = self.correlator.name_for(ip, now)
            host_source = "dns" if host else None
        elif host and host_source is None:
            host_source = "sni"
        key = (host, ip, host_source)
        cache = self._cache
        found = cache.get(key)
        if found is not None:
            self.hits += 1
            cache.move_to_end(key)
            return found
        self.misses += 1
        result = self._build(host, ip, host_source)
        cache[key] = result
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return result

    def _build(self, host: str | None, ip: str | None, host_source: str | None) -> Destination:
        sources: dict[str, str] = {}
        disagreements: list[str] = []
        facts: IpFacts | None = self.intel.lookup(ip) if ip and self.intel is not None else None
        if facts is not None:
            sources.update(facts.sources)
            disagreements.extend(facts.disagreements)
        region = facts.region if facts is not None else None
        if region:
            sources.setdefault("region", "ip ranges")
        provider = provider_name = product = role = jurisdiction = confidence = None
        inference: tuple[str, ...] = ()
        storage: tuple[str, ...] = ()
        looks_like_ai = False
        if host:
            match = self.matcher.match(host)
            if isinstance(match, HostMatch):
                endpoint = match.endpoint
                provider = match.provider.id
                provider_name = match.provider.name
                product = endpoint.product
                role = endpoint.role
                jurisdiction = match.provider.home
                confidence = endpoint.confidence
                inference = match.inference
                storage = endpoint.storage
                sources["provider"] = f"register: {match.pattern}"
                sources["inference"] = f"register: {endpoint.source} (as of {endpoint.as_of})"
                if match.region:
                    if region and region != match.region:
                        disagreements.append(
                            f"region: the host name says {match.region}, the IP ranges say {region}"
                        )
                    region = match.region
                    sources["region"] = "host name"
            else:
                looks_like_ai = looks_like_ai_api(host)
        return Destination(
            host=host,
            host_source=host_source,
            provider=provider,
            provider_name=provider_name,
            product=product,
            role=role,
            jurisdiction=jurisdiction,
            region=region,
            inference=inference,
            storage=storage,
            endpoint_country=facts.country if facts is not None else None,
            asn=facts.asn if facts is not None else None,
            as_org=facts.as_org if facts is not None else None,
            cloud=facts.cloud if facts is not None else None,
            anycast=facts.anycast if facts is not None else False,
            looks_like_ai=looks_like_ai,
            confidence=confidence,
            sources=sources,
            disagreements=tuple(disagreements),
        )
