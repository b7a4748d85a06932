"""Cloud region tables: which country and city a region code such as ``eu-central-1`` names.

The table is the CSV file ``geo/data/regions.csv`` (one row per cloud and region code). Each cloud
also has a *region syntax*, the shape of its region codes, which the host matcher uses to
recognise a ``{region}`` label in a host name such as
``bedrock-runtime.eu-central-1.amazonaws.com``.
The syntax is deliberately wider than the table: a region launched after the table was written
still matches the endpoint (and is reported), it just does not narrow the inference location.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from geo.countries import GLOBAL, GROUPS, ISO_ALPHA2
from geo.errors import RegionTableError

Scope = Literal["region", "multi-region", "global"]

# The shape of one cloud's region codes, as a regular expression for one DNS label (or the
# part of a label that {region} stands for). Keep these as narrow as the vendor's naming allows:
# a wide syntax (Azure's) is only safe inside a pattern whose other labels are literal.
REGION_SYNTAX: dict[str, str] = {
    # us-east-1, eu-central-2, us-gov-west-1, cn-northwest-1, ap-southeast-7, il-central-1
    "aws": r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}",
    # europe-west4, us-central1, northamerica-northeast2; Vertex AI multi-regions us, eu, global
    "gcp": r"(?:[a-z]+-[a-z]+[0-9]{1,2}|us|eu|global)",
    # swedencentral, eastus2, germanywestcentral, usgovvirginia
    "azure": r"[a-z]{4,}[0-9]?",
    # eu-frankfurt-1, us-chicago-1, uk-gov-london-1, eu-dcc-milan-1
    "oci": r"[a-z]{2}(?:-gov|-dcc)?-[a-z]+-[0-9]",
    # cn-beijing, cn-hongkong, ap-southeast-1, eu-central-1, us-east-1
    "alibaba": r"[a-z]{2}-[a-z]+(?:-[0-9])?",
    # us-south, eu-de, eu-gb, jp-tok, au-syd, ca-tor
    "ibm": r"[a-z]{2}-[a-z]{2,5}",
    # ap-guangzhou, ap-shanghai, ap-singapore, na-siliconvalley, eu-frankfurt
    "tencent": r"[a-z]{2}-[a-z]+",
    # xAI's own region names (us-east-1, eu-west-1): AWS-shaped, but not AWS regions
    "xai": r"[a-z]{2}-[a-z]+-[0-9]{1,2}",
}
"""Per cloud: a regular expression (no anchors) for one of its region codes."""

_COMPILED_SYNTAX = {cloud: re.compile(rx) for cloud, rx in REGION_SYNTAX.items()}

_COLUMNS = ("cloud", "code", "name", "city", "country", "lat", "lon", "scope", "source")
_COORD = re.compile(r"-?[0-9]{1,3}(?:\.[0-9]{1,2})?")


@dataclass(frozen=True, slots=True)
class Region:
    """One region code of one cloud, and where it is."""

    cloud: str
    """Whose region this is: ``aws``, ``gcp``, ``azure``, ``oci``, ``alibaba``, ``ibm``, ..."""
    code: str
    """The region code as it appears in host names, e.g. ``eu-central-1``, ``europe-west4``."""
    name: str
    """The provider's display name, e.g. ``Europe (Frankfurt)``."""
    city: str
    """City or area the provider names; empty for multi-region and global pseudo-locations."""
    country: str | None
    """ISO 3166-1 alpha-2 code, or a group (``EU``) for a multi-region; None for ``global``."""
    lat: float | None
    """Latitude of the city, 2 decimals; None for multi-region and global pseudo-locations."""
    lon: float | None
    """Longitude of the city, 2 decimals; None for multi-region and global pseudo-locations."""
    scope: Scope
    """``region`` (one place), ``multi-region`` (several regions of one country or group) or
    ``global`` (any region)."""
    source: str
    """URL of the provider's region list this row was taken from."""

    @property
    def locations(self) -> tuple[str, ...]:
        """Where processing in this region happens, in register vocabulary (``("DE",)``)."""
        if self.scope == "global" or self.country is None:
            return (GLOBAL,)
        return (self.country,)


class RegionTable:
    """Region codes of several clouds; ``lookup`` is a dictionary access."""

    __slots__ = ("_rows", "path")

    def __init__(self, regions: list[Region] | tuple[Region, ...], path: str | None = None) -> None:
        self._rows: dict[tuple[str, str], Region] = {}
        self.path = path
        for region in regions:
            key = (region.cloud, region.code)
            if key in self._rows:
                msg = f"duplicate region {region.cloud}/{region.code}"
                raise RegionTableError(msg, path=path)
            self._rows[key] = region

    def lookup(self, cloud: str, code: str) -> Region | None:
        """The region ``code`` of ``cloud`` (case-insensitive), or None when the table lacks it."""
        return self._rows.get((cloud, code.lower()))

    def clouds(self) -> frozenset[str]:
        """The clouds that have at least one row."""
        return frozenset(cloud for cloud, _ in self._rows)

    def __iter__(self) -> Iterator[Region]:
        return iter(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)


def region_syntax(cloud: str) -> re.Pattern[str]:
    """The compiled region-code syntax of ``cloud``; KeyError for an unknown cloud."""
    return _COMPILED_SYNTAX[cloud]


def _default_text() -> tuple[str, str]:
    ref = resources.files("geo") / "data" / "regions.csv"
    return ref.read_text(encoding="utf-8"), str(ref)


def load_regions(path: str | Path | None = None) -> RegionTable:
    """Read and validate a region table; the packaged ``geo/data/regions.csv`` by default.

    Raises :class:`RegionTableError` naming the file, the line and the bad value.
    """
    if path is None:
        text, where = _default_text()
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"cannot read region table: {exc.strerror or exc}"
            raise RegionTableError(msg, path=where) from exc
    return parse_regions(text, where)


def parse_regions(text: str, path: str = "<regions>") -> RegionTable:
    """Parse region-table CSV text (see :func:`load_regions`)."""
    rows = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        msg = "empty region table"
        raise RegionTableError(msg, path=path)
    reader = csv.reader(io.StringIO("\n".join(line for _, line in rows)))
    records = list(reader)
    header = tuple(records[0])
    if header != _COLUMNS:
        msg = f"header must be {','.join(_COLUMNS)!r}, got {','.join(header)!r}"
        raise RegionTableError(msg, path=path, line=rows[0][0])
    regions = [
        _parse_row(record, path, line_no)
        for (line_no, _), record in zip(rows[1:], records[1:], strict=True)
    ]
    return RegionTable(regions, path=path)


def _parse_row(record: list[str], path: str, line: int) -> Region:
    def fail(problem: str) -> RegionTableError:
        return RegionTableError(problem, path=path, line=line)

    if len(record) != len(_COLUMNS):
        msg = f"expected {len(_COLUMNS)} columns, got {len(record)}: {record!r}"
        raise fail(msg)
    cloud, code, name, city, country, lat, lon, scope, source = (c.strip() for c in record)
    if cloud not in REGION_SYNTAX:
        msg = f"unknown cloud {cloud!r} (known: {', '.join(sorted(REGION_SYNTAX))})"
        raise fail(msg)
    if not _COMPILED_SYNTAX[cloud].fullmatch(code):
        msg = f"region code {code!r} does not have the shape of a {cloud} region"
        raise fail(msg)
    if scope not in ("region", "multi-region", "global"):
        msg = f"scope must be region, multi-region or global, not {scope!r}"
        raise fail(msg)
    if not source.startswith("https://"):
        msg = f"source must be an https URL, not {source!r}"
        raise fail(msg)
    if scope == "global":
        if country or lat or lon:
            msg = "a global pseudo-region has no country or coordinates"
            raise fail(msg)
        return Region(cloud, code, name, city, None, None, None, "global", source)
    if country not in ISO_ALPHA2 and not (scope == "multi-region" and country in GROUPS):
        msg = f"country {country!r} is not an ISO 3166-1 alpha-2 code"
        raise fail(msg)
    if scope == "multi-region":
        if lat or lon:
            msg = "a multi-region has no single coordinates"
            raise fail(msg)
        return Region(cloud, code, name, city, country, None, None, "multi-region", source)
    if not city:
        msg = "a region needs its city"
        raise fail(msg)
    for label, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if not _COORD.fullmatch(value) or abs(float(value)) > limit:
            msg = f"{label} {value!r} is not a coordinate with at most 2 decimals"
            raise fail(msg)
    return Region(cloud, code, name, city, country, float(lat), float(lon), "region", source)
