"""Read what a master playlist says about a variant from the moov box of one of our own MP4s.

Packaging runs right after the renditions were verified with ffprobe; reading the few header
fields it needs here (a few kilobytes, about a millisecond) spares one ffprobe process per
variant, and gives the exact RFC 6381 codec strings, which ffprobe does not print (a table from
profile names would guess the constraint flags):

- H.264 (`avc1`): `avc1.PPCCLL` from the avcC box;
- HEVC (`hvc1`, `hev1`): `hvc1.1.6.L93.B0` and the like from the hvcC box (ISO/IEC 14496-15
  Annex E);
- AV1 (`av01`): `av01.0.04M.08` and the like from the av1C box (AV1 Codec ISO Media File Format
  Binding, "Codecs Parameter String", the short form without the colour fields);
- AAC and other MPEG-4 audio (`mp4a`): `mp4a.40.N` from the esds box; AC-3, E-AC-3 and Opus:
  `ac-3`, `ec-3`, `opus`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

_HEADER = struct.Struct(">I4s")
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
_MOOV_LIMIT = 64 * 1024 * 1024  # a moov this large is not one of our renditions


class Mp4Error(ValueError):
    """The file is not an MP4 with the boxes a rendition has."""


@dataclass(frozen=True)
class Mp4Video:
    width: int
    height: int
    frame_rate: Optional[Fraction]  # frames / duration of the track
    codec: str  # RFC 6381, e.g. avc1.64001f, hvc1.2.4.L120.B0, av01.0.08M.10
    codec_name: str  # FFmpeg's name: 'h264', 'hevc' or 'av1', to group variants by codec
    transfer: Optional[int] = None  # colr nclx transfer_characteristics: 16 PQ, 18 HLG, 1 BT.709

    @property
    def video_range(self) -> str:
        """HLS VIDEO-RANGE: PQ, HLG or SDR."""
        return {16: "PQ", 18: "HLG"}.get(self.transfer or 0, "SDR")


@dataclass(frozen=True)
class Mp4Summary:
    duration_s: float  # of the movie (mvhd)
    video: Mp4Video
    audio_codec: Optional[str]  # RFC 6381, e.g. mp4a.40.2; None without an audio track
    audio_channels: Optional[int] = None

    @property
    def codecs(self) -> str:
        return ",".join([self.video.codec, *([self.audio_codec] if self.audio_codec else [])])


def _box_header(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(size, type, header length) of the box at `pos`; size 0 means "to the end of its parent"."""
    size, kind = _HEADER.unpack_from(data, pos)
    if size == 1:  # 64-bit size after the type
        return struct.unpack_from(">Q", data, pos + 8)[0], kind, 16
    return size, kind, 8


def _boxes(
    data: bytes, start: int = 0, end: Optional[int] = None
) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind, header = _box_header(data, pos)
        if size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} at {pos} overruns its parent")
        yield kind, pos + header, pos + size
        pos += size


def _read_moov(fh: BinaryIO) -> bytes:
    """The moov box's bytes, skipping over the top-level boxes before it (mdat is not read)."""
    while True:
        head = fh.read(16)
        if len(head) < 8:
            raise Mp4Error("no moov box")
        size, kind, header = _box_header(head, 0)
        if kind == b"moov":
            if size > _MOOV_LIMIT or size < header:
                raise Mp4Error(f"moov box of {size} bytes")
            fh.seek(header - len(head), 1)
            data = fh.read(size - header)
            if len(data) != size - header:
                raise Mp4Error("truncated moov box")
            return data
        if size < header:  # 0 = to the end of the file: no moov after it
            raise Mp4Error("no moov box")
        fh.seek(size - len(head), 1)


def _tracks(moov: bytes) -> Iterator[dict[bytes, tuple[int, int]]]:
    """For each trak: the (payload start, end) of every box under it, by type."""
    for kind, start, end in _boxes(moov):
        if kind != b"trak":
            continue
        found: dict[bytes, tuple[int, int]] = {}
        stack = [(start, end)]
        while stack:
            s, e = stack.pop()
            for child, cs, ce in _boxes(moov, s, e):
                found.setdefault(child, (cs, ce))
                if child in _CONTAINERS:
                    stack.append((cs, ce))
        yield found


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, payload start, payload end) of an MPEG-4 descriptor (ISO 14496-1) at `pos`."""
    tag, length, pos = data[pos], 0, pos + 1
    for _ in range(4):
        byte = data[pos]
        pos += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, pos, pos + length


def _mp4a_codec(esds: bytes) -> str:
    """`mp4a.40.<audio object type>` from the esds payload (after its version and flags)."""
    tag, pos, _ = _descriptor(esds, 4)
    if tag != 0x03:
        raise Mp4Error("esds without an ES descriptor")
    flags = esds[pos + 2]
    pos += 3 + (2 if flags & 0x80 else 0)
    if flags & 0x40:
        pos += 1 + esds[pos]
    pos += 2 if flags & 0x20 else 0
    tag, pos, end = _descriptor(esds, pos)
    if tag != 0x04:
        raise Mp4Error("esds without a decoder config")
    object_type = esds[pos]
    if object_type != 0x40:  # not MPEG-4 audio: the object type alone names the codec
        return f"mp4a.{object_type:02x}"
    tag, info, _ = _descriptor(esds, pos + 13)
    if tag != 0x05:
        raise Mp4Error("esds without a decoder specific info")
    aot = esds[info] >> 3
    if aot == 31:  # escape: 6 more bits
        aot = 32 + (((esds[info] & 0x07) << 3) | (esds[info + 1] >> 5))
    return f"mp4a.40.{aot}"


# The video sample entries read, each with FFmpeg's name of its codec (Mp4Video.codec_name)
_VIDEO_ENTRIES = {b"avc1": "h264", b"hvc1": "hevc", b"hev1": "hevc", b"av01": "av1"}
_ACCEPTED = "H.264 (avc1), HEVC (hvc1, hev1) or AV1 (av01)"


def _config_box(moov: bytes, start: int, end: int, entry: bytes, kind: bytes) -> bytes:
    """The payload of the `kind` box among the children of a sample entry's payload."""
    found = next(((cs, ce) for child, cs, ce in _boxes(moov, start, end) if child == kind), None)
    if found is None:
        raise Mp4Error(f"{entry.decode('latin-1')} sample entry without {kind.decode('latin-1')}")
    return moov[found[0] : found[1]]


def _transfer(moov: bytes, start: int, end: int) -> Optional[int]:
    """The transfer characteristics of a visual sample entry's `colr` box of type nclx (ISO
    14496-12: primaries, transfer, matrix as 16-bit codes of ITU-T H.273), None without one."""
    for child, cs, ce in _boxes(moov, start, end):
        if child == b"colr" and ce - cs >= 10 and moov[cs : cs + 4] == b"nclx":
            return struct.unpack_from(">H", moov, cs + 6)[0]
    return None


def _need(payload: bytes, size: int, kind: str) -> None:
    """Refuse a configuration box too short for its fixed fields: an Mp4Error that names the box,
    not the IndexError or struct.error that reading past its end would raise."""
    if len(payload) < size:
        raise Mp4Error(f"{kind} box of {len(payload)} bytes, shorter than its {size}-byte header")


def _avc1_codec(avcc: bytes) -> str:
    """`avc1.PPCCLL`: profile, constraint flags and level bytes of the avcC, as hex."""
    _need(avcc, 4, "avcC")
    return f"avc1.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


def _reverse_bits32(value: int) -> int:
    """Bit 31 of `value` as bit 0, bit 30 as bit 1, and so on."""
    return int(f"{value:032b}"[::-1], 2)


def _hevc_codec(entry: bytes, hvcc: bytes) -> str:
    """`<entry>.<space><profile>.<compat>.<tier><level>[.<constraint bytes>]` from the hvcC
    (ISO/IEC 14496-15 8.3.3.1 for the layout, Annex E.3 for the string)."""
    _need(hvcc, 23, "hvcC")  # the fixed part before the parameter set arrays
    if hvcc[0] != 1:  # configurationVersion: anything else is not a record we can read
        raise Mp4Error(f"hvcC of configuration version {hvcc[0]}, not 1")
    space, tier, profile = hvcc[1] >> 6, (hvcc[1] >> 5) & 1, hvcc[1] & 0x1F
    # The flags are stored flag[0] first (most significant bit); the string wants flag[j] as
    # bit j, so Main's flags 1 and 2 (0x60000000) read "6".
    compat = _reverse_bits32(struct.unpack_from(">I", hvcc, 2)[0])
    level = hvcc[12]
    constraints = hvcc[6:12].rstrip(b"\0")  # trailing zero bytes are left out
    return ".".join(
        [
            entry.decode("latin-1"),
            f"{'' if space == 0 else 'ABC'[space - 1]}{profile}",
            f"{compat:X}",
            f"{'H' if tier else 'L'}{level}",
            *(f"{byte:X}" for byte in constraints),
        ]
    )


def _av01_codec(av1c: bytes) -> str:
    """`av01.<profile>.<level><tier>.<bit depth>` from the av1C (the short form of "Codecs
    Parameter String" in the AV1 ISO media file format binding)."""
    _need(av1c, 4, "av1C")
    if av1c[0] != 0x81:  # marker bit 1 and version 1: a garbled box would give a wrong string
        raise Mp4Error(f"av1C starting with {av1c[0]:#04x}, not marker and version 1 (0x81)")
    profile, level = av1c[1] >> 5, av1c[1] & 0x1F
    tier, high_bitdepth, twelve_bit = av1c[2] >> 7, (av1c[2] >> 6) & 1, (av1c[2] >> 5) & 1
    depth = (12 if twelve_bit else 10) if high_bitdepth else 8
    return f"av01.{profile}.{level:02d}{'H' if tier else 'M'}.{depth:02d}"


def _video_codec(moov: bytes, entry: bytes, start: int, end: int) -> str:
    """The codec string of a video sample entry whose children are in moov[start:end]."""
    if entry == b"avc1":
        return _avc1_codec(_config_box(moov, start, end, entry, b"avcC"))
    if entry in (b"hvc1", b"hev1"):
        return _hevc_codec(entry, _config_box(moov, start, end, entry, b"hvcC"))
    return _av01_codec(_config_box(moov, start, end, entry, b"av1C"))


# Audio sample entries whose codec string is the entry's own (ETSI TS 102 366 Annex F, Opus in
# ISOBMFF 5.1); an mp4a one's is read from its esds
_AUDIO_ENTRIES = {b"ac-3": "ac-3", b"ec-3": "ec-3", b"Opus": "opus"}


def _scan(path: Path) -> tuple[bytes, Optional[Mp4Video], Optional[str], Optional[int]]:
    """The moov, its first H.264/HEVC/AV1 video track, and its first audio track's codec string
    and channel count."""
    with open(path, "rb") as fh:
        moov = _read_moov(fh)
    video: Optional[Mp4Video] = None
    audio: Optional[str] = None
    channels: Optional[int] = None
    for boxes in _tracks(moov):
        if not {b"hdlr", b"stsd"} <= boxes.keys():
            continue
        handler = moov[boxes[b"hdlr"][0] + 8 : boxes[b"hdlr"][0] + 12]
        s, e = boxes[b"stsd"]
        entries = list(_boxes(moov, s + 8, e))  # after version/flags and the entry count
        if not entries:
            continue
        kind, es, ee = entries[0]
        if handler == b"vide" and kind in _VIDEO_ENTRIES and video is None:
            # every visual sample entry has the same 78-byte header, the size at 24
            width, height = struct.unpack_from(">HH", moov, es + 24)
            video = Mp4Video(
                width,
                height,
                _frame_rate(moov, boxes),
                _video_codec(moov, kind, es + 78, ee),
                _VIDEO_ENTRIES[kind],
                _transfer(moov, es + 78, ee),
            )
        elif handler == b"soun" and audio is None and (kind == b"mp4a" or kind in _AUDIO_ENTRIES):
            audio = (
                _mp4a_codec(_config_box(moov, es + 28, ee, kind, b"esds"))
                if kind == b"mp4a"
                else _AUDIO_ENTRIES[kind]
            )
            # the audio sample entry: 8 bytes of sample entry, 8 reserved, then channelcount
            (channels,) = struct.unpack_from(">H", moov, es + 16)
    return moov, video, audio, channels


def read_mp4(path: Path) -> Mp4Summary:
    """The first H.264, HEVC or AV1 video track (size, frame rate, codec string and name) and
    the audio codec of an MP4."""
    moov, video, audio, channels = _scan(path)
    if video is None:
        raise Mp4Error(f"{Path(path).name} has no {_ACCEPTED} video track")
    return Mp4Summary(_movie_duration(moov), video, audio, channels)


def read_audio_codec(path: Path) -> str:
    """The codec string (RFC 6381) of an MP4's first audio track: mp4a.40.2, ec-3, opus, ..."""
    audio = _scan(path)[2]
    if audio is None:
        raise Mp4Error(f"{Path(path).name} has no AAC, AC-3, E-AC-3 or Opus audio track")
    return audio


def _movie_duration(moov: bytes) -> float:
    m = next((start for kind, start, _ in _boxes(moov) if kind == b"mvhd"), None)
    if m is None:
        raise Mp4Error("moov without mvhd")
    timescale, duration = (
        struct.unpack_from(">IQ", moov, m + 20)
        if moov[m] == 1
        else struct.unpack_from(">II", moov, m + 12)
    )
    return duration / timescale if timescale else 0.0


def _frame_rate(moov: bytes, boxes: dict[bytes, tuple[int, int]]) -> Optional[Fraction]:
    """Samples per second of the track, from its media timescale and sample durations (stts)."""
    if b"mdhd" not in boxes or b"stts" not in boxes:
        return None
    m = boxes[b"mdhd"][0]
    timescale = struct.unpack_from(">I", moov, m + (20 if moov[m] == 1 else 12))[0]
    s = boxes[b"stts"][0]
    (count,) = struct.unpack_from(">I", moov, s + 4)
    pairs = struct.unpack_from(f">{2 * count}I", moov, s + 8)
    samples, ticks = (
        sum(pairs[0::2]),
        sum(n * d for n, d in zip(pairs[0::2], pairs[1::2], strict=True)),
    )
    return Fraction(samples * timescale, ticks) if ticks and timescale else None
