"""Every real capture in ../shared/captures, replayed and checked against tshark.

Ground truth is tshark's, taken in the test: the SNI of every ClientHello (TCP and QUIC), the
ClientHellos that carry ECH, and every DNS question and A/AAAA/CNAME answer. We must find all
of it. Anything we find beyond tshark's defaults must be confirmed by tshark with out-of-order
TCP reassembly switched on, so that "more than tshark" always means "more that is really there".
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from probes.capfile import open_capture
from probes.errors import CaptureError
from probes.observation import Observation
from probes.sensor import Sensor

from .conftest import CAPTURES

ALL = sorted(p.name for p in CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else []

# mDNS and LLMNR are dissected with dns.* fields but are not egress; we ignore them on purpose.
DNS_FILTER = "dns && !mdns && !llmnr && !(udp.port == 5353) && !(udp.port == 5355)"


@dataclass
class Truth:
    snis: set[str] = field(default_factory=set)
    ech_snis: set[str] = field(default_factory=set)
    hellos_without_sni: int = 0
    qnames: set[str] = field(default_factory=set)
    answers: set[str] = field(default_factory=set)


def _tshark(path: Path, display: str, fields: list[str], *options: str) -> list[list[str]]:
    cmd = [
        "tshark",
        "-n",
        "-r",
        str(path),
        *options,
        "-Y",
        display,
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, check=False, timeout=300).stdout
    return [line.split("\t") for line in out.decode("utf-8", "replace").splitlines()]


@cache
def truth(name: str, out_of_order: bool = False) -> Truth:
    path = CAPTURES / name
    opts = ("-o", "tcp.reassemble_out_of_order:TRUE") if out_of_order else ()
    t = Truth()
    for sni, ext_types in _tshark(
        path,
        "tls.handshake.type == 1",
        ["tls.handshake.extensions_server_name", "tls.handshake.extension.type"],
        *opts,
    ):
        names = [s.rstrip(".") for s in sni.split("|") if s]
        if not names:
            t.hellos_without_sni += 1
        t.snis.update(names)
        if "65037" in ext_types.split("|"):
            t.ech_snis.update(names)
    for qname, a, aaaa, cname in _tshark(
        path, DNS_FILTER, ["dns.qry.name", "dns.a", "dns.aaaa", "dns.cname"], *opts
    ):
        t.qnames.update(q.lower().rstrip(".") for q in qname.split("|") if q)
        for value in (a, aaaa, cname):
            t.answers.update(v.lower().rstrip(".") for v in value.split("|") if v)
    return t


@cache
def ours(name: str) -> tuple[tuple[Observation, ...], str | None]:
    sensor = Sensor()
    obs: list[Observation] = []
    error = None
    try:
        with open_capture(CAPTURES / name) as reader:
            obs.extend(sensor.run(reader))
    except CaptureError as exc:
        obs.extend(sensor.finish())
        error = str(exc)
    return tuple(obs), error


@pytest.mark.tshark
@pytest.mark.parametrize("name", ALL)
def test_every_sni_tshark_finds(name: str, captures: Path) -> None:
    observed, _error = ours(name)
    found = {o.sni for o in observed if o.kind in ("tls", "quic") and o.sni}
    missing = truth(name).snis - found
    assert not missing, f"tshark finds SNIs we miss: {sorted(missing)}"


@pytest.mark.tshark
@pytest.mark.parametrize("name", ALL)
def test_nothing_that_is_not_there(name: str, captures: Path) -> None:
    observed, _error = ours(name)
    found = {o.sni for o in observed if o.kind in ("tls", "quic") and o.sni}
    extra = found - truth(name).snis
    if extra:
        # Beyond tshark's defaults is fine only if tshark sees it with out-of-order
        # reassembly switched on.
        extra -= truth(name, out_of_order=True).snis
    assert not extra, f"SNIs that tshark does not confirm: {sorted(extra)}"


@pytest.mark.tshark
@pytest.mark.parametrize("name", ALL)
def test_ech_flag(name: str, captures: Path) -> None:
    observed, _error = ours(name)
    flagged = {o.sni for o in observed if o.kind in ("tls", "quic") and o.ech and o.sni}
    assert truth(name).ech_snis <= flagged


@pytest.mark.tshark
@pytest.mark.parametrize("name", ALL)
def test_every_dns_question_and_answer(name: str, captures: Path) -> None:
    observed, _error = ours(name)
    qnames = {o.qname for o in observed if o.kind == "dns" and o.qname is not None}
    answers = {a.lower() for o in observed if o.kind == "dns" for a in o.answers}
    t = truth(name)
    assert not t.qnames - qnames, f"questions we miss: {sorted(t.qnames - qnames)[:20]}"
    assert not t.answers - answers, f"answers we miss: {sorted(t.answers - answers)[:20]}"


@pytest.mark.tshark
@pytest.mark.parametrize("name", ALL)
def test_read_to_the_end_unless_tshark_agrees_it_is_damaged(name: str, captures: Path) -> None:
    """We stop early only on a file that tshark also finds cut short or corrupt."""
    _observed, error = ours(name)
    if error is None:
        return
    check = subprocess.run(
        ["tshark", "-n", "-r", str(CAPTURES / name)], capture_output=True, check=False, timeout=300
    )
    complaint = check.stderr.decode("utf-8", "replace")
    assert "cut short" in complaint or "corrupt" in complaint.lower() or check.returncode, (
        f"we stopped with {error!r} but tshark reads the file cleanly"
    )
