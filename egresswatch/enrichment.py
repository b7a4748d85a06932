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
import os
from collections import OrderedDict
from dataclasses import dataclass, replace

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


@dataclass(frozen=True, slots=True)
class OwnEndpoints:
    """egresswatch's own destinations (POLICY.md: recorded with ``rule = "self"``, never judged).

    ``hosts`` are names contacted by ``geo update`` and RDAP look-ups; ``brokers`` are the
    (address or name, port) of the configured MQTT broker.
    """

    hosts: frozenset[str] = frozenset()
    """Host names, lower case."""
    brokers: frozenset[tuple[str, int]] = frozenset()
    """(host name or address, port) pairs."""

    @classmethod
    def default(cls, brokers: frozenset[tuple[str, int]] = frozenset()) -> OwnEndpoints:
        """The hosts of every geo data source and of RDAP, plus ``brokers``."""
        from geo import rdap, update

        return cls(frozenset(update.hosts()) | rdap.hosts(), brokers)

    def why(self, obs: Observation, host: str | None) -> str | None:
        """The reason when ``obs`` is one of egresswatch's own connections, else None."""
        if obs.kind == "dns":
            return None
        pid = obs.extra.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            return None  # attributed to another process: judged like any other
        name = (host or obs.sni or "").lower()
        if name and name in self.hosts:
            return f"{name} is contacted by egresswatch itself (geo data or RDAP), not judged."
        for endpoint, port in self.brokers:
            if port == obs.dport and endpoint.lower() in (name, obs.dst):
                return f"{endpoint}:{port} is egresswatch's own MQTT broker, not judged."
        return None


# Names whose DNS HTTPS answer carried an ECH config, remembered for POLICY.md step 5.
MAX_ECH_NAMES = 65536


class ObservationEnricher:
    """Callable: an Observation in, the same Observation with enrichment fields out.

    With a policy it also adds ``verdict``, ``rule`` and ``reason`` (and counts violations).
    """

    def __init__(
        self,
        enricher: Enricher,
        policy: Policy | None = None,
        *,
        own: OwnEndpoints | None = None,
    ) -> None:
        self.enricher = enricher
        self.policy = policy
        self.own = own or OwnEndpoints()
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
        mine = self.own.why(obs, dest.host)
        if mine is not None:
            return {"verdict": "allow", "rule": "self", "reason": mine}
        verdict = evaluate(
            self.policy,
            dest,
            kind=obs.kind,
            port=obs.dport,
            ip=obs.dst,
            process=obs.extra.get("process"),
            ech=obs.ech,
            ech_real=ech_is_real(obs.sni, obs.ech, self._has_ech_config(name, obs)),
        )
        if verdict.verdict == "violation":
            self.violations += 1
        return {"verdict": verdict.verdict, "rule": verdict.rule, "reason": verdict.reason}

    def _has_ech_config(self, name: str, obs: Observation) -> bool:
        """The HTTPS record the client looked up carried an ECH config: for the outer name
        itself, or for the real name that DNS answered with this destination address (the
        usual case: the client asks for secret.example and sends the public name outside)."""
        if not obs.ech:
            return False
        if name in self._ech_names:
            return True
        names = self.enricher.correlator.names_for(obs.dst, obs.ts)
        return any(n != name and n in self._ech_names for n in names)

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
        # DESIGN.md: the local process, null where it could not be attributed (replay).
        extra.setdefault("pid", None)
        extra.setdefault("process", None)
        if self.policy is not None:
            extra.update(self._judge(obs, dest))
        elif obs.kind != "dns" and (mine := self.own.why(obs, dest.host)) is not None:
            extra.update({"rule": "self", "reason": mine})
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
