"""RDAP look-ups: off by default, cached in SQLite with a TTL, rate limited, never raising.

The bootstrap server is the local HTTP server from ``test_update`` serving recorded RDAP answers
(``recorded/rdap-*.json``); it redirects as ARIN's bootstrap does. Offline: see ``_offline``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import geo.rdap
from geo.errors import GeoError, RdapCacheError
from geo.rdap import DEFAULT_BOOTSTRAP_URL, RdapClient, RdapResult, TokenBucket, hosts
from tests.geo.test_update import LocalServer, Route, _offline  # noqa: F401 (autouse fixture)

RECORDED = Path(__file__).resolve().parent / "recorded"
ARIN = (RECORDED / "rdap-arin-8.8.8.8.json").read_bytes()
RIPE = (RECORDED / "rdap-ripe-2001-67c-2e8.json").read_bytes()
V6 = "2001:67c:2e8:22::c100:68b"
RDAP_JSON = {"Content-Type": "application/rdap+json"}


class Clock:
    """Unix time that moves only when told."""

    def __init__(self, now: float = 1_772_600_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        # ARIN's bootstrap answers with a redirect to the RIR that holds the address.
        srv.routes["/bootstrap/ip/8.8.8.8"] = Route(redirect="/arin/registry/ip/8.8.8.8")
        srv.routes["/arin/registry/ip/8.8.8.8"] = Route(ARIN, headers=RDAP_JSON)
        srv.routes[f"/bootstrap/ip/{V6}"] = Route(redirect=srv.url(f"/ripe/ip/{V6}"))
        srv.routes[f"/ripe/ip/{V6}"] = Route(RIPE, headers=RDAP_JSON)
        yield srv


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client(server: LocalServer, clock: Clock, **kw: object) -> RdapClient:
    kw.setdefault("enabled", True)
    kw.setdefault("timeout", 0.5)
    return RdapClient(bootstrap_url=server.url("/bootstrap"), clock=clock, **kw)  # type: ignore[arg-type]


def fetches(server: LocalServer) -> int:
    """Requests that reached an RIR (not the bootstrap redirects)."""
    return sum(1 for s in server.seen if not s.path.startswith("/bootstrap/"))


# -- off by default --------------------------------------------------------------------------


def test_disabled_by_default(server: LocalServer, tmp_path: Path) -> None:
    cache = tmp_path / "rdap.sqlite"
    rdap = RdapClient(cache, bootstrap_url=server.url("/bootstrap"))
    result = rdap.lookup("8.8.8.8")
    assert result.status == "disabled"
    assert result.source == "skipped"
    assert not result.found
    assert server.seen == []
    assert not cache.exists()  # disabled has no side effects, not even a cache file
    rdap.close()


# -- answers ---------------------------------------------------------------------------------


def test_ipv4_answer_through_the_bootstrap_redirect(server: LocalServer, clock: Clock) -> None:
    with client(server, clock) as rdap:
        result = rdap.lookup("8.8.8.8")
    assert result == RdapResult(
        ip="8.8.8.8",
        status="fetched",
        asn=15169,
        as_org="Google LLC",
        country=None,  # ARIN's network object has no country
        network="8.8.8.0/24",
        name="GOGL",
        handle="NET-8-8-8-0-2",
        fetched_at=clock.now,
        expires_at=clock.now + 7 * 86400,
    )
    assert result.source == "network"
    assert result.found
    assert [s.path for s in server.seen] == ["/bootstrap/ip/8.8.8.8", "/arin/registry/ip/8.8.8.8"]
    assert server.seen[0].headers["Accept"] == "application/rdap+json"
    assert server.seen[0].headers["User-Agent"].startswith("egresswatch")


def test_ipv6_answer_from_ripe_has_no_asn(server: LocalServer, clock: Clock) -> None:
    with client(server, clock) as rdap:
        result = rdap.lookup(ipaddress.ip_address(V6))
    assert result.status == "fetched"
    assert result.ip == V6
    assert result.asn is None  # RIPE does not put the origin AS in IP network objects
    assert result.as_org == "Reseaux IP Europeens Network Coordination Centre (RIPE NCC)"
    assert result.country == "NL"
    assert result.network == "2001:67c:2e8::/48"
    assert result.name == "RIPE-NCC"


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(server: LocalServer, clock: Clock) -> None:
    with client(server, clock) as rdap:
        assert rdap.lookup("::ffff:8.8.8.8").ip == "8.8.8.8"


def test_not_public_addresses_are_not_looked_up(server: LocalServer, clock: Clock) -> None:
    with client(server, clock) as rdap:
        for ip in ("10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fe80::1", "100.64.0.1"):
            assert rdap.lookup(ip).status == "not_public", ip
        bad = rdap.lookup("not-an-ip")
    assert bad.status == "not_public"
    assert bad.error == "not an IP address: 'not-an-ip'"
    assert server.seen == []


# -- cache -----------------------------------------------------------------------------------


def test_cache_hit_within_ttl_and_for_the_whole_network(
    server: LocalServer, clock: Clock, tmp_path: Path
) -> None:
    with client(server, clock, cache_path=tmp_path / "rdap.sqlite") as rdap:
        first = rdap.lookup("8.8.8.8")
        clock.advance(3600)
        again = rdap.lookup("8.8.8.8")
        neighbour = rdap.lookup("8.8.8.200")  # same registered network: no request
    assert fetches(server) == 1
    assert again.status == neighbour.status == "cached"
    assert again.source == "cache"
    assert (again.asn, again.as_org, again.network) == (15169, "Google LLC", "8.8.8.0/24")
    assert again.fetched_at == first.fetched_at
    assert neighbour.ip == "8.8.8.200"


def test_cache_outlives_the_client(server: LocalServer, clock: Clock, tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "rdap.sqlite"
    with client(server, clock, cache_path=cache) as rdap:
        rdap.lookup("8.8.8.8")
    with client(server, clock, cache_path=cache) as rdap:
        assert rdap.lookup("8.8.8.8").status == "cached"
    assert fetches(server) == 1


def test_expired_answer_is_fetched_again(server: LocalServer, clock: Clock) -> None:
    with client(server, clock, ttl=600) as rdap:
        rdap.lookup("8.8.8.8")
        clock.advance(599)
        assert rdap.lookup("8.8.8.8").status == "cached"
        clock.advance(2)
        refreshed = rdap.lookup("8.8.8.8")
    assert refreshed.status == "fetched"
    assert refreshed.expires_at == clock.now + 600
    assert fetches(server) == 2


def test_failure_is_cached_for_the_negative_ttl(server: LocalServer, clock: Clock) -> None:
    server.routes["/bootstrap/ip/9.9.9.9"] = Route(b"overloaded", status=503)
    with client(server, clock, negative_ttl=60) as rdap:
        failed = rdap.lookup("9.9.9.9")
        remembered = rdap.lookup("9.9.9.9")
        clock.advance(61)
        retried = rdap.lookup("9.9.9.9")
    assert failed.status == "failed"
    assert failed.source == "skipped"
    assert failed.error == "HTTP 503 Service Unavailable"
    assert remembered.status == "cached_failure"
    assert remembered.source == "cache"
    assert remembered.error == "HTTP 503 Service Unavailable"
    assert not remembered.found
    assert retried.status == "failed"
    assert len(server.hits("/bootstrap/ip/9.9.9.9")) == 2


def test_a_negative_entry_does_not_hide_a_later_answer(server: LocalServer, clock: Clock) -> None:
    server.routes["/bootstrap/ip/8.8.8.9"] = Route(b"", status=500)
    with client(server, clock) as rdap:
        assert rdap.lookup("8.8.8.9").status == "failed"
        rdap.lookup("8.8.8.8")  # caches 8.8.8.0/24
        assert rdap.lookup("8.8.8.9").status == "cached"


def test_cache_is_bounded(server: LocalServer, clock: Clock, tmp_path: Path) -> None:
    cache = tmp_path / "rdap.sqlite"
    with client(server, clock, cache_path=cache, max_entries=3, rate=1000, burst=1000) as rdap:
        for n in range(10):
            server.routes[f"/bootstrap/ip/9.9.9.{n}"] = Route(b"", status=404)
            rdap.lookup(f"9.9.9.{n}")
            clock.advance(1)
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT COUNT(*) FROM rdap_cache").fetchone()[0]
    db.close()
    assert rows == 3


def test_unusable_cache_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(RdapCacheError, match="not a usable RDAP cache") as info:
        RdapClient(tmp_path / "not-a-db", enabled=True)
    assert isinstance(info.value, GeoError)
    assert info.value.path == str(tmp_path / "not-a-db")


# -- rate limit ------------------------------------------------------------------------------


def test_rate_limit(server: LocalServer, clock: Clock) -> None:
    for n in range(4):
        server.routes[f"/bootstrap/ip/9.9.9.{n}"] = Route(b"", status=404)
    with client(server, clock, rate=1.0, burst=2) as rdap:
        assert rdap.lookup("9.9.9.0").status == "failed"
        assert rdap.lookup("9.9.9.1").status == "failed"
        limited = rdap.lookup("9.9.9.2")
        assert limited.status == "rate_limited"
        assert limited.source == "skipped"
        # Cached answers cost no token.
        assert rdap.lookup("9.9.9.0").status == "cached_failure"
        clock.advance(1.0)
        assert rdap.lookup("9.9.9.2").status == "failed"
        assert rdap.lookup("9.9.9.3").status == "rate_limited"
    assert len(server.seen) == 3


def test_http_429_pauses_lookups(server: LocalServer, clock: Clock) -> None:
    server.routes["/bootstrap/ip/9.9.9.9"] = Route(
        b"slow down", status=429, headers={"Retry-After": "30"}
    )
    with client(server, clock, burst=5) as rdap:
        assert rdap.lookup("9.9.9.9").error == "HTTP 429 Too Many Requests"
        assert rdap.lookup("8.8.8.8").status == "rate_limited"  # tokens left, but paused
        clock.advance(31)
        assert rdap.lookup("8.8.8.8").status == "fetched"


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(50.0)  # a clock stepping back refills nothing
    assert not bucket.take(100.0)  # nor does stepping over the same time again
    assert bucket.take(100.5)
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(rate=0, burst=1, now=0.0)


# -- failures never raise --------------------------------------------------------------------


def test_timeout(server: LocalServer, clock: Clock) -> None:
    server.routes["/bootstrap/ip/9.9.9.9"] = Route(b"{}", delay=3.0)
    with client(server, clock, timeout=0.3) as rdap:
        result = rdap.lookup("9.9.9.9")
    assert result.status == "failed"
    assert result.error == "no answer within 0.3 s"


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (Route(b"<html>maintenance</html>"), "RDAP response is not JSON"),
        (Route(b"[]"), "RDAP response is not a JSON object: list"),
        (Route(b'{"objectClassName": "ip network"}'), "RDAP response not understood"),
        (Route(b"{}" + b" " * 2_000_000), "RDAP response larger than 1048576 bytes"),
        (Route(b"", status=404), "HTTP 404 Not Found"),
        (Route(redirect="http://rdap.example.invalid/ip/9.9.9.9"), "refused a redirect"),
    ],
    ids=["html", "not-an-object", "no-handle", "too-large", "404", "redirect-elsewhere"],
)
def test_bad_answers_fail_without_raising(
    server: LocalServer, clock: Clock, route: Route, error: str
) -> None:
    server.routes["/bootstrap/ip/9.9.9.9"] = route
    with client(server, clock) as rdap:
        result = rdap.lookup("9.9.9.9")
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith(error)


def test_unreachable_bootstrap_server(clock: Clock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/bootstrap"
        with RdapClient(enabled=True, bootstrap_url=url, clock=clock) as rdap:
            result = rdap.lookup("8.8.8.8")
    assert result.status == "failed"
    assert (result.error or "").startswith("network error")


def test_registry_quirks_are_tolerated(server: LocalServer, clock: Clock) -> None:
    # Some registries have written addresses with a "/128" suffix.
    data = json.loads(RIPE)
    data["startAddress"] += "/128"
    data["endAddress"] += "/128"
    server.routes[f"/ripe/ip/{V6}"] = Route(json.dumps(data).encode())
    with client(server, clock) as rdap:
        assert rdap.lookup(V6).network == "2001:67c:2e8::/48"
        assert rdap.lookup("2001:67c:2e8::1").status == "cached"


def test_threads_share_one_client(server: LocalServer, clock: Clock, tmp_path: Path) -> None:
    results: list[RdapResult] = []
    with client(server, clock, cache_path=tmp_path / "rdap.sqlite", burst=50, timeout=5) as rdap:
        workers = [
            threading.Thread(target=lambda: results.append(rdap.lookup("8.8.8.8")))
            for _ in range(8)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
    assert len(results) == 8
    assert {r.status for r in results} <= {"fetched", "cached"}, [r.error for r in results]
    assert {r.as_org for r in results} == {"Google LLC"}


# -- hosts -----------------------------------------------------------------------------------


def test_hosts() -> None:
    assert hosts() == {
        "rdap-bootstrap.arin.net",
        "rdap.arin.net",
        "rdap.db.ripe.net",
        "rdap.apnic.net",
        "rdap.lacnic.net",
        "rdap.afrinic.net",
    }
    assert DEFAULT_BOOTSTRAP_URL == "https://rdap-bootstrap.arin.net/bootstrap"
    assert "127.0.0.1" in hosts("http://127.0.0.1:8080/bootstrap")


def test_an_unexpected_error_is_a_failure_not_an_exception(
    server: LocalServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(geo.rdap, "_parse", broken)
    with client(server, clock) as rdap:
        result = rdap.lookup("8.8.8.8")
    assert result.status == "failed"
    assert result.error == "unexpected error: RuntimeError: a bug"
