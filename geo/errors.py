"""Errors of the knowledge layer.

``geo`` sits below ``egresswatch`` and may not import it, so it has a root of its own; the CLI
maps it to exit status 2 (bad configuration or data)::

    GeoError
    ├── RegisterError       the provider register (register.toml) does not parse or breaks its
    │                       schema; ``path``, ``entry`` (which provider / endpoint), ``problem``
    └── RegionTableError    the cloud region table (regions.csv) is malformed; ``path``, ``line``

A lookup that finds nothing is not an error: ``HostMatcher.match`` returns ``NoMatch``,
``RegionTable.lookup`` returns ``None``.
"""

from __future__ import annotations


class GeoError(Exception):
    """Root of every error raised by ``geo``."""


class RegisterError(GeoError):
    """The provider register is unreadable or invalid: which entry, and what is wrong with it."""

    def __init__(self, problem: str, *, entry: str | None = None, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.entry = entry
        self.path = path

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.entry) if p]
        parts.append(self.problem)
        return ": ".join(parts)


class RegionTableError(GeoError):
    """The cloud region table is unreadable or invalid: file, line, and what is wrong."""

    def __init__(self, problem: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = self.path or ""
        if self.path and self.line is not None:
            where = f"{self.path}:{self.line}"
        return f"{where}: {self.problem}" if where else self.problem
