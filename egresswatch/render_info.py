"""Rendering for the informational commands: ``providers`` and ``geo lookup``."""

from __future__ import annotations

import json
from typing import IO

from rich.console import Console
from rich.table import Table

from egresswatch.output import safe_text
from geo.destination import Destination
from geo.register import Register


def _places(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "-"


def providers_json(register: Register, roles: set[str]) -> str:
    """The register as JSON: providers with their endpoints, sources and dates."""
    out = []
    for provider in register.providers:
        endpoints = [e for e in provider.endpoints if not roles or e.role in roles]
        if not endpoints:
            continue
        out.append(
            {
                "id": provider.id,
                "name": provider.name,
                "home": provider.home,
                "kinds": list(provider.kinds),
                "source": provider.source,
                "as_of": provider.as_of.isoformat(),
                "endpoints": [
                    {
                        "host": e.host,
                        "product": e.product,
                        "role": e.role,
                        "inference": list(e.inference),
                        "storage": list(e.storage),
                        "region_cloud": e.region_cloud,
                        "options": list(e.options),
                        "confidence": e.confidence,
                        "source": e.source,
                        "as_of": e.as_of.isoformat(),
                        "notes": e.notes,
                    }
                    for e in endpoints
                ],
            }
        )
    return json.dumps(out, ensure_ascii=False, indent=2)


def providers_table(register: Register, roles: set[str], stream: IO[str]) -> None:
    """One row per endpoint."""
    table = Table(show_lines=False, header_style="bold")
    for column in ("provider", "home", "host", "role", "inference", "source", "as of"):
        table.add_column(column, overflow="fold")
    count = 0
    for provider in register.providers:
        for e in provider.endpoints:
            if roles and e.role not in roles:
                continue
            table.add_row(
                provider.id,
                provider.home,
                e.host,
                e.role,
                _places(e.inference),
                e.source,
                e.as_of.isoformat(),
            )
            count += 1
    console = Console(file=stream, width=200 if not stream.isatty() else None)
    console.print(table)
    console.print(f"{count} endpoints", style="dim")


def destination_table(dest: Destination, stream: IO[str]) -> None:
    """The facts of one destination, with their sources."""
    table = Table(show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_column("source", overflow="fold", style="dim")
    rows = dest.to_dict()
    sources = dest.sources
    for key in (
        "host", "provider", "provider_name", "product", "role", "jurisdiction", "region",
        "inference", "storage", "endpoint_country", "asn", "as_org", "cloud", "anycast",
        "looks_like_ai", "confidence",
    ):  # fmt: skip
        value = rows[key]
        text = (
            _places(tuple(value))
            if isinstance(value, list)
            else ("-" if value is None else str(value))
        )
        table.add_row(key, safe_text(text, 200), sources.get(key, ""))
    console = Console(file=stream, width=160 if not stream.isatty() else None)
    console.print(table)
    for line in dest.disagreements:
        console.print(f"sources disagree: {line}", style="yellow")
