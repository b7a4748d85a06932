"""Making hostile text inert: the one character pass every renderer starts from.

Every string in a report may have come off the network. Before a renderer applies the escaping
of its own medium (HTML entities, Markdown backslashes, CSV formula defusing), :func:`visible`
turns every character that could act on a terminal, a parser or a reader into a visible
``\\xNN`` escape:

- C0 controls, DEL and C1 controls (ESC, CSI, OSC, BEL, NUL, newlines, tabs);
- the Unicode line and paragraph separators, the bidi embeddings, overrides and isolates, and the
  bidi marks (Trojan Source: text that displays in a different order from the one it has);
- lone surrogates, which is how Python carries bytes that were not UTF-8
  (``surrogateescape``): ``\\udcff`` becomes ``\\xff``, the byte it stood for; a surrogate
  that stands for no byte becomes ``\\udXXX``. A lone surrogate cannot be encoded, so a
  renderer that let one through would crash on write;
- the noncharacters U+FFFE and U+FFFF, which XML 1.0 forbids.
"""

from __future__ import annotations

import re

from egresswatch.output import safe_text

_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff\ufffe\uffff]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control, bidi, separator, surrogate and noncharacter made visible."""
    return _INVISIBLE.sub(_escape, text)


def unsurrogate(text: str) -> str:
    """``text`` with only its lone surrogates made visible: for formats that escape the rest
    themselves (JSON), but where a lone surrogate is not a character any parser must accept."""
    return _SURROGATE.sub(_escape, text)


def inert(text: str, limit: int) -> str:
    """:func:`visible`, then capped at ``limit`` characters with an ellipsis (through
    :func:`egresswatch.output.safe_text`, so a table cell here and in ``replay`` agree)."""
    return safe_text(visible(text), limit)
