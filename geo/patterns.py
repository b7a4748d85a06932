"""Host-name patterns of the provider register, and the host-name normal form.

A pattern is a dot-separated list of labels, compared with a normalised host name label by label:

- a literal label (``api``, ``openai``) matches itself;
- ``*`` matches exactly one label;
- ``**`` (leftmost label only) matches one or more labels, so ``**.cursor.sh`` matches
  ``api2.cursor.sh`` and ``agent.api5.cursor.sh`` but not ``cursor.sh`` itself;
- ``{region}`` stands for a cloud region code, alone (``bedrock-runtime.{region}.amazonaws.com``)
  or inside a label with literal text around it (``{region}-aiplatform.googleapis.com``); the
  endpoint's ``region_cloud`` says whose region syntax applies. At most one per pattern.

Patterns are lower-case ASCII (write internationalised names as A-labels, ``xn--...``), have no
trailing dot, and end in two literal labels (so ``*.com`` is refused).

Specificity, used when several patterns match one name (most specific wins):

1. an exact name (all labels literal) beats every pattern;
2. then more literal labels (a label with literal text around ``{region}`` counts as literal);
3. then a ``{region}`` label beats a ``*`` (it is constrained by the region syntax);
4. then no ``**`` beats ``**``;
5. then more literal characters; a remaining tie goes to the endpoint written first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from geo.regions import REGION_SYNTAX

LabelKind = Literal["literal", "star", "dstar", "region"]

REGION_TOKEN = "{region}"  # noqa: S105  # a placeholder, not a password
_LITERAL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_LITERAL_PART = re.compile(r"[a-z0-9_-]*")
_HOST_CHARS = re.compile(r"[a-z0-9_.-]+")
MAX_NAME = 253
MAX_LABEL = 63


class PatternError(ValueError):
    """A host pattern is not valid; the message says why."""


@dataclass(frozen=True, slots=True)
class LabelPattern:
    """One label of a host pattern."""

    kind: LabelKind
    """``literal``, ``star`` (``*``), ``dstar`` (``**``) or ``region`` (contains ``{region}``)."""
    text: str
    """The label as written, e.g. ``{region}-aiplatform``."""
    prefix: str = ""
    """For ``region``: literal text before ``{region}``."""
    suffix: str = ""
    """For ``region``: literal text after ``{region}``."""


@dataclass(frozen=True, slots=True)
class HostPattern:
    """A parsed host pattern with its specificity and an equivalent regular expression."""

    text: str
    """The pattern as written in the register."""
    labels: tuple[LabelPattern, ...]
    """Labels left to right."""
    region_cloud: str | None
    """Whose region syntax ``{region}`` uses; None when the pattern has no ``{region}``."""
    regex: re.Pattern[str]
    """Full-name regular expression; group ``region`` captures the region code."""

    @property
    def exact(self) -> bool:
        """True when every label is literal: the pattern is one host name."""
        return all(label.kind == "literal" for label in self.labels)

    @property
    def has_region(self) -> bool:
        """True when the pattern contains ``{region}``."""
        return any(label.kind == "region" for label in self.labels)

    @property
    def specificity(self) -> tuple[int, int, int, int, int]:
        """Sort key: higher is more specific (see the module docstring)."""
        embedded = [lb.kind == "region" and bool(lb.prefix or lb.suffix) for lb in self.labels]
        literal = sum(
            1 for lb, emb in zip(self.labels, embedded, strict=True) if lb.kind == "literal" or emb
        )
        bare_region = sum(
            1
            for lb, emb in zip(self.labels, embedded, strict=True)
            if lb.kind == "region" and not emb
        )
        dstar = sum(1 for label in self.labels if label.kind == "dstar")
        chars = sum(
            len(label.text) if label.kind == "literal" else len(label.prefix) + len(label.suffix)
            for label in self.labels
        )
        return (int(self.exact), literal, bare_region, -dstar, chars)

    def match(self, name: str) -> tuple[bool, str | None]:
        """Match a normalised host name: (matched, region code or None). Slow; for tests/tools."""
        m = self.regex.fullmatch(name)
        if m is None:
            return False, None
        return True, m.groupdict().get("region")


def parse_pattern(text: str, region_cloud: str | None = None) -> HostPattern:
    """Parse and check a host pattern; raises :class:`PatternError` saying what is wrong."""
    if not isinstance(text, str) or not text:
        msg = f"host pattern must be a non-empty string, not {text!r}"
        raise PatternError(msg)
    if text != text.lower() or not text.isascii():
        msg = f"host pattern {text!r} must be lower-case ASCII (write IDNs as xn-- A-labels)"
        raise PatternError(msg)
    if text.endswith(".") or len(text) > MAX_NAME:
        msg = f"host pattern {text!r} must not end in a dot or exceed {MAX_NAME} characters"
        raise PatternError(msg)
    raw = text.split(".")
    if len(raw) < 2:
        msg = f"host pattern {text!r} needs at least two labels"
        raise PatternError(msg)
    labels = tuple(_parse_label(label, i, text) for i, label in enumerate(raw))
    if any(label.kind != "literal" for label in labels[-2:]):
        msg = f"host pattern {text!r} must end in two literal labels"
        raise PatternError(msg)
    regions = sum(1 for label in labels if label.kind == "region")
    if regions > 1:
        msg = f"host pattern {text!r} has more than one {REGION_TOKEN}"
        raise PatternError(msg)
    if regions and region_cloud is None:
        msg = f"host pattern {text!r} uses {REGION_TOKEN} but no region_cloud says whose regions"
        raise PatternError(msg)
    if not regions and region_cloud is not None:
        msg = f"region_cloud {region_cloud!r} given but {text!r} has no {REGION_TOKEN}"
        raise PatternError(msg)
    if region_cloud is not None and region_cloud not in REGION_SYNTAX:
        msg = f"unknown region_cloud {region_cloud!r} (known: {', '.join(sorted(REGION_SYNTAX))})"
        raise PatternError(msg)
    return HostPattern(text, labels, region_cloud, _regex(labels, region_cloud))


def _parse_label(label: str, index: int, text: str) -> LabelPattern:
    if not label:
        msg = f"host pattern {text!r} has an empty label"
        raise PatternError(msg)
    if len(label) > MAX_LABEL:
        msg = f"label {label!r} of {text!r} is longer than {MAX_LABEL} characters"
        raise PatternError(msg)
    if label == "*":
        return LabelPattern("star", label)
    if label == "**":
        if index != 0:
            msg = f"'**' may only be the leftmost label, in {text!r}"
            raise PatternError(msg)
        return LabelPattern("dstar", label)
    if REGION_TOKEN in label:
        prefix, _, suffix = label.partition(REGION_TOKEN)
        if REGION_TOKEN in suffix:
            msg = f"label {label!r} of {text!r} has {REGION_TOKEN} twice"
            raise PatternError(msg)
        if not (_LITERAL_PART.fullmatch(prefix) and _LITERAL_PART.fullmatch(suffix)):
            msg = f"label {label!r} of {text!r} has characters a host name cannot carry"
            raise PatternError(msg)
        return LabelPattern("region", label, prefix, suffix)
    if not _LITERAL.fullmatch(label):
        msg = f"label {label!r} of {text!r} is not a host-name label, '*', '**' or {REGION_TOKEN}"
        raise PatternError(msg)
    return LabelPattern("literal", label)


def _regex(labels: tuple[LabelPattern, ...], region_cloud: str | None) -> re.Pattern[str]:
    parts: list[str] = []
    for label in labels:
        if label.kind == "literal":
            parts.append(re.escape(label.text))
        elif label.kind == "star":
            parts.append(r"[^.]+")
        elif label.kind == "dstar":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            assert region_cloud is not None
            syntax = REGION_SYNTAX[region_cloud]
            parts.append(f"{re.escape(label.prefix)}(?P<region>{syntax}){re.escape(label.suffix)}")
    return re.compile(r"\.".join(parts))


def normalize_host(name: str) -> str | None:
    """The normal form of a host name, or None when ``name`` is not a valid host name.

    Lower case; a trailing dot removed; U-labels converted to A-labels (IDNA 2003, Python's
    ``idna`` codec: ``bücher.example`` -> ``xn--bcher-kva.example``). Labels may hold letters,
    digits, ``-`` and ``_``; 1-63 characters each, 253 in all. Never raises.
    """
    if not isinstance(name, str):
        return None
    if not name.isascii():
        try:
            name = name.removesuffix(".").encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    name = name.lower().removesuffix(".")
    # one C-level scan for the character set; then the cheap structural checks
    if _HOST_CHARS.fullmatch(name) is None or len(name) > MAX_NAME:
        return None
    if name[0] == "." or name[-1] == "." or ".." in name:
        return None
    if len(name) > MAX_LABEL and any(len(label) > MAX_LABEL for label in name.split(".")):
        return None
    return name
