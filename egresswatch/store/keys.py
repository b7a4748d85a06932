"""Aggregation keys: which rows of the store count the same thing.

A key is a 16-byte BLAKE2b digest of the descriptive values, so it is short and indexable and
treats NULL as a value (SQL's unique constraints do not). Changing what goes into a key changes
which rows merge: it needs a migration that recomputes the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_NULL = "\x00"
_SEP = "\x1f"

HOUR = 3600
DAY = 86400
WEEK = 7 * DAY
# 1970-01-01 was a Thursday: weeks start on the Monday 3 days before the epoch.
_WEEK_OFFSET = 3 * DAY

AGGREGATE_COLUMNS = (
    "machine",
    "kind",
    "transport",
    "src",
    "dst",
    "dport",
    "host",
    "qtype",
    "provider",
    "role",
    "region",
    "inference",
    "endpoint_country",
    "asn",
    "as_org",
    "anycast",
    "ech",
    "verdict",
    "rule",
    "reason",
    "process",
)
"""The descriptive columns of an hourly row, in key order."""

DAILY_COLUMNS = (
    "machine",
    "kind",
    "host",
    "provider",
    "role",
    "endpoint_country",
    "verdict",
    "rule",
    "process",
)
"""The columns of a rollup row (daily, weekly, totals), in key order."""

FACET_COLUMNS = ("verdict", "kind", "endpoint_country", "rule", "provider")
"""The columns of a daily facets row, in key order."""


def digest(values: Sequence[object]) -> bytes:
    """The key of a row described by ``values`` (order matters)."""
    text = _SEP.join(_NULL if v is None else str(v) for v in values)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def hour_of(ts: float) -> int:
    """Start of the UTC hour holding ``ts``."""
    return int(ts // HOUR) * HOUR


def day_of(ts: float) -> int:
    """Start of the UTC day holding ``ts``."""
    return int(ts // DAY) * DAY


def week_of(ts: float) -> int:
    """Start of the week (Monday 00:00 UTC) holding ``ts``."""
    return int((ts + _WEEK_OFFSET) // WEEK) * WEEK - _WEEK_OFFSET
