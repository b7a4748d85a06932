"""Issue 5: enrichment keeps bounded state however many new destinations it sees.

The agent enriches every observation for as long as it runs, and a machine meets new names all
the time (per-customer endpoints such as ``<resource>.openai.azure.com``, CDN edges, telemetry
hosts). Every table on that path (the destination cache, the DNS correlator, the host matcher's
cache, the IP facts cache, the ECH names) must stop growing at its bound. These tests use small
bounds, fill them, and then check that many more new names add no traced memory: a structure
that keeps anything per destination fails them (bench/soak.py checks the same on the live agent
over an hour).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import egresswatch.enrichment as enrichment_module
from egresswatch.enrichment import ObservationEnricher, OwnEndpoints
from egresswatch.policy import parse_policy
from geo.correlate import DnsCorrelator
from geo.enrich import Enricher
from geo.hosts import HostMatcher
from geo.ipintel import IpIntel
from geo.register import load_register
from probes.observation import Observation

SAMPLE = Path(__file__).resolve().parents[2] / "geo" / "sample"
BOUND = 256
POLICY = parse_policy(
    """
version = 1
[audit]
scope = "ai"
[[rule]]
id = "no-baseten"
action = "deny"
host = "*.api.baseten.co"
""",
    "<test>",
)


def _observations(start: int, count: int) -> Iterator[Observation]:
    """For each new name: its DNS answer (with an ECH config) and a connection to it."""
    for n in range(start, start + count):
        name = (
            f"res{n}.openai.azure.com",
            f"m{n}.api.baseten.co",
            f"n{n}.cdn.example.org",
        )[n % 3]
        address = f"10.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}"
        ts = 1_790_000_000.0 + n * 0.01
        yield Observation(
            ts=ts, kind="dns", transport="udp", src="10.0.0.2", dst="10.0.0.53",
            sport=40000 + n % 20000, dport=53, qname=name, qtype="HTTPS",
            answers=(address,), resolved=(address,), ech_config=True,
        )  # fmt: skip
        yield Observation(
            ts=ts + 0.001, kind="tls", transport="tcp", src="10.0.0.2", dst=address,
            sport=40000 + n % 20000, dport=443, sni=name if n % 7 else None,
            alpn=("h2", "http/1.1"),
        )  # fmt: skip


@pytest.fixture
def enrich(monkeypatch: pytest.MonkeyPatch) -> ObservationEnricher:
    monkeypatch.setattr(enrichment_module, "MAX_ECH_NAMES", BOUND)
    enricher = Enricher(
        HostMatcher(load_register(), cache_size=BOUND),
        IpIntel.from_dir(SAMPLE, cache_size=BOUND, safe=True),
        DnsCorrelator(max_entries=BOUND),
        cache_size=BOUND,
    )
    return ObservationEnricher(enricher, POLICY, own=OwnEndpoints.default())


def _feed(enrich: ObservationEnricher, start: int, count: int) -> None:
    for obs in _observations(start, count):
        enrich(obs)


def test_every_table_stops_at_its_bound(enrich: ObservationEnricher) -> None:
    _feed(enrich, 0, 4 * BOUND)
    enricher = enrich.enricher
    assert len(enricher._cache) == BOUND
    assert len(enricher.correlator) == BOUND
    assert len(enricher.matcher._cache) <= BOUND
    assert enricher.intel is not None
    assert enricher.intel._cached.cache_info().currsize == BOUND
    assert len(enrich._ech_names) == BOUND
    # Still doing its job at the bound: the newest names are judged and remembered.
    assert enrich.violations > 0
    last = list(_observations(4 * BOUND - 1, 1))[1]
    assert enricher.correlator.name_for(last.dst, last.ts) is not None


def test_new_destinations_add_no_memory_once_the_tables_are_full(
    enrich: ObservationEnricher,
) -> None:
    # Tracing starts before the fill, so that what the full tables hold is traced and entries
    # evicted later are counted out as their replacements are counted in.
    tracing = tracemalloc.is_tracing()  # pytest run under -X tracemalloc: leave it on
    tracemalloc.start()
    try:
        _feed(enrich, 0, 4 * BOUND)  # fill every table, and warm up the interpreter's caches
        gc.collect()
        before = tracemalloc.take_snapshot()
        _feed(enrich, 4 * BOUND, 16 * BOUND)  # 4,096 more new names, 8,192 observations
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        if not tracing:
            tracemalloc.stop()
    ours = [tracemalloc.Filter(True, "*/egresswatch/*"), tracemalloc.Filter(True, "*/geo/*")]
    grown = after.filter_traces(ours).compare_to(before.filter_traces(ours), "lineno")
    growth = sum(stat.size_diff for stat in grown)
    # The smallest object Python keeps is 16 bytes: anything kept per new name is 64 KB or
    # more here. The slack (about 1.4 KB is measured) is for longer names replacing shorter
    # ones in full tables.
    top = "\n".join(str(stat) for stat in grown[:5])
    assert growth < 16 * 1024, f"{growth} bytes more after 4,096 new names:\n{top}"
