"""geo.enrich: names and IPs become Destinations with the register's facts and their sources."""

from __future__ import annotations

import pytest

from geo.enrich import Enricher


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return Enricher()


def test_region_bearing_name(enricher: Enricher) -> None:
    d = enricher.destination("bedrock-runtime.eu-central-1.amazonaws.com")
    assert (d.provider, d.role, d.region, d.jurisdiction) == (
        "aws",
        "inference",
        "eu-central-1",
        "US",
    )
    assert d.inference == ("DE",)
    assert d.host_source == "sni"
    assert d.sources["region"] == "host name"
    assert d.sources["provider"].startswith("register: ")


def test_chinese_provider_jurisdiction(enricher: Enricher) -> None:
    d = enricher.destination("api.deepseek.com")
    assert (d.provider, d.jurisdiction) == ("deepseek", "CN")


def test_ordinary_host_is_not_ai(enricher: Enricher) -> None:
    d = enricher.destination("pypi.org")
    assert d.provider is None and not d.is_ai and not d.looks_like_ai
    assert d.fields() == {
        "host": "pypi.org", "provider": None, "role": None, "region": None, "inference": [],
        "endpoint_country": None, "asn": None, "as_org": None, "anycast": False,
    }  # fmt: skip


def test_unregistered_ai_looking_host(enricher: Enricher) -> None:
    d = enricher.destination("llm-gateway.corp.example")
    assert d.provider is None and d.looks_like_ai


def test_no_sni_is_named_from_dns() -> None:
    e = Enricher()
    e.learn_dns("api.anthropic.com", ["160.79.104.10"], 100.0)
    d = e.destination(None, "160.79.104.10", now=101.0)
    assert (d.host, d.host_source, d.provider) == ("api.anthropic.com", "dns", "anthropic")
    nothing = e.destination(None, "192.0.2.77", now=101.0)
    assert (nothing.host, nothing.host_source, nothing.provider) == (None, None, None)


def test_results_are_cached() -> None:
    e = Enricher(cache_size=2)
    first = e.destination("api.openai.com", "162.159.140.245")
    assert e.destination("api.openai.com", "162.159.140.245") is first
    assert (e.hits, e.misses) == (1, 1)
    e.destination("a.example", None)
    e.destination("b.example", None)
    assert e.destination("api.openai.com", "162.159.140.245") is not first  # evicted
