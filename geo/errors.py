"""Errors of the knowledge layer.

``geo`` sits below ``egresswatch`` and may not import it, so it has a root of its own; the CLI
maps it to exit status 2 (bad configuration or data)::

    GeoError
    ├── RegisterError       the provider register (register.toml) does not parse or breaks its
    │                       schema; ``path``, ``entry`` (which provider / endpoint), ``problem``
    ├── RegionTableError    the cloud region table (regions.csv) is malformed; ``path``, ``line``
    ├── GeoUpdateError      ``geo update`` cannot run: unknown source name, geo folder not usable,
    │   │                   another update holds the lock; ``problem``, ``source``, ``path``
    │   └── DownloadError   one source could not be fetched, unpacked or validated; ``status``
    │                       (HTTP code or None). ``update_geo_dir`` catches it and reports the
    │                       source as ``failed``; its text never carries a key or token
    ├── RdapCacheError      the RDAP cache database cannot be opened or created; ``path``
    └── IpDataError         an IP database or range file in the geo folder is unusable; ``path``
        ├── MmdbFileError   a ``*.mmdb`` that does not open or decode, or of a kind not read
        └── RangeFileError  a cloud range file not in its provider's published format

A lookup that finds nothing is not an error: ``HostMatcher.match`` returns ``NoMatch``,
``RegionTable.lookup`` returns ``None``, and an RDAP look-up that fails or is not allowed returns
an ``RdapResult`` that says so. Neither is a missing or broken file in the geo folder:
``IpIntel.from_dir`` lists it as skipped, with the ``IpDataError`` text as the reason.
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


class GeoUpdateError(GeoError):
    """``geo update`` cannot run, or one of its sources failed: which source, and what happened."""

    def __init__(self, problem: str, *, source: str | None = None, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.source = source
        self.path = path

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.source) if p]
        parts.append(self.problem)
        return ": ".join(parts)


class DownloadError(GeoUpdateError):
    """One geo data file could not be downloaded, unpacked or validated; the old file is kept."""

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        path: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(problem, source=source, path=path)
        self.status = status


class RdapCacheError(GeoError):
    """The RDAP cache database cannot be opened or created."""

    def __init__(self, problem: str, *, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class IpDataError(GeoError):
    """An IP database or published range file cannot be used: which file, and why.

    The geo-folder loaders catch it and list the file as skipped with ``str(error)`` as the
    reason; it escapes only from the single-file functions (``open_mmdb``, ``parse_*``).
    """

    def __init__(self, problem: str, *, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class MmdbFileError(IpDataError):
    """A ``*.mmdb`` file does not open, does not decode, or is of a kind or layout not read."""


class RangeFileError(IpDataError):
    """A cloud range file is not in its provider's published format."""
