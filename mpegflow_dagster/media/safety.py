"""What an untrusted source may do: be read as one regular file of its own directory, and make
FFmpeg read that one local file as a real media container."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional

# Demuxers of real media containers. Playlist and list demuxers (hls, concat, dash, image2 with
# patterns...) open other files named inside the input, so an untrusted source never gets them.
SOURCE_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,mxf,avi,flv,mpeg,mpegvideo,h264,hevc,wav,ogg,mp3,aac"
# Decoders refuse pictures above this before allocating them (a tiny file can declare 60000x60000).
MAX_PIXELS = 8192 * 8192
SAFE_INPUT: dict[str, object] = {
    "protocol_whitelist": "file",
    "format_whitelist": SOURCE_FORMATS,
    "max_pixels": MAX_PIXELS,
}

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


class RefusedFile(OSError):
    """A source or sidecar that must not be read: a symbolic link out of its directory (reading
    it could copy any file of the host into storage: `security`), or not a regular file (a
    directory, a FIFO, a device: `permanent`). No retry changes either."""

    def __init__(self, message: str, reason: str, failure_class: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.failure_class = failure_class


_MAX_LINKS = 8


def open_in_directory(path: Path, what: str = "source") -> int:
    """A read-only descriptor of `path`, opened without following a symbolic link out of its
    directory: a link to a file beside it is followed (a few hops at most); a link anywhere else,
    or anything but a regular file, raises RefusedFile naming `what` and the path. The directory
    itself is taken as named (where a deployment's inbox lives is its own choice)."""
    path = Path(path).absolute()
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        name = path.name
        for _ in range(_MAX_LINKS):
            try:
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=directory,
                )
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                target = os.readlink(name, dir_fd=directory)
                if "/" in target or target in (".", ".."):
                    raise RefusedFile(
                        f"{what} {path} is a symbolic link to {target}, outside {path.parent}: refused",
                        "security.symlink_outside",
                        "security",
                    ) from None
                name = target
                continue
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                os.close(fd)
                kind = (
                    "a directory"
                    if stat.S_ISDIR(mode)
                    else "a FIFO"
                    if stat.S_ISFIFO(mode)
                    else "not a regular file"
                )
                raise RefusedFile(
                    f"{what} {path} is {kind}: refused", "input.not_a_regular_file", "permanent"
                )
            return fd
        raise RefusedFile(
            f"{what} {path}: more than {_MAX_LINKS} symbolic links: refused",
            "security.symlink_outside",
            "security",
        )
    finally:
        os.close(directory)
