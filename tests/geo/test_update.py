"""geo update: downloads into the geo folder, against a local HTTP server serving recorded files.

Every test here is offline: the server listens on 127.0.0.1, and ``_offline`` makes any other
connection attempt fail the test.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import gzip
import io
import json
import logging
import socket
import tarfile
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geo.errors import DownloadError, GeoError, GeoUpdateError
from geo.update import (
    LOCK_FILE,
    MAXMIND_R2_HOST,
    SOURCES,
    STATE_FILE,
    ProgressEvent,
    UpdateReport,
    UpdateSettings,
    _Redirects,
    _summarize,
    hosts,
    redact_url,
    source_names,
    update_geo_dir,
)

RECORDED = Path(__file__).resolve().parent / "recorded"
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
ACCOUNT = "123456"
LICENSE_KEY = "Mk7s_Xq2-licence-SECRET-9f3e"
IPINFO_TOKEN = "ipinfo-TOKEN-SECRET-4b1d0c"
SECRETS = (
    LICENSE_KEY,
    IPINFO_TOKEN,
    base64.b64encode(f"{ACCOUNT}:{LICENSE_KEY}".encode()).decode(),
)


# -- a local HTTP server ---------------------------------------------------------------------


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    """Sent as ETag; an If-None-Match equal to it gets 304."""
    delay: float = 0.0
    """Seconds to wait before answering (timeouts)."""
    redirect: str | None = None
    """Answer 302 to this path or URL."""
    auth: str | None = None
    """Required Authorization header value, else 401."""
    token: str | None = None
    """Required ``token`` query parameter, else 401."""
    short: int | None = None
    """Announce the whole body's length but send only this many bytes."""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class LocalServer:
    """``http.server`` in a thread on 127.0.0.1, port 0, answering from ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parts.path)
                server.seen.append(
                    Seen(path, urllib.parse.parse_qs(parts.query), dict(self.headers.items()))
                )
                route = server.routes.get(path)
                if route is None:
                    self._send(404, b"not found")
                    return
                if route.delay:
                    server.release.wait(route.delay)
                if route.auth is not None and self.headers.get("Authorization") != route.auth:
                    self._send(401, b"unauthorized")
                    return
                if route.token is not None and urllib.parse.parse_qs(parts.query).get("token") != [
                    route.token
                ]:
                    self._send(401, b"bad token")
                    return
                if route.redirect is not None:
                    self._send(302, b"", {"Location": route.redirect})
                    return
                if route.etag is not None and self.headers.get("If-None-Match") == route.etag:
                    self._send(304, b"", {"ETag": route.etag}, body_allowed=False)
                    return
                headers = dict(route.headers)
                if route.etag is not None:
                    headers["ETag"] = route.etag
                self._send(route.status, route.body, headers, short=route.short)

            def _send(
                self,
                status: int,
                body: bytes,
                headers: dict[str, str] | None = None,
                *,
                short: int | None = None,
                body_allowed: bool = True,
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if body_allowed:
                    self.send_header("Content-Length", str(len(body)))
                if short is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if body_allowed:
                    self.wfile.write(body if short is None else body[:short])
                if short is not None:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64  # concurrent clients in the thread tests

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left: nothing to report

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection that is not to the loopback server; ignore proxy settings."""
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to reach {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            raise AssertionError(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


# -- test data -------------------------------------------------------------------------------


def recorded(name: str) -> bytes:
    return (RECORDED / name).read_bytes()


def build_mmdb(
    database_type: str = "GeoLite2-City", build_epoch: int = 1_772_000_000, country: str = "AU"
) -> bytes:
    """A tiny real MaxMind DB (IPv6 tree, IPv4 mapped), with a chosen build epoch."""

    class Writer(MMDBWriter):  # type: ignore[misc]
        def _build_meta(self) -> dict[str, Any]:
            meta: dict[str, Any] = super()._build_meta()
            meta["build_epoch"] = build_epoch
            return meta

    writer = Writer(
        ip_version=6,
        database_type=database_type,
        languages=["en"],
        description="egresswatch test database",
        ipv4_compatible=True,
    )
    writer.insert_network(IPSet(["1.1.1.0/24"]), {"country": {"iso_code": country}})
    writer.insert_network(IPSet(["2606:4700::/32"]), {"country": {"iso_code": "US"}})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "test.mmdb"
        writer.to_db_file(str(path))
        return path.read_bytes()


def maxmind_tar_gz(mmdb: bytes, edition: str = "GeoLite2-City", date: str = "20260303") -> bytes:
    """The layout MaxMind ships: EDITION_DATE/{COPYRIGHT.txt,LICENSE.txt,EDITION.mmdb}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo(f"{edition}_{date}")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, data in (
            ("COPYRIGHT.txt", b"Database and Contents Copyright (c) 2026 MaxMind, Inc.\n"),
            ("LICENSE.txt", b"Use of this MaxMind product is governed by ...\n"),
            (f"{edition}.mmdb", mmdb),
        ):
            info = tarfile.TarInfo(f"{edition}_{date}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


MMDB_CITY = build_mmdb("GeoLite2-City")
MMDB_COUNTRY = build_mmdb("GeoLite2-Country")
MMDB_ASN = build_mmdb("GeoLite2-ASN")
MMDB_IPINFO = build_mmdb("ipinfo lite.mmdb")
MMDB_DBIP_CITY = build_mmdb("DBIP-City-Lite")
MMDB_DBIP_ASN = build_mmdb("DBIP-ASN-Lite")

PATHS = {
    "aws": "/aws/ip-ranges.json",
    "gcp": "/gcp/ipranges/cloud.json",
    "azure": "/azure/ServiceTags_Public_20260302.json",
    "oci": "/oci/public_ip_ranges.json",
    "cloudflare-v4": "/cloudflare/ips-v4",
    "cloudflare-v6": "/cloudflare/ips-v6",
    "maxmind-city": "/maxmind/GeoLite2-City/download",
    "maxmind-country": "/maxmind/GeoLite2-Country/download",
    "maxmind-asn": "/maxmind/GeoLite2-ASN/download",
    "ipinfo-lite": "/ipinfo/ipinfo_lite.mmdb",
    "dbip-city-lite": "/dbip/dbip-city-lite-2026-03.mmdb.gz",
    "dbip-asn-lite": "/dbip/dbip-asn-lite-2026-03.mmdb.gz",
}
URL_TEMPLATES = {
    **{k: v for k, v in PATHS.items() if not k.startswith(("maxmind", "dbip"))},
    "maxmind-city": "/maxmind/{edition}/download?suffix=tar.gz",
    "maxmind-country": "/maxmind/{edition}/download?suffix=tar.gz",
    "maxmind-asn": "/maxmind/{edition}/download?suffix=tar.gz",
    "dbip-city-lite": "/dbip/dbip-city-lite-{year}-{month}.mmdb.gz",
    "dbip-asn-lite": "/dbip/dbip-asn-lite-{year}-{month}.mmdb.gz",
}
BASIC = "Basic " + base64.b64encode(f"{ACCOUNT}:{LICENSE_KEY}".encode()).decode()


def serve_all(server: LocalServer, *, etags: bool = True) -> None:
    """Routes for every source, in each provider's format and packing."""
    bodies: dict[str, tuple[bytes, dict[str, Any]]] = {
        "aws": (recorded("aws-ip-ranges.json"), {}),
        "gcp": (recorded("gcp-cloud.json"), {}),
        "azure": (recorded("azure-service-tags.json"), {}),
        "oci": (recorded("oci-public-ip-ranges.json"), {}),
        "cloudflare-v4": (recorded("cloudflare-ips-v4.txt"), {}),
        "cloudflare-v6": (recorded("cloudflare-ips-v6.txt"), {}),
        "maxmind-city": (maxmind_tar_gz(MMDB_CITY, "GeoLite2-City"), {"auth": BASIC}),
        "maxmind-country": (maxmind_tar_gz(MMDB_COUNTRY, "GeoLite2-Country"), {"auth": BASIC}),
        "maxmind-asn": (maxmind_tar_gz(MMDB_ASN, "GeoLite2-ASN"), {"auth": BASIC}),
        "ipinfo-lite": (MMDB_IPINFO, {"token": IPINFO_TOKEN}),
        "dbip-city-lite": (gz(MMDB_DBIP_CITY), {}),
        "dbip-asn-lite": (gz(MMDB_DBIP_ASN), {}),
    }
    for name, (body, extra) in bodies.items():
        etag = f'"{name}-v1"' if etags else None
        server.routes[PATHS[name]] = Route(body, etag=etag, **extra)


def settings_for(server: LocalServer, *, keys: bool = True, **kw: Any) -> UpdateSettings:
    urls = {name: server.url(path) for name, path in URL_TEMPLATES.items()}
    if not keys:
        return UpdateSettings(urls=urls, **kw)
    return UpdateSettings(
        urls=urls,
        maxmind_account_id=ACCOUNT,
        maxmind_license_key=LICENSE_KEY,
        ipinfo_token=IPINFO_TOKEN,
        **kw,
    )


def run(server: LocalServer, folder: Path, **kw: Any) -> UpdateReport:
    kw.setdefault("settings", settings_for(server))
    kw.setdefault("env", {})
    kw.setdefault("now", NOW)
    return update_geo_dir(folder, **kw)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every visible file's bytes and inode (an unchanged inode means not replaced)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_ino)
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".")
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".geo-update-*"))


# -- fresh download --------------------------------------------------------------------------


def test_fresh_download_of_every_source(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    report = run(server, tmp_path)

    assert [r.source for r in report.results] == list(source_names())
    assert {r.status for r in report.results} == {"updated"}, [r.describe() for r in report.results]
    assert report.ok
    assert report.contacted == {"127.0.0.1"}

    for name in (
        "aws-ip-ranges.json",
        "gcp-cloud.json",
        "azure-service-tags.json",
        "oci-public-ip-ranges.json",
        "cloudflare-ips-v4.txt",
        "cloudflare-ips-v6.txt",
    ):
        assert (tmp_path / name).read_bytes() == recorded(name)
    assert (tmp_path / "GeoLite2-City.mmdb").read_bytes() == MMDB_CITY
    assert (tmp_path / "GeoLite2-ASN.mmdb").read_bytes() == MMDB_ASN
    assert (tmp_path / "ipinfo_lite.mmdb").read_bytes() == MMDB_IPINFO
    assert (tmp_path / "dbip-city-lite.mmdb").read_bytes() == MMDB_DBIP_CITY
    assert (tmp_path / "dbip-asn-lite.mmdb").read_bytes() == MMDB_DBIP_ASN
    with maxminddb.open_database(str(tmp_path / "GeoLite2-City.mmdb")) as reader:
        assert reader.get("1.1.1.1") == {"country": {"iso_code": "AU"}}
    assert oct((tmp_path / "aws-ip-ranges.json").stat().st_mode & 0o777) == "0o644"

    aws = report.result("aws")
    assert aws.old is None
    assert aws.new is not None
    assert (aws.new.sync_token, aws.new.created, aws.new.prefixes) == (
        "1772553791",
        "2026-03-03-16-03-11",
        9,
    )
    gcp = report.result("gcp").new
    assert gcp is not None
    assert (gcp.sync_token, gcp.created, gcp.prefixes) == (
        "1772541234567",
        "2026-03-03T12:33:54.567891",
        6,
    )
    azure = report.result("azure").new
    assert azure is not None
    assert (azure.change_number, azure.prefixes) == (319, 7)
    oci = report.result("oci").new
    assert oci is not None
    assert (oci.created, oci.prefixes) == ("2026-03-02T08:04:16.134371", 5)
    assert report.result("cloudflare-v4").new.prefixes == 15  # type: ignore[union-attr]
    assert report.result("cloudflare-v6").new.prefixes == 7  # type: ignore[union-attr]
    city = report.result("maxmind-city").new
    assert city is not None
    assert (city.database_type, city.build_epoch) == ("GeoLite2-City", 1_772_000_000)
    assert report.result("dbip-city-lite").new.database_type == "DBIP-City-Lite"  # type: ignore[union-attr]
    assert report.result("dbip-city-lite").url == server.url("/dbip/dbip-city-lite-2026-03.mmdb.gz")
    assert report.result("maxmind-city").changes()["build_epoch"] == (None, 1_772_000_000)

    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["files"]["aws-ip-ranges.json"]["etag"] == '"aws-v1"'
    assert leftovers(tmp_path) == []
    json.dumps(report.as_dict())  # JSON-ready


def test_credentials_go_where_each_provider_wants_them(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    run(server, tmp_path, sources=["maxmind-city", "ipinfo-lite", "aws"])
    (maxmind,) = server.hits(PATHS["maxmind-city"])
    assert maxmind.headers["Authorization"] == BASIC
    assert maxmind.query == {"suffix": ["tar.gz"]}
    (ipinfo,) = server.hits(PATHS["ipinfo-lite"])
    assert ipinfo.query == {"token": [IPINFO_TOKEN]}
    assert "Authorization" not in ipinfo.headers
    (aws,) = server.hits(PATHS["aws"])
    assert "Authorization" not in aws.headers
    assert aws.headers["User-Agent"].startswith("egresswatch")


# -- unchanged -------------------------------------------------------------------------------


def test_second_run_is_unchanged_through_etag(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    run(server, tmp_path)
    before = snapshot(tmp_path)
    server.seen.clear()

    report = run(server, tmp_path)

    assert {r.status for r in report.results} == {"unchanged"}
    assert {r.reason for r in report.results} == {"not modified (HTTP 304)"}
    assert snapshot(tmp_path) == before
    for name, path in PATHS.items():
        (hit,) = server.hits(path)
        assert hit.headers["If-None-Match"] == f'"{name}-v1"'
    assert report.result("aws").old is not None
    assert report.result("aws").new is None
    assert report.result("aws").changes() == {}


def test_same_bytes_without_validators_is_unchanged(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server, etags=False)
    run(server, tmp_path, sources=["aws", "maxmind-city", "dbip-city-lite"])
    before = snapshot(tmp_path)

    report = run(server, tmp_path, sources=["aws", "maxmind-city", "dbip-city-lite"])

    assert [(r.status, r.reason) for r in report.results] == [("unchanged", "same content")] * 3
    assert snapshot(tmp_path) == before  # same inodes: not even rewritten
    assert leftovers(tmp_path) == []


def test_last_modified_is_sent_back(server: LocalServer, tmp_path: Path) -> None:
    stamp = "Tue, 03 Mar 2026 16:03:11 GMT"
    server.routes[PATHS["aws"]] = Route(
        recorded("aws-ip-ranges.json"), headers={"Last-Modified": stamp}
    )
    run(server, tmp_path, sources=["aws"])
    run(server, tmp_path, sources=["aws"])
    first, second = server.hits(PATHS["aws"])
    assert "If-Modified-Since" not in first.headers
    assert second.headers["If-Modified-Since"] == stamp


def test_a_file_changed_on_disk_is_fetched_unconditionally(
    server: LocalServer, tmp_path: Path
) -> None:
    serve_all(server)
    run(server, tmp_path, sources=["aws"])
    (tmp_path / "aws-ip-ranges.json").write_text('{"edited": "by hand"}')

    report = run(server, tmp_path, sources=["aws"])

    assert report.result("aws").status == "updated"
    assert report.result("aws").old.problem is not None  # type: ignore[union-attr]
    assert "If-None-Match" not in server.hits(PATHS["aws"])[-1].headers
    assert (tmp_path / "aws-ip-ranges.json").read_bytes() == recorded("aws-ip-ranges.json")


# -- updated ---------------------------------------------------------------------------------


def test_changed_content_is_reported_with_old_and_new(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    run(server, tmp_path)

    aws = json.loads(recorded("aws-ip-ranges.json"))
    aws["syncToken"] = "1772640191"
    aws["createDate"] = "2026-03-04-16-03-11"
    aws["prefixes"].append(
        {
            "ip_prefix": "18.184.0.0/15",
            "region": "eu-central-1",
            "service": "EC2",
            "network_border_group": "eu-central-1",
        }
    )
    new_aws = json.dumps(aws, indent=2).encode()
    server.routes[PATHS["aws"]] = Route(new_aws, etag='"aws-v2"')
    city_v2 = build_mmdb("GeoLite2-City", build_epoch=1_772_600_000, country="NZ")
    server.routes[PATHS["maxmind-city"]] = Route(
        maxmind_tar_gz(city_v2, date="20260304"), etag='"city-v2"', auth=BASIC
    )

    report = run(server, tmp_path)

    assert sorted(r.source for r in report.updated) == ["aws", "maxmind-city"]
    changes = report.result("aws").changes()
    assert changes["sync_token"] == ("1772553791", "1772640191")
    assert changes["created"] == ("2026-03-03-16-03-11", "2026-03-04-16-03-11")
    assert changes["prefixes"] == (9, 10)
    assert changes["size"][0] == len(recorded("aws-ip-ranges.json"))
    assert "sync_token 1772553791 -> 1772640191" in report.result("aws").describe()
    assert report.result("maxmind-city").changes()["build_epoch"] == (1_772_000_000, 1_772_600_000)
    assert (tmp_path / "aws-ip-ranges.json").read_bytes() == new_aws
    assert (tmp_path / "GeoLite2-City.mmdb").read_bytes() == city_v2
    assert {r.status for r in report.results if r.source not in ("aws", "maxmind-city")} == {
        "unchanged"
    }


def test_a_file_keeps_its_mode_when_replaced(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server, etags=False)
    run(server, tmp_path, sources=["cloudflare-v4"])
    target = tmp_path / "cloudflare-ips-v4.txt"
    target.chmod(0o640)
    server.routes[PATHS["cloudflare-v4"]] = Route(recorded("cloudflare-ips-v4.txt") + b"\n")

    assert run(server, tmp_path, sources=["cloudflare-v4"]).result("cloudflare-v4").status == (
        "updated"
    )
    assert target.stat().st_mode & 0o777 == 0o640


def test_monthly_file_falls_back_to_last_month(server: LocalServer, tmp_path: Path) -> None:
    server.routes["/dbip/dbip-city-lite-2026-02.mmdb.gz"] = Route(gz(MMDB_DBIP_CITY))
    report = run(server, tmp_path, sources=["dbip-city-lite"])
    result = report.result("dbip-city-lite")
    assert result.status == "updated"
    assert result.url == server.url("/dbip/dbip-city-lite-2026-02.mmdb.gz")
    assert [h.path for h in server.seen] == [
        "/dbip/dbip-city-lite-2026-03.mmdb.gz",
        "/dbip/dbip-city-lite-2026-02.mmdb.gz",
    ]
    # January looks back to December of the year before.
    server.seen.clear()
    run(server, tmp_path, sources=["dbip-city-lite"], now=datetime(2026, 1, 2, tzinfo=UTC))
    assert [h.path for h in server.seen] == [
        "/dbip/dbip-city-lite-2026-01.mmdb.gz",
        "/dbip/dbip-city-lite-2025-12.mmdb.gz",
    ]


# -- failed: the old file stays ---------------------------------------------------------------


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


FAILURES: list[tuple[str, str, Callable[[], Route], str]] = [
    ("corrupt JSON", "aws", lambda: Route(b'{"syncToken": "1", "prefixes": ['), "not JSON"),
    (
        "JSON of another provider",
        "aws",
        lambda: Route(recorded("gcp-cloud.json")),
        "missing 'createDate', 'ipv6_prefixes'",
    ),
    (
        "a prefix that is not a network",
        "gcp",
        lambda: Route(recorded("gcp-cloud.json").replace(b"34.1.208.0/20", b"34.1.208.0/33")),
        "not an IP network: '34.1.208.0/33'",
    ),
    (
        "an HTML page instead of the list",
        "cloudflare-v4",
        lambda: Route(b"<html><body>Just a moment...</body></html>"),
        "line 1: not an IP network",
    ),
    (
        "IPv6 in the IPv4 list",
        "cloudflare-v4",
        lambda: Route(recorded("cloudflare-ips-v6.txt")),
        "IPv6 network in an IPv4 list",
    ),
    (
        "truncated gzip",
        "dbip-city-lite",
        lambda: Route(_truncated(gz(MMDB_DBIP_CITY))),
        "cannot unpack the gzip download",
    ),
    (
        "gzip of something that is not an mmdb",
        "dbip-city-lite",
        lambda: Route(gz(b"not a database" * 100)),
        "not a valid MaxMind DB file",
    ),
    (
        "truncated tar.gz",
        "maxmind-city",
        lambda: Route(_truncated(maxmind_tar_gz(MMDB_CITY)), auth=BASIC),
        "cannot unpack the tar.gz download",
    ),
    (
        "tar.gz without the edition's mmdb",
        "maxmind-city",
        lambda: Route(maxmind_tar_gz(MMDB_ASN, edition="GeoLite2-ASN"), auth=BASIC),
        "the archive has no GeoLite2-City.mmdb file",
    ),
    (
        "mmdb cut short",
        "ipinfo-lite",
        lambda: Route(MMDB_IPINFO[:-200], token=IPINFO_TOKEN),
        "not a valid MaxMind DB file",
    ),
    ("HTTP 500", "aws", lambda: Route(b"oops", status=500), "HTTP 500 Internal Server Error"),
    ("HTTP 404", "oci", lambda: Route(b"gone", status=404), "HTTP 404 Not Found"),
    (
        "connection closed mid-body",
        "aws",
        lambda: Route(recorded("aws-ip-ranges.json"), short=100),
        "truncated response: 100 of 1469 bytes",
    ),
    ("timeout", "gcp", lambda: Route(recorded("gcp-cloud.json"), delay=3.0), "no answer within"),
]


@pytest.mark.parametrize(
    ("source", "route", "expect"),
    [pytest.param(s, r, e, id=label) for label, s, r, e in FAILURES],
)
def test_failure_keeps_the_old_file(
    server: LocalServer, tmp_path: Path, source: str, route: Callable[[], Route], expect: str
) -> None:
    serve_all(server)
    run(server, tmp_path)
    before = snapshot(tmp_path)
    state_before = (tmp_path / STATE_FILE).read_bytes()
    server.routes[PATHS[source]] = route()

    report = run(server, tmp_path, sources=[source], settings=settings_for(server, timeout=0.5))

    result = report.result(source)
    assert result.status == "failed", result.describe()
    assert result.reason is not None
    assert expect in result.reason
    assert result.reason.endswith("old file kept")
    assert result.old is not None
    assert result.new is None
    assert not report.ok
    assert snapshot(tmp_path) == before  # byte-identical, same inode
    assert (tmp_path / STATE_FILE).read_bytes() == state_before
    assert leftovers(tmp_path) == []


def test_azure_file_with_a_byte_order_mark(server: LocalServer, tmp_path: Path) -> None:
    # Microsoft's Service Tags file has been served with a UTF-8 BOM.
    body = b"\xef\xbb\xbf" + recorded("azure-service-tags.json")
    server.routes[PATHS["azure"]] = Route(body)
    report = run(server, tmp_path, sources=["azure"])
    assert report.result("azure").status == "updated"
    assert (tmp_path / "azure-service-tags.json").read_bytes() == body


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(MMDB_CITY) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.integers(0, 64),
)
def test_corrupt_mmdb_fails_validation_without_crashing(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int
) -> None:
    # The C extension can abort the process on such files; validation must only ever raise
    # DownloadError (or accept a file whose damage it cannot see).
    data = bytearray(MMDB_CITY)
    for offset, value in edits:
        data[offset] = value
    path = tmp_path / "fuzzed.mmdb"
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        summary = _summarize(path, "mmdb")
    except DownloadError as exc:
        assert exc.problem.startswith("not a valid MaxMind DB file")
    else:
        assert summary.size == len(data) - cut


def test_failure_with_no_old_file_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    server.routes[PATHS["aws"]] = Route(b"[1, 2, 3]")
    report = run(server, tmp_path, sources=["aws"])
    assert report.result("aws").status == "failed"
    assert report.result("aws").reason == "expected a JSON object, got list; old file kept"
    assert snapshot(tmp_path) == {}
    assert leftovers(tmp_path) == []


def test_size_cap(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    small = dataclasses.replace(next(s for s in SOURCES if s.name == "aws"), max_bytes=1000)
    report = run(server, tmp_path, sources=[small])
    reason = report.result("aws").reason or ""
    assert "more than the cap of 1000" in reason
    assert not (tmp_path / "aws-ip-ranges.json").exists()

    # Without Content-Length (chunked), the cap is enforced while reading.
    folder = tmp_path / "chunked"
    body = recorded("aws-ip-ranges.json")
    with ChunkedServer(body) as url:
        settings = UpdateSettings(urls={"aws": url})
        report = update_geo_dir(folder, sources=[small], settings=settings, env={}, now=NOW)
    assert (
        report.result("aws").reason == "response larger than the cap of 1000 bytes; old file kept"
    )


def test_overall_deadline(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    settings = settings_for(server, max_seconds=0.0)
    report = run(server, tmp_path, sources=["aws"], settings=settings)
    assert (report.result("aws").reason or "").startswith("download took longer than 0 s")
    assert not (tmp_path / "aws-ip-ranges.json").exists()


def test_unpacked_size_cap(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    dbip = next(s for s in SOURCES if s.name == "dbip-city-lite")
    # The gzip is small; what it unpacks to is not.
    bomb = dataclasses.replace(dbip, max_bytes=len(gz(MMDB_DBIP_CITY)) + 10)
    report = run(server, tmp_path, sources=[bomb])
    assert "unpacked file larger than the cap" in (report.result("dbip-city-lite").reason or "")
    assert leftovers(tmp_path) == []


class ChunkedServer:
    """A server that answers with Transfer-Encoding: chunked (no Content-Length)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> str:
        body = self.body

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 256):
                    part = body[i : i + 256]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/ip-ranges.json"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        settings = UpdateSettings(urls={"aws": f"http://127.0.0.1:{port}/ip-ranges.json"})
        report = update_geo_dir(tmp_path, sources=["aws"], settings=settings, env={}, now=NOW)
    assert report.result("aws").status == "failed"
    assert "network error" in (report.result("aws").reason or "")


def test_only_http_urls(tmp_path: Path) -> None:
    (tmp_path / "local.json").write_bytes(recorded("aws-ip-ranges.json"))
    settings = UpdateSettings(urls={"aws": (tmp_path / "local.json").as_uri()})
    report = update_geo_dir(tmp_path / "geo", sources=["aws"], settings=settings, env={}, now=NOW)
    assert report.result("aws").status == "failed"
    assert "only http(s) URLs" in (report.result("aws").reason or "")


def test_https_to_http_redirect_is_refused() -> None:
    handler = _Redirects(set())
    request = urllib.request.Request("https://download.example/file")
    fp = io.BytesIO(b"")
    with pytest.raises(DownloadError, match="refused a redirect from https to http"):
        handler.redirect_request(
            request,
            fp,
            302,
            "Found",
            None,
            "http://elsewhere.example/file",  # type: ignore[arg-type]
        )
    assert fp.closed


# -- skipped, and keys -----------------------------------------------------------------------


def test_sources_without_a_key_are_skipped(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    settings = settings_for(server, keys=False)
    urls = {k: v for k, v in settings.urls.items() if k != "azure"}
    report = run(server, tmp_path, settings=UpdateSettings(urls=urls))

    skipped = {r.source: r.reason for r in report.by_status("skipped")}
    assert set(skipped) == {
        "azure",
        "maxmind-city",
        "maxmind-country",
        "maxmind-asn",
        "ipinfo-lite",
    }
    assert "EGRESSWATCH_MAXMIND_ACCOUNT_ID and EGRESSWATCH_MAXMIND_LICENSE_KEY" in str(
        skipped["maxmind-city"]
    )
    assert "EGRESSWATCH_IPINFO_TOKEN" in str(skipped["ipinfo-lite"])
    assert "EGRESSWATCH_AZURE_SERVICE_TAGS_URL" in str(skipped["azure"])
    assert report.ok  # skipping is not failing
    assert not any(s.path.startswith(("/maxmind", "/ipinfo", "/azure")) for s in server.seen)
    assert {r.source for r in report.updated} == {
        "aws",
        "gcp",
        "oci",
        "cloudflare-v4",
        "cloudflare-v6",
        "dbip-city-lite",
        "dbip-asn-lite",
    }

    # Half a MaxMind key is no key; the message names the missing half.
    half = run(
        server,
        tmp_path,
        sources=["maxmind-asn"],
        settings=UpdateSettings(urls=urls, maxmind_account_id=ACCOUNT),
    )
    reason = half.result("maxmind-asn").reason or ""
    assert "EGRESSWATCH_MAXMIND_LICENSE_KEY" in reason
    assert "EGRESSWATCH_MAXMIND_ACCOUNT_ID" not in reason


def test_keys_and_urls_from_the_environment(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    env = {
        "EGRESSWATCH_MAXMIND_ACCOUNT_ID": ACCOUNT,
        "EGRESSWATCH_MAXMIND_LICENSE_KEY": LICENSE_KEY,
        "EGRESSWATCH_IPINFO_TOKEN": IPINFO_TOKEN,
        "EGRESSWATCH_AZURE_SERVICE_TAGS_URL": server.url(PATHS["azure"]),
        "EGRESSWATCH_GEO_URL_MAXMIND_ASN": server.url(URL_TEMPLATES["maxmind-asn"]),
        "EGRESSWATCH_GEO_URL_IPINFO_LITE": server.url(PATHS["ipinfo-lite"]),
        "EGRESSWATCH_GEO_URL_AWS": server.url("/not-used"),
    }
    # An argument beats the environment (aws); the environment beats the default (the rest).
    settings = UpdateSettings(urls={"aws": server.url(PATHS["aws"])})
    report = update_geo_dir(
        tmp_path,
        sources=["aws", "azure", "maxmind-asn", "ipinfo-lite"],
        settings=settings,
        env=env,
        now=NOW,
    )
    assert {r.status for r in report.results} == {"updated"}, [r.describe() for r in report.results]
    assert not server.hits("/not-used")


def test_keys_never_appear_in_reports_logs_or_state(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    serve_all(server)
    texts: list[str] = []

    def collect(report: UpdateReport) -> None:
        texts.append(repr(report))
        texts.append(json.dumps(report.as_dict()))
        texts.extend(r.describe() for r in report.results)

    collect(run(server, tmp_path))  # success
    # The server refuses the key; the server fails; the server is gone mid-answer.
    server.routes[PATHS["maxmind-city"]] = Route(b"", auth="Basic other")
    server.routes[PATHS["maxmind-asn"]] = Route(b"boom", status=500, etag='"x"')
    server.routes[PATHS["ipinfo-lite"]] = Route(MMDB_IPINFO + b"x", short=10, token=IPINFO_TOKEN)
    collect(run(server, tmp_path))
    # A URL the opener cannot even parse, with the token appended to it.
    broken = UpdateSettings(
        urls={"ipinfo-lite": "http://127.0.0.1:notaport/x"}, ipinfo_token=IPINFO_TOKEN
    )
    collect(update_geo_dir(tmp_path, sources=["ipinfo-lite"], settings=broken, env={}, now=NOW))
    texts.append(repr(settings_for(server)))
    texts.append(caplog.text)
    texts.append((tmp_path / STATE_FILE).read_text())

    everything = "\n".join(texts)
    assert "HTTP 401 Unauthorized" in everything
    assert "token=***" in everything
    for secret in SECRETS:
        assert secret not in everything


def test_maxmind_key_is_not_forwarded_on_redirect(server: LocalServer, tmp_path: Path) -> None:
    # MaxMind answers with a redirect to a presigned R2 URL; the key must stay behind.
    server.routes[PATHS["maxmind-city"]] = Route(auth=BASIC, redirect="/r2/GeoLite2-City.tar.gz")
    server.routes["/r2/GeoLite2-City.tar.gz"] = Route(maxmind_tar_gz(MMDB_CITY))
    report = run(server, tmp_path, sources=["maxmind-city"])
    assert report.result("maxmind-city").status == "updated"
    (first,) = server.hits(PATHS["maxmind-city"])
    (second,) = server.hits("/r2/GeoLite2-City.tar.gz")
    assert first.headers["Authorization"] == BASIC
    assert "Authorization" not in second.headers


def test_redact_url() -> None:
    assert (
        redact_url("https://ipinfo.io/data/ipinfo_lite.mmdb?token=abc123")
        == "https://ipinfo.io/data/ipinfo_lite.mmdb?token=***"
    )
    assert (
        redact_url(
            "https://user:pw@download.maxmind.com/app?edition_id=X&license_key=k&suffix=tar.gz"
        )
        == "https://download.maxmind.com/app?edition_id=X&license_key=***&suffix=tar.gz"
    )
    assert redact_url("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080/x"


def test_settings_repr_hides_keys() -> None:
    text = repr(UpdateSettings(maxmind_license_key=LICENSE_KEY, ipinfo_token=IPINFO_TOKEN))
    assert LICENSE_KEY not in text
    assert IPINFO_TOKEN not in text


# -- progress, hosts, errors -----------------------------------------------------------------


def test_progress_callback(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    events: list[ProgressEvent] = []
    urls = {k: v for k, v in settings_for(server).urls.items() if k != "azure"}
    settings = dataclasses.replace(settings_for(server), urls=urls)
    report = run(
        server,
        tmp_path,
        sources=["aws", "maxmind-city", "azure"],
        progress=events.append,
        settings=settings,
    )

    by_source: dict[str, list[ProgressEvent]] = {}
    for event in events:
        by_source.setdefault(event.source, []).append(event)
    assert list(by_source) == ["aws", "maxmind-city", "azure"]
    aws = by_source["aws"]
    assert aws[0].phase == "start"
    assert aws[-1].phase == "done"
    assert aws[-1].result == report.result("aws")
    downloads = [e for e in aws if e.phase == "download"]
    assert downloads[-1].received == downloads[-1].total == len(recorded("aws-ip-ranges.json"))
    assert [e.phase for e in by_source["maxmind-city"]].count("unpack") == 1
    assert [e.phase for e in by_source["azure"]] == ["start", "done"]
    assert by_source["azure"][-1].result.status == "skipped"  # type: ignore[union-attr]
    assert {(e.index, e.count) for e in by_source["maxmind-city"]} == {(1, 3)}


def test_hosts() -> None:
    default = hosts(env={})
    assert default == {
        "ip-ranges.amazonaws.com",
        "www.gstatic.com",
        "docs.oracle.com",
        "www.cloudflare.com",
        "download.maxmind.com",
        MAXMIND_R2_HOST,
        "ipinfo.io",
        "download.db-ip.com",
    }
    azure_url = "https://download.microsoft.com/download/7/1/D/x/ServiceTags_Public_20260302.json"
    assert "download.microsoft.com" in hosts(env={"EGRESSWATCH_AZURE_SERVICE_TAGS_URL": azure_url})
    assert hosts(
        sources=["aws"], settings=UpdateSettings(urls={"aws": "http://127.0.0.1:1/x"}), env={}
    ) == {"127.0.0.1"}
    mirror = {"EGRESSWATCH_GEO_URL_GCP": "https://mirror.example/g"}
    assert hosts(sources=["aws", "gcp"], env=mirror) == {
        "ip-ranges.amazonaws.com",
        "mirror.example",
    }


def test_unknown_source_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(GeoUpdateError, match="unknown geo source 'azuer'") as info:
        update_geo_dir(tmp_path, sources=["aws", "azuer"], env={})
    assert isinstance(info.value, GeoError)
    assert info.value.source == "azuer"


def test_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(GeoUpdateError, match="cannot create the geo folder"):
        update_geo_dir(tmp_path / "file" / "geo", sources=["aws"], env={})


def test_one_update_at_a_time(tmp_path: Path) -> None:
    with (tmp_path / LOCK_FILE).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(GeoUpdateError, match="another `egresswatch geo update`"):
            update_geo_dir(tmp_path, sources=["aws"], env={})


def test_stale_temp_files_are_removed(server: LocalServer, tmp_path: Path) -> None:
    (tmp_path / ".geo-update-abc123.part").write_bytes(b"half a download")
    serve_all(server)
    run(server, tmp_path, sources=["aws"])
    assert leftovers(tmp_path) == []


def test_unreadable_state_file_means_download_again(server: LocalServer, tmp_path: Path) -> None:
    serve_all(server)
    run(server, tmp_path, sources=["aws"])
    (tmp_path / STATE_FILE).write_text("{not json")
    report = run(server, tmp_path, sources=["aws"])
    assert report.result("aws").status == "unchanged"
    assert report.result("aws").reason == "same content"
    assert "If-None-Match" not in server.hits(PATHS["aws"])[-1].headers
