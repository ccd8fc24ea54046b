"""Broken and hostile inputs for failure-classification tests, made with FFmpeg and Python.

Every maker writes into `directory` and returns the path; damage is deterministic (seeded) so
a failing case reproduces.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import zlib
from pathlib import Path
from typing import Optional

from mpegflow_dagster.media.runner import run_ffmpeg


def missing(directory: Path) -> Path:
    return directory / "does-not-exist.mp4"


def zero_byte(directory: Path) -> Path:
    out = directory / "empty.mp4"
    out.write_bytes(b"")
    return out


def random_bytes(directory: Path, size: int = 64 * 1024, seed: int = 1) -> Path:
    out = directory / "noise.mp4"
    out.write_bytes(random.Random(seed).randbytes(size))
    return out


def faststart(clip: Path, directory: Path, ffmpeg: str = "ffmpeg") -> Path:
    """A remux with the index (moov) first, as web uploads usually are: cutting its tail keeps it
    decodable, and the HLS demuxer can stream it as a segment."""
    out = directory / f"{clip.stem}-faststart.mp4"
    run_ffmpeg(
        ["-i", f"file:{clip}", "-c", "copy", "-movflags", "+faststart", f"file:{out}"],
        ffmpeg=ffmpeg,
    )
    return out


def truncated(clip: Path, directory: Path, keep: float = 0.5) -> Path:
    """The first `keep` of a faststart MP4: the index (moov) survives, media data past the cut is gone."""
    data = clip.read_bytes()
    out = directory / "truncated.mp4"
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def bit_flipped(
    clip: Path, directory: Path, flips: int = 200, seed: int = 3, skip: float = 0.25
) -> Path:
    """Invert `flips` bytes past the first `skip` of the file (leaving the moov of a faststart
    MP4 intact), so the file opens and decodes with concealed errors."""
    data = bytearray(clip.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        data[rng.randrange(int(len(data) * skip), len(data))] ^= 0xFF
    out = directory / "flipped.mp4"
    out.write_bytes(bytes(data))
    return out


def audio_only(directory: Path, ffmpeg: str = "ffmpeg", duration_s: float = 1.0) -> Path:
    out = directory / "audio-only.mp4"
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={duration_s:g}",
            "-c:a",
            "aac",
            f"file:{out}",
        ],
        ffmpeg=ffmpeg,
    )
    return out


def vvc_clip(directory: Path, ffmpeg: str) -> Path:
    """A tiny H.266/VVC MP4: a codec FFmpeg 5.1 cannot decode. Needs a build with libvvenc."""
    out = directory / "vvc.mp4"
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=0.2",
            "-c:v",
            "libvvenc",
            "-preset",
            "faster",
            f"file:{out}",
        ],
        ffmpeg=ffmpeg,
    )
    return out


def pixel_bomb_png(directory: Path, width: int = 40000, height: int = 40000) -> Path:
    """A 100-byte PNG whose header declares `width` x `height` pixels (4.8 GB decoded as RGB)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    out = directory / "bomb.png"
    out.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    return out


def _vod_playlist(out: Path, entry: object) -> Path:
    out.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{entry}\n#EXT-X-ENDLIST\n")
    return out


def hls_playlist(directory: Path, segment: Path) -> Path:
    """A well-formed VOD playlist naming a local media file."""
    return _vod_playlist(directory / "list.m3u8", segment)


def hls_reading_local_file(directory: Path, target: str = "/etc/passwd") -> Path:
    """The classic exfiltration playlist: a 'segment' that is a local non-media file."""
    return _vod_playlist(directory / "evil.m3u8", target)


def hls_disguised_as_mp4(directory: Path, url: str = "http://127.0.0.1:9/a.ts") -> Path:
    """A playlist named .mp4 whose segment is fetched over HTTP (server-side request forgery)."""
    return _vod_playlist(directory / "upload.mp4", url)


def ffconcat_disguised_as_mp4(directory: Path, target: str = "/etc/passwd") -> Path:
    """An ffconcat list named .mp4: FFmpeg probes it as the concat demuxer, which opens `target`."""
    out = directory / "upload2.mp4"
    out.write_text(f"ffconcat version 1.0\nfile {target}\n")
    return out


def concat_list(directory: Path, clip: Path) -> Path:
    out = directory / "list.txt"
    out.write_text(f"file '{clip}'\n")
    return out


def unwritable_dir(directory: Path) -> Optional[Path]:
    """A directory the FFmpeg child cannot create files in, or None if there is none here.

    chmod 555 stops ordinary users; root ignores it, so under root use sysfs, which refuses new
    files even to root (EACCES)."""
    ro = directory / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        return ro
    ro.chmod(0o755)
    probe = Path("/sys/mpegflow-write-test")
    try:
        probe.touch()
    except OSError:
        return Path("/sys")
    probe.unlink()
    return None


def free_tcp_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def silent_listener() -> socket.socket:
    """A socket that accepts TCP connections (kernel backlog) but never answers: reads time out."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s
