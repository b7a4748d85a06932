"""Errors of the product layer, and how every error maps to an exit code.

The lower layers have roots of their own because they may not import this package
(``probes.errors.ProbeError``, and later ``geo``'s). The CLI catches all of them::

    EgressWatchError                exit 2 unless a subclass says otherwise
    ├── ConfigError                 bad option, configuration or policy (exit 2); ``path``, ``line``
    └── InputError                  a capture or input cannot be read (exit 3); ``path``

    probes.errors.CaptureError      exit 3
    probes.errors.Malformed         never reaches the CLI: counted and skipped per packet
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_INPUT = 3


class EgressWatchError(Exception):
    """Root of the product layer's errors."""

    exit_code = EXIT_USAGE


class ConfigError(EgressWatchError):
    """Bad usage, configuration or policy: exit 2, with file and line where there is one."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = self.path or ""
        if self.path and self.line is not None:
            where = f"{self.path}:{self.line}"
        base = super().__str__()
        return f"{where}: {base}" if where else base


class InputError(EgressWatchError):
    """A capture or other input cannot be read: exit 3."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        base = super().__str__()
        return f"{self.path}: {base}" if self.path else base
