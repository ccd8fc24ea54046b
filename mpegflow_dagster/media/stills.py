"""Preview pictures for the UI: which frame of a video to show, and how small (no Dagster).

A preview is display only: it is written beside an artifact, never inside it, by an FFmpeg run
that is no part of the artifact's recipe or provenance (`stages.toolkit.Tools.picture`), so it
cannot change an artifact's bytes, sha256 or recipe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from . import commands
from .safety import SOURCE_FORMATS

WIDTH = 320  # a frame: a few KB, legible in the metadata table
SPRITE_WIDTH = 640  # the sprite sheet: a strip of tiles, so wider
QUALITY = 6  # JPEG q:v (2 best .. 31 worst)

# SRT `00:00:01,000 --> 00:00:02,500`, WebVTT `00:01.000 --> 00:02.500` (hours optional).
_CUE = re.compile(
    r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})\s*-->\s*(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})"
)


def frame_args(
    src: Path,
    out: Path,
    *,
    at_s: float,
    video_width: Optional[int],
    width: int = WIDTH,
    formats: str = SOURCE_FORMATS,
) -> list[str]:
    """FFmpeg argv writing the frame of `src` at `at_s` to the JPEG `out`, `width` px wide (never
    wider than the video, `video_width`)."""
    return commands.still_args(
        src,
        out,
        at_s=at_s,
        width=commands.even(min(width, video_width or width)),
        quality=QUALITY,
        formats=formats,
    )


def shrunk_args(
    image: Path, out: Path, *, image_width: int, width: int = SPRITE_WIDTH
) -> list[str]:
    """FFmpeg argv writing the JPEG `image` (e.g. a sprite sheet) scaled to at most `width` px."""
    return frame_args(image, out, at_s=0, video_width=image_width, width=width, formats="image2")


def middle(duration_s: float) -> float:
    return max(0.0, duration_s / 2)


def caption_moment(sidecar: str, duration_s: float) -> float:
    """A time at which a caption of the SRT or WebVTT text `sidecar` is shown: the middle of the cue
    nearest the middle of the video (the video's middle if no cue starts within it)."""
    cues = []
    for m in _CUE.finditer(sidecar):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g or 0) for g in m.groups())
        start = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000
        end = h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        if start < duration_s and end > start:
            cues.append((start + min(end, duration_s)) / 2)
    return min(cues, key=lambda t: abs(t - middle(duration_s)), default=middle(duration_s))
