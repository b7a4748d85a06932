"""The provider register: which host names belong to which AI provider, and where they process.

The register is the reviewed data file ``geo/data/register.toml`` (its header comment documents
the format); this module loads it into frozen records and refuses data that breaks the schema,
naming the provider or endpoint and what is wrong. It does no matching: see :mod:`geo.hosts`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from geo.countries import GLOBAL, GROUPS, ISO_ALPHA2, UNKNOWN, is_concrete
from geo.errors import RegisterError
from geo.patterns import HostPattern, PatternError, normalize_host, parse_pattern

SCHEMA = 1
"""The register format version this module reads (top-level ``schema = 1``)."""

ROLES: frozenset[str] = frozenset(
    {"inference", "coding-tool", "gateway", "telemetry", "auth", "doh", "control-plane", "download"}
)
"""Endpoint roles: what traffic to the host carries (see the register header)."""

PROMPT_ROLES: frozenset[str] = frozenset({"inference", "coding-tool", "gateway"})
"""Roles whose traffic carries prompts or code; these must say where inference happens."""

KINDS: frozenset[str] = frozenset({"inference-api", "coding-tool", "gateway", "dns-resolver"})
"""Provider kinds."""

CONFIDENCE: frozenset[str] = frozenset({"documented", "third-party", "unverified"})
"""How well an endpoint's facts are established."""

OPTIONS: frozenset[str] = frozenset(
    {
        "regional-endpoints",
        "data-residency",
        "zdr",
        "cross-region-routing",
        "byok",
        "self-hosted",
        "private-link",
        "fips",
        "sovereign-cloud",
    }
)
"""Controls a provider offers for an endpoint (see the register header)."""

NARROW: frozenset[str] = frozenset({"region", "none"})
"""How a ``{region}`` in the host name narrows the inference location."""

Role = Literal[
    "inference", "coding-tool", "gateway", "telemetry", "auth", "doh", "control-plane", "download"
]
Confidence = Literal["documented", "third-party", "unverified"]

_PROVIDER_KEYS = {"id", "name", "home", "kinds", "source", "as_of", "notes", "endpoint"}
_REQUIRED_PROVIDER = {"id", "name", "home", "kinds", "source", "as_of", "endpoint"}
_ENDPOINT_KEYS = {
    "host",
    "product",
    "role",
    "inference",
    "storage",
    "region_cloud",
    "narrow",
    "region_inference",
    "region",
    "options",
    "confidence",
    "source",
    "as_of",
    "notes",
    "ips",
    "duplicate_ok",
}
_REQUIRED_ENDPOINT = {
    "host",
    "product",
    "role",
    "inference",
    "storage",
    "confidence",
    "source",
    "as_of",
}
_SHARED_KEYS = {"host", "used_by", "reason"}
_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One host name (or pattern) of a provider, and what the provider documents about it."""

    provider: str
    """Register id of the provider this endpoint belongs to."""
    host: str
    """Exact host name or pattern (``*``, ``**``, ``{region}``; see :mod:`geo.patterns`)."""
    product: str
    """The product or service the host serves, e.g. ``Amazon Bedrock runtime``."""
    role: Role
    """What the traffic carries: ``inference``, ``coding-tool``, ``gateway``, ``telemetry``,
    ``auth``, ``doh``, ``control-plane`` or ``download``."""
    inference: tuple[str, ...]
    """Where inference runs, per the provider: countries, groups, ``global`` or ``unknown``;
    empty for roles that carry no prompts."""
    storage: tuple[str, ...]
    """Where data at rest is kept, same vocabulary; empty when nothing is stored."""
    region_cloud: str | None
    """Whose region table resolves the ``{region}`` label; None when the host has none."""
    narrow: Literal["region", "none"]
    """``region``: a region in the host name pins inference to that region's country;
    ``none``: the region is reported but does not pin inference."""
    region_inference: tuple[tuple[str, tuple[str, ...]], ...]
    """Explicit per-region inference locations that override ``narrow`` (code, locations)."""
    region: str | None
    """For an exact host that names a geography in a label (``eu.api.openai.com``): that label."""
    options: tuple[str, ...]
    """Controls the provider offers: ``regional-endpoints``, ``data-residency``, ``zdr``, ..."""
    confidence: Confidence
    """``documented`` (vendor docs), ``third-party`` (host seen in third-party code or config
    only) or ``unverified`` (unconfirmed lead; never claims a location)."""
    source: str
    """URL of the document the facts were read in."""
    as_of: date
    """The date the entry was last checked against its source."""
    notes: str
    """Caveats a reviewer or an auditor needs, in prose."""
    ips: tuple[str, ...]
    """Addresses the operator publishes for the host (DNS resolvers), for IP matching."""
    duplicate_ok: bool
    """The host pattern deliberately repeats an earlier endpoint's; the earlier one matches."""

    def inference_for_region(self, code: str) -> tuple[str, ...] | None:
        """The explicit ``region_inference`` entry for ``code``, or None."""
        for region_code, locations in self.region_inference:
            if region_code == code:
                return locations
        return None

    @property
    def pattern(self) -> HostPattern:
        """The parsed host pattern (parsing again is cheap; the matcher keeps its own)."""
        return parse_pattern(self.host, self.region_cloud)


@dataclass(frozen=True, slots=True)
class Provider:
    """A company that operates AI endpoints (or public DNS resolvers), with its endpoints."""

    id: str
    """Register id (fixed by DESIGN.md for the main providers), e.g. ``openai``, ``deepseek``."""
    name: str
    """Display name, e.g. ``Zhipu AI (Z.ai)``."""
    home: str
    """ISO 3166-1 alpha-2 code of the company's home jurisdiction (where it is headquartered)."""
    kinds: tuple[str, ...]
    """What the company offers: ``inference-api``, ``coding-tool``, ``gateway``,
    ``dns-resolver``."""
    source: str
    """URL establishing who the company is and where it is based."""
    as_of: date
    """The date the entry was last reviewed."""
    notes: str
    """Caveats about the company (ownership, group structure), in prose."""
    endpoints: tuple[Endpoint, ...]
    """The provider's endpoints, in register order."""


@dataclass(frozen=True, slots=True)
class SharedHost:
    """A host an AI tool uses that must NOT be attributed to it (general-purpose or shared)."""

    host: str
    """Exact host name, e.g. ``github.com``, ``storage.googleapis.com``."""
    used_by: tuple[str, ...]
    """Provider ids whose tools are documented to contact this host."""
    reason: str
    """Why the host is not registered, e.g. ``all GitHub traffic, not only Copilot``."""


@dataclass(frozen=True, slots=True)
class Register:
    """The loaded provider register."""

    providers: tuple[Provider, ...]
    """All providers, in register order."""
    shared_hosts: tuple[SharedHost, ...]
    """Hosts deliberately left out because they are not specific to an AI product."""
    path: str
    """Where the register was read from."""
    _by_id: Mapping[str, Provider] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.id: p for p in self.providers})

    def provider(self, provider_id: str) -> Provider | None:
        """The provider with this id, or None."""
        return self._by_id.get(provider_id)

    def endpoints(self) -> Iterator[tuple[Provider, Endpoint]]:
        """Every (provider, endpoint) pair, in register order."""
        for provider in self.providers:
            for endpoint in provider.endpoints:
                yield provider, endpoint

    def ids(self) -> frozenset[str]:
        """All provider ids."""
        return frozenset(self._by_id)


def default_register_path() -> str:
    """Where the packaged register lives (for messages)."""
    return str(resources.files("geo") / "data" / "register.toml")


def load_register(path: str | Path | None = None) -> Register:
    """Load and validate the register; the packaged ``geo/data/register.toml`` by default.

    Raises :class:`RegisterError` naming the file, the provider or endpoint, and what is wrong.
    """
    if path is None:
        ref = resources.files("geo") / "data" / "register.toml"
        where = str(ref)
        raw = ref.read_bytes()
    else:
        where = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            msg = f"cannot read register: {exc.strerror or exc}"
            raise RegisterError(msg, path=where) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"not valid TOML: {exc}"
        raise RegisterError(msg, path=where) from exc
    return parse_register(data, where)


def parse_register(data: Mapping[str, Any], path: str = "<register>") -> Register:
    """Validate already-parsed register data (a ``tomllib`` document) into a :class:`Register`."""
    unknown = set(data) - {"schema", "provider", "shared_host"}
    if unknown:
        msg = f"unknown top-level keys {sorted(unknown)!r}"
        raise RegisterError(msg, path=path)
    if data.get("schema") != SCHEMA:
        msg = f"schema must be {SCHEMA}, got {data.get('schema')!r}"
        raise RegisterError(msg, path=path)
    raw_providers = data.get("provider")
    if not isinstance(raw_providers, list) or not raw_providers:
        msg = "the register has no [[provider]] tables"
        raise RegisterError(msg, path=path)

    providers: list[Provider] = []
    seen_ids: set[str] = set()
    seen_hosts: dict[str, str] = {}
    for index, raw in enumerate(raw_providers):
        provider = _parse_provider(raw, index, path)
        if provider.id in seen_ids:
            msg = f"duplicate provider id {provider.id!r}"
            raise RegisterError(msg, entry=f"provider {provider.id!r}", path=path)
        seen_ids.add(provider.id)
        for endpoint in provider.endpoints:
            where = _where(provider.id, endpoint.host)
            earlier = seen_hosts.get(endpoint.host)
            if earlier is not None and not endpoint.duplicate_ok:
                msg = (
                    f"host pattern {endpoint.host!r} is already registered under {earlier}; "
                    "merge the two, or set duplicate_ok = true if the repeat is deliberate"
                )
                raise RegisterError(msg, entry=where, path=path)
            if earlier is None and endpoint.duplicate_ok:
                msg = "duplicate_ok = true but no earlier endpoint has this host pattern"
                raise RegisterError(msg, entry=where, path=path)
            seen_hosts.setdefault(endpoint.host, f"provider {provider.id!r}")
        providers.append(provider)

    shared = tuple(
        _parse_shared(raw, i, path, seen_ids) for i, raw in enumerate(data.get("shared_host", []))
    )
    _check_shared_not_registered(shared, providers, path)
    return Register(tuple(providers), shared, path)


def _where(provider_id: str, host: str | None = None) -> str:
    if host is None:
        return f"provider {provider_id!r}"
    return f"provider {provider_id!r} endpoint {host!r}"


def _parse_provider(raw: Any, index: int, path: str) -> Provider:
    where = f"provider #{index + 1}"
    if not isinstance(raw, dict):
        msg = "each [[provider]] must be a table"
        raise RegisterError(msg, entry=where, path=path)
    if isinstance(raw.get("id"), str):
        where = _where(raw["id"])
    _check_keys(raw, _PROVIDER_KEYS, _REQUIRED_PROVIDER, where, path)
    pid = _string(raw, "id", where, path)
    if not _is_id(pid):
        msg = f"id {pid!r} must be lower case letters, digits and hyphens, e.g. 'z-ai'"
        raise RegisterError(msg, entry=where, path=path)
    home = _string(raw, "home", where, path)
    if home not in ISO_ALPHA2:
        msg = f"home {home!r} is not an ISO 3166-1 alpha-2 country code"
        raise RegisterError(msg, entry=where, path=path)
    kinds = _string_list(raw, "kinds", where, path)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        msg = f"kinds must be a non-empty subset of {sorted(KINDS)}, got {list(kinds)!r}"
        raise RegisterError(msg, entry=where, path=path)
    raw_endpoints = raw["endpoint"]
    if not isinstance(raw_endpoints, list) or not raw_endpoints:
        msg = "a provider needs at least one [[provider.endpoint]]"
        raise RegisterError(msg, entry=where, path=path)
    endpoints = tuple(_parse_endpoint(pid, e, i, path) for i, e in enumerate(raw_endpoints))
    if any(e.role == "doh" for e in endpoints) and "dns-resolver" not in kinds:
        msg = "a provider with doh endpoints must list 'dns-resolver' in kinds"
        raise RegisterError(msg, entry=where, path=path)
    return Provider(
        id=pid,
        name=_string(raw, "name", where, path),
        home=home,
        kinds=kinds,
        source=_url(raw, where, path),
        as_of=_date(raw, where, path),
        notes=_string(raw, "notes", where, path, default=""),
        endpoints=endpoints,
    )


def _parse_endpoint(provider_id: str, raw: Any, index: int, path: str) -> Endpoint:
    where = f"{_where(provider_id)} endpoint #{index + 1}"
    if not isinstance(raw, dict):
        msg = "each [[provider.endpoint]] must be a table"
        raise RegisterError(msg, entry=where, path=path)
    if isinstance(raw.get("host"), str):
        where = _where(provider_id, raw["host"])
    _check_keys(raw, _ENDPOINT_KEYS, _REQUIRED_ENDPOINT, where, path)

    host = _string(raw, "host", where, path)
    region_cloud = raw.get("region_cloud")
    if region_cloud is not None and not isinstance(region_cloud, str):
        msg = f"region_cloud must be a string, not {region_cloud!r}"
        raise RegisterError(msg, entry=where, path=path)
    try:
        pattern = parse_pattern(host, region_cloud)
    except PatternError as exc:
        raise RegisterError(str(exc), entry=where, path=path) from exc

    role = _string(raw, "role", where, path)
    if role not in ROLES:
        msg = f"role {role!r} is not one of {sorted(ROLES)}"
        raise RegisterError(msg, entry=where, path=path)
    confidence = _string(raw, "confidence", where, path)
    if confidence not in CONFIDENCE:
        msg = f"confidence {confidence!r} is not one of {sorted(CONFIDENCE)}"
        raise RegisterError(msg, entry=where, path=path)
    inference = _locations(raw, "inference", where, path)
    storage = _locations(raw, "storage", where, path)
    if role in PROMPT_ROLES and not inference:
        msg = f"a {role} endpoint carries prompts: inference must not be empty (use 'unknown')"
        raise RegisterError(msg, entry=where, path=path)
    if confidence == "unverified" and (is_concrete(inference) or GLOBAL in inference):
        msg = (
            f"an unverified endpoint must not claim an inference location, got {list(inference)!r}"
            " (use ['unknown'])"
        )
        raise RegisterError(msg, entry=where, path=path)

    narrow = raw.get("narrow", "region" if pattern.has_region else "none")
    if narrow not in NARROW:
        msg = f"narrow must be 'region' or 'none', not {narrow!r}"
        raise RegisterError(msg, entry=where, path=path)
    if not pattern.has_region and narrow != "none":
        msg = "narrow = 'region' needs a {region} in the host pattern"
        raise RegisterError(msg, entry=where, path=path)
    region_inference = _region_inference(raw, where, path)
    if region_inference and not pattern.has_region:
        msg = "region_inference needs a {region} in the host pattern"
        raise RegisterError(msg, entry=where, path=path)
    if confidence == "unverified" and (narrow == "region" or region_inference):
        msg = "an unverified endpoint must not narrow inference by region (set narrow = 'none')"
        raise RegisterError(msg, entry=where, path=path)

    region = raw.get("region")
    if region is not None:
        if not isinstance(region, str) or not region or pattern.has_region:
            msg = "region (a static geo label) needs an exact host without {region}"
            raise RegisterError(msg, entry=where, path=path)
        if region not in host.split("."):
            msg = f"region {region!r} is not a label of {host!r}"
            raise RegisterError(msg, entry=where, path=path)
    options = _string_list(raw, "options", where, path, default=())
    bad_options = [o for o in options if o not in OPTIONS]
    if bad_options:
        msg = f"unknown options {bad_options!r}; known: {sorted(OPTIONS)}"
        raise RegisterError(msg, entry=where, path=path)
    ips = _string_list(raw, "ips", where, path, default=())
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            msg = f"ips: {ip!r} is not an IP address"
            raise RegisterError(msg, entry=where, path=path) from exc
    duplicate_ok = raw.get("duplicate_ok", False)
    if not isinstance(duplicate_ok, bool):
        msg = f"duplicate_ok must be true or false, not {duplicate_ok!r}"
        raise RegisterError(msg, entry=where, path=path)

    return Endpoint(
        provider=provider_id,
        host=host,
        product=_string(raw, "product", where, path),
        role=role,  # type: ignore[arg-type]  # checked against ROLES above
        inference=inference,
        storage=storage,
        region_cloud=region_cloud,
        narrow=narrow,
        region_inference=region_inference,
        region=region,
        options=options,
        confidence=confidence,  # type: ignore[arg-type]  # checked against CONFIDENCE above
        source=_url(raw, where, path),
        as_of=_date(raw, where, path),
        notes=_string(raw, "notes", where, path, default=""),
        ips=ips,
        duplicate_ok=duplicate_ok,
    )


def _parse_shared(raw: Any, index: int, path: str, ids: set[str]) -> SharedHost:
    where = f"shared_host #{index + 1}"
    if not isinstance(raw, dict):
        msg = "each [[shared_host]] must be a table"
        raise RegisterError(msg, entry=where, path=path)
    if isinstance(raw.get("host"), str):
        where = f"shared_host {raw['host']!r}"
    _check_keys(raw, _SHARED_KEYS, _SHARED_KEYS, where, path)
    host = _string(raw, "host", where, path)
    if normalize_host(host) != host:
        msg = f"{host!r} is not a normalised exact host name"
        raise RegisterError(msg, entry=where, path=path)
    used_by = _string_list(raw, "used_by", where, path)
    unknown = [pid for pid in used_by if pid not in ids]
    if unknown:
        msg = f"used_by names unknown provider ids {unknown!r}"
        raise RegisterError(msg, entry=where, path=path)
    return SharedHost(host, used_by, _string(raw, "reason", where, path))


def _check_shared_not_registered(
    shared: tuple[SharedHost, ...], providers: list[Provider], path: str
) -> None:
    """No endpoint pattern may match a host declared shared: that would be a false alarm."""
    patterns = [
        (p.id, e.host, parse_pattern(e.host, e.region_cloud))
        for p in providers
        for e in p.endpoints
    ]
    for item in shared:
        for pid, host, pattern in patterns:
            if pattern.match(item.host)[0]:
                msg = (
                    f"endpoint pattern {host!r} of provider {pid!r} matches {item.host!r}, which"
                    " is declared a shared (non-AI) host"
                )
                raise RegisterError(msg, entry=f"shared_host {item.host!r}", path=path)


def _check_keys(
    raw: Mapping[str, Any], allowed: set[str], required: set[str], where: str, path: str
) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        msg = f"unknown keys {unknown!r}; allowed: {sorted(allowed)}"
        raise RegisterError(msg, entry=where, path=path)
    missing = sorted(required - set(raw))
    if missing:
        msg = f"missing keys {missing!r}"
        raise RegisterError(msg, entry=where, path=path)


def _is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def _string(
    raw: Mapping[str, Any], key: str, where: str, path: str, default: str | None = None
) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        msg = f"{key} must be a non-empty string, not {value!r}"
        raise RegisterError(msg, entry=where, path=path)
    return value


def _string_list(
    raw: Mapping[str, Any],
    key: str,
    where: str,
    path: str,
    default: tuple[str, ...] | None = None,
) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        msg = f"{key} must be a list of strings, not {value!r}"
        raise RegisterError(msg, entry=where, path=path)
    if len(set(value)) != len(value):
        msg = f"{key} repeats a value: {value!r}"
        raise RegisterError(msg, entry=where, path=path)
    return tuple(value)


def _locations(raw: Mapping[str, Any], key: str, where: str, path: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value == []:
        return ()
    locations = _string_list(raw, key, where, path)
    for code in locations:
        if code in (GLOBAL, UNKNOWN):
            if len(locations) != 1:
                msg = f"{key}: {code!r} must stand alone, got {list(locations)!r}"
                raise RegisterError(msg, entry=where, path=path)
        elif code not in ISO_ALPHA2 and code not in GROUPS:
            msg = (
                f"{key}: {code!r} is not an ISO 3166-1 alpha-2 code, a group "
                f"({', '.join(sorted(GROUPS))}), 'global' or 'unknown'"
            )
            raise RegisterError(msg, entry=where, path=path)
    return locations


def _region_inference(
    raw: Mapping[str, Any], where: str, path: str
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    table = raw.get("region_inference")
    if table is None:
        return ()
    if not isinstance(table, dict) or not table:
        msg = "region_inference must be a table of region code = [locations]"
        raise RegisterError(msg, entry=where, path=path)
    return tuple(
        (code, _locations(table, code, f"{where} region_inference", path)) for code in sorted(table)
    )


def _url(raw: Mapping[str, Any], where: str, path: str) -> str:
    value = _string(raw, "source", where, path)
    if not value.startswith("https://") or " " in value:
        msg = f"source must be an https URL, not {value!r}"
        raise RegisterError(msg, entry=where, path=path)
    return value


def _date(raw: Mapping[str, Any], where: str, path: str) -> date:
    value = raw.get("as_of")
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    msg = f"as_of must be a date (2026-11-24), not {value!r}"
    raise RegisterError(msg, entry=where, path=path)
