"""The C allocator's set-up for the long-running agent (egresswatch/allocator.py)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from egresswatch import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
REPO = Path(__file__).resolve().parents[2]


def _rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not GLIBC, reason="needs glibc (mallopt, malloc_trim)")
def test_tune_takes_on_glibc() -> None:
    # In a fresh interpreter: tune() is meant to run before any thread starts.
    code = "from egresswatch import allocator; print(allocator.tune())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


@pytest.mark.skipif(not GLIBC, reason="needs glibc (mallopt, malloc_trim)")
def test_trim_gives_freed_heap_back() -> None:
    # Many blocks just over Python's small-object limit come from malloc's heap (below the mmap
    # threshold); freeing all but the last leaves a hole glibc keeps until it is trimmed.
    blocks = [bytearray(4000) for _ in range(20000)]
    keep = blocks[-1]
    del blocks
    before = _rss_anon_kib()
    allocator.trim()
    after = _rss_anon_kib()
    assert keep is not None
    assert before - after > 40_000, (before, after)


def test_no_op_where_there_is_no_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    allocator._libc.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    try:
        assert allocator.tune() is False
        assert allocator.trim() is False
    finally:
        monkeypatch.undo()
        allocator._libc.cache_clear()
