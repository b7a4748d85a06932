"""Exit codes around the policy (DESIGN.md "Exit codes", POLICY.md "Errors")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios.harness import DE, US, Capture, egresswatch
from tests.scenarios.scenarios import allow, header, violation

GOOD_POLICY = (
    header()
    + """
[residency]
endpoint = ["eu_plus"]
unknown_location = "warn"
"""
)


def _capture(tmp_path: Path, *, with_violation: bool) -> Path:
    c = Capture()
    c.tls("ok", "eu.api.openai.com", DE, allow())
    c.tls("non-ai", "pypi.org", US, allow())
    if with_violation:
        c.tls("bad", "eu.api.openai.com", US, violation("endpoint", ""))
    return c.write(tmp_path / "capture.pcapng")


@pytest.mark.parametrize(("with_violation", "status"), [(False, 0), (True, 1)])
def test_fail_on_violation(
    tmp_path: Path, geo_dir: Path, *, with_violation: bool, status: int
) -> None:
    """`replay --fail-on-violation`: 1 when violations were found, else 0."""
    policy = tmp_path / "policy.toml"
    policy.write_text(GOOD_POLICY, encoding="utf-8")
    capture = _capture(tmp_path, with_violation=with_violation)
    result = egresswatch(
        "replay",
        "--fail-on-violation",
        "--geo-dir",
        geo_dir,
        "--policy",
        policy,
        capture,
        in_process=False,
    )
    assert result.returncode == status, result.stderr


BAD_POLICIES = {
    "group-cycle": header().replace(
        'eu_plus = ["EU", "EEA", "GB", "CH"]', 'a = ["b", "DE"]\nb = ["a"]'
    ),
    "rule-without-selector": header() + '\n[[rule]]\nid = "empty"\naction = "allow"\n',
    "unknown-provider": header()
    + '\n[[rule]]\nid = "x"\naction = "deny"\nprovider = "no-such-company"\n',
    "unknown-group": header() + '\n[residency]\nendpoint = ["nowhere_land"]\n',
    "duplicate-rule-id": header()
    + '\n[[rule]]\nid = "x"\naction = "deny"\nport = 1\n'
    + '\n[[rule]]\nid = "x"\naction = "deny"\nport = 2\n',
    "bad-severity": header(unknown_ai="maybe"),
    "unknown-key": header() + '\n[[rule]]\nid = "x"\naction = "deny"\nhostname = "a.example"\n',
}


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_bad_policy_is_refused_before_anything_runs(
    name: str, tmp_path: Path, geo_dir: Path
) -> None:
    """POLICY.md Errors: refused before anything runs, exit 2, a message naming the file.

    The installed command, in its own process: the mapping of errors to exit codes is the
    console entry point's job.
    """
    policy = tmp_path / f"{name}.toml"
    policy.write_text(BAD_POLICIES[name], encoding="utf-8")
    checked = egresswatch("policy", "check", policy, in_process=False)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert policy.name in checked.stdout + checked.stderr
    capture = _capture(tmp_path, with_violation=True)
    replayed = egresswatch(
        "replay", "--geo-dir", geo_dir, "--policy", policy, capture, in_process=False
    )
    assert replayed.returncode == 2, replayed.stderr
    assert replayed.stdout == "", "nothing may run with a bad policy"
