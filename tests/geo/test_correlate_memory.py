"""Issue 5: the DNS correlator holds the last ``max_age`` of answers, not days of them."""

from __future__ import annotations

import gc
import tracemalloc

from geo.correlate import DnsCorrelator
from geo.enrich import Enricher


def test_stale_addresses_are_dropped_not_only_hidden() -> None:
    c = DnsCorrelator(max_age=60.0)
    # One new address a second for ten minutes: a workstation's steady trickle.
    for i in range(600):
        c.learn(f"n{i}.example", [f"192.0.2.{i % 250}", f"2001:db8::{i:x}"], float(i))
    # Only the last minute's addresses are held: 61 of each family (hiding them from
    # name_for alone would keep all 850 until max_entries).
    assert len(c) == 2 * 61
    assert c.expired == 1200 - 2 * 61
    assert c.evicted == 0
    assert c.name_for("2001:db8::257", 599.5) == "n599.example"
    assert c.name_for("2001:db8::0", 599.5) is None


def test_an_address_answered_again_stays() -> None:
    c = DnsCorrelator(max_age=60.0)
    c.learn("api.example", ["192.0.2.1"], 0.0)
    for i in range(1, 200):
        c.learn(f"n{i}.example", [f"198.51.100.{i}"], float(i))
        if i % 30 == 0:
            c.learn("api.example", ["192.0.2.1"], float(i))
    assert c.name_for("192.0.2.1", 199.0) == "api.example"


def test_time_going_backwards_drops_nothing_fresh() -> None:
    c = DnsCorrelator(max_age=60.0)
    c.learn("late.example", ["192.0.2.1"], 1000.0)
    c.learn("early.example", ["192.0.2.2"], 10.0)
    assert c.name_for("192.0.2.1", 1000.0) == "late.example"
    assert c.name_for("192.0.2.2", 10.0) == "early.example"


def test_the_enricher_keeps_an_empty_correlator_it_is_given() -> None:
    # An empty correlator has length 0; ``correlator or DnsCorrelator()`` replaced it (and its
    # bounds) with the defaults.
    mine = DnsCorrelator(max_entries=2, max_age=5.0)
    assert Enricher(correlator=mine).correlator is mine


def _held(c: DnsCorrelator) -> int:
    return sum(len(entry) // 2 for entry in c._table.values())  # (name, time) pairs


def test_the_bound_is_on_names_held_not_only_on_addresses() -> None:
    # Shared addresses (CDNs, hosting) collect names: 64 addresses answered for ever-new names.
    c = DnsCorrelator(max_entries=64)
    for i in range(64 * 20):
        c.learn(f"n{i}.example", [f"192.0.2.{i % 64}"], float(i))
        assert _held(c) <= 64
    assert c.pairs == _held(c) == 64
    # The newest names still answer.
    assert c.name_for(f"192.0.2.{(64 * 20 - 1) % 64}", 64 * 20.0) == f"n{64 * 20 - 1}.example"


def test_memory_is_flat_once_full_even_when_addresses_collect_names() -> None:
    c = DnsCorrelator(max_entries=512)

    def answer(i: int) -> None:
        # 512 shared addresses, each answered for a new name every 512 answers.
        c.learn(f"name-{i:06d}.example", [f"10.0.{(i % 512) // 256}.{i % 256}"], float(i))

    tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        for i in range(1024):  # full: 512 names held (a bound on addresses alone: 1,024)
            answer(i)
        gc.collect()
        before = tracemalloc.take_snapshot()
        for i in range(1024, 4096):
            answer(i)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        if not tracing:
            tracemalloc.stop()
    mine = [tracemalloc.Filter(True, "*/geo/correlate.py")]
    grown = after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename")
    # 0 measured; addresses collecting up to four names each would add about 50 KB here.
    assert sum(stat.size_diff for stat in grown) < 4096
