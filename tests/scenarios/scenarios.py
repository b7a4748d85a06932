"""The scenarios: for each, a capture, a policy, and what POLICY.md prescribes per connection.

Expectations are derived from ../shared/POLICY.md alone; each carries the sentence it rests on.
Every scenario uses the geo folder of :func:`harness.build_geo_dir` (DE, NL, US, ... are
addresses that folder places in that country).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from tests.scenarios.harness import (
    ANYCAST,
    ASN_ONLY,
    CH,
    CN,
    DE,
    DE6,
    FR,
    GB,
    HK,
    IE,
    JP,
    NL,
    NO,
    NOWHERE,
    SE,
    US,
    Capture,
    Expect,
)

# -- the sentences of POLICY.md the expectations rest on --------------------------------------

DENY = "Meaning 1: A `deny` rule matches: **violation**, decided by that rule."
DENY_FIRST = DENY + " (Steps run in order: a deny wins over an allow rule listed before it.)"
ALLOW = "Meaning 2: Else an `allow` rule matches: allowed."
ALLOW_RES = (
    "Meaning 2: allowed; if the destination is an AI endpoint and the rule does not say "
    "`residency = false`, the `[residency]` checks run (step 4)."
)
RES_FALSE = "`residency = false` on an allow rule exempts what it allows from `[residency]`."
ALLOWLIST = 'Meaning 3: no rule matches: under `scope = "all"` a **violation** (`allowlist`).'
UNJUDGED = (
    'Meaning 3: under `scope = "ai"` a destination that is not an AI endpoint is allowed unjudged.'
)
UNKNOWN_AI = (
    'Meaning 3: under `scope = "ai"` ... a host that looks like an AI API but is not in the '
    "register gets `unknown_ai`."
)
PASSES = (
    'Meaning 3/4: under `scope = "ai"` an AI endpoint goes to step 4, and every residency '
    "check passes."
)
JURISDICTION = (
    "Meaning 4: Residency: `jurisdiction_deny` (provider home country), then `inference`, then "
    "`endpoint`. The first that fails is a **violation**."
)
INFERENCE = (
    "Meaning 4: `inference` (every location the register documents for this endpoint must lie "
    "inside; a region in the host name narrows it). The first that fails is a **violation**."
)
INFERENCE_GLOBAL = (
    INFERENCE + " The register documents `global` (any geography) for this host: a location "
    "that is established (anywhere) and does not lie inside the allowed set."
)
ENDPOINT = (
    "Meaning 4: `endpoint` (measured location of the IP). The first that fails is a **violation**."
)
UNKNOWN_LOCATION = "Meaning 4: a location that cannot be established gets `unknown_location`."
UNVERIFIABLE = (
    "Meaning 5: Independently, a connection that cannot be verified gets `unverifiable`: DNS "
    "over HTTPS or TLS; a connection with no SNI and no name from DNS; and ECH whose outer name "
    "is not the real destination."
)
REAL_ECH = (
    "Meaning 5: ECH counts as real when the outer SNI is a known ECH client-facing name (such "
    "as `cloudflare-ech.com`), or when the DNS HTTPS record that the client looked up for the "
    "name carried an ECH config."
)
GREASE = (
    "Meaning 5: An ECH extension alone proves nothing: ... GREASE ECH ... with the real name as "
    "the outer SNI, and that connection is judged by its SNI like any other."
)
UNLESS_DENY = "Meaning 5: ... gets `unverifiable`, unless a deny already made it a violation."
WORST = "The worst outcome wins: violation > warn > allow."
NOT_AI_DOH = (
    '`[residency]`: checks on every AI endpoint; `scope = "ai"`: the provider register decides '
    "what is an AI endpoint. A public DNS resolver is registered (role `doh`, a provider of kind "
    "`dns-resolver`) so that DoH can be recognised, not because it is an AI endpoint: only "
    "`unverifiable` applies to it."
)
NO_INFERENCE_HERE = (
    "Meaning 4: `inference` (every location the register documents for this endpoint must lie "
    "inside). The register documents no inference location for an auth, telemetry, download or "
    "control-plane host (none runs there; the register holds [] for it, not 'unknown'), so "
    "there is nothing outside the allowed set and nothing that cannot be established."
)
DNS_NAME = (
    "Meaning: DNS questions ... name later connections; DESIGN.md `host`: the SNI, else a "
    "name from DNS answers for `dst`."
)
SNI_FIRST = "DESIGN.md `host`: the destination name used for judging: the SNI, else DNS."
GLOB = (
    "Values: `host` (glob on the destination name, case-insensitive: `*` matches exactly one "
    "label, `**` any number of labels)."
)
SELECTORS = (
    "Values: Rule selectors, all optional, combined with AND; a list means any of its items."
)
PROCESS = (
    "Values: `process` (executable name glob, where the process is known); replay knows no "
    "process, so a rule whose only selector is `process` cannot match."
)
GROUPS = (
    "Values: A country is an ISO 3166-1 alpha-2 code, a built-in group (`EU`, `EEA`) or a name "
    "from `[groups]`. Groups may contain groups."
)


def allow(
    rule: str | frozenset[str | None] | None = None, why: str = UNJUDGED, **kw: str
) -> Expect:
    return Expect("allow", rule, why=why, **kw)


def warn(rule: str, why: str, **kw: str) -> Expect:
    return Expect("warn", rule, why=why, **kw)


def violation(rule: str | frozenset[str | None], why: str, **kw: str) -> Expect:
    return Expect("violation", rule, why=why, **kw)


def either(*rules: str | None) -> frozenset[str | None]:
    """POLICY.md leaves open which of equally bad outcomes names the rule."""
    return frozenset(rules)


@dataclass(frozen=True)
class Scenario:
    """A capture, a policy, and the expected verdict of every connection."""

    name: str
    policy: str
    build: Callable[[], Capture]

    @cached_property
    def capture(self) -> Capture:
        return self.build()

    @cached_property
    def rule_reasons(self) -> dict[str, str]:
        data = tomllib.loads(self.policy)
        return {r["id"]: r["reason"] for r in data.get("rule", []) if "reason" in r}


HEADER = """\
version = 1

[audit]
scope = "{scope}"
unknown_ai = "{unknown_ai}"
unverifiable = "{unverifiable}"

[groups]
eu_plus = ["EU", "EEA", "GB", "CH"]
"""


def header(scope: str = "ai", unknown_ai: str = "warn", unverifiable: str = "warn") -> str:
    return HEADER.format(scope=scope, unknown_ai=unknown_ai, unverifiable=unverifiable)


# =============================================================================================
# 1. deny rules (step 1)
# =============================================================================================

DENY_POLICY = (
    header()
    + """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
jurisdiction_deny = ["CN", "RU"]
unknown_location = "warn"

[[rule]]
id = "deepseek-pilot"
action = "allow"
host = "api.deepseek.com"
residency = false
reason = "pilot approved by the CTO (SEC-200)"

[[rule]]
id = "no-unapproved-vendors"
action = "deny"
provider = ["deepseek", "zhipu", "moonshot"]
reason = "not approved by procurement (SEC-123)"

[[rule]]
id = "blocked-network"
action = "deny"
cidr = "198.51.100.128/25"
reason = "network on the sanctions list (SEC-321)"
"""
)


def build_deny() -> Capture:
    c = Capture()
    c.dns("dns-deepseek", "api.deepseek.com", [HK])
    c.tls(
        "deepseek-despite-earlier-allow",
        "api.deepseek.com",
        HK,
        violation("no-unapproved-vendors", DENY_FIRST),
    )
    c.tls(
        "zhipu-at-eu-address",
        "open.bigmodel.cn",
        DE,
        violation("no-unapproved-vendors", DENY),
    )
    c.quic("moonshot-quic", "api.moonshot.ai", US, violation("no-unapproved-vendors", DENY))
    c.tls(
        "upper-case-sni",
        "API.DeepSeek.COM",
        DE,
        violation("no-unapproved-vendors", DENY + " (DNS names are case-insensitive)"),
    )
    c.tls("cidr-deny-no-sni", None, CN, violation("blocked-network", UNLESS_DENY))
    c.tls("cidr-deny-non-ai", "pypi.org", CN, violation("blocked-network", DENY))
    c.tls("non-ai-elsewhere", "pypi.org", US, allow(None, UNJUDGED))
    c.tls("ai-passes-residency", "eu.api.openai.com", DE, allow(None, PASSES))
    return c


# =============================================================================================
# 2. allow rule, then residency (step 2)
# =============================================================================================

ALLOW_POLICY = (
    header()
    + """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
jurisdiction_deny = ["CN", "RU"]
unknown_location = "warn"

[[rule]]
id = "bedrock"
action = "allow"
host = "bedrock-runtime.*.amazonaws.com"
reason = "Amazon Bedrock under the AWS DPA (DPA-2024-07)"

[[rule]]
id = "openai-eu"
action = "allow"
host = "eu.api.openai.com"

[[rule]]
id = "registries"
action = "allow"
host = ["pypi.org", "files.pythonhosted.org"]

[[rule]]
id = "sber-trial"
action = "allow"
provider = "sber"
"""
)


def build_allow() -> Capture:
    c = Capture()
    c.tls(
        "bedrock-eu-central-1",
        "bedrock-runtime.eu-central-1.amazonaws.com",
        DE,
        allow("bedrock", ALLOW_RES),
    )
    c.tls(
        "bedrock-us-east-1",
        "bedrock-runtime.us-east-1.amazonaws.com",
        DE,
        violation("inference", ALLOW_RES + " " + INFERENCE),
    )
    c.tls(
        "bedrock-eu-west-1-at-us-address",
        "bedrock-runtime.eu-west-1.amazonaws.com",
        US,
        violation("endpoint", ALLOW_RES + " " + ENDPOINT),
    )
    c.tls("openai-eu-nl", "eu.api.openai.com", NL, allow("openai-eu", ALLOW_RES))
    c.quic(
        "openai-eu-jp-quic",
        "eu.api.openai.com",
        JP,
        violation("endpoint", ALLOW_RES + " " + ENDPOINT),
    )
    c.tls("registry-us", "pypi.org", US, allow("registries", ALLOW))
    c.tls(
        "registry-at-cn-address",
        "files.pythonhosted.org",
        CN,
        allow("registries", ALLOW + " Not an AI endpoint, so no residency checks."),
    )
    c.tls(
        "sber-allowed-but-ru",
        "gigachat.devices.sberbank.ru",
        DE,
        violation("jurisdiction", ALLOW_RES + " " + JURISDICTION),
    )
    return c


# =============================================================================================
# 3. residency = false
# =============================================================================================

RESIDENCY_FALSE_POLICY = (
    header()
    + """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
jurisdiction_deny = ["CN", "RU"]
unknown_location = "violation"

[[rule]]
id = "bedrock-any-region"
action = "allow"
host = "bedrock-runtime.*.amazonaws.com"
residency = false

[[rule]]
id = "deepseek-lab"
action = "allow"
host = "api.deepseek.com"
residency = false
reason = "isolated evaluation lab (LAB-7)"

[[rule]]
id = "openai-eu"
action = "allow"
host = "eu.api.openai.com"

[[rule]]
id = "lab-net"
action = "allow"
cidr = "192.0.2.0/25"
residency = false
"""
)


def build_residency_false() -> Capture:
    c = Capture()
    c.tls(
        "bedrock-us-at-us",
        "bedrock-runtime.us-east-1.amazonaws.com",
        US,
        allow("bedrock-any-region", RES_FALSE),
    )
    c.quic(
        "bedrock-tokyo-quic",
        "bedrock-runtime.ap-northeast-1.amazonaws.com",
        JP,
        allow("bedrock-any-region", RES_FALSE),
    )
    c.tls(
        "deepseek-exempt-from-jurisdiction",
        "api.deepseek.com",
        HK,
        allow("deepseek-lab", RES_FALSE),
    )
    c.tls(
        "openai-eu-rule-keeps-residency",
        "eu.api.openai.com",
        US,
        violation("endpoint", ALLOW_RES + " " + ENDPOINT),
    )
    c.tls(
        "azure-in-lab-net",
        "myres.openai.azure.com",
        DE,
        allow("lab-net", RES_FALSE + " (unknown inference location is not checked)"),
    )
    c.tls(
        "azure-outside-lab-net",
        "myres.openai.azure.com",
        NL,
        violation("unknown_location", UNKNOWN_LOCATION + ' unknown_location = "violation".'),
    )
    c.tls(
        "lab-net-no-sni",
        None,
        DE,
        warn("unverifiable", UNVERIFIABLE + " residency = false exempts only [residency]."),
    )
    return c


# =============================================================================================
# 4. scope = "all": the CI allowlist
# =============================================================================================

ALLOWLIST_POLICY = (
    header(scope="all")
    + """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
unknown_location = "warn"

[[rule]]
id = "package-registries"
action = "allow"
host = ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "*.github.com"]

[[rule]]
id = "bedrock-eu"
action = "allow"
host = "bedrock-runtime.eu-*.amazonaws.com"
reason = "Amazon Bedrock in EU regions (DPA-2024-07)"

[[rule]]
id = "resolver"
action = "allow"
host = "dns.google"
"""
)


def build_allowlist() -> Capture:
    c = Capture()
    c.dns("dns-github", "github.com", [US])
    c.tls("pypi", "pypi.org", US, allow("package-registries", ALLOW))
    c.tls("npm", "registry.npmjs.org", US, allow("package-registries", ALLOW))
    c.tls("api-github", "api.github.com", US, allow("package-registries", ALLOW + " " + GLOB))
    c.tls("github-apex", "github.com", US, violation("allowlist", ALLOWLIST + " " + GLOB))
    c.tls(
        "github-two-labels",
        "codeload.eu.github.com",
        US,
        violation("allowlist", ALLOWLIST + " " + GLOB),
    )
    c.tls("other-site", "example.com", NL, violation("allowlist", ALLOWLIST))
    c.tls("ai-without-rule", "api.openai.com", US, violation("allowlist", ALLOWLIST))
    c.quic(
        "unknown-ai-without-rule",
        "api.some-new-llm.ai",
        US,
        violation("allowlist", ALLOWLIST + " (unknown_ai is the scope = 'ai' branch)"),
    )
    c.tls(
        "bedrock-eu-west-1",
        "bedrock-runtime.eu-west-1.amazonaws.com",
        IE,
        allow("bedrock-eu", ALLOW_RES),
    )
    c.tls(
        "bedrock-eu-at-us-address",
        "bedrock-runtime.eu-central-1.amazonaws.com",
        US,
        violation("endpoint", ALLOW_RES + " " + ENDPOINT),
    )
    c.tls(
        "bedrock-us-not-listed",
        "bedrock-runtime.us-east-1.amazonaws.com",
        DE,
        violation("allowlist", ALLOWLIST),
    )
    c.tls("no-name-at-all", None, DE, violation("allowlist", ALLOWLIST + " " + WORST))
    c.tls(
        "doh-allowed-by-rule",
        "dns.google",
        US,
        warn("unverifiable", ALLOW + " " + NOT_AI_DOH + " " + WORST),
    )
    return c


# =============================================================================================
# 5. scope = "ai" and unknown_ai, at each severity
# =============================================================================================

UNKNOWN_AI_POLICY = """
[residency]
endpoint = ["eu_plus"]
unknown_location = "warn"

[[rule]]
id = "acme-trial"
action = "allow"
host = "api.acme-gpt.com"
reason = "trial under contract C-77"

[[rule]]
id = "no-newvendor"
action = "deny"
host = "llm.newvendor.io"
"""


def build_unknown_ai(severity: str) -> Callable[[], Capture]:
    unknown: Expect
    if severity == "allow":
        unknown = allow("unknown_ai", UNKNOWN_AI + ' unknown_ai = "allow".')
    elif severity == "warn":
        unknown = warn("unknown_ai", UNKNOWN_AI)
    else:
        unknown = violation("unknown_ai", UNKNOWN_AI + ' unknown_ai = "violation".')

    def build() -> Capture:
        c = Capture()
        c.tls("non-ai-us", "example.com", US, allow(None, UNJUDGED))
        c.tls("non-ai-jp", "static.example.net", JP, allow(None, UNJUDGED))
        c.tls("unknown-ai-tls", "api.some-new-llm.ai", DE, unknown)
        c.quic("unknown-ai-quic", "api.some-new-llm.ai", US, unknown)
        c.tls(
            "unknown-ai-allowed-by-rule",
            "api.acme-gpt.com",
            US,
            allow("acme-trial", ALLOW + " Not in the register: no residency checks."),
        )
        c.tls("unknown-ai-denied-by-rule", "llm.newvendor.io", DE, violation("no-newvendor", DENY))
        c.tls("registered-ai-passes", "eu.api.openai.com", SE, allow(None, PASSES))
        c.tls("registered-ai-endpoint", "eu.api.openai.com", US, violation("endpoint", ENDPOINT))
        return c

    return build


# =============================================================================================
# 6. jurisdiction_deny
# =============================================================================================

JURISDICTION_POLICY = (
    header()
    + """
[residency]
jurisdiction_deny = ["CN", "RU"]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
unknown_location = "warn"

[[rule]]
id = "deepseek-eval"
action = "allow"
provider = "deepseek"
"""
)


def build_jurisdiction() -> Capture:
    c = Capture()
    c.tls(
        "deepseek-allowed-by-rule",
        "api.deepseek.com",
        DE,
        violation("jurisdiction", ALLOW_RES + " " + JURISDICTION),
    )
    c.tls(
        "alibaba-jurisdiction-before-inference",
        "dashscope.aliyuncs.com",
        DE,
        violation("jurisdiction", JURISDICTION + " (inference CN fails too, but later)"),
    )
    c.quic("yandex-quic", "llm.api.cloud.yandex.net", SE, violation("jurisdiction", JURISDICTION))
    c.tls("mistral-fr-home", "api.eu.mistral.ai", FR, allow(None, PASSES))
    c.tls("openai-us-home", "eu.api.openai.com", DE, allow(None, PASSES))
    c.tls(
        "sensetime-hk-home-is-not-cn",
        "token.sensenova.cn",
        DE,
        warn("unknown_location", "HK is its own ISO code, not CN. " + UNKNOWN_LOCATION),
    )
    c.tls(
        "jetbrains-cz-home",
        "api.jetbrains.ai",
        NL,
        warn("unknown_location", UNKNOWN_LOCATION),
    )
    return c


# =============================================================================================
# 7. inference, narrowed by a region in the host name
# =============================================================================================

INFERENCE_POLICY = (
    header()
    + """
[residency]
inference = ["eu_plus"]
unknown_location = "warn"
"""
)


def build_inference() -> Capture:
    c = Capture()
    ok = allow(None, PASSES + " " + INFERENCE)
    bad = violation("inference", INFERENCE)
    c.tls("bedrock-eu-central-1", "bedrock-runtime.eu-central-1.amazonaws.com", DE, ok)
    c.tls("bedrock-us-east-1", "bedrock-runtime.us-east-1.amazonaws.com", DE, bad)
    c.tls("bedrock-eu-west-2-gb", "bedrock-runtime.eu-west-2.amazonaws.com", DE, ok)
    c.tls("bedrock-eu-central-2-ch", "bedrock-runtime.eu-central-2.amazonaws.com", DE, ok)
    c.tls("bedrock-ap-northeast-1", "bedrock-runtime.ap-northeast-1.amazonaws.com", DE, bad)
    c.quic("vertex-europe-west4-quic", "europe-west4-aiplatform.googleapis.com", DE, ok)
    c.tls("vertex-us-central1", "us-central1-aiplatform.googleapis.com", DE, bad)
    c.tls("vertex-eu-multiregion", "aiplatform.eu.rep.googleapis.com", DE, ok)
    c.tls("foundry-swedencentral", "team.swedencentral.models.ai.azure.com", DE, ok)
    c.tls("foundry-eastus", "team.eastus.models.ai.azure.com", DE, bad)
    c.tls(
        "code-assist-several-countries",
        "cloudaicompanion.googleapis.com",
        DE,
        violation("inference", INFERENCE + " (US, BE, FI, SG: not every one inside)"),
    )
    c.tls(
        "azure-openai-unknown",
        "myres.openai.azure.com",
        DE,
        warn("unknown_location", UNKNOWN_LOCATION),
    )
    c.tls("mistral-eu", "api.eu.mistral.ai", DE, ok)
    c.tls("openai-us-host", "us.api.openai.com", DE, bad)
    c.tls("azure-ml-westeurope", "team.westeurope.inference.ml.azure.com", DE, ok)
    c.tls("watsonx-eu-de", "eu-de.ml.cloud.ibm.com", DE, ok)
    c.tls("oci-frankfurt", "inference.generativeai.eu-frankfurt-1.oci.oraclecloud.com", DE, ok)
    c.tls("xai-us-east-1", "us-east-1.api.x.ai", DE, bad)
    c.quic("hunyuan-singapore-quic", "hunyuan.ap-singapore.tencentcloudapi.com", DE, bad)
    return c


def build_inference_global() -> Capture:
    c = Capture()
    c.tls("openai-global", "api.openai.com", DE, violation("inference", INFERENCE_GLOBAL))
    c.tls("anthropic-global", "api.anthropic.com", DE, violation("inference", INFERENCE_GLOBAL))
    c.tls("mistral-global", "api.mistral.ai", FR, violation("inference", INFERENCE_GLOBAL))
    return c


INFERENCE_EU_POLICY = (
    header()
    + """
[residency]
inference = ["EU"]
unknown_location = "warn"
"""
)

INFERENCE_EEA_CH_POLICY = (
    header()
    + """
[residency]
inference = ["EEA", "CH"]
unknown_location = "warn"
"""
)


def build_inference_sets(allowed: str) -> Callable[[], Capture]:
    """The same endpoints judged against ["EU"] or ["EEA", "CH"]: set inclusion, not overlap."""
    eu_only = allowed == "EU"

    def build() -> Capture:
        c = Capture()
        ok = allow(None, PASSES + " " + INFERENCE)
        bad = violation("inference", INFERENCE)
        sub = violation("inference", INFERENCE + " (EEA holds IS, LI, NO; CH is not in the EU)")
        c.tls("openai-eu-eea-ch", "eu.api.openai.com", DE, sub if eu_only else ok)
        c.tls("vertex-eu", "aiplatform.eu.rep.googleapis.com", DE, ok)
        c.tls("bedrock-stockholm", "bedrock-runtime.eu-north-1.amazonaws.com", DE, ok)
        c.tls("bedrock-london", "bedrock-runtime.eu-west-2.amazonaws.com", DE, bad)
        c.tls(
            "bedrock-zurich",
            "bedrock-runtime.eu-central-2.amazonaws.com",
            DE,
            bad if eu_only else ok,
        )
        c.tls("openrouter-eu-with-gb", "eu.openrouter.ai", DE, bad)
        return c

    return build


def build_non_inference_roles() -> Capture:
    """AI endpoints where no inference runs: the inference check has nothing to judge."""
    c = Capture()
    ok = allow(None, NO_INFERENCE_HERE)
    c.tls("telemetry", "statsig.anthropic.com", DE, ok)
    c.tls("auth", "auth.openai.com", DE, ok)
    c.tls("download", "registry.ollama.ai", DE, ok)
    c.tls("control-plane", "bedrock.eu-central-1.amazonaws.com", DE, ok)
    c.tls(
        "telemetry-endpoint-outside",
        "copilot-telemetry.githubusercontent.com",
        US,
        violation("endpoint", ENDPOINT + " (an AI endpoint, whatever its role)"),
    )
    return c


NON_INFERENCE_POLICY = (
    header()
    + """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
unknown_location = "warn"
"""
)

# =============================================================================================
# 8. endpoint
# =============================================================================================

ENDPOINT_POLICY = (
    header()
    + """
[residency]
endpoint = ["eu_plus"]
unknown_location = "warn"
"""
)


def build_endpoint() -> Capture:
    c = Capture()
    ok = allow(None, PASSES + " " + ENDPOINT)
    bad = violation("endpoint", ENDPOINT)
    c.tls("openai-eu-de", "eu.api.openai.com", DE, ok)
    c.tls("openai-eu-us", "eu.api.openai.com", US, bad)
    c.tls("anthropic-ch", "api.anthropic.com", CH, ok)
    c.tls("anthropic-gb", "api.anthropic.com", GB, ok)
    c.tls("anthropic-no-eea", "api.anthropic.com", NO, ok)
    c.tls("anthropic-jp", "api.anthropic.com", JP, bad)
    c.tls("anthropic-ipv6-de", "api.anthropic.com", DE6, ok)
    c.quic("gemini-quic-us", "generativelanguage.googleapis.com", US, bad)
    c.tls("copilot-hk", "api.githubcopilot.com", HK, bad)
    c.tls("non-ai-us", "example.org", US, allow(None, UNJUDGED))
    c.tls("doh-resolver-in-us", "dns.quad9.net", US, warn("unverifiable", NOT_AI_DOH))
    return c


# =============================================================================================
# 9. unknown_location, at each severity
# =============================================================================================

UNKNOWN_LOCATION_POLICY = """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
unknown_location = "{severity}"
"""


def build_unknown_location(severity: str) -> Callable[[], Capture]:
    why = UNKNOWN_LOCATION + f' unknown_location = "{severity}".'
    unknown = Expect(severity, "unknown_location", why=why)
    tie = severity == "violation"

    def build() -> Capture:
        c = Capture()
        c.tls("endpoint-not-in-any-database", "eu.api.openai.com", NOWHERE, unknown)
        c.tls("endpoint-asn-but-no-country", "eu.api.openai.com", ASN_ONLY, unknown)
        c.tls("endpoint-anycast", "eu.api.openai.com", ANYCAST, unknown)
        c.tls("inference-unknown-azure", "myres.openai.azure.com", DE, unknown)
        c.quic("inference-unknown-groq-quic", "api.groq.com", NL, unknown)
        c.tls("all-known-and-inside", "eu.api.openai.com", DE, allow(None, PASSES))
        c.tls(
            "unknown-inference-then-endpoint-fails",
            "myres.openai.azure.com",
            US,
            violation(
                either("endpoint", "unknown_location") if tie else "endpoint",
                ENDPOINT + " " + WORST,
            ),
        )
        c.tls(
            "inference-fails-endpoint-unknown",
            "bedrock-runtime.us-east-1.amazonaws.com",
            NOWHERE,
            violation(
                either("inference", "unknown_location") if tie else "inference",
                INFERENCE + " " + WORST,
            ),
        )
        c.tls("non-ai-nowhere", "example.com", NOWHERE, allow(None, UNJUDGED))
        return c

    return build


# =============================================================================================
# 10. unverifiable: no name, DoH/DoT, real ECH vs GREASE ECH
# =============================================================================================

UNVERIFIABLE_POLICY = """
[residency]
jurisdiction_deny = ["CN", "RU"]
"""


def build_unverifiable(severity: str) -> Callable[[], Capture]:
    if severity == "allow":
        # Independent of the (absent) decision for an unjudged destination: either names it.
        unv = allow(either(None, "unverifiable"), UNVERIFIABLE + ' unverifiable = "allow".')
        real = allow(either(None, "unverifiable"), REAL_ECH + ' unverifiable = "allow".')
    else:
        unv = Expect(severity, "unverifiable", why=UNVERIFIABLE)
        real = Expect(severity, "unverifiable", why=REAL_ECH + " " + UNVERIFIABLE)

    def build() -> Capture:
        c = Capture()
        c.tls("tls-no-sni", None, DE, unv)
        c.quic("quic-no-sni", None, NL, unv)
        c.tls("tls-no-sni-ipv6", None, DE6, unv)
        c.tls("ech-cloudflare-outer-name", "cloudflare-ech.com", US, real, ech=True)
        c.tls("grease-ech-non-ai", "pypi.org", US, allow(None, GREASE + " " + UNJUDGED), ech=True)
        c.tls(
            "grease-ech-cn-provider",
            "api.deepseek.com",
            DE,
            violation("jurisdiction", GREASE + " " + JURISDICTION),
            ech=True,
        )
        c.tls(
            "grease-ech-ai-passes",
            "eu.api.openai.com",
            DE,
            allow(None, GREASE + " " + PASSES),
            ech=True,
        )
        c.tls("doh-dns-google", "dns.google", US, unv)
        c.tls("dot-cloudflare-853", "one.one.one.one", US, unv, dport=853)
        c.quic("doh3-quad9", "dns.quad9.net", CH, unv)
        c.tls("dot-port-unregistered-name", "resolver.example.net", US, unv, dport=853)
        c.tls(
            "doh-resolver-of-cn-company",
            "doh.360.cn",
            DE,
            Expect(unv.verdict, unv.rule, why=NOT_AI_DOH + ' jurisdiction_deny = ["CN", "RU"].'),
        )
        c.dns("dns-a-dns-google", "dns.google", ["198.51.100.53"])
        c.tls("doh-named-by-dns", None, "198.51.100.53", unv)
        # The client looks up HTTPS for the real name, gets an ECH config whose public name is
        # public.example.org, and connects with that outer name (draft-ietf-tls-esni 6.1).
        c.https_rr("dns-https-with-ech", "secret.example.org", ech_public_name="public.example.org")
        c.dns("dns-a-secret", "secret.example.org", ["198.18.0.40"])
        c.tls("ech-from-dns-https", "public.example.org", "198.18.0.40", real, ech=True)
        # The client looked up HTTPS for the very name it puts in the outer SNI.
        c.https_rr("dns-https-ech-same-name", "ech.example.org", ech_public_name="ech.example.org")
        c.dns("dns-a-ech-same-name", "ech.example.org", ["198.18.0.42"])
        c.tls("ech-config-for-outer-name", "ech.example.org", "198.18.0.42", real, ech=True)
        # The same without an ECH config in DNS: the extension is GREASE, judged by the name.
        c.https_rr("dns-https-no-ech", "plain.example.org", ech_public_name=None)
        c.dns("dns-a-plain", "plain.example.org", ["198.18.0.41"])
        c.tls(
            "grease-after-https-without-ech",
            "plain.example.org",
            "198.18.0.41",
            allow(None, GREASE + " " + UNJUDGED),
            ech=True,
        )
        c.dns("dns-a-pypi", "pypi.org", ["198.51.100.60"])
        c.tls(
            "no-sni-named-by-dns",
            None,
            "198.51.100.60",
            allow(None, DNS_NAME + " " + UNJUDGED, host="pypi.org"),
        )
        return c

    return build


# =============================================================================================
# 11. worst outcome wins
# =============================================================================================

WORST_POLICY = """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
jurisdiction_deny = ["CN", "RU"]
unknown_location = "warn"

[[rule]]
id = "lab-net"
action = "allow"
cidr = "192.0.2.0/25"
residency = false

[[rule]]
id = "blocked"
action = "deny"
cidr = "198.51.100.128/25"
reason = "sanctioned network (SEC-9)"

[[rule]]
id = "no-dot"
action = "deny"
port = 853
reason = "DNS over TLS bypasses the resolver (SEC-10)"
"""


def build_worst(unverifiable: str) -> Callable[[], Capture]:
    def build() -> Capture:
        c = Capture()
        c.tls(
            "allowed-by-rule-but-unverifiable",
            None,
            DE,
            Expect(unverifiable, "unverifiable", why=WORST + " " + UNVERIFIABLE),
        )
        c.tls("denied-and-unverifiable", None, CN, violation("blocked", UNLESS_DENY))
        c.tls(
            "real-ech-denied",
            "cloudflare-ech.com",
            CN,
            violation("blocked", UNLESS_DENY),
            ech=True,
        )
        c.tls(
            "unknown-location-warn",
            "myres.openai.azure.com",
            NL,
            warn("unknown_location", UNKNOWN_LOCATION),
        )
        c.tls(
            "unknown-location-and-endpoint-violation",
            "myres.openai.azure.com",
            US,
            violation("endpoint", WORST + " " + ENDPOINT),
        )
        c.tls(
            "jurisdiction-and-unknown-inference",
            "api.deepseek.com",
            NL,
            violation("jurisdiction", WORST + " " + JURISDICTION),
            ech=True,
        )
        c.tls(
            "doh-in-allowed-lab-net",
            "dns.google",
            DE,
            Expect(unverifiable, "unverifiable", why=WORST + " " + UNVERIFIABLE),
        )
        c.tls(
            "dot-denied-by-port",
            "one.one.one.one",
            US,
            violation("no-dot", UNLESS_DENY),
            dport=853,
        )
        c.tls(
            "unknown-ai-at-anycast",
            "api.some-new-llm.ai",
            ANYCAST,
            warn("unknown_ai", UNKNOWN_AI),
        )
        return c

    return build


# =============================================================================================
# 12. host globs
# =============================================================================================

GLOB_POLICY = (
    header(scope="all")
    + """
[[rule]]
id = "one-label"
action = "allow"
host = "*.example.com"

[[rule]]
id = "many-labels"
action = "allow"
host = "**.corp.example.net"

[[rule]]
id = "mixed-case"
action = "allow"
host = "Files.PythonHosted.ORG"

[[rule]]
id = "exact"
action = "allow"
host = "pypi.org"

[[rule]]
id = "partial-label"
action = "allow"
host = "api-*.example.org"
"""
)


def build_globs() -> Capture:
    c = Capture()
    one = allow("one-label", GLOB)
    many = allow("many-labels", GLOB)
    none = violation("allowlist", GLOB + " " + ALLOWLIST)
    c.tls("star-one-label", "api.example.com", US, one)
    c.quic("star-one-label-quic", "cdn.example.com", US, one)
    c.tls("star-not-apex", "example.com", US, none)
    c.tls("star-not-two-labels", "a.b.example.com", US, none)
    c.tls("star-case-insensitive-sni", "WWW.Example.COM", US, one)
    c.tls("double-star-one-label", "x.corp.example.net", US, many)
    c.tls("double-star-three-labels", "a.b.c.corp.example.net", US, many)
    c.tls("double-star-label-boundary", "evilcorp.example.net", US, none)
    c.tls("case-insensitive-pattern", "files.pythonhosted.org", US, allow("mixed-case", GLOB))
    c.tls("exact-name", "pypi.org", US, allow("exact", GLOB))
    c.tls("exact-not-prefix", "pypi.org.evil.test", US, none)
    c.tls("exact-not-suffix", "notpypi.org", US, none)
    c.tls("partial-label", "api-eu.example.org", US, allow("partial-label", GLOB))
    c.tls("partial-label-not-across-dots", "api-eu.x.example.org", US, none)
    c.dns("dns-api-example", "api.example.com", ["198.51.100.70"])
    c.tls(
        "glob-on-name-from-dns",
        None,
        "198.51.100.70",
        allow("one-label", GLOB + " " + DNS_NAME, host="api.example.com"),
    )
    return c


# =============================================================================================
# 13. the other selectors: provider, role, country, asn, cidr, port, process
# =============================================================================================

SELECTOR_POLICY = (
    header(scope="all")
    + """
[[rule]]
id = "no-telemetry"
action = "deny"
role = "telemetry"
reason = "no usage telemetry leaves the build (SEC-55)"

[[rule]]
id = "anthropic"
action = "allow"
provider = "anthropic"

[[rule]]
id = "eu-hosting"
action = "allow"
country = ["eu_plus"]

[[rule]]
id = "transit-asn"
action = "allow"
asn = [64552, 64560]

[[rule]]
id = "lab-cidr"
action = "allow"
cidr = ["198.51.100.0/28", "2001:db8:ffff::/48"]

[[rule]]
id = "alt-https"
action = "allow"
port = [8443, 9443]

[[rule]]
id = "no-curl"
action = "deny"
process = "curl"

[[rule]]
id = "python-only"
action = "allow"
process = "python*"

[[rule]]
id = "no-curl-to-example-org"
action = "deny"
host = "example.org"
process = "curl"

[[rule]]
id = "github-us"
action = "allow"
host = "*.github.com"
country = "US"
"""
)


def build_selectors() -> Capture:
    c = Capture()
    c.tls(
        "telemetry-role-denied",
        "statsig.anthropic.com",
        "198.51.100.20",
        violation("no-telemetry", DENY + " (role = telemetry; deny before allow)"),
    )
    c.tls(
        "telemetry-role-denied-in-eu",
        "copilot-telemetry.githubusercontent.com",
        NL,
        violation("no-telemetry", DENY + " (role = telemetry; deny before allow)"),
    )
    c.tls(
        "provider-selector",
        "api.anthropic.com",
        "198.51.100.21",
        allow("anthropic", ALLOW + " (provider)"),
    )
    c.tls("country-group-nl", "example.org", NL, allow("eu-hosting", ALLOW + " " + GROUPS))
    c.tls("country-group-ch", "example.org", CH, allow("eu-hosting", ALLOW + " " + GROUPS))
    c.tls("asn-selector", "example.net", JP, allow("transit-asn", ALLOW + " (asn)"))
    c.tls("asn-without-country", "example.net", ASN_ONLY, allow("transit-asn", ALLOW + " (asn)"))
    c.tls("cidr-selector", "example.net", "198.51.100.5", allow("lab-cidr", ALLOW + " (cidr)"))
    c.tls(
        "port-selector",
        "example.net",
        "198.51.100.30",
        allow("alt-https", ALLOW + " (port)"),
        dport=8443,
    )
    c.tls(
        "same-name-port-443",
        "example.net",
        "198.51.100.31",
        violation("allowlist", ALLOWLIST + " (port 443 is not in the port list)"),
    )
    c.tls(
        "process-only-rules-never-match",
        "example.org",
        "198.51.100.22",
        violation("allowlist", PROCESS + " " + ALLOWLIST),
    )
    c.tls(
        "host-and-country",
        "api.github.com",
        "198.51.100.40",
        allow("github-us", SELECTORS),
    )
    c.tls(
        "host-and-unknown-country",
        "api.github.com",
        NOWHERE,
        violation("allowlist", SELECTORS + " (the IP's country is unknown) " + ALLOWLIST),
    )
    c.tls(
        "cidr-selector-ipv6",
        "example.net",
        "2001:db8:ffff::5",
        allow("lab-cidr", ALLOW + " (cidr, a list: any of its items)"),
    )
    c.tls(
        "host-but-not-country",
        "api.github.com",
        HK,
        violation("allowlist", SELECTORS + " " + ALLOWLIST),
    )
    return c


# =============================================================================================
# 14. groups that contain groups
# =============================================================================================

GROUPS_POLICY = """\
version = 1

[audit]
scope = "ai"
unknown_ai = "warn"
unverifiable = "warn"

[groups]
nordics = ["SE", "NO", "FI", "DK", "IS"]
dach = ["DE", "AT", "CH"]
home = ["nordics", "dach"]
asia = ["JP", "HK", "CN"]
far = ["asia"]

[residency]
endpoint = ["home"]
unknown_location = "warn"

[[rule]]
id = "far-away"
action = "deny"
country = "far"
reason = "no traffic to Asian networks (SEC-88)"

[[rule]]
id = "gb-partner"
action = "allow"
country = "GB"
host = "eu.api.openai.com"
"""


def build_groups() -> Capture:
    c = Capture()
    ok = allow(None, GROUPS + " " + ENDPOINT)
    bad = violation("endpoint", GROUPS + " " + ENDPOINT)
    c.tls("sweden-via-nordics", "eu.api.openai.com", SE, ok)
    c.tls("norway-via-nordics", "eu.api.openai.com", NO, ok)
    c.tls("switzerland-via-dach", "eu.api.openai.com", CH, ok)
    c.tls("germany-via-dach", "eu.api.openai.com", DE, ok)
    c.tls("germany-ipv6", "eu.api.openai.com", DE6, ok)
    c.tls("netherlands-not-home", "eu.api.openai.com", NL, bad)
    c.tls(
        "gb-allowed-by-rule-then-endpoint",
        "eu.api.openai.com",
        GB,
        violation("endpoint", ALLOW_RES + " " + GROUPS),
    )
    c.tls("japan-deny-nested-group", "eu.api.openai.com", JP, violation("far-away", GROUPS))
    c.tls("non-ai-deny-nested-group", "example.com", HK, violation("far-away", GROUPS))
    c.tls("non-ai-elsewhere", "example.com", NL, allow(None, UNJUDGED))
    return c


# =============================================================================================
# 15. connections named only by DNS
# =============================================================================================

DNS_POLICY = (
    header()
    + """
[residency]
inference = ["eu_plus"]
endpoint = ["eu_plus"]
jurisdiction_deny = ["CN", "RU"]
unknown_location = "warn"

[[rule]]
id = "no-deepseek"
action = "deny"
provider = "deepseek"
"""
)


def build_dns_named() -> Capture:
    c = Capture()
    c.dns("dns-deepseek", "api.deepseek.com", ["198.18.0.20"])
    c.tls(
        "no-sni-named-deepseek",
        None,
        "198.18.0.20",
        violation("no-deepseek", DNS_NAME + " " + DENY, host="api.deepseek.com"),
    )
    c.quic(
        "quic-no-sni-named-deepseek",
        None,
        "198.18.0.20",
        violation("no-deepseek", DNS_NAME + " " + DENY, host="api.deepseek.com"),
    )
    c.dns("dns-deepseek-cname", "api.deepseek.com", ["edge.cdn.example.net", "198.18.0.21"])
    c.tls(
        "no-sni-named-through-cname",
        None,
        "198.18.0.21",
        violation(
            "no-deepseek",
            DNS_NAME + " The client looked up api.deepseek.com; the CNAME is the CDN's.",
            host="api.deepseek.com",
        ),
    )
    c.dns("dns-bedrock-us", "bedrock-runtime.us-east-1.amazonaws.com", ["192.0.2.30"])
    c.tls(
        "no-sni-named-bedrock-us",
        None,
        "192.0.2.30",
        violation(
            "inference", DNS_NAME + " " + INFERENCE, host="bedrock-runtime.us-east-1.amazonaws.com"
        ),
    )
    c.dns(
        "dns-bedrock-eu-aaaa",
        "bedrock-runtime.eu-central-1.amazonaws.com",
        ["2001:db8:1::30"],
        qtype="AAAA",
    )
    c.tls(
        "no-sni-named-bedrock-eu-ipv6",
        None,
        "2001:db8:1::30",
        allow(None, DNS_NAME + " " + PASSES, host="bedrock-runtime.eu-central-1.amazonaws.com"),
    )
    c.dns("dns-pypi", "pypi.org", ["198.51.100.50"])
    c.tls(
        "no-sni-named-pypi",
        None,
        "198.51.100.50",
        allow(None, DNS_NAME + " " + UNJUDGED, host="pypi.org"),
    )
    c.dns("dns-deepseek-shared", "api.deepseek.com", ["198.18.0.22"])
    c.tls(
        "sni-wins-over-dns",
        "pypi.org",
        "198.18.0.22",
        allow(None, SNI_FIRST + " " + UNJUDGED, host="pypi.org"),
    )
    c.dns("dns-unknown-ai", "api.some-new-llm.ai", ["198.18.0.24"])
    c.tls(
        "no-sni-named-unknown-ai",
        None,
        "198.18.0.24",
        warn("unknown_ai", DNS_NAME + " " + UNKNOWN_AI, host="api.some-new-llm.ai"),
    )
    c.tls(
        "no-sni-before-its-dns-answer",
        None,
        "198.18.0.25",
        warn("unverifiable", "DNS questions ... name later connections. " + UNVERIFIABLE),
    )
    c.dns("dns-deepseek-too-late", "api.deepseek.com", ["198.18.0.25"])
    c.tls(
        "no-sni-no-dns",
        None,
        "198.18.0.23",
        warn("unverifiable", UNVERIFIABLE),
    )
    return c


# =============================================================================================
# the catalogue
# =============================================================================================


def _with_header(body: str, **kw: str) -> str:
    return header(**kw) + body


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("deny-rules", DENY_POLICY, build_deny),
    Scenario("allow-then-residency", ALLOW_POLICY, build_allow),
    Scenario("residency-false", RESIDENCY_FALSE_POLICY, build_residency_false),
    Scenario("scope-all-allowlist", ALLOWLIST_POLICY, build_allowlist),
    Scenario(
        "unknown-ai-violation",
        _with_header(UNKNOWN_AI_POLICY, unknown_ai="violation"),
        build_unknown_ai("violation"),
    ),
    Scenario(
        "unknown-ai-warn",
        _with_header(UNKNOWN_AI_POLICY, unknown_ai="warn"),
        build_unknown_ai("warn"),
    ),
    Scenario(
        "unknown-ai-allow",
        _with_header(UNKNOWN_AI_POLICY, unknown_ai="allow"),
        build_unknown_ai("allow"),
    ),
    Scenario("jurisdiction", JURISDICTION_POLICY, build_jurisdiction),
    Scenario("inference-region-in-name", INFERENCE_POLICY, build_inference),
    Scenario("inference-global-hosts", INFERENCE_POLICY, build_inference_global),
    Scenario("inference-set-eu", INFERENCE_EU_POLICY, build_inference_sets("EU")),
    Scenario("inference-set-eea-ch", INFERENCE_EEA_CH_POLICY, build_inference_sets("EEA")),
    Scenario("inference-non-inference-roles", NON_INFERENCE_POLICY, build_non_inference_roles),
    Scenario("endpoint", ENDPOINT_POLICY, build_endpoint),
    *(
        Scenario(
            f"unknown-location-{sev}",
            _with_header(UNKNOWN_LOCATION_POLICY.format(severity=sev)),
            build_unknown_location(sev),
        )
        for sev in ("allow", "warn", "violation")
    ),
    *(
        Scenario(
            f"unverifiable-{sev}",
            _with_header(UNVERIFIABLE_POLICY, unverifiable=sev),
            build_unverifiable(sev),
        )
        for sev in ("allow", "warn", "violation")
    ),
    Scenario("worst-outcome-wins", _with_header(WORST_POLICY), build_worst("warn")),
    Scenario(
        "worst-outcome-wins-strict",
        _with_header(WORST_POLICY, unverifiable="violation"),
        build_worst("violation"),
    ),
    Scenario("host-globs", GLOB_POLICY, build_globs),
    Scenario("selectors", SELECTOR_POLICY, build_selectors),
    Scenario("nested-groups", GROUPS_POLICY, build_groups),
    Scenario("named-by-dns", DNS_POLICY, build_dns_named),
)
