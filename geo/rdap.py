"""RDAP look-ups: who holds an IP address (ASN, organisation), as a fallback.

Used when no ASN database in the geo folder knows an address. **Off unless enabled**, and never
on the capture path: ``RdapClient.lookup`` is a plain synchronous call the daemon makes from a
worker thread. It never raises for network trouble; it returns an ``RdapResult`` whose ``status``
says what happened::

    cached          answer from the SQLite cache, within its TTL          source "cache"
    cached_failure  a recent failure, remembered (negative cache)         source "cache"
    fetched         answer just fetched from the RIR                      source "network"
    failed          the fetch failed (timeout, HTTP error, bad JSON)      source "skipped"
    rate_limited    no token left in the bucket; try again later          source "skipped"
    disabled        RDAP is switched off                                  source "skipped"
    not_public      not a globally routable address (or not an address)   source "skipped"

Requests: ``GET {bootstrap_url}/ip/{ip}`` (ARIN's bootstrap server, which redirects to the RIR
that holds the address), ``Accept: application/rdap+json``, one socket timeout, an overall
deadline of three timeouts, a 1 MiB cap on the body, redirects followed only to the hosts
``hosts()`` lists (so that list is exactly what this module contacts, for the policy's
``rule = "self"``). A token bucket (default 1 look-up/s, burst 5) bounds the rate; an HTTP 429
empties it for the server's ``Retry-After``.

Cache: one SQLite table keyed by the registered network (start and end address), so one answer
serves every address in the network: an RIR answers with the most specific registration it has,
and the organisation that holds (and usually routes) the whole block is what ``as_org`` wants.
Failures are cached per address, with a shorter TTL. Rows past ``max_entries`` are evicted
soonest-expiring first.

How ipwhois is used. ``IPWhois(ip).lookup_rdap()`` cannot be pointed at a test server cleanly
(read in ipwhois 1.3.0):

- with ``bootstrap=False`` (its default) it first looks the ASN up at Team Cymru over DNS
  (through the system resolver), whois (port 43) or ARIN's REST service: three more services,
  none with an injectable address, each a host the ``self`` rule would have to know;
- with ``bootstrap=True`` the URL is the module constant ``ipwhois.rdap.BOOTSTRAP_URL``; the only
  per-call seam is ``proxy_opener``, through which the URL would have to be rewritten; its fetch
  reads the body without a size cap, retries, and sleeps ``rate_limit_timeout`` (120 s by default)
  on a rate-limit notice; and ``inc_nir=True`` (the default) fails on its own ``asn_data=None``.

So this module does the HTTP request itself and hands the JSON to ipwhois's RDAP parser,
``ipwhois.rdap.RDAP(Net(ip)).lookup(response=..., bootstrap=True, root_ent_check=False)``, which
makes no request when it is given the response.

What comes out of an answer: the network (CIDR), its name and handle and country (the *holder's*
registration country, not where the address is used: never an ``endpoint_country``); ``as_org``,
the registrant entity's name, else the network's name; ``asn`` from ARIN's
``arin_originas0_originautnums`` extension. The other RIRs do not put the origin AS in IP network
objects, so ``asn`` is often None and ``as_org`` is then the address holder.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any, Literal

from ipwhois.net import Net  # type: ignore[import-untyped]
from ipwhois.rdap import RDAP, RIR_RDAP  # type: ignore[import-untyped]

from geo.errors import RdapCacheError

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_URL = "https://rdap-bootstrap.arin.net/bootstrap"
"""ARIN's RDAP bootstrap service (the one ipwhois uses): redirects an IP query to the RIR."""

RdapStatus = Literal[
    "cached", "cached_failure", "fetched", "failed", "rate_limited", "disabled", "not_public"
]
RdapSource = Literal["cache", "network", "skipped"]

_SOURCE: dict[str, RdapSource] = {
    "cached": "cache",
    "cached_failure": "cache",
    "fetched": "network",
}
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RdapResult:
    """The outcome of one look-up; fields other than ``ip`` and ``status`` may be None."""

    ip: str
    """The address asked about, as ``ipaddress`` prints it."""
    status: RdapStatus
    """What happened (see the module docstring)."""
    asn: int | None = None
    """Origin AS, when the RIR gives it (ARIN's ``arin_originas0`` extension)."""
    as_org: str | None = None
    """The holder of the address block: the registrant's name, else the network's name."""
    country: str | None = None
    """ISO alpha-2 country of the holder's registration (not where the address is used)."""
    network: str | None = None
    """The registered network, as CIDR (several joined by ``", "`` when a range needs them)."""
    name: str | None = None
    """The network's registered name (``GOOGLE``, ``RIPE-NCC``)."""
    handle: str | None = None
    """The network's registry handle (``NET-8-8-8-0-2``)."""
    fetched_at: float | None = None
    """Unix time the answer (or failure) was fetched."""
    expires_at: float | None = None
    """Unix time the cache stops using it."""
    error: str | None = None
    """Why it failed, was skipped, or (``cached_failure``) why it failed earlier."""

    @property
    def source(self) -> RdapSource:
        """Where the result came from: ``cache``, ``network`` or ``skipped``."""
        return _SOURCE.get(self.status, "skipped")

    @property
    def found(self) -> bool:
        """An answer (cached or fetched), as opposed to a failure or a skip."""
        return self.status in ("cached", "fetched")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``take`` never blocks."""

    __slots__ = ("_paused_until", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            msg = f"rate must be > 0 and burst >= 1, got rate={rate!r} burst={burst!r}"
            raise ValueError(msg)
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now
        self._paused_until = 0.0

    def take(self, now: float) -> bool:
        """Spend one token if there is one (after refilling for the time since the last call)."""
        # A clock that steps back refills nothing, and the time it steps over again later
        # is not counted twice.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = max(self._stamp, now)
        if now < self._paused_until or self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def pause(self, now: float, seconds: float) -> None:
        """Give no tokens for ``seconds`` (the server said it is overloaded)."""
        self._tokens = 0.0
        self._stamp = max(self._stamp, now)
        self._paused_until = max(self._paused_until, now + seconds)


class RdapClient:
    """RDAP look-ups with a TTL cache in SQLite, a rate limit and a timeout.

    ``cache_path`` None keeps the cache in memory (one process, lost on exit). ``clock`` gives
    Unix time; tests pass a fake one. Thread-safe: the cache and the bucket are behind a lock,
    and the network request is made outside it.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str] | None = None,
        *,
        enabled: bool = False,
        bootstrap_url: str = DEFAULT_BOOTSTRAP_URL,
        timeout: float = 5.0,
        ttl: float = 7 * 86400.0,
        negative_ttl: float = 3600.0,
        rate: float = 1.0,
        burst: int = 5,
        max_entries: int = 50_000,
        max_response_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = enabled
        self.bootstrap_url = bootstrap_url.rstrip("/")
        self.timeout = timeout
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.max_response_bytes = max_response_bytes
        self.clock = clock
        self._allowed_hosts = hosts(bootstrap_url)
        self._bucket = TokenBucket(rate, burst, clock())
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.cache_path = None if cache_path is None else Path(cache_path)
        if enabled:
            # Disabled means no side effects at all: not even a cache file.
            self._db = _open_cache(self.cache_path)

    def __enter__(self) -> RdapClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the cache database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def lookup(self, ip: str | _IPAddress) -> RdapResult:
        """Who holds ``ip``: from the cache, else from the RIR if the rate limit allows."""
        if not self.enabled:
            return RdapResult(str(ip), "disabled", error="RDAP look-ups are not enabled")
        address = _address(ip)
        if address is None:
            return RdapResult(str(ip), "not_public", error=f"not an IP address: {str(ip)!r}")
        text = str(address)
        if not address.is_global:
            return RdapResult(text, "not_public", error="not a globally routable address")
        now = self.clock()
        with self._lock:
            cached = self._cache_get(address, now)
            if cached is not None:
                return cached
            if not self._bucket.take(now):
                return RdapResult(text, "rate_limited", error="RDAP rate limit reached")
        try:
            answer = self._fetch(address)
        except _Failure as failure:
            with self._lock:
                if failure.retry_after is not None:
                    self._bucket.pause(self.clock(), failure.retry_after)
                return self._cache_put_failure(address, failure.problem, self.clock())
        except Exception as exc:  # the worker must survive a bug here too; logged with trace
            log.exception("RDAP look-up of %s failed unexpectedly", text)
            problem = f"unexpected error: {type(exc).__name__}: {exc}"
            with self._lock:
                return self._cache_put_failure(address, problem, self.clock())
        with self._lock:
            return self._cache_put(address, answer, self.clock())

    # -- network -----------------------------------------------------------------------------

    def _fetch(self, address: _IPAddress) -> _Answer:
        url = f"{self.bootstrap_url}/ip/{address}"
        data = _get_json(
            url,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            allowed_hosts=self._allowed_hosts,
        )
        return _parse(address, data)

    # -- cache -------------------------------------------------------------------------------

    def _cache_get(self, address: _IPAddress, now: float) -> RdapResult | None:
        if self._db is None:
            return None
        key = _key(address)
        try:
            row = self._db.execute(
                "SELECT ok, network, name, handle, asn, as_org, country, error, fetched_at,"
                " expires_at FROM rdap_cache WHERE version = ? AND start <= ? AND end >= ?"
                " AND expires_at > ? ORDER BY ok DESC, start DESC, end ASC LIMIT 1",
                (address.version, key, key, now),
            ).fetchone()
        except sqlite3.Error as exc:
            log.warning("RDAP cache read failed, asking the network: %s", exc)
            return None
        if row is None:
            return None
        ok, network, name, handle, asn, as_org, country, error, fetched_at, expires_at = row
        return RdapResult(
            str(address),
            "cached" if ok else "cached_failure",
            asn=asn,
            as_org=as_org,
            country=country,
            network=network,
            name=name,
            handle=handle,
            fetched_at=fetched_at,
            expires_at=expires_at,
            error=error,
        )

    def _cache_put(self, address: _IPAddress, answer: _Answer, now: float) -> RdapResult:
        expires = now + self.ttl
        result = RdapResult(
            str(address),
            "fetched",
            asn=answer.asn,
            as_org=answer.as_org,
            country=answer.country,
            network=answer.network,
            name=answer.name,
            handle=answer.handle,
            fetched_at=now,
            expires_at=expires,
        )
        start, end = answer.start, answer.end
        if (
            start is None
            or end is None
            or not (start.version == end.version == address.version)
            or not (int(start) <= int(address) <= int(end))
        ):
            # A range that does not hold the address asked about: keep the answer for the
            # address alone.
            start = end = address
        self._write(
            (address.version, _key(start), _key(end), 1, answer.network, answer.name,
             answer.handle, answer.asn, answer.as_org, answer.country, None, now, expires),
            now,
        )  # fmt: skip
        return result

    def _cache_put_failure(self, address: _IPAddress, problem: str, now: float) -> RdapResult:
        expires = now + self.negative_ttl
        key = _key(address)
        self._write(
            (address.version, key, key, 0, None, None, None, None, None, None, problem, now,
             expires),
            now,
        )  # fmt: skip
        return RdapResult(str(address), "failed", fetched_at=now, expires_at=expires, error=problem)

    def _write(self, row: tuple[Any, ...], now: float) -> None:
        if self._db is None:
            return
        try:
            with self._db:
                self._db.execute("DELETE FROM rdap_cache WHERE expires_at <= ?", (now,))
                self._db.execute(
                    "INSERT OR REPLACE INTO rdap_cache (version, start, end, ok, network, name,"
                    " handle, asn, as_org, country, error, fetched_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                (count,) = self._db.execute("SELECT COUNT(*) FROM rdap_cache").fetchone()
                if count > self.max_entries:
                    self._db.execute(
                        "DELETE FROM rdap_cache WHERE (version, start, end) IN (SELECT version,"
                        " start, end FROM rdap_cache ORDER BY expires_at LIMIT ?)",
                        (count - self.max_entries,),
                    )
        except sqlite3.Error as exc:
            log.warning("RDAP cache write failed, answer not cached: %s", exc)


def hosts(bootstrap_url: str = DEFAULT_BOOTSTRAP_URL) -> frozenset[str]:
    """Every host an ``RdapClient`` with this bootstrap URL may contact: the bootstrap server and
    the five RIRs' RDAP servers it redirects to (for the policy's ``rule = "self"``)."""
    out = {urllib.parse.urlsplit(bootstrap_url).hostname or ""}
    for urls in RIR_RDAP.values():
        out.add(urllib.parse.urlsplit(urls["ip_url"]).hostname or "")
    out.discard("")
    return frozenset(h.lower() for h in out)


# -- HTTP ------------------------------------------------------------------------------------


class _Failure(Exception):
    """A fetch or parse failure, turned into a ``failed`` result (never leaves this module)."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows the bootstrap redirect only to known RDAP hosts, never from https to http."""

    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        self.allowed_hosts = allowed_hosts

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url)
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        host = (new.hostname or "").lower()
        if (old.scheme == "https" and new.scheme != "https") or host not in self.allowed_hosts:
            fp.close()
            problem = f"refused a redirect to {new.scheme}://{host}"
            raise _Failure(problem)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _get_json(
    url: str, *, timeout: float, max_bytes: int, allowed_hosts: frozenset[str]
) -> Mapping[str, Any]:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("https", "http"):
        problem = f"the RDAP bootstrap URL must be http(s), not {scheme or 'a bare path'}:"
        raise _Failure(problem)
    headers = {"Accept": "application/rdap+json", "User-Agent": _user_agent()}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked above)
    opener = urllib.request.build_opener(_Redirects(allowed_hosts))
    deadline = time.monotonic() + 3 * timeout
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            retry = _retry_after(exc.headers.get("Retry-After")) if exc.code == 429 else None
            raise _Failure(f"HTTP {exc.code} {exc.reason}".rstrip(), retry) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _Failure(_network_problem(exc, timeout)) from None
    with response:
        body = bytearray()
        while True:
            try:
                chunk = response.read(64 * 1024)
            except (OSError, http.client.HTTPException) as exc:
                raise _Failure(_network_problem(exc, timeout)) from None
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                problem = f"RDAP response larger than {max_bytes} bytes"
                raise _Failure(problem)
            if time.monotonic() > deadline:
                problem = f"RDAP response took longer than {3 * timeout:g} s"
                raise _Failure(problem)
    try:
        data = json.loads(body)
    except ValueError as exc:
        msg = f"RDAP response is not JSON: {exc}"
        raise _Failure(msg) from None
    if not isinstance(data, dict):
        msg = f"RDAP response is not a JSON object: {type(data).__name__}"
        raise _Failure(msg)
    return data


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 60.0
    except ValueError:
        seconds = 60.0
    return min(max(seconds, 1.0), 600.0)


def _network_problem(exc: BaseException, timeout: float) -> str:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    return f"network error: {reason or type(reason).__name__}"


def _user_agent() -> str:
    try:
        return f"egresswatch/{importlib_metadata.version('egresswatch')} (rdap)"
    except importlib_metadata.PackageNotFoundError:
        return "egresswatch (rdap)"


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    start: _IPAddress | None
    end: _IPAddress | None
    network: str | None
    name: str | None
    handle: str | None
    asn: int | None
    as_org: str | None
    country: str | None


def _parse(address: _IPAddress, data: Mapping[str, Any]) -> _Answer:
    """Parse an RDAP IP network object with ipwhois (no request: the response is given)."""
    try:
        parsed = RDAP(Net(str(address))).lookup(
            response=dict(data), bootstrap=True, root_ent_check=False, depth=0
        )
    except Exception as exc:  # ipwhois raises many types (its own, KeyError, ValueError)
        problem = f"RDAP response not understood: {type(exc).__name__}: {exc}"
        raise _Failure(problem) from None
    net: Mapping[str, Any] = parsed.get("network") or {}
    objects: Mapping[str, Any] = parsed.get("objects") or {}
    return _Answer(
        start=_address(net.get("start_address")),
        end=_address(net.get("end_address")),
        network=_text(net.get("cidr")),
        name=_text(net.get("name")),
        handle=_text(net.get("handle")),
        asn=_origin_asn(data),
        as_org=_registrant(objects, parsed.get("entities") or ()) or _text(net.get("name")),
        country=_country(net.get("country")),
    )


def _registrant(objects: Mapping[str, Any], order: Any) -> str | None:
    """The name on the first entity with the ``registrant`` role, in the response's order."""
    for handle in order:
        entity = objects.get(handle)
        if not isinstance(entity, dict) or "registrant" not in (entity.get("roles") or ()):
            continue
        contact = entity.get("contact")
        if isinstance(contact, dict) and _text(contact.get("name")):
            return _text(contact.get("name"))
    return None


def _origin_asn(data: Mapping[str, Any]) -> int | None:
    origins = data.get("arin_originas0_originautnums")
    if isinstance(origins, list):
        for value in origins:
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32:
                return value
    return None


def _country(value: object) -> str | None:
    text = _text(value)
    return text.upper() if text and len(text) == 2 and text.isalpha() else None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _address(value: object) -> _IPAddress | None:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address: _IPAddress = value
    elif isinstance(value, str):
        try:
            # Some registries have written start/endAddress with a "/128" or "/32" suffix.
            address = ipaddress.ip_address(value.strip().split("/", 1)[0])
        except ValueError:
            return None
    else:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _key(address: _IPAddress) -> bytes:
    """16 bytes, big-endian: SQLite compares BLOBs with memcmp, so order follows the address."""
    return int(address).to_bytes(16, "big")


# -- the cache database ----------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rdap_cache (
    version     INTEGER NOT NULL,   -- 4 or 6
    start       BLOB    NOT NULL,   -- first address of the network, 16 bytes big-endian
    end         BLOB    NOT NULL,   -- last address (start = end = the address for a failure)
    ok          INTEGER NOT NULL,   -- 1 an answer, 0 a failure (negative cache)
    network     TEXT,
    name        TEXT,
    handle      TEXT,
    asn         INTEGER,
    as_org      TEXT,
    country     TEXT,
    error       TEXT,
    fetched_at  REAL    NOT NULL,   -- Unix time
    expires_at  REAL    NOT NULL,
    PRIMARY KEY (version, start, end)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rdap_cache_expires ON rdap_cache (expires_at);
"""
_SCHEMA_VERSION = 1


def _open_cache(path: Path | None) -> sqlite3.Connection:
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            timeout=5.0,
            isolation_level=None,
            check_same_thread=False,  # guarded by RdapClient._lock
        )
    except (OSError, sqlite3.Error) as exc:
        msg = f"cannot open the RDAP cache: {exc}"
        raise RdapCacheError(msg, path=str(path)) from None
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version not in (0, _SCHEMA_VERSION):
            # A cache from another schema is only a cache: start again.
            db.execute("DROP TABLE IF EXISTS rdap_cache")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        if path is not None:
            db.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as exc:
        db.close()
        msg = f"not a usable RDAP cache: {exc}"
        raise RdapCacheError(msg, path=str(path)) from None
    return db
