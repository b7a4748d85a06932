"""Build the sample IP databases in ``geo/sample/`` from ``networks.csv``, reproducibly.

::

    .venv/bin/python -m geo.sample.build           # rewrite the .mmdb files
    .venv/bin/python -m geo.sample.build --check   # exit 1 when a committed file is stale

The databases use the record layouts and ``database_type`` values of the real files, so that the
readers in :mod:`geo.mmdb` meet the shapes they will meet in the field:

=============================================  ======================================  =========
file                                           database_type                           layout
=============================================  ======================================  =========
``GeoLite2-City.mmdb``                         ``GeoLite2-City``                       MaxMind
``GeoLite2-ASN.mmdb``                          ``GeoLite2-ASN``                        MaxMind
``layouts/GeoLite2-Country.mmdb``              ``GeoLite2-Country``                    MaxMind
``layouts/dbip-city-lite.mmdb``                ``DBIP-City-Lite``                      DB-IP
``layouts/dbip-country-lite.mmdb``             ``DBIP-Country-Lite``                   DB-IP
``layouts/dbip-asn-lite.mmdb``                 ``DBIP-ASN-Lite (compat=GeoLite2-ASN)``  DB-IP
``layouts/ipinfo_lite.mmdb``                   ``ipinfo ipinfo_lite.mmdb``             IPinfo
=============================================  ======================================  =========

``geo/sample/`` itself is the demo's geo folder (one City and one ASN database beside the cloud
range files); the other layouts sit in ``layouts/`` so that the demo does not read the same
sample values four times over. All of them hold the SAMPLE values of ``networks.csv``, which are
not authoritative.

Needs the test extra (``mmdb-writer``, which brings ``netaddr``). The metadata's build epoch is
fixed (:data:`SAMPLE_EPOCH`) so that a rebuild changes no byte, and every record is read back
with ``maxminddb`` and compared with what was written before a file is kept.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import ipaddress
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]  # netaddr ships no py.typed

SAMPLE_DIR = Path(__file__).resolve().parent
"""``geo/sample/``: the demo's geo folder."""
LAYOUTS_DIR = SAMPLE_DIR / "layouts"
"""``geo/sample/layouts/``: the sample databases of the other layouts, for reader tests."""
NETWORKS = SAMPLE_DIR / "networks.csv"
"""The sample values every database is built from."""
SAMPLE_EPOCH = 1767225600
"""Build time written into every sample database's metadata: 2026-01-01T00:00:00Z."""

_COLUMNS = ("network", "country", "city", "lat", "lon", "asn", "as_org")

# Country and continent names for the codes networks.csv uses. Real GeoLite2 and DB-IP records
# carry names in several languages and GeoNames ids; English names are enough for the readers.
_COUNTRIES: dict[str, tuple[str, str]] = {
    "AR": ("Argentina", "SA"),
    "DE": ("Germany", "EU"),
    "HK": ("Hong Kong", "AS"),
    "IE": ("Ireland", "EU"),
    "JP": ("Japan", "AS"),
    "NL": ("Netherlands", "EU"),
    "SE": ("Sweden", "EU"),
    "US": ("United States", "NA"),
}
_CONTINENTS = {"AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America"}
_EU_MEMBERS = frozenset({"DE", "IE", "NL", "SE"})


@dataclass(frozen=True, slots=True)
class SampleNetwork:
    """One row of ``networks.csv``."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    """The network the row describes."""
    country: str | None
    """ISO 3166-1 alpha-2 code, or None when the databases say nothing."""
    city: str | None
    """English city name, or None."""
    lat: float | None
    """Latitude, or None."""
    lon: float | None
    """Longitude, or None."""
    asn: int | None
    """Autonomous system number, or None."""
    as_org: str | None
    """Name of the autonomous system's organisation, or None."""


def read_networks(path: Path = NETWORKS) -> list[SampleNetwork]:
    """Parse ``networks.csv`` (``#`` lines are comments); ValueError names the bad line."""
    lines = [
        (n, line)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip() and not line.startswith("#")
    ]
    records = list(csv.reader(line for _, line in lines))
    if not records or tuple(records[0]) != _COLUMNS:
        msg = f"{path}: header must be {','.join(_COLUMNS)!r}"
        raise ValueError(msg)
    rows = []
    for (n, _), record in zip(lines[1:], records[1:], strict=True):
        if len(record) != len(_COLUMNS):
            msg = f"{path}:{n}: expected {len(_COLUMNS)} columns, got {record!r}"
            raise ValueError(msg)
        network, country, city, lat, lon, asn, as_org = (cell.strip() for cell in record)
        if country and country not in _COUNTRIES:
            msg = f"{path}:{n}: add {country!r} to _COUNTRIES in build.py"
            raise ValueError(msg)
        rows.append(
            SampleNetwork(
                network=ipaddress.ip_network(network),
                country=country or None,
                city=city or None,
                lat=float(lat) if lat else None,
                lon=float(lon) if lon else None,
                asn=int(asn) if asn else None,
                as_org=as_org or None,
            )
        )
    return rows


# -- record layouts ---------------------------------------------------------------------------
# Each returns the record stored for a row, or None when the database would have no entry.


def _names(name: str) -> dict[str, Any]:
    return {"en": name}


def _geoip2_country(code: str, *, with_eu: bool) -> dict[str, Any]:
    name, _ = _COUNTRIES[code]
    country: dict[str, Any] = {"iso_code": code, "names": _names(name)}
    if with_eu:
        # MaxMind writes the flag only when it is true; DB-IP writes it for every country.
        country["is_in_european_union"] = code in _EU_MEMBERS
    return country


def _continent(code: str) -> dict[str, Any]:
    continent = _COUNTRIES[code][1]
    return {"code": continent, "names": _names(_CONTINENTS[continent])}


def geolite2_country_record(row: SampleNetwork) -> dict[str, Any] | None:
    """GeoLite2-Country: ``continent``, ``country``, ``registered_country``."""
    if row.country is None:
        return None
    country = _geoip2_country(row.country, with_eu=False)
    if row.country in _EU_MEMBERS:
        country["is_in_european_union"] = True
    return {
        "continent": _continent(row.country),
        "country": country,
        "registered_country": dict(country),
    }


def geolite2_city_record(row: SampleNetwork) -> dict[str, Any] | None:
    """GeoLite2-City: the Country record plus ``city`` and ``location``."""
    record = geolite2_country_record(row)
    if record is None:
        return None
    if row.city:
        record["city"] = {"names": _names(row.city)}
    if row.lat is not None and row.lon is not None:
        # A country-level answer has a wide accuracy radius, as in the real database.
        record["location"] = {
            "accuracy_radius": 20 if row.city else 1000,
            "latitude": row.lat,
            "longitude": row.lon,
        }
    return record


def asn_record(row: SampleNetwork) -> dict[str, Any] | None:
    """GeoLite2-ASN and DB-IP ASN Lite: ``autonomous_system_number`` (uint32) and organisation."""
    if row.asn is None:
        return None
    record: dict[str, Any] = {"autonomous_system_number": MmdbU32(row.asn)}
    if row.as_org:
        record["autonomous_system_organization"] = row.as_org
    return record


def dbip_country_record(row: SampleNetwork) -> dict[str, Any] | None:
    """DB-IP Country Lite: ``continent`` and ``country`` (with ``is_in_european_union``)."""
    if row.country is None:
        return None
    return {
        "continent": _continent(row.country),
        "country": _geoip2_country(row.country, with_eu=True),
    }


def dbip_city_record(row: SampleNetwork) -> dict[str, Any] | None:
    """DB-IP City Lite: the Country record plus ``city`` and ``location`` without accuracy."""
    record = dbip_country_record(row)
    if record is None:
        return None
    if row.city:
        record["city"] = {"names": _names(row.city)}
    if row.lat is not None and row.lon is not None:
        record["location"] = {"latitude": row.lat, "longitude": row.lon}
    return record


def ipinfo_lite_record(row: SampleNetwork) -> dict[str, Any] | None:
    """IPinfo Lite: one flat map; ``asn`` is text such as ``AS15169``."""
    if row.country is None and row.asn is None:
        return None
    record: dict[str, Any] = {}
    if row.asn is not None:
        record["asn"] = f"AS{row.asn}"
        record["as_name"] = row.as_org or ""
    if row.country is not None:
        name, continent = _COUNTRIES[row.country]
        record["continent"] = _CONTINENTS[continent]
        record["continent_code"] = continent
        record["country"] = name
        record["country_code"] = row.country
    return record


@dataclass(frozen=True, slots=True)
class Layout:
    """One sample database: where it goes, how its metadata reads, what its records hold."""

    path: Path
    """Output file."""
    database_type: str
    """The metadata's ``database_type``, as the vendor writes it."""
    record: Callable[[SampleNetwork], dict[str, Any] | None]
    """The record stored for a row (None: no entry)."""


LAYOUTS: tuple[Layout, ...] = (
    Layout(SAMPLE_DIR / "GeoLite2-City.mmdb", "GeoLite2-City", geolite2_city_record),
    Layout(SAMPLE_DIR / "GeoLite2-ASN.mmdb", "GeoLite2-ASN", asn_record),
    Layout(LAYOUTS_DIR / "GeoLite2-Country.mmdb", "GeoLite2-Country", geolite2_country_record),
    Layout(LAYOUTS_DIR / "dbip-city-lite.mmdb", "DBIP-City-Lite", dbip_city_record),
    Layout(LAYOUTS_DIR / "dbip-country-lite.mmdb", "DBIP-Country-Lite", dbip_country_record),
    Layout(LAYOUTS_DIR / "dbip-asn-lite.mmdb", "DBIP-ASN-Lite (compat=GeoLite2-ASN)", asn_record),
    Layout(LAYOUTS_DIR / "ipinfo_lite.mmdb", "ipinfo ipinfo_lite.mmdb", ipinfo_lite_record),
)
"""Every sample database :func:`build` writes."""


# -- writing ----------------------------------------------------------------------------------


class _FixedEpochWriter(MMDBWriter):
    """mmdb-writer stamps ``time.time()`` into the metadata; a sample must not change on rebuild."""

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = SAMPLE_EPOCH
        return meta


def _plain(value: Any) -> Any:
    """``value`` with mmdb-writer's type wrappers removed, to compare with what a reader returns."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, MmdbU32):
        return value.value
    return value


def write_mmdb(
    path: Path,
    database_type: str,
    entries: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, dict[str, Any]]],
    *,
    description: str | None = None,
) -> None:
    """Write an IPv6 MaxMind DB (IPv4 in ``::/96``, as the vendors do) and check it reads back.

    ``entries`` may nest: a supernet is written first so that its subnets override it.
    Raises AssertionError if a record does not read back exactly as written.
    """
    entries = sorted(entries, key=lambda e: (e[0].version, e[0].prefixlen, e[0]))
    writer = _FixedEpochWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description=description
        or f"SAMPLE data in the {database_type} layout for egresswatch tests; not authoritative",
    )
    for network, record in entries:
        writer.insert_network(IPSet([str(network)]), record)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    # mmdb-writer deduplicates values by equality, and True == 1 == 1.0 in Python: reading every
    # record back catches a flag that came out as an integer (or the other way round).
    with maxminddb.open_database(str(path)) as reader:
        if reader.metadata().database_type != database_type:
            msg = f"{path}: database_type did not survive the write"
            raise AssertionError(msg)
        for network, record in entries:
            got = reader.get(network.network_address)
            if repr(got) != repr(_plain(record)):
                msg = f"{path}: {network} reads back as {got!r}, wrote {_plain(record)!r}"
                raise AssertionError(msg)


def build(
    out_dir: Path | None = None, networks: Sequence[SampleNetwork] | None = None
) -> list[Path]:
    """Write every :data:`LAYOUTS` database (under ``out_dir`` instead of ``geo/sample/``)."""
    rows = read_networks() if networks is None else networks
    written = []
    for layout in LAYOUTS:
        path = layout.path
        if out_dir is not None:
            path = out_dir / layout.path.relative_to(SAMPLE_DIR)
        entries = [(row.network, rec) for row in rows if (rec := layout.record(row)) is not None]
        write_mmdb(path, layout.database_type, entries)
        written.append(path)
    return written


def stale() -> list[Path]:
    """The committed sample databases that differ from a fresh build (empty when all current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(Path(tmp))
        return [
            layout.path
            for layout, new in zip(LAYOUTS, fresh, strict=True)
            if not layout.path.is_file() or layout.path.read_bytes() != new.read_bytes()
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build, or with ``--check`` report stale files (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="only compare the committed files with a fresh build"
    )
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"stale: {path.relative_to(SAMPLE_DIR)}", file=sys.stderr)
        return 1 if old else 0
    for path in build():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path.relative_to(SAMPLE_DIR)}  {path.stat().st_size} bytes  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
