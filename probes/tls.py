"""Sans-I/O parsing of TLS ClientHello messages.

Three entry points, one per framing the ClientHello arrives in:

* :func:`parse_client_hello` takes the ClientHello body (after the 4-byte handshake header);
* :func:`read_handshake_client_hello` takes handshake-layer bytes, as QUIC CRYPTO frames carry;
* :func:`read_record_client_hello` takes TLS record-layer bytes from the start of a TCP stream;
  :class:`ClientHelloReader` does the same incrementally, for the TCP reassembler.

Each has the three outcomes of :mod:`probes.errors`: a :class:`ClientHello`; ``None`` when the
bytes are a valid prefix and more are needed; :class:`~probes.errors.MalformedTLS` when they are
not a ClientHello. Nothing here does I/O or keeps global state.

Strict where it proves the bytes are a ClientHello (record and handshake headers, the fixed
fields, an extensions block whose length agrees with the message), lenient inside the block: an
extension that does not decode, or a chain of extensions that runs past the block's end, is noted
in :attr:`ClientHello.error` and the rest of the hello is still returned, because the SNI found
before the fault is what the audit needs.

Text fields (SNI, ALPN) are made safe to print, log and store: printable ASCII except ``\\`` is
kept as sent (case included), every other byte is written as ``\\xNN``. RFC 6066 says a host name
is ASCII, with internationalised names as IDNA A-labels (``xn--...``), so a real name comes out
unchanged; a name with raw UTF-8, control characters or invalid bytes comes out visibly marked
and still tells exactly what was sent (the escape is reversible), never as a string that could
forge a log line, drive a terminal or hide behind look-alike Unicode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from probes.cursor import Cursor
from probes.errors import MalformedTLS

ByteString = bytes | bytearray | memoryview

HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_SERVER_HELLO = 2
CONTENT_HANDSHAKE = 22

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D
_DECODED = frozenset({EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS})

# RFC 8446 section 5.1: a TLSPlaintext fragment is at most 2^14 bytes; 2^14 + 2048 is the
# TLS 1.2 ciphertext limit (RFC 5246 section 6.2.3), taken as the bound so no real stack trips it.
MAX_RECORD_LENGTH = 2**14 + 2048

# RFC 8446 section 4.1.2: the smallest ClientHello body is legacy_version (2), random (32), an
# empty legacy_session_id (1), one cipher suite (2 + 2) and one compression method (1 + 1); the
# largest fills every vector: session id 1 + 32, cipher_suites 2 + 65534, compression 1 + 255,
# extensions 2 + 65535. A length outside these is not a ClientHello.
MIN_CLIENT_HELLO_BODY = 2 + 32 + 1 + 4 + 2
MAX_CLIENT_HELLO_BODY = 2 + 32 + 33 + 65536 + 256 + 65537

_VERSION_NAMES = {0x0300: "ssl3", 0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}

# Bytes kept as they are in text fields: printable ASCII without the backslash, which is the
# escape character and so must itself be escaped for the mapping to stay reversible.
_SAFE_BYTES = bytes(b for b in range(0x21, 0x7F) if b != 0x5C)
_ESCAPED = tuple(chr(b) if b in _SAFE_BYTES else f"\\x{b:02x}" for b in range(256))


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of a TLS ClientHello that egress auditing needs, plus everything else raw."""

    legacy_version: int
    """``legacy_version`` as sent, 0x0303 for TLS 1.2 and 1.3 clients."""
    random: bytes
    """The 32-byte client random."""
    session_id: bytes
    """``legacy_session_id``, 0 to 32 bytes."""
    cipher_suites: tuple[int, ...]
    """Cipher suites in wire order, GREASE values included."""
    sni: str | None
    """First ``host_name`` of server_name, trailing dot stripped, escaped as the module says."""
    alpn: tuple[str, ...]
    """ALPN protocol names in wire order, escaped like :attr:`sni`."""
    supported_versions: tuple[int, ...]
    """supported_versions in wire order (GREASE included); empty when the extension is absent."""
    ech: bool
    """An encrypted_client_hello extension (0xfe0d) is present, real or GREASE."""
    extension_types: tuple[int, ...]
    """Every extension type in wire order."""
    other_extensions: tuple[tuple[int, bytes], ...]
    """``(type, data)`` of every extension not decoded into a field above: ECH, GREASE, unknown
    types, repeats, and a server_name, ALPN or supported_versions whose contents are invalid
    (its field is then left empty)."""
    error: str | None = None
    """``None`` for a hello valid to the last byte; else the first fault found inside its
    extensions block, whose framing held: an extension whose contents do not decode, or a chain
    of extensions that runs past the block (the fields then hold what came before)."""


def is_grease(value: int) -> bool:
    """True for a 16-bit GREASE value of RFC 8701 (0x0a0a, 0x1a1a, ... 0xfafa)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def tls_version_name(v: int) -> str:
    """``"1.3"``, ``"1.2"``, ... for known versions, ``"grease"``, else hex like ``"0x7f1c"``."""
    name = _VERSION_NAMES.get(v)
    if name is not None:
        return name
    if is_grease(v):
        return "grease"
    return f"0x{v:04x}"


def _text(raw: bytes) -> str:
    """Printable ASCII as is, every other byte as ``\\xNN`` (see the module docstring)."""
    if not raw.translate(None, _SAFE_BYTES):
        return raw.decode("ascii")
    return "".join([_ESCAPED[b] for b in raw])


# RFC 8446 section 4.1.2:
#   struct {
#       ProtocolVersion legacy_version = 0x0303;    /* TLS v1.2 */
#       Random random;
#       opaque legacy_session_id<0..32>;
#       CipherSuite cipher_suites<2..2^16-2>;
#       opaque legacy_compression_methods<1..2^8-1>;
#       Extension extensions<8..2^16-1>;
#   } ClientHello;
# Before TLS 1.3 the extensions block may be absent altogether (RFC 5246 section 7.4.1.2).
# RFC 8446 section 4.2:
#   struct { ExtensionType extension_type; opaque extension_data<0..2^16-1>; } Extension;
def parse_client_hello(body: ByteString) -> ClientHello:
    """Parse a ClientHello body (the bytes after the 4-byte handshake header).

    ``body`` must be exactly the message: trailing bytes are :class:`MalformedTLS`, like any
    other violation of the structure. Unknown and GREASE extensions are kept, not rejected.
    Inside an extensions block whose length agrees with the body, faults do not reject the
    hello: they are reported in :attr:`ClientHello.error`, and everything before them is kept.
    """
    c = Cursor(bytes(body) if isinstance(body, bytearray) else body, MalformedTLS)
    legacy_version = c.uint16()
    if legacy_version >> 8 != 3:
        msg = f"legacy_version {legacy_version:#06x} is not 0x03xx"
        raise MalformedTLS(msg)
    random = c.bytes(32)
    # Each vector is read whole by length (so it is consumed exactly), without the cost of a
    # nested cursor: this runs once per connection on the daemon's packet path.
    session_id = c.bytes(c.uint8())
    if len(session_id) > 32:
        msg = f"legacy_session_id of {len(session_id)} bytes, at most 32 allowed"
        raise MalformedTLS(msg)
    n = c.uint16()
    if n < 2 or n % 2:
        msg = f"cipher_suites of {n} bytes, need a non-zero even number"
        raise MalformedTLS(msg)
    cipher_suites: tuple[int, ...] = struct.unpack(f">{n // 2}H", c.bytes(n))
    # Every version requires the null method (0) to be offered; TLS 1.3 sends only it.
    if b"\x00" not in c.bytes(c.uint8()):
        msg = "legacy_compression_methods lacks the null method"
        raise MalformedTLS(msg)

    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    ech = False
    types: list[int] = []
    decoded: set[int] = set()
    others: list[tuple[int, bytes]] = []
    error: str | None = None
    if not c.eof():
        n = c.uint16()
        if n != c.remaining():
            left = c.remaining() - n
            msg = (
                f"{left} trailing bytes after the extensions"
                if left > 0
                else f"extensions block of {n} bytes, only {c.remaining()} left"
            )
            raise MalformedTLS(msg)
        # Bound methods held in locals: this loop runs for every extension of every hello.
        uint16, take, eof = c.uint16, c.bytes, c.eof
        while not eof():
            try:
                ext_type = uint16()
                data = take(uint16())
            except MalformedTLS as exc:
                # The block's length agreed with the body's, so this is a ClientHello whose
                # last extensions are damaged; what came before them (often the SNI) stands,
                # as it does for tshark.
                error = error or f"extensions block damaged: {exc}"
                break
            # A repeated extension is a protocol error (RFC 8446 section 4.2), and so is a
            # server_name, ALPN or supported_versions extension whose contents do not decode.
            # The auditor must not lose the whole hello to either: the framing already proved
            # this is a ClientHello, so the first good one of each is decoded and anything
            # else is kept raw in other_extensions. (Chromium's two GREASE extensions differ
            # in value, so repeats are not themselves recorded as an error.)
            types.append(ext_type)
            if ext_type in _DECODED and ext_type not in decoded:
                try:
                    if ext_type == EXT_SERVER_NAME:
                        sni = _server_name(data)
                    elif ext_type == EXT_ALPN:
                        alpn = _alpn(data)
                    else:
                        versions = _supported_versions(data)
                except MalformedTLS as exc:
                    error = error or f"extension {ext_type} kept raw: {exc}"
                else:
                    decoded.add(ext_type)
                    continue
            if ext_type == EXT_ENCRYPTED_CLIENT_HELLO:
                ech = True
            others.append((ext_type, data))
    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        sni=sni,
        alpn=alpn,
        supported_versions=versions,
        ech=ech,
        extension_types=tuple(types),
        other_extensions=tuple(others),
        error=error,
    )


# RFC 6066 section 3:
#   struct {
#       NameType name_type;
#       select (name_type) { case host_name: HostName; } name;
#   } ServerName;
#   enum { host_name(0), (255) } NameType;
#   opaque HostName<1..2^16-1>;
#   struct { ServerName server_name_list<1..2^16-1> } ServerNameList;
# Every name type registered so far, like host_name, is an opaque<1..2^16-1> (RFC 3546 defined
# the list that way), so entries of other types are skipped by that shape.
def _server_name(data: bytes) -> str | None:
    # Empty extension_data is what a server echoes; in a ClientHello it is invalid and, like
    # any invalid contents, leaves the extension raw (the caller's rule).
    c = _vector(data, 2, "server_name_list")
    if c.eof():
        msg = "empty server_name_list"
        raise MalformedTLS(msg)
    name: str | None = None
    while not c.eof():
        name_type = c.uint8()
        raw = c.bytes(c.uint16())
        if not raw:
            msg = "empty server name"
            raise MalformedTLS(msg)
        if name_type == 0 and name is None:
            # RFC 6066 forbids the trailing dot; strip one so "example.com." matches DNS.
            if raw.endswith(b".") and len(raw) > 1:
                raw = raw[:-1]
            name = _text(raw)
    return name


# RFC 7301 section 3.1:
#   opaque ProtocolName<1..2^8-1>;
#   struct { ProtocolName protocol_name_list<2..2^16-1> } ProtocolNameList;
def _alpn(data: bytes) -> tuple[str, ...]:
    c = _vector(data, 2, "protocol_name_list")
    if c.remaining() < 2:
        msg = f"protocol_name_list of {c.remaining()} bytes, at least 2 required"
        raise MalformedTLS(msg)
    names: list[str] = []
    while not c.eof():
        raw = c.bytes(c.uint8())
        if not raw:
            msg = "empty ALPN protocol name"
            raise MalformedTLS(msg)
        names.append(_text(raw))
    return tuple(names)


# RFC 8446 section 4.2.1, in a ClientHello:
#   struct { ProtocolVersion versions<2..254>; } SupportedVersions;
def _supported_versions(data: bytes) -> tuple[int, ...]:
    c = _vector(data, 1, "supported_versions")
    n = c.remaining()
    if n < 2 or n % 2:
        msg = f"supported_versions of {n} bytes, need a non-zero even number"
        raise MalformedTLS(msg)
    versions: tuple[int, ...] = struct.unpack(f">{n // 2}H", c.rest())
    return versions


def _vector(data: bytes, length_size: int, what: str) -> Cursor:
    """A cursor over the one length-prefixed vector that must fill ``data`` exactly."""
    c = Cursor(data, MalformedTLS)
    n = c.uint8() if length_size == 1 else c.uint16()
    if n != c.remaining():
        msg = f"{what} of {n} bytes in {c.remaining()} bytes of extension data"
        raise MalformedTLS(msg)
    return c


def _check_hello_length(length: int) -> None:
    if not MIN_CLIENT_HELLO_BODY <= length <= MAX_CLIENT_HELLO_BODY:
        msg = (
            f"ClientHello length {length} outside {MIN_CLIENT_HELLO_BODY}..{MAX_CLIENT_HELLO_BODY}"
        )
        raise MalformedTLS(msg)


# RFC 8446 section 4:
#   struct {
#       HandshakeType msg_type;    /* handshake type */
#       uint24 length;             /* remaining bytes in message */
#       select (Handshake.msg_type) { case client_hello: ClientHello; ... };
#   } Handshake;
def read_handshake_client_hello(stream: ByteString) -> ClientHello | None:
    """Read a ClientHello from handshake-layer bytes (type, uint24 length, body).

    ``None`` while the bytes are a prefix of a ClientHello; bytes after the message are left
    alone. Raises :class:`MalformedTLS` as soon as the bytes cannot be one: a type other than
    client_hello (1), an impossible length, or an invalid body.
    """
    have = len(stream)
    if have == 0:
        return None
    if stream[0] != HANDSHAKE_CLIENT_HELLO:
        msg = f"handshake type {stream[0]} is not client_hello (1)"
        raise MalformedTLS(msg)
    if have < 4:
        return None
    length = (stream[1] << 16) | (stream[2] << 8) | stream[3]
    _check_hello_length(length)
    if have > 4 and stream[4] != 3:
        msg = f"legacy_version major byte {stream[4]} is not 3"
        raise MalformedTLS(msg)
    if have < 4 + length:
        return None
    return parse_client_hello(bytes(stream[4 : 4 + length]))


# RFC 8446 section 5.1:
#   struct {
#       ContentType type;                        /* handshake(22) */
#       ProtocolVersion legacy_record_version;   /* 0x0301 for an initial ClientHello */
#       uint16 length;
#       opaque fragment[TLSPlaintext.length];
#   } TLSPlaintext;
# "Handshake messages MAY be coalesced into a single TLSPlaintext record or fragmented across
# several records" and "MUST NOT be interleaved with other record types"; zero-length handshake
# fragments "MUST NOT" be sent. Versions 0x0300 to 0x0304 are accepted: every stack sends one of
# them, and the bound keeps arbitrary bytes from passing as a record header.
class ClientHelloReader:
    """Incremental record-layer reader: feed a TCP stream's bytes in order, get a ClientHello.

    Each byte is looked at once however the stream is cut, so a hello arriving in many small
    segments costs linear time. It holds only the handshake bytes seen so far (bounded by
    :data:`MAX_CLIENT_HELLO_BODY`). After it raises :class:`MalformedTLS` it must be discarded.
    """

    __slots__ = ("_header", "_hs", "_need", "_record_left", "_result")

    def __init__(self) -> None:
        self._header = bytearray()
        self._record_left = 0
        self._hs = bytearray()
        self._need = -1
        self._result: ClientHello | None = None

    @property
    def held(self) -> int:
        """Bytes buffered (partial record header and handshake bytes)."""
        return len(self._header) + len(self._hs)

    @property
    def handshake_type(self) -> int | None:
        """The first handshake byte seen, so a caller can tell a ServerHello from garbage."""
        return self._hs[0] if self._hs else None

    def feed(self, data: ByteString) -> ClientHello | None:
        """Feed the next bytes of the stream; the ClientHello once complete, else ``None``.

        Bytes after the ClientHello (a change_cipher_spec, early data) are ignored, and so is
        everything fed after it completed: the same result is returned again.
        """
        if self._result is not None:
            return self._result
        i = 0
        end = len(data)
        while i < end:
            if self._record_left == 0:
                header = self._header
                take = min(5 - len(header), end - i)
                header += data[i : i + take]
                i += take
                _check_record_header(header)
                if len(header) < 5:
                    return None
                self._record_left = (header[3] << 8) | header[4]
                header.clear()
                continue
            take = min(self._record_left, end - i)
            hs = self._hs
            before = len(hs)
            hs += data[i : i + take]
            i += take
            self._record_left -= take
            if self._need < 0:
                if before == 0 and hs[0] != HANDSHAKE_CLIENT_HELLO:
                    msg = f"handshake type {hs[0]} is not client_hello (1)"
                    raise MalformedTLS(msg)
                if len(hs) >= 4:
                    length = (hs[1] << 16) | (hs[2] << 8) | hs[3]
                    _check_hello_length(length)
                    self._need = 4 + length
            if len(hs) > 4 and before <= 4 and hs[4] != 3:
                msg = f"legacy_version major byte {hs[4]} is not 3"
                raise MalformedTLS(msg)
            if 0 <= self._need <= len(hs):
                self._result = parse_client_hello(bytes(hs[4 : self._need]))
                self._hs = bytearray()
                return self._result
        return None


def _check_record_header(header: bytearray) -> None:
    """Check as much of a record header as has arrived (1 to 5 bytes)."""
    if header[0] != CONTENT_HANDSHAKE:
        msg = f"record content type {header[0]} is not handshake (22)"
        raise MalformedTLS(msg)
    n = len(header)
    if n >= 2 and header[1] != 3:
        msg = f"record version major byte {header[1]} is not 3"
        raise MalformedTLS(msg)
    if n >= 3 and header[2] > 4:
        msg = f"record version {header[1]:#04x}{header[2]:02x} is not 0x0300..0x0304"
        raise MalformedTLS(msg)
    if n == 5:
        length = (header[3] << 8) | header[4]
        if not 0 < length <= MAX_RECORD_LENGTH:
            msg = f"handshake record length {length} outside 1..{MAX_RECORD_LENGTH}"
            raise MalformedTLS(msg)


def read_record_client_hello(stream: ByteString) -> ClientHello | None:
    """Read a ClientHello from TLS record-layer bytes starting at a record boundary.

    The hello may span several records; ``None`` until all of it is there. Raises
    :class:`MalformedTLS` for a record that is not handshake, a handshake message that is not
    a ClientHello, or an invalid one. Bytes after the hello are ignored.
    """
    return ClientHelloReader().feed(stream)
