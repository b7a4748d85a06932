"""Errors of the sensing layer.

``probes`` sits below ``egresswatch`` and may not import it, so it has a root of its own; the CLI
maps these to the exit codes of DESIGN.md::

    ProbeError
    ├── Malformed               bytes that are not what they claim to be (a counted drop)
    │   ├── MalformedPacket     link, IP, TCP or UDP header
    │   ├── MalformedTLS        TLS record or ClientHello
    │   ├── MalformedQUIC       QUIC Initial packet or CRYPTO frames
    │   └── MalformedDNS        DNS message
    └── CaptureError            a capture file or interface cannot be read (exit 3)

A parser has three outcomes and never confuses them: a result; ``None`` for "not complete yet,
feed me more"; or a ``Malformed`` subclass for "this is not valid".
"""

from __future__ import annotations


class ProbeError(Exception):
    """Root of every error raised by ``probes``."""


class Malformed(ProbeError):
    """The bytes are not a valid instance of the protocol being parsed."""


class MalformedPacket(Malformed):
    """A link-layer, IP, TCP or UDP header is invalid or truncated."""


class MalformedTLS(Malformed):
    """A TLS record or ClientHello is invalid."""


class MalformedQUIC(Malformed):
    """A QUIC packet, its protection or its frames are invalid."""


class MalformedDNS(Malformed):
    """A DNS message is invalid."""


class CaptureError(ProbeError):
    """A capture source cannot be read at all.

    ``path`` names the file or interface; the message says why in one line.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
