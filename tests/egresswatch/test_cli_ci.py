"""`egresswatch ci -- curl https://NAME` in a network namespace against a local TLS server:
a denied name fails the job, an allowed one passes it, the JUnit file names the rule, and the
command's own failure wins."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import e2e_servers as servers
from tests.netns import VethPair, veth_pair, wait_for_port

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EGRESSWATCH = str(Path(sys.executable).with_name("egresswatch"))
SERVERS = REPO / "tests" / "e2e_servers.py"
POLICY = """
version = 1
[[rule]]
id = "no-deepseek"
action = "deny"
provider = "deepseek"
reason = "not approved by procurement (SEC-123)"

[[rule]]
id = "package-registries"
action = "allow"
host = ["pypi.org", "files.pythonhosted.org"]
"""


@dataclass
class Lab:
    pair: VethPair
    folder: Path
    policy: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("ci")
    cert, key = servers.make_cert(folder, ["api.deepseek.com", "pypi.org"])
    policy = folder / "policy.toml"
    policy.write_text(POLICY)
    with veth_pair() as pair:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        pair.server.ns.popen(
            sys.executable, str(SERVERS), "tls-server", "443", str(cert), str(key), env=env
        )
        wait_for_port(pair.server.ns, 443, limit=30)
        yield Lab(pair, folder, policy)


def _curl(lab: Lab, name: str) -> list[str]:
    return [
        "curl", "-sk", "-o", "/dev/null", "--max-time", "10",
        "--resolve", f"{name}:443:{lab.pair.server.ip4}", f"https://{name}/",
    ]  # fmt: skip


def _ci(lab: Lab, command: list[str], *, tag: str) -> tuple[int, Path, Path]:
    junit, summary = lab.folder / f"{tag}.xml", lab.folder / f"{tag}.md"
    step = lab.folder / f"{tag}-step.md"
    step.write_text("earlier step\n")
    done = lab.pair.client.ns.run(
        EGRESSWATCH, "ci", "--policy", str(lab.policy), "-i", lab.pair.client.ifname,
        "--junit", str(junit), "--summary", str(summary), "--grace", "0.5", "--", *command,
        check=False, timeout=120, env={**os.environ, "GITHUB_STEP_SUMMARY": str(step)},
    )  # fmt: skip
    assert "egresswatch ci:" in done.stderr.decode(), done.stderr.decode()
    return done.returncode, junit, step


def _cases(junit: Path) -> dict[tuple[str, str], bool]:
    root = ET.parse(junit).getroot()
    return {
        (case.get("classname", ""), case.get("name", "")): case.find("failure") is not None
        for case in root.iter("testcase")
    }


def test_denied_name_fails_the_job_and_junit_names_the_rule(lab: Lab) -> None:
    status, junit, step = _ci(lab, _curl(lab, "api.deepseek.com"), tag="denied")
    assert status == 1
    assert _cases(junit) == {("egresswatch.no-deepseek", "api.deepseek.com"): True}
    failure = ET.parse(junit).getroot().find(".//failure")
    assert failure is not None
    assert "SEC-123" in (failure.get("message") or "")
    text = step.read_text()
    assert text.startswith("earlier step\n"), "the step summary is appended to, not replaced"
    assert "1 violation" in text
    assert "no-deepseek" in text


def test_allowed_name_passes_the_job(lab: Lab) -> None:
    status, junit, _ = _ci(lab, _curl(lab, "pypi.org"), tag="allowed")
    assert status == 0
    assert _cases(junit) == {("egresswatch.package-registries", "pypi.org"): False}


def test_the_commands_own_failure_wins(lab: Lab) -> None:
    # A build that reached a denied name and then failed: its own status (7) is the job's.
    script = " ".join(_curl(lab, "api.deepseek.com")) + "; exit 7"
    status, junit, _ = _ci(lab, ["sh", "-c", script], tag="failed")
    assert status == 7
    assert _cases(junit) == {("egresswatch.no-deepseek", "api.deepseek.com"): True}


def test_capture_that_cannot_start_runs_nothing(lab: Lab, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = lab.pair.client.ns.run(
        EGRESSWATCH, "ci", "-i", "no-such-if0", "--", "touch", str(marker),
        check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3
    assert not marker.exists()
    assert "not run" in done.stderr.decode()


def test_other_processes_are_left_out(lab: Lab) -> None:
    # Another program on the same host reaches a denied name while the build runs: the build
    # is judged on its own process tree, so the job passes and the summary says what was left.
    # The other program holds its connection for a while, so that it is surely attributed
    # (how short-lived clients fare is measured in bench/attribution.py).
    target = f"{lab.pair.server.ip4}:443"
    fifo = lab.folder / "started"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    # It connects once the build has started (the build says so through a FIFO), and holds
    # its connection until after the build's own.
    other = lab.pair.client.ns.popen(
        "sh", "-c", f"read go < {fifo}; sleep 3 | openssl s_client -connect {target} "
        "-servername api.deepseek.com >/dev/null 2>&1",
    )  # fmt: skip
    try:
        build = f"echo go > {fifo}; sleep 2; " + " ".join(_curl(lab, "pypi.org"))
        status, junit, step = _ci(lab, ["sh", "-c", build], tag="scoped")
    finally:
        other.wait(timeout=30)
    text = step.read_text()
    assert status == 0, text
    assert _cases(junit) == {("egresswatch.package-registries", "pypi.org"): False}
    assert "process tree" in text
    assert "1 from other processes left out" in text
