"""Which register endpoint a host name belongs to, fast enough for the capture path.

``HostMatcher(register).match(name)`` normalises the name (case, trailing dot, IDNA), looks it up
among the register's exact host names (one dictionary access), and otherwise walks a trie of the
pattern labels from the right (``com`` -> ``amazonaws`` -> ``{region}`` -> ``bedrock-runtime``).
The work per name is bounded by its label count and the trie's small fan-out, not by the number of
patterns. When several patterns match, the most specific wins (the order is documented in
:mod:`geo.patterns`): an exact name, then more literal labels, then ``{region}`` over ``*``, then
no ``**``, then more literal characters, then register order.

A name that matches nothing gives a :class:`NoMatch` that says why, never None or an exception.
:func:`looks_like_ai_api` is the separate, conservative guess for names the register lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from geo.patterns import MAX_NAME, HostPattern, normalize_host, parse_pattern
from geo.regions import REGION_SYNTAX, Region, RegionTable, load_regions
from geo.register import Endpoint, Provider, Register


@dataclass(frozen=True, slots=True)
class HostMatch:
    """A host name that belongs to a register endpoint."""

    matched: ClassVar[bool] = True

    name: str
    """The normalised host name that was looked up (lower case, A-labels, no trailing dot)."""
    provider: Provider
    """The provider the endpoint belongs to."""
    endpoint: Endpoint
    """The endpoint whose pattern matched."""
    pattern: str
    """The host pattern that matched, as written in the register."""
    region: str | None
    """Region code taken from the name (``eu-central-1``), or the endpoint's static geo label
    (``eu`` for ``eu.api.openai.com``); None when the name carries none."""
    region_info: Region | None
    """The region table's row for ``region`` (country, city, coordinates), when it has one."""
    inference: tuple[str, ...]
    """Where inference runs for this name: the endpoint's documented locations, narrowed by the
    region in the name where the register says the region pins inference."""
    narrowed: bool
    """True when ``inference`` was narrowed by the region in the name."""

    @property
    def provider_id(self) -> str:
        """Register id of the provider, e.g. ``aws``."""
        return self.provider.id

    @property
    def role(self) -> str:
        """The endpoint's role, e.g. ``inference``."""
        return self.endpoint.role


@dataclass(frozen=True, slots=True)
class NoMatch:
    """A host name that is not in the register, or not a valid host name at all."""

    matched: ClassVar[bool] = False

    name: str
    """The normalised name, or the input as given when it is not a valid host name."""
    reason: str
    """``not in register`` or ``invalid host name``."""


NOT_IN_REGISTER = "not in register"
INVALID_NAME = "invalid host name"


@dataclass(frozen=True, slots=True)
class _Entry:
    order: int
    specificity: tuple[int, int, int, int, int]
    provider: Provider
    endpoint: Endpoint
    pattern: HostPattern


class _Node:
    """One trie node: the labels seen so far, from the right."""

    __slots__ = ("branches", "children", "dstar", "regional", "star", "terminals")

    def __init__(self) -> None:
        self.branches = False
        """True when the node has a '*', '**' or {region} branch (set while building)."""
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.regional: list[tuple[re.Pattern[str], _Node]] = []
        self.dstar: list[_Entry] = []
        self.terminals: list[_Entry] = []


class HostMatcher:
    """Matches host names against the register's endpoints (exact names and patterns).

    Results are kept in a bounded cache (``cache_size`` names, cleared wholesale when full and
    counted in ``cache_clears``; 0 disables it): capture traffic repeats the same few hundred
    names. Not thread-safe; give each thread its own matcher.
    """

    __slots__ = (
        "_cache",
        "_cache_size",
        "_exact",
        "_regions",
        "_root",
        "cache_clears",
        "register",
    )

    def __init__(
        self, register: Register, regions: RegionTable | None = None, *, cache_size: int = 4096
    ) -> None:
        self.register = register
        self._regions = regions if regions is not None else load_regions()
        self._exact: dict[str, HostMatch] = {}
        self._root = _Node()
        self._cache: dict[str, HostMatch | NoMatch] = {}
        self._cache_size = cache_size
        self.cache_clears = 0
        for order, (provider, endpoint) in enumerate(register.endpoints()):
            pattern = parse_pattern(endpoint.host, endpoint.region_cloud)
            entry = _Entry(order, pattern.specificity, provider, endpoint, pattern)
            if pattern.exact:
                # validation refuses repeats unless duplicate_ok, and then the first one wins
                if pattern.text not in self._exact:
                    self._exact[pattern.text] = self._result(pattern.text, entry, None)
            else:
                self._insert(entry)

    def _insert(self, entry: _Entry) -> None:
        node = self._root
        labels = entry.pattern.labels
        for depth, label in enumerate(reversed(labels)):
            if label.kind == "literal":
                node = node.children.setdefault(label.text, _Node())
            elif label.kind == "star":
                if node.star is None:
                    node.star = _Node()
                    node.branches = True
                node = node.star
            elif label.kind == "dstar":
                assert depth == len(labels) - 1  # '**' is always the leftmost label
                node.dstar.append(entry)
                node.branches = True
                return
            else:
                assert entry.pattern.region_cloud is not None
                source = _label_regex(entry.pattern.region_cloud, label.prefix, label.suffix)
                child = next((c for rx, c in node.regional if rx.pattern == source), None)
                if child is None:
                    child = _Node()
                    node.regional.append((re.compile(source), child))
                    node.branches = True
                node = child
        node.terminals.append(entry)

    def match(self, name: str) -> HostMatch | NoMatch:
        """The register endpoint ``name`` belongs to, or a :class:`NoMatch` saying it has none."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        result = self._match(name)
        if self._cache_size and isinstance(name, str) and len(name) <= MAX_NAME + 1:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
                self.cache_clears += 1
            self._cache[name] = result
        return result

    def _match(self, name: str) -> HostMatch | NoMatch:
        host = normalize_host(name)
        if host is None:
            return NoMatch(name if isinstance(name, str) else repr(name), INVALID_NAME)
        exact = self._exact.get(host)
        if exact is not None:
            return exact
        found: list[tuple[_Entry, str | None]] = []
        _walk(self._root, host.split(".")[::-1], 0, None, found)
        if not found:
            return NoMatch(host, NOT_IN_REGISTER)
        if len(found) == 1:
            best, region = found[0]
        else:
            best, region = max(found, key=lambda item: (item[0].specificity, -item[0].order))
        return self._result(host, best, region)

    def _result(self, host: str, entry: _Entry, region: str | None) -> HostMatch:
        endpoint = entry.endpoint
        inference = endpoint.inference
        region_info: Region | None = None
        narrowed = False
        if region is not None:
            assert endpoint.region_cloud is not None
            region_info = self._regions.lookup(endpoint.region_cloud, region)
            explicit = endpoint.inference_for_region(region)
            if explicit is not None:
                inference, narrowed = explicit, True
            elif endpoint.narrow == "region" and region_info is not None:
                inference, narrowed = region_info.locations, True
        elif endpoint.region is not None:
            region = endpoint.region
        # positional: this runs per matched name on the capture path
        return HostMatch(
            host, entry.provider, endpoint, endpoint.host, region, region_info, inference, narrowed
        )


def _label_regex(cloud: str, prefix: str, suffix: str) -> str:
    return f"{re.escape(prefix)}(?P<region>{REGION_SYNTAX[cloud]}){re.escape(suffix)}"


def _walk(
    node: _Node,
    labels: list[str],
    i: int,
    region: str | None,
    found: list[tuple[_Entry, str | None]],
) -> None:
    """Append every (entry, region) whose pattern matches ``labels[i:]`` below ``node``.

    ``labels`` are the name's labels reversed (``com``, ``amazonaws``, ...). The literal path is
    followed in a loop; only ``*`` and ``{region}`` branches recurse, and most names leave the
    trie after one or two dictionary lookups.
    """
    n = len(labels)
    while True:
        if i == n:
            found.extend((entry, region) for entry in node.terminals)
            return
        label = labels[i]
        if node.branches:
            if node.dstar:
                # '**' matches the one or more labels still left
                found.extend((entry, region) for entry in node.dstar)
            if node.star is not None:
                _walk(node.star, labels, i + 1, region, found)
            for rx, regional in node.regional:
                m = rx.fullmatch(label)
                if m is not None:
                    _walk(regional, labels, i + 1, m.group("region"), found)
        child = node.children.get(label)
        if child is None:
            return
        node = child
        i += 1


# --- "looks like an AI API" -----------------------------------------------------------------------
#
# The policy's `unknown_ai` fires on a host that is not in the register but looks like an AI API.
# A false alarm teaches people to switch the tool off, so this is deliberately narrow: it needs a
# token that names an LLM product or an LLM-serving stack, or an "AI" token next to an "API" one.
# Registrable domains known to reuse these words for something else are listed in _NOT_AI.

_STRONG_SUBSTRINGS = (
    "openai",
    "anthropic",
    "chatgpt",
    "ollama",
    "litellm",
    "aiplatform",
    "bedrock-runtime",
    "bedrock-agent-runtime",
    "generativelanguage",
    "generativeai",
    "llamacpp",
)
"""Distinctive strings: any label containing one of them looks like an AI API. Brand names of
registered providers whose sites are ordinary (huggingface, deepseek) are left out on purpose:
their API hosts are in the register, and a visit to the website is not an unknown AI API."""

_STRONG_TOKENS = frozenset(
    {"llm", "llms", "gpt", "claude", "gemini", "vllm", "genai", "copilot", "codestral", "qwen"}
)
"""Whole '-'-separated tokens that name an LLM product or stack."""

_AI_TOKENS = frozenset({"ai", "inference", "model", "models", "completions", "embeddings"})
_API_TOKENS = frozenset({"api", "apis", "gateway", "proxy", "endpoint", "endpoints", "serving"})

_NOT_AI = frozenset(
    {
        "gemini.com",  # Gemini the crypto exchange: api.gemini.com is a trading API
    }
)


def looks_like_ai_api(name: str) -> bool:
    """True when ``name`` looks like an LLM API host although it may not be in the register.

    Conservative: a label containing a distinctive string (``openai``, ``ollama``, ...), a
    '-'-separated token naming an LLM (``llm``, ``gpt``, ``claude``, ...), or an AI-ish token
    (``ai``, ``inference``, ``model``...) together with an API-ish one (``api``, ``gateway``...)
    in the name. Ordinary hosts (package registries, CDNs, search, OS updates, ``github.com``)
    give False. Invalid names give False. Call :meth:`HostMatcher.match` first: this does not
    consult the register.
    """
    host = normalize_host(name)
    if host is None:
        return False
    labels = host.split(".")
    if len(labels) < 2 or ".".join(labels[-2:]) in _NOT_AI:
        return False
    # the top-level domain says nothing (".ai" is used by many non-AI companies)
    labels = labels[:-1]
    tokens: set[str] = set()
    for label in labels:
        if any(s in label for s in _STRONG_SUBSTRINGS):
            return True
        tokens.update(label.split("-"))
    if tokens & _STRONG_TOKENS:
        return True
    return bool(tokens & _AI_TOKENS) and bool(tokens & _API_TOKENS)
