"""Host matching against the register, and the unknown-AI heuristic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.hosts import (
    INVALID_NAME,
    NOT_IN_REGISTER,
    HostMatch,
    HostMatcher,
    NoMatch,
    looks_like_ai_api,
)
from geo.patterns import normalize_host, parse_pattern
from geo.regions import RegionTable, load_regions
from geo.register import Register, load_register, parse_register


@pytest.fixture(scope="module")
def register() -> Register:
    return load_register()


@pytest.fixture(scope="module")
def regions() -> RegionTable:
    return load_regions()


@pytest.fixture(scope="module")
def matcher(register: Register, regions: RegionTable) -> HostMatcher:
    return HostMatcher(register, regions)


def hit(matcher: HostMatcher, name: str) -> HostMatch:
    result = matcher.match(name)
    assert isinstance(result, HostMatch), (name, result)
    assert result.matched
    return result


# --- a small register to exercise the pattern rules -------------------------------------------


def _endpoint(host: str, **extra: Any) -> dict[str, Any]:
    base = {
        "host": host,
        "product": f"product {host}",
        "role": "inference",
        "inference": ["unknown"],
        "storage": ["unknown"],
        "confidence": "documented",
        "source": "https://example.com/docs",
        "as_of": "2026-11-24",
    }
    base.update(extra)
    return base


def _small(*endpoints: dict[str, Any]) -> Register:
    return parse_register(
        {
            "schema": 1,
            "provider": [
                {
                    "id": "example",
                    "name": "Example",
                    "home": "FR",
                    "kinds": ["inference-api"],
                    "source": "https://example.com/",
                    "as_of": "2026-11-24",
                    "endpoint": list(endpoints),
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def small(regions: RegionTable) -> HostMatcher:
    register = _small(
        _endpoint("api.example.com", inference=["FR"]),
        _endpoint("*.example.com"),
        _endpoint("**.example.com"),
        _endpoint("*.api.example.com"),
        _endpoint("{region}.api.example.com", region_cloud="aws"),
        _endpoint("{region}-ml.example.com", region_cloud="gcp"),
        _endpoint("svc.{region}.example.com", region_cloud="azure", narrow="none"),
        _endpoint("x.*.deep.example.com"),
        _endpoint("xn--bcher-kva.example.com"),
    )
    return HostMatcher(register, regions, cache_size=0)


@pytest.mark.parametrize(
    ("name", "pattern", "region"),
    [
        ("api.example.com", "api.example.com", None),  # exact beats every pattern
        ("www.example.com", "*.example.com", None),  # '*' = exactly one label
        ("a.b.example.com", "**.example.com", None),  # '**' = one or more labels
        ("v1.api.example.com", "*.api.example.com", None),  # more literal labels win
        # {region} beats *
        ("eu-central-1.api.example.com", "{region}.api.example.com", "eu-central-1"),
        ("europe-west4-ml.example.com", "{region}-ml.example.com", "europe-west4"),  # embedded
        ("svc.swedencentral.example.com", "svc.{region}.example.com", "swedencentral"),
        ("x.y.deep.example.com", "x.*.deep.example.com", None),
        ("z.y.deep.example.com", "**.example.com", None),
        ("bücher.example.com", "xn--bcher-kva.example.com", None),  # U-label in, A-label pattern
        ("BÜCHER.Example.COM.", "xn--bcher-kva.example.com", None),
    ],
)
def test_pattern_rules(small: HostMatcher, name: str, pattern: str, region: str | None) -> None:
    result = hit(small, name)
    assert result.pattern == pattern
    assert result.region == region


def test_apex_is_not_matched_by_wildcards(small: HostMatcher) -> None:
    assert small.match("example.com") == NoMatch("example.com", NOT_IN_REGISTER)


def test_region_narrowing_rules(small: HostMatcher) -> None:
    narrowed = hit(small, "eu-central-1.api.example.com")
    assert narrowed.inference == ("DE",)
    assert narrowed.narrowed
    assert narrowed.region_info is not None
    assert narrowed.region_info.city == "Frankfurt"
    # a well-formed region the table lacks still matches; inference falls back to the endpoint's
    future = hit(small, "eu-north-9.api.example.com")
    assert future.region == "eu-north-9"
    assert future.region_info is None
    assert future.inference == ("unknown",)
    assert not future.narrowed
    # narrow = "none": reported, not narrowed
    plain = hit(small, "svc.swedencentral.example.com")
    assert plain.region_info is not None
    assert plain.region_info.country == "SE"
    assert plain.inference == ("unknown",)
    assert not plain.narrowed
    # a label that is not region-shaped falls through to the next pattern
    assert hit(small, "frankfurt.api.example.com").pattern == "*.api.example.com"


def test_register_order_breaks_ties(regions: RegionTable) -> None:
    register = _small(
        _endpoint("a.*.example.com", product="first"),
        _endpoint("*.b.example.com", product="second"),
    )
    result = HostMatcher(register, regions).match("a.b.example.com")
    assert isinstance(result, HostMatch)
    assert result.endpoint.product == "first"


# --- the shipped register: region extraction and narrowing -----------------------------------

OCI = "inference.generativeai"


@pytest.mark.parametrize(
    ("name", "provider", "region", "inference"),
    [
        ("bedrock-runtime.eu-central-1.amazonaws.com", "aws", "eu-central-1", ("DE",)),
        ("bedrock-runtime.us-west-2.amazonaws.com", "aws", "us-west-2", ("US",)),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "aws", "us-gov-west-1", ("US",)),
        ("bedrock-runtime.eu-west-3.api.aws", "aws", "eu-west-3", ("FR",)),
        ("bedrock-runtime.cn-north-1.amazonaws.com.cn", "aws", "cn-north-1", ("CN",)),
        ("vpce-0a1b.bedrock-runtime.eu-west-1.vpce.amazonaws.com", "aws", "eu-west-1", ("IE",)),
        ("q.us-east-1.amazonaws.com", "aws", "us-east-1", ("US",)),
        ("q.eu-central-1.amazonaws.com", "aws", "eu-central-1", ("unknown",)),
        ("europe-west4-aiplatform.googleapis.com", "google", "europe-west4", ("NL",)),
        ("us-central1-aiplatform.googleapis.com", "google", "us-central1", ("US",)),
        ("aiplatform.eu.rep.googleapis.com", "google", "eu", ("EU",)),
        ("myres.swedencentral.models.ai.azure.com", "microsoft", "swedencentral", ("SE",)),
        ("e.germanywestcentral.inference.ml.azure.com", "microsoft", "germanywestcentral", ("DE",)),
        ("contoso.openai.azure.com", "microsoft", None, ("unknown",)),
        (f"{OCI}.eu-frankfurt-1.oci.oraclecloud.com", "oracle", "eu-frankfurt-1", ("DE",)),
        (f"{OCI}.eu-frankfurt-2.oci.oraclecloud.eu", "oracle", "eu-frankfurt-2", ("DE",)),
        (f"{OCI}.ap-osaka-1.oci.oraclecloud.com", "oracle", "ap-osaka-1", ("JP",)),
        ("eu-de.ml.cloud.ibm.com", "ibm", "eu-de", ("DE",)),
        ("eu.api.openai.com", "openai", "eu", ("EEA", "CH")),
        ("jp.api.openai.com", "openai", "jp", ("JP",)),
        ("api.openai.com", "openai", None, ("global",)),
        ("api.eu.mistral.ai", "mistral", "eu", ("EEA", "CH")),
        ("api.us.mistral.ai", "mistral", "us", ("US",)),
        ("us-east-1.api.x.ai", "xai", "us-east-1", ("US",)),
        ("eu-west-1.api.x.ai", "xai", "eu-west-1", ("unknown",)),
        ("us.api.x.ai", "xai", "us", ("US",)),
        ("api.x.ai", "xai", None, ("global",)),
        ("hunyuan.ap-guangzhou.tencentcloudapi.com", "tencent", "ap-guangzhou", ("CN",)),
        ("ep1.eu-west-1.aws.endpoints.huggingface.cloud", "huggingface", "eu-west-1", ("IE",)),
        ("e.europe-west1.gcp.endpoints.huggingface.cloud", "huggingface", "europe-west1", ("BE",)),
    ],
)
def test_region_extraction_and_narrowing(
    matcher: HostMatcher, name: str, provider: str, region: str | None, inference: tuple[str, ...]
) -> None:
    result = hit(matcher, name)
    assert result.provider_id == provider
    assert result.region == region
    assert result.inference == inference


def test_claude_platform_on_aws_region_does_not_pin_inference(matcher: HostMatcher) -> None:
    result = hit(matcher, "aws-external-anthropic.eu-central-1.api.aws")
    assert result.provider_id == "anthropic"
    assert result.region == "eu-central-1"
    assert result.region_info is not None
    assert result.region_info.country == "DE"
    assert result.inference == ("global",)
    assert not result.narrowed


def test_bedrock_carries_its_cross_region_caveat(matcher: HostMatcher) -> None:
    result = hit(matcher, "bedrock-runtime.eu-central-1.amazonaws.com")
    assert "cross-region inference profile" in result.endpoint.notes
    assert "global." in result.endpoint.notes


def test_case_trailing_dot_and_idna(matcher: HostMatcher) -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "api.anthropic.com")  # full-width forms
    for name in ("API.ANTHROPIC.COM", "api.anthropic.com.", full_width):
        result = hit(matcher, name)
        assert result.name == "api.anthropic.com"
        assert result.provider_id == "anthropic"


def test_roles(matcher: HostMatcher) -> None:
    assert hit(matcher, "api.githubcopilot.com").role == "coding-tool"
    assert hit(matcher, "copilot-telemetry.githubusercontent.com").role == "telemetry"
    assert hit(matcher, "authenticate.cursor.sh").role == "auth"
    assert hit(matcher, "dns.google").role == "doh"
    assert hit(matcher, "bedrock.us-east-1.amazonaws.com").role == "control-plane"
    assert hit(matcher, "downloads.claude.ai").role == "download"
    assert hit(matcher, "openrouter.ai").role == "gateway"


def test_invalid_names_give_nomatch(matcher: HostMatcher) -> None:
    for name in ("", "..", "a b.com", "api.openai.com:443", "x" * 300):
        result = matcher.match(name)
        assert isinstance(result, NoMatch)
        assert result.reason == INVALID_NAME
        assert not result.matched


# --- real host names ------------------------------------------------------------------------

AI_HOSTS: list[tuple[str, str]] = [
    ("api.openai.com", "openai"),
    ("us.api.openai.com", "openai"),
    ("eu.api.openai.com", "openai"),
    ("au.api.openai.com", "openai"),
    ("in.api.openai.com", "openai"),
    ("jp.api.openai.com", "openai"),
    ("chatgpt.com", "openai"),
    ("auth.openai.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("claude.ai", "anthropic"),
    ("platform.claude.com", "anthropic"),
    ("console.anthropic.com", "anthropic"),
    ("downloads.claude.ai", "anthropic"),
    ("statsig.anthropic.com", "anthropic"),
    ("mcp-proxy.anthropic.com", "anthropic"),
    ("bridge.claudeusercontent.com", "anthropic"),
    ("aws-external-anthropic.us-west-2.api.aws", "anthropic"),
    ("generativelanguage.googleapis.com", "google"),
    ("aiplatform.googleapis.com", "google"),
    ("us-central1-aiplatform.googleapis.com", "google"),
    ("europe-west4-aiplatform.googleapis.com", "google"),
    ("asia-northeast1-aiplatform.googleapis.com", "google"),
    ("aiplatform.us.rep.googleapis.com", "google"),
    ("aiplatform.eu.rep.googleapis.com", "google"),
    ("cloudaicompanion.googleapis.com", "google"),
    ("cloudcode-pa.googleapis.com", "google"),
    ("firebasevertexai.googleapis.com", "google"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "aws"),
    ("bedrock-runtime.us-west-2.amazonaws.com", "aws"),
    ("bedrock-runtime.eu-central-1.amazonaws.com", "aws"),
    ("bedrock-runtime.eu-west-3.amazonaws.com", "aws"),
    ("bedrock-runtime.ap-northeast-1.amazonaws.com", "aws"),
    ("bedrock-runtime-fips.us-east-1.amazonaws.com", "aws"),
    ("bedrock-runtime.us-east-1.api.aws", "aws"),
    ("bedrock-runtime.cn-north-1.amazonaws.com.cn", "aws"),
    ("bedrock.us-east-1.amazonaws.com", "aws"),
    ("bedrock-agent-runtime.eu-west-1.amazonaws.com", "aws"),
    ("bedrock-mantle.us-east-1.api.aws", "aws"),
    ("q.us-east-1.amazonaws.com", "aws"),
    ("q.eu-central-1.amazonaws.com", "aws"),
    ("codewhisperer.us-east-1.amazonaws.com", "aws"),
    ("contoso-aoai.openai.azure.com", "microsoft"),
    ("my-foundry.services.ai.azure.com", "microsoft"),
    ("my-ai.cognitiveservices.azure.com", "microsoft"),
    ("mistral-large-xyz.swedencentral.models.ai.azure.com", "microsoft"),
    ("endpoint-1.westeurope.inference.ml.azure.com", "microsoft"),
    ("gov-aoai.openai.azure.us", "microsoft"),
    ("api.githubcopilot.com", "github"),
    ("api.individual.githubcopilot.com", "github"),
    ("proxy.business.githubcopilot.com", "github"),
    ("api.enterprise.githubcopilot.com", "github"),
    ("copilot-proxy.githubusercontent.com", "github"),
    ("origin-tracker.githubusercontent.com", "github"),
    ("copilot-telemetry.githubusercontent.com", "github"),
    ("copilot-proxy.acme.ghe.com", "github"),
    ("models.github.ai", "github"),
    ("models.inference.ai.azure.com", "github"),
    ("api.mistral.ai", "mistral"),
    ("api.eu.mistral.ai", "mistral"),
    ("codestral.mistral.ai", "mistral"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.deepseek.com", "deepseek"),
    ("chat.deepseek.com", "deepseek"),
    ("open.bigmodel.cn", "zhipu"),
    ("api.z.ai", "zhipu"),
    ("api.moonshot.cn", "moonshot"),
    ("api.moonshot.ai", "moonshot"),
    ("api.kimi.com", "moonshot"),
    ("dashscope.aliyuncs.com", "alibaba"),
    ("dashscope-intl.aliyuncs.com", "alibaba"),
    ("dashscope-us.aliyuncs.com", "alibaba"),
    ("ws-1a2b3c.ap-southeast-1.maas.aliyuncs.com", "alibaba"),
    ("coding-intl.dashscope.aliyuncs.com", "alibaba"),
    ("chat.qwen.ai", "alibaba"),
    ("qianfan.baidubce.com", "baidu"),
    ("aip.baidubce.com", "baidu"),
    ("ark.cn-beijing.volces.com", "bytedance"),
    ("ark.ap-southeast.bytepluses.com", "bytedance"),
    ("core-normal.trae.ai", "bytedance"),
    ("hunyuan.tencentcloudapi.com", "tencent"),
    ("hunyuan.ap-guangzhou.tencentcloudapi.com", "tencent"),
    ("api.hunyuan.cloud.tencent.com", "tencent"),
    ("api.minimax.io", "minimax"),
    ("api.minimaxi.com", "minimax"),
    ("api.groq.com", "groq"),
    ("api.cerebras.ai", "cerebras"),
    ("api.together.xyz", "together"),
    ("api.together.ai", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("audio-prod.us-virginia-1.direct.fireworks.ai", "fireworks"),
    ("api.replicate.com", "replicate"),
    ("api.perplexity.ai", "perplexity"),
    ("api.x.ai", "xai"),
    ("us-east-1.api.x.ai", "xai"),
    ("eu-west-1.api.x.ai", "xai"),
    ("router.huggingface.co", "huggingface"),
    ("api-inference.huggingface.co", "huggingface"),
    ("abc123.us-east-1.aws.endpoints.huggingface.cloud", "huggingface"),
    ("gateway.ai.cloudflare.com", "cloudflare"),
    ("integrate.api.nvidia.com", "nvidia"),
    ("ai.api.nvidia.com", "nvidia"),
    ("inference.generativeai.us-chicago-1.oci.oraclecloud.com", "oracle"),
    ("inference.generativeai.eu-frankfurt-1.oci.oraclecloud.com", "oracle"),
    ("us-south.ml.cloud.ibm.com", "ibm"),
    ("eu-de.ml.cloud.ibm.com", "ibm"),
    ("openrouter.ai", "openrouter"),
    ("eu.openrouter.ai", "openrouter"),
    ("api2.cursor.sh", "cursor"),
    ("api3.cursor.sh", "cursor"),
    ("repo42.cursor.sh", "cursor"),
    ("us-only.gcpp.cursor.sh", "cursor"),
    ("agentn.global.api5.cursor.sh", "cursor"),
    ("authenticate.cursor.sh", "cursor"),
    ("marketplace.cursorapi.com", "cursor"),
    ("server.codeium.com", "codeium"),
    ("server.self-serve.windsurf.com", "codeium"),
    ("inference.codeium.com", "codeium"),
    ("api.tabnine.com", "tabnine"),
    ("api.jetbrains.ai", "jetbrains"),
    ("api.ai.jetbrains.com.cn", "jetbrains"),
    ("api.app.prod.grazie.aws.intellij.net", "jetbrains"),
    ("cody-gateway.sourcegraph.com", "sourcegraph"),
    ("api.sambanova.ai", "sambanova"),
    ("api.deepinfra.com", "deepinfra"),
    ("api.tokenfactory.nebius.com", "nebius"),
    ("api.llama.com", "meta"),
    ("api.ai21.com", "ai21"),
    ("api.upstage.ai", "upstage"),
    ("api.voyageai.com", "voyage"),
    ("api.jina.ai", "jina"),
    ("r.jina.ai", "jina"),
    ("s.jina.ai", "jina"),
    ("deepsearch.jina.ai", "jina"),
    ("api.reka.ai", "reka"),
    ("api.writer.com", "writer"),
    ("token.sensenova.cn", "sensetime"),
    ("api.sensenova.cn", "sensetime"),
    ("api.lambda.ai", "lambda"),
    ("api.lingyiwanwu.com", "01-ai"),
    ("api.siliconflow.cn", "siliconflow"),
    ("api.stepfun.com", "stepfun"),
    ("ai-gateway.vercel.sh", "vercel"),
    ("llm-gateway.eu.assemblyai.com", "assemblyai"),
    ("gigachat.devices.sberbank.ru", "sber"),
    ("llm.api.cloud.yandex.net", "yandex"),
    ("api.scaleway.ai", "scaleway"),
    ("ollama.com", "ollama"),
    ("cloud.zed.dev", "zed"),
    ("api.cline.bot", "cline"),
    ("dns.google", "google"),
    ("cloudflare-dns.com", "cloudflare"),
    ("one.one.one.one", "cloudflare"),
    ("dns.quad9.net", "quad9"),
    ("dns.adguard-dns.com", "adguard"),
    ("doh.opendns.com", "cisco"),
    ("abc123.dns.nextdns.io", "nextdns"),
    ("dns.alidns.com", "alibaba"),
    ("doh.pub", "tencent"),
]


def test_real_ai_hosts(matcher: HostMatcher) -> None:
    assert len(AI_HOSTS) >= 100
    wrong = []
    for name, provider in AI_HOSTS:
        result = matcher.match(name)
        if not (isinstance(result, HostMatch) and result.provider_id == provider):
            wrong.append((name, provider, result))
    assert len(wrong) <= len(AI_HOSTS) * 0.05, wrong
    assert wrong == []  # today every one is right; the 95% floor is for future drift


ORDINARY_HOSTS = """
pypi.org files.pythonhosted.org registry.npmjs.org registry.yarnpkg.com github.com api.github.com
objects.githubusercontent.com raw.githubusercontent.com codeload.github.com ghcr.io
pkg-containers.githubusercontent.com deb.debian.org security.debian.org archive.ubuntu.com
security.ubuntu.com ports.ubuntu.com dl-cdn.alpinelinux.org mirrors.fedoraproject.org
download.docker.com registry-1.docker.io auth.docker.io production.cloudflare.docker.com
www.google.com google.com fonts.googleapis.com fonts.gstatic.com storage.googleapis.com
www.googleapis.com maps.googleapis.com oauth2.googleapis.com accounts.google.com
play.googleapis.com android.googleapis.com update.googleapis.com mail.google.com drive.google.com
docs.google.com ai.google.dev s3.amazonaws.com s3.us-east-1.amazonaws.com
ec2.us-east-1.amazonaws.com sts.amazonaws.com dynamodb.eu-central-1.amazonaws.com
lambda.us-west-2.amazonaws.com oidc.us-east-1.amazonaws.com aws.amazon.com
console.aws.amazon.com signin.aws.amazon.com login.microsoftonline.com graph.microsoft.com
update.microsoft.com windowsupdate.com management.azure.com myaccount.blob.core.windows.net
portal.azure.com teams.microsoft.com outlook.office365.com cdn.jsdelivr.net unpkg.com
cdnjs.cloudflare.com api.cloudflare.com www.cloudflare.com crates.io static.crates.io
index.crates.io proxy.golang.org sum.golang.org repo.maven.apache.org repo1.maven.org
plugins.gradle.org services.gradle.org rubygems.org index.rubygems.org api.nuget.org packagist.org
conda.anaconda.org repo.anaconda.com huggingface.co cdn-lfs.huggingface.co www.bing.com
duckduckgo.com www.wikipedia.org en.wikipedia.org stackoverflow.com www.youtube.com slack.com
api.slack.com hooks.slack.com zoom.us www.apple.com swscan.apple.com mesu.apple.com
ocsp.digicert.com ocsp.pki.goog crl.microsoft.com time.cloudflare.com ntp.ubuntu.com sentry.io
o123456.ingest.sentry.io browser-intake-datadoghq.com www.google-analytics.com
analytics.google.com www.googletagmanager.com api.segment.io api.mixpanel.com api.stripe.com
js.stripe.com api.twilio.com gitlab.com bitbucket.org api.bitbucket.org sourcegraph.com cursor.com
marketplace.visualstudio.com update.code.visualstudio.com open-vsx.org plugins.jetbrains.com
download.jetbrains.com account.jetbrains.com www.jetbrains.com nodejs.org go.dev www.python.org
docs.python.org kubernetes.io dl.k8s.io registry.k8s.io quay.io gcr.io mcr.microsoft.com
api.gemini.com www.deepseek.com example.com localhost
""".split()  # noqa: SIM905


def test_ordinary_hosts_are_not_ai(matcher: HostMatcher) -> None:
    assert len(ORDINARY_HOSTS) >= 100
    matched = [n for n in ORDINARY_HOSTS if matcher.match(n).matched]
    assert matched == []
    flagged = [n for n in ORDINARY_HOSTS if looks_like_ai_api(n)]
    assert flagged == []


def test_shared_hosts_do_not_match(matcher: HostMatcher, register: Register) -> None:
    for shared in register.shared_hosts:
        assert isinstance(matcher.match(shared.host), NoMatch), shared.host


@pytest.mark.parametrize(
    "name",
    [
        "llm-gateway.corp.example",
        "ollama.internal.example",
        "my-openai-proxy.azure-api.net",
        "api.inference.example.com",
        "ai-gateway.example.com",
        "litellm.company.io",
        "claude-proxy.example.com",
        "gpt.example.org",
        "vllm.lab.example",
        "models-api.example.net",
        "gemini.google.com",
        "copilot.microsoft.com",
        "anthropic-relay.example.com",
    ],
)
def test_looks_like_ai_api(name: str) -> None:
    assert looks_like_ai_api(name)


@pytest.mark.parametrize("name", ["", "..", "a b", "api.example.com", "inference.example.com"])
def test_looks_like_ai_api_is_conservative(name: str) -> None:
    assert not looks_like_ai_api(name)


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_arbitrary_text_never_crashes(matcher: HostMatcher, text: str) -> None:
    result = matcher.match(text)
    assert isinstance(result, HostMatch | NoMatch)
    assert isinstance(looks_like_ai_api(text), bool)


LABEL = st.from_regex(r"[a-zA-Z0-9_-]{1,12}", fullmatch=True)


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LABEL, min_size=1, max_size=6), st.sampled_from(["com", "ai", "cn", "aws", "sh"]))
def test_host_like_names(matcher: HostMatcher, labels: list[str], tld: str) -> None:
    name = ".".join([*labels, tld])
    result = matcher.match(name)
    if isinstance(result, NoMatch) and result.reason == NOT_IN_REGISTER:
        assert result.name == normalize_host(name)


@st.composite
def instances(draw: st.DrawFn, register: Register, regions: RegionTable) -> str:
    """A host name made from one of the register's patterns (and so likely to match)."""
    endpoints = [e for _, e in register.endpoints()]
    endpoint = draw(st.sampled_from(endpoints))
    codes = sorted(r.code for r in regions if r.cloud == endpoint.region_cloud) or ["us-east-1"]
    parts = []
    for label in parse_pattern(endpoint.host, endpoint.region_cloud).labels:
        if label.kind == "literal":
            parts.append(label.text)
        elif label.kind == "star":
            parts.append(draw(LABEL))
        elif label.kind == "dstar":
            parts.extend(draw(st.lists(LABEL, min_size=1, max_size=3)))
        else:
            code = draw(st.sampled_from([*codes, "mars-north-9", "frankfurt"]))
            parts.append(f"{label.prefix}{code}{label.suffix}")
    return ".".join(parts)


def test_trie_agrees_with_brute_force(register: Register, regions: RegionTable) -> None:
    """The trie picks what a loop over every pattern, ranked by specificity, would pick."""
    matcher = HostMatcher(register, regions, cache_size=0)
    patterns = [
        (order, parse_pattern(e.host, e.region_cloud), e)
        for order, (_, e) in enumerate(register.endpoints())
    ]

    @settings(max_examples=1500, deadline=None)
    @given(instances(register, regions))
    def check(name: str) -> None:
        host = normalize_host(name)
        result = matcher.match(name)
        candidates = []
        if host is not None:
            for order, pattern, endpoint in patterns:
                ok, region = pattern.match(host)
                if ok:
                    candidates.append(((pattern.specificity, -order), endpoint, region))
        if not candidates:
            assert isinstance(result, NoMatch)
            return
        _, endpoint, region = max(candidates, key=lambda c: c[0])
        assert isinstance(result, HostMatch), name
        assert result.endpoint is endpoint, (name, result.pattern, endpoint.host)
        if region is not None:
            assert result.region == region

    check()


def test_cache_is_bounded(register: Register, regions: RegionTable) -> None:
    matcher = HostMatcher(register, regions, cache_size=8)
    for i in range(100):
        matcher.match(f"host{i}.example.com")
    assert len(matcher._cache) <= 8
    assert matcher.cache_clears >= 10
    assert matcher.match("api.openai.com") is matcher.match("api.openai.com")
