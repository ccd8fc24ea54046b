"""What an untrusted source may make FFmpeg do: read one local file, as a real media container."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# Demuxers of real media containers. Playlist and list demuxers (hls, concat, dash, image2 with
# patterns...) open other files named inside the input, so an untrusted source never gets them.
SOURCE_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,mxf,avi,flv,mpeg,mpegvideo,h264,hevc,wav,ogg,mp3,aac"
# Decoders refuse pictures above this before allocating them (a tiny file can declare 60000x60000).
MAX_PIXELS = 8192 * 8192
SAFE_INPUT: dict[str, object] = {"protocol_whitelist": "file", "format_whitelist": SOURCE_FORMATS, "max_pixels": MAX_PIXELS}

_LIST_SIGNATURES = (b"#EXTM3U", b"ffconcat", b"#EXTINF", b"<MPD", b"<?xml")


def safe_input_args(formats: str = SOURCE_FORMATS) -> list[str]:
    """SAFE_INPUT as command-line options (for ffprobe, which ffmpeg-python does not build)."""
    options = {**SAFE_INPUT, "format_whitelist": formats}
    return [arg for name, value in options.items() for arg in (f"-{name}", str(value))]


def playlist_signature(path: Path) -> Optional[str]:
    """The marker that shows a file is a playlist or file list, whatever its extension, else None."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    for sig in _LIST_SIGNATURES:
        if head.startswith(sig):
            return sig.decode()
    if head.startswith(b"file ") or b"\nfile '" in head:
        return "concat list"
    return None
