"""IP intelligence: precedence between the sources, disagreements stated, anycast, never a raise."""

from __future__ import annotations

import ipaddress
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.ipintel import DataFile, IpFacts, IpIntel, Skipped
from geo.mmdb import MmdbReader
from geo.sample.build import LAYOUTS_DIR, SAMPLE_DIR, write_mmdb

NET = ipaddress.ip_network


@pytest.fixture(scope="module")
def sample() -> IpIntel:
    """The demo's geo folder: GeoLite2 City + ASN and one range file per cloud."""
    return IpIntel.from_dir(SAMPLE_DIR)


def _folder(tmp_path: Path, *names: str) -> Path:
    """A geo folder with the named sample files (from geo/sample or geo/sample/layouts)."""
    folder = tmp_path / "geo"
    folder.mkdir(exist_ok=True)
    for name in names:
        source = SAMPLE_DIR / name
        shutil.copy(source if source.exists() else LAYOUTS_DIR / name, folder / name)
    return folder


def _city(country: str, city: str | None = None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"country": {"iso_code": country}, **extra}
    if city:
        record["city"] = {"names": {"en": city}}
        record["location"] = {"latitude": 1.5, "longitude": 2.5}
    return record


# -- nothing there ------------------------------------------------------------------------------

ALL_NONE = {
    "country": None,
    "city": None,
    "latitude": None,
    "longitude": None,
    "asn": None,
    "as_org": None,
    "cloud": None,
    "region": None,
    "service": None,
    "anycast": False,
    "disagreements": (),
}


def _fields(facts: IpFacts) -> dict[str, object]:
    return {name: getattr(facts, name) for name in ALL_NONE}


@pytest.mark.parametrize("where", [None, "nowhere", "a-file"])
def test_no_folder_gives_empty_intel(tmp_path: Path, where: str | None) -> None:
    geo_dir: Path | None = None
    if where == "nowhere":
        geo_dir = tmp_path / "nowhere"
    elif where == "a-file":
        geo_dir = tmp_path / "a-file"
        geo_dir.write_text("x")
    intel = IpIntel.from_dir(geo_dir)
    assert intel.empty
    assert intel.files == ()
    facts = intel.lookup("3.124.0.20")
    assert _fields(facts) == ALL_NONE
    assert facts.sources == {}
    assert facts.found is False
    assert facts.ip == "3.124.0.20"
    if where == "nowhere":
        assert intel.skipped == (Skipped(str(geo_dir), "no such folder"),)
    elif where == "a-file":
        assert intel.skipped == (Skipped(str(geo_dir), "not a folder"),)


def test_empty_folder(tmp_path: Path) -> None:
    intel = IpIntel.from_dir(tmp_path)
    assert (intel.empty, intel.files, intel.skipped) == (True, (), ())
    assert _fields(intel.lookup("2001:db8::1")) == ALL_NONE


# -- the demo folder ----------------------------------------------------------------------------


def test_files_in_the_sample_folder(sample: IpIntel) -> None:
    assert sample.skipped == ()
    kinds = {f.name: (f.kind, f.layout) for f in sample.files}
    assert kinds == {
        "GeoLite2-ASN.mmdb": ("asn", "maxmind"),
        "GeoLite2-City.mmdb": ("city", "maxmind"),
        "aws-ip-ranges.json": ("ranges", "aws"),
        "gcp-cloud.json": ("ranges", "gcp"),
        "azure-service-tags.json": ("ranges", "azure"),
        "oci-public-ip-ranges.json": ("ranges", "oci"),
        "cloudflare-ips-v4.txt": ("ranges", "cloudflare"),
        "cloudflare-ips-v6.txt": ("ranges", "cloudflare"),
    }
    for f in sample.files:
        assert isinstance(f, DataFile)
        assert f.sha256 is not None
        assert len(f.sha256) == 64
    city = next(f for f in sample.files if f.name == "GeoLite2-City.mmdb")
    assert city.description == "GeoLite2-City"
    assert city.built is not None
    assert city.built.year == 2026
    aws = next(f for f in sample.files if f.name == "aws-ip-ranges.json")
    assert (aws.version, aws.description) == ("1767225600", "14 aws ranges")


def test_demo_bedrock_frankfurt(sample: IpIntel) -> None:
    facts = sample.lookup("3.124.0.20")
    assert _fields(facts) == ALL_NONE | {
        "country": "DE",
        "city": "Frankfurt am Main",
        "latitude": 50.11,
        "longitude": 8.68,
        "asn": 16509,
        "as_org": "AMAZON-02",
        "cloud": "aws",
        "region": "eu-central-1",
        "service": "EC2",
    }
    assert facts.sources == {
        "asn": "GeoLite2-ASN.mmdb",
        "as_org": "GeoLite2-ASN.mmdb",
        "cloud": "aws-ip-ranges.json",
        "region": "aws-ip-ranges.json",
        "service": "aws-ip-ranges.json",
        "country": "aws-ip-ranges.json (region eu-central-1)",
        "city": "GeoLite2-City.mmdb",
        "latitude": "GeoLite2-City.mmdb",
        "longitude": "GeoLite2-City.mmdb",
    }
    assert facts.found


@pytest.mark.parametrize("ip", ["162.159.140.245", "104.18.30.12", "2606:4700::6810:84e5"])
def test_demo_cloudflare_is_anycast_without_country(sample: IpIntel, ip: str) -> None:
    facts = sample.lookup(ip)
    assert facts.anycast is True
    assert (facts.country, facts.city, facts.latitude, facts.longitude) == (None,) * 4
    assert (facts.cloud, facts.asn, facts.as_org) == ("cloudflare", 13335, "Cloudflare, Inc.")
    v = "v6" if ":" in ip else "v4"
    assert facts.sources["anycast"] == f"cloudflare-ips-{v}.txt (Cloudflare ranges are anycast)"
    assert facts.sources["country"] == "withheld: anycast; GeoLite2-City.mmdb says US"
    assert facts.disagreements == ()


@pytest.mark.parametrize(
    ("ip", "country", "asn"),
    [
        ("160.79.104.10", "US", 399358),  # Anthropic
        ("142.250.74.106", "US", 15169),  # Google
        ("116.205.40.112", "HK", 136907),  # Huawei Cloud (a CN provider)
        ("140.82.113.22", "US", 36459),  # GitHub
        ("151.101.64.223", "US", 54113),  # Fastly: anycast, but no published range file here
        ("2607:6bc0::10", "US", 399358),
    ],
)
def test_demo_geoip_only(sample: IpIntel, ip: str, country: str, asn: int) -> None:
    facts = sample.lookup(ip)
    assert (facts.country, facts.asn, facts.cloud, facts.anycast) == (country, asn, None, False)
    assert facts.sources["country"] == "GeoLite2-City.mmdb"
    assert facts.disagreements == ()


def test_ipv6_cloud_region(sample: IpIntel) -> None:
    aws = sample.lookup("2a05:d014:1:2::3")
    assert (aws.country, aws.region, aws.service) == ("DE", "eu-central-1", "EC2")
    gcp = sample.lookup("2001:db8:3::1")
    assert (gcp.cloud, gcp.region, gcp.country, gcp.city) == (
        "gcp",
        "europe-west4",
        "NL",
        "Groningen",
    )


# -- precedence and disagreements ---------------------------------------------------------------


def test_cloud_region_outranks_geoip_and_the_disagreement_is_stated(sample: IpIntel) -> None:
    facts = sample.lookup("198.51.100.1")  # AWS eu-west-1 by the range file, US by GeoLite2
    assert (facts.country, facts.region) == ("IE", "eu-west-1")
    assert facts.disagreements == (
        "country: aws-ip-ranges.json says eu-west-1 (IE), GeoLite2-City.mmdb says US",
    )
    assert facts.sources["country"] == "aws-ip-ranges.json (region eu-west-1)"
    # The city must not stay in the other country: it comes from the region table.
    assert facts.city == "Ireland (Dublin)"
    assert facts.sources["city"] == "regions.csv (aws eu-west-1)"
    assert (facts.latitude, facts.longitude) == (53.35, -6.26)
    assert facts.service == "EC2"
    assert sample.lookup("198.51.100.200").service == "S3"  # longer prefix


def test_aws_local_zone_keeps_the_geoip_country(sample: IpIntel) -> None:
    facts = sample.lookup("198.18.0.5")  # us-east-1's Buenos Aires Local Zone
    assert (facts.region, facts.country, facts.city) == ("us-east-1", "AR", "Buenos Aires")
    assert facts.sources["region"] == "aws-ip-ranges.json (network border group us-east-1-bue-1)"
    assert facts.sources["country"] == "GeoLite2-City.mmdb"
    assert facts.disagreements == ()


@pytest.mark.parametrize(
    ("ip", "cloud", "rule"),
    [
        ("198.18.1.1", "gcp", "gcp-cloud.json (GCP scope global)"),
        ("198.18.2.1", "azure", "azure-service-tags.json (Azure tag AzureFrontDoor.Frontend)"),
        ("198.18.5.1", "aws", "aws-ip-ranges.json (AWS service CLOUDFRONT)"),
        ("198.18.6.1", "aws", "aws-ip-ranges.json (AWS service GLOBALACCELERATOR)"),
        ("198.18.7.1", "cloudflare", "cloudflare-ips-v4.txt (Cloudflare ranges are anycast)"),
        ("2001:db8:2::1", "cloudflare", "cloudflare-ips-v6.txt (Cloudflare ranges are anycast)"),
    ],
)
def test_anycast_rules(sample: IpIntel, ip: str, cloud: str, rule: str) -> None:
    facts = sample.lookup(ip)
    assert (facts.anycast, facts.cloud, facts.country, facts.city) == (True, cloud, None, None)
    assert facts.sources["anycast"] == rule
    assert facts.sources["country"].startswith("withheld: anycast; GeoLite2-City.mmdb says ")


def test_azure_region_inherited_and_oci_service(sample: IpIntel) -> None:
    aad = sample.lookup("198.18.3.130")
    assert (aad.region, aad.service, aad.country) == ("westeurope", "AzureAD", "NL")
    assert aad.sources["region"] == "azure-service-tags.json (region of 198.18.3.0/24)"
    oci = sample.lookup("198.18.4.200")
    assert (oci.cloud, oci.region, oci.service, oci.country) == (
        "oci",
        "eu-frankfurt-1",
        "OBJECT_STORAGE",
        "DE",
    )


def test_city_before_country_and_the_disagreement(tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    write_mmdb(
        folder / "a-city.mmdb", "GeoLite2-City", [(NET("192.0.2.0/24"), _city("NL", "Amsterdam"))]
    )
    write_mmdb(folder / "0-country.mmdb", "DBIP-Country-Lite", [(NET("192.0.2.0/24"), _city("DE"))])
    facts = IpIntel.from_dir(folder).lookup("192.0.2.1")
    assert (facts.country, facts.city) == ("NL", "Amsterdam")
    assert facts.sources["country"] == "a-city.mmdb"
    assert facts.disagreements == ("country: a-city.mmdb says NL, 0-country.mmdb says DE",)


def test_two_databases_of_one_kind_disagree(tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    net = NET("192.0.2.0/24")
    write_mmdb(folder / "dbip-city-lite.mmdb", "DBIP-City-Lite", [(net, _city("DE", "Berlin"))])
    write_mmdb(folder / "GeoLite2-City.mmdb", "GeoLite2-City", [(net, _city("NL", "Amsterdam"))])
    facts = IpIntel.from_dir(folder).lookup("192.0.2.1")
    # MaxMind before DB-IP for the same kind, whatever the file names sort as.
    assert (facts.country, facts.city) == ("NL", "Amsterdam")
    assert facts.disagreements == (
        "country: GeoLite2-City.mmdb says NL, dbip-city-lite.mmdb says DE",
    )


def test_city_comes_from_a_database_that_agrees_on_the_country(tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    net = NET("192.0.2.0/24")
    write_mmdb(folder / "GeoLite2-City.mmdb", "GeoLite2-City", [(net, _city("NL"))])
    write_mmdb(folder / "dbip-city-lite.mmdb", "DBIP-City-Lite", [(net, _city("DE", "Berlin"))])
    facts = IpIntel.from_dir(folder).lookup("192.0.2.1")
    assert (facts.country, facts.city, facts.latitude) == ("NL", None, None)
    assert "city" not in facts.sources
    assert len(facts.disagreements) == 1


def test_asn_precedence_and_disagreement(tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    net = NET("192.0.2.0/24")
    write_mmdb(
        folder / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        [(net, {"autonomous_system_number": 64496})],  # no organisation
    )
    write_mmdb(
        folder / "ipinfo_lite.mmdb",
        "ipinfo ipinfo_lite.mmdb",
        [(net, {"asn": "AS64497", "as_name": "Other Net", "country_code": "FR"})],
    )
    write_mmdb(
        folder / "dbip-asn-lite.mmdb",
        "DBIP-ASN-Lite (compat=GeoLite2-ASN)",
        [(net, {"autonomous_system_number": 64496, "autonomous_system_organization": "Ex"})],
    )
    facts = IpIntel.from_dir(folder).lookup("192.0.2.1")
    assert (facts.asn, facts.as_org, facts.country) == (64496, "Ex", "FR")
    # The organisation belongs to the number: DB-IP's, not IPinfo's.
    assert facts.sources == {
        "asn": "GeoLite2-ASN.mmdb",
        "as_org": "dbip-asn-lite.mmdb",
        "country": "ipinfo_lite.mmdb",
    }
    assert facts.disagreements == (
        "asn: GeoLite2-ASN.mmdb says 64496, dbip-asn-lite.mmdb says 64496, "
        "ipinfo_lite.mmdb says 64497",
    )


def test_geoip_anycast_trait(tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    record = _city("US", "Somewhere", traits={"is_anycast": True})
    write_mmdb(folder / "GeoIP2-City.mmdb", "GeoIP2-City", [(NET("192.0.2.0/24"), record)])
    facts = IpIntel.from_dir(folder).lookup("192.0.2.1")
    assert (facts.anycast, facts.country, facts.city) == (True, None, None)
    assert facts.sources == {
        "anycast": "GeoIP2-City.mmdb (is_anycast)",
        "country": "withheld: anycast; GeoIP2-City.mmdb says US",
    }


def test_every_layout_together_agrees(tmp_path: Path) -> None:
    names = [
        "GeoLite2-City.mmdb",
        "GeoLite2-ASN.mmdb",
        "GeoLite2-Country.mmdb",
        "dbip-city-lite.mmdb",
        "dbip-country-lite.mmdb",
        "dbip-asn-lite.mmdb",
        "ipinfo_lite.mmdb",
    ]
    intel = IpIntel.from_dir(_folder(tmp_path, *names))
    assert len(intel.readers) == 7
    for ip in ("3.124.0.20", "160.79.104.10", "2a00:1450::1", "198.18.8.1"):
        facts = intel.lookup(ip)
        assert facts.disagreements == ()
        assert facts.sources["country"] == "GeoLite2-City.mmdb"
    assert intel.lookup("198.18.8.1").asn is None  # no AS in any database for that row
    intel.close()


def test_unusable_files_are_listed_and_the_rest_still_used(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "GeoLite2-ASN.mmdb", "cloudflare-ips-v4.txt")
    (folder / "GeoLite2-City.mmdb").write_bytes(b"\x00" * 100)
    (folder / "aws-ip-ranges.json").write_text('{"error": "throttled"}')
    intel = IpIntel.from_dir(folder)
    assert [f.name for f in intel.files] == ["GeoLite2-ASN.mmdb", "cloudflare-ips-v4.txt"]
    reasons = {Path(s.path).name: s.reason for s in intel.skipped}
    assert set(reasons) == {"GeoLite2-City.mmdb", "aws-ip-ranges.json"}
    assert reasons["aws-ip-ranges.json"] == "no 'prefixes' list: not AWS ip-ranges.json"
    assert reasons["GeoLite2-City.mmdb"].startswith("not a readable MaxMind DB")
    facts = intel.lookup("162.159.140.245")
    assert (facts.asn, facts.anycast, facts.country) == (13335, True, None)


def test_safe_mode_gives_the_same_facts(sample: IpIntel) -> None:
    safe = IpIntel.from_dir(SAMPLE_DIR, safe=True)
    for ip in ("3.124.0.20", "198.51.100.1", "162.159.140.245", "2a05:d014::1", "10.0.0.1"):
        assert safe.lookup(ip) == sample.lookup(ip)
    safe.close()


def test_record_layout_note_in_files(tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    write_mmdb(
        folder / "acme.mmdb", "Acme-ASN", [(NET("192.0.2.0/24"), {"autonomous_system_number": 1})]
    )
    (f,) = IpIntel.from_dir(folder).files
    assert f.notes == ("database_type 'Acme-ASN' unknown; read by its record layout",)


def test_a_reader_that_fails_mid_lookup(tmp_path: Path) -> None:
    intel = IpIntel.from_dir(_folder(tmp_path, "GeoLite2-City.mmdb", "GeoLite2-ASN.mmdb"))

    class Broken:
        def get_with_prefix_len(self, ip: object) -> tuple[object, int]:
            raise ValueError("bad data")

        def close(self) -> None:
            pass

    city: MmdbReader = next(r for r in intel.readers if r.info.kind == "city")
    city._db = Broken()  # type: ignore[assignment]
    facts = intel.lookup("3.124.0.20")
    assert (facts.country, facts.asn) == (None, 16509)
    assert city.errors == 1


# -- input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("not-an-ip", "not an IP address: 'not-an-ip'"),
        ("", "not an IP address: ''"),
        ("1.2.3.4/24", "not an IP address: '1.2.3.4/24'"),
        ("1.2.3.256", "not an IP address: '1.2.3.256'"),
        (b"\x01\x02\x03", "not an IP address: 3 bytes (4 or 16 expected)"),
        (b"", "not an IP address: 0 bytes (4 or 16 expected)"),
        (1234, "not an IP address: a int (text or 4/16 bytes expected)"),
        (None, "not an IP address: a NoneType (text or 4/16 bytes expected)"),
    ],
)
def test_invalid_input_gives_empty_facts_that_say_why(
    sample: IpIntel, ip: object, why: str
) -> None:
    facts = sample.lookup(ip)  # type: ignore[arg-type]
    assert _fields(facts) == ALL_NONE
    assert facts.sources == {"ip": why}
    assert facts.found is False


def test_raw_bytes_mapped_and_scoped_addresses(sample: IpIntel) -> None:
    text = sample.lookup("3.124.0.20")
    for same in (
        b"\x03\x7c\x00\x14",
        bytearray(b"\x03\x7c\x00\x14"),
        ipaddress.ip_address("::ffff:3.124.0.20").packed,
        "::ffff:3.124.0.20",
    ):
        facts = sample.lookup(same)  # type: ignore[arg-type]
        assert _fields(facts) == _fields(text)
        assert facts.sources == text.sources
    assert sample.lookup(b"\x03\x7c\x00\x14").ip == "3.124.0.20"
    v6 = sample.lookup(ipaddress.ip_address("2a05:d014::1").packed)
    assert (v6.ip, v6.region) == ("2a05:d014::1", "eu-central-1")
    scoped = sample.lookup("2a05:d014::1%eth0")
    assert (scoped.ip, scoped.region) == ("2a05:d014::1%eth0", "eu-central-1")
    private = sample.lookup("10.0.0.1")
    assert (private.found, private.sources) == (False, {})


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=16, max_size=16),
        st.ip_addresses().map(str),
        st.ip_addresses().map(lambda a: a.packed),
    )
)
def test_arbitrary_input_never_raises(sample: IpIntel, ip: str | bytes) -> None:
    facts = sample.lookup(ip)
    assert isinstance(facts, IpFacts)
    assert isinstance(facts.ip, str)
    assert len(facts.ip) <= 64 or ":" in facts.ip or "." in facts.ip
    assert facts.country is None or len(facts.country) == 2
    assert not (facts.anycast and facts.country)
    for name in facts.sources:
        assert name in {*ALL_NONE, "ip"}


# -- cache --------------------------------------------------------------------------------------


def test_cache_is_bounded_and_warm_lookups_are_cheap(tmp_path: Path) -> None:
    intel = IpIntel.from_dir(SAMPLE_DIR, cache_size=64)
    first = intel.lookup("3.124.0.20")
    assert intel.lookup("3.124.0.20") is first
    info = intel.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, 64)
    for i in range(200):
        intel.lookup(f"3.124.1.{i}")
    assert intel.cache_info().currsize == 64
    intel.cache_clear()
    assert intel.cache_info().currsize == 0

    destinations = [f"3.124.2.{i}" for i in range(50)] + ["162.159.140.245", "2a05:d014::9"]
    observations = destinations * 2000  # 104k observations of 52 destinations
    started = time.perf_counter()
    for ip in observations:
        intel.lookup(ip)
    elapsed = time.perf_counter() - started
    assert intel.cache_info().misses == len(destinations)
    assert elapsed < 5  # measured ~0.05 s (about 2 million warm lookups a second)
    intel.close()
