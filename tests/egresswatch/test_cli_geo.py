"""`egresswatch providers`, `geo lookup`, `geo update` and enriched `replay`, as a user runs them.

`geo update` is pointed at a local HTTP server that serves the sample range files; nothing
leaves loopback.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "geo" / "sample"
DEMO = REPO / "demo" / "egresswatch-demo.pcapng"


def ew(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def lookup(target: str) -> dict[str, object]:
    result = ew("geo", "lookup", target, "--format", "json", "--geo-dir", SAMPLE)
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def test_lookup_region_bearing_name() -> None:
    d = lookup("bedrock-runtime.eu-central-1.amazonaws.com")
    assert (d["provider"], d["role"], d["region"], d["inference"]) == (
        "aws", "inference", "eu-central-1", ["DE"],
    )  # fmt: skip
    assert "provider" in d["sources"]  # type: ignore[operator]


def test_lookup_ip_in_a_cloud_region() -> None:
    d = lookup("3.124.0.20")
    assert (d["endpoint_country"], d["asn"], d["region"], d["anycast"]) == (
        "DE", 16509, "eu-central-1", False,
    )  # fmt: skip
    assert d["provider"] is None  # an IP alone does not make an AI endpoint


def test_lookup_anycast_ip_has_no_country() -> None:
    d = lookup("162.159.140.245")
    assert d["anycast"] is True
    assert d["endpoint_country"] is None
    assert d["asn"] == 13335


def test_lookup_ordinary_host() -> None:
    d = lookup("pypi.org")
    assert d["provider"] is None and d["looks_like_ai"] is False


def test_lookup_without_geo_data_gives_nulls(tmp_path: Path) -> None:
    result = ew("geo", "lookup", "3.124.0.20", "--format", "json", "--geo-dir", tmp_path)
    assert result.returncode == 0
    d = json.loads(result.stdout)
    assert (d["endpoint_country"], d["asn"], d["anycast"]) == (None, None, False)


def test_lookup_table() -> None:
    result = ew("geo", "lookup", "api.deepseek.com", "--geo-dir", SAMPLE)
    assert result.returncode == 0
    assert "deepseek" in result.stdout and "CN" in result.stdout


def test_providers_json_has_the_register() -> None:
    result = ew("providers", "--format", "json")
    assert result.returncode == 0
    providers = json.loads(result.stdout)
    ids = {p["id"] for p in providers}
    assert len(ids) >= 50
    assert {"openai", "anthropic", "deepseek", "github", "cursor"} <= ids
    for p in providers:
        for e in p["endpoints"]:
            assert e["source"].startswith("http") and e["as_of"]


def test_providers_by_role() -> None:
    result = ew("providers", "--format", "json", "--role", "doh")
    roles = {e["role"] for p in json.loads(result.stdout) for e in p["endpoints"]}
    assert roles == {"doh"}
    bad = ew("providers", "--role", "nonsense")
    assert bad.returncode == 2 and "nonsense" in bad.stderr


def test_replay_adds_enrichment_fields() -> None:
    result = ew("replay", "--geo-dir", SAMPLE, DEMO)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    tls = {r["sni"]: r for r in rows if r["kind"] == "tls"}
    bedrock = tls["bedrock-runtime.eu-central-1.amazonaws.com"]
    assert (bedrock["provider"], bedrock["region"], bedrock["endpoint_country"]) == (
        "aws", "eu-central-1", "DE",
    )  # fmt: skip
    assert tls["api.openai.com"]["anycast"] is True
    assert tls["pypi.org"]["provider"] is None
    # Contract fields first, enrichment after.
    assert list(rows[0])[:3] == ["ts", "kind", "transport"]
    assert "endpoint_country" in rows[0]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    for name in ("aws-ip-ranges.json", "gcp-cloud.json", "cloudflare-ips-v4.txt"):
        shutil.copy(SAMPLE / name, root / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _env(base: str) -> dict[str, str]:
    return {
        "EGRESSWATCH_GEO_URL_AWS": f"{base}/aws-ip-ranges.json",
        "EGRESSWATCH_GEO_URL_GCP": f"{base}/gcp-cloud.json",
        "EGRESSWATCH_GEO_URL_CLOUDFLARE_V4": f"{base}/cloudflare-ips-v4.txt",
    }


def test_geo_update_downloads_then_reports_unchanged(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, _root = served
    geo = tmp_path / "geo"
    args = ["geo", "update", "--geo-dir", geo, "--source", "aws", "--source", "gcp",
            "--source", "cloudflare-v4", "--format", "json"]  # fmt: skip
    first = ew(*args, env=_env(base))
    assert first.returncode == 0, first.stderr
    statuses = {r["source"]: r["status"] for r in json.loads(first.stdout)["results"]}
    assert statuses == {"aws": "updated", "gcp": "updated", "cloudflare-v4": "updated"}
    assert (geo / "aws-ip-ranges.json").read_bytes() == (SAMPLE / "aws-ip-ranges.json").read_bytes()
    second = ew(*args, env=_env(base))
    statuses = {r["source"]: r["status"] for r in json.loads(second.stdout)["results"]}
    assert set(statuses.values()) == {"unchanged"}
    # The downloaded files are used at once.
    d = json.loads(ew("geo", "lookup", "3.124.0.20", "--format", "json", "--geo-dir", geo).stdout)
    assert d["region"] == "eu-central-1"


def test_geo_update_failure_keeps_the_old_file_and_exits_3(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = served
    geo = tmp_path / "geo"
    args = ["geo", "update", "--geo-dir", geo, "--source", "aws"]
    assert ew(*args, env=_env(base)).returncode == 0
    before = (geo / "aws-ip-ranges.json").read_bytes()
    served_file = root / "aws-ip-ranges.json"
    served_file.write_text('{"syncToken": "1", "prefixes": [')  # corrupt
    # The test server's Last-Modified has one-second resolution: make the change visible.
    later = served_file.stat().st_mtime + 10
    os.utime(served_file, (later, later))
    result = ew(*args, env=_env(base))
    assert result.returncode == 3
    assert "aws" in result.stdout
    assert (geo / "aws-ip-ranges.json").read_bytes() == before


def test_lookup_asks_rdap_only_when_told(tmp_path: Path) -> None:
    from tests.geo.test_rdap import ARIN, RDAP_JSON
    from tests.geo.test_update import LocalServer, Route

    with LocalServer() as srv:
        srv.routes["/bootstrap/ip/8.8.8.8"] = Route(redirect="/arin/registry/ip/8.8.8.8")
        srv.routes["/arin/registry/ip/8.8.8.8"] = Route(ARIN, headers=RDAP_JSON)
        env = {"EGRESSWATCH_RDAP_URL": srv.url("/bootstrap")}
        args = ["geo", "lookup", "8.8.8.8", "--format", "json", "--geo-dir", tmp_path]
        plain = json.loads(ew(*args, env=env).stdout)
        assert plain["asn"] is None and not srv.seen  # off unless enabled
        asked = json.loads(ew(*args, "--rdap", env=env).stdout)
        assert asked["as_org"] and asked["sources"]["as_org"].startswith("rdap (network)")
        again = json.loads(ew(*args, "--rdap", env=env).stdout)
        assert again["sources"]["as_org"].startswith("rdap (cache)")
        assert (tmp_path / "rdap-cache.sqlite").exists()
