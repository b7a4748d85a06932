"""MaxMind-format databases: kind told from the database, one reader per layout, never a raise.

The sample databases in ``geo/sample`` are written by ``geo/sample/build.py`` with mmdb-writer and
read here through the real ``geoip2.database.Reader`` and ``maxminddb`` readers, so a layout the
readers in :mod:`geo.mmdb` accept is one the vendors' own client library accepts too.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.errors import GeoError, IpDataError, MmdbFileError
from geo.mmdb import (
    PROBE_RECORDS,
    READERS,
    DbipAsnReader,
    DbipCityReader,
    DbipCountryReader,
    IpinfoReader,
    MaxMindAsnReader,
    MaxMindCityReader,
    MaxMindCountryReader,
    MmdbFacts,
    MmdbReader,
    _asn_number,
    kind_from_records,
    kind_from_type,
    load_mmdbs,
    open_mmdb,
    probe_records,
)
from geo.sample.build import (
    LAYOUTS,
    SAMPLE_EPOCH,
    SampleNetwork,
    read_networks,
    stale,
    write_mmdb,
)

ROWS = read_networks()
NET = ipaddress.ip_network

# file -> (reader class, kind, layout)
EXPECTED: dict[str, tuple[type[MmdbReader], str, str]] = {
    "GeoLite2-City.mmdb": (MaxMindCityReader, "city", "maxmind"),
    "GeoLite2-ASN.mmdb": (MaxMindAsnReader, "asn", "maxmind"),
    "GeoLite2-Country.mmdb": (MaxMindCountryReader, "country", "maxmind"),
    "dbip-city-lite.mmdb": (DbipCityReader, "city", "dbip"),
    "dbip-country-lite.mmdb": (DbipCountryReader, "country", "dbip"),
    "dbip-asn-lite.mmdb": (DbipAsnReader, "asn", "dbip"),
    "ipinfo_lite.mmdb": (IpinfoReader, "country-asn", "ipinfo"),
}
SAMPLE_FILES = {layout.path.name: layout.path for layout in LAYOUTS}


def _inside(row: SampleNetwork) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address inside the row's network that no more specific row covers."""
    return row.network.network_address + 1


# -- the sample databases against the vendors' own readers -------------------------------------


def test_sample_databases_are_current_and_small() -> None:
    assert stale() == []  # geo/sample/build.py would write the same bytes
    for path in SAMPLE_FILES.values():
        assert path.stat().st_size < 50_000, path


def test_sample_build_is_byte_identical(tmp_path: Path) -> None:
    from geo.sample.build import build

    first = [p.read_bytes() for p in build(tmp_path / "a")]
    second = [p.read_bytes() for p in build(tmp_path / "b")]
    assert first == second
    for path in build(tmp_path / "c"):
        with maxminddb.open_database(str(path)) as db:
            assert db.metadata().build_epoch == SAMPLE_EPOCH


@pytest.mark.parametrize("row", ROWS, ids=[str(r.network) for r in ROWS])
def test_geoip2_reads_the_maxmind_and_dbip_samples(row: SampleNetwork) -> None:
    ip = str(_inside(row))
    for name, method in (
        ("GeoLite2-City.mmdb", "city"),
        ("GeoLite2-Country.mmdb", "country"),
        ("dbip-city-lite.mmdb", "city"),
        ("dbip-country-lite.mmdb", "country"),
    ):
        with geoip2.database.Reader(str(SAMPLE_FILES[name])) as reader:
            model = getattr(reader, method)(ip)
            assert model.country.iso_code == row.country, name
            if method == "city":
                assert model.city.name == row.city, name
                assert model.location.latitude == row.lat, name
                assert model.location.longitude == row.lon, name
            assert model.traits.network == row.network
    for name in ("GeoLite2-ASN.mmdb", "dbip-asn-lite.mmdb"):
        with geoip2.database.Reader(str(SAMPLE_FILES[name])) as reader:
            if row.asn is None:
                with pytest.raises(geoip2.errors.AddressNotFoundError):
                    reader.asn(ip)
            else:
                asn = reader.asn(ip)
                assert asn.autonomous_system_number == row.asn
                assert asn.autonomous_system_organization == row.as_org


def test_geoip2_metadata_of_the_samples() -> None:
    for layout in LAYOUTS:
        with geoip2.database.Reader(str(layout.path)) as reader:
            meta = reader.metadata()
            assert meta.database_type == layout.database_type
            assert meta.ip_version == 6  # IPv4 in ::/96, as the vendors ship them
            assert meta.languages == ["en"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_reader_agrees_with_the_sample_values(name: str) -> None:
    reader = open_mmdb(SAMPLE_FILES[name])
    cls, kind, layout = EXPECTED[name]
    try:
        assert type(reader) is cls
        assert (reader.info.kind, reader.info.layout) == (kind, layout)
        assert reader.info.detected_by == "database_type"
        assert reader.info.built.timestamp() == SAMPLE_EPOCH
        assert len(reader.info.sha256) == 64
        for row in ROWS:
            facts = reader.lookup(_inside(row))
            assert facts.source == name
            has_record = row.asn is not None if kind == "asn" else row.country is not None
            assert facts.found is has_record, row
            assert facts.error is None
            if kind in ("city", "country", "country-asn"):
                assert facts.country == row.country
            if kind == "city":
                assert (facts.city, facts.latitude, facts.longitude) == (row.city, row.lat, row.lon)
            if kind in ("asn", "country-asn") and row.asn is not None:
                assert (facts.asn, facts.as_org) == (row.asn, row.as_org)
            if facts.found:
                assert facts.prefix_len == row.network.prefixlen
            assert facts.anycast is False
    finally:
        reader.close()


def test_ipinfo_sample_read_raw_by_maxminddb() -> None:
    with maxminddb.open_database(str(SAMPLE_FILES["ipinfo_lite.mmdb"])) as db:
        record = db.get("3.124.0.1")
    assert record == {
        "asn": "AS16509",
        "as_name": "AMAZON-02",
        "continent": "Europe",
        "continent_code": "EU",
        "country": "Germany",
        "country_code": "DE",
    }


def test_address_in_no_network_and_v6_in_v4_tree() -> None:
    reader = open_mmdb(SAMPLE_FILES["GeoLite2-City.mmdb"])
    assert reader.lookup(ipaddress.ip_address("10.1.2.3")) == MmdbFacts(
        "GeoLite2-City.mmdb", found=False
    )
    assert not reader.lookup(ipaddress.ip_address("2001:db8:ffff::1")).found
    reader.close()


# -- telling the kind from the database, never the file name ------------------------------------


def test_misleading_file_names_do_not_matter(tmp_path: Path) -> None:
    # Each database under another database's name.
    renames = {
        "GeoLite2-City.mmdb": "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN.mmdb": "dbip-city-lite.mmdb",
        "dbip-city-lite.mmdb": "ipinfo_lite.mmdb",
        "ipinfo_lite.mmdb": "GeoLite2-Country.mmdb",
        "GeoLite2-Country.mmdb": "GeoLite2-City.mmdb",
        "dbip-asn-lite.mmdb": "country.mmdb",
        "dbip-country-lite.mmdb": "asn.mmdb",
    }
    for real, fake in renames.items():
        shutil.copy(SAMPLE_FILES[real], tmp_path / fake)
    readers, skipped = load_mmdbs(tmp_path)
    assert skipped == []
    got = {Path(r.info.path).name: (type(r), r.info.kind, r.info.layout) for r in readers}
    assert got == {fake: EXPECTED[real] for real, fake in renames.items()}
    for r in readers:
        r.close()


@pytest.mark.parametrize(
    ("database_type", "expected"),
    [
        ("GeoLite2-City", ("maxmind", "city")),
        ("GeoIP2-City", ("maxmind", "city")),
        ("GeoIP2-City-Europe", ("maxmind", "city")),
        ("GeoIP2-Precision-City", ("maxmind", "city")),
        ("GeoIP2-Enterprise", ("maxmind", "city")),
        ("GeoLite2-Country", ("maxmind", "country")),
        ("GeoIP2-Country", ("maxmind", "country")),
        ("GeoLite2-ASN", ("maxmind", "asn")),
        ("GeoIP2-ISP", ("maxmind", "asn")),
        ("GeoIP2-Anonymous-IP", ("maxmind", None)),
        ("GeoIP2-Connection-Type", ("maxmind", None)),
        ("DBIP-City-Lite", ("dbip", "city")),
        ("DBIP-Country-Lite", ("dbip", "country")),
        ("DBIP-Country", ("dbip", "country")),
        ("DBIP-ASN-Lite (compat=GeoLite2-ASN)", ("dbip", "asn")),
        ("DBIP-ASN-Lite", ("dbip", "asn")),
        ("DBIP-Location (compat=City)", ("dbip", "city")),
        ("DBIP-Location-ISP (compat=Enterprise)", ("dbip", "city")),
        ("ipinfo ipinfo_lite.mmdb", ("ipinfo", None)),
        ("ipinfo bundle_location_lite.mmdb", ("ipinfo", None)),
        ("IPinfo country_asn.mmdb", ("ipinfo", None)),
        ("Acme-Geo", None),
        ("", None),
    ],
)
def test_kind_from_type(database_type: str, expected: tuple[str, str | None] | None) -> None:
    assert kind_from_type(database_type) == expected


def test_kind_from_records() -> None:
    assert kind_from_records([{"autonomous_system_number": 1}]) == ("geoip2", "asn")
    assert kind_from_records([{"country": {"iso_code": "DE"}}]) == ("geoip2", "country")
    assert kind_from_records([{"continent": {"code": "EU"}}, {"country": {}, "city": {}}]) == (
        "geoip2",
        "city",
    )
    assert kind_from_records([{"country_code": "DE", "asn": "AS1"}]) == ("ipinfo", "country-asn")
    assert kind_from_records([{"country": "DE", "country_name": "Germany"}]) == (
        "ipinfo",
        "country",
    )
    assert kind_from_records([{"asn": "AS1", "name": "x", "route": "1.0.0.0/24"}]) == (
        "ipinfo",
        "asn",
    )
    assert kind_from_records([]) is None
    assert kind_from_records([{"foo": 1}]) is None
    assert kind_from_records([{"foo": [1]}]) is None


def _db(
    tmp_path: Path,
    name: str,
    database_type: str,
    records: dict[str, dict[str, Any]],
    **kwargs: Any,
) -> Path:
    path = tmp_path / name
    write_mmdb(path, database_type, [(NET(n), r) for n, r in records.items()], **kwargs)
    return path


def test_unknown_database_type_is_read_by_its_records(tmp_path: Path) -> None:
    city = {"country": {"iso_code": "FR"}, "city": {"names": {"en": "Paris"}}}
    path = _db(tmp_path, "acme.mmdb", "Acme-Geo-Premium", {"192.0.2.0/24": city})
    reader = open_mmdb(path)
    assert type(reader) is MaxMindCityReader
    assert reader.info.detected_by == "record layout"
    facts = reader.lookup(ipaddress.ip_address("192.0.2.7"))
    assert (facts.country, facts.city) == ("FR", "Paris")
    reader.close()


@pytest.mark.parametrize(
    ("database_type", "record", "reason"),
    [
        ("Acme-Weather", {"temperature": 21}, "match no layout"),
        ("GeoIP2-Anonymous-IP", {"is_anonymous": True}, "not a location or AS database"),
        ("GeoLite2-City", {"country_code": "DE", "asn": "AS3320"}, "records look like IPinfo"),
        ("GeoLite2-ASN", {"country": {"iso_code": "DE"}}, "says maxmind asn"),
        ("ipinfo ipinfo_lite.mmdb", {"country": {"iso_code": "DE"}}, "records look like GeoIP2"),
    ],
)
def test_unread_kinds_are_skipped_with_a_note(
    tmp_path: Path, database_type: str, record: dict[str, Any], reason: str
) -> None:
    path = _db(tmp_path, "x.mmdb", database_type, {"192.0.2.0/24": record})
    with pytest.raises(MmdbFileError, match=reason) as caught:
        open_mmdb(path)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, IpDataError | GeoError)
    readers, skipped = load_mmdbs(tmp_path)
    assert readers == []
    assert len(skipped) == 1
    assert skipped[0][0] == str(path)
    assert reason in skipped[0][1]


def test_city_database_whose_first_records_are_country_level_is_still_city(
    tmp_path: Path,
) -> None:
    path = _db(tmp_path, "c.mmdb", "GeoIP2-City", {"192.0.2.0/24": {"country": {"iso_code": "NL"}}})
    reader = open_mmdb(path)
    assert (type(reader), reader.info.kind) == (MaxMindCityReader, "city")
    reader.close()


def test_anycast_trait_and_enterprise_asn(tmp_path: Path) -> None:
    record = {
        "country": {"iso_code": "US"},
        "traits": {"is_anycast": True, "autonomous_system_number": 13335},
    }
    reader = open_mmdb(_db(tmp_path, "e.mmdb", "GeoIP2-Enterprise", {"192.0.2.0/24": record}))
    facts = reader.lookup(ipaddress.ip_address("192.0.2.1"))
    assert (facts.anycast, facts.asn, facts.country) == (True, 13335, "US")
    reader.close()


def test_ipv4_only_database(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet  # type: ignore[import-untyped]

    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-ASN")
    writer.insert_network(IPSet(["192.0.2.0/24"]), {"autonomous_system_number": 64496})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    reader = open_mmdb(tmp_path / "v4.mmdb")
    assert reader.info.ip_version == 4
    assert reader.lookup(ipaddress.ip_address("192.0.2.1")).asn == 64496
    assert reader.lookup(ipaddress.ip_address("2001:db8::1")) == MmdbFacts("v4.mmdb", found=False)
    reader.close()


def test_ipinfo_legacy_fields(tmp_path: Path) -> None:
    record = {"country": "GB", "country_name": "United Kingdom", "asn": "AS20712", "name": "A&A"}
    reader = open_mmdb(
        _db(tmp_path, "old.mmdb", "ipinfo country_asn.mmdb", {"81.2.69.0/24": record})
    )
    facts = reader.lookup(ipaddress.ip_address("81.2.69.1"))
    assert (facts.country, facts.asn, facts.as_org) == ("GB", 20712, "A&A")
    reader.close()


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("AS15169", 15169),
        ("as1", 1),
        (" AS64496 ", 64496),
        ("399358", 399358),
        (16509, 16509),
        ("AS", None),
        ("ASX", None),
        ("AS0", None),
        (2**32, None),
        (True, None),
        (None, None),
        (1.5, None),
    ],
)
def test_asn_number(value: object, number: int | None) -> None:
    assert _asn_number(value) == number


def test_every_layout_and_kind_has_a_reader() -> None:
    for (layout, kind), cls in READERS.items():
        assert cls.layout == layout
        assert kind in cls.kinds


# -- broken files -------------------------------------------------------------------------------


def test_missing_folder_and_non_files(tmp_path: Path) -> None:
    assert load_mmdbs(tmp_path / "nowhere") == ([], [])
    (tmp_path / "dir.mmdb").mkdir()
    readers, skipped = load_mmdbs(tmp_path)
    assert readers == []
    assert skipped == [(str(tmp_path / "dir.mmdb"), "not a regular file")]


@pytest.mark.parametrize(
    "content",
    [b"", b"not a database at all", b"\xab\xcd\xefMaxMind.com", b"\x00" * 4096],
    ids=["empty", "text", "bare-marker", "zeros"],
)
def test_garbage_is_skipped_with_a_reason(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "GeoLite2-City.mmdb").write_bytes(content)
    readers, skipped = load_mmdbs(tmp_path)
    assert readers == []
    assert len(skipped) == 1
    assert skipped[0][1]  # a reason, whatever the decoder said


def test_truncated_at_every_point_is_skipped_or_read(tmp_path: Path) -> None:
    whole = SAMPLE_FILES["GeoLite2-City.mmdb"].read_bytes()
    for cut in range(0, len(whole), 37):
        path = tmp_path / f"cut{cut}.mmdb"
        path.write_bytes(whole[:cut])
    readers, skipped = load_mmdbs(tmp_path)
    # The metadata sits at the end: no truncated copy can open.
    assert readers == []
    assert len(skipped) == len(range(0, len(whole), 37))
    assert all("not a readable MaxMind DB" in reason for _, reason in skipped)


def test_corrupt_search_tree_is_caught_by_the_probe(tmp_path: Path) -> None:
    data = bytearray(SAMPLE_FILES["GeoLite2-City.mmdb"].read_bytes())
    data[0:600] = b"\xff" * 600  # every node points far outside the file
    (tmp_path / "bad.mmdb").write_bytes(bytes(data))
    readers, skipped = load_mmdbs(tmp_path)
    assert readers == []
    assert skipped == [
        (str(tmp_path / "bad.mmdb"), "corrupt: search tree points past the end of the file")
    ]


def _rewrite_tree(tmp_path: Path, wire: Callable[[int, int], tuple[int, int]]) -> Path:
    """The City sample with each node's (left, right) records replaced by ``wire(node, count)``."""
    path = SAMPLE_FILES["GeoLite2-City.mmdb"]
    with maxminddb.open_database(str(path), maxminddb.MODE_MMAP) as db:
        meta = db.metadata()
    assert meta.record_size == 24
    data = bytearray(path.read_bytes())
    for node in range(meta.node_count):
        left, right = wire(node, meta.node_count)
        data[node * 6 : node * 6 + 6] = left.to_bytes(3, "big") + right.to_bytes(3, "big")
    out = tmp_path / "rewired.mmdb"
    out.write_bytes(bytes(data))
    return out


def test_exponential_tree_does_not_hang_the_probe(tmp_path: Path) -> None:
    # Both branches of node n lead to node n + 1, up to a depth an address can have, then to
    # nothing: 2**127 paths and not one record. maxminddb's iterator would walk them all.
    path = _rewrite_tree(tmp_path, lambda n, count: (n + 1, n + 1) if n < 127 else (count, count))
    started = time.perf_counter()
    with pytest.raises(MmdbFileError, match=r"holds no records \(walked 100000 search-tree"):
        open_mmdb(path)
    assert time.perf_counter() - started < 10


def test_tree_deeper_than_an_address_is_corrupt(tmp_path: Path) -> None:
    path = _rewrite_tree(tmp_path, lambda n, count: (min(n + 1, count), count))
    with pytest.raises(MmdbFileError, match="deeper than a 128-bit address"):
        open_mmdb(path)


def test_probe_finds_records_in_address_order() -> None:
    with maxminddb.open_database(str(SAMPLE_FILES["GeoLite2-ASN.mmdb"]), maxminddb.MODE_MMAP) as db:
        meta = db.metadata()
    records = probe_records(SAMPLE_FILES["GeoLite2-ASN.mmdb"], meta, limit=100)
    numbers = {r["autonomous_system_number"] for r in records}
    assert numbers == {row.asn for row in ROWS if row.asn is not None}


def test_a_record_that_fails_at_lookup_is_an_error_fact_not_an_exception() -> None:
    reader = open_mmdb(SAMPLE_FILES["GeoLite2-City.mmdb"])

    class Broken:
        def get_with_prefix_len(self, ip: object) -> tuple[object, int]:
            msg = "The MaxMind DB file's data section contains bad data"
            raise maxminddb.InvalidDatabaseError(msg)

        def close(self) -> None:
            pass

    reader._db = Broken()  # type: ignore[assignment]
    facts = reader.lookup(ipaddress.ip_address("3.124.0.1"))
    assert not facts.found
    assert facts.error is not None
    assert "bad data" in facts.error
    assert reader.errors == 1


def test_a_malformed_record_is_an_error_fact(tmp_path: Path) -> None:
    # Country as text where GeoIP2 has a map, beyond the probed records.
    good: dict[str, dict[str, Any]] = {
        f"198.51.100.{i * 8}/29": {"country": {"iso_code": "NL"}} for i in range(PROBE_RECORDS)
    }
    records = {**good, "203.0.113.0/24": {"country": "NL", "continent": {"code": "EU"}}}
    reader = open_mmdb(_db(tmp_path, "m.mmdb", "GeoLite2-Country", records))
    facts = reader.lookup(ipaddress.ip_address("203.0.113.9"))
    assert (facts.found, facts.country) == (False, None)
    assert facts.error is not None
    assert reader.errors == 1
    reader.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(sorted(SAMPLE_FILES)),
    st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=12),
)
def test_random_corruption_never_raises(
    tmp_path: Path, name: str, flips: list[tuple[int, int]]
) -> None:
    whole = bytearray(SAMPLE_FILES[name].read_bytes())
    for offset, value in flips:
        whole[offset % len(whole)] = value
    folder = tmp_path / "corrupt"
    folder.mkdir(exist_ok=True)
    (folder / "x.mmdb").write_bytes(bytes(whole))
    # The loader's checks never crash, whatever the reader used for lookups afterwards...
    readers, skipped = load_mmdbs(folder)
    assert len(readers) + len(skipped) == 1
    for reader in readers:
        reader.close()
    # ...and the pure-Python lookups never raise. (The C extension's can crash the process on
    # a damaged data section, which is why this part runs with safe=True.)
    readers, skipped = load_mmdbs(folder, safe=True)
    for reader in readers:
        for row in ROWS:
            facts = reader.lookup(_inside(row))
            assert isinstance(facts, MmdbFacts)
        reader.close()
