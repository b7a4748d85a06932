"""MaxMind-format IP databases (``*.mmdb``): what each file is, and one reader per record layout.

The interface is :class:`MmdbReader`: ``lookup(ip)`` returns :class:`MmdbFacts`, which say what
the database knows about the address, or that it knows nothing (``found`` false), or that the
record could not be decoded (``error``). Never an exception.

**What a file is comes from the database itself, never from its file name.** A file renamed to
``GeoLite2-ASN.mmdb`` that holds a City database is read as a City database.

1. The metadata's ``database_type`` names the vendor and the kind:

   ============================================  ========  ===========================
   ``database_type``                             layout    kind
   ============================================  ========  ===========================
   ``GeoLite2-City``, ``GeoIP2-City[-Europe..]``  maxmind   city
   ``GeoIP2-Enterprise``                          maxmind   city
   ``GeoLite2-Country``, ``GeoIP2-Country``       maxmind   country
   ``GeoLite2-ASN``, ``GeoIP2-ISP``               maxmind   asn
   ``DBIP-City-Lite``, ``DBIP-Location (..)``     dbip      city
   ``DBIP-Country-Lite``, ``DBIP-Country``        dbip      country
   ``DBIP-ASN-Lite (compat=GeoLite2-ASN)``        dbip      asn
   ``ipinfo ipinfo_lite.mmdb`` (any ``ipinfo..``)  ipinfo    from its fields (below)
   ============================================  ========  ===========================

   Other MaxMind products (``GeoIP2-Anonymous-IP``, ``-Connection-Type``, ``-Domain``) say nothing
   about location or AS and are skipped with a note.
2. The first records (:data:`PROBE_RECORDS` of them, in address order) must have that layout:
   ``autonomous_system_number`` for an ASN database; a ``country`` / ``registered_country`` /
   ``continent`` map for City and Country (City when a record has ``city`` or ``location``);
   flat ``country_code`` / ``asn`` text fields for IPinfo, whose kind is ``country-asn`` with
   both, else ``country`` or ``asn``. When the ``database_type`` is one this module does not know,
   the records alone decide, and ``detected_by`` says so. When the two disagree, or the records
   match no layout, the file is skipped with a note saying what was seen.

A file that ``maxminddb`` cannot open (truncated, not a MaxMind DB, unreadable) or whose first
records do not decode is skipped with the reason. :func:`load_mmdbs` never raises, and its checks
cannot crash or hang: they use ``maxminddb``'s pure-Python decoder and a bounded walk of the
search tree (:func:`probe_records`). Lookups use the C extension for speed; it can crash the
process on a data section damaged in place (seen with maxminddb 3.2.0 on randomly corrupted
files; truncated and foreign files are refused cleanly at open), so ``safe=True`` keeps lookups
on the pure-Python reader, and a file should be verified when it enters the folder.

The MaxMind and DB-IP readers interpret records with ``geoip2``'s models (DB-IP publishes its
Lite databases in the GeoIP2 layouts, with fewer fields); the IPinfo reader reads its flat records
directly, as ``geoip2`` has no model for them. Lookups go through the ``maxminddb`` C extension
where it is installed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import mmap
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import geoip2.models
import maxminddb
from maxminddb.decoder import Decoder
from maxminddb.reader import Metadata
from maxminddb.types import Record

from geo.errors import MmdbFileError

MmdbKind = Literal["city", "country", "asn", "country-asn"]
"""What a database answers: City (country, city, coordinates), Country, ASN, or both country and
ASN (IPinfo Lite)."""
MmdbLayout = Literal["maxmind", "dbip", "ipinfo"]
"""Whose record layout a database uses."""
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROBE_RECORDS = 16
"""How many records :func:`open_mmdb` decodes to check a database's layout."""
PROBE_NODES = 100_000
"""How many search-tree nodes the probe visits at most looking for those records."""

_LOCALES = ("en",)


@dataclass(frozen=True, slots=True)
class MmdbInfo:
    """One opened database: what it is and where it came from."""

    path: str
    """The file, as opened."""
    kind: MmdbKind
    """What it answers (see :data:`MmdbKind`)."""
    layout: MmdbLayout
    """Whose record layout it uses."""
    database_type: str
    """The metadata's ``database_type``, verbatim."""
    built: datetime
    """The metadata's build time (``build_epoch``), UTC."""
    sha256: str
    """SHA-256 of the file, hex."""
    ip_version: int
    """4 for an IPv4-only database, 6 for one that holds both families."""
    detected_by: Literal["database_type", "record layout"]
    """``database_type`` when the metadata named a known product (and the records agreed);
    ``record layout`` when the product was unknown and the records alone decided."""

    @property
    def name(self) -> str:
        """The file name, which is how facts name their source."""
        return Path(self.path).name


@dataclass(frozen=True, slots=True)
class MmdbFacts:
    """What one database says about one address; every field None when it says nothing."""

    source: str
    """File name of the database that answered."""
    found: bool
    """The database has a record for the address."""
    prefix_len: int | None = None
    """Length of the database's network that holds the address (IPv4 lengths for IPv4)."""
    country: str | None = None
    """ISO 3166-1 alpha-2 code of the country where the address is (not where it is
    registered)."""
    city: str | None = None
    """English city name."""
    latitude: float | None = None
    """Latitude of the location the database gives."""
    longitude: float | None = None
    """Longitude of the location the database gives."""
    asn: int | None = None
    """Autonomous system number."""
    as_org: str | None = None
    """Organisation of the autonomous system."""
    anycast: bool = False
    """The database marks the network as anycast (GeoIP2 ``traits.is_anycast``)."""
    error: str | None = None
    """Why the record could not be read (a corrupt database); None when it was read."""


class MmdbReader(ABC):
    """A database of one layout; :meth:`lookup` turns its record for an address into facts."""

    layout: ClassVar[MmdbLayout]
    """The record layout this class reads."""
    kinds: ClassVar[frozenset[MmdbKind]]
    """The kinds of database of that layout this class reads."""

    def __init__(self, db: maxminddb.Reader, info: MmdbInfo) -> None:
        self.info = info
        self.source = info.name
        self.errors = 0
        """Lookups that failed to decode a record (a database corrupt past its first records)."""
        self._db = db
        self._v4_only = info.ip_version == 4

    def lookup(self, ip: IPAddress) -> MmdbFacts:
        """The facts for ``ip`` (an unscoped address; IPv4-mapped IPv6 already unmapped)."""
        if self._v4_only and ip.version == 6:
            return MmdbFacts(self.source, found=False)
        try:
            record, prefix_len = self._db.get_with_prefix_len(ip)
            if record is None:
                return MmdbFacts(self.source, found=False)
            if not isinstance(record, dict):
                msg = f"record is a {type(record).__name__}, not a map"
                raise TypeError(msg)
            return self._facts(record, ip, prefix_len)
        except (
            maxminddb.InvalidDatabaseError,
            ValueError,
            TypeError,
            LookupError,
            AttributeError,
        ) as exc:
            # A corrupt data section shows only when its record is read: say so and go on.
            self.errors += 1
            return MmdbFacts(self.source, found=False, error=f"{type(exc).__name__}: {exc}")

    @abstractmethod
    def _facts(self, record: dict[str, Record], ip: IPAddress, prefix_len: int) -> MmdbFacts:
        """Facts from one decoded record; may raise ValueError/TypeError/LookupError."""

    def close(self) -> None:
        """Release the file (its memory map)."""
        self._db.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.path!r} {self.info.database_type!r}>"


def _model_args(record: dict[str, Record]) -> dict[str, Any]:
    # geoip2's models take the record's top-level keys as keyword arguments and ignore the rest.
    return cast("dict[str, Any]", record)


class MaxMindCityReader(MmdbReader):
    """GeoLite2 / GeoIP2 City (and Enterprise): country, city, coordinates, anycast flag."""

    layout: ClassVar[MmdbLayout] = "maxmind"
    kinds: ClassVar[frozenset[MmdbKind]] = frozenset({"city"})

    def _facts(self, record: dict[str, Record], ip: IPAddress, prefix_len: int) -> MmdbFacts:
        model = geoip2.models.City(
            _LOCALES, ip_address=ip, prefix_len=prefix_len, **_model_args(record)
        )
        traits = model.traits
        return MmdbFacts(
            self.source,
            found=True,
            prefix_len=prefix_len,
            country=_country_code(model.country.iso_code),
            city=model.city.name or None,
            latitude=model.location.latitude,
            longitude=model.location.longitude,
            # GeoIP2 Enterprise and City-with-ISP records carry the AS in their traits.
            asn=traits.autonomous_system_number,
            as_org=traits.autonomous_system_organization,
            anycast=bool(traits.is_anycast),
        )


class MaxMindCountryReader(MmdbReader):
    """GeoLite2 / GeoIP2 Country: country and anycast flag."""

    layout: ClassVar[MmdbLayout] = "maxmind"
    kinds: ClassVar[frozenset[MmdbKind]] = frozenset({"country"})

    def _facts(self, record: dict[str, Record], ip: IPAddress, prefix_len: int) -> MmdbFacts:
        model = geoip2.models.Country(
            _LOCALES, ip_address=ip, prefix_len=prefix_len, **_model_args(record)
        )
        return MmdbFacts(
            self.source,
            found=True,
            prefix_len=prefix_len,
            country=_country_code(model.country.iso_code),
            anycast=bool(model.traits.is_anycast),
        )


class MaxMindAsnReader(MmdbReader):
    """GeoLite2 ASN and GeoIP2 ISP: autonomous system number and organisation."""

    layout: ClassVar[MmdbLayout] = "maxmind"
    kinds: ClassVar[frozenset[MmdbKind]] = frozenset({"asn"})

    def _facts(self, record: dict[str, Record], ip: IPAddress, prefix_len: int) -> MmdbFacts:
        model = geoip2.models.ASN(ip, prefix_len=prefix_len, **_model_args(record))
        return MmdbFacts(
            self.source,
            found=True,
            prefix_len=prefix_len,
            asn=_asn_number(model.autonomous_system_number),
            as_org=model.autonomous_system_organization or None,
        )


class DbipCityReader(MaxMindCityReader):
    """DB-IP City Lite: the GeoIP2 City layout without accuracy radius, postal code or traits."""

    layout: ClassVar[MmdbLayout] = "dbip"


class DbipCountryReader(MaxMindCountryReader):
    """DB-IP Country Lite: the GeoIP2 Country layout (``is_in_european_union`` always set)."""

    layout: ClassVar[MmdbLayout] = "dbip"


class DbipAsnReader(MaxMindAsnReader):
    """DB-IP ASN Lite: the GeoLite2-ASN layout (DB-IP says so: ``compat=GeoLite2-ASN``)."""

    layout: ClassVar[MmdbLayout] = "dbip"


class IpinfoReader(MmdbReader):
    """IPinfo Lite (and its older free ``country_asn``/``asn`` files): one flat map per network.

    Fields read: ``country_code`` (or, in the older files, a two-letter ``country``), ``asn``
    as text (``"AS15169"``), ``as_name`` (or ``name``).
    """

    layout: ClassVar[MmdbLayout] = "ipinfo"
    kinds: ClassVar[frozenset[MmdbKind]] = frozenset({"country", "asn", "country-asn"})

    def _facts(self, record: dict[str, Record], ip: IPAddress, prefix_len: int) -> MmdbFacts:
        country = record.get("country_code")
        if country is None:
            legacy = record.get("country")
            country = legacy if isinstance(legacy, str) and len(legacy) == 2 else None
        org = record.get("as_name", record.get("name"))
        return MmdbFacts(
            self.source,
            found=True,
            prefix_len=prefix_len,
            country=_country_code(country),
            asn=_asn_number(record.get("asn")),
            as_org=org if isinstance(org, str) and org else None,
        )


READERS: Mapping[tuple[MmdbLayout, MmdbKind], type[MmdbReader]] = {
    ("maxmind", "city"): MaxMindCityReader,
    ("maxmind", "country"): MaxMindCountryReader,
    ("maxmind", "asn"): MaxMindAsnReader,
    ("dbip", "city"): DbipCityReader,
    ("dbip", "country"): DbipCountryReader,
    ("dbip", "asn"): DbipAsnReader,
    ("ipinfo", "country"): IpinfoReader,
    ("ipinfo", "asn"): IpinfoReader,
    ("ipinfo", "country-asn"): IpinfoReader,
}
"""The reader class for each (layout, kind)."""

_COUNTRY_CODE = re.compile(r"[A-Z]{2}")
_AS_TEXT = re.compile(r"(?:AS)?([0-9]{1,10})", re.IGNORECASE)


def _country_code(value: object) -> str | None:
    if isinstance(value, str) and _COUNTRY_CODE.fullmatch(value):
        return value
    return None


def _asn_number(value: object) -> int | None:
    """An AS number from an integer or from text such as ``AS15169``; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (m := _AS_TEXT.fullmatch(value.strip())):
        number = int(m.group(1))
    else:
        return None
    return number if 0 < number < 2**32 else None


# -- telling what a database is ---------------------------------------------------------------


def kind_from_type(database_type: str) -> tuple[MmdbLayout, MmdbKind | None] | None:
    """Layout and kind named by a ``database_type``; kind None for a known vendor's other
    products (e.g. ``GeoIP2-Anonymous-IP``); None for a vendor this module does not know."""
    if database_type.lower().startswith("ipinfo"):
        return "ipinfo", None  # IPinfo's kind is read from its records
    layout: MmdbLayout
    if database_type.startswith(("GeoLite2-", "GeoIP2-", "GeoIP-")):
        layout = "maxmind"
    elif database_type.startswith("DBIP-"):
        layout = "dbip"
    else:
        return None
    # Enterprise first: DB-IP's "DBIP-Location-ISP (compat=Enterprise)" is a City layout.
    if any(word in database_type for word in ("City", "Enterprise", "Location")):
        return layout, "city"
    if "ASN" in database_type or "ISP" in database_type:
        return layout, "asn"
    if "Country" in database_type:
        return layout, "country"
    return layout, None


def kind_from_records(
    records: list[dict[str, Record]],
) -> tuple[Literal["geoip2", "ipinfo"], MmdbKind] | None:
    """The layout family and kind the records have, or None when they match no layout."""
    if not records:
        return None
    if all("autonomous_system_number" in r for r in records):
        return "geoip2", "asn"
    if all(
        any(isinstance(r.get(key), dict) for key in ("country", "registered_country", "continent"))
        for r in records
    ):
        city = any("city" in r or "location" in r for r in records)
        return "geoip2", "city" if city else "country"
    flat = [r for r in records if not any(isinstance(v, dict | list) for v in r.values())]
    if len(flat) == len(records):
        has_country = any("country_code" in r or "country" in r for r in records)
        has_asn = any("asn" in r for r in records)
        if has_country and has_asn:
            return "ipinfo", "country-asn"
        if has_country:
            return "ipinfo", "country"
        if has_asn:
            return "ipinfo", "asn"
    return None


def _describe(records: list[dict[str, Record]]) -> str:
    keys = sorted({key for record in records for key in record})
    return f"records with fields {', '.join(keys)!s}" if keys else "empty records"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_mmdb(path: str | Path, *, safe: bool = False) -> MmdbReader:
    """Open one database and return the reader for its layout.

    The checks run on ``maxminddb``'s pure-Python reader, whose decoder bounds its work and
    raises on bad data, and on a bounded walk of the search tree (:func:`probe_records`), so a
    damaged file gives an error here, never a crash or a hang. Lookups then use the C extension
    where it is installed; ``safe=True`` keeps them on the pure-Python reader, which is 15 to 40
    times slower but cannot crash on a data section damaged past the probed records (the C
    extension can: see the project notes).

    Raises :class:`MmdbFileError` (with ``path``) when the file cannot be opened or decoded, or
    is of a kind or layout this module does not read; the message says what was seen.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        msg = "not a regular file"
        raise MmdbFileError(msg, path=where)
    try:
        checker = maxminddb.open_database(where, maxminddb.MODE_MMAP)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError, TypeError, LookupError) as exc:
        msg = f"not a readable MaxMind DB: {exc}"
        raise MmdbFileError(msg, path=where) from exc
    try:
        meta = checker.metadata()
        records = probe_records(path, meta)
    except (OSError, ValueError) as exc:
        msg = f"cannot read: {exc}"
        raise MmdbFileError(msg, path=where) from exc
    finally:
        checker.close()
    layout, kind, detected_by = _layout(str(meta.database_type), records, where)
    try:
        sha = _sha256(path)
        db = maxminddb.open_database(where, maxminddb.MODE_MMAP if safe else maxminddb.MODE_AUTO)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        msg = f"cannot read: {exc}"
        raise MmdbFileError(msg, path=where) from exc
    info = MmdbInfo(
        path=where,
        kind=kind,
        layout=layout,
        database_type=str(meta.database_type),
        built=datetime.fromtimestamp(int(meta.build_epoch), tz=UTC),
        sha256=sha,
        ip_version=int(meta.ip_version),
        detected_by=detected_by,
    )
    return READERS[layout, kind](db, info)


def probe_records(
    path: Path, meta: Metadata, limit: int = PROBE_RECORDS
) -> list[dict[str, Record]]:
    """The first ``limit`` distinct records of the database's search tree, in address order.

    A cursor over the file's bytes walks the tree depth first, at most :data:`PROBE_NODES`
    nodes and never deeper than an address is long; ``maxminddb``'s own iterator has neither
    bound, so a damaged tree could send it down an exponential number of paths. Records are
    decoded by ``maxminddb``'s pure-Python decoder, which bounds its own work. Raises
    :class:`MmdbFileError` for a damaged tree or record, or when the walk finds no record.
    """
    where = str(path)

    def corrupt(problem: str) -> MmdbFileError:
        return MmdbFileError(f"corrupt: {problem}", path=where)

    node_count, record_size = int(meta.node_count), int(meta.record_size)
    if record_size not in (24, 28, 32):
        msg = f"record size {record_size} (24, 28 or 32 expected)"
        raise corrupt(msg)
    bits = 128 if meta.ip_version == 6 else 32
    node_bytes = record_size // 4
    tree_size = node_count * node_bytes
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if tree_size + 16 > len(buf):
            msg = "search tree larger than the file"
            raise corrupt(msg)

        def child(node: int, right: int) -> int:
            base = node * node_bytes
            if record_size == 24:
                return int.from_bytes(buf[base + 3 * right : base + 3 * right + 3], "big")
            if record_size == 32:
                return int.from_bytes(buf[base + 4 * right : base + 4 * right + 4], "big")
            # 28 bits: the middle byte's high nibble belongs to the left record.
            if right:
                return int.from_bytes(buf[base + 3 : base + 7], "big") & 0x0FFFFFFF
            word = int.from_bytes(buf[base : base + 4], "big")
            return (word >> 8) | ((word & 0xF0) << 20)

        offsets: list[int] = []
        seen: set[int] = set()
        stack = [(0, 0)]
        visits = 0
        while stack and len(offsets) < limit and visits < PROBE_NODES:
            node, depth = stack.pop()
            visits += 1
            if depth >= bits:
                msg = f"search tree deeper than a {bits}-bit address"
                raise corrupt(msg)
            for right in (1, 0):  # the left branch (lower addresses) is popped first
                record = child(node, right)
                if record < node_count:
                    stack.append((record, depth + 1))
                elif record > node_count:
                    offset = record - node_count + tree_size
                    if offset >= len(buf):
                        msg = "search tree points past the end of the file"
                        raise corrupt(msg)
                    if offset not in seen:
                        seen.add(offset)
                        offsets.append(offset)
        if not offsets:
            msg = f"holds no records (walked {visits} search-tree nodes)"
            raise MmdbFileError(msg, path=where)
        decoder = Decoder(buf, tree_size + 16)
        records: list[dict[str, Record]] = []
        for offset in sorted(offsets)[:limit]:
            try:
                value, _ = decoder.decode(offset)
            except (maxminddb.InvalidDatabaseError, ValueError, LookupError, TypeError) as exc:
                msg = f"a record does not decode ({exc})"
                raise corrupt(msg) from exc
            if not isinstance(value, dict):
                msg = f"records that are {type(value).__name__}, not maps; layout not read"
                raise MmdbFileError(msg, path=where)
            records.append(value)
        return records


def _layout(
    database_type: str, records: list[dict[str, Record]], where: str
) -> tuple[MmdbLayout, MmdbKind, Literal["database_type", "record layout"]]:
    """Layout, kind and how they were told, from the metadata and the probed records."""
    by_type = kind_from_type(database_type)
    by_records = kind_from_records(records)
    if by_type is not None and by_type[0] != "ipinfo" and by_type[1] is None:
        msg = f"{database_type!r} is not a location or AS database; not read"
        raise MmdbFileError(msg, path=where)
    if by_records is None:
        msg = f"{database_type!r}: {_describe(records)} match no layout read here"
        raise MmdbFileError(msg, path=where)
    family, kind = by_records
    if by_type is None:
        return ("ipinfo" if family == "ipinfo" else "maxmind"), kind, "record layout"
    layout, named = by_type
    agrees = (layout == "ipinfo") == (family == "ipinfo") and named in (None, kind)
    # A City database whose first records are all country-level is still a City database.
    agrees = agrees or (named == "city" and kind == "country")
    if not agrees:
        msg = (
            f"database_type {database_type!r} says {layout} {named}, but the records look "
            f"like {'IPinfo' if family == 'ipinfo' else 'GeoIP2'} {kind}; not read"
        )
        raise MmdbFileError(msg, path=where)
    return layout, named or kind, "database_type"


def load_mmdbs(
    geo_dir: str | Path, *, safe: bool = False
) -> tuple[list[MmdbReader], list[tuple[str, str]]]:
    """Open every ``*.mmdb`` directly in ``geo_dir`` (sorted by name); ``safe`` as in
    :func:`open_mmdb`.

    Returns the readers and, for each file not used, ``(path, reason)``. Never raises: a missing
    folder gives two empty lists.
    """
    folder = Path(geo_dir)
    try:
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(".mmdb"))
    except OSError:
        return [], []
    readers: list[MmdbReader] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        try:
            readers.append(open_mmdb(path, safe=safe))
        except MmdbFileError as exc:
            skipped.append((str(path), exc.problem))
        except Exception as exc:  # a broken file must not stop the others, whatever it raises
            skipped.append((str(path), f"unexpected {type(exc).__name__}: {exc}"))
    return readers, skipped
