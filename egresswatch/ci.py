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

import ctypes
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from egresswatch.agent import pump
from egresswatch.attribution import AttributingWriter
from egresswatch.enrichment import EnrichingWriter, ObservationEnricher, OwnEndpoints
from egresswatch.output import ObservationWriter
from egresswatch.policy import Policy
from egresswatch.report.formats import renderer
from egresswatch.report.interface import Report, ReportFormat
from egresswatch.report.query import Filters, ReportQuery
from egresswatch.store.writer import StoreWriter
from geo.enrich import Enricher
from probes.errors import CaptureError
from probes.live import LiveCapture
from probes.observation import Observation
from probes.sensor import Sensor

SUMMARY_ROWS = 200
"""Destinations listed in the Markdown summary at most (GitHub caps a step summary at 1 MiB)."""
SCOPE_WHOLE_HOST = "whole host: every connection on the watched interfaces while it ran"
"""What was judged where connections cannot be attributed to processes."""


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


class TreeScope:
    """Keeps the connections of one process tree (the command's); counts the rest.

    A connection attributed to a process is the command's when the process, or one of its
    ancestors, is the command, or this program (which is the command's subreaper: a daemon the
    build left behind is reparented to it). The ancestors are those ``lineage`` recorded when
    the process was first read, so a short-lived ``sh -c curl`` is still the command's after
    the shell and curl have exited; past them, /proc. One that could not be attributed is kept
    (judged), since it may be the command's: the scope says how many.
    """

    def __init__(
        self, writer: ObservationWriter, lineage: Mapping[int, tuple[int, ...]] | None = None
    ) -> None:
        self._writer = writer
        self.lineage: Mapping[int, tuple[int, ...]] = lineage if lineage is not None else {}
        self.root: int | None = None
        self._self = os.getpid()
        self._inside: set[int] = set()
        self._outside: set[int] = set()
        self.kept = 0
        self.unattributed = 0
        self.left_out = 0

    def write(self, obs: Observation) -> None:
        if obs.kind != "dns":
            pid = obs.extra.get("pid")
            if self.root is None and isinstance(pid, int):
                # Before the command started: someone else's.
                self.left_out += 1
                return
            if not isinstance(pid, int):
                self.unattributed += 1
            elif not self._in_tree(pid):
                self.left_out += 1
                return
            self.kept += 1
        self._writer.write(obs)

    def _in_tree(self, pid: int) -> bool:
        if pid == self._self:
            return False  # this program's own (a store on PostgreSQL)
        seen: list[int] = []
        recorded = list(self.lineage.get(pid, ()))
        current = pid
        while current > 1:
            if current in (self.root, self._self) or current in self._inside:
                self._inside.update(seen)
                return True
            if current in self._outside:
                break
            seen.append(current)
            current = recorded.pop(0) if recorded else _parent(current)
        self._outside.update(seen)
        return False

    def close(self) -> None:
        self._writer.close()

    def describe(self) -> str:
        """What was judged, in one sentence."""
        text = f"the command's process tree: {self.kept} connection(s) judged"
        if self.unattributed:
            text += f" ({self.unattributed} could not be attributed and were judged too)"
        return text + f"; {self.left_out} from other processes left out"


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # comm may hold spaces and parentheses: the fields resume after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


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
    scope = TreeScope(EnrichingWriter(store, judge))
    attributing = _attributing(scope)
    if attributing is not None:
        scope.lineage = attributing.lineage
    writer = _Locked(attributing or scope)
    sensor = Sensor()
    stop = threading.Event()
    failure: list[BaseException] = []

    def capture_thread() -> None:
        try:
            pump(
                capture,
                sensor,
                writer,
                stop.is_set,
                early=attributing.prefetch if attributing is not None else None,
            )
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    started = time.time()
    thread = threading.Thread(target=capture_thread, name="egresswatch-capture", daemon=True)
    thread.start()
    try:
        status = _run(command, scope if attributing is not None else None)
    finally:
        time.sleep(grace)
        stop.set()
        thread.join()
        writer.close()
        if attributing is not None:
            attributing.shutdown()
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
    where = scope.describe() if attributing is not None else SCOPE_WHOLE_HOST
    return CiResult(status, report, where)


def _attributing(writer: ObservationWriter) -> AttributingWriter | None:
    try:
        return AttributingWriter(writer)
    except (CaptureError, OSError):
        return None  # judged on the whole host, and the scope says so


def _run(command: Sequence[str], scope: TreeScope | None) -> int:
    if scope is not None:
        _become_subreaper()
    try:
        proc = subprocess.Popen(list(command))
    except FileNotFoundError:
        return 127  # as a shell says: command not found
    except PermissionError:
        return 126
    if scope is not None:
        scope.root = proc.pid
    status = proc.wait()
    _reap_orphans()
    return status


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Orphans of the command (a daemon it started) become this process's children, not
    init's, so they stay in the command's tree (best effort: Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reap_orphans() -> None:
    """Collect orphans of the command that have exited (as a subreaper, ours to wait for)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


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
