"""The character pass every renderer starts from."""

from __future__ import annotations

from egresswatch.report.formats._escape import inert, unsurrogate, visible


def test_visible_escapes_controls_bidi_separators_and_nonchars() -> None:
    assert visible("\x1b[31m\x9b\x07\x00\x7f") == "\\x1b[31m\\x9b\\x07\\x00\\x7f"
    assert visible("\u202egnp.exe\u2066\u2069") == "\\u202egnp.exe\\u2066\\u2069"
    assert visible("a\nb\tc\u2028\u2029") == "a\\x0ab\\x09c\\u2028\\u2029"
    assert visible("\u200e\u200f\u061c\ufffe\uffff") == "\\u200e\\u200f\\u061c\\ufffe\\uffff"


def test_visible_keeps_printable_text() -> None:
    text = "api.openai.com Zürich 東京 😀 <b>&amp; [x](y) =1"
    assert visible(text) == text


def test_surrogateescape_bytes_show_as_the_bytes() -> None:
    carried = b"\xff\xfe.evil".decode("utf-8", "surrogateescape")
    assert visible(carried) == "\\xff\\xfe.evil"
    assert unsurrogate(carried) == "\\xff\\xfe.evil"
    assert visible("\ud800") == "\\ud800"


def test_unsurrogate_leaves_the_rest() -> None:
    assert unsurrogate("\x1b\u202e") == "\x1b\u202e"


def test_inert_caps_after_escaping() -> None:
    assert inert("a" * 100, 10) == "a" * 9 + "…"
    assert len(inert("\x1b" * 100, 10)) == 10
    assert inert("short", 10) == "short"
