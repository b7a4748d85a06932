"""Cloud providers' published IP ranges: one parser per format, and a longest-prefix table.

The geo folder holds each provider's own file under its usual name (:data:`RANGE_FILES`); each
parser turns one into :class:`CloudRange` records, and :class:`RangeTable` answers "which
published range holds this address" with the most specific one.

Formats, as published:

``aws-ip-ranges.json`` (https://ip-ranges.amazonaws.com/ip-ranges.json)
    ``prefixes[]`` with ``ip_prefix``, ``ipv6_prefixes[]`` with ``ipv6_prefix``; each with
    ``region``, ``service``, ``network_border_group``. ``createDate``, ``syncToken``.
``gcp-cloud.json`` (https://www.gstatic.com/ipranges/cloud.json)
    ``prefixes[]`` with ``ipv4Prefix`` or ``ipv6Prefix``, ``scope`` (a region or ``global``),
    ``service``. ``creationTime``, ``syncToken``.
``azure-service-tags.json`` (ServiceTags_Public_YYYYMMDD.json)
    ``values[]``: ``name`` and ``properties`` with ``region`` (empty for a tag that is not
    regional), ``systemService``, ``addressPrefixes[]``. ``changeNumber``.
``oci-public-ip-ranges.json`` (https://docs.oracle.com/iaas/tools/public_ip_ranges.json)
    ``regions[]``: ``region`` and ``cidrs[]`` with ``cidr`` and ``tags[]`` (``OCI``, ``OSN``,
    ``OBJECT_STORAGE``). ``last_updated_timestamp``.
``cloudflare-ips-v4.txt``, ``cloudflare-ips-v6.txt`` (https://www.cloudflare.com/ips-v4 / -v6)
    one CIDR per line.

**Anycast**, i.e. the address is announced from many places so its location says little:

- Cloudflare: every published range (Cloudflare serves all of them from every data centre).
- AWS: service ``CLOUDFRONT`` or ``GLOBALACCELERATOR``, and any entry whose region is
  ``GLOBAL`` (edge services such as CloudFront and Route 53 that belong to no region).
  ``CLOUDFRONT_ORIGIN_FACING`` is not anycast: those are the addresses CloudFront reaches
  origins from.
- GCP: scope ``global`` (the global external load balancers' addresses, served from Google's edge).
- Azure: the tag ``AzureFrontDoor.Frontend``. A tag with an empty region is *not* thereby anycast:
  ``AzureCloud`` (region ``""``) covers all of Azure's regional address space.
- OCI: none.

**Region**: AWS ``GLOBAL`` and an empty region (Azure) or scope ``global`` (GCP) give None. An
AWS entry whose ``network_border_group`` differs from its region lies in a Local Zone or
Wavelength Zone (``us-east-1-bue-1`` is Buenos Aires, under ``us-east-1``): the region is kept
and the zone is given in ``zone``, so that nobody takes the parent region's country for it.

**Several entries for one prefix** (AWS lists most prefixes twice, as ``AMAZON`` and as, say,
``EC2``; Azure lists one prefix in a regional ``AzureCloud.<region>`` tag and in service tags):
they merge into one record. The service is the most specific one (not AWS's ``AMAZON``, not
OCI's ``OCI``, not an Azure tag without a ``systemService``; among equals the first in the
file); the region is kept from whichever entry names one; the record is anycast if any entry is.

**Longest prefix wins.** A range that names no region and is not anycast takes the region of the
longest shorter range of the same cloud that holds it (``region_network`` says which), so a
global Azure service tag inside a regional ``AzureCloud`` block keeps that block's region.

The table keeps, per address family, one dictionary per prefix length present (network integer
shifted right to the prefix -> record) and tries the lengths from longest to shortest: a lookup
costs one dictionary access per distinct length (about 25 for IPv4, 40 for IPv6 with the full
AWS and Azure files), a few microseconds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geo.errors import RangeFileError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PROBLEMS = 10
"""How many bad entries a :class:`RangeFile` describes (all are counted in ``dropped``)."""


@dataclass(frozen=True, slots=True)
class CloudRange:
    """One published range of one cloud, after merging the entries that list the same prefix."""

    cloud: str
    """Whose range: ``aws``, ``gcp``, ``azure``, ``oci`` (the region table's cloud ids) or
    ``cloudflare``."""
    network: Network
    """The published prefix."""
    region: str | None
    """The provider's region code (``eu-central-1``, ``europe-west4``, ``westeurope``,
    ``eu-frankfurt-1``), or None for a global or unregioned range."""
    service: str | None
    """The most specific service named (``EC2``, ``AzureStorage``, ``OBJECT_STORAGE``), or None."""
    anycast: bool
    """The range is announced from many places (see the module docstring for each rule)."""
    anycast_rule: str | None
    """Which rule made it anycast, e.g. ``AWS service CLOUDFRONT``; None when not anycast."""
    zone: str | None
    """AWS ``network_border_group`` when it is not the region itself (a Local or Wavelength
    Zone, which may be in another city or country than its parent region)."""
    source: str
    """File name the range came from, e.g. ``aws-ip-ranges.json``."""
    region_network: Network | None = None
    """When ``region`` was taken from a shorter range that holds this one: that range."""


@dataclass(frozen=True, slots=True)
class RangeFile:
    """One parsed range file."""

    source: str
    """File name, e.g. ``aws-ip-ranges.json``."""
    cloud: str
    """Whose ranges (see :attr:`CloudRange.cloud`)."""
    ranges: tuple[CloudRange, ...]
    """Every usable entry, unmerged, in file order."""
    built: datetime | None
    """When the provider generated the file (AWS ``createDate``, GCP ``creationTime``, OCI
    ``last_updated_timestamp``); None when the format has no date (Azure, Cloudflare)."""
    version: str | None
    """The provider's version stamp (AWS/GCP ``syncToken``, Azure ``changeNumber``), or None."""
    dropped: int = 0
    """Entries left out because their prefix or fields were unusable."""
    problems: tuple[str, ...] = ()
    """The first :data:`MAX_PROBLEMS` of those, described."""
    path: str | None = None
    """The file, when read from disk."""
    sha256: str | None = None
    """SHA-256 of the file, hex, when read from disk."""


class _Collector:
    """Ranges of one file being parsed, with its bad entries counted and described."""

    def __init__(self, source: str, cloud: str) -> None:
        self.source = source
        self.cloud = cloud
        self.ranges: list[CloudRange] = []
        self.dropped = 0
        self.problems: list[str] = []
        # The big files list one prefix under many tags (Azure: AzureCloud, AzureCloud.<region>,
        # the service tag and its regional twin): parse each text once.
        self._networks: dict[str, Network] = {}

    def bad(self, problem: str) -> None:
        self.dropped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def add(
        self,
        prefix: object,
        where: str,
        item: int | None = None,
        *,
        region: str | None = None,
        service: str | None = None,
        anycast_rule: str | None = None,
        zone: str | None = None,
    ) -> None:
        """One entry; ``where`` (and ``item``, an index into it) locate it for a problem."""
        network = self._networks.get(prefix) if isinstance(prefix, str) else None
        if network is None:
            if not isinstance(prefix, str):
                self.bad(f"{_where(where, item)}: prefix {prefix!r} is not text")
                return
            try:
                network = _parse_network(prefix)
            except ValueError:
                self.bad(f"{_where(where, item)}: {prefix!r} is not a network")
                return
            self._networks[prefix] = network
        self.ranges.append(
            CloudRange(
                cloud=self.cloud,
                network=network,
                region=region or None,
                service=service or None,
                anycast=anycast_rule is not None,
                anycast_rule=anycast_rule,
                zone=zone,
                source=self.source,
            )
        )

    def done(self, *, built: datetime | None, version: str | None) -> RangeFile:
        if not self.ranges:
            detail = f" ({'; '.join(self.problems)})" if self.problems else ""
            msg = f"no usable {self.cloud} ranges{detail}"
            raise RangeFileError(msg, path=self.source)
        return RangeFile(
            source=self.source,
            cloud=self.cloud,
            ranges=tuple(self.ranges),
            built=built,
            version=version,
            dropped=self.dropped,
            problems=tuple(self.problems),
        )


def _where(where: str, item: int | None) -> str:
    return where if item is None else f"{where}[{item}]"


def _parse_network(text: str) -> Network:
    """A CIDR, host bits allowed (cleared); ValueError when it is not one."""
    return ipaddress.ip_network(text.strip(), strict=False)


def _text(data: str | bytes, source: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        # Microsoft's service tags file starts with a byte order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"not UTF-8 text: {exc}"
        raise RangeFileError(msg, path=source) from exc


def _json_object(data: str | bytes, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(_text(data, source))
    except (ValueError, RecursionError) as exc:
        msg = f"not JSON: {exc}"
        raise RangeFileError(msg, path=source) from exc
    if not isinstance(doc, dict):
        msg = f"expected a JSON object, got {type(doc).__name__}"
        raise RangeFileError(msg, path=source)
    return doc


def _list(doc: Mapping[str, Any], key: str, source: str, what: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        msg = f"no {key!r} list: not {what}"
        raise RangeFileError(msg, path=source)
    return value


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _timestamp(value: object, fmt: str | None = None) -> datetime | None:
    """A provider's timestamp as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        when = (
            datetime.strptime(value, fmt)  # naive by format; UTC is set below
            if fmt
            else datetime.fromisoformat(value.replace("Z", "+00:00"))
        )
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# -- parsers ----------------------------------------------------------------------------------

_AWS_ANYCAST_SERVICES = frozenset({"CLOUDFRONT", "GLOBALACCELERATOR"})


def parse_aws(data: str | bytes, source: str = "aws-ip-ranges.json") -> RangeFile:
    """Parse AWS ``ip-ranges.json``. Raises :class:`RangeFileError` for another format."""
    doc = _json_object(data, source)
    out = _Collector(source, "aws")
    for key, prefix_key in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        entries = _list(doc, key, source, "AWS ip-ranges.json") if key == "prefixes" else None
        if entries is None:
            value = doc.get(key, [])
            entries = value if isinstance(value, list) else []
        for n, entry in enumerate(entries):
            where = f"{key}[{n}]"
            if not isinstance(entry, dict):
                out.bad(f"{where}: not an object")
                continue
            region = _str(entry.get("region")) or ""
            service = _str(entry.get("service")) or ""
            border = _str(entry.get("network_border_group")) or ""
            rule = None
            if service in _AWS_ANYCAST_SERVICES:
                rule = f"AWS service {service}"
            elif region == "GLOBAL":
                rule = "AWS region GLOBAL"
            regional = region if region and region != "GLOBAL" else None
            out.add(
                entry.get(prefix_key),
                key,
                n,
                region=regional,
                service=service,
                anycast_rule=rule,
                zone=border if regional and border and border != regional else None,
            )
    return out.done(
        built=_timestamp(doc.get("createDate"), "%Y-%m-%d-%H-%M-%S"),
        version=_str(doc.get("syncToken")),
    )


def parse_gcp(data: str | bytes, source: str = "gcp-cloud.json") -> RangeFile:
    """Parse Google Cloud's ``cloud.json``. Raises :class:`RangeFileError` for another format."""
    doc = _json_object(data, source)
    out = _Collector(source, "gcp")
    for n, entry in enumerate(_list(doc, "prefixes", source, "Google cloud.json")):
        where = f"prefixes[{n}]"
        if not isinstance(entry, dict):
            out.bad(f"{where}: not an object")
            continue
        scope = _str(entry.get("scope")) or ""
        is_global = scope.lower() == "global"
        out.add(
            entry.get("ipv4Prefix", entry.get("ipv6Prefix")),
            "prefixes",
            n,
            region=None if is_global else scope,
            service=_str(entry.get("service")),
            anycast_rule="GCP scope global" if is_global else None,
        )
    return out.done(built=_timestamp(doc.get("creationTime")), version=_str(doc.get("syncToken")))


_AZURE_ANYCAST_TAGS = frozenset({"AzureFrontDoor.Frontend"})


def parse_azure(data: str | bytes, source: str = "azure-service-tags.json") -> RangeFile:
    """Parse Azure's ``ServiceTags_Public`` JSON. Raises :class:`RangeFileError` otherwise."""
    doc = _json_object(data, source)
    out = _Collector(source, "azure")
    for n, tag in enumerate(_list(doc, "values", source, "Azure service tags")):
        where = f"values[{n}]"
        props = tag.get("properties") if isinstance(tag, dict) else None
        if not isinstance(tag, dict) or not isinstance(props, dict):
            out.bad(f"{where}: no properties")
            continue
        name = _str(tag.get("name")) or _str(tag.get("id")) or ""
        region = (_str(props.get("region")) or "").lower()
        service = _str(props.get("systemService")) or ""
        # "Storage.WestEurope" names a region; "AzureFrontDoor.Frontend" names a part of the
        # service, which is worth keeping.
        _, dot, part = name.partition(".")
        if service and dot and part.lower() != region:
            service = name
        rule = f"Azure tag {name}" if name in _AZURE_ANYCAST_TAGS else None
        prefixes = props.get("addressPrefixes")
        if not isinstance(prefixes, list):
            out.bad(f"{where} ({name}): no addressPrefixes list")
            continue
        listed = f"{where} ({name}).addressPrefixes"
        for m, prefix in enumerate(prefixes):
            out.add(
                prefix,
                listed,
                m,
                region=region,
                service=service,
                anycast_rule=rule,
            )
    change = doc.get("changeNumber")
    return out.done(built=None, version=str(change) if isinstance(change, int | str) else None)


_OCI_TAG_ORDER = ("OBJECT_STORAGE", "OSN", "OCI")  # most specific first


def parse_oci(data: str | bytes, source: str = "oci-public-ip-ranges.json") -> RangeFile:
    """Parse Oracle Cloud's ``public_ip_ranges.json``. Raises :class:`RangeFileError` otherwise."""
    doc = _json_object(data, source)
    out = _Collector(source, "oci")
    for n, block in enumerate(_list(doc, "regions", source, "OCI public_ip_ranges.json")):
        where = f"regions[{n}]"
        cidrs = block.get("cidrs") if isinstance(block, dict) else None
        if not isinstance(block, dict) or not isinstance(cidrs, list):
            out.bad(f"{where}: no cidrs list")
            continue
        region = _str(block.get("region")) or ""
        for m, entry in enumerate(cidrs):
            if not isinstance(entry, dict):
                out.bad(f"{where}.cidrs[{m}]: not an object")
                continue
            raw_tags = entry.get("tags")
            tags = [t for t in raw_tags if isinstance(t, str)] if isinstance(raw_tags, list) else []
            ranked = sorted(
                tags, key=lambda t: _OCI_TAG_ORDER.index(t) if t in _OCI_TAG_ORDER else -1
            )
            out.add(
                entry.get("cidr"),
                f"{where}.cidrs",
                m,
                region=region.lower(),
                service=ranked[0] if ranked else None,
            )
    return out.done(built=_timestamp(doc.get("last_updated_timestamp")), version=None)


def parse_cloudflare(data: str | bytes, source: str = "cloudflare-ips-v4.txt") -> RangeFile:
    """Parse Cloudflare's ``ips-v4`` / ``ips-v6`` list (one CIDR per line; ``#`` comments)."""
    out = _Collector(source, "cloudflare")
    text = _text(data, source)
    if text.lstrip().startswith(("{", "[", "<")):
        msg = "expected one CIDR per line, got JSON or HTML"
        raise RangeFileError(msg, path=source)
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(line, f"line {n}", anycast_rule="Cloudflare ranges are anycast")
    return out.done(built=None, version=None)


Parser = Callable[[str | bytes, str], RangeFile]

RANGE_FILES: Mapping[str, Parser] = {
    "aws-ip-ranges.json": parse_aws,
    "gcp-cloud.json": parse_gcp,
    "azure-service-tags.json": parse_azure,
    "oci-public-ip-ranges.json": parse_oci,
    "cloudflare-ips-v4.txt": parse_cloudflare,
    "cloudflare-ips-v6.txt": parse_cloudflare,
}
"""The file names looked for in the geo folder, and the parser of each."""


def read_range_file(path: str | Path) -> RangeFile:
    """Read and parse one range file, choosing the parser by its usual name.

    Raises :class:`RangeFileError` (with ``path``) when it is unreadable or not in the format.
    """
    path = Path(path)
    parser = RANGE_FILES.get(path.name)
    if parser is None:
        msg = f"not a known range file name (known: {', '.join(RANGE_FILES)})"
        raise RangeFileError(msg, path=str(path))
    if not path.is_file():
        msg = "not a regular file"
        raise RangeFileError(msg, path=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read: {exc.strerror or exc}"
        raise RangeFileError(msg, path=str(path)) from exc
    try:
        parsed = parser(data, path.name)
    except RangeFileError as exc:
        raise RangeFileError(exc.problem, path=str(path)) from exc
    return replace(parsed, path=str(path), sha256=hashlib.sha256(data).hexdigest())


def load_ranges(geo_dir: str | Path) -> tuple[list[RangeFile], list[tuple[str, str]]]:
    """Parse every known range file present in ``geo_dir``.

    Returns the parsed files and, for each present file not used, ``(path, reason)``. Never
    raises: a missing folder or file is simply absent from both lists.
    """
    folder = Path(geo_dir)
    files: list[RangeFile] = []
    skipped: list[tuple[str, str]] = []
    for name in RANGE_FILES:
        path = folder / name
        try:
            if not path.exists():
                continue
            files.append(read_range_file(path))
        except RangeFileError as exc:
            skipped.append((str(path), exc.problem))
        except Exception as exc:  # a broken file must not stop the others, whatever it raises
            skipped.append((str(path), f"unexpected {type(exc).__name__}: {exc}"))
    return files, skipped


# -- longest-prefix match ---------------------------------------------------------------------

_GENERIC_SERVICES: Mapping[str, frozenset[str | None]] = {
    "aws": frozenset({None, "AMAZON"}),
    "oci": frozenset({None, "OCI"}),
}


def _specificity(r: CloudRange) -> tuple[int, int]:
    generic = _GENERIC_SERVICES.get(r.cloud, frozenset({None}))
    return (0 if r.service in generic else 1, 1 if r.region else 0)


def _merge(group: list[CloudRange]) -> CloudRange:
    """One record for several entries of the same prefix (see the module docstring)."""
    if len(group) == 1:
        return group[0]
    best = max(group, key=_specificity)  # max keeps the first of equals: file order
    located = best if best.region else next((r for r in group if r.region), None)
    flagged = best if best.anycast else next((r for r in group if r.anycast), None)
    return replace(
        best,
        region=located.region if located else None,
        zone=located.zone if located else None,
        anycast=flagged is not None,
        anycast_rule=flagged.anycast_rule if flagged else None,
    )


_Tables = list[tuple[int, dict[int, CloudRange]]]


class RangeTable:
    """Published ranges of any clouds; :meth:`lookup` returns the most specific that holds an IP."""

    __slots__ = ("_count", "_v4", "_v6")

    def __init__(self, ranges: Iterable[CloudRange] = ()) -> None:
        groups: dict[tuple[int, int, int], list[CloudRange]] = {}
        for r in ranges:
            net = r.network
            key = (
                net.version,
                net.prefixlen,
                int(net.network_address) >> (net.max_prefixlen - net.prefixlen),
            )
            groups.setdefault(key, []).append(r)
        by_family: dict[int, dict[int, dict[int, CloudRange]]] = {4: {}, 6: {}}
        for (version, plen, prefix), group in groups.items():
            by_family[version].setdefault(plen, {})[prefix] = _merge(group)
        self._count = len(groups)
        self._v4 = self._tables(by_family[4], 32)
        self._v6 = self._tables(by_family[6], 128)
        self._inherit_regions(self._v4, 32)
        self._inherit_regions(self._v6, 128)

    @staticmethod
    def _tables(by_len: dict[int, dict[int, CloudRange]], bits: int) -> _Tables:
        return [(bits - plen, by_len[plen]) for plen in sorted(by_len, reverse=True)]

    @staticmethod
    def _inherit_regions(tables: _Tables, bits: int) -> None:
        # Shortest prefixes first, so that a parent has its own region settled before its
        # children look at it.
        for i in range(len(tables) - 1, -1, -1):
            shift, table = tables[i]
            for key, r in table.items():
                if r.region is not None or r.anycast:
                    continue
                address = key << shift
                for parent_shift, parent_table in tables[i + 1 :]:
                    parent = parent_table.get(address >> parent_shift)
                    if parent is not None and parent.cloud == r.cloud and parent.region:
                        table[key] = replace(
                            r,
                            region=parent.region,
                            zone=parent.zone,
                            region_network=parent.network,
                        )
                        break

    @classmethod
    def from_files(cls, files: Iterable[RangeFile]) -> RangeTable:
        """One table of every range of ``files``; on a prefix listed by two files the first
        file's entries come first."""
        return cls(r for f in files for r in f.ranges)

    def lookup(self, ip: IPAddress | str) -> CloudRange | None:
        """The most specific range holding ``ip``, or None. IPv4-mapped IPv6 is looked up as
        IPv4; a malformed string raises ValueError."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip)
        if ip.version == 4:
            tables = self._v4
        else:
            mapped = ip.ipv4_mapped
            if mapped is not None:
                ip, tables = mapped, self._v4
            else:
                tables = self._v6
        n = int(ip)
        for shift, table in tables:
            hit = table.get(n >> shift)
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        """Distinct prefixes in the table."""
        return self._count

    def __iter__(self) -> Iterator[CloudRange]:
        for tables in (self._v4, self._v6):
            for _, table in tables:
                yield from table.values()
