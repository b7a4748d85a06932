"""Dropping root once the capture sockets are open: a service user, CAP_NET_RAW only.

The agent needs root (or CAP_NET_RAW and CAP_NET_ADMIN) to open its packet sockets and attach
their kernel filter; after that it only reads them. So once they are open, ``drop_to`` hands
the store's files to the service user, switches to it, and keeps CAP_NET_RAW alone (what an
agent might need to open another packet socket later), with every other capability gone from
the permitted, effective, inheritable, ambient and bounding sets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from egresswatch.errors import ConfigError

CAP_NET_RAW = 13
_CAP_LAST = 63
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@dataclass(frozen=True, slots=True)
class Dropped:
    """Who the agent runs as after the drop."""

    user: str
    uid: int
    gid: int
    capabilities: int
    """The effective capability mask."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        msg = f"cannot {what}: {os.strerror(err)}"
        raise ConfigError(msg)


def effective_capabilities(pid: int | str = "self") -> int:
    """The CapEff mask of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def drop_to(user: str, *, own: list[Path]) -> Dropped:
    """Become ``user`` keeping CAP_NET_RAW only; first give it the files in ``own``.

    Must run as root. Raises :class:`ConfigError` when the user does not exist or a step fails.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        msg = f"no such user {user!r} to run as (create it, or give --user root to stay root)"
        raise ConfigError(msg) from None
    for path in own:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)
    libc = _libc()
    # Keep the permitted set across the uid change, then narrow it to CAP_NET_RAW.
    _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities across setuid")
    for cap in range(_CAP_LAST + 1):
        if cap != CAP_NET_RAW:
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last: fine
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_NET_RAW
    _check(libc.capset(ctypes.byref(header), data), "set capabilities")
    libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    return Dropped(user, entry.pw_uid, entry.pw_gid, effective_capabilities())


def store_files(db_path: Path | None, status_path: Path | None) -> list[Path]:
    """The files and folder of a local store that the service user must be able to write."""
    out: list[Path] = []
    if db_path is not None:
        out += [db_path.parent, db_path]
        out += [db_path.with_name(db_path.name + s) for s in ("-wal", "-shm", ".lock")]
    if status_path is not None:
        out.append(status_path)
    return out
