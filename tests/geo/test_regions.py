"""Cloud region tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from geo.countries import ISO_ALPHA2
from geo.errors import GeoError, RegionTableError
from geo.regions import REGION_SYNTAX, RegionTable, load_regions, parse_regions, region_syntax


@pytest.fixture(scope="module")
def table() -> RegionTable:
    return load_regions()


def test_clouds_and_sizes(table: RegionTable) -> None:
    by_cloud: dict[str, int] = {}
    for region in table:
        by_cloud[region.cloud] = by_cloud.get(region.cloud, 0) + 1
    assert by_cloud["aws"] >= 38
    assert by_cloud["gcp"] >= 46
    assert by_cloud["azure"] >= 57
    assert by_cloud["oci"] >= 40
    assert {"alibaba", "ibm", "tencent"} <= set(by_cloud)
    assert table.clouds() <= set(REGION_SYNTAX)


@pytest.mark.parametrize(
    ("cloud", "code", "country", "city"),
    [
        ("aws", "eu-central-1", "DE", "Frankfurt"),
        ("aws", "us-gov-west-1", "US", "Oregon"),
        ("aws", "cn-northwest-1", "CN", "Ningxia"),
        ("gcp", "europe-west4", "NL", "Eemshaven"),
        ("gcp", "me-central2", "SA", "Dammam"),
        ("azure", "swedencentral", "SE", "Gavle"),
        ("azure", "switzerlandnorth", "CH", "Zurich"),
        ("oci", "eu-frankfurt-1", "DE", "Frankfurt"),
        ("oci", "eu-frankfurt-2", "DE", "Frankfurt"),
        ("oci", "uk-cardiff-1", "GB", "Newport"),
        ("alibaba", "cn-hongkong", "HK", "Hong Kong"),
        ("ibm", "eu-de", "DE", "Frankfurt"),
        ("tencent", "ap-guangzhou", "CN", "Guangzhou"),
    ],
)
def test_lookup(table: RegionTable, cloud: str, code: str, country: str, city: str) -> None:
    region = table.lookup(cloud, code)
    assert region is not None
    assert region.country == country
    assert region.city == city
    assert region.locations == (country,)
    assert region.lat is not None
    assert region.lon is not None


def test_lookup_is_case_insensitive_and_misses_cleanly(table: RegionTable) -> None:
    assert table.lookup("aws", "EU-CENTRAL-1") == table.lookup("aws", "eu-central-1")
    assert table.lookup("aws", "mars-north-1") is None
    assert table.lookup("nocloud", "eu-central-1") is None


def test_vertex_pseudo_locations(table: RegionTable) -> None:
    us, eu, glob = (table.lookup("gcp", code) for code in ("us", "eu", "global"))
    assert us is not None
    assert us.scope == "multi-region"
    assert us.locations == ("US",)
    assert eu is not None
    assert eu.locations == ("EU",)
    assert glob is not None
    assert glob.scope == "global"
    assert glob.country is None
    assert glob.locations == ("global",)


def test_every_row_is_consistent(table: RegionTable) -> None:
    for region in table:
        assert region_syntax(region.cloud).fullmatch(region.code), region
        assert region.source.startswith("https://")
        if region.scope == "region":
            assert region.country in ISO_ALPHA2
            assert region.lat is not None
            assert region.lon is not None
            assert -90 <= region.lat <= 90
            assert -180 <= region.lon <= 180
            assert round(region.lat, 2) == region.lat
            assert round(region.lon, 2) == region.lon


def test_coordinates_are_plausible_for_a_few_cities(table: RegionTable) -> None:
    frankfurt = table.lookup("aws", "eu-central-1")
    assert frankfurt is not None
    assert (frankfurt.lat, frankfurt.lon) == (50.11, 8.68)
    sydney = table.lookup("azure", "australiaeast")
    assert sydney is not None
    assert sydney.lat is not None
    assert sydney.lat < 0


HEADER = "cloud,code,name,city,country,lat,lon,scope,source\n"
ROW = "aws,eu-central-1,Europe (Frankfurt),Frankfurt,DE,50.11,8.68,region,https://x.example/\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty region table"),
        ("cloud,code\n", "header must be"),
        (HEADER + ROW.replace("aws,", "digitalocean,", 1), "unknown cloud 'digitalocean'"),
        (HEADER + ROW.replace("eu-central-1", "frankfurt"), "does not have the shape"),
        (HEADER + ROW.replace(",DE,", ",XX,"), "country 'XX'"),
        (HEADER + ROW.replace("50.11", "50.1234"), "lat '50.1234'"),
        (HEADER + ROW.replace("8.68", "181"), "lon '181'"),
        (HEADER + ROW.replace("https://x.example/", "ftp://x"), "https URL"),
        (HEADER + ROW + ROW, "duplicate region aws/eu-central-1"),
        (HEADER + "aws,eu-central-1,x\n", "expected 9 columns"),
    ],
)
def test_bad_tables_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(RegionTableError) as info:
        parse_regions(text, "regions.csv")
    assert fragment in str(info.value)
    assert str(info.value).startswith("regions.csv")


def test_error_names_the_line() -> None:
    text = "# comment\n" + HEADER + ROW + ROW.replace("eu-central-1", "bad")
    with pytest.raises(RegionTableError) as info:
        parse_regions(text, "regions.csv")
    assert info.value.line == 4
    assert str(info.value).startswith("regions.csv:4: ")
    assert isinstance(info.value, GeoError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegionTableError, match="cannot read region table"):
        load_regions(tmp_path / "nope.csv")
