"""Adds the enrichment fields of DESIGN.md to Observations, in capture order.

TLS and QUIC observations are judged by their SNI (else by a name learned from DNS answers
for ``dst``) and located by ``dst``. A DNS observation describes its question: ``host`` is the
question name, and the IP facts are those of the first address that answered it, so a report
can say "api.example.com resolved to an address in XX" before any connection is made. Every
DNS answer also teaches the correlator which name an address serves, so the observation must
be fed in capture order.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from egresswatch.output import ObservationWriter
from geo.enrich import Enricher
from probes.observation import Observation


def _addresses(values: tuple[str, ...]) -> list[str]:
    out = []
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            continue  # a CNAME target
        out.append(value)
    return out


class ObservationEnricher:
    """Callable: an Observation in, the same Observation with enrichment fields out."""

    def __init__(self, enricher: Enricher) -> None:
        self.enricher = enricher

    def __call__(self, obs: Observation) -> Observation:
        enricher = self.enricher
        if obs.kind == "dns":
            addresses = _addresses(obs.resolved)
            if obs.qname and addresses:
                enricher.learn_dns(obs.qname, addresses, obs.ts)
            dest = enricher.destination(
                obs.qname, addresses[0] if addresses else None, now=obs.ts, host_source="query"
            )
        else:
            dest = enricher.destination(obs.sni, obs.dst, now=obs.ts)
        return replace(obs, extra={**obs.extra, **dest.fields()})


class EnrichingWriter:
    """An ObservationWriter that enriches each observation before passing it on."""

    def __init__(self, writer: ObservationWriter, enrich: ObservationEnricher) -> None:
        self._writer = writer
        self._enrich = enrich

    def write(self, obs: Observation) -> None:
        self._writer.write(self._enrich(obs))

    def close(self) -> None:
        self._writer.close()
