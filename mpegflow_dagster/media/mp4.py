"""Read what a master playlist says about a variant from the moov box of one of our own MP4s.

Packaging runs right after the renditions were verified with ffprobe; reading the few header
fields it needs here (a few kilobytes, about a millisecond) spares one ffprobe process per
variant, and gives the exact `avc1.PPCCLL` / `mp4a.40.N` codec strings, which ffprobe does not
print (a table from profile names would guess the constraint flags).
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
    codec: str  # RFC 6381, e.g. avc1.64001f


@dataclass(frozen=True)
class Mp4Summary:
    duration_s: float  # of the movie (mvhd)
    video: Mp4Video
    audio_codec: Optional[str]  # RFC 6381, e.g. mp4a.40.2; None without an audio track

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


def read_mp4(path: Path) -> Mp4Summary:
    """The H.264 video track (size, frame rate, codec string) and the audio codec of an MP4."""
    with open(path, "rb") as fh:
        moov = _read_moov(fh)
    video: Optional[Mp4Video] = None
    audio: Optional[str] = None
    for boxes in _tracks(moov):
        if not {b"hdlr", b"stsd"} <= boxes.keys():
            continue
        handler = moov[boxes[b"hdlr"][0] + 8 : boxes[b"hdlr"][0] + 12]
        s, e = boxes[b"stsd"]
        entries = list(_boxes(moov, s + 8, e))  # after version/flags and the entry count
        if not entries:
            continue
        kind, es, ee = entries[0]
        if handler == b"vide" and kind == b"avc1" and video is None:
            width, height = struct.unpack_from(">HH", moov, es + 24)
            avcc = next(
                (cs for child, cs, _ in _boxes(moov, es + 78, ee) if child == b"avcC"), None
            )
            if avcc is None:
                raise Mp4Error("avc1 sample entry without avcC")
            profile, compat, level = moov[avcc + 1], moov[avcc + 2], moov[avcc + 3]
            video = Mp4Video(
                width,
                height,
                _frame_rate(moov, boxes),
                f"avc1.{profile:02x}{compat:02x}{level:02x}",
            )
        elif handler == b"soun" and kind == b"mp4a" and audio is None:
            esds = next(
                ((cs, ce) for child, cs, ce in _boxes(moov, es + 28, ee) if child == b"esds"), None
            )
            if esds is None:
                raise Mp4Error("mp4a sample entry without esds")
            audio = _mp4a_codec(moov[esds[0] : esds[1]])
    if video is None:
        raise Mp4Error(f"{Path(path).name} has no H.264 (avc1) video track")
    return Mp4Summary(_movie_duration(moov), video, audio)


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
