"""``--format markdown``: GitHub-flavoured Markdown, e.g. for a CI job's step summary.

A heading, a summary list, then one table of the columns a person needs
(:mod:`._layout`). Each data string goes through, in order:

1. :func:`~._escape.visible`: controls become ``\\xNN``, so no newline can end a table row;
2. a cap (200 characters and an ellipsis);
3. ``& < >`` as entities: no raw HTML, no ``<autolink>``;
4. a backslash before Markdown punctuation that could leave a table cell (``|``), make a link
   or an image (``[ ] ( ) !``), emphasis, code or strike-through (``* _ ` ~``), a heading (``#``),
   math (``$``), an autolink or a mention (the ``:`` of ``://``, the dot of ``www.``, ``@``),
   before the backslash itself, and before a leading ``+`` or ``-``.
"""

from __future__ import annotations

import re
from typing import IO

from egresswatch.report.formats import _layout
from egresswatch.report.formats._escape import inert
from egresswatch.report.interface import Renderer, Report

CELL_CAP = 200
_PUNCT = re.compile(r"[\\`*_\[\]()#!~|$@]|:(?=//)")
_WWW = re.compile(r"(www)\.", re.IGNORECASE)


def md(text: str, limit: int = CELL_CAP) -> str:
    """``text`` as inert Markdown inline text (safe in a table cell)."""
    text = inert(text, limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _PUNCT.sub(r"\\\g<0>", text)
    text = _WWW.sub(r"\1\\.", text)
    stripped = text.lstrip()
    if stripped[:1] in {"+", "-"}:
        text = text[: len(text) - len(stripped)] + "\\" + stripped
    return text


class MarkdownRenderer(Renderer):
    """Heading, summary list, table."""

    def render(self, report: Report, stream: IO[str]) -> None:
        """Write the Markdown to ``stream``."""
        stream.write(f"# {md(report.title)}\n\n")
        items = [
            ("source", report.source),
            ("generated", _layout.short_time(report.generated) + " UTC"),
            ("filters", _layout.filters_text(report)),
            *_layout.summary_items(report),
        ]
        if report.top_rules:
            rules = ", ".join(f"{rule} ({n})" for rule, n in report.top_rules[:5])
            items.append(("top rules", rules))
        stream.writelines(f"- **{md(label)}**: {md(value, 400)}\n" for label, value in items)
        stream.write("\n")
        if report.rows:
            self._table(report, stream)
        else:
            stream.write("Nothing matched.\n")
        note = _layout.truncated_text(report)
        if note:
            stream.write(f"\n_{md(note)}_\n")

    def _table(self, report: Report, stream: IO[str]) -> None:
        cols = _layout.columns(report)
        numeric = [any(c.numeric(row) for row in report.rows) for c in cols]
        stream.write("| " + " | ".join(md(c.header) for c in cols) + " |\n")
        stream.write("|" + "|".join("---:" if n else "---" for n in numeric) + "|\n")
        for row in report.rows:
            cells = (str(c.value(row)) if c.numeric(row) else md(c.text(row)) for c in cols)
            stream.write("| " + " | ".join(cells) + " |\n")
