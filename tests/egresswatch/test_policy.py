"""egresswatch.policy: the POLICY.md contract, step by step, its errors, and its properties."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.errors import ConfigError
from egresswatch.policy import (
    Policy,
    Verdict,
    compile_host_glob,
    ech_is_real,
    evaluate,
    load_policy,
    parse_policy,
)
from geo.destination import Destination
from geo.enrich import Enricher

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
ENRICHER = Enricher()


def real(host: str | None, ip: str | None = None) -> Destination:
    return ENRICHER.destination(host, ip)


def ai(**kw: object) -> Destination:
    base: dict[str, object] = {
        "host": "api.example-llm.com",
        "provider": "openai",
        "provider_name": "OpenAI",
        "role": "inference",
        "jurisdiction": "US",
        "inference": ("DE",),
        "endpoint_country": "DE",
    }
    base.update(kw)
    return Destination(**base)  # type: ignore[arg-type]


PLAIN = Destination(host="pypi.org", endpoint_country="US")


def policy(body: str) -> Policy:
    return parse_policy("version = 1\n" + body, "p.toml")


# ---------------------------------------------------------------------------------------------
# Host globs


@pytest.mark.parametrize(
    ("glob", "host", "expected"),
    [
        ("*.github.com", "api.github.com", True),
        ("*.github.com", "github.com", False),
        ("*.github.com", "a.b.github.com", False),
        ("**.github.com", "a.b.github.com", True),
        ("**.github.com", "api.github.com", True),
        ("**.github.com", "github.com", False),  # ** is one or more labels, never zero
        ("bedrock-runtime.eu-*.amazonaws.com", "bedrock-runtime.eu-central-1.amazonaws.com", True),
        ("bedrock-runtime.eu-*.amazonaws.com", "bedrock-runtime.us-east-1.amazonaws.com", False),
        ("PyPI.org", "pypi.org", True),
        ("pypi.org", "pypixorg", False),
    ],
)
def test_host_glob(glob: str, host: str, expected: bool) -> None:
    pattern = compile_host_glob(glob)
    assert pattern is not None
    assert bool(pattern.fullmatch(host)) is expected


@pytest.mark.parametrize("glob", ["", "a..b", ".a", "a.", "a**b.com", "a b.com", "a/b", "é.com"])
def test_bad_host_glob(glob: str) -> None:
    assert compile_host_glob(glob) is None


# ---------------------------------------------------------------------------------------------
# Meaning, step by step

DENY_DEEPSEEK = """
[[rule]]
id = "no-deepseek"
action = "deny"
provider = "deepseek"
reason = "not approved (SEC-1)"
"""

ALLOW_PYPI = """
[[rule]]
id = "pypi"
action = "allow"
host = ["pypi.org", "files.pythonhosted.org"]
"""


def test_step1_deny_rule_is_a_violation_with_reason() -> None:
    v = evaluate(policy(DENY_DEEPSEEK), real("api.deepseek.com"), kind="tls", port=443)
    assert (v.verdict, v.rule) == ("violation", "no-deepseek")
    assert v.reason is not None and "SEC-1" in v.reason and "api.deepseek.com" in v.reason
    assert any("deny rule 'no-deepseek'" in s for s in v.steps)


def test_step1_deny_wins_over_allow_and_over_unverifiable() -> None:
    p = policy(
        DENY_DEEPSEEK
        + """
[[rule]]
id = "everything-deepseek"
action = "allow"
host = "**.deepseek.com"
"""
    )
    v = evaluate(p, real("api.deepseek.com"), kind="tls", port=443, ech_real=True, doh=True)
    assert (v.verdict, v.rule) == ("violation", "no-deepseek")
    assert not any(s.startswith("5:") for s in v.steps)


def test_step2_allow_rule_non_ai() -> None:
    v = evaluate(policy(ALLOW_PYPI + '[audit]\nscope = "all"\n'), PLAIN, kind="tls", port=443)
    assert (v.verdict, v.rule) == ("allow", "pypi")


def test_step2_allow_rule_runs_residency_for_ai() -> None:
    p = policy(
        """
[residency]
inference = ["EU"]
[[rule]]
id = "openai"
action = "allow"
provider = "openai"
"""
    )
    v = evaluate(p, real("api.openai.com"), kind="tls", port=443)
    # OpenAI documents global inference: it may run anywhere, which is not inside the EU
    assert (v.verdict, v.rule) == ("violation", "inference")


def test_step2_residency_false_exempts() -> None:
    p = policy(
        """
[residency]
inference = ["EU"]
unknown_location = "violation"
[[rule]]
id = "openai"
action = "allow"
provider = "openai"
residency = false
"""
    )
    v = evaluate(p, real("api.openai.com"), kind="tls", port=443)
    assert (v.verdict, v.rule) == ("allow", "openai")


@pytest.mark.parametrize(
    ("scope", "dest", "expected"),
    [
        ("all", PLAIN, ("violation", "allowlist")),
        ("ai", PLAIN, ("allow", None)),
        (
            "all",
            Destination(host="llm.example-ai.com", looks_like_ai=True),
            ("violation", "allowlist"),
        ),
        ("ai", Destination(host="llm.example-ai.com", looks_like_ai=True), ("warn", "unknown_ai")),
        ("ai", ai(), ("allow", None)),
    ],
)
def test_step3_no_rule(scope: str, dest: Destination, expected: tuple[str, str | None]) -> None:
    v = evaluate(policy(f'[audit]\nscope = "{scope}"\n'), dest, kind="tls", port=443)
    assert (v.verdict, v.rule) == expected
    assert v.reason


def test_step3_unknown_ai_severity_configurable() -> None:
    p = policy('[audit]\nunknown_ai = "violation"\n')
    d = real("llm.example-ai.com")
    assert d.looks_like_ai
    assert evaluate(p, d, kind="tls").verdict == "violation"


RESIDENCY = """
[groups]
eu_plus = ["EU", "EEA", "GB", "CH"]
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
jurisdiction_deny = ["CN", "RU"]
unknown_location = "warn"
"""


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        (ai(), ("allow", None)),
        (ai(inference=("EU",)), ("allow", None)),
        (ai(inference=("EEA", "GB")), ("allow", None)),
        (ai(jurisdiction="CN"), ("violation", "jurisdiction")),
        (ai(jurisdiction=None), ("warn", "unknown_location")),
        (ai(inference=("DE", "US")), ("violation", "inference")),
        (ai(inference=("global",)), ("violation", "inference")),
        (ai(inference=("unknown",)), ("warn", "unknown_location")),
        # nothing documented (telemetry, auth, ...): nothing can lie outside
        (ai(inference=(), role="telemetry"), ("allow", None)),
        (ai(inference=("global", "US")), ("violation", "inference")),
        (ai(endpoint_country="US"), ("violation", "endpoint")),
        (ai(endpoint_country=None), ("warn", "unknown_location")),
        (ai(endpoint_country="DE", anycast=True), ("warn", "unknown_location")),
        # the first failing check decides
        (
            ai(jurisdiction="RU", inference=("US",), endpoint_country="US"),
            ("violation", "jurisdiction"),
        ),
        (ai(inference=("US",), endpoint_country="US"), ("violation", "inference")),
        # an unknown earlier does not hide a later failure
        (ai(inference=("unknown",), endpoint_country="US"), ("violation", "endpoint")),
    ],
)
def test_step4_residency(dest: Destination, expected: tuple[str, str | None]) -> None:
    v = evaluate(policy(RESIDENCY), dest, kind="tls", port=443)
    assert (v.verdict, v.rule) == expected
    assert v.reason


def test_step4_real_register_region_narrowing() -> None:
    p = policy(RESIDENCY)
    eu = real("bedrock-runtime.eu-central-1.amazonaws.com")
    us = real("bedrock-runtime.us-east-1.amazonaws.com")
    assert evaluate(p, eu, kind="tls").rule != "inference"
    assert (evaluate(p, us, kind="tls").verdict, evaluate(p, us, kind="tls").rule) == (
        "violation",
        "inference",
    )
    assert evaluate(p, real("api.deepseek.com"), kind="tls").rule == "jurisdiction"


def test_step4_unknown_location_violation() -> None:
    p = policy(RESIDENCY.replace('unknown_location = "warn"', 'unknown_location = "violation"'))
    v = evaluate(p, ai(inference=("unknown",)), kind="tls")
    assert (v.verdict, v.rule) == ("violation", "unknown_location")


def test_step4_unknown_location_allow_still_names_the_check() -> None:
    # POLICY.md: every verdict carries its rule, a built-in name included
    p = policy(RESIDENCY.replace('unknown_location = "warn"', 'unknown_location = "allow"'))
    v = evaluate(p, ai(endpoint_country=None), kind="tls")
    assert (v.verdict, v.rule) == ("allow", "unknown_location")
    assert "cannot be established" in (v.reason or "")


def test_step4_dns_resolvers_are_not_ai_endpoints() -> None:
    # The register lists public resolvers for DoH; [residency] is for AI endpoints only.
    p = policy(RESIDENCY)
    v = evaluate(p, real("dns.quad9.net", "192.0.2.1"), kind="tls", port=443)
    assert (v.verdict, v.rule) == ("warn", "unverifiable")


@pytest.mark.parametrize(
    ("kwargs", "dest", "unverifiable"),
    [
        ({"ech": True, "ech_real": True}, ai(), True),
        ({"ech": True, "ech_real": False}, ai(), False),  # GREASE: judged by its SNI
        ({"doh": True}, PLAIN, True),
        ({"port": 853}, PLAIN, True),
        ({}, Destination(host="cloudflare-dns.com", provider="cloudflare", role="doh"), True),
        ({}, Destination(host=None), True),
        ({"kind": "quic"}, Destination(host=None), True),
        ({}, PLAIN, False),
    ],
)
def test_step5_unverifiable(
    kwargs: dict[str, object], dest: Destination, unverifiable: bool
) -> None:
    args: dict[str, object] = {"kind": "tls", "port": 443, "ip": "192.0.2.1", **kwargs}
    v = evaluate(policy('[audit]\nunverifiable = "violation"\n'), dest, **args)  # type: ignore[arg-type]
    assert (v.rule == "unverifiable") is unverifiable
    if unverifiable:
        assert v.verdict == "violation"


def test_step5_unverifiable_allow_severity_allows_and_names_the_check() -> None:
    v = evaluate(policy('[audit]\nunverifiable = "allow"\n'), Destination(host=None), kind="tls")
    assert (v.verdict, v.rule) == ("allow", "unverifiable")


def test_worst_outcome_wins() -> None:
    # residency says warn, unverifiable says violation
    p = policy(RESIDENCY + '[audit]\nunverifiable = "violation"\n')
    v = evaluate(p, ai(inference=("unknown",)), kind="tls", ech=True, ech_real=True)
    assert (v.verdict, v.rule) == ("violation", "unverifiable")
    # residency violation beats an unverifiable warning
    p = policy(RESIDENCY)
    v = evaluate(p, ai(endpoint_country="US"), kind="tls", doh=True)
    assert (v.verdict, v.rule) == ("violation", "endpoint")


def test_dns_is_not_judged() -> None:
    v = evaluate(policy('[audit]\nscope = "all"\n'), PLAIN, kind="dns", port=53)
    assert v == Verdict(
        "allow", None, "DNS questions are recorded, not judged.", ("dns: not judged",)
    )


@pytest.mark.parametrize(
    ("selectors", "dest", "kw", "matches"),
    [
        ('role = "inference"', ai(), {}, True),
        ('role = ["telemetry", "auth"]', ai(), {}, False),
        ('country = "EU"', ai(), {}, True),
        ('country = ["US"]', ai(), {}, False),
        ("asn = 13335", ai(asn=13335), {}, True),
        ('asn = "AS13335"', ai(asn=13335), {}, True),
        ("asn = [1, 2]", ai(asn=13335), {}, False),
        ('cidr = "192.0.2.0/24"', ai(), {"ip": "192.0.2.7"}, True),
        ('cidr = "192.0.2.0/24"', ai(), {"ip": "198.51.100.7"}, False),
        ('cidr = "2001:db8::/32"', ai(), {"ip": "2001:db8::1"}, True),
        ('cidr = "192.0.2.0/24"', ai(), {}, False),
        ("port = [443, 8443]", ai(), {"port": 8443}, True),
        ("port = 443", ai(), {"port": 80}, False),
        ('process = "node*"', ai(), {"process": "node20"}, True),
        ('process = "node*"', ai(), {"process": "python3"}, False),
        ('process = "node*"', ai(), {}, False),
        ('provider = "openai"\nrole = "inference"', ai(), {}, True),  # AND
        ('provider = "openai"\nrole = "telemetry"', ai(), {}, False),
        ('host = ["nope.com", "api.example-llm.com"]', ai(), {}, True),  # list = any
    ],
)
def test_selectors(selectors: str, dest: Destination, kw: dict[str, object], matches: bool) -> None:
    p = policy(f'[[rule]]\nid = "r"\naction = "deny"\n{selectors}\n')
    v = evaluate(p, dest, kind="tls", **kw)  # type: ignore[arg-type]
    assert (v.rule == "r") is matches


def test_user_group_in_selector_and_nested_groups() -> None:
    p = policy(
        '[groups]\nnordic = ["SE", "NO"]\nnorth = ["nordic", "FI"]\n'
        '[[rule]]\nid = "r"\naction = "deny"\ncountry = "north"\n'
    )
    assert p.groups["north"] == frozenset({"SE", "NO", "FI"})
    assert evaluate(p, ai(endpoint_country="NO"), kind="tls").rule == "r"
    assert evaluate(p, ai(endpoint_country="DK"), kind="tls").rule != "r"


# ---------------------------------------------------------------------------------------------
# Errors: every one a ConfigError with file and line


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("version = 1\n[audit\nscope = 'ai'\n", 2, "not valid TOML"),
        ("version = 1\nscope = 'ai'\n", 2, "unknown key 'scope'"),
        ("version = 2\n", 1, "version must be 1"),
        ("[audit]\nscope = 'ai'\n", None, "version must be 1"),
        ("version = 1\n[audit]\nscope = 'some'\n", 3, "scope must be"),
        ("version = 1\n[audit]\n\nunknown_ai = 'block'\n", 4, "unknown_ai must be"),
        ("version = 1\n[residency]\nunknown_location = 'maybe'\n", 3, "unknown_location must"),
        ("version = 1\n[audit]\nscop = 'ai'\n", 3, "unknown key 'scop'"),
        ("version = 1\n[groups]\na = ['b']\nb = ['a']\n", 4, "group cycle"),
        ("version = 1\n[groups]\na = ['a']\n", 3, "group cycle"),
        ("version = 1\n[groups]\nDE = ['FR']\n", 3, "bad group name"),
        ("version = 1\n[residency]\ninference = ['eu_plus']\n", 3, "unknown group 'eu_plus'"),
        ("version = 1\n[residency]\nendpoint = ['XX']\n", 3, "bad country code 'XX'"),
        ("version = 1\n[residency]\nendpoint = ['de']\n", 3, "bad country code 'de'"),
        (
            "version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nhost = 'x.com'\n"
            "[[rule]]\nid = 'b'\naction = 'deny'\nprovider = 'nosuch'\n",
            9,
            "unknown provider id 'nosuch'",
        ),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nhost = 'a..com'\n", 5, "bad host glob"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nreason = 'x'\n", 2, "no selector"),
        (
            "version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nport = 1\n"
            "[[rule]]\nid = 'a'\naction = 'deny'\nport = 2\n",
            7,
            "duplicate rule id 'a'",
        ),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'block'\nport = 1\n", 4, "action must be"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nport = 70000\n", 5, "bad port"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nport = '443'\n", 5, "bad port"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nasn = 'ASX'\n", 5, "bad asn"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\ncidr = '10.0.0.1/8'\n", 5, "bad cidr"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\ncidr = 'nope'\n", 5, "bad cidr"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\ncountry = 'ZZ'\n", 5, "bad country"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nrole = 'chat'\n", 5, "unknown role"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nhosts = 'x.com'\n", 5, "unknown key"),
        ("version = 1\n[[rule]]\naction = 'deny'\nport = 1\n", 2, "needs an id"),
        ("version = 1\n[[rule]]\nid = 'allowlist'\naction = 'deny'\nport = 1\n", 3, "built-in"),
        ("version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nport = []\n", 5, "non-empty list"),
        (
            "version = 1\n[[rule]]\nid = 'a'\naction = 'deny'\nport = 1\nresidency = false\n",
            6,
            "residency = false",
        ),
    ],
)
def test_errors(text: str, line: int | None, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "bad.toml")
    err = info.value
    assert needle in str(err)
    assert err.path == "bad.toml"
    assert err.line == line
    assert err.exit_code == 2
    if line is not None:
        assert str(err).startswith(f"bad.toml:{line}: ")


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path / "none.toml")
    assert "cannot read policy" in str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_examples_are_valid(name: str) -> None:
    p = load_policy(EXAMPLES / name)
    assert p.version == 1


def test_examples_behave() -> None:
    eu = load_policy(EXAMPLES / "eu-only-inference.toml")
    assert evaluate(eu, real("api.openai.com"), kind="tls").verdict == "violation"
    assert evaluate(eu, ai(), kind="tls").verdict == "allow"
    cn = load_policy(EXAMPLES / "no-cn-ru-vendors.toml")
    assert evaluate(cn, real("api.deepseek.com"), kind="tls").rule == "no-unapproved-vendors"
    ci = load_policy(EXAMPLES / "ci-allowlist.toml")
    assert ci.scope == "all"
    assert evaluate(ci, real("pypi.org"), kind="tls", port=443).rule == "python-packages"
    assert evaluate(ci, real("objects.githubusercontent.com"), kind="tls", port=443).verdict == (
        "allow"
    )
    assert evaluate(ci, real("api.openai.com"), kind="tls", port=443).rule == "allowlist"
    audit = load_policy(EXAMPLES / "audit-only.toml")
    for host in ("api.openai.com", "api.deepseek.com", "pypi.org"):
        assert evaluate(audit, real(host), kind="tls").verdict == "allow"


def test_ech_is_real() -> None:
    assert ech_is_real("cloudflare-ech.com", True)
    assert not ech_is_real("api.openai.com", True)  # GREASE
    assert ech_is_real("api.openai.com", True, name_has_ech_config=True)
    assert not ech_is_real("cloudflare-ech.com", False)


# ---------------------------------------------------------------------------------------------
# Properties

_HOSTS = ["api.openai.com", "pypi.org", "api.deepseek.com", "a.b.example.com", None]
_SELECTOR = st.one_of(
    st.sampled_from(_HOSTS[:-1]).map(lambda h: f'host = "{h}"'),
    st.sampled_from(["*.example.com", "**.com", "*.*"]).map(lambda h: f'host = "{h}"'),
    st.sampled_from(["openai", "deepseek", "aws"]).map(lambda p: f'provider = "{p}"'),
    st.sampled_from(["inference", "telemetry"]).map(lambda r: f'role = "{r}"'),
    st.sampled_from(["US", "DE", "EU", "CN"]).map(lambda c: f'country = "{c}"'),
    st.sampled_from([443, 80]).map(lambda p: f"port = {p}"),
)
_DESTS = st.builds(
    Destination,
    host=st.sampled_from(_HOSTS),
    provider=st.sampled_from([None, "openai", "deepseek", "aws"]),
    role=st.sampled_from([None, "inference", "telemetry"]),
    jurisdiction=st.sampled_from([None, "US", "CN", "FR"]),
    inference=st.sampled_from([(), ("DE",), ("US",), ("EU",), ("global",), ("unknown",)]),
    endpoint_country=st.sampled_from([None, "DE", "US", "CN"]),
    anycast=st.booleans(),
    looks_like_ai=st.booleans(),
)
_SEVERITY = st.sampled_from(["allow", "warn", "violation"])


@st.composite
def _policies(draw: st.DrawFn, scope: str | None = None) -> str:
    parts = ["version = 1", "[audit]"]
    parts.append(f'scope = "{scope or draw(st.sampled_from(["ai", "all"]))}"')
    parts.append(f'unknown_ai = "{draw(_SEVERITY)}"')
    parts.append(f'unverifiable = "{draw(_SEVERITY)}"')
    parts.append("[residency]")
    parts.append(f'unknown_location = "{draw(_SEVERITY)}"')
    if draw(st.booleans()):
        parts.append('inference = ["EU"]')
    if draw(st.booleans()):
        parts.append('endpoint = ["EEA", "GB"]')
    if draw(st.booleans()):
        parts.append('jurisdiction_deny = ["CN", "RU"]')
    for i in range(draw(st.integers(0, 3))):
        parts.append(_rule_text(f"r{i}", draw(st.sampled_from(["allow", "deny"])), draw))
    return "\n".join(parts) + "\n"


def _rule_text(rule_id: str, action: str, draw: st.DrawFn) -> str:
    sels = draw(st.lists(_SELECTOR, min_size=1, max_size=2, unique_by=lambda s: s.split("=")[0]))
    residency = "\nresidency = false" if action == "allow" and draw(st.booleans()) else ""
    return f'[[rule]]\nid = "{rule_id}"\naction = "{action}"\n' + "\n".join(sels) + residency


def _insert(text: str, rule: str) -> str:
    """Put ``rule`` first among the rules: order must not matter for these properties."""
    if "[[rule]]" in text:
        return text.replace("[[rule]]", rule + "\n[[rule]]", 1)
    return text + rule + "\n"


_CONN = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["tls", "quic"]),
        "port": st.sampled_from([443, 80, 853]),
        "ech_real": st.booleans(),
        "doh": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None)
@given(_policies(), _DESTS, _CONN, st.data())
def test_adding_a_deny_rule_never_turns_a_violation_into_an_allow(
    text: str, dest: Destination, conn: dict[str, object], data: st.DataObject
) -> None:
    before = evaluate(parse_policy(text), dest, **conn)  # type: ignore[arg-type]
    extra = data.draw(st.composite(lambda draw: _rule_text("extra", "deny", draw))())
    after = evaluate(parse_policy(_insert(text, extra)), dest, **conn)  # type: ignore[arg-type]
    order = ["allow", "warn", "violation"]
    if before.verdict == "violation":
        assert after.verdict == "violation"
    assert order.index(after.verdict) >= order.index(before.verdict)


@settings(max_examples=200, deadline=None)
@given(_policies(scope="all"), _DESTS, _CONN, st.data())
def test_adding_an_allow_rule_never_turns_an_allow_into_a_violation(
    text: str, dest: Destination, conn: dict[str, object], data: st.DataObject
) -> None:
    before = evaluate(parse_policy(text), dest, **conn)  # type: ignore[arg-type]
    extra = data.draw(st.composite(lambda draw: _rule_text("extra", "allow", draw))())
    after = evaluate(parse_policy(_insert(text, extra)), dest, **conn)  # type: ignore[arg-type]
    if before.verdict == "allow":
        assert after.verdict != "violation"


@settings(max_examples=100, deadline=None)
@given(_policies(), _DESTS, _CONN)
def test_verdict_is_deterministic_and_well_formed(
    text: str, dest: Destination, conn: dict[str, object]
) -> None:
    p = parse_policy(text)
    first = evaluate(p, dest, **conn)  # type: ignore[arg-type]
    again = evaluate(parse_policy(text), dataclasses.replace(dest), **conn)  # type: ignore[arg-type]
    assert first == again
    assert first.verdict in ("allow", "warn", "violation")
    assert first.steps
    if first.rule is not None:
        assert first.reason
