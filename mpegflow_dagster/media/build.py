"""Identify the FFmpeg build in use: version, configuration and linked libraries."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel


class FFmpegNotFound(RuntimeError):
    pass


class FFmpegBuild(BaseModel, frozen=True):
    """What `ffmpeg -version` says about a binary, reduced to what provenance needs."""

    path: str
    version: str  # e.g. "5.1.9-0+deb12u1" or "9.0.2-static"
    major: int
    configuration: str
    build_hash: (
        str  # sha256 of the version line + configuration: two builds with equal hashes encode alike
    )
    libraries: dict[str, str]  # libavcodec -> "59.37.100", ...

    @property
    def family(self) -> str:
        """Exit-status conventions changed in FFmpeg 7: callers classify by family."""
        return "ffmpeg7+" if self.major >= 7 else "ffmpeg<=6"


_INSTALL_HINT = (
    "Install FFmpeg (Debian/Ubuntu: `sudo apt-get install ffmpeg`; or run `make demo`, which "
    "installs it), or point MPEGFLOW_FFMPEG / MPEGFLOW_FFPROBE at the binaries."
)


def resolve_binary(name_or_path: str) -> str:
    """Absolute path of an executable given as a name on PATH or a path; raise with an install hint."""
    found = shutil.which(name_or_path)
    if found is None:
        raise FFmpegNotFound(
            f"`{name_or_path}` was not found or is not executable. {_INSTALL_HINT}"
        )
    return str(Path(found).resolve())


@functools.lru_cache(maxsize=8)
def detect_build(ffmpeg_path: str) -> FFmpegBuild:
    path = resolve_binary(ffmpeg_path)
    proc = subprocess.run(
        [path, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise FFmpegNotFound(
            f"`{path} -version` failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
        )
    out = proc.stdout
    first = out.splitlines()[0] if out else ""
    m = re.match(r"ffmpeg version (\S+)", first)
    if not m:
        raise FFmpegNotFound(f"`{path}` does not look like FFmpeg: {first!r}. {_INSTALL_HINT}")
    version = m.group(1)
    major_m = re.match(r"n?(\d+)", version)
    configuration = next(
        (
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("configuration:")
        ),
        "",
    )
    libraries = {
        lm.group(1): lm.group(2).replace(" ", "")
        for lm in re.finditer(r"^(lib\w+)\s+([\d.\s]+?)\s*/", out, re.MULTILINE)
    }
    return FFmpegBuild(
        path=path,
        version=version,
        major=int(major_m.group(1)) if major_m else 0,
        configuration=configuration,
        build_hash=hashlib.sha256(f"{first}\n{configuration}".encode()).hexdigest()[:16],
        libraries=libraries,
    )


@functools.lru_cache(maxsize=8)
def build_encoders(ffmpeg_path: str) -> frozenset[str]:
    """The encoders this FFmpeg build has (`ffmpeg -encoders`), e.g. libx264, libsvtav1."""
    path = resolve_binary(ffmpeg_path)
    proc = subprocess.run(
        [path, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
    )
    # lines like " V....D libx264   libx264 H.264 ...", after a legend that ends in "------"
    listing = proc.stdout.split("------", 1)[-1]
    return frozenset(m.group(1) for m in re.finditer(r"^\s*[VAS][.A-Z]{5}\s+(\S+)", listing, re.M))
