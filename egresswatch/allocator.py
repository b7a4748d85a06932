"""The C allocator, set up for an agent that runs for weeks (glibc only; elsewhere a no-op).

Python objects come from Python's own allocator, but everything bigger than 512 bytes (dict
and list tables, packet buffers, SQLite's pages) comes from the C library's ``malloc``. glibc's
defaults suit short programs and let a daemon's resident memory creep up long after its data
stopped growing:

- Each thread that allocates may get an arena of its own (up to eight per core), each holding
  on to its free memory separately. The agent has a capture thread, the event loop and a
  worker pool; two arenas are plenty.
- The threshold above which a block gets its own ``mmap`` (and goes back to the system when
  freed) rises each time such a block is freed, up to 32 MiB; after that, big short-lived
  buffers land in the heap and leave holes it keeps. Setting it fixes it at 256 KiB.
- ``malloc_trim(0)`` hands the free pages inside the heap back to the system; :func:`trim` is
  called on the agent's status tick, so what the status and ``RssAnon`` show is what is in use.

Measured with the one-hour soak (``bench/soak.py``): see the README's benchmarks.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):  # not glibc (musl has neither)
        return None
    return libc


def tune() -> bool:
    """Fewer arenas and a fixed mmap threshold; call before starting threads. Whether it took."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS)) and bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )


def trim() -> bool:
    """Give the allocator's free pages back to the system; whether any were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
