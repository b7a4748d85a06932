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
from collections import OrderedDict
from dataclasses import replace

from egresswatch.output import ObservationWriter
from egresswatch.policy import Policy, ech_is_real, evaluate
from geo.destination import Destination
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


# Names whose DNS HTTPS answer carried an ECH config, remembered for POLICY.md step 5.
MAX_ECH_NAMES = 65536


class ObservationEnricher:
    """Callable: an Observation in, the same Observation with enrichment fields out.

    With a policy it also adds ``verdict``, ``rule`` and ``reason`` (and counts violations).
    """

    def __init__(self, enricher: Enricher, policy: Policy | None = None) -> None:
        self.enricher = enricher
        self.policy = policy
        self.violations = 0
        self._ech_names: OrderedDict[str, None] = OrderedDict()

    def _judge(self, obs: Observation, dest: Destination) -> dict[str, str | None]:
        assert self.policy is not None
        if obs.kind == "dns" and obs.qname and obs.ech_config:
            self._ech_names[obs.qname] = None
            self._ech_names.move_to_end(obs.qname)
            if len(self._ech_names) > MAX_ECH_NAMES:
                self._ech_names.popitem(last=False)
        name = (obs.sni or "").lower()
        verdict = evaluate(
            self.policy,
            dest,
            kind=obs.kind,
            port=obs.dport,
            ip=obs.dst,
            ech=obs.ech,
            ech_real=ech_is_real(obs.sni, obs.ech, name in self._ech_names),
        )
        if verdict.verdict == "violation":
            self.violations += 1
        return {"verdict": verdict.verdict, "rule": verdict.rule, "reason": verdict.reason}

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
        extra = {**obs.extra, **dest.fields()}
        if self.policy is not None:
            extra.update(self._judge(obs, dest))
        return replace(obs, extra=extra)


class EnrichingWriter:
    """An ObservationWriter that enriches each observation before passing it on."""

    def __init__(self, writer: ObservationWriter, enrich: ObservationEnricher) -> None:
        self._writer = writer
        self._enrich = enrich

    def write(self, obs: Observation) -> None:
        self._writer.write(self._enrich(obs))

    def close(self) -> None:
        self._writer.close()
