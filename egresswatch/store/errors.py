"""Errors of the store (see :mod:`egresswatch.errors` for the whole hierarchy)."""

from __future__ import annotations

from egresswatch.errors import EXIT_INPUT, EgressWatchError


class StoreError(EgressWatchError):
    """The database cannot be opened, read or written (exit 3)."""

    exit_code = EXIT_INPUT


class StoreVersionError(StoreError):
    """The database was written by a newer egresswatch: refused, left untouched (exit 2)."""

    exit_code = 2
