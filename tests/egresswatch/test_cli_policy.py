"""`egresswatch policy check`: exit 0 valid, 2 invalid with file and line (POLICY.md, Errors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", "policy", "check", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("example", sorted((REPO / "examples" / "policies").glob("*.toml")))
def test_examples_are_valid(example: Path) -> None:
    result = check(example)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('version = 1\n[audit]\nscope = "ai"\ncolour = "red"\n', 4, "colour"),
        ('version = 1\n\n[[rule]]\nid = "x"\naction = "deny"\nprovider = "nosuch"\n', 6, "nosuch"),
        ('version = 1\n[groups]\na = ["b"]\nb = ["a"]\n', None, "cycle"),
        ('version = 1\n[[rule]]\nid = "x"\naction = "deny"\n', 2, "selector"),
        ("version = 1\n[audit\n", 2, ""),
    ],
)
def test_broken_policy_exits_2_with_file_and_line(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    result = check(path)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert str(path) in message
    if line is not None:
        assert f"{path}:{line}:" in message
    assert words in message


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = check(tmp_path / "absent.toml")
    assert result.returncode == 2
    assert "absent.toml" in result.stderr


DEMO = REPO / "demo" / "egresswatch-demo.pcapng"
SAMPLE = REPO / "geo" / "sample"
NO_CN_RU = REPO / "examples" / "policies" / "no-cn-ru-vendors.toml"


def replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", "replay", "--geo-dir", str(SAMPLE), *map(str, args)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_replay_with_policy_fills_verdict_rule_reason() -> None:
    import json

    result = replay("--policy", NO_CN_RU, DEMO)
    assert result.returncode == 0, result.stderr  # violations alone do not fail without the flag
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all({"verdict", "rule", "reason"} <= row.keys() for row in rows)
    by_host = {(r["kind"], r["host"]): r for r in rows}
    deepseek = by_host[("tls", "api.deepseek.com")]
    assert (deepseek["verdict"], deepseek["rule"]) == ("violation", "no-unapproved-vendors")
    assert "SEC-123" in deepseek["reason"]
    assert by_host[("tls", "pypi.org")]["verdict"] == "allow"
    assert by_host[("dns", "api.deepseek.com")]["verdict"] == "allow"  # DNS is not judged
    assert [r for r in rows if r["verdict"] == "violation"] == [deepseek]


def test_fail_on_violation_exits_1() -> None:
    result = replay("--policy", NO_CN_RU, "--fail-on-violation", DEMO)
    assert result.returncode == 1
    assert "1 violation" in result.stderr


def test_fail_on_violation_needs_a_policy() -> None:
    assert replay("--fail-on-violation", DEMO).returncode == 2


def test_broken_policy_runs_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[rule]]\nid = "x"\naction = "deny"\n')
    result = replay("--policy", bad, DEMO)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{bad}:2:" in result.stderr


EU_ONLY = REPO / "examples" / "policies" / "eu-only-inference.toml"


def explain(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", "policy", "explain", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_explain_shows_each_step_and_the_deciding_rule() -> None:
    us = explain(EU_ONLY, "bedrock-runtime.us-east-1.amazonaws.com")
    assert us.returncode == 0, us.stderr
    assert "4: inference US" in us.stdout
    assert us.stdout.splitlines()[-1].startswith("verdict: violation (rule inference)")
    eu = explain(
        EU_ONLY, "bedrock-runtime.eu-central-1.amazonaws.com", "--ip", "3.124.0.20",
        "--geo-dir", SAMPLE,
    )  # fmt: skip
    assert "endpoint country DE lies inside" in eu.stdout
    assert eu.stdout.splitlines()[-1].startswith("verdict: allow (rule bedrock-eu)")


def test_explain_refuses_a_broken_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[audit\n")
    result = explain(bad, "api.openai.com")
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr
