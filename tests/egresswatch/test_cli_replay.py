"""`egresswatch replay` end to end through the installed command: contract, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.synth import PcapWriter, Traffic, client_hello

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "egresswatch-demo.pcapng"
CONTRACT_FIELDS = [
    "ts",
    "kind",
    "transport",
    "src",
    "dst",
    "sport",
    "dport",
    "sni",
    "alpn",
    "ech",
    "qname",
    "qtype",
    "answers",
]


def replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_demo_jsonl_follows_the_contract() -> None:
    result = replay(DEMO)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for row in rows:
        assert list(row)[: len(CONTRACT_FIELDS)] == CONTRACT_FIELDS
        assert row["ts"].endswith("Z") and "T" in row["ts"]
        assert row["transport"] in ("tcp", "udp")
    tls = {r["sni"] for r in rows if r["kind"] == "tls"}
    # api.openai.com's ClientHello is two segments delivered in reverse order.
    assert "api.openai.com" in tls
    assert "bedrock-runtime.eu-central-1.amazonaws.com" in tls
    quic = {(r["sni"], r["quic_version"]) for r in rows if r["kind"] == "quic"}
    assert quic == {
        ("generativelanguage.googleapis.com", "0x00000001"),
        ("gemini.google.com", "0x6b3343cf"),
    }
    dns_rows = [r for r in rows if r["kind"] == "dns"]
    assert {"qname": "api.anthropic.com", "answers": ["160.79.104.10"]}.items() <= next(
        r for r in dns_rows if r["qname"] == "api.anthropic.com"
    ).items()
    # DNS observations keep the query's direction: client -> resolver.
    assert all(r["dport"] == 53 and r["src"] == "192.168.1.23" for r in dns_rows)


def test_demo_table() -> None:
    result = replay("--format", "table", DEMO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "KIND", "SOURCE"]
    assert any("api.openai.com" in line and "tls" in line for line in lines)


def test_not_a_capture_exits_3_with_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is not a capture\n")
    result = replay(bogus)
    assert result.returncode == 3
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "notes.txt" in result.stderr


@pytest.mark.parametrize("content", [b"", b"\xd4\xc3\xb2"])
def test_empty_or_tiny_file_exits_3(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cut.pcap"
    path.write_bytes(content)
    result = replay(path)
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_file_exits_3(tmp_path: Path) -> None:
    result = replay(tmp_path / "absent.pcap")
    assert result.returncode == 3
    assert "absent.pcap" in result.stderr


def test_truncated_file_writes_what_came_before_then_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    with path.open("wb") as fh:
        traffic = Traffic(PcapWriter(fh))
        for i in range(5):
            traffic.tcp("10.0.0.1", 40000 + i, "10.0.0.2", 443, client_hello(f"n{i}.example"))
    data = path.read_bytes()
    path.write_bytes(data[:-30])  # cut inside the last record (a FIN)
    result = replay(path)
    assert result.returncode == 3
    assert [json.loads(x)["sni"] for x in result.stdout.splitlines()] == [
        f"n{i}.example" for i in range(5)
    ]
    assert "truncated" in result.stderr


def test_good_file_after_bad_file_is_still_read(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"\x00" * 100)
    result = replay(bogus, DEMO)
    assert result.returncode == 3
    assert "api.openai.com" in result.stdout


def test_broken_pipe_is_quiet() -> None:
    proc = subprocess.run(
        f"{sys.executable} -m egresswatch replay {DEMO} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr
