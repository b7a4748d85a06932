"""Every connection of every scenario gets the verdict and rule that POLICY.md prescribes.

One test per connection (``scenario/connection``), so that a disagreement names exactly the
connection, the expected outcome with its POLICY.md sentence, and what the command said.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.scenarios.harness import (
    CONTRACT_FIELDS,
    Conn,
    Run,
    check,
    describe_failure,
    replay,
    row_for,
)
from tests.scenarios.scenarios import SCENARIOS, Scenario

# Connections where POLICY.md can honestly be read two ways and the command takes the other
# reading: (scenario, connection) -> why. Kept empty unless the text is truly ambiguous.
AMBIGUOUS: dict[tuple[str, str], str] = {}


def _connection_cases() -> list[Any]:
    cases: list[Any] = []
    for scenario in SCENARIOS:
        for conn in scenario.capture.conns:
            if conn.kind == "dns":
                continue
            why = AMBIGUOUS.get((scenario.name, conn.cid))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            cases.append(
                pytest.param(scenario, conn, id=f"{scenario.name}/{conn.cid}", marks=marks)
            )
    return cases


WITH_DNS = [s for s in SCENARIOS if any(c.kind == "dns" for c in s.capture.conns)]


@pytest.mark.parametrize(("scenario", "conn"), _connection_cases())
def test_connection_verdict(
    scenario: Scenario, conn: Conn, run_scenario: Callable[[Scenario], Run]
) -> None:
    run = run_scenario(scenario)
    row = row_for(run, conn)
    problems = check(row, conn, scenario.rule_reasons)
    assert not problems, describe_failure(conn, row, problems)


@pytest.mark.parametrize("scenario", WITH_DNS, ids=[s.name for s in WITH_DNS])
def test_dns_lines_are_not_judged(
    scenario: Scenario, run_scenario: Callable[[Scenario], Run]
) -> None:
    run = run_scenario(scenario)
    failures = []
    for conn in scenario.capture.conns:
        if conn.kind != "dns":
            continue
        row = row_for(run, conn)
        problems = check(row, conn, scenario.rule_reasons)
        if problems:
            failures.append(describe_failure(conn, row, problems))
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_one_judged_line_per_observation(
    scenario: Scenario, run_scenario: Callable[[Scenario], Run]
) -> None:
    run = run_scenario(scenario)
    # Without --fail-on-violation replay reports and exits 0 (DESIGN.md exit codes).
    assert run.returncode == 0, run.stderr
    assert len(run.rows) == len(scenario.capture.conns), [
        (r["kind"], r["sport"], r.get("host")) for r in run.rows
    ]
    fixed = [f for f in CONTRACT_FIELDS if f not in ("pid", "process")]
    for row in run.rows:
        missing = [f for f in fixed if f not in row]
        assert not missing, f"line lacks contract fields {missing}: {row}"
        assert row["verdict"] in (None, "allow", "warn", "violation")


def test_lines_carry_pid_and_process(run_scenario: Callable[[Scenario], Run]) -> None:
    """DESIGN.md: with geo data and a policy, replay and run add `pid` and `process` (null
    where unknown); a capture file knows no process, so both are null, but present."""
    run = run_scenario(SCENARIOS[0])
    for row in run.rows:
        missing = [f for f in ("pid", "process") if f not in row]
        assert not missing, f"a {row['kind']} line lacks {missing}; it has {sorted(row)}"
        assert row["pid"] is None and row["process"] is None


CROSS_CHECKED = ("named-by-dns", "unverifiable-warn", "selectors")


@pytest.mark.parametrize("name", CROSS_CHECKED)
def test_installed_command_says_the_same(
    name: str, tmp_path: Path, geo_dir: Path, run_scenario: Callable[[Scenario], Run]
) -> None:
    """The scenarios run the CLI in-process for speed; the installed command, in its own
    process with a clean environment, must print exactly the same lines."""
    scenario = next(s for s in SCENARIOS if s.name == name)
    policy = tmp_path / "policy.toml"
    policy.write_text(scenario.policy, encoding="utf-8")
    capture = scenario.capture.write(tmp_path / "capture.pcapng")
    separate = replay(capture, policy, geo_dir, in_process=False)
    assert separate.returncode == 0, separate.stderr
    assert separate.rows == run_scenario(scenario).rows
