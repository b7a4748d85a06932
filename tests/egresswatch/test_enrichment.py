"""egresswatch's own connections (POLICY.md): recorded with rule "self", never judged."""

from __future__ import annotations

import os

from egresswatch.enrichment import ObservationEnricher, OwnEndpoints
from egresswatch.policy import parse_policy
from geo.enrich import Enricher
from probes.observation import Observation

ALLOWLIST = parse_policy('version = 1\n[audit]\nscope = "all"\n', "<test>")


def _tls(sni: str, dst: str = "192.0.2.10", dport: int = 443, **extra: object) -> Observation:
    return Observation(
        ts=1_790_000_000.0,
        kind="tls",
        transport="tcp",
        src="10.0.0.2",
        dst=dst,
        sport=40000,
        dport=dport,
        sni=sni,
        extra=dict(extra),
    )


def test_geo_update_and_rdap_hosts_are_self() -> None:
    enrich = ObservationEnricher(Enricher(), ALLOWLIST, own=OwnEndpoints.default())
    for host in ("download.maxmind.com", "ip-ranges.amazonaws.com", "rdap.db.ripe.net"):
        out = enrich(_tls(host)).extra
        assert (out["verdict"], out["rule"]) == ("allow", "self"), host
        assert "egresswatch itself" in out["reason"]
    # Anything else under scope = "all" is judged as usual.
    out = enrich(_tls("example.org")).extra
    assert (out["verdict"], out["rule"]) == ("violation", "allowlist")
    assert enrich.violations == 1


def test_the_broker_is_self_by_name_or_address() -> None:
    own = OwnEndpoints(brokers=frozenset({("mqtt.corp.example", 8883), ("198.51.100.7", 1883)}))
    enrich = ObservationEnricher(Enricher(), ALLOWLIST, own=own)
    assert enrich(_tls("mqtt.corp.example", dport=8883)).extra["rule"] == "self"
    assert enrich(_tls("other", dst="198.51.100.7", dport=1883)).extra["rule"] == "self"
    # Same name, another port: not the broker.
    assert enrich(_tls("mqtt.corp.example", dport=443)).extra["rule"] == "allowlist"


def test_a_connection_of_another_process_is_judged() -> None:
    enrich = ObservationEnricher(Enricher(), ALLOWLIST, own=OwnEndpoints.default())
    theirs = enrich(_tls("download.maxmind.com", pid=os.getpid() + 1, process="curl")).extra
    assert theirs["rule"] == "allowlist"
    ours = enrich(_tls("download.maxmind.com", pid=os.getpid(), process="egresswatch")).extra
    assert ours["rule"] == "self"


def test_audit_mode_names_self_without_a_verdict() -> None:
    enrich = ObservationEnricher(Enricher(), None, own=OwnEndpoints.default())
    out = enrich(_tls("download.maxmind.com")).extra
    assert out["rule"] == "self"
    assert "verdict" not in out
    assert out["pid"] is None and out["process"] is None
