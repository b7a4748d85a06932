"""Which connections ``ci`` judges as the command's: its process tree, as recorded when each
process was first read (the processes may be gone by the time their hello is judged)."""

from __future__ import annotations

import os

from egresswatch.ci import TreeScope
from probes.observation import Observation
from tests.factories import KeptObservations

# Process ids that exist nowhere: /proc cannot answer for them, only the recorded lineage.
ROOT, SHELL, CURL, STRANGER, ITS_PARENT = 4_000_001, 4_000_002, 4_000_003, 4_000_004, 4_000_005


def _hello(pid: int | None, sni: str = "api.example.com") -> Observation:
    extra = {} if pid is None else {"pid": pid}
    return Observation(
        ts=1.0, kind="tls", transport="tcp", src="10.0.0.2", dst="192.0.2.1",
        sport=40000, dport=443, sni=sni, extra=extra,
    )  # fmt: skip


def _scope(lineage: dict[int, tuple[int, ...]]) -> tuple[TreeScope, KeptObservations]:
    kept = KeptObservations()
    scope = TreeScope(kept, lineage)
    scope.root = ROOT
    return scope, kept


def test_a_grandchild_whose_parents_exited_is_the_commands() -> None:
    # ci -- sh -c "curl ...; exit 7": by the time curl's hello is judged, curl and the shell
    # may both be gone; the ancestors recorded at the first packet still say whose it was.
    scope, kept = _scope({CURL: (SHELL, ROOT, 77)})
    scope.write(_hello(CURL))
    assert [o.extra["pid"] for o in kept.seen] == [CURL]
    assert (scope.kept, scope.left_out) == (1, 0)


def test_another_process_is_left_out() -> None:
    scope, kept = _scope({STRANGER: (ITS_PARENT, 77)})
    scope.write(_hello(STRANGER))
    scope.write(_hello(STRANGER))  # its ancestry is remembered as outside
    assert kept.seen == []
    assert (scope.kept, scope.left_out) == (0, 2)


def test_without_a_record_proc_is_walked() -> None:
    # This test process is not the command; a process whose ancestry nobody recorded and /proc
    # does not know is not the command's either.
    scope, _ = _scope({})
    scope.write(_hello(os.getppid()))
    scope.write(_hello(CURL))
    assert (scope.kept, scope.left_out) == (0, 2)


def test_orphans_reparented_to_ci_are_the_commands_but_ci_itself_is_not() -> None:
    # ci is the command's subreaper: a daemon the build left behind has ci as its parent.
    me = os.getpid()
    scope, _ = _scope({CURL: (me, 1)})
    scope.write(_hello(CURL))
    scope.write(_hello(me))  # ci's own connection (a store on PostgreSQL)
    assert (scope.kept, scope.left_out) == (1, 1)


def test_unattributed_connections_are_judged_and_counted() -> None:
    scope, kept = _scope({})
    scope.write(_hello(None))
    assert len(kept.seen) == 1
    assert scope.unattributed == 1
    assert "1 could not be attributed" in scope.describe()


def test_before_the_command_started_everything_attributed_is_someone_elses() -> None:
    kept = KeptObservations()
    scope = TreeScope(kept, {CURL: (ROOT,)})
    scope.write(_hello(CURL))
    assert (scope.kept, scope.left_out) == (0, 1)
