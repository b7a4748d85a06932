"""Writers for Observation streams: JSON Lines for programs, an aligned table for people.

Everything that came off the network (server names, DNS names) is hostile: the JSON writer
relies on :func:`json.dumps`, which escapes every control character; the table writer
replaces control and non-printable characters with visible escapes and caps the length, so a
crafted SNI cannot move the cursor, recolour the terminal or flood it.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any, Protocol

from probes.observation import Observation, format_ts

# C0, DEL, C1 controls, and the Unicode line/paragraph separators and bidi overrides that can
# reorder or hide text on a terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_CELL = 80


def safe_text(value: str, limit: int = MAX_CELL) -> str:
    """Make network-supplied text inert for a terminal: visible escapes, bounded length."""
    text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class ObservationWriter(Protocol):
    """A sink that renders observations to a text stream."""

    def write(self, obs: Observation) -> None:
        """Render one observation."""

    def close(self) -> None:
        """Flush whatever is buffered."""


class JsonlWriter:
    """One JSON object per line, fields as in the Observation JSON Lines contract."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, obs: Observation) -> None:
        self._stream.write(json.dumps(obs.to_dict(), ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._stream.flush()


class TableWriter:
    """Aligned columns, streamed row by row so that live output appears as it happens."""

    HEADER = ("TIME", "KIND", "SOURCE", "DESTINATION", "NAME", "WHERE", "DETAIL")
    WIDTHS = (15, 4, 22, 27, 40, 34, 0)

    def __init__(self, stream: IO[str], *, color: bool = False) -> None:
        self._stream = stream
        self._color = color
        self._wrote_header = False

    def _row(self, cells: tuple[str, ...]) -> str:
        parts = [
            cell.ljust(width) if width else cell
            for cell, width in zip(cells, self.WIDTHS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    def write(self, obs: Observation) -> None:
        if not self._wrote_header:
            self._stream.write(self._row(self.HEADER) + "\n")
            self._wrote_header = True
        ts = format_ts(obs.ts)[11:26]
        src = _endpoint(obs.src, obs.sport)
        dst = _endpoint(obs.dst, obs.dport)
        if obs.kind == "dns":
            name = obs.qname or "-"
            detail = obs.qtype or ""
            if obs.rcode and obs.rcode != "NOERROR":
                detail += f" {obs.rcode}"
            if obs.answers:
                detail += " -> " + ", ".join(obs.answers[:4])
                if len(obs.answers) > 4:
                    detail += f" (+{len(obs.answers) - 4})"
            if obs.ech_config:
                detail += " [ech-config]"
        else:
            name = obs.sni or "(no SNI)"
            detail = ",".join(obs.alpn)
            if obs.ech:
                detail += " [ECH]"
            if obs.quic_version:
                detail += f" quic {obs.quic_version}"
        cells = (
            ts,
            obs.kind,
            src,
            dst,
            safe_text(name, 40 if self._stream.isatty() else MAX_CELL * 4),
            _where(obs.extra),
            safe_text(detail.strip(), 60 if self._stream.isatty() else MAX_CELL * 2),
        )
        line = self._row(cells)
        if self._color and (obs.ech or not obs.sni) and obs.kind != "dns":
            line = f"\x1b[33m{line}\x1b[0m"
        self._stream.write(line + "\n")

    def close(self) -> None:
        self._stream.flush()


def _where(extra: dict[str, Any]) -> str:
    """Provider, documented inference location and measured endpoint, in a few characters."""
    if not extra:
        return ""
    parts = []
    if extra.get("provider"):
        inference = ",".join(extra.get("inference") or []) or "?"
        parts.append(f"{extra['provider']}[{inference}]")
    country = "anycast" if extra.get("anycast") else extra.get("endpoint_country")
    if country:
        parts.append(f"@{country}")
    if extra.get("asn"):
        parts.append(f"AS{extra['asn']}")
    return safe_text(" ".join(parts), 34)


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class Tee:
    """An ObservationWriter that passes every observation to several, in order."""

    def __init__(self, *writers: ObservationWriter) -> None:
        self._writers = writers

    def write(self, obs: Observation) -> None:
        for writer in self._writers:
            writer.write(obs)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


class LiveWriter:
    """One line per new destination, as it is first seen: the agent's view on a terminal.

    A destination is new the first time its name (or address), verdict and rule are seen
    together, so a name that turns into a violation later shows again. Violations stand out
    (red, and a leading ``!``), warnings are yellow; DNS questions are not shown (they name the
    connections that follow). The set of names shown is bounded: past the limit the oldest
    are forgotten and may show again.
    """

    MAX_SEEN = 65536

    def __init__(self, stream: IO[str], *, color: bool = False) -> None:
        self._stream = stream
        self._color = color
        self._seen: dict[tuple[str, str | None, str | None], None] = {}
        self.shown = 0

    def write(self, obs: Observation) -> None:
        if obs.kind == "dns":
            return
        extra = obs.extra
        name = extra.get("host") or obs.sni or obs.dst
        verdict = extra.get("verdict")
        key = (name, verdict, extra.get("rule"))
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > self.MAX_SEEN:
            del self._seen[next(iter(self._seen))]
        self.shown += 1
        ts = format_ts(obs.ts)[11:19]
        mark = "!" if verdict == "violation" else " "
        judged = f"{verdict} ({extra.get('rule')})" if verdict and extra.get("rule") else verdict
        process = extra.get("process")
        parts = [
            f"{mark} {ts}",
            f"{obs.kind:<4}",
            safe_text(str(name), 50).ljust(50),
            _where(extra).ljust(34),
            safe_text(judged or "audit", 40),
        ]
        if process:
            parts.append(safe_text(f"[{process}]", 30))
        line = "  ".join(parts).rstrip()
        if self._color and verdict in _LIVE_COLORS:
            line = f"{_LIVE_COLORS[verdict]}{line}\x1b[0m"
        self._stream.write(line + "\n")

    def close(self) -> None:
        self._stream.flush()


_LIVE_COLORS = {"violation": "\x1b[1;31m", "warn": "\x1b[33m"}
