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
"""

from geo.errors import GeoError, RegionTableError, RegisterError
from geo.hosts import HostMatch, HostMatcher, NoMatch, looks_like_ai_api
from geo.patterns import normalize_host
from geo.regions import Region, RegionTable, load_regions
from geo.register import Endpoint, Provider, Register, SharedHost, load_register

__all__ = [
    "Endpoint",
    "GeoError",
    "HostMatch",
    "HostMatcher",
    "NoMatch",
    "Provider",
    "Region",
    "RegionTable",
    "RegionTableError",
    "Register",
    "RegisterError",
    "SharedHost",
    "load_regions",
    "load_register",
    "looks_like_ai_api",
    "normalize_host",
]
