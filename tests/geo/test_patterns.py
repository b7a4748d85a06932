"""Host patterns and the host-name normal form."""

from __future__ import annotations

import pytest

from geo.patterns import PatternError, normalize_host, parse_pattern

FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) for c in "api.openai.com")
"""api.openai.com in full-width letters and full stops."""


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("api.openai.com", "api.openai.com"),
        ("API.OpenAI.COM", "api.openai.com"),
        ("api.openai.com.", "api.openai.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        (FULL_WIDTH, "api.openai.com"),  # full-width letters and dots (NFKC)
        ("api\u3002openai\u3002com", "api.openai.com"),  # ideographic full stop separates
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("localhost", "localhost"),
    ],
)
def test_normalize(raw: str, normal: str) -> None:
    assert normalize_host(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "..",
        "a..b",
        ".a.b",
        "a.b..",
        "a b.c",
        "a/b.c",
        "a:443",
        "*.example.com",
        "x" * 64 + ".com",
        ("a." * 127) + "com",
        "\x00",
        "\ud800.com",
        "exa mple.com",
    ],
)
def test_normalize_refuses(raw: str) -> None:
    assert normalize_host(raw) is None


def test_normalize_refuses_non_strings() -> None:
    assert normalize_host(None) is None  # type: ignore[arg-type]
    assert normalize_host(b"api.openai.com") is None  # type: ignore[arg-type]


def test_specificity_order() -> None:
    def key(text: str, cloud: str | None = None) -> tuple[int, int, int, int, int]:
        return parse_pattern(text, cloud).specificity

    exact = key("api.example.com")
    assert exact > key("*.example.com")
    assert key("*.api.example.com") > key("*.example.com")
    assert key("*.example.com") > key("**.example.com")
    assert key("{region}-api.example.com", "gcp") > key("*.example.com")
    assert key("x.{region}.example.com", "aws") > key("x.*.example.com")
    assert key("a.b.example.com") > key("*.b.example.com") > key("**.b.example.com")


def test_pattern_match_and_region_capture() -> None:
    pattern = parse_pattern("{region}-aiplatform.googleapis.com", "gcp")
    assert pattern.match("europe-west4-aiplatform.googleapis.com") == (True, "europe-west4")
    assert pattern.match("aiplatform.googleapis.com") == (False, None)
    dstar = parse_pattern("**.cursor.sh")
    assert dstar.match("a.b.cursor.sh") == (True, None)
    assert dstar.match("cursor.sh") == (False, None)


@pytest.mark.parametrize(
    ("text", "cloud", "fragment"),
    [
        ("", None, "non-empty"),
        ("com", None, "two labels"),
        ("*.com", None, "two literal labels"),
        ("a.**.b.com", None, "leftmost"),
        ("{region}.example.com", None, "no region_cloud"),
        ("api.example.com", "aws", "has no {region}"),
        ("{region}.example.com", "mars", "unknown region_cloud"),
        ("x{region}y{region}.example.com", "aws", "twice"),
        ("a_b-.example.com", None, "not a host-name label"),
        ("münchen.example.com", None, "ASCII"),
    ],
)
def test_parse_refuses(text: str, cloud: str | None, fragment: str) -> None:
    with pytest.raises(PatternError) as info:
        parse_pattern(text, cloud)
    assert fragment in str(info.value)
