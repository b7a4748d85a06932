"""Streaming readers for pcap and pcapng capture files.

:func:`open_capture` sniffs the magic number and returns a :class:`CaptureReader`; iterating it
yields ``(ts, linktype, frame)`` in file order. The readers parse the file with :mod:`struct` over
1 MiB chunks, so memory stays constant whatever the file size and the cost per record is about a
microsecond (scapy's ``RawPcapReader``, which reads each record with its own system calls, takes
four or five times as long).

Damage is handled the way a person replaying an incident capture wants it handled:

- a record that is wrong but whose extent is still known (a captured length beyond any snapshot
  length, an Enhanced Packet Block naming an interface that was never described, a block whose
  trailing length disagrees with its leading one) is skipped and counted in
  :attr:`CaptureReader.damaged`;
- when the next record can no longer be found (an absurd or misaligned length) or the file ends
  inside a record, every good packet before that point is yielded, then :class:`CaptureError` is
  raised with a message starting ``truncated``.
"""

from __future__ import annotations

import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import BinaryIO, Final

from probes.errors import CaptureError

Record = tuple[float, int, bytes]
"""``(ts, linktype, frame)``: capture time in seconds since the epoch, LINKTYPE_ value, bytes."""

CHUNK_SIZE: Final = 1 << 20
"""Bytes read from the file at a time."""

# libpcap's MAXIMUM_SNAPLEN; libpcap and Wireshark refuse captured lengths above it, so a record
# beyond both it and the file's own snapshot length is damaged.
_MAX_SNAPLEN: Final = 0x40000
# A length this large means we no longer know where records start: no link layer has frames this
# big, and following such a length would read garbage as headers.
_MAX_RECORD: Final = 1 << 24
_MAX_BLOCK: Final = 1 << 26

_PCAP_US_LE: Final = b"\xd4\xc3\xb2\xa1"
_PCAP_US_BE: Final = b"\xa1\xb2\xc3\xd4"
_PCAP_NS_LE: Final = b"\x4d\x3c\xb2\xa1"
_PCAP_NS_BE: Final = b"\xa1\xb2\x3c\x4d"
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BOM_LE: Final = b"\x4d\x3c\x2b\x1a"
_PCAPNG_BOM_BE: Final = b"\x1a\x2b\x3c\x4d"

# pcapng block types (draft-ietf-opsawg-pcapng, "Block Type Codes").
_SHB: Final = 0x0A0D0D0A
_IDB: Final = 0x00000001
_PB: Final = 0x00000002
_SPB: Final = 0x00000003
_EPB: Final = 0x00000006

# IDB options (draft-ietf-opsawg-pcapng section 4.2).
_OPT_ENDOFOPT: Final = 0
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14

_LE_PCAP_REC = struct.Struct("<IIII")
_BE_PCAP_REC = struct.Struct(">IIII")
_LE_PCAP_HDR = struct.Struct("<HHiIII")
_BE_PCAP_HDR = struct.Struct(">HHiIII")
_LE_BLOCK = struct.Struct("<II")
_BE_BLOCK = struct.Struct(">II")
_LE_EPB = struct.Struct("<7I")
_BE_EPB = struct.Struct(">7I")
_LE_PB = struct.Struct("<HHIIII")
_BE_PB = struct.Struct(">HHIIII")
_LE_U32 = struct.Struct("<I")
_BE_U32 = struct.Struct(">I")
_DAMAGED_IFACE: Final = (-1, 1e6, 0, 0)


class CaptureReader(ABC):
    """A capture file open for reading; iterate it for ``(ts, linktype, frame)`` records.

    Use it as a context manager, or call :meth:`close`. Iterating twice continues where the first
    loop stopped: the file is read once, front to back.
    """

    __slots__ = ("_buf", "_file", "_iter", "bytes_read", "damaged", "packets", "path")

    format: str = ""
    """``pcap`` or ``pcapng``."""

    def __init__(self, path: str, file: BinaryIO, head: bytes) -> None:
        self.path = path
        """The file name, as given to :func:`open_capture`."""
        self.packets = 0
        """Records yielded so far."""
        self.damaged = 0
        """Records skipped because they were damaged while the framing around them was intact."""
        self.bytes_read = len(head)
        """Bytes read from the file so far (grows a chunk at a time)."""
        self._file = file
        self._buf = head
        self._iter: Generator[Record, None, None] | None = None

    def __iter__(self) -> Iterator[Record]:
        if self._iter is None:
            self._iter = self._guarded()
        return self._iter

    def _guarded(self) -> Generator[Record, None, None]:
        try:
            yield from self._records()
        except OSError as exc:
            msg = f"cannot read: {exc.strerror or exc}"
            raise CaptureError(msg, self.path) from exc
        finally:
            # An abandoned or failed loop must not leave the descriptor to the garbage collector.
            self._file.close()

    @abstractmethod
    def _records(self) -> Iterator[Record]: ...

    def close(self) -> None:
        """Close the file; iteration stops. Safe to call more than once."""
        self._file.close()
        if self._iter is None:
            self._iter = self._guarded()
        # Closing a generator that never started leaves it exhausted without running it.
        self._iter.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _refill(self, buf: bytes, pos: int, need: int) -> bytes:
        """Return ``buf[pos:]`` with more of the file after it: ``need`` bytes in all if the
        file has them, and at least a chunk's worth unless it ends first.
        """
        tail = buf[pos:]
        want = max(CHUNK_SIZE, need - len(tail))
        parts = [tail]
        got = 0
        while got < want:
            chunk = self._file.read(want - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        self.bytes_read += got
        return b"".join(parts) if got else tail

    def _truncated(self, offset: int, what: str) -> CaptureError:
        return CaptureError(f"truncated at offset {offset}: {what}", self.path)


class PcapReader(CaptureReader):
    """Classic libpcap format (draft-ietf-opsawg-pcap), either byte order, us or ns stamps."""

    __slots__ = ("_div", "_rec", "linktype", "snaplen")

    format = "pcap"

    def __init__(self, path: str, file: BinaryIO, head: bytes) -> None:
        super().__init__(path, file, head)
        magic = head[:4]
        little = magic in (_PCAP_US_LE, _PCAP_NS_LE)
        self._rec = _LE_PCAP_REC if little else _BE_PCAP_REC
        self._div = 1e9 if magic in (_PCAP_NS_LE, _PCAP_NS_BE) else 1e6
        if len(head) < 24:
            msg = f"truncated pcap file header: {len(head)} of 24 bytes"
            raise CaptureError(msg, self.path)
        hdr = _LE_PCAP_HDR if little else _BE_PCAP_HDR
        major, minor, _zone, _sigfigs, snaplen, network = hdr.unpack_from(head, 4)
        if major != 2:
            msg = f"unsupported pcap version {major}.{minor}"
            raise CaptureError(msg, self.path)
        self.snaplen: int = snaplen
        """Snapshot length from the file header."""
        # draft-ietf-opsawg-pcap section 4: the link type is the lower 16 bits of the
        # "LinkType and additional information" field; the upper bits carry the FCS length.
        self.linktype: int = network & 0xFFFF
        """LINKTYPE_ value of every packet in the file."""

    def _records(self) -> Iterator[Record]:
        unpack = self._rec.unpack_from
        div = self._div
        linktype = self.linktype
        limit = max(self.snaplen, _MAX_SNAPLEN)
        buf = self._buf
        self._buf = b""
        pos = 24
        base = 0  # file offset of buf[0]
        n = len(buf)
        while True:
            # draft-ietf-opsawg-pcap section 5: a 16-byte record header (seconds, fraction,
            # captured length, original length), then the captured bytes.
            if pos + 16 <= n:
                sec, frac, caplen, _orig = unpack(buf, pos)
                end = pos + 16 + caplen
                if end <= n:
                    if caplen <= limit:
                        self.packets += 1
                        yield sec + frac / div, linktype, buf[pos + 16 : end]
                    else:
                        self.damaged += 1
                    pos = end
                    continue
                if caplen > _MAX_RECORD:
                    raise self._truncated(base + pos, f"record claims {caplen} bytes")
                need = 16 + caplen
            else:
                need = 16
            base += pos
            buf = self._refill(buf, pos, need)
            pos = 0
            if len(buf) < need:
                if not buf:
                    return
                raise self._truncated(
                    base, f"file ends inside a record ({len(buf)} of {need} bytes)"
                )
            n = len(buf)


class PcapngReader(CaptureReader):
    """pcapng (draft-ietf-opsawg-pcapng): several sections, interfaces and byte orders."""

    __slots__ = ()

    format = "pcapng"

    def _records(self) -> Iterator[Record]:
        buf = self._buf
        self._buf = b""
        pos = 0
        base = 0  # file offset of buf[0]
        n = len(buf)
        little = True
        hdr = _LE_BLOCK.unpack_from
        epb = _LE_EPB.unpack_from
        u32 = _LE_U32.unpack_from
        # Interfaces of the current section by id (section 4.2: numbered from 0 in order of
        # appearance, local to the section): (linktype, ticks per second, offset, snaplen).
        # A linktype of -1 marks a damaged description; its packets are damaged too.
        ifaces: list[tuple[int, float, int, int]] = []
        nif = 0
        last_ts = 0.0
        while True:
            # Fast path, the Enhanced Packet Block of a described interface (section 4.3):
            # block type and length, interface id, timestamp (upper, lower), captured length,
            # original length, data padded to 32 bits, options, block length again.
            if pos + 28 <= n:
                btype, blen, iface, hi, lo, caplen, _orig = epb(buf, pos)
                end = pos + blen
                if (
                    btype == 6
                    and end <= n
                    and iface < nif
                    and caplen <= blen - 32
                    and not blen & 3
                    and u32(buf, end - 4)[0] == blen
                ):
                    linktype, div, offset, _snaplen = ifaces[iface]
                    if linktype >= 0:
                        last_ts = (hi * 4294967296.0 + lo) / div + offset
                        self.packets += 1
                        yield last_ts, linktype, buf[pos + 28 : pos + 28 + caplen]
                        pos = end
                        continue

            # Every other case, one block at a time.
            if pos + 12 > n:
                need = 12
            else:
                btype, blen = hdr(buf, pos)
                if btype == _SHB:
                    # Section 4.1: the byte-order magic follows the (palindromic) block type
                    # and the block length, and sets the byte order of the whole section,
                    # this block's own length included.
                    bom = buf[pos + 8 : pos + 12]
                    if bom == _PCAPNG_BOM_LE:
                        little = True
                    elif bom == _PCAPNG_BOM_BE:
                        little = False
                    else:
                        what = f"section header with bad byte-order magic 0x{bom.hex()}"
                        raise self._truncated(base + pos, what)
                    hdr = (_LE_BLOCK if little else _BE_BLOCK).unpack_from
                    epb = (_LE_EPB if little else _BE_EPB).unpack_from
                    u32 = (_LE_U32 if little else _BE_U32).unpack_from
                    blen = hdr(buf, pos)[1]
                    # Interface ids are local to a section, even to a damaged one.
                    ifaces = []
                    nif = 0
                if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
                    what = f"block of type 0x{btype:08x} claims {blen} bytes"
                    raise self._truncated(base + pos, what)
                end = pos + blen
                if end <= n:
                    pos = end
                    if u32(buf, end - 4)[0] != blen:
                        # Skip by the leading length. A damaged IDB still takes its id, so
                        # that later interfaces keep theirs.
                        self.damaged += 1
                        if btype == _IDB:
                            ifaces.append(_DAMAGED_IFACE)
                            nif += 1
                    elif btype == _IDB:
                        iface_info = _interface(buf, end - blen, blen, little)
                        ifaces.append(iface_info)
                        nif += 1
                        if iface_info[0] < 0:
                            self.damaged += 1
                    elif btype == _SHB:
                        self._section(buf, end - blen, blen, little, base + end - blen)
                    elif btype == _EPB:
                        # A good EPB took the fast path: this one is too short for its own
                        # header, or names an interface that is unknown or damaged.
                        self.damaged += 1
                    elif btype == _SPB:
                        # Section 4.4: original length, then data; the captured length is what
                        # fits, capped by interface 0's snapshot length. The block has no
                        # timestamp: the previous packet's is the best estimate.
                        if blen >= 16 and nif and ifaces[0][0] >= 0:
                            caplen = min(u32(buf, end - blen + 8)[0], blen - 16)
                            snaplen = ifaces[0][3]
                            if snaplen:
                                caplen = min(caplen, snaplen)
                            start = end - blen + 12
                            self.packets += 1
                            yield last_ts, ifaces[0][0], buf[start : start + caplen]
                        else:
                            self.damaged += 1
                    elif btype == _PB:
                        # Obsolete Packet Block (draft-ietf-opsawg-pcapng, appendix "Packet Block
                        # (obsolete!)"): 16-bit interface id and drops count, then the EPB layout.
                        start = end - blen
                        if blen >= 32:
                            iface, _drops, hi, lo, caplen, _orig = (
                                _LE_PB if little else _BE_PB
                            ).unpack_from(buf, start + 8)
                            if caplen <= blen - 32 and iface < nif and ifaces[iface][0] >= 0:
                                linktype, div, offset, _snaplen = ifaces[iface]
                                last_ts = (hi * 4294967296.0 + lo) / div + offset
                                self.packets += 1
                                yield last_ts, linktype, buf[start + 28 : start + 28 + caplen]
                                continue
                        self.damaged += 1
                    # Any other block (name resolution, statistics, decryption secrets,
                    # custom, ...) says nothing about the packets: skip it.
                    continue
                need = blen
            base += pos
            buf = self._refill(buf, pos, need)
            pos = 0
            n = len(buf)
            if n < need:
                if not n:
                    return
                raise self._truncated(base, f"file ends inside a block ({n} of {need} bytes)")

    def _section(self, buf: bytes, pos: int, blen: int, little: bool, offset: int) -> None:
        # Section 4.1: byte-order magic, major and minor version, section length, options.
        if blen < 28:
            msg = f"section header block at offset {offset} is {blen} bytes, less than 28"
            raise CaptureError(msg, self.path)
        major, minor = struct.unpack_from("<HH" if little else ">HH", buf, pos + 12)
        if major != 1:
            msg = f"unsupported pcapng version {major}.{minor}"
            raise CaptureError(msg, self.path)


def _interface(buf: bytes, pos: int, blen: int, little: bool) -> tuple[int, float, int, int]:
    """Return ``(linktype, ticks per second, offset in seconds, snaplen)`` of an IDB."""
    o = "<" if little else ">"
    if blen < 20:
        return _DAMAGED_IFACE
    linktype, _reserved, snaplen = struct.unpack_from(o + "HHI", buf, pos + 8)
    div = 1e6
    offset = 0
    # Section 3.5: options are (code, length, value padded to 32 bits) up to opt_endofopt
    # or the end of the block. A malformed option list ends the options, not the block.
    opt = pos + 16
    end = pos + blen - 4
    while opt + 4 <= end:
        code, length = struct.unpack_from(o + "HH", buf, opt)
        value = opt + 4
        if code == _OPT_ENDOFOPT or value + length > end:
            break
        if code == _OPT_IF_TSRESOL and length >= 1:
            # Section 4.2, if_tsresol: the most significant bit says whether the rest is
            # a negative power of 10 or of 2.
            res = buf[value]
            div = float(2 ** (res & 0x7F)) if res & 0x80 else float(10**res)
        elif code == _OPT_IF_TSOFFSET and length >= 8:
            offset = struct.unpack_from(o + "q", buf, value)[0]
        opt = value + ((length + 3) & ~3)
    return linktype, div, offset, snaplen


def open_capture(path: str | os.PathLike[str]) -> CaptureReader:
    """Open a pcap or pcapng file for streaming, choosing the reader by its magic number.

    Raises :class:`CaptureError` when the file cannot be opened or is not a capture file.
    """
    name = os.fsdecode(path)
    try:
        file: BinaryIO = open(path, "rb", buffering=0)  # noqa: SIM115 - owned by the reader
    except OSError as exc:
        msg = f"cannot open: {exc.strerror or exc}"
        raise CaptureError(msg, name) from exc
    try:
        head = file.read(CHUNK_SIZE)
        while len(head) < 24:
            # A pipe may return less than asked; a regular file only does so at its end.
            more = file.read(CHUNK_SIZE)
            if not more:
                break
            head += more
        magic = head[:4]
        if not head:
            msg = "empty file"
            raise CaptureError(msg, name)
        if magic in (_PCAP_US_LE, _PCAP_US_BE, _PCAP_NS_LE, _PCAP_NS_BE):
            return PcapReader(name, file, head)
        if magic == _PCAPNG_SHB:
            return PcapngReader(name, file, head)
        if magic[:2] == b"\x1f\x8b":
            msg = "compressed capture (gzip): decompress it first"
        else:
            msg = f"not a pcap or pcapng file: bad magic 0x{magic.hex()}"
        raise CaptureError(msg, name)
    except OSError as exc:
        file.close()
        msg = f"cannot read: {exc.strerror or exc}"
        raise CaptureError(msg, name) from exc
    except BaseException:
        file.close()
        raise
