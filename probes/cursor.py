"""A cursor over bytes: the one way parsers in ``probes`` read integers and blocks.

Modelled on aioquic's ``Buffer``: every read checks that the bytes are there and raises the
parser's own ``Malformed`` subclass when they are not, so no parser does slicing arithmetic of
its own.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager

from probes.errors import Malformed


class Cursor:
    """Reads big-endian integers and length-prefixed blocks from ``data``.

    ``error`` is the ``Malformed`` subclass raised when bytes run out or a block is not consumed
    exactly, so a TLS parser raises ``MalformedTLS`` and a QUIC parser ``MalformedQUIC``.
    """

    __slots__ = ("_data", "_end", "_error", "pos")

    def __init__(
        self, data: bytes | memoryview, error: type[Malformed] = Malformed, pos: int = 0
    ) -> None:
        self._data = data
        self._end = len(data)
        self._error = error
        self.pos = pos

    @property
    def end(self) -> int:
        """Offset one past the last readable byte (narrowed inside :meth:`block`)."""
        return self._end

    def remaining(self) -> int:
        """Bytes left before :attr:`end`."""
        return self._end - self.pos

    def eof(self) -> bool:
        """True when every byte up to :attr:`end` has been read."""
        return self.pos >= self._end

    def _need(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self._end:
            msg = f"truncated: need {n} bytes at offset {start}, have {self._end - start}"
            raise self._error(msg)
        self.pos = start + n
        return start

    def uint8(self) -> int:
        """Read one byte."""
        return self._data[self._need(1)]

    def uint16(self) -> int:
        """Read a big-endian 16-bit integer."""
        i = self._need(2)
        d = self._data
        return (d[i] << 8) | d[i + 1]

    def uint24(self) -> int:
        """Read a big-endian 24-bit integer."""
        i = self._need(3)
        d = self._data
        return (d[i] << 16) | (d[i + 1] << 8) | d[i + 2]

    def uint32(self) -> int:
        """Read a big-endian 32-bit integer."""
        i = self._need(4)
        return int.from_bytes(self._data[i : i + 4], "big")

    def varint(self) -> int:
        """Read a QUIC variable-length integer (RFC 9000 section 16)."""
        first = self.uint8()
        length = 1 << (first >> 6)
        value = first & 0x3F
        if length > 1:
            i = self._need(length - 1)
            value = (value << (8 * (length - 1))) | int.from_bytes(
                self._data[i : i + length - 1], "big"
            )
        return value

    def bytes(self, n: int) -> bytes:
        """Read ``n`` bytes."""
        i = self._need(n)
        return bytes(self._data[i : i + n])

    def skip(self, n: int) -> None:
        """Skip ``n`` bytes."""
        self._need(n)

    def rest(self) -> builtins.bytes:
        """Read everything up to :attr:`end`."""
        return self.bytes(self._end - self.pos)

    @contextmanager
    def block(self, length_size: int) -> Iterator[int]:
        """Read a length prefix of ``length_size`` bytes and narrow the cursor to that block.

        Inside the ``with`` body reads cannot pass the block's end; on exit the block must have
        been consumed exactly, else ``error`` is raised. Yields the block's length.
        """
        if length_size == 1:
            n = self.uint8()
        elif length_size == 2:
            n = self.uint16()
        elif length_size == 3:
            n = self.uint24()
        else:
            msg = f"unsupported length prefix size {length_size!r}"
            raise ValueError(msg)
        start = self._need(n)
        outer_end = self._end
        self.pos = start
        self._end = start + n
        try:
            yield n
            if self.pos != self._end:
                msg = f"block at offset {start} not consumed: {self._end - self.pos} bytes left"
                raise self._error(msg)
        finally:
            self._end = outer_end
        self.pos = start + n
