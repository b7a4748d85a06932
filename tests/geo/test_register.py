"""The shipped provider register, and the loader's refusal of bad data."""

from __future__ import annotations

import copy
import tomllib
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from geo.countries import GLOBAL, GROUPS, ISO_ALPHA2, UNKNOWN, is_concrete
from geo.errors import GeoError, RegisterError
from geo.register import (
    CONFIDENCE,
    KINDS,
    PROMPT_ROLES,
    ROLES,
    Register,
    default_register_path,
    load_register,
    parse_register,
)

FIXED_IDS = (  # noqa: SIM905  # the DESIGN.md list, as written there
    "openai anthropic google aws microsoft github mistral cohere deepseek zhipu moonshot alibaba "
    "baidu bytedance tencent minimax groq cerebras together fireworks replicate perplexity xai "
    "huggingface cloudflare nvidia oracle ibm openrouter cursor codeium tabnine jetbrains "
    "sourcegraph"
).split()


@pytest.fixture(scope="module")
def register() -> Register:
    return load_register()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return tomllib.loads(Path(default_register_path()).read_text(encoding="utf-8"))


# --- the shipped register -------------------------------------------------------------------


def test_loads_with_at_least_50_providers(register: Register) -> None:
    assert len(register.providers) >= 50
    assert sum(len(p.endpoints) for p in register.providers) >= 200


def test_every_fixed_design_id_is_present(register: Register) -> None:
    missing = [pid for pid in FIXED_IDS if register.provider(pid) is None]
    assert missing == []


def test_every_endpoint_has_source_and_as_of(register: Register) -> None:
    for provider, endpoint in register.endpoints():
        assert endpoint.source.startswith("https://"), (provider.id, endpoint.host)
        assert isinstance(endpoint.as_of, date), (provider.id, endpoint.host)
        assert endpoint.as_of <= date(2026, 12, 31)


def test_no_unverified_endpoint_claims_an_inference_location(register: Register) -> None:
    for _, endpoint in register.endpoints():
        if endpoint.confidence == "unverified":
            assert not is_concrete(endpoint.inference), endpoint.host
            assert GLOBAL not in endpoint.inference, endpoint.host
            assert endpoint.narrow == "none"
            assert endpoint.region_inference == ()


def test_vocabularies(register: Register) -> None:
    for provider in register.providers:
        assert provider.home in ISO_ALPHA2
        assert set(provider.kinds) <= KINDS
        for endpoint in provider.endpoints:
            assert endpoint.role in ROLES
            assert endpoint.confidence in CONFIDENCE
            for code in (*endpoint.inference, *endpoint.storage):
                assert code in ISO_ALPHA2 or code in GROUPS or code in (GLOBAL, UNKNOWN)
            if endpoint.role in PROMPT_ROLES:
                assert endpoint.inference, endpoint.host


def test_prompt_free_roles_claim_no_inference(register: Register) -> None:
    for _, endpoint in register.endpoints():
        if endpoint.role in {"auth", "telemetry", "doh", "download", "control-plane"}:
            assert endpoint.inference == (), endpoint.host


def test_host_patterns_are_unique(register: Register) -> None:
    counts = Counter(e.host for _, e in register.endpoints() if not e.duplicate_ok)
    assert [host for host, n in counts.items() if n > 1] == []


def test_coverage_of_required_product_families(register: Register) -> None:
    hosts = {e.host for _, e in register.endpoints()}
    for host in (
        # coding tools
        "api.githubcopilot.com",
        "**.cursor.sh",
        "server.codeium.com",
        "api.tabnine.com",
        "api.jetbrains.ai",
        "q.{region}.amazonaws.com",
        "cloudaicompanion.googleapis.com",
        "cody-gateway.sourcegraph.com",
        "api.anthropic.com",
        # hyperscaler regional endpoints
        "bedrock-runtime.{region}.amazonaws.com",
        "{region}-aiplatform.googleapis.com",
        "*.openai.azure.com",
        "inference.generativeai.{region}.oci.oraclecloud.com",
        # non-US/EU providers
        "api.deepseek.com",
        "open.bigmodel.cn",
        "api.moonshot.cn",
        "dashscope.aliyuncs.com",
        "api.minimaxi.com",
        "qianfan.baidubce.com",
        "ark.cn-beijing.volces.com",
        # platforms and gateways
        "api.together.ai",
        "api.fireworks.ai",
        "api.groq.com",
        "api.cerebras.ai",
        "api.sambanova.ai",
        "api.deepinfra.com",
        "openrouter.ai",
        "router.huggingface.co",
        "gateway.ai.cloudflare.com",
        "integrate.api.nvidia.com",
        # resolvers
        "dns.google",
        "cloudflare-dns.com",
        "dns.quad9.net",
    ):
        assert host in hosts, host


def test_doh_resolvers_have_kind_and_ips(register: Register) -> None:
    doh = [(p, e) for p, e in register.endpoints() if e.role == "doh"]
    assert len(doh) >= 40
    for provider, _ in doh:
        assert "dns-resolver" in provider.kinds
    ips = {ip for _, e in doh for ip in e.ips}
    for ip in ("1.1.1.1", "8.8.8.8", "9.9.9.9", "2606:4700:4700::1111", "223.5.5.5"):
        assert ip in ips


def test_generic_zones_are_not_registered(register: Register) -> None:
    hosts = {e.host for _, e in register.endpoints()}
    for zone in (
        "*.googleapis.com",
        "**.googleapis.com",
        "*.amazonaws.com",
        "**.amazonaws.com",
        "*.azure.com",
        "*.github.com",
        "github.com",
        "api.github.com",
    ):
        assert zone not in hosts


def test_shared_hosts_name_known_providers(register: Register) -> None:
    assert {s.host for s in register.shared_hosts} >= {
        "github.com",
        "api.github.com",
        "storage.googleapis.com",
        "login.microsoftonline.com",
        "api.cloudflare.com",
    }
    for shared in register.shared_hosts:
        assert set(shared.used_by) <= register.ids()


def test_documented_facts_spot_checks(register: Register) -> None:
    def endpoint(provider_id: str, host: str) -> Any:
        provider = register.provider(provider_id)
        assert provider is not None
        return next(e for e in provider.endpoints if e.host == host)

    assert endpoint("anthropic", "api.anthropic.com").inference == (GLOBAL,)
    assert endpoint("openai", "eu.api.openai.com").inference == ("EEA", "CH")
    assert endpoint("mistral", "api.eu.mistral.ai").inference == ("EEA", "CH")
    assert endpoint("deepseek", "api.deepseek.com").storage == ("CN",)
    # Claude Platform on AWS: the region is where the request enters, not where inference runs
    assert endpoint("anthropic", "aws-external-anthropic.{region}.api.aws").narrow == "none"
    assert register.provider("deepseek").home == "CN"  # type: ignore[union-attr]
    assert register.provider("mistral").home == "FR"  # type: ignore[union-attr]


# --- refusal of bad data ------------------------------------------------------------------------


def _provider(raw: dict[str, Any], pid: str) -> dict[str, Any]:
    return next(p for p in raw["provider"] if p["id"] == pid)


def _refused(data: dict[str, Any], *fragments: str) -> RegisterError:
    with pytest.raises(RegisterError) as info:
        parse_register(data, "register.toml")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert message.startswith("register.toml: ")
    return info.value


def test_error_is_a_geo_error() -> None:
    assert issubclass(RegisterError, GeoError)


def test_duplicate_provider_id(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["provider"].append(copy.deepcopy(_provider(raw, "openai")))
    _refused(data, "duplicate provider id 'openai'")


def test_bad_home_country(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "mistral")["home"] = "EU"
    err = _refused(data, "provider 'mistral'", "home 'EU'")
    assert err.entry == "provider 'mistral'"


def test_bad_inference_code(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["inference"] = ["UK"]
    _refused(data, "endpoint 'api.openai.com'", "'UK' is not an ISO 3166-1 alpha-2 code")


def test_unknown_must_stand_alone(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["inference"] = ["US", "unknown"]
    _refused(data, "'unknown' must stand alone")


def test_bad_role_and_kind(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["role"] = "chat"
    _refused(data, "role 'chat'")
    data = copy.deepcopy(raw)
    _provider(data, "openai")["kinds"] = ["llm"]
    _refused(data, "kinds must be a non-empty subset")


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("*.com", "two literal labels"),
        ("api.**.example.com", "leftmost"),
        ("API.example.com", "lower-case"),
        ("api..example.com", "empty label"),
        ("api.example.com.", "must not end in a dot"),
        ("{region}.{region}.example.com", "more than one"),
        ("a b.example.com", "not a host-name label"),
    ],
)
def test_bad_pattern_syntax(raw: dict[str, Any], host: str, fragment: str) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["host"] = host
    _refused(data, fragment)


def test_region_cloud_iff_region_placeholder(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    bedrock = _provider(data, "aws")["endpoint"][0]
    assert "{region}" in bedrock["host"]
    del bedrock["region_cloud"]
    _refused(data, "no region_cloud")
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["region_cloud"] = "aws"
    _refused(data, "has no {region}")
    data = copy.deepcopy(raw)
    _provider(data, "aws")["endpoint"][0]["region_cloud"] = "digitalocean"
    _refused(data, "unknown region_cloud 'digitalocean'")


def test_bad_date(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["as_of"] = "late 2026"
    _refused(data, "as_of must be a date")


def test_provider_without_endpoints(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "cohere")["endpoint"] = []
    _refused(data, "provider 'cohere'", "at least one")


def test_duplicate_host_pattern_unless_deliberate(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    copied = copy.deepcopy(_provider(raw, "openai")["endpoint"][0])
    _provider(data, "cohere")["endpoint"].append(copied)
    _refused(data, "'api.openai.com' is already registered under provider 'openai'")
    copied = copy.deepcopy(copied)
    copied["duplicate_ok"] = True
    data = copy.deepcopy(raw)
    _provider(data, "cohere")["endpoint"].append(copied)
    register = parse_register(data)
    assert any(e.duplicate_ok for _, e in register.endpoints())


def test_unverified_may_not_claim_a_location(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    endpoint = _provider(data, "openai")["endpoint"][1]  # us.api.openai.com, ["US"]
    endpoint["confidence"] = "unverified"
    _refused(data, "unverified endpoint must not claim an inference location")


def test_unknown_keys_are_refused(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["infrence"] = ["US"]
    _refused(data, "unknown keys ['infrence']")
    data = copy.deepcopy(raw)
    data["providers"] = []
    _refused(data, "unknown top-level keys")


def test_prompt_role_needs_inference(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "openai")["endpoint"][0]["inference"] = []
    _refused(data, "inference must not be empty")


def test_endpoint_matching_a_shared_host_is_refused(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    _provider(data, "github")["endpoint"][0]["host"] = "*.github.com"
    _refused(data, "'*.github.com' of provider 'github' matches 'api.github.com'")


def test_bad_ip(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    google = _provider(data, "google")
    dns = next(e for e in google["endpoint"] if e["host"] == "dns.google")
    dns["ips"] = ["8.8.8.888"]
    _refused(data, "'8.8.8.888' is not an IP address")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "register.toml"
    path.write_text("schema = 1\n[[provider]\n", encoding="utf-8")
    with pytest.raises(RegisterError) as info:
        load_register(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegisterError, match="cannot read register"):
        load_register(tmp_path / "nope.toml")


def test_round_trip_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "register.toml"
    path.write_bytes(Path(default_register_path()).read_bytes())
    assert load_register(path).ids() == load_register().ids()
