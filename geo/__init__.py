"""Knowledge: which endpoint is this, and where is it.

The provider register, cloud region tables and IP intelligence. Input: a host name and/or an IP;
output: a ``Destination``. Knows nothing of packets or policy.

What exists so far::

    from geo import HostMatcher, load_register

    matcher = HostMatcher(load_register())          # packaged register.toml and regions.csv
    result = matcher.match("bedrock-runtime.eu-central-1.amazonaws.com")
    if result.matched:
        result.provider.id, result.endpoint.role, result.region, result.inference
        # ('aws', 'inference', 'eu-central-1', ('DE',))
    looks_like_ai_api("llm-gateway.corp.example")  # True: the policy's unknown_ai

    intel = IpIntel.from_dir("geo/sample")          # *.mmdb and cloud range files; none: empty
    facts = intel.lookup("3.124.0.20")
    facts.country, facts.asn, facts.region, facts.anycast, facts.sources["country"]
        # ('DE', 16509, 'eu-central-1', False, 'aws-ip-ranges.json (region eu-central-1)')
"""

from geo.errors import (
    GeoError,
    IpDataError,
    MmdbFileError,
    RangeFileError,
    RegionTableError,
    RegisterError,
)
from geo.hosts import HostMatch, HostMatcher, NoMatch, looks_like_ai_api
from geo.ipintel import DataFile, IpFacts, IpIntel, Skipped
from geo.mmdb import MmdbFacts, MmdbInfo, MmdbReader, load_mmdbs, open_mmdb
from geo.patterns import normalize_host
from geo.ranges import CloudRange, RangeFile, RangeTable, load_ranges
from geo.regions import Region, RegionTable, load_regions
from geo.register import Endpoint, Provider, Register, SharedHost, load_register

__all__ = [
    "CloudRange",
    "DataFile",
    "Endpoint",
    "GeoError",
    "HostMatch",
    "HostMatcher",
    "IpDataError",
    "IpFacts",
    "IpIntel",
    "MmdbFacts",
    "MmdbFileError",
    "MmdbInfo",
    "MmdbReader",
    "NoMatch",
    "Provider",
    "RangeFile",
    "RangeFileError",
    "RangeTable",
    "Region",
    "RegionTable",
    "RegionTableError",
    "Register",
    "RegisterError",
    "SharedHost",
    "Skipped",
    "load_mmdbs",
    "load_ranges",
    "load_regions",
    "load_register",
    "looks_like_ai_api",
    "normalize_host",
    "open_mmdb",
]
