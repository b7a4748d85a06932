"""Fixtures shared by the scenarios: one geo folder, and each scenario replayed once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.scenarios.harness import Run, build_geo_dir, replay
from tests.scenarios.scenarios import Scenario


@pytest.fixture(scope="session")
def geo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenarios' geo folder (City and ASN databases, one Cloudflare range file)."""
    return build_geo_dir(tmp_path_factory.mktemp("geo"))


@pytest.fixture(scope="session")
def run_scenario(
    tmp_path_factory: pytest.TempPathFactory, geo_dir: Path
) -> Callable[[Scenario], Run]:
    """Replay a scenario's capture under its policy, once per session."""
    done: dict[str, Run] = {}

    def run(scenario: Scenario) -> Run:
        if scenario.name not in done:
            folder = tmp_path_factory.mktemp(scenario.name)
            policy = folder / "policy.toml"
            policy.write_text(scenario.policy, encoding="utf-8")
            capture = scenario.capture.write(folder / "capture.pcapng")
            done[scenario.name] = replay(capture, policy, geo_dir)
        return done[scenario.name]

    return run
