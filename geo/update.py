"""Fill the geo data folder: download cloud IP-range files and IP databases, atomically.

``update_geo_dir(geo_dir)`` fetches every *source* (one file in the folder, under the name the
readers look for) and returns an ``UpdateReport`` with one ``SourceResult`` per source:
``updated`` (with the old and new file's summary), ``unchanged`` (HTTP 304, or the same bytes),
``skipped`` (no URL or no key: the reason says which setting to make) or ``failed`` (the reason;
the file that was there is left exactly as it was).

=================  ===============================  =========================================
source             file                             key
=================  ===============================  =========================================
aws                aws-ip-ranges.json               none
gcp                gcp-cloud.json                   none
azure              azure-service-tags.json          none, but the URL must be configured
oci                oci-public-ip-ranges.json        none
cloudflare-v4/v6   cloudflare-ips-v4.txt / -v6.txt  none
maxmind-city       GeoLite2-City.mmdb               MaxMind account id + license key
maxmind-country    GeoLite2-Country.mmdb            (HTTP basic auth, never on the command
maxmind-asn        GeoLite2-ASN.mmdb                line)
ipinfo-lite        ipinfo_lite.mmdb                 IPinfo token
dbip-city-lite     dbip-city-lite.mmdb              none (monthly file, CC BY 4.0: attribute)
dbip-asn-lite      dbip-asn-lite.mmdb               none (monthly file, CC BY 4.0: attribute)
=================  ===============================  =========================================

Where a source's URL comes from, first one set wins: ``UpdateSettings.urls[name]`` (an argument:
the CLI passes the config file's values here), then the environment variable
``EGRESSWATCH_GEO_URL_<NAME>`` (name upper-cased, ``-`` as ``_``, so
``EGRESSWATCH_GEO_URL_MAXMIND_CITY``), then the built-in default. Keys follow the same order:
``UpdateSettings`` fields, then ``EGRESSWATCH_MAXMIND_ACCOUNT_ID``,
``EGRESSWATCH_MAXMIND_LICENSE_KEY``, ``EGRESSWATCH_IPINFO_TOKEN``.

What one source goes through:

1. no URL, or a key it needs is not set: ``skipped``;
2. a GET, conditional (``If-None-Match`` / ``If-Modified-Since``) when the state file
   ``.geo-update.json`` in the folder remembers this URL and the file there is still the one it
   saved; ``304`` is ``unchanged``;
3. the body is streamed to a temporary file in the same folder, with a socket timeout, an overall
   deadline and a size cap; a ``Content-Length`` it does not meet is a failure;
4. gzip and tar.gz are unpacked (only the ``.mmdb`` member of a tar, never extracted to a path),
   with the size cap again;
5. the result is validated for its format (the JSON has the provider's top-level keys and every
   prefix parses; each text line is a network of the right IP version; an ``.mmdb`` opens with
   ``maxminddb``, has metadata and answers a look-up) and summarised;
6. the same SHA-256 as the file there: ``unchanged``; otherwise fsync, ``os.replace`` and fsync of
   the folder: ``updated``.

Any failure removes the temporary files and leaves the old file untouched. A lock file
(``.geo-update.lock``) keeps two updates of one folder apart.

Secrets: keys travel only in a header MaxMind's redirect does not carry on (an "unredirected"
header) or in IPinfo's ``token`` query parameter; every URL in a report, log line or the state file
has such parameters masked (``token=***``), and every reason is scrubbed of the key values.

``hosts()`` lists the host names a run contacts (for the policy's ``rule = "self"``);
``UpdateReport.contacted`` lists the ones an actual run did, redirects included.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol

import maxminddb

from geo.errors import DownloadError, GeoUpdateError

log = logging.getLogger(__name__)

Kind = Literal["aws", "gcp", "azure", "oci", "cidr-v4", "cidr-v6", "mmdb"]
Packing = Literal["none", "gzip", "tar.gz"]
Auth = Literal["none", "maxmind", "ipinfo"]
Status = Literal["updated", "unchanged", "skipped", "failed"]
Phase = Literal["start", "download", "unpack", "done"]

MiB = 1024 * 1024
STATE_FILE = ".geo-update.json"
"""Name of the state file (ETag, Last-Modified, SHA-256 per file) inside the geo folder."""
LOCK_FILE = ".geo-update.lock"
_TEMP_PREFIX = ".geo-update-"
_TEMP_SUFFIX = ".part"
_CHUNK = 64 * 1024

ENV_URL_PREFIX = "EGRESSWATCH_GEO_URL_"
ENV_MAXMIND_ACCOUNT_ID = "EGRESSWATCH_MAXMIND_ACCOUNT_ID"
ENV_MAXMIND_LICENSE_KEY = "EGRESSWATCH_MAXMIND_LICENSE_KEY"
ENV_IPINFO_TOKEN = "EGRESSWATCH_IPINFO_TOKEN"  # noqa: S105 (a variable name, not a token)
ENV_AZURE_SERVICE_TAGS_URL = "EGRESSWATCH_AZURE_SERVICE_TAGS_URL"

# MaxMind answers download.maxmind.com with a redirect to a presigned Cloudflare R2 URL on this
# host, which MaxMind documents for firewall rules (dev.maxmind.com/geoip/updating-databases).
MAXMIND_R2_HOST = (
    "mm-prod-geoip-databases.a2649acb697e2c09b632799562c076f2.r2.cloudflarestorage.com"
)
# Query parameters whose values are secrets (IPinfo's token; MaxMind's legacy license_key URLs).
_SECRET_PARAMS = frozenset({"token", "license_key", "key", "password", "secret", "access_token"})
# The keys each range-file format must have at the top level (REGISTER.md, section 6).
_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "aws": ("syncToken", "createDate", "prefixes", "ipv6_prefixes"),
    "gcp": ("syncToken", "creationTime", "prefixes"),
    "azure": ("changeNumber", "cloud", "values"),
    "oci": ("last_updated_timestamp", "regions"),
}


@dataclass(frozen=True, slots=True)
class Source:
    """One file of the geo folder and where it is downloaded from."""

    name: str
    """Short id used in ``sources=``, environment variable names and reports (``maxmind-city``)."""
    filename: str
    """The file's name in the geo folder, the one the readers look for."""
    url: str | None
    """Default download URL; ``{year}``, ``{month}`` (monthly files) and ``{edition}`` are filled
    in. None when there is no stable URL (Azure) and one must be configured."""
    kind: Kind
    """The file's format, which decides validation and the summary."""
    packing: Packing = "none"
    """How the download is packed: plain, gzip (``.mmdb.gz``) or tar.gz holding the ``.mmdb``."""
    auth: Auth = "none"
    """Which key the download needs: none, MaxMind account id + license key, IPinfo token."""
    monthly: bool = False
    """The URL names a month; this month's file is tried first, then last month's."""
    max_bytes: int = 64 * MiB
    """Cap on the download and, separately, on the unpacked file."""
    edition: str | None = None
    """MaxMind edition id (``GeoLite2-City``), filled into ``{edition}``."""
    extra_hosts: tuple[str, ...] = ()
    """Hosts the download is known to be redirected to (MaxMind's R2 storage)."""
    note: str | None = None
    """Why the source is skipped when it has no URL."""

    @property
    def env_url(self) -> str:
        """The environment variable that overrides this source's URL."""
        return ENV_URL_PREFIX + self.name.upper().replace("-", "_")


_AZURE_NOTE = (
    "no download URL: Microsoft publishes the Service Tags file under a new dated URL every week "
    f"and has no stable link; set {ENV_AZURE_SERVICE_TAGS_URL} (or {ENV_URL_PREFIX}AZURE) to the "
    "current ServiceTags_Public_YYYYMMDD.json URL from microsoft.com/download (id 56519)"
)
_MAXMIND_URL = "https://download.maxmind.com/geoip/databases/{edition}/download?suffix=tar.gz"
_DBIP_URL = "https://download.db-ip.com/free/{stem}-{year}-{month}.mmdb.gz"

SOURCES: tuple[Source, ...] = (
    Source("aws", "aws-ip-ranges.json", "https://ip-ranges.amazonaws.com/ip-ranges.json", "aws"),
    Source("gcp", "gcp-cloud.json", "https://www.gstatic.com/ipranges/cloud.json", "gcp"),
    # Why no default URL: Microsoft's Service Tags download lives at
    # download.microsoft.com/download/<guid path>/ServiceTags_Public_<YYYYMMDD>.json, the file
    # name changes with every weekly release, and the only stable address is an HTML "details"
    # page (microsoft.com/download/details.aspx?id=56519). Scraping that page would break with
    # any redesign; the Service Tag Discovery API needs an Azure subscription and credentials.
    # So the URL is configuration, and without it the source is skipped with this note.
    Source("azure", "azure-service-tags.json", None, "azure", note=_AZURE_NOTE),
    Source(
        "oci",
        "oci-public-ip-ranges.json",
        "https://docs.oracle.com/iaas/tools/public_ip_ranges.json",
        "oci",
    ),
    Source(
        "cloudflare-v4",
        "cloudflare-ips-v4.txt",
        "https://www.cloudflare.com/ips-v4",
        "cidr-v4",
        max_bytes=MiB,
    ),
    Source(
        "cloudflare-v6",
        "cloudflare-ips-v6.txt",
        "https://www.cloudflare.com/ips-v6",
        "cidr-v6",
        max_bytes=MiB,
    ),
    *(
        Source(
            f"maxmind-{suffix}",
            f"{edition}.mmdb",
            _MAXMIND_URL,
            "mmdb",
            packing="tar.gz",
            auth="maxmind",
            max_bytes=512 * MiB,
            edition=edition,
            extra_hosts=(MAXMIND_R2_HOST,),
        )
        for suffix, edition in (
            ("city", "GeoLite2-City"),
            ("country", "GeoLite2-Country"),
            ("asn", "GeoLite2-ASN"),
        )
    ),
    Source(
        "ipinfo-lite",
        "ipinfo_lite.mmdb",
        "https://ipinfo.io/data/ipinfo_lite.mmdb",
        "mmdb",
        auth="ipinfo",
        max_bytes=512 * MiB,
    ),
    *(
        Source(
            stem,
            f"{stem}.mmdb",
            _DBIP_URL.replace("{stem}", stem),
            "mmdb",
            packing="gzip",
            monthly=True,
            max_bytes=512 * MiB,
        )
        for stem in ("dbip-city-lite", "dbip-asn-lite")
    ),
)
"""Every source ``geo update`` knows, in the order it runs them."""


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    """What the caller (the CLI, from the config file) sets; unset fields fall back to the
    environment, then to the defaults. Keys are left out of ``repr``."""

    urls: Mapping[str, str] = field(default_factory=dict)
    """Source name -> URL, overriding ``EGRESSWATCH_GEO_URL_<NAME>`` and the default."""
    maxmind_account_id: str | None = None
    """MaxMind account id (else ``EGRESSWATCH_MAXMIND_ACCOUNT_ID``)."""
    maxmind_license_key: str | None = field(default=None, repr=False)
    """MaxMind license key (else ``EGRESSWATCH_MAXMIND_LICENSE_KEY``)."""
    ipinfo_token: str | None = field(default=None, repr=False)
    """IPinfo access token (else ``EGRESSWATCH_IPINFO_TOKEN``)."""
    azure_service_tags_url: str | None = None
    """This week's Service Tags JSON URL (else ``EGRESSWATCH_AZURE_SERVICE_TAGS_URL``)."""
    timeout: float = 30.0
    """Seconds to wait for a connection or for the next bytes of a response."""
    max_seconds: float = 900.0
    """Seconds one file's download may take in all."""


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What a file in the geo folder holds, as far as a report needs to say."""

    size: int
    """Bytes."""
    sha256: str
    """Hex SHA-256 of the file."""
    sync_token: str | None = None
    """AWS and GCP ``syncToken``: a publication serial (Unix time)."""
    created: str | None = None
    """AWS ``createDate``, GCP ``creationTime`` or OCI ``last_updated_timestamp``."""
    change_number: int | None = None
    """Azure Service Tags ``changeNumber``."""
    prefixes: int | None = None
    """IP prefixes in a range file (IPv4 and IPv6 together)."""
    build_epoch: int | None = None
    """An ``.mmdb``'s build time (Unix seconds) from its metadata."""
    database_type: str | None = None
    """An ``.mmdb``'s ``database_type`` (``GeoLite2-City``, ``DBIP-City-Lite``, ...)."""
    problem: str | None = None
    """Why the file does not validate (only for a file already in the folder), else None."""


_COMPARED = ("sync_token", "created", "change_number", "prefixes", "build_epoch", "database_type")


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What ``geo update`` did for one source."""

    source: str
    """The source's name (``aws``, ``maxmind-city``)."""
    filename: str
    """The file in the geo folder."""
    status: Status
    """``updated``, ``unchanged``, ``skipped`` or ``failed``."""
    reason: str | None = None
    """Why it was skipped or failed; for ``unchanged``, how that was known. Never holds a key."""
    url: str | None = None
    """The URL used, with secret query values masked; None when skipped before choosing one."""
    old: FileSummary | None = None
    """The file that was there before, or None."""
    new: FileSummary | None = None
    """The file there now when ``updated``; None otherwise."""

    def changes(self) -> dict[str, tuple[object, object]]:
        """Field -> (old, new) for the summary fields that differ (``updated`` only)."""
        if self.new is None:
            return {}
        out: dict[str, tuple[object, object]] = {}
        for name in (*_COMPARED, "size"):
            before = getattr(self.old, name) if self.old is not None else None
            after = getattr(self.new, name)
            if before != after:
                out[name] = (before, after)
        return out

    def describe(self) -> str:
        """One line a person can read: ``aws: updated (syncToken 1 -> 2; prefixes 3 -> 4)``."""
        head = f"{self.source}: {self.status}"
        if self.status == "updated":
            parts = [f"{k} {_show(o)} -> {_show(n)}" for k, (o, n) in self.changes().items()]
            return f"{head} ({'; '.join(parts)})" if parts else head
        return f"{head} ({self.reason})" if self.reason else head

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (for ``--format json``)."""
        return {
            "source": self.source,
            "file": self.filename,
            "status": self.status,
            "reason": self.reason,
            "url": self.url,
            "old": _summary_dict(self.old),
            "new": _summary_dict(self.new),
        }


@dataclass(frozen=True, slots=True)
class UpdateReport:
    """The outcome of one ``update_geo_dir`` run."""

    geo_dir: Path
    """The folder that was updated."""
    results: tuple[SourceResult, ...]
    """One result per source, in run order."""
    contacted: frozenset[str]
    """Host names this run connected to, redirects included."""

    def by_status(self, status: Status) -> tuple[SourceResult, ...]:
        """The results with ``status``."""
        return tuple(r for r in self.results if r.status == status)

    @property
    def updated(self) -> tuple[SourceResult, ...]:
        """Sources whose file was replaced."""
        return self.by_status("updated")

    @property
    def failed(self) -> tuple[SourceResult, ...]:
        """Sources that could not be updated (their old file is kept)."""
        return self.by_status("failed")

    @property
    def ok(self) -> bool:
        """No source failed (skipped ones do not count against it)."""
        return not self.failed

    def result(self, source: str) -> SourceResult:
        """The result for ``source``; KeyError when it was not run."""
        for r in self.results:
            if r.source == source:
                return r
        raise KeyError(source)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (for ``--format json``)."""
        return {
            "geo_dir": str(self.geo_dir),
            "results": [r.as_dict() for r in self.results],
            "contacted": sorted(self.contacted),
        }


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """What the progress callback is told; the CLI turns these into a progress display."""

    source: str
    """The source being worked on."""
    phase: Phase
    """``start``, ``download`` (bytes arriving), ``unpack`` or ``done``."""
    index: int
    """Position of the source in this run, from 0."""
    count: int
    """Number of sources in this run."""
    received: int = 0
    """Bytes downloaded so far (``download``)."""
    total: int | None = None
    """Expected bytes when the server said (``Content-Length``), else None."""
    result: SourceResult | None = None
    """The source's result (``done``)."""


Progress = Callable[[ProgressEvent], None]


# -- public entry points ---------------------------------------------------------------------


def update_geo_dir(
    geo_dir: str | os.PathLike[str],
    *,
    sources: Iterable[str | Source] | None = None,
    settings: UpdateSettings | None = None,
    env: Mapping[str, str] = os.environ,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> UpdateReport:
    """Download every source (or those named in ``sources``) into ``geo_dir``.

    Never raises for a source that cannot be downloaded (that is a ``failed`` result); raises
    ``GeoUpdateError`` for an unknown source name, a folder that cannot be created or written, or
    another update running on the same folder. ``now`` (default: the current UTC time) picks the
    month of monthly files.
    """
    settings = settings or UpdateSettings()
    chosen = _select(sources)
    when = now or datetime.now(UTC)
    folder = Path(geo_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the geo folder: {exc.strerror or exc}"
        raise GeoUpdateError(msg, path=str(folder)) from None
    contacted: set[str] = set()
    results: list[SourceResult] = []
    with _locked(folder):
        _remove_stale_temps(folder)
        state = _State.load(folder / STATE_FILE)
        for index, source in enumerate(chosen):
            job = _Job(
                source, folder, settings, env, when, state, contacted, progress, index, len(chosen)
            )
            result = job.run()
            results.append(result)
            log.info("%s", result.describe())
            job.emit("done", result=result)
    return UpdateReport(folder, tuple(results), frozenset(contacted))


def hosts(
    *,
    sources: Iterable[str | Source] | None = None,
    settings: UpdateSettings | None = None,
    env: Mapping[str, str] = os.environ,
) -> frozenset[str]:
    """Host names ``geo update`` may contact for these sources (all by default), known redirect
    targets included, for the policy's ``rule = "self"``.

    A source's host is listed whether or not its key is set (the daemon that asks need not see the
    updater's keys); a source without any URL (Azure unconfigured) adds nothing.
    """
    settings = settings or UpdateSettings()
    out: set[str] = set()
    for source in _select(sources):
        url = _url_for(source, settings, env)
        if url is None:
            continue
        host = urllib.parse.urlsplit(url).hostname
        if host:
            out.add(host.lower())
        out.update(source.extra_hosts)
    return frozenset(out)


def source_names() -> tuple[str, ...]:
    """The names ``sources=`` accepts, in run order."""
    return tuple(s.name for s in SOURCES)


def redact_url(url: str) -> str:
    """``url`` with user info dropped and secret query values (``token``, ...) shown as ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    masked = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(masked, safe="*"), "")
    )


# -- one source ------------------------------------------------------------------------------


class _Job:
    """Runs one source: choose URL, download, unpack, validate, replace."""

    def __init__(
        self,
        source: Source,
        folder: Path,
        settings: UpdateSettings,
        env: Mapping[str, str],
        now: datetime,
        state: _State,
        contacted: set[str],
        progress: Progress | None,
        index: int,
        count: int,
    ) -> None:
        self.source = source
        self.folder = folder
        self.target = folder / source.filename
        self.settings = settings
        self.env = env
        self.now = now
        self.state = state
        self.contacted = contacted
        self.progress = progress
        self.index = index
        self.count = count
        self.secrets: tuple[str, ...] = ()

    def emit(self, phase: Phase, **kw: Any) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(self.source.name, phase, self.index, self.count, **kw))

    def result(self, status: Status, reason: str | None = None, **kw: Any) -> SourceResult:
        if reason is not None:
            reason = _scrub(reason, self.secrets)
        return SourceResult(self.source.name, self.source.filename, status, reason, **kw)

    def run(self) -> SourceResult:
        self.emit("start")
        source = self.source
        url = _url_for(source, self.settings, self.env)
        if url is None:
            return self.result("skipped", source.note or "no download URL configured")
        auth_header, url, missing = self._credentials(url)
        if missing:
            return self.result("skipped", missing)
        candidates = _month_urls(url, self.now) if source.monthly else [url]
        old = _summarize_existing(self.target, source.kind)
        for n, candidate in enumerate(candidates):
            shown = redact_url(candidate)
            try:
                return self._fetch(candidate, shown, auth_header, old)
            except DownloadError as exc:
                problem = _scrub(exc.problem, self.secrets)
                # A monthly file that is not out yet: fall back to last month's.
                if exc.status == 404 and n + 1 < len(candidates):
                    log.debug("%s: %s not there yet (%s)", source.name, shown, problem)
                    continue
                return self.result("failed", f"{problem}; old file kept", url=shown, old=old)
            except OSError as exc:
                problem = f"cannot write in the geo folder: {exc.strerror or exc}"
                return self.result("failed", f"{problem}; old file kept", url=shown, old=old)
        msg = "unreachable: the last candidate always returns"
        raise AssertionError(msg)

    def _credentials(self, url: str) -> tuple[str | None, str, str | None]:
        """(Authorization header, URL with token, why skipped) for the source's key."""
        s, env = self.settings, self.env
        if self.source.auth == "maxmind":
            account = s.maxmind_account_id or env.get(ENV_MAXMIND_ACCOUNT_ID) or ""
            key = s.maxmind_license_key or env.get(ENV_MAXMIND_LICENSE_KEY) or ""
            missing = [
                n
                for n, v in ((ENV_MAXMIND_ACCOUNT_ID, account), (ENV_MAXMIND_LICENSE_KEY, key))
                if not v
            ]
            if missing:
                why = (
                    f"needs a MaxMind account id and license key (free GeoLite2 account); set "
                    f"{' and '.join(missing)} or the config file's MaxMind settings"
                )
                return None, url, why
            self.secrets = (key, f"{account}:{key}")
            token = base64.b64encode(f"{account}:{key}".encode()).decode("ascii")
            self.secrets += (token,)
            return f"Basic {token}", url, None
        if self.source.auth == "ipinfo":
            token = s.ipinfo_token or env.get(ENV_IPINFO_TOKEN) or ""
            if not token:
                why = (
                    f"needs an IPinfo access token (free Lite plan); set {ENV_IPINFO_TOKEN} or "
                    "the config file's IPinfo token"
                )
                return None, url, why
            self.secrets = (token, urllib.parse.quote(token, safe=""))
            return None, _add_query(url, token=token), None
        return None, url, None

    def _fetch(
        self, url: str, shown: str, auth_header: str | None, old: FileSummary | None
    ) -> SourceResult:
        source, entry = self.source, self.state.get(self.source.filename)
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        if (
            old is not None
            and old.problem is None
            and entry.get("url") == shown
            and entry.get("sha256") == old.sha256
        ):
            if entry.get("etag"):
                headers["If-None-Match"] = str(entry["etag"])
            if entry.get("last_modified"):
                headers["If-Modified-Since"] = str(entry["last_modified"])
        with _temp(self.folder) as raw:
            fetched = _download(
                url,
                raw,
                headers=headers,
                auth_header=auth_header,
                timeout=self.settings.timeout,
                max_seconds=self.settings.max_seconds,
                max_bytes=source.max_bytes,
                contacted=self.contacted,
                on_bytes=lambda got, total: self.emit("download", received=got, total=total),
                secrets=self.secrets,
            )
            if fetched.status == 304:
                self._remember(shown, fetched, old.sha256 if old else None, changed=False)
                return self.result("unchanged", "not modified (HTTP 304)", url=shown, old=old)
            raw.close()
            with _temp(self.folder) as final:
                if source.packing == "none":
                    final.close()
                    os.replace(raw.name, final.name)
                else:
                    self.emit("unpack")
                    _unpack(Path(raw.name), final, source)
                    final.close()
                new = _summarize(Path(final.name), source.kind)
                if old is not None and old.sha256 == new.sha256:
                    self._remember(shown, fetched, new.sha256, changed=False)
                    return self.result("unchanged", "same content", url=shown, old=old)
                _install(Path(final.name), self.target)
        self._remember(shown, fetched, new.sha256, changed=True)
        return self.result("updated", url=shown, old=old, new=new)

    def _remember(self, shown: str, fetched: _Fetched, sha: str | None, *, changed: bool) -> None:
        stamp = self.now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = dict(self.state.get(self.source.filename))
        entry.update(url=shown, sha256=sha, checked=stamp)
        if fetched.etag is not None or fetched.status != 304:
            entry["etag"] = fetched.etag
        if fetched.last_modified is not None or fetched.status != 304:
            entry["last_modified"] = fetched.last_modified
        if changed:
            entry["changed"] = stamp
        self.state.put(self.source.filename, entry)


def _select(sources: Iterable[str | Source] | None) -> tuple[Source, ...]:
    if sources is None:
        return SOURCES
    known = {s.name: s for s in SOURCES}
    out: list[Source] = []
    for item in sources:
        if isinstance(item, Source):
            out.append(item)
        elif item in known:
            out.append(known[item])
        else:
            msg = f"unknown geo source {item!r}; known: {', '.join(known)}"
            raise GeoUpdateError(msg, source=item)
    return tuple(out)


def _url_for(source: Source, settings: UpdateSettings, env: Mapping[str, str]) -> str | None:
    url = settings.urls.get(source.name) or env.get(source.env_url)
    if url is None and source.name == "azure":
        url = settings.azure_service_tags_url or env.get(ENV_AZURE_SERVICE_TAGS_URL)
    url = url or source.url
    if url is None:
        return None
    if source.edition is not None:
        url = url.replace("{edition}", source.edition)
    return url


def _month_urls(url: str, now: datetime) -> list[str]:
    """The URL for this month, then for last month (a monthly file appears some days in)."""
    this = now.astimezone(UTC)
    prev_year, prev_month = (this.year, this.month - 1) if this.month > 1 else (this.year - 1, 12)
    out = []
    for year, month in ((this.year, this.month), (prev_year, prev_month)):
        out.append(url.replace("{year}", f"{year:04d}").replace("{month}", f"{month:02d}"))
    return out if out[0] != out[1] else out[:1]


def _add_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k not in params
    ]
    query.extend(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _user_agent() -> str:
    try:
        return f"egresswatch/{importlib_metadata.version('egresswatch')} (geo update)"
    except importlib_metadata.PackageNotFoundError:
        return "egresswatch (geo update)"


# -- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fetched:
    status: int
    etag: str | None
    last_modified: str | None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never from https down to http, and notes every host it visits."""

    def __init__(self, contacted: set[str]) -> None:
        self.contacted = contacted

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
        if old.scheme == "https" and new.scheme != "https":
            fp.close()
            problem = f"refused a redirect from https to {new.scheme}://{new.hostname}"
            raise DownloadError(problem, status=code)
        if new.hostname:
            self.contacted.add(new.hostname.lower())
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(
    url: str,
    dest: IO[bytes],
    *,
    headers: Mapping[str, str],
    auth_header: str | None,
    timeout: float,
    max_seconds: float,
    max_bytes: int,
    contacted: set[str],
    on_bytes: Callable[[int, int | None], None],
    secrets: tuple[str, ...],
) -> _Fetched:
    """GET ``url`` into ``dest``; raises DownloadError with a reason that names no secret."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("https", "http"):
        msg = f"only http(s) URLs can be downloaded, not {scheme or 'a bare path'}:"
        raise DownloadError(msg)
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 (scheme checked)
    if auth_header is not None:
        # Unredirected: MaxMind redirects to a presigned R2 URL, which must not get the key.
        request.add_unredirected_header("Authorization", auth_header)
    host = urllib.parse.urlsplit(url).hostname
    if host:
        contacted.add(host.lower())
    opener = urllib.request.build_opener(_Redirects(contacted))
    deadline = time.monotonic() + max_seconds
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 304:
                return _Fetched(304, exc.headers.get("ETag"), exc.headers.get("Last-Modified"))
            raise DownloadError(_http_problem(exc.code, exc.reason), status=exc.code) from None
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(_network_problem(exc, timeout, secrets)) from None
    with response:
        length = _content_length(response.headers.get("Content-Length"))
        if length is not None and length > max_bytes:
            msg = f"{length} bytes announced, more than the cap of {max_bytes}"
            raise DownloadError(msg)
        got = 0
        on_bytes(0, length)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(_network_problem(exc, timeout, secrets)) from None
            if not chunk:
                break
            got += len(chunk)
            if got > max_bytes:
                msg = f"response larger than the cap of {max_bytes} bytes"
                raise DownloadError(msg)
            if time.monotonic() > deadline:
                msg = f"download took longer than {max_seconds:g} s ({got} bytes so far)"
                raise DownloadError(msg)
            dest.write(chunk)
            on_bytes(got, length)
        if length is not None and got != length:
            msg_0 = f"truncated response: {got} of {length} bytes"
            raise DownloadError(msg_0)
        dest.flush()
        return _Fetched(
            response.status, response.headers.get("ETag"), response.headers.get("Last-Modified")
        )


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _http_problem(code: int, reason: object) -> str:
    text = f"HTTP {code} {reason}".rstrip()
    if code in (401, 403):
        text += " (the server refused the key: check it, and that it may download this file)"
    return text


def _network_problem(exc: BaseException, timeout: float, secrets: tuple[str, ...]) -> str:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, http.client.IncompleteRead):
        return "connection closed before the response was complete"
    text = str(reason) or type(reason).__name__
    return _scrub(f"network error: {text}", secrets)


# -- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        msg = f"cannot write in the geo folder: {exc.strerror or exc}"
        raise GeoUpdateError(msg, path=str(folder)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = "another `egresswatch geo update` is writing this folder"
            raise GeoUpdateError(msg, path=str(folder)) from None
        yield
    finally:
        os.close(fd)


def _remove_stale_temps(folder: Path) -> None:
    """Temporary files an interrupted run left (the lock says no run is using them now)."""
    for path in folder.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _temp(folder: Path) -> Iterator[IO[bytes]]:
    """A temporary file in ``folder`` (so ``os.replace`` is atomic); removed unless moved away."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lifetime spans the with-block)
        dir=folder, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, delete=False
    )
    try:
        yield handle
    finally:
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)


def _install(temp: Path, target: Path) -> None:
    """fsync ``temp``, give it the old file's mode (else 0644), move it over ``target``."""
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    os.chmod(temp, mode)
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _unpack(raw: Path, dest: IO[bytes], source: Source) -> None:
    """gunzip ``raw``, or take the ``.mmdb`` out of the tar.gz, into ``dest`` (capped)."""
    cap = source.max_bytes
    try:
        if source.packing == "gzip":
            with gzip.open(raw, "rb") as stream:
                _copy_capped(stream, dest, cap)
            return
        with tarfile.open(raw, mode="r:gz") as tar:
            want = f"{source.edition}.mmdb" if source.edition else None
            for member in tar:
                name = PurePosixPath(member.name).name
                if member.isfile() and (name == want or (want is None and name.endswith(".mmdb"))):
                    if member.size > cap:
                        msg = f"{member.name!r} is {member.size} bytes, more than the cap of {cap}"
                        raise DownloadError(msg)
                    member_stream = tar.extractfile(member)
                    assert member_stream is not None  # a regular file always has a stream
                    with member_stream:
                        _copy_capped(member_stream, dest, cap)
                    return
            msg_0 = f"the archive has no {want or '*.mmdb'} file"
            raise DownloadError(msg_0)
    except (EOFError, OSError, zlib.error, tarfile.TarError) as exc:
        msg_0 = f"cannot unpack the {source.packing} download: {exc}"
        raise DownloadError(msg_0) from None


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _copy_capped(src: _Readable, dest: IO[bytes], cap: int) -> None:
    total = 0
    while chunk := src.read(_CHUNK):
        total += len(chunk)
        if total > cap:
            msg = f"unpacked file larger than the cap of {cap} bytes"
            raise DownloadError(msg)
        dest.write(chunk)
    dest.flush()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# -- validation and summaries ----------------------------------------------------------------


def _summarize_existing(path: Path, kind: Kind) -> FileSummary | None:
    """The file already in the folder, or None; a file that does not validate says why."""
    if not path.is_file():
        return None
    try:
        return _summarize(path, kind)
    except DownloadError as exc:
        return FileSummary(path.stat().st_size, _sha256(path), problem=exc.problem)


def _summarize(path: Path, kind: Kind) -> FileSummary:
    """Validate ``path`` as ``kind`` and summarise it; DownloadError when it is not valid."""
    base = FileSummary(path.stat().st_size, _sha256(path))
    if kind == "mmdb":
        return _summarize_mmdb(path, base)
    if kind in ("cidr-v4", "cidr-v6"):
        return replace(base, prefixes=_count_cidr_text(path, 4 if kind == "cidr-v4" else 6))
    return _summarize_ranges(path, kind, base)


def _summarize_ranges(path: Path, kind: Kind, base: FileSummary) -> FileSummary:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"not JSON: {exc}"
        raise DownloadError(msg) from None
    if not isinstance(data, dict):
        msg = f"expected a JSON object, got {type(data).__name__}"
        raise DownloadError(msg)
    missing = [k for k in _JSON_KEYS[kind] if k not in data]
    if missing:
        msg = f"not a {kind} range file: missing {', '.join(map(repr, missing))}"
        raise DownloadError(msg)
    if kind == "aws":
        count = _count(data, "prefixes", ("ip_prefix",)) + _count(
            data, "ipv6_prefixes", ("ipv6_prefix",)
        )
        return replace(
            base, sync_token=str(data["syncToken"]), created=str(data["createDate"]), prefixes=count
        )
    if kind == "gcp":
        count = _count(data, "prefixes", ("ipv4Prefix", "ipv6Prefix"))
        return replace(
            base,
            sync_token=str(data["syncToken"]),
            created=str(data["creationTime"]),
            prefixes=count,
        )
    if kind == "azure":
        change = data["changeNumber"]
        if not isinstance(change, int):
            msg = f"'changeNumber' is not a number: {change!r}"
            raise DownloadError(msg)
        return replace(base, change_number=change, prefixes=_count_azure(data["values"]))
    return replace(
        base, created=str(data["last_updated_timestamp"]), prefixes=_count_oci(data["regions"])
    )


def _networks(values: Iterable[object], where: str) -> int:
    """Parse each value as an IP network; the count, or DownloadError naming the bad one."""
    n = 0
    for value in values:
        if not isinstance(value, str):
            msg = f"{where}: expected a network string, got {value!r}"
            raise DownloadError(msg)
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            msg = f"{where}: not an IP network: {value!r}"
            raise DownloadError(msg) from None
        n += 1
    return n


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        msg = f"{where}: expected a list, got {type(value).__name__}"
        raise DownloadError(msg)
    return value


def _count(data: dict[str, Any], key: str, fields: tuple[str, ...]) -> int:
    values = []
    for i, entry in enumerate(_list(data[key], key)):
        if not isinstance(entry, dict):
            msg = f"{key}[{i}]: expected an object, got {entry!r}"
            raise DownloadError(msg)
        found = [entry[f] for f in fields if f in entry]
        if not found:
            msg = f"{key}[{i}]: no {' or '.join(fields)}"
            raise DownloadError(msg)
        values.extend(found)
    return _networks(values, key)


def _count_azure(values: object) -> int:
    total = 0
    for i, tag in enumerate(_list(values, "values")):
        props = tag.get("properties") if isinstance(tag, dict) else None
        if not isinstance(props, dict):
            msg = f"values[{i}]: no 'properties' object"
            raise DownloadError(msg)
        where = f"values[{i}].properties.addressPrefixes"
        total += _networks(_list(props.get("addressPrefixes", []), where), where)
    return total


def _count_oci(regions: object) -> int:
    total = 0
    for i, region in enumerate(_list(regions, "regions")):
        cidrs = region.get("cidrs") if isinstance(region, dict) else None
        where = f"regions[{i}].cidrs"
        entries = _list(cidrs, where)
        total += _networks((c.get("cidr") if isinstance(c, dict) else c for c in entries), where)
    return total


def _count_cidr_text(path: Path, version: int) -> int:
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        msg = "not a plain-text list of networks (non-ASCII bytes)"
        raise DownloadError(msg) from None
    n = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            net = ipaddress.ip_network(line, strict=False)
        except ValueError:
            msg = f"line {lineno}: not an IP network: {line[:80]!r}"
            raise DownloadError(msg) from None
        if net.version != version:
            msg = f"line {lineno}: IPv{net.version} network in an IPv{version} list"
            raise DownloadError(msg)
        n += 1
    if n == 0:
        msg = "no networks in the list"
        raise DownloadError(msg)
    return n


def _summarize_mmdb(path: Path, base: FileSummary) -> FileSummary:
    # The pure-Python reader (MODE_FILE), not the default C extension: this file is an unchecked
    # download, and the C extension has killed the process (SIGSEGV / SIGABRT) while iterating
    # fuzzed files in tests/geo/test_mmdb.py. The pure-Python reader raises instead.
    try:
        with maxminddb.open_database(str(path), maxminddb.MODE_FILE) as reader:
            meta = reader.metadata()
            # Walk the search tree once per address family, so a corrupt tree fails here and
            # not in the daemon.
            reader.get("1.1.1.1")
            if meta.ip_version == 6:
                reader.get("2606:4700::1111")
            build_epoch = int(meta.build_epoch)
            database_type = str(meta.database_type)
    except Exception as exc:  # a damaged file makes the decoder raise almost anything
        msg = f"not a valid MaxMind DB file: {type(exc).__name__}: {exc}"
        raise DownloadError(msg) from None
    return replace(base, build_epoch=build_epoch, database_type=database_type)


# -- state file ------------------------------------------------------------------------------


class _State:
    """``.geo-update.json``: per file, the URL (redacted), ETag, Last-Modified and SHA-256."""

    def __init__(self, path: Path, files: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.files = files

    @classmethod
    def load(cls, path: Path) -> _State:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"] if isinstance(data, dict) else None
            if not isinstance(files, dict):
                msg = "no 'files' object"
                raise TypeError(msg)
        except FileNotFoundError:
            return cls(path, {})
        except (ValueError, TypeError, KeyError, OSError) as exc:
            log.warning(
                "%s: ignoring unreadable state (%s); files will be downloaded again", path, exc
            )
            return cls(path, {})
        return cls(path, {k: v for k, v in files.items() if isinstance(v, dict)})

    def get(self, filename: str) -> Mapping[str, Any]:
        return self.files.get(filename, {})

    def put(self, filename: str, entry: dict[str, Any]) -> None:
        self.files[filename] = entry
        body = json.dumps({"version": 1, "files": self.files}, indent=2, sort_keys=True)
        try:
            with _temp(self.path.parent) as f:
                f.write(body.encode("utf-8") + b"\n")
                f.close()
                _install(Path(f.name), self.path)
        except OSError as exc:
            # Only an optimisation is lost: the next run downloads unconditionally.
            log.warning("%s: cannot save the update state: %s", self.path, exc)


def _show(value: object) -> str:
    return "none" if value is None else str(value)


def _summary_dict(summary: FileSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {name: getattr(summary, name) for name in summary.__slots__}
