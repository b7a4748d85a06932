"""The policy file (POLICY.md): parse, validate and evaluate.

``load_policy`` / ``parse_policy`` turn TOML into a :class:`Policy` or raise
:class:`~egresswatch.errors.ConfigError` with the file, the line (TOML's own line for a syntax
error; the line of the offending key or table otherwise) and what to change.

``evaluate`` is pure: given a policy, a :class:`~geo.destination.Destination` and the facts of the
connection (kind, port, IP, process, ECH, DoH) it returns a :class:`Verdict` following
POLICY.md's "Meaning" steps 1-5, with every decision step recorded in ``Verdict.steps`` for
``egresswatch policy explain``.

Choices the contract leaves open, made here:

- ``**`` in a host glob matches **one or more** labels, never zero, just as ``*`` never matches
  zero labels: ``**.example.com`` matches ``a.b.example.com`` but not ``example.com``. Write
  both patterns to include the apex. A ``*`` inside a label (``eu-*``) matches any run of
  characters within that label.
- When several allow rules match, one with ``residency = false`` decides (else the first in
  file order), so the outcome does not depend on rule order and adding an allow rule never
  adds a violation.
- DNS observations (``kind="dns"``) are not judged: the verdict is ``allow`` with
  ``rule=None``.
- A DNS-over-TLS connection is one to port 853; DNS over HTTPS is ``doh=True`` or a destination
  whose register role is ``doh``.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from egresswatch.errors import ConfigError
from geo.countries import EEA, EU, GLOBAL, GROUPS, ISO_ALPHA2
from geo.destination import Destination
from geo.register import ROLES, load_register

Severity = Literal["allow", "warn", "violation"]
Scope = Literal["ai", "all"]
Action = Literal["allow", "deny"]

SEVERITIES: tuple[Severity, ...] = ("allow", "warn", "violation")
"""Outcomes, mildest first: the worst one wins."""
BUILTIN_RULES: frozenset[str] = frozenset(
    {
        "allowlist",
        "unknown_ai",
        "unverifiable",
        "jurisdiction",
        "inference",
        "endpoint",
        "unknown_location",
    }
)
"""Names a verdict carries in ``rule`` when no ``[[rule]]`` decided it (besides ``self``)."""
ECH_CLIENT_FACING: frozenset[str] = frozenset({"cloudflare-ech.com"})
"""Outer SNIs that are known ECH client-facing names: ECH to them is real."""
DOT_PORT = 853

_TOP_KEYS = {"version", "audit", "groups", "residency", "rule"}
_AUDIT_KEYS = {"scope", "unknown_ai", "unverifiable"}
_RESIDENCY_KEYS = {"inference", "endpoint", "jurisdiction_deny", "unknown_location"}
_SELECTORS = ("host", "provider", "role", "country", "asn", "cidr", "port", "process")
_RULE_KEYS = {"id", "action", "reason", "residency", *_SELECTORS}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_GROUP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_HOST_LABEL = re.compile(r"[a-z0-9_*-]+")
_TOML_LINE = re.compile(r"at line (\d+)")
_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([^\]\s]+)\s*\]")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]``: selectors ANDed, each list meaning any of its items."""

    id: str
    """The rule's id, named by every verdict it decides."""
    action: Action
    """``allow`` or ``deny``."""
    reason: str | None = None
    """Why the rule exists, in the policy author's words."""
    residency: bool = True
    """False (``residency = false``) exempts what an allow rule allows from ``[residency]``."""
    host: tuple[str, ...] = ()
    """Host globs as written (lower case)."""
    host_patterns: tuple[re.Pattern[str], ...] = ()
    """``host`` compiled."""
    provider: tuple[str, ...] = ()
    """Register provider ids."""
    role: tuple[str, ...] = ()
    """Endpoint roles."""
    country: frozenset[str] = frozenset()
    """ISO alpha-2 codes the endpoint IP may be in (groups expanded)."""
    asn: tuple[int, ...] = ()
    """Autonomous system numbers of the endpoint IP."""
    cidr: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Networks the endpoint IP may be in."""
    port: tuple[int, ...] = ()
    """Destination ports."""
    process: tuple[str, ...] = ()
    """Executable name globs (fnmatch), where the process is known."""
    line: int | None = None
    """Line of the ``[[rule]]`` header in the policy file."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed and validated policy file."""

    path: str
    """The file it came from (or ``<string>``)."""
    version: int = 1
    """The format version (``version = 1``)."""
    scope: Scope = "ai"
    """``ai``: judge AI endpoints only; ``all``: every connection needs an allow rule."""
    unknown_ai: Severity = "warn"
    """Severity for a host that looks like an AI API but is not in the register."""
    unverifiable: Severity = "warn"
    """Severity for real ECH, DoH/DoT, and connections with no name at all."""
    unknown_location: Severity = "warn"
    """Severity for a residency location that cannot be established."""
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """User groups from ``[groups]``, expanded to ISO alpha-2 codes."""
    inference: frozenset[str] | None = None
    """``[residency] inference`` expanded, or None when not set."""
    endpoint: frozenset[str] | None = None
    """``[residency] endpoint`` expanded, or None when not set."""
    jurisdiction_deny: frozenset[str] = frozenset()
    """``[residency] jurisdiction_deny`` expanded."""
    rules: tuple[Rule, ...] = ()
    """The ``[[rule]]`` tables in file order."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one connection."""

    verdict: Severity
    """``allow``, ``warn`` or ``violation``."""
    rule: str | None
    """The rule id or built-in name that decided; None when nothing was judged."""
    reason: str | None
    """One sentence a person can read without the policy open."""
    steps: tuple[str, ...] = ()
    """Each decision step, in order (``egresswatch policy explain``)."""


# ---------------------------------------------------------------------------------------------
# Parsing


class _Locator:
    """Finds the line of a table or key in the policy source, for error messages."""

    def __init__(self, text: str) -> None:
        # (name, array, header line, {key: line}) per table; the root table first
        self.tables: list[tuple[str | None, bool, int | None, dict[str, int]]] = [
            (None, False, None, {})
        ]
        for number, raw in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(raw)
            if header:
                self.tables.append((header.group(2), header.group(1) == "[[", number, {}))
                continue
            key = _KEY.match(raw)
            if key:
                name = key.group(1) or key.group(2) or key.group(3)
                self.tables[-1][3].setdefault(name, number)

    def line(self, table: str | None, key: str | None = None, index: int = 0) -> int | None:
        """Line of ``key`` in the ``index``-th table named ``table`` (else of the table)."""
        found = [t for t in self.tables if t[0] == table]
        if index >= len(found):
            return None
        _, _, header, keys = found[index]
        if key is not None and key in keys:
            return keys[key]
        return header


class _Parser:
    def __init__(self, text: str, path: str, provider_ids: frozenset[str] | None) -> None:
        self.text = text
        self.path = path
        self.where = _Locator(text)
        self.provider_ids = provider_ids
        self.groups: dict[str, frozenset[str]] = {}

    def fail(
        self, message: str, table: str | None, key: str | None = None, index: int = 0
    ) -> NoReturn:
        raise ConfigError(message, self.path, self.where.line(table, key, index))

    def parse(self) -> Policy:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_LINE.search(str(exc))
            msg = f"not valid TOML: {exc}"
            raise ConfigError(msg, self.path, int(found.group(1)) if found else None) from None
        self.keys(data, _TOP_KEYS, None)
        version = data.get("version")
        if version != 1:
            self.fail(f"version must be 1, got {version!r}: add 'version = 1'", None, "version")
        audit = self.table(data, "audit", _AUDIT_KEYS)
        scope = audit.get("scope", "ai")
        if scope not in ("ai", "all"):
            self.fail(f"scope must be 'ai' or 'all', got {scope!r}", "audit", "scope")
        unknown_ai = self.severity(audit, "unknown_ai", "audit")
        unverifiable = self.severity(audit, "unverifiable", "audit")
        self.parse_groups(data)
        residency = self.table(data, "residency", _RESIDENCY_KEYS)
        inference = (
            self.countries(residency, "inference", "residency")
            if ("inference" in residency)
            else None
        )
        endpoint = (
            self.countries(residency, "endpoint", "residency")
            if ("endpoint" in residency)
            else None
        )
        jurisdiction_deny = (
            self.countries(residency, "jurisdiction_deny", "residency")
            if ("jurisdiction_deny" in residency)
            else frozenset()
        )
        unknown_location = self.severity(residency, "unknown_location", "residency")
        raw_rules = data.get("rule", [])
        if not isinstance(raw_rules, list):
            self.fail("'rule' must be an array of tables: write [[rule]]", None, "rule")
        rules: list[Rule] = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_rules):
            rule = self.rule(raw, index)
            if rule.id in seen:
                self.fail(
                    f"duplicate rule id {rule.id!r}: give each [[rule]] its own id",
                    "rule",
                    "id",
                    index,
                )
            seen.add(rule.id)
            rules.append(rule)
        return Policy(
            path=self.path,
            version=1,
            scope=scope,
            unknown_ai=unknown_ai,
            unverifiable=unverifiable,
            unknown_location=unknown_location,
            groups=dict(self.groups),
            inference=inference,
            endpoint=endpoint,
            jurisdiction_deny=jurisdiction_deny,
            rules=tuple(rules),
        )

    def keys(
        self, raw: Mapping[str, Any], allowed: Iterable[str], table: str | None, index: int = 0
    ) -> None:
        allowed = set(allowed)
        for key in raw:
            if key not in allowed:
                name = f"[{table}]" if table else "the top level"
                if table == "rule":
                    name = "[[rule]]"
                self.fail(
                    f"unknown key {key!r} in {name}: use one of {', '.join(sorted(allowed))}",
                    table,
                    key,
                    index,
                )

    def table(self, data: Mapping[str, Any], name: str, allowed: set[str]) -> Mapping[str, Any]:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            self.fail(f"{name!r} must be a table: write [{name}]", None, name)
        self.keys(raw, allowed, name)
        table: Mapping[str, Any] = raw
        return table

    def severity(self, raw: Mapping[str, Any], key: str, table: str) -> Severity:
        value = raw.get(key, "warn")
        if value not in SEVERITIES:
            self.fail(f"{key} must be 'allow', 'warn' or 'violation', got {value!r}", table, key)
        return value  # type: ignore[no-any-return]

    def parse_groups(self, data: Mapping[str, Any]) -> None:
        raw = data.get("groups", {})
        if not isinstance(raw, dict):
            self.fail("'groups' must be a table: write [groups]", None, "groups")
        for name, members in raw.items():
            if not _GROUP_NAME.fullmatch(name) or name in ISO_ALPHA2 or name in GROUPS:
                self.fail(
                    f"bad group name {name!r}: use a name that is not a country code or a "
                    "built-in group (EU, EEA)",
                    "groups",
                    name,
                )
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                self.fail(f"group {name!r} must be a list of country strings", "groups", name)

        def expand(name: str, trail: tuple[str, ...]) -> frozenset[str]:
            if name in self.groups:
                return self.groups[name]
            out: set[str] = set()
            for member in raw[name]:
                if member in trail or member == name:
                    cycle = " -> ".join((*trail, name, member))
                    self.fail(
                        f"group cycle {cycle}: remove one of these references", "groups", name
                    )
                if member in raw:
                    out |= expand(member, (*trail, name))
                else:
                    out |= self.country(member, "groups", name)
            self.groups[name] = frozenset(out)
            return self.groups[name]

        for name in raw:
            expand(name, ())

    def country(self, code: Any, table: str | None, key: str, index: int = 0) -> frozenset[str]:
        if not isinstance(code, str):
            self.fail(f"{key}: a country must be a string, got {code!r}", table, key, index)
        if code in ISO_ALPHA2:
            return frozenset({code})
        if code in GROUPS:
            return GROUPS[code]
        if code in self.groups:
            return self.groups[code]
        if re.fullmatch(r"[A-Za-z]{2}", code):
            self.fail(
                f"{key}: bad country code {code!r}: use an ISO 3166-1 alpha-2 code in upper "
                "case (DE, FR, US)",
                table,
                key,
                index,
            )
        self.fail(
            f"{key}: unknown group {code!r}: define it under [groups] or use EU, EEA or an ISO "
            "3166-1 alpha-2 code",
            table,
            key,
            index,
        )

    def countries(
        self, raw: Mapping[str, Any], key: str, table: str | None, index: int = 0
    ) -> frozenset[str]:
        out: set[str] = set()
        for item in self.strings(raw, key, table, index, allow_int=False):
            out |= self.country(item, table, key, index)
        return frozenset(out)

    def strings(
        self,
        raw: Mapping[str, Any],
        key: str,
        table: str | None,
        index: int,
        *,
        allow_int: bool,
    ) -> list[Any]:
        value = raw[key]
        items = value if isinstance(value, list) else [value]
        kinds: tuple[type, ...] = (str, int) if allow_int else (str,)
        if not items or not all(isinstance(i, kinds) and not isinstance(i, bool) for i in items):
            what = "a string or integer" if allow_int else "a string"
            self.fail(
                f"{key} must be {what} or a non-empty list of them, got {value!r}",
                table,
                key,
                index,
            )
        return list(items)

    def rule(self, raw: Any, index: int) -> Rule:
        def fail(message: str, key: str | None = None) -> NoReturn:
            self.fail(message, "rule", key, index)

        self.keys(raw, _RULE_KEYS, "rule", index)
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
            fail(f"rule needs an id (letters, digits, '-', '_', '.'), got {rule_id!r}", "id")
        if rule_id in BUILTIN_RULES or rule_id == "self":
            fail(f"rule id {rule_id!r} is a built-in name: choose another id", "id")
        action = raw.get("action")
        if action not in ("allow", "deny"):
            fail(f"rule {rule_id!r}: action must be 'allow' or 'deny', got {action!r}", "action")
        reason = raw.get("reason")
        if reason is not None and not isinstance(reason, str):
            fail(f"rule {rule_id!r}: reason must be a string, got {reason!r}", "reason")
        residency = raw.get("residency", True)
        if not isinstance(residency, bool):
            fail(f"rule {rule_id!r}: residency must be true or false", "residency")
        if residency is False and action == "deny":
            fail(
                f"rule {rule_id!r}: residency = false only makes sense on an allow rule",
                "residency",
            )
        if not any(key in raw for key in _SELECTORS):
            fail(
                f"rule {rule_id!r} has no selector: add one of {', '.join(_SELECTORS)} "
                "(a rule with no selector would match everything)"
            )
        hosts: list[str] = []
        patterns: list[re.Pattern[str]] = []
        if "host" in raw:
            for glob in self.strings(raw, "host", "rule", index, allow_int=False):
                compiled = compile_host_glob(glob)
                if compiled is None:
                    fail(
                        f"rule {rule_id!r}: bad host glob {glob!r}: use dot-separated labels of "
                        "letters, digits, '-', '_' and '*', with '**' only as a whole label",
                        "host",
                    )
                hosts.append(glob.lower())
                patterns.append(compiled)
        providers: tuple[str, ...] = ()
        if "provider" in raw:
            providers = tuple(self.strings(raw, "provider", "rule", index, allow_int=False))
            for pid in providers:
                if self.provider_ids is not None and pid not in self.provider_ids:
                    fail(
                        f"rule {rule_id!r}: unknown provider id {pid!r}: see "
                        "'egresswatch providers' for the ids",
                        "provider",
                    )
        roles: tuple[str, ...] = ()
        if "role" in raw:
            roles = tuple(self.strings(raw, "role", "rule", index, allow_int=False))
            for role in roles:
                if role not in ROLES:
                    fail(
                        f"rule {rule_id!r}: unknown role {role!r}: use one of "
                        f"{', '.join(sorted(ROLES))}",
                        "role",
                    )
        country = (
            self.countries(raw, "country", "rule", index) if "country" in raw else (frozenset())
        )
        asns: list[int] = []
        if "asn" in raw:
            for item in self.strings(raw, "asn", "rule", index, allow_int=True):
                text = str(item)
                if text[:2].upper() == "AS":
                    text = text[2:]
                if not text.isdigit() or not 0 < int(text) < 2**32:
                    fail(f"rule {rule_id!r}: bad asn {item!r}: write 13335 or 'AS13335'", "asn")
                asns.append(int(text))
        cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        if "cidr" in raw:
            for item in self.strings(raw, "cidr", "rule", index, allow_int=False):
                try:
                    cidrs.append(ipaddress.ip_network(item, strict=True))
                except ValueError as exc:
                    fail(
                        f"rule {rule_id!r}: bad cidr {item!r} ({exc}): write e.g. '10.0.0.0/8'",
                        "cidr",
                    )
        ports: list[int] = []
        if "port" in raw:
            for item in self.strings(raw, "port", "rule", index, allow_int=True):
                if not isinstance(item, int) or not 0 < item < 65536:
                    fail(f"rule {rule_id!r}: bad port {item!r}: use an integer 1-65535", "port")
                ports.append(item)
        processes: tuple[str, ...] = ()
        if "process" in raw:
            processes = tuple(self.strings(raw, "process", "rule", index, allow_int=False))
            for glob in processes:
                if not glob or "/" in glob:
                    fail(
                        f"rule {rule_id!r}: bad process glob {glob!r}: give an executable "
                        "name such as 'node' or 'python3*'",
                        "process",
                    )
        return Rule(
            id=rule_id,
            action=action,
            reason=reason,
            residency=residency,
            host=tuple(hosts),
            host_patterns=tuple(patterns),
            provider=providers,
            role=roles,
            country=country,
            asn=tuple(asns),
            cidr=tuple(cidrs),
            port=tuple(ports),
            process=processes,
            line=self.where.line("rule", None, index),
        )


def compile_host_glob(glob: str) -> re.Pattern[str] | None:
    """Compile a host glob (``*`` one label or part of one, ``**`` one or more labels).

    Returns None when the glob is malformed.
    """
    labels = glob.lower().split(".")
    if not glob or any(not _HOST_LABEL.fullmatch(label) for label in labels):
        return None
    parts: list[str] = []
    for label in labels:
        if label == "**":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif label == "*":
            parts.append(r"[^.]+")
        elif "**" in label:
            return None
        else:
            parts.append("[^.]*".join(re.escape(piece) for piece in label.split("*")))
    return re.compile(r"\.".join(parts))


@functools.cache
def _packaged_provider_ids() -> frozenset[str]:
    return load_register().ids()


def parse_policy(
    text: str, path: str = "<string>", *, provider_ids: frozenset[str] | None = None
) -> Policy:
    """Parse and validate policy ``text``; ``provider_ids`` defaults to the packaged register's."""
    if provider_ids is None:
        provider_ids = _packaged_provider_ids()
    return _Parser(text, path, provider_ids).parse()


def load_policy(path: str | Path, *, provider_ids: frozenset[str] | None = None) -> Policy:
    """Read and validate the policy file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read policy: {exc}"
        raise ConfigError(msg, str(path)) from None
    return parse_policy(text, str(path), provider_ids=provider_ids)


# ---------------------------------------------------------------------------------------------
# Evaluation


def ech_is_real(sni: str | None, ech: bool, name_has_ech_config: bool = False) -> bool:
    """POLICY.md step 5: ECH counts only with a client-facing outer SNI or a DNS ECH config.

    ``name_has_ech_config`` is true when the HTTPS record the client looked up for the name
    carried an ECH config (``Observation.ech_config`` of that DNS answer).
    """
    if not ech:
        return False
    outer = (sni or "").lower().rstrip(".")
    return outer in ECH_CLIENT_FACING or name_has_ech_config


def _rank(severity: Severity) -> int:
    return SEVERITIES.index(severity)


def _worse(
    found: tuple[Severity, str | None, str], outcome: tuple[Severity, str | None, str] | None
) -> bool:
    """``found`` replaces ``outcome``: it is worse, or as bad and ``outcome`` named no rule (a
    built-in check set to "allow" still names itself, since every verdict carries its rule)."""
    if outcome is None:
        return True
    if _rank(found[0]) != _rank(outcome[0]):
        return _rank(found[0]) > _rank(outcome[0])
    return outcome[1] is None


def _matches(
    rule: Rule,
    dest: Destination,
    *,
    port: int | None,
    ip: str | None,
    process: str | None,
) -> bool:
    if rule.host:
        host = (dest.host or "").lower().rstrip(".")
        if not host or not any(p.fullmatch(host) for p in rule.host_patterns):
            return False
    if rule.provider and dest.provider not in rule.provider:
        return False
    if rule.role and dest.role not in rule.role:
        return False
    if rule.country and dest.endpoint_country not in rule.country:
        return False
    if rule.asn and dest.asn not in rule.asn:
        return False
    if rule.cidr:
        try:
            address = ipaddress.ip_address(ip) if ip else None
        except ValueError:
            address = None
        if address is None or not any(address in net for net in rule.cidr):
            return False
    if rule.port and port not in rule.port:
        return False
    return not rule.process or (
        process is not None and any(fnmatch.fnmatchcase(process, g) for g in rule.process)
    )


def _inside(location: str, allowed: frozenset[str]) -> bool | None:
    """Whether a documented location lies inside ``allowed``; None when it is not established."""
    if location in ISO_ALPHA2:
        return location in allowed
    if location == "EU":
        return allowed >= EU
    if location == "EEA":
        return allowed >= EEA
    if location == GLOBAL:
        # The provider documents that inference may run anywhere: an established location,
        # and not inside any set of countries.
        return False
    return None  # unknown, anything else


def _residency(
    policy: Policy, dest: Destination, steps: list[str]
) -> tuple[Severity, str, str] | None:
    """Step 4: the first failed check is a violation; unknowns give ``unknown_location``."""
    name = dest.host or dest.provider or "this endpoint"
    unknown: tuple[Severity, str, str] | None = None

    def not_established(what: str) -> None:
        nonlocal unknown
        steps.append(
            f"4: {what} cannot be established -> unknown_location ({policy.unknown_location})"
        )
        if unknown is None:
            unknown = (
                policy.unknown_location,
                "unknown_location",
                f"{what} for {name} cannot be established.",
            )

    if policy.jurisdiction_deny:
        home = dest.jurisdiction
        if home is None:
            not_established(f"the home country of provider {dest.provider!r}")
        elif home in policy.jurisdiction_deny:
            steps.append(f"4: jurisdiction {home} is in jurisdiction_deny -> violation")
            return (
                "violation",
                "jurisdiction",
                f"{dest.provider_name or dest.provider} is a company of {home}, a jurisdiction "
                "the policy denies.",
            )
        else:
            steps.append(f"4: jurisdiction {home} is not denied")
    if policy.inference is not None:
        locations = dest.inference
        outside = [loc for loc in locations if _inside(loc, policy.inference) is False]
        if not locations:
            # Telemetry, auth, downloads, control planes: the register documents no inference
            # for them, so there is nothing that could lie outside.
            steps.append(f"4: no inference documented for this endpoint (role {dest.role})")
        elif outside:
            steps.append(
                f"4: inference {', '.join(locations)} has {', '.join(outside)} "
                "outside the allowed set -> violation"
            )
            where = (
                "anywhere (the provider documents global processing)"
                if outside == [GLOBAL]
                else f"in {', '.join(outside)}"
            )
            return (
                "violation",
                "inference",
                f"{name} may run inference {where}, outside the allowed locations.",
            )
        elif any(_inside(loc, policy.inference) is None for loc in locations):
            not_established("the inference location")
        else:
            steps.append(f"4: inference {', '.join(locations)} lies inside")
    if policy.endpoint is not None:
        country = dest.endpoint_country
        if dest.anycast:
            not_established("the endpoint location (anycast address)")
        elif country is None:
            not_established("the endpoint location")
        elif country not in policy.endpoint:
            steps.append(f"4: endpoint country {country} is outside -> violation")
            return (
                "violation",
                "endpoint",
                f"{name} was reached at an address in {country}, outside the allowed locations.",
            )
        else:
            steps.append(f"4: endpoint country {country} lies inside")
    return unknown


def evaluate(
    policy: Policy,
    destination: Destination,
    *,
    kind: str = "tls",
    port: int | None = None,
    ip: str | None = None,
    process: str | None = None,
    ech: bool = False,
    ech_real: bool = False,
    doh: bool = False,
) -> Verdict:
    """Judge one connection to ``destination`` (POLICY.md "Meaning", steps 1-5).

    ``kind`` is the observation kind (``tls``, ``quic``, ``dns``, or a flow kind); ``port`` and
    ``ip`` the destination port and address; ``process`` the local executable name if known.
    ``ech`` is the bare ECH extension (GREASE included: recorded in ``steps``, never judged);
    ``ech_real`` says ECH is real (see :func:`ech_is_real`); ``doh`` marks DNS over HTTPS.
    """
    dest = destination
    steps: list[str] = []
    name = dest.host or ip or "an unnamed destination"
    if kind == "dns":
        return Verdict(
            "allow", None, "DNS questions are recorded, not judged.", ("dns: not judged",)
        )

    outcome: tuple[Severity, str | None, str] | None = None
    denied = False
    allow_rule: Rule | None = None
    for rule in policy.rules:
        if rule.action == "deny" and _matches(rule, dest, port=port, ip=ip, process=process):
            steps.append(f"1: deny rule {rule.id!r} (line {rule.line}) matches -> violation")
            outcome = (
                "violation",
                rule.id,
                f"{name} is denied by rule {rule.id!r}"
                + (f": {rule.reason}." if rule.reason else "."),
            )
            denied = True
            break
    if not denied:
        steps.append("1: no deny rule matches")
        allowing = [
            r
            for r in policy.rules
            if r.action == "allow" and _matches(r, dest, port=port, ip=ip, process=process)
        ]
        # An exemption is order-independent: if any matching allow rule says
        # residency = false, that rule decides, so adding an allow rule never adds a violation.
        allow_rule = next((r for r in allowing if not r.residency), None) or next(
            iter(allowing), None
        )
        run_residency = False
        if allow_rule is not None:
            steps.append(f"2: allow rule {allow_rule.id!r} (line {allow_rule.line}) matches")
            outcome = (
                "allow",
                allow_rule.id,
                f"{name} is allowed by rule {allow_rule.id!r}"
                + (f": {allow_rule.reason}." if allow_rule.reason else "."),
            )
            if dest.is_ai and allow_rule.residency:
                run_residency = True
            elif dest.is_ai:
                steps.append("2: residency = false: residency checks skipped")
        else:
            steps.append("2: no allow rule matches")
            if policy.scope == "all":
                steps.append("3: scope = all and no rule allows it -> violation (allowlist)")
                outcome = ("violation", "allowlist", f"{name} is not on the policy's allowlist.")
            elif dest.is_ai:
                steps.append(f"3: AI endpoint of {dest.provider!r}, no rule: residency checks")
                outcome = (
                    "allow",
                    None,
                    f"{name} is an AI endpoint of {dest.provider} within residency.",
                )
                run_residency = True
            elif dest.looks_like_ai:
                steps.append(
                    f"3: looks like an AI API, not in the register -> unknown_ai "
                    f"({policy.unknown_ai})"
                )
                outcome = (
                    policy.unknown_ai,
                    "unknown_ai",
                    f"{name} looks like an AI API but is not in the provider register.",
                )
            else:
                steps.append("3: not an AI endpoint, scope = ai: allowed unjudged")
        if run_residency:
            found = _residency(policy, dest, steps)
            if found is not None and _worse(found, outcome):
                outcome = found
            elif found is None:
                steps.append("4: residency checks pass")

        # step 5, only when no deny decided
        why: str | None = None
        if doh or dest.role == "doh":
            why = f"{name} carries DNS over HTTPS, which hides later destinations."
        elif port == DOT_PORT and kind in ("tls", "tcp"):
            why = f"{name} carries DNS over TLS, which hides later destinations."
        elif ech_real:
            why = f"{name} uses real Encrypted Client Hello, so the true destination is hidden."
        elif not dest.host and kind in ("tls", "quic"):
            why = f"the connection to {ip or 'an address'} has no SNI and no name from DNS."
        if ech and not ech_real:
            steps.append("5: ECH extension without an ECH config: judged by its SNI")
        if why is not None:
            steps.append(f"5: unverifiable ({policy.unverifiable})")
            found = (policy.unverifiable, "unverifiable", why)
            if _worse(found, outcome):
                outcome = found
        else:
            steps.append("5: verifiable")

    if outcome is None:
        return Verdict("allow", None, f"{name} is not an AI endpoint; not judged.", tuple(steps))
    verdict, rule_name, reason = outcome
    steps.append(f"result: {verdict} ({rule_name})")
    return Verdict(verdict, rule_name, reason, tuple(steps))
