"""The live view: one line per new destination and verdict; violations stand out; inert text."""

from __future__ import annotations

import io

from egresswatch.output import LiveWriter
from probes.observation import Observation


def _obs(sni: str, verdict: str | None, rule: str | None = None, kind: str = "tls") -> Observation:
    extra = {"host": sni, "verdict": verdict, "rule": rule, "provider": "openai"}
    return Observation(
        ts=1_790_000_000.0, kind=kind, transport="tcp", src="10.0.0.2", dst="192.0.2.1",  # type: ignore[arg-type]
        sport=40000, dport=443, sni=sni, extra=extra,
    )  # fmt: skip


def test_each_destination_once_per_verdict() -> None:
    out = io.StringIO()
    live = LiveWriter(out)
    for _ in range(3):
        live.write(_obs("api.openai.com", "allow"))
    live.write(_obs("api.openai.com", "violation", "inference"))
    live.write(_obs("api.openai.com", "", kind="dns"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert not lines[0].startswith("!")
    assert lines[1].startswith("!") and "violation (inference)" in lines[1]


def test_colour_only_on_a_terminal_and_hostile_names_are_inert() -> None:
    plain, colored = io.StringIO(), io.StringIO()
    hostile = "\x1b]0;pwned\x07evil\x9b31m.example"
    LiveWriter(plain).write(_obs(hostile, "violation", "r"))
    LiveWriter(colored, color=True).write(_obs(hostile, "violation", "r"))
    assert "\x1b" not in plain.getvalue() and "\x9b" not in plain.getvalue()
    text = colored.getvalue()
    assert text.startswith("\x1b[1;31m") and text.rstrip("\n").endswith("\x1b[0m")
    assert "\x07" not in text and "\x9b" not in text
    assert text.count("\x1b") == 2  # ours only
