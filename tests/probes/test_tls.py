"""probes.tls: ClientHello parsing, on hellos made by OpenSSL and aioquic, cut every way."""

from __future__ import annotations

import random
import re
import ssl
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.errors import MalformedTLS
from probes.tls import (
    MAX_CLIENT_HELLO_BODY,
    ClientHello,
    ClientHelloReader,
    is_grease,
    parse_client_hello,
    read_handshake_client_hello,
    read_record_client_hello,
    tls_version_name,
)
from tests.factories import (
    GREASE,
    HANG,
    HelloParts,
    aioquic_client_hello,
    alpn_ext,
    chromium_like,
    edit_hello,
    handshake,
    large_client_hello,
    openssl_client_hello,
    record_sizes,
    records,
    server_name_ext,
    supported_versions_ext,
    unrecord,
)

TLS13, TLS12 = 0x0304, 0x0303

# (id, record-layer bytes, expected sni, alpn, supported_versions) from real stacks.
REAL = [
    ("openssl-tls13", openssl_client_hello("example.com"), "example.com", (), (TLS13, TLS12)),
    (
        "openssl-tls13-alpn",
        openssl_client_hello("api.openai.com", alpn=["h2", "http/1.1"]),
        "api.openai.com",
        ("h2", "http/1.1"),
        (TLS13, TLS12),
    ),
    (
        "openssl-tls12-only",
        openssl_client_hello(
            "api.anthropic.com", alpn=["http/1.1"], maximum_version=ssl.TLSVersion.TLSv1_2
        ),
        "api.anthropic.com",
        ("http/1.1",),
        (),
    ),
    (
        "openssl-tls13-only",
        openssl_client_hello("x.example", minimum_version=ssl.TLSVersion.TLSv1_3),
        "x.example",
        (),
        (TLS13,),
    ),
    ("openssl-no-sni", openssl_client_hello(None, alpn=["h2"]), None, ("h2",), (TLS13, TLS12)),
    # Python encodes the name to IDNA A-labels, as RFC 6066 requires on the wire.
    (
        "openssl-idna",
        openssl_client_hello("bücher.example"),
        "xn--bcher-kva.example",
        (),
        (TLS13, TLS12),
    ),
    (
        "openssl-mixed-case",
        openssl_client_hello("API.Example.COM"),
        "API.Example.COM",
        (),
        (TLS13, TLS12),
    ),
    (
        "openssl-large",
        large_client_hello(),
        "big.example",
        None,
        (TLS13, TLS12),
    ),
    (
        "aioquic",
        records(aioquic_client_hello("api.mistral.ai", alpn=["h3"])),
        "api.mistral.ai",
        ("h3",),
        (TLS13,),
    ),
    (
        "chromium-like",
        records(chromium_like(unrecord(openssl_client_hello("chatgpt.com", alpn=["h2"])))),
        "chatgpt.com",
        ("h2",),
        (GREASE[3], TLS13, TLS12),
    ),
]
IDS = [r[0] for r in REAL]


def check(
    hello: ClientHello | None,
    sni: str | None,
    alpn: tuple[str, ...] | None,
    versions: tuple[int, ...],
) -> None:
    assert hello is not None
    assert hello.sni == sni
    if alpn is not None:
        assert hello.alpn == alpn
    assert hello.supported_versions == versions
    assert hello.legacy_version == TLS12
    assert hello.error is None
    assert len(hello.random) == 32
    assert len(hello.session_id) <= 32
    assert hello.cipher_suites
    decoded = {0, 16, 43}
    assert [
        t for t in hello.extension_types if t not in decoded or hello.extension_types.count(t) > 1
    ] == [t for t, _ in hello.other_extensions]


# ---------------------------------------------------------------------------------------------
# Real hellos, every framing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data", "sni", "alpn", "versions"), REAL, ids=IDS)
def test_real_hello_whole(
    name: str,
    data: bytes,
    sni: str | None,
    alpn: tuple[str, ...] | None,
    versions: tuple[int, ...],
) -> None:
    hello = read_record_client_hello(data)
    check(hello, sni, alpn, versions)
    message = unrecord(data)
    assert read_handshake_client_hello(message) == hello
    assert parse_client_hello(message[4:]) == hello
    # Memoryview and bytearray inputs (the reassembler's buffers) give the same.
    assert read_record_client_hello(memoryview(data)) == hello
    assert read_record_client_hello(bytearray(data)) == hello
    assert parse_client_hello(bytearray(message[4:])) == hello


def test_real_hello_details() -> None:
    hello = read_record_client_hello(openssl_client_hello("api.openai.com", alpn=["h2"]))
    assert hello is not None
    # TLS 1.3 suites, a TLS 1.2 suite and the renegotiation SCSV of OpenSSL's default list.
    assert {0x1301, 0x1302, 0x1303, 0xC02F, 0x00FF} <= set(hello.cipher_suites)
    # Middlebox compatibility mode: a 32-byte legacy session id.
    assert len(hello.session_id) == 32
    assert hello.extension_types[0] == 0
    assert 51 in hello.extension_types  # key_share
    assert not hello.ech
    assert dict(hello.other_extensions)[10]  # supported_groups kept raw


def test_chromium_like_grease_and_ech() -> None:
    hello = read_record_client_hello(
        records(chromium_like(unrecord(openssl_client_hello("chatgpt.com", alpn=["h2"]))))
    )
    assert hello is not None
    assert hello.ech
    assert hello.cipher_suites[0] == GREASE[1]
    assert hello.extension_types[0] == GREASE[2]
    assert hello.extension_types[-1] == GREASE[4]
    others = dict(hello.other_extensions)
    assert others[GREASE[2]] == b""
    assert 0xFE0D in others
    assert [tls_version_name(v) for v in hello.supported_versions] == ["grease", "1.3", "1.2"]


@pytest.mark.parametrize(("name", "data", "sni", "alpn", "versions"), REAL, ids=IDS)
def test_every_prefix_is_incomplete(
    name: str,
    data: bytes,
    sni: str | None,
    alpn: tuple[str, ...] | None,
    versions: tuple[int, ...],
) -> None:
    step = 1 if len(data) < 4000 else 7
    for n in range(0, len(data), step):
        assert read_record_client_hello(data[:n]) is None, n
    message = unrecord(data)
    for n in range(0, len(message), step):
        assert read_handshake_client_hello(message[:n]) is None, n


@pytest.mark.parametrize(("name", "data", "sni", "alpn", "versions"), REAL, ids=IDS)
def test_byte_at_a_time_and_trailing_data(
    name: str,
    data: bytes,
    sni: str | None,
    alpn: tuple[str, ...] | None,
    versions: tuple[int, ...],
) -> None:
    whole = read_record_client_hello(data)
    reader = ClientHelloReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == whole
    # What follows a ClientHello on the wire: change_cipher_spec, early data, anything.
    for tail in (b"\x14\x03\x03\x00\x01\x01", b"\x17\x03\x03\x00\x05hello", b"\xff" * 40):
        assert read_record_client_hello(data + tail) == whole
        assert read_handshake_client_hello(unrecord(data) + tail) == whole
        # The reader has its answer; more bytes do not change it.
        assert reader.feed(tail) == whole


def test_body_prefixes_are_malformed() -> None:
    message = unrecord(openssl_client_hello("example.com", alpn=["h2"]))
    body = message[4:]
    parts = HelloParts.split(body)
    # Up to the extensions block the body is itself a valid (extension-less, TLS 1.2 style)
    # ClientHello; the body parser is told the length and cannot know more was meant.
    no_ext = len(body) - 2 - sum(4 + len(d) for _, d in parts.extensions)
    for n in range(len(body)):
        if n == no_ext:
            assert parse_client_hello(body[:n]).extension_types == ()
            continue
        with pytest.raises(MalformedTLS):
            parse_client_hello(body[:n])
    with pytest.raises(MalformedTLS, match="trailing"):
        parse_client_hello(body + b"\x00")


@pytest.mark.parametrize("size", [1, 5, 100, 1000])
def test_hello_over_many_records(size: int) -> None:
    message = unrecord(openssl_client_hello("api.openai.com", alpn=["h2"]))
    data = records(message, size)
    assert len(record_sizes(data)) > 1 or size >= len(message)
    assert read_record_client_hello(data) == parse_client_hello(message[4:])
    for n in range(len(data)):
        assert read_record_client_hello(data[:n]) is None


def test_large_hello_spans_records() -> None:
    data = large_client_hello(20_000)
    assert len(data) > 20_000
    assert len(record_sizes(data)) >= 2
    hello = read_record_client_hello(data)
    assert hello is not None
    assert hello.sni == "big.example"
    assert len(hello.alpn) > 80


def test_reader_chunks_of_every_size() -> None:
    data = records(unrecord(openssl_client_hello("a.example", alpn=["h2"])), 200)
    whole = read_record_client_hello(data)
    rng = random.Random(7)
    for _ in range(50):
        reader = ClientHelloReader()
        pos = 0
        got = None
        while pos < len(data):
            n = rng.randint(1, 300)
            got = reader.feed(data[pos : pos + n])
            pos += n
            if got is not None:
                break
        assert got == whole
        assert pos >= len(data)


def test_aioquic_handshake_layer() -> None:
    message = aioquic_client_hello("generativelanguage.googleapis.com", alpn=["h3"])
    hello = read_handshake_client_hello(message)
    assert hello is not None
    assert hello.sni == "generativelanguage.googleapis.com"
    assert hello.alpn == ("h3",)
    assert dict(hello.other_extensions)[0x39]  # quic_transport_parameters kept raw


# ---------------------------------------------------------------------------------------------
# SNI and ALPN text
# ---------------------------------------------------------------------------------------------

BASE = unrecord(openssl_client_hello("example.com", alpn=["h2"]))


def with_sni(*entries: bytes | tuple[int, bytes]) -> ClientHello:
    hello = read_handshake_client_hello(edit_hello(BASE, replace={0: server_name_ext(*entries)}))
    assert hello is not None
    return hello


def unescape(text: str) -> bytes:
    return re.sub(
        rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("ascii")
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"api.openai.com", "api.openai.com"),
        (b"API.OpenAI.com", "API.OpenAI.com"),  # case is kept as sent
        (b"api.openai.com.", "api.openai.com"),  # one trailing dot is dropped
        (b"a..", "a."),
        (b".", "."),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),  # A-labels as sent
        ("bücher.example".encode(), "b\\xc3\\xbccher.example"),  # raw UTF-8: visibly marked
        (b"bad\xff\xfe.example", "bad\\xff\\xfe.example"),  # not UTF-8 at all
        (b"evil\n2026-01-01 fake log line", "evil\\x0a2026-01-01\\x20fake\\x20log\\x20line"),
        (b"\x1b[31mred", "\\x1b[31mred"),  # no terminal control
        (b"a\\x41", "a\\x5cx41"),  # the escape character is escaped, so it stays reversible
        (b"a\x00b", "a\\x00b"),
        ("\u202eevil".encode(), "\\xe2\\x80\\xaeevil"),  # no bidi override
    ],
)
def test_sni_text(raw: bytes, shown: str) -> None:
    sni = with_sni(raw).sni
    assert sni == shown
    assert sni is not None
    assert sni.isascii() and sni.isprintable()
    expected = raw[:-1] if raw.endswith(b".") and len(raw) > 1 else raw
    assert unescape(sni) == expected


def test_sni_first_host_name_wins() -> None:
    assert with_sni(b"first.example", b"second.example").sni == "first.example"
    # An unknown name type is skipped by the opaque<1..2^16-1> shape all types share.
    assert with_sni((7, b"\x01\x02"), b"real.example").sni == "real.example"
    assert with_sni((7, b"other")).sni is None


def test_sni_absent_or_empty_extension() -> None:
    hello = read_handshake_client_hello(edit_hello(BASE, drop=[0]))
    assert hello is not None and hello.sni is None and 0 not in hello.extension_types
    hello = read_handshake_client_hello(edit_hello(BASE, replace={0: b""}))
    assert hello is not None and hello.sni is None and hello.extension_types[0] == 0
    assert (0, b"") in hello.other_extensions


def test_duplicate_extension_first_decoded_rest_kept() -> None:
    dup = server_name_ext(b"second.example")
    hello = read_handshake_client_hello(edit_hello(BASE, last=[(0, dup)]))
    assert hello is not None
    assert hello.sni == "example.com"
    assert hello.extension_types.count(0) == 2
    assert (0, dup) in hello.other_extensions


@pytest.mark.parametrize(
    "bad",
    [
        b"\x00",  # list length cut short
        b"\x00\x00",  # empty list
        b"\x00\x03\x00\x00\x00",  # empty name
        b"\x00\x05\x00\x00\x05ab",  # name longer than the list
        server_name_ext(b"a.example") + b"\x00",  # trailing byte
    ],
)
def test_sni_invalid_contents_kept_raw(bad: bytes) -> None:
    """The hello's framing holds, so it is still a ClientHello: the bad extension is kept."""
    hello = read_handshake_client_hello(edit_hello(BASE, replace={0: bad}))
    assert hello is not None
    assert hello.sni is None
    assert (0, bad) in hello.other_extensions
    assert hello.alpn == ("h2",)  # the rest of the hello is still read
    assert hello.error is not None and hello.error.startswith("extension 0 kept raw")


def test_alpn_text_and_grease() -> None:
    hello = read_handshake_client_hello(
        edit_hello(BASE, replace={16: alpn_ext(b"\x0a\x0a", b"h2", b"x y\xff")})
    )
    assert hello is not None
    assert hello.alpn == ("\\x0a\\x0a", "h2", "x\\x20y\\xff")


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00\x00",
        b"\x00\x01\x00",
        b"\x00\x04\x02h2",
        b"\x00\x03\x03h2",
        alpn_ext(b"h2") + b"\x00",
    ],
)
def test_alpn_invalid_contents_kept_raw(bad: bytes) -> None:
    hello = read_handshake_client_hello(edit_hello(BASE, replace={16: bad}))
    assert hello is not None
    assert hello.alpn == ()
    assert (16, bad) in hello.other_extensions
    assert hello.sni == "example.com"
    assert hello.error is not None and "extension 16" in hello.error


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x03\x03\x04\x03", b"\x04\x03\x04"])
def test_supported_versions_invalid_contents_kept_raw(bad: bytes) -> None:
    hello = read_handshake_client_hello(edit_hello(BASE, replace={43: bad}))
    assert hello is not None
    assert hello.supported_versions == ()
    assert (43, bad) in hello.other_extensions
    assert hello.error is not None


def test_invalid_extension_then_a_good_repeat() -> None:
    """The first decodable one of a type is the one decoded."""
    message = edit_hello(BASE, replace={0: b"\x00"}, last=[(0, server_name_ext(b"b.example"))])
    hello = read_handshake_client_hello(message)
    assert hello is not None
    assert hello.sni == "b.example"
    assert hello.other_extensions[0] == (0, b"\x00")


def test_extensions_block_length_is_strict() -> None:
    """The block's length must agree with the body: that is what proves a ClientHello."""
    body = BASE[4:]
    parts = HelloParts.split(body)
    ext_start = len(body) - sum(4 + len(d) for _, d in parts.extensions)
    total = struct.unpack_from(">H", body, ext_start - 2)[0]
    for delta in (1, -1):
        bad = bytearray(body)
        struct.pack_into(">H", bad, ext_start - 2, total + delta)
        with pytest.raises(MalformedTLS):
            parse_client_hello(bytes(bad))


def test_damaged_extension_chain_keeps_what_came_before() -> None:
    """An extension length that runs past the block: the extensions before it stand."""
    body = BASE[4:]
    parts = HelloParts.split(body)
    ext_start = len(body) - sum(4 + len(d) for _, d in parts.extensions)
    sni_end = ext_start + 4 + len(parts.extensions[0][1])  # server_name comes first
    bad = bytearray(body)
    struct.pack_into(">H", bad, sni_end + 2, 0xFFF0)  # the second extension's length
    hello = parse_client_hello(bytes(bad))
    assert hello.sni == "example.com"
    assert hello.extension_types == (0,)
    assert hello.error is not None and hello.error.startswith("extensions block damaged")


# nDPI's tls_invalid_reads.pcap, frame 12 (inside GTP-U): a real, damaged ClientHello. Its ALPN
# extension (0x0010, 11 bytes) holds garbage and the chain after it runs past the block;
# tshark shows the SNI e.crashlytics.com, and so must we.
#   16 0301 00b2                       record: handshake, TLS 1.0, 178 bytes
#   01 0000ae                          handshake: client_hello, 174 bytes
#   0303 <random 32> 00                legacy_version, random, no session id
#   0028 <20 suites> 01 00             cipher suites, null compression
#   005d ...                           93 bytes of extensions: server_name first
NDPI_DAMAGED = bytes.fromhex(
    "16030100b2010000ae0303e25f8f7559ed27be965385da1a0aff448e59ae0907c906a053e2a475ebeb3237"
    "000028c02bc02cc02fc030009e009fc009c00ac013c01400330039c007c011009c009d002f0035000500ff"
    "0100005d000000160014000011652e63726173686c79746963732e636f6d0017000000230000000d001600"
    "1406010603050105030401040303010303020102030010000bb889a52f563519e55f943e47e34fc6943577"
    "c34438787013cecd7950cbeaddb0c56d3f560717f8598ed6b171d986e126fdf80d25971cc859f050a31b"
)


def test_ndpi_damaged_hello() -> None:
    hello = read_record_client_hello(NDPI_DAMAGED)
    assert hello is not None
    assert hello.sni == "e.crashlytics.com"
    assert hello.alpn == ()
    assert (16, bytes.fromhex("b889a52f563519e55f943e")) in hello.other_extensions
    assert hello.error is not None


def test_grease_everywhere_is_kept() -> None:
    message = edit_hello(
        BASE,
        first=[(GREASE[0], b"")],
        replace={43: supported_versions_ext(GREASE[5], TLS13), 16: alpn_ext(b"\x1a\x1a", b"h2")},
        last=[(GREASE[6], b"\x00")],
    )
    hello = read_handshake_client_hello(message)
    assert hello is not None
    assert hello.extension_types[0] == GREASE[0] and hello.extension_types[-1] == GREASE[6]
    assert hello.supported_versions == (GREASE[5], TLS13)
    assert not hello.ech


def test_ech_flag() -> None:
    hello = read_handshake_client_hello(edit_hello(BASE, last=[(0xFE0D, b"\x01")]))
    assert hello is not None and hello.ech and (0xFE0D, b"\x01") in hello.other_extensions
    # draft ESNI (0xffce) is not ECH; it is kept raw.
    hello = read_handshake_client_hello(edit_hello(BASE, last=[(0xFFCE, b"\x01")]))
    assert hello is not None and not hello.ech


# ---------------------------------------------------------------------------------------------
# Malformed framing and bodies
# ---------------------------------------------------------------------------------------------

RECORD = records(BASE)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x17" + RECORD[1:], "content type 23"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "content type 21"),
        (b"\x16\x02" + RECORD[2:], "major byte 2"),
        (b"\x16\x03\x05" + RECORD[3:], "0x0300..0x0304"),
        (b"\x16\x03\x01\x00\x00" + RECORD, "length 0"),
        (b"\x16\x03\x01\x48\x01" + RECORD[5:], "length 18433"),
        (records(handshake(BASE[4:], 2)), "type 2"),  # a ServerHello's framing
        (records(b"\x01\x00\x00\x10" + BASE[4:]), "length 16 outside"),
        (records(b"\x01\x03\x00\x00" + BASE[4:]), "outside"),
        (records(b"\x01" + BASE[1:4] + b"\x02" + BASE[5:]), "major byte 2"),
        # SSLv2-compatible ClientHello (RFC 5246 appendix E.2): rejected.
        (b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", "content type 128"),
    ],
)
def test_record_malformed(data: bytes, why: str) -> None:
    with pytest.raises(MalformedTLS, match=re.escape(why)):
        read_record_client_hello(data)


def test_interleaved_record_is_malformed() -> None:
    # RFC 8446 section 5.1: handshake fragments may not be interleaved with other records.
    half = len(BASE) // 2
    data = records(BASE[:half]) + b"\x14\x03\x03\x00\x01\x01" + records(BASE[half:])
    assert read_record_client_hello(data[: len(records(BASE[:half]))]) is None
    with pytest.raises(MalformedTLS, match="content type 20"):
        read_record_client_hello(data)


def test_handshake_type_checked_on_first_byte() -> None:
    with pytest.raises(MalformedTLS, match="type 2"):
        read_handshake_client_hello(b"\x02")
    with pytest.raises(MalformedTLS, match="type 2"):
        read_record_client_hello(b"\x16\x03\x03\x00\x50\x02")
    assert read_handshake_client_hello(b"") is None
    assert read_handshake_client_hello(b"\x01") is None


def body_with(**change: object) -> bytes:
    parts = HelloParts.split(BASE[4:])
    for k, v in change.items():
        setattr(parts, k, v)
    return parts.join()


@pytest.mark.parametrize(
    "body",
    [
        body_with(legacy_version=0x0200),
        body_with(legacy_version=0x0403),
        body_with(session_id=b"\x00" * 33),
        body_with(cipher_suites=[]),
        body_with(compression=b""),
        body_with(compression=b"\x01"),
    ],
    ids=["v2", "v4", "sid33", "no-suites", "no-compression", "no-null-compression"],
)
def test_body_malformed(body: bytes) -> None:
    with pytest.raises(MalformedTLS):
        parse_client_hello(body)
    with pytest.raises(MalformedTLS):
        read_record_client_hello(records(handshake(body)))


def test_odd_cipher_suites_length() -> None:
    body = BASE[4:]
    sid_end = 34 + 1 + body[34]
    n = struct.unpack_from(">H", body, sid_end)[0]
    bad = (
        body[:sid_end]
        + struct.pack(">H", n - 1)
        + body[sid_end + 2 : sid_end + 1 + n]
        + (body[sid_end + 2 + n :])
    )
    with pytest.raises(MalformedTLS):
        parse_client_hello(bad)


def test_extensionless_tls12_hello() -> None:
    # RFC 5246 section 7.4.1.2: the extensions block may be absent.
    parts = HelloParts.split(BASE[4:])
    body = parts.join()[: -2 - sum(4 + len(d) for _, d in parts.extensions)]
    hello = parse_client_hello(body)
    assert hello.sni is None and hello.extension_types == () and hello.other_extensions == ()


def test_random_bytes_rejected() -> None:
    rng = random.Random(2026)
    accepted = 0
    for _ in range(2000):
        data = rng.randbytes(rng.randint(1, 600))
        try:
            hello = read_record_client_hello(data)
        except MalformedTLS:
            continue
        assert hello is None
        accepted += 1
    # Only short prefixes that happen to begin like a record header can be "incomplete".
    assert accepted < 5


def test_max_body_bound() -> None:
    assert MAX_CLIENT_HELLO_BODY == 131396
    hdr = b"\x01" + (MAX_CLIENT_HELLO_BODY + 1).to_bytes(3, "big")
    with pytest.raises(MalformedTLS, match="outside"):
        read_handshake_client_hello(hdr)


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (0x0304, "1.3"),
        (0x0303, "1.2"),
        (0x0302, "1.1"),
        (0x0301, "1.0"),
        (0x0300, "ssl3"),
        (0x0A0A, "grease"),
        (0xFAFA, "grease"),
        (0x7F1C, "0x7f1c"),
        (0x0A1A, "0x0a1a"),
        (0xFEFD, "0xfefd"),
    ],
)
def test_tls_version_name(version: int, name: str) -> None:
    assert tls_version_name(version) == name


def test_is_grease() -> None:
    assert [v for v in range(0x10000) if is_grease(v)] == [0x0A0A + 0x1010 * i for i in range(16)]


# ---------------------------------------------------------------------------------------------
# Hypothesis: only MalformedTLS or a result, for any input; cut anywhere, same answer
# ---------------------------------------------------------------------------------------------

SEEDS = [unrecord(r[1]) for r in REAL if len(r[1]) < 4000]


def outcome(fn: Callable[[bytes], ClientHello | None], data: bytes) -> ClientHello | str | None:
    """The parser's answer, with MalformedTLS as "malformed"; any other exception fails."""
    try:
        result = fn(data)
    except MalformedTLS:
        return "malformed"
    assert result is None or isinstance(result, ClientHello)
    return result


@settings(deadline=HANG)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    for fn in (parse_client_hello, read_handshake_client_hello, read_record_client_hello):
        outcome(fn, data)
    outcome(read_record_client_hello, b"\x16\x03\x01" + data)
    outcome(read_handshake_client_hello, b"\x01" + data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    message = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, len(message)))
        if kind == "flip" and pos < len(message):
            message[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and pos < len(message):
            message[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif kind == "cut":
            del message[pos:]
        elif kind == "insert":
            message[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del message[pos : pos + draw(st.integers(1, 8))]
    return bytes(message)


@settings(max_examples=400, deadline=HANG, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_real_hellos(message: bytes) -> None:
    via_handshake = outcome(read_handshake_client_hello, message)
    outcome(parse_client_hello, message[4:])
    # Framed in records of any size, the record reader agrees with the handshake reader.
    via_records = outcome(read_record_client_hello, records(message, 97)) if message else None
    assert via_records == via_handshake


@settings(max_examples=200, deadline=HANG, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.integers(1, 400), min_size=1, max_size=40))
def test_any_chunking_same_answer(message: bytes, chunks: list[int]) -> None:
    data = records(message, 150)
    whole = read_record_client_hello(data)
    reader = ClientHelloReader()
    pos = 0
    got = None
    for n in chunks * (len(data) // sum(chunks) + 1):
        got = reader.feed(data[pos : pos + n])
        pos += n
        if got is not None or pos >= len(data):
            break
    assert got == whole
