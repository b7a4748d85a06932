"""``egresswatch ci``: run a build, watch what it reached, judge it, and say so in CI's terms.

Capture starts before the command and runs on its own thread; the command runs with the
terminal it was given; when it ends, a short grace period lets the last packets arrive, the
capture stops (reading what is still queued), and everything the command's time window saw on
the watched interfaces is judged. The verdicts go to a store (``--db``, else a temporary one)
and come back out through the report code: JUnit XML (one test case per rule and destination)
and a Markdown summary, also appended to ``$GITHUB_STEP_SUMMARY`` when it is set.

Exit status (DESIGN.md): the command's own status when it failed; else 1 when a connection
was a violation; else 0.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from egresswatch.agent import pump
from egresswatch.enrichment import EnrichingWriter, ObservationEnricher, OwnEndpoints
from egresswatch.output import ObservationWriter
from egresswatch.policy import Policy
from egresswatch.report.formats import renderer
from egresswatch.report.interface import Report, ReportFormat
from egresswatch.report.query import Filters, ReportQuery
from egresswatch.store.writer import StoreWriter
from geo.enrich import Enricher
from probes.live import LiveCapture
from probes.observation import Observation
from probes.sensor import Sensor

SUMMARY_ROWS = 200
"""Destinations listed in the Markdown summary at most (GitHub caps a step summary at 1 MiB)."""
SCOPE_WHOLE_HOST = "whole host: every connection on the watched interfaces while it ran"
"""What was judged, until connections can be attributed to the command's processes."""


@dataclass(frozen=True, slots=True)
class CiResult:
    """What one ``ci`` run found."""

    command_status: int
    """The command's exit status (negative: killed by that signal)."""
    report: Report
    """Everything seen while the command ran, judged, as a report."""
    scope: str
    """Which connections were judged."""

    @property
    def violations(self) -> int:
        """Violations among them."""
        return self.report.summary.by_verdict.get("violation", 0)

    @property
    def exit_status(self) -> int:
        """The command's failure wins; else 1 on a violation; else 0."""
        if self.command_status != 0:
            return self.command_status if self.command_status > 0 else 128 - self.command_status
        return 1 if self.violations else 0


class _Locked:
    """Serialises the capture thread's writes with the main thread's final flush."""

    def __init__(self, writer: ObservationWriter) -> None:
        self._writer = writer
        self._lock = threading.Lock()

    def write(self, obs: Observation) -> None:
        with self._lock:
            self._writer.write(obs)

    def close(self) -> None:
        with self._lock:
            self._writer.close()


def run_ci(
    command: Sequence[str],
    *,
    capture: LiveCapture,
    store: StoreWriter,
    enricher: Enricher,
    policy: Policy | None,
    grace: float,
    echo: IO[str] | None = None,
) -> CiResult:
    """Capture around ``command``; return its status and the judged report."""
    judge = ObservationEnricher(enricher, policy, own=OwnEndpoints.default())
    writer = _Locked(EnrichingWriter(store, judge))
    sensor = Sensor()
    stop = threading.Event()
    failure: list[BaseException] = []

    def capture_thread() -> None:
        try:
            pump(capture, sensor, writer, stop.is_set)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    started = time.time()
    thread = threading.Thread(target=capture_thread, name="egresswatch-capture", daemon=True)
    thread.start()
    try:
        status = _run(command)
    finally:
        time.sleep(grace)
        stop.set()
        thread.join()
        writer.close()
    if failure:
        raise failure[0]
    if echo is not None:
        echo.flush()
    query = ReportQuery(store.engine)
    report = query.build(
        Filters(
            since=started - 1.0, machines=(store.machine,), shown={"command": " ".join(command)}
        ),
        limit=SUMMARY_ROWS * 50,
        with_cases=True,
        title="egresswatch ci",
    )
    return CiResult(status, report, SCOPE_WHOLE_HOST)


def _run(command: Sequence[str]) -> int:
    try:
        return subprocess.run(list(command), check=False).returncode
    except FileNotFoundError:
        return 127  # as a shell says: command not found
    except PermissionError:
        return 126


def write_outputs(result: CiResult, *, junit: Path | None, summary: Path | None) -> list[Path]:
    """JUnit XML and the Markdown summary where asked, and to $GITHUB_STEP_SUMMARY."""
    written = []
    if junit is not None:
        with open(junit, "w", encoding="utf-8", newline="") as stream:
            renderer(ReportFormat.JUNIT).render(result.report, stream)
        written.append(junit)
    targets = [(summary, "w")] if summary is not None else []
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        targets.append((Path(step), "a"))  # other steps write there too
    report = _limited(result.report)
    for path, mode in targets:
        with open(path, mode, encoding="utf-8", newline="") as stream:
            stream.write(_headline(result) + "\n\n")
            renderer(ReportFormat.MARKDOWN).render(report, stream)
        written.append(path)
    return written


def _limited(report: Report) -> Report:
    from dataclasses import replace

    if len(report.rows) <= SUMMARY_ROWS:
        return report
    extra = len(report.rows) - SUMMARY_ROWS + report.truncated
    return replace(report, rows=report.rows[:SUMMARY_ROWS], truncated=extra)


def _headline(result: CiResult) -> str:
    s = result.report.summary
    if result.command_status != 0:
        state = f"the command failed (exit {result.command_status})"
    elif result.violations:
        state = f"**{result.violations} violation(s)**"
    else:
        state = "no violation"
    return (
        f"egresswatch ci: {state}; {s.connections} connection(s) to {s.destinations} "
        f"destination(s). Scope: {result.scope}."
    )


def headline(result: CiResult) -> str:
    """One line for the job's log."""
    return _headline(result).replace("**", "")
