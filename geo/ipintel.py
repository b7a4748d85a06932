"""IP intelligence: where an address is and who announces it, from the files in the geo folder.

``IpIntel.from_dir(folder)`` opens every MaxMind-format database there (:mod:`geo.mmdb`: City,
Country and ASN databases in the MaxMind, DB-IP Lite and IPinfo Lite layouts) and every cloud
range file (:mod:`geo.ranges`); ``lookup(ip)`` combines them into :class:`IpFacts`, which name the
file or rule behind every field (``sources``) and state every disagreement between them
(``disagreements``), never hiding one. A missing folder or file leaves the matching fields None;
nothing here raises for bad data or bad input. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``)
are looked up as the IPv4 address they carry.

How each field is decided:

``anycast``
    The address is in a published anycast range (:mod:`geo.ranges` documents each provider's
    rule), or a database marks its network anycast (GeoIP2 ``traits.is_anycast``).
``country``
    1. Anycast: None. Where an anycast address "is" depends on who asks, so a location would be
       evidence of nothing; ``sources["country"]`` says it was withheld and what the databases
       said.
    2. In a provider's regional range (not anycast, not an AWS Local or Wavelength Zone) whose
       region the region table (``geo/data/regions.csv``) places in one country: that country.
       The provider's own statement of where its region is outranks a database's estimate; when
       a database says otherwise the disagreement is recorded and the database's value is kept
       there.
    3. Otherwise the databases: City before Country before IPinfo Lite; for the same kind
       MaxMind before DB-IP before IPinfo, then by file name. A database's ``country`` is where
       the address is, never ``registered_country``.
    Any two databases that give different countries are recorded as a disagreement, whichever
    value is used.
``city``, ``latitude``, ``longitude``
    From the first City database that has the address and agrees with the chosen country. When
    the country came from a cloud region the databases place elsewhere (or nowhere), from the
    region table instead. None for anycast.
``asn``, ``as_org``
    ASN databases, then IPinfo Lite, then a City database's traits (GeoIP2 Enterprise); the
    organisation is the one given with that number. Different numbers are a disagreement;
    differently spelt organisation names are not.
``cloud``, ``region``, ``service``
    The most specific published range holding the address (:class:`geo.ranges.RangeTable`).

Lookups are cached (LRU, :data:`DEFAULT_CACHE_SIZE` addresses): a busy machine reaches the same
few endpoints over and over. The cached :class:`IpFacts` objects are shared; do not mutate their
``sources``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

from geo.mmdb import MmdbFacts, MmdbKind, MmdbReader, load_mmdbs
from geo.ranges import CloudRange, RangeFile, RangeTable, load_ranges
from geo.regions import Region, RegionTable, load_regions

DEFAULT_CACHE_SIZE = 16384
"""Addresses whose facts :class:`IpIntel` keeps (least recently used are evicted)."""

_MAX_ECHO = 64
"""How much of an input that is not an address is echoed back in facts."""


@dataclass(frozen=True, slots=True)
class IpFacts:
    """What the geo folder says about one IP address; every field None when nothing is known."""

    ip: str
    """The address as ``ipaddress`` prints it; for input that is not an address, the input
    (bytes in hex), cut to 64 characters."""
    country: str | None = None
    """ISO 3166-1 alpha-2 code of where the address is; None when unknown or anycast."""
    city: str | None = None
    """City of the address (English name), when a City database or the region table gives one."""
    latitude: float | None = None
    """Latitude of that location."""
    longitude: float | None = None
    """Longitude of that location."""
    asn: int | None = None
    """Number of the autonomous system that announces the address."""
    as_org: str | None = None
    """Organisation of that autonomous system, as the database that gave ``asn`` spells it."""
    cloud: str | None = None
    """Cloud whose published ranges hold the address: ``aws``, ``gcp``, ``azure``, ``oci``,
    ``cloudflare``."""
    region: str | None = None
    """The cloud's region code for the range (``eu-central-1``), None for a global range."""
    service: str | None = None
    """The most specific service the cloud names for the range (``EC2``, ``AzureStorage``)."""
    anycast: bool = False
    """The address is in a known anycast range, so its location says little."""
    sources: dict[str, str] = field(default_factory=dict)
    """Field name -> the file or rule that gave it, e.g. ``{"country": "GeoLite2-City.mmdb",
    "region": "aws-ip-ranges.json"}``; ``sources["ip"]`` explains input that is not an address."""
    disagreements: tuple[str, ...] = ()
    """Every conflict between sources, e.g. ``"country: GeoLite2-City.mmdb says NL,
    dbip-country-lite.mmdb says DE"``."""

    @property
    def found(self) -> bool:
        """Some file knew something about the address."""
        return bool(self.sources) and "ip" not in self.sources


class Skipped(NamedTuple):
    """A file in the geo folder that is not used, and why."""

    path: str
    """The file (or the folder, when the folder itself is missing)."""
    reason: str
    """Why, in a sentence a person can act on."""


DataKind = Literal["city", "country", "asn", "country-asn", "ranges"]


@dataclass(frozen=True, slots=True)
class DataFile:
    """One file in use: what it is, how old, which exact bytes."""

    path: str
    """The file."""
    kind: DataKind
    """What it answers: a database kind, or ``ranges`` for a cloud range file."""
    layout: str
    """Whose format: ``maxmind``, ``dbip``, ``ipinfo`` for databases; the cloud id for ranges."""
    description: str
    """The database's ``database_type``, or the range file's entry count."""
    built: datetime | None
    """When the vendor built it (database metadata, range file timestamp); None if not stated."""
    version: str | None
    """The vendor's version stamp (AWS/GCP ``syncToken``, Azure ``changeNumber``), if any."""
    sha256: str | None
    """SHA-256 of the file, hex."""
    notes: tuple[str, ...] = ()
    """Anything worth knowing: detected by record layout only, entries dropped and why."""

    @property
    def name(self) -> str:
        """The file name, as used in :attr:`IpFacts.sources`."""
        return Path(self.path).name


# Order in which database kinds answer each question (see the module docstring).
_COUNTRY_KINDS: tuple[MmdbKind, ...] = ("city", "country", "country-asn")
_ASN_KINDS: tuple[MmdbKind, ...] = ("asn", "country-asn", "city")
_LAYOUT_ORDER = ("maxmind", "dbip", "ipinfo")


def _order(readers: Sequence[MmdbReader], kinds: tuple[MmdbKind, ...]) -> tuple[int, ...]:
    """Indexes of the readers that answer with ``kinds``, in precedence order."""
    ranked = [
        (kinds.index(r.info.kind), _LAYOUT_ORDER.index(r.layout), r.source, i)
        for i, r in enumerate(readers)
        if r.info.kind in kinds
    ]
    return tuple(i for *_, i in sorted(ranked))


def _mmdb_file(reader: MmdbReader) -> DataFile:
    info = reader.info
    notes: tuple[str, ...] = ()
    if info.detected_by == "record layout":
        notes = (f"database_type {info.database_type!r} unknown; read by its record layout",)
    return DataFile(
        path=info.path,
        kind=info.kind,
        layout=info.layout,
        description=info.database_type,
        built=info.built,
        version=None,
        sha256=info.sha256,
        notes=notes,
    )


def _range_file(f: RangeFile) -> DataFile:
    notes: tuple[str, ...] = ()
    if f.dropped:
        notes = (f"{f.dropped} entries dropped", *f.problems)
    return DataFile(
        path=f.path or f.source,
        kind="ranges",
        layout=f.cloud,
        description=f"{len(f.ranges)} {f.cloud} ranges",
        built=f.built,
        version=f.version,
        sha256=f.sha256,
        notes=notes,
    )


def _echo(ip: object) -> str:
    text = ip.hex() if isinstance(ip, bytes) else str(ip) if isinstance(ip, str) else repr(ip)
    return text[:_MAX_ECHO]


def _invalid(ip: object) -> IpFacts:
    if isinstance(ip, bytes):
        why = f"not an IP address: {len(ip)} bytes (4 or 16 expected)"
    elif isinstance(ip, str):
        why = f"not an IP address: {ip[:_MAX_ECHO]!r}"
    else:
        why = f"not an IP address: a {type(ip).__name__} (text or 4/16 bytes expected)"
    return IpFacts(ip=_echo(ip), sources={"ip": why})


class IpIntel:
    """The databases and range files of one geo folder; :meth:`lookup` gives :class:`IpFacts`."""

    def __init__(
        self,
        readers: Iterable[MmdbReader] = (),
        range_files: Iterable[RangeFile] = (),
        *,
        regions: RegionTable | None = None,
        skipped: Iterable[tuple[str, str]] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.readers: tuple[MmdbReader, ...] = tuple(readers)
        """The open databases, in file-name order."""
        range_files = tuple(range_files)
        self.ranges = RangeTable.from_files(range_files)
        """Every published range, for longest-prefix lookups."""
        self.regions = regions if regions is not None else load_regions()
        """Region code -> country and city (the packaged table by default)."""
        self.files: tuple[DataFile, ...] = tuple(
            [_mmdb_file(r) for r in self.readers] + [_range_file(f) for f in range_files]
        )
        """Every file in use."""
        self.skipped: tuple[Skipped, ...] = tuple(Skipped(*s) for s in skipped)
        """Every file present but not used, with the reason."""
        self._country_order = _order(self.readers, _COUNTRY_KINDS)
        self._asn_order = _order(self.readers, _ASN_KINDS)
        self._city_order = _order(self.readers, ("city",))
        self._regions_name = Path(self.regions.path).name if self.regions.path else "regions"
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup)

    @classmethod
    def from_dir(
        cls,
        geo_dir: str | Path | None,
        *,
        regions: RegionTable | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        safe: bool = False,
    ) -> IpIntel:
        """Load what ``geo_dir`` holds. No folder, a missing folder or no usable file gives an
        empty intel (every lookup all None), never an error; unusable files are in ``skipped``.

        ``safe=True`` reads the databases with ``maxminddb``'s pure-Python reader (see
        :func:`geo.mmdb.open_mmdb`): slower cold lookups, no C code touching the files."""
        if geo_dir is None:
            return cls(regions=regions, cache_size=cache_size)
        folder = Path(geo_dir)
        try:
            usable = folder.is_dir()
        except OSError:
            usable = False
        if not usable:
            reason = "not a folder" if folder.exists() else "no such folder"
            return cls(regions=regions, skipped=[(str(folder), reason)], cache_size=cache_size)
        readers, mmdb_skipped = load_mmdbs(folder, safe=safe)
        range_files, range_skipped = load_ranges(folder)
        return cls(
            readers,
            range_files,
            regions=regions,
            skipped=[*mmdb_skipped, *range_skipped],
            cache_size=cache_size,
        )

    @property
    def empty(self) -> bool:
        """No database and no range file is loaded."""
        return not self.readers and not len(self.ranges)

    def lookup(self, ip: str | bytes) -> IpFacts:
        """Facts about ``ip``: text, or the 4 or 16 bytes of an address. Input that is not an
        address gives facts with every field None and ``sources["ip"]`` saying why."""
        if isinstance(ip, bytearray | memoryview):
            ip = bytes(ip)
        if not isinstance(ip, str | bytes):
            return _invalid(ip)
        return self._cached(ip)

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the lookup cache."""
        return self._cached.cache_info()

    def cache_clear(self) -> None:
        """Forget every cached lookup."""
        self._cached.cache_clear()

    def close(self) -> None:
        """Close the databases."""
        for reader in self.readers:
            reader.close()

    def __enter__(self) -> IpIntel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- combining ------------------------------------------------------------------------------

    def _lookup(self, ip: str | bytes) -> IpFacts:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return _invalid(ip)
        key: ipaddress.IPv4Address | ipaddress.IPv6Address = address
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                key = address.ipv4_mapped
            elif address.scope_id:
                key = ipaddress.IPv6Address(address.packed)
        answers = [reader.lookup(key) for reader in self.readers]
        found = self.ranges.lookup(key) if len(self.ranges) else None
        return self._combine(str(address), answers, found)

    def _combine(self, ip: str, answers: list[MmdbFacts], rng: CloudRange | None) -> IpFacts:
        sources: dict[str, str] = {}
        disagreements: list[str] = []

        votes = [(answers[i].source, c) for i in self._country_order if (c := answers[i].country)]
        geo_src, geo_country = votes[0] if votes else (None, None)
        if len({c for _, c in votes}) > 1:
            disagreements.append("country: " + ", ".join(f"{src} says {c}" for src, c in votes))

        asn_answers = [answers[i] for i in self._asn_order if answers[i].asn is not None]
        asn = as_org = None
        if asn_answers:
            first = asn_answers[0]
            asn = first.asn
            sources["asn"] = first.source
            named = next((a for a in asn_answers if a.asn == asn and a.as_org), None)
            if named is not None:
                as_org = named.as_org
                sources["as_org"] = named.source
            if len({a.asn for a in asn_answers}) > 1:
                disagreements.append(
                    "asn: " + ", ".join(f"{a.source} says {a.asn}" for a in asn_answers)
                )

        located = next(
            (
                a
                for i in self._city_order
                if (a := answers[i]).found
                and (a.city or a.latitude is not None)
                and a.country in (None, geo_country)
            ),
            None,
        )
        city = located.city if located else None
        lat = located.latitude if located else None
        lon = located.longitude if located else None
        loc_src = located.source if located else None

        cloud = region = service = None
        anycast_src = None
        if rng is not None:
            cloud, region, service = rng.cloud, rng.region, rng.service
            sources["cloud"] = rng.source
            if region:
                if rng.zone:
                    sources["region"] = f"{rng.source} (network border group {rng.zone})"
                elif rng.region_network is not None:
                    sources["region"] = f"{rng.source} (region of {rng.region_network})"
                else:
                    sources["region"] = rng.source
            if service:
                sources["service"] = rng.source
            if rng.anycast:
                anycast_src = f"{rng.source} ({rng.anycast_rule})"
        if anycast_src is None:
            flagged = next((a for a in answers if a.anycast), None)
            if flagged is not None:
                anycast_src = f"{flagged.source} (is_anycast)"

        country, country_src = geo_country, geo_src
        if anycast_src is not None:
            sources["anycast"] = anycast_src
            withheld = "withheld: anycast"
            if geo_country:
                withheld += f"; {geo_src} says {geo_country}"
            sources["country"] = withheld
            country = city = lat = lon = None
        else:
            place = self._region_place(rng)
            if rng is not None and place is not None and place.country is not None:
                said = f"{rng.source} says {rng.region} ({place.country})"
                if geo_country and geo_country != place.country:
                    disagreements.append(f"country: {said}, {geo_src} says {geo_country}")
                if geo_country != place.country:
                    city, lat, lon = place.city or None, place.lat, place.lon
                    loc_src = f"{self._regions_name} ({rng.cloud} {rng.region})"
                country = place.country
                country_src = f"{rng.source} (region {rng.region})"
            if country:
                sources["country"] = country_src or ""
            if city:
                sources["city"] = loc_src or ""
            if lat is not None and lon is not None:
                sources["latitude"] = sources["longitude"] = loc_src or ""
            else:
                lat = lon = None

        return IpFacts(
            ip=ip,
            country=country,
            city=city,
            latitude=lat,
            longitude=lon,
            asn=asn,
            as_org=as_org,
            cloud=cloud,
            region=region,
            service=service,
            anycast=anycast_src is not None,
            sources=sources,
            disagreements=tuple(disagreements),
        )

    def _region_place(self, rng: CloudRange | None) -> Region | None:
        """The region table's single-country row for a regional range, else None."""
        if rng is None or rng.region is None or rng.zone is not None:
            return None
        place = self.regions.lookup(rng.cloud, rng.region)
        if place is None or place.scope != "region":
            return None
        return place
