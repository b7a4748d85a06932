"""Tests for probes.capfile: pcap and pcapng readers, damage handling, real captures."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes import capfile
from probes.capfile import CaptureReader, PcapngReader, PcapReader, open_capture
from probes.errors import CaptureError

CAPTURES = Path(__file__).parents[2].parent / "shared" / "captures"
REAL = sorted(CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else []

needs_captures = pytest.mark.skipif(not REAL, reason=f"real captures not found in {CAPTURES}")
needs_tshark = pytest.mark.skipif(
    shutil.which("capinfos") is None or shutil.which("tshark") is None,
    reason="tshark and capinfos (Wireshark) are needed for ground truth",
)

Rec = tuple[float, int, bytes]

# -- writers ----------------------------------------------------------------------------------
# Our own, independent of the reader, straight from the format documents.


def pcap_file(
    records: Iterable[tuple[int, int, bytes]],
    *,
    linktype: int = 1,
    little: bool = True,
    nano: bool = False,
    snaplen: int = 262144,
    caplen_override: dict[int, int] | None = None,
) -> bytes:
    """A pcap file of ``(seconds, fraction, frame)`` records."""
    o = "<" if little else ">"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, (sec, frac, frame) in enumerate(records):
        caplen = (caplen_override or {}).get(i, len(frame))
        out.append(struct.pack(o + "IIII", sec, frac, caplen, len(frame)) + frame)
    return b"".join(out)


def block(btype: int, body: bytes, *, little: bool = True, trailer: int | None = None) -> bytes:
    """A pcapng block: type, total length, body padded to 32 bits, total length."""
    o = "<" if little else ">"
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return (
        struct.pack(o + "II", btype, length)
        + body
        + struct.pack(o + "I", length if trailer is None else trailer)
    )


def option(code: int, value: bytes, *, little: bool = True) -> bytes:
    o = "<" if little else ">"
    return struct.pack(o + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(*, little: bool = True, major: int = 1) -> bytes:
    o = "<" if little else ">"
    return block(0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, major, 0, -1), little=little)


def idb(
    linktype: int,
    *,
    snaplen: int = 0,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    little: bool = True,
    trailer: int | None = None,
) -> bytes:
    o = "<" if little else ">"
    body = struct.pack(o + "HHI", linktype, 0, snaplen)
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), little=little)
    if tsoffset is not None:
        opts += option(14, struct.pack(o + "q", tsoffset), little=little)
    if opts:
        body += opts + option(0, b"", little=little)
    return block(1, body, little=little, trailer=trailer)


def epb(
    iface: int,
    ticks: int,
    frame: bytes,
    *,
    little: bool = True,
    caplen: int | None = None,
    trailer: int | None = None,
) -> bytes:
    o = "<" if little else ">"
    body = struct.pack(
        o + "IIIII",
        iface,
        ticks >> 32,
        ticks & 0xFFFFFFFF,
        len(frame) if caplen is None else caplen,
        len(frame),
    )
    return block(6, body + frame, little=little, trailer=trailer)


def spb(frame: bytes, *, little: bool = True, origlen: int | None = None) -> bytes:
    o = "<" if little else ">"
    return block(3, struct.pack(o + "I", len(frame) if origlen is None else origlen) + frame)


def pb(iface: int, ticks: int, frame: bytes, *, little: bool = True) -> bytes:
    o = "<" if little else ">"
    body = struct.pack(
        o + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
    )
    return block(2, body + frame, little=little)


def read_all(path: Path) -> tuple[list[Rec], CaptureReader]:
    with open_capture(path) as reader:
        return list(reader), reader


def write(tmp_path: Path, data: bytes, name: str = "c.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


FRAMES = [bytes(range(n % 256)) * (1 + n // 256) for n in (0, 1, 3, 60, 61, 62, 63, 1514, 9000)]


# -- pcap -------------------------------------------------------------------------------------


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
def test_pcap_reads_back(tmp_path: Path, little: bool, nano: bool) -> None:
    frac = 123456789 if nano else 123456
    recs = [(1_700_000_000 + i, frac, f) for i, f in enumerate(FRAMES)]
    path = write(tmp_path, pcap_file(recs, little=little, nano=nano, linktype=113))
    got, reader = read_all(path)
    assert isinstance(reader, PcapReader)
    assert reader.format == "pcap"
    assert reader.linktype == 113
    assert reader.path == str(path)
    assert [f for _, _, f in got] == FRAMES
    assert {lt for _, lt, _ in got} == {113}
    scale = 1e-9 if nano else 1e-6
    for (ts, _, _), (sec, fr, _) in zip(got, recs, strict=True):
        assert ts == pytest.approx(sec + fr * scale, abs=1e-7)
    assert (reader.packets, reader.damaged) == (len(FRAMES), 0)
    assert reader.bytes_read == path.stat().st_size


def test_pcap_linktype_masks_fcs_bits(tmp_path: Path) -> None:
    # FCS length 2 (16-bit words) with the f bit set, over LINKTYPE_ETHERNET.
    path = write(tmp_path, pcap_file([(1, 0, b"x" * 20)], linktype=0x2400_0001 | 0x1000_0000))
    got, _ = read_all(path)
    assert got[0][1] == 1


def test_pcap_empty_capture_has_no_packets(tmp_path: Path) -> None:
    got, reader = read_all(write(tmp_path, pcap_file([])))
    assert got == []
    assert reader.packets == 0


def test_pcap_accepts_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_file([(1, 2, b"abc")]))
    with open_capture(str(path)) as reader:
        assert [f for _, _, f in reader] == [b"abc"]


def test_pcap_record_beyond_snaplen_is_damaged_and_skipped(tmp_path: Path) -> None:
    big = b"\xaa" * 300_000  # beyond both the snaplen and libpcap's 262144 maximum
    recs = [(1, 0, b"first"), (2, 0, big), (3, 0, b"third")]
    got, reader = read_all(write(tmp_path, pcap_file(recs, snaplen=65535)))
    assert [f for _, _, f in got] == [b"first", b"third"]
    assert (reader.packets, reader.damaged) == (2, 1)


def test_pcap_gro_frame_beyond_small_snaplen_is_kept(tmp_path: Path) -> None:
    # libpcap and tshark read a 70000-byte GRO frame in a file that says snaplen 65535.
    frame = b"\x01" * 70_000
    got, reader = read_all(write(tmp_path, pcap_file([(1, 0, frame)], snaplen=65535)))
    assert [f for _, _, f in got] == [frame]
    assert reader.damaged == 0


def test_pcap_absurd_caplen_loses_framing(tmp_path: Path) -> None:
    recs = [(1, 0, b"good"), (2, 0, b"bad")]
    data = pcap_file(recs, caplen_override={1: 0x7FFF_FFFF})
    reader = open_capture(write(tmp_path, data))
    got: list[Rec] = []
    with reader, pytest.raises(CaptureError, match=r"^truncated at offset 44: .*2147483647"):
        got.extend(reader)
    assert [f for _, _, f in got] == [b"good"]


def test_pcap_truncated_at_every_offset(tmp_path: Path) -> None:
    recs = [(1, 0, b"a" * 10), (2, 0, b"b" * 20), (3, 0, b"c" * 30)]
    data = pcap_file(recs)
    ends = [24 + 26, 24 + 26 + 36, len(data)]  # file offsets where each record ends
    for cut in range(24, len(data) + 1):
        path = write(tmp_path, data[:cut])
        reader = open_capture(path)
        got: list[Rec] = []
        whole = sum(1 for e in ends if e <= cut)
        if cut in ends or cut == 24:
            with reader:
                got.extend(reader)
        else:
            with reader, pytest.raises(CaptureError, match=r"^truncated") as exc:
                got.extend(reader)
            assert exc.value.path == str(path)
        assert [f[:1] for _, _, f in got] == [b"a", b"b", b"c"][:whole], cut


@pytest.mark.parametrize("cut", [4, 10, 23])
def test_pcap_truncated_header(tmp_path: Path, cut: int) -> None:
    with pytest.raises(CaptureError, match="truncated pcap file header"):
        open_capture(write(tmp_path, pcap_file([])[:cut]))


def test_pcap_unsupported_version(tmp_path: Path) -> None:
    data = bytearray(pcap_file([]))
    data[4:6] = struct.pack("<H", 3)
    with pytest.raises(CaptureError, match=r"unsupported pcap version 3\.4"):
        open_capture(write(tmp_path, bytes(data)))


# -- pcapng -----------------------------------------------------------------------------------


def test_pcapng_interfaces_resolutions_and_unknown_blocks(tmp_path: Path) -> None:
    data = b"".join(
        [
            shb(),
            idb(1),  # 0: Ethernet, default microseconds
            block(4, b"\x01\x00\x08\x00" + b"\x7f\x00\x00\x01name" + b"\0" * 8),  # NRB
            idb(113, tsresol=9),  # 1: Linux SLL, nanoseconds
            idb(101, tsresol=0x80 | 10, tsoffset=1_000_000),  # 2: raw IP, 2^-10 s, +1e6 s
            epb(0, 1_700_000_000_123_456, b"eth"),
            block(5, b"\0" * 20),  # ISB
            epb(1, 1_700_000_000_123_456_789, b"sll"),
            block(0x0000000A, b"\0" * 12),  # DSB
            epb(2, 1024 * 5 + 512, b"raw"),
            block(0x00000BAD, b"custom"),
            block(0x40000BAD, b"custom, not to be copied"),
            pb(1, 2_000_000_000_000_000_000, b"obsolete"),
        ]
    )
    got, reader = read_all(write(tmp_path, data, "c.pcapng"))
    assert isinstance(reader, PcapngReader)
    assert reader.format == "pcapng"
    assert [(lt, f) for _, lt, f in got] == [
        (1, b"eth"),
        (113, b"sll"),
        (101, b"raw"),
        (113, b"obsolete"),
    ]
    assert got[0][0] == pytest.approx(1_700_000_000.123456, abs=1e-6)
    assert got[1][0] == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert got[2][0] == pytest.approx(1_000_000 + 5.5)
    assert got[3][0] == pytest.approx(2_000_000_000.0)
    assert (reader.packets, reader.damaged) == (4, 0)


def test_pcapng_simple_packet_blocks(tmp_path: Path) -> None:
    data = b"".join(
        [
            shb(),
            idb(1, snaplen=4),
            epb(0, 5_000_000, b"ab"),
            spb(b"abcdef"),  # captured beyond the snaplen: cut to 4
            spb(b"ab"),  # the padding is not data
            spb(b"wxyz", origlen=100),  # original length beyond what was captured
        ]
    )
    got, reader = read_all(write(tmp_path, data, "c.pcapng"))
    assert [f for _, _, f in got] == [b"ab", b"abcd", b"ab", b"wxyz"]
    # SPBs carry no timestamp: the previous packet's stands in.
    assert [ts for ts, _, _ in got] == [5.0, 5.0, 5.0, 5.0]
    assert reader.damaged == 0


def test_pcapng_sections_of_both_byte_orders(tmp_path: Path) -> None:
    data = b"".join(
        [
            shb(little=False),
            idb(1, little=False),
            idb(228, little=False),
            epb(1, 1_000_000, b"be-v4", little=False),
            epb(0, 2_000_000, b"be-eth", little=False),
            shb(little=True),
            idb(229),  # ids restart in a new section
            epb(0, 3_000_000, b"le-v6"),
            epb(1, 4_000_000, b"unknown iface in this section"),
        ]
    )
    got, reader = read_all(write(tmp_path, data, "c.pcapng"))
    assert [(ts, lt, f) for ts, lt, f in got] == [
        (1.0, 228, b"be-v4"),
        (2.0, 1, b"be-eth"),
        (3.0, 229, b"le-v6"),
    ]
    assert reader.damaged == 1


def test_pcapng_damaged_blocks_are_counted_and_skipped(tmp_path: Path) -> None:
    data = b"".join(
        [
            shb(),
            idb(1),
            idb(113, trailer=0xDEAD),  # damaged, but keeps id 1 so that id 2 stays right
            idb(101),
            epb(0, 1, b"good-0"),
            epb(1, 2, b"on a damaged interface"),
            epb(2, 3, b"good-2"),
            epb(7, 4, b"unknown interface"),
            epb(0, 5, b"trailer mismatch", trailer=0x1234),
            epb(0, 6, b"caplen beyond the block", caplen=4000),
            block(6, b"\0" * 8),  # EPB too short for its own header
            epb(0, 7, b"good-last"),
        ]
    )
    got, reader = read_all(write(tmp_path, data, "c.pcapng"))
    assert [(lt, f) for _, lt, f in got] == [(1, b"good-0"), (101, b"good-2"), (1, b"good-last")]
    assert reader.damaged == 6
    assert reader.packets == 3


@pytest.mark.parametrize(
    "bad", [b"\x06\0\0\0\x08\0\0\0", b"\x06\0\0\0\x0e\0\0\0", b"\x06\0\0\0\xff\xff\xff\x7f"]
)
def test_pcapng_lost_framing_raises_after_good_packets(tmp_path: Path, bad: bytes) -> None:
    data = shb() + idb(1) + epb(0, 1, b"good") + bad + b"\0" * 64
    reader = open_capture(write(tmp_path, data, "c.pcapng"))
    got: list[Rec] = []
    with reader, pytest.raises(CaptureError, match=r"^truncated at offset 84: block of type"):
        got.extend(reader)
    assert [f for _, _, f in got] == [b"good"]


def test_pcapng_bad_byte_order_magic_in_later_section(tmp_path: Path) -> None:
    bad_shb = bytearray(shb())
    bad_shb[8:12] = b"\0\0\0\0"
    data = shb() + idb(1) + epb(0, 1, b"good") + bytes(bad_shb)
    reader = open_capture(write(tmp_path, data, "c.pcapng"))
    with reader, pytest.raises(CaptureError, match="bad byte-order magic 0x00000000"):
        assert [f for _, _, f in reader] == [b"good"]


def test_pcapng_unsupported_version(tmp_path: Path) -> None:
    reader = open_capture(write(tmp_path, shb(major=2), "c.pcapng"))
    with reader, pytest.raises(CaptureError, match=r"unsupported pcapng version 2\.0"):
        list(reader)


def test_pcapng_truncated_at_every_offset(tmp_path: Path) -> None:
    blocks = [shb(), idb(1), epb(0, 1, b"a" * 5), epb(0, 2, b"b" * 9), spb(b"c" * 3)]
    data = b"".join(blocks)
    ends = [sum(len(b) for b in blocks[: i + 1]) for i in range(len(blocks))]
    for cut in range(4, len(data) + 1):
        path = write(tmp_path, data[:cut], "c.pcapng")
        got: list[Rec] = []
        whole = sum(1 for e in ends[2:] if e <= cut)
        reader = open_capture(path)
        if cut in ends:
            with reader:
                got.extend(reader)
        else:
            with reader, pytest.raises(CaptureError, match=r"^truncated"):
                got.extend(reader)
        assert [f[:1] for _, _, f in got] == [b"a", b"b", b"c"][:whole], cut


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_records_straddling_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    frames = [bytes([i % 251]) * (i * 37 % 1600) for i in range(300)]
    pcap = write(tmp_path, pcap_file((i, i, f) for i, f in enumerate(frames)))
    ng = write(
        tmp_path,
        shb() + idb(1) + b"".join(epb(0, i, f) for i, f in enumerate(frames)),
        "c.pcapng",
    )
    monkeypatch.setattr(capfile, "CHUNK_SIZE", chunk)
    for path in (pcap, ng):
        got, reader = read_all(path)
        assert [f for _, _, f in got] == frames
        assert reader.bytes_read == path.stat().st_size


def test_large_file_streams_in_chunks(tmp_path: Path) -> None:
    # 8 MiB of records, including one frame bigger than a chunk.
    frames = [b"\x5a" * 1400] * 5000 + [b"\xa5" * (3 << 20)] + [b"tail"]
    path = write(tmp_path, shb() + idb(1) + b"".join(epb(0, 0, f) for f in frames), "big.pcapng")
    with open_capture(path) as reader:
        it = iter(reader)
        next(it)
        # Only what was needed so far has been read, not the whole file.
        assert reader.bytes_read <= capfile.CHUNK_SIZE
        count = 1 + sum(1 for _ in it)
    assert count == len(frames)
    assert reader.bytes_read == path.stat().st_size


def test_close_stops_iteration(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_file([(1, 0, b"a"), (2, 0, b"b")]))
    reader = open_capture(path)
    it = iter(reader)
    assert next(it)[2] == b"a"
    reader.close()
    assert list(it) == []
    reader.close()


def test_close_before_iterating(tmp_path: Path) -> None:
    reader = open_capture(write(tmp_path, pcap_file([(1, 0, b"a")])))
    reader.close()
    assert list(reader) == []


def test_abandoned_loop_closes_file(tmp_path: Path) -> None:
    reader = open_capture(write(tmp_path, pcap_file([(1, 0, b"a"), (2, 0, b"b")])))
    for _ in reader:
        break
    reader.close()
    assert reader._file.closed


# -- not captures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "^empty file$"),
        (b"GET / HTTP/1.1\r\n\r\n", r"^not a pcap or pcapng file: bad magic 0x47455420$"),
        (b"\x00", r"^not a pcap or pcapng file: bad magic 0x00$"),
        (gzip.compress(b"pcap"), r"compressed capture \(gzip\)"),
    ],
)
def test_not_a_capture(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, data, "x.bin")
    with pytest.raises(CaptureError, match=message) as exc:
        open_capture(path)
    assert exc.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"^cannot open: No such file or directory$"):
        open_capture(tmp_path / "nope.pcap")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"^cannot open: Is a directory$"):
        open_capture(tmp_path)


# -- hypothesis -------------------------------------------------------------------------------


def drain(path: Path) -> None:
    """Open and read ``path``; only CaptureError may come out."""
    try:
        with open_capture(path) as reader:
            for ts, lt, frame in reader:
                assert isinstance(ts, float)
                assert isinstance(lt, int)
                assert isinstance(frame, bytes)
            assert reader.packets >= 0
    except CaptureError as exc:
        assert "\n" not in str(exc)


VALID_FILES = [
    pcap_file([(1, 2, b"abc"), (3, 4, b"x" * 100)]),
    pcap_file([(1, 2, b"abc")], little=False, nano=True),
    shb() + idb(1, tsresol=9) + epb(0, 7, b"abc") + spb(b"de") + pb(0, 1, b"f"),
    shb(little=False) + idb(113, little=False) + epb(0, 1, b"x", little=False),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    drain(write(tmp_path, data, "fuzz.bin"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(VALID_FILES),
    magic=st.sampled_from([b"", b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d"]),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 400),
)
def test_fuzz_mutated_captures(
    tmp_path: Path, base: bytes, magic: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(magic + base[len(magic) :])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    drain(write(tmp_path, bytes(data[: cut or None]), "fuzz.bin"))


# -- real captures ----------------------------------------------------------------------------


@needs_captures
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_capture_reads_without_damage(path: Path) -> None:
    got, reader = read_all(path)
    assert reader.packets == len(got) > 0
    assert reader.damaged == 0
    assert {lt for _, lt, _ in got} <= {1, 101, 113}


@pytest.mark.tshark
@needs_captures
@needs_tshark
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_capture_matches_capinfos_and_tshark(path: Path) -> None:
    got, reader = read_all(path)
    out = subprocess.run(
        ["capinfos", "-c", "-M", "-T", "-r", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert reader.packets == int(out.strip().split("\t")[-1])
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.cap_len",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for (ts, _, frame), line in zip(got, fields, strict=False):
        epoch, caplen = line.split("\t")
        assert ts == pytest.approx(float(epoch), abs=1e-6)
        assert len(frame) == int(caplen)
