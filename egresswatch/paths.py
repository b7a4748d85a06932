"""Where egresswatch keeps its files when nothing says otherwise (DESIGN.md, "Names")."""

from __future__ import annotations

import os
from pathlib import Path

DB_NAME = "egresswatch.db"


def data_dir() -> Path:
    """``/var/lib/egresswatch`` for root, else ``$XDG_DATA_HOME/egresswatch``."""
    if os.geteuid() == 0:
        return Path("/var/lib/egresswatch")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "egresswatch"


def default_db_path() -> Path:
    """The SQLite database used when no ``--db`` is given."""
    return data_dir() / DB_NAME


def geo_dir(option: str | os.PathLike[str] | None, db_path: Path | None = None) -> Path:
    """The geo data folder: ``--geo-dir``, else ``$EGRESSWATCH_GEO_DIR``, else beside the db."""
    if option:
        return Path(option)
    env = os.environ.get("EGRESSWATCH_GEO_DIR")
    if env:
        return Path(env)
    return (db_path or default_db_path()).parent / "geo"
