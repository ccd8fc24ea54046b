"""Verify an output after FFmpeg exits 0, because exit 0 is not success.

FFmpeg conceals decode errors, encodes whatever part of a truncated input it could read, and
(5.1) even exits 0 when writing the trailer failed on a full disk. The output's probe and what
FFmpeg said (`RunResult.messages`: the stderr tail without banners and file names, so that a
name like `anti-corruption-talk.mp4` is not read as damage) show what the exit status hides.
"""

from __future__ import annotations

import re
from typing import Literal

from .probe import MediaInfo

Policy = Literal["strict", "tolerant"]

# (pattern, fatal). Fatal signatures mean data is missing from the output and fail both
# policies; the others mean the decoder concealed damage, which `tolerant` accepts.
STDERR_SIGNATURES: tuple[tuple[re.Pattern[str], bool], ...] = tuple(
    (re.compile(pattern), fatal)
    for pattern, fatal in (
        (r"moov atom not found", True),
        (r"partial file", True),
        (r"Error (?:writing trailer|closing file)", True),
        (r"Invalid NAL unit", False),
        (r"[Ee]rror while decoding|Decoding error", False),
        (r"Error splitting the input into NAL units", False),
        (r"corrupt", False),  # "Packet corrupt", "corrupt decoded frame"
        (r"concealing", False),
        (r"Invalid data found when processing input", False),
    )
)

# Allowed |output - source| duration difference: the larger of an absolute and a relative
# bound, so short clips are not failed on one frame of rounding.
_DURATION_TOLERANCE: dict[str, tuple[float, float]] = {
    "strict": (0.5, 0.02),
    "tolerant": (0.5, 0.10),
}


class OutputRejected(Exception):
    """FFmpeg exited 0 but the output fails verification; retrying the same input will not help."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("output failed verification: " + "; ".join(problems))


def stderr_problems(messages: str, policy: Policy) -> list[str]:
    """Corruption signatures in what FFmpeg said (`RunResult.messages`), one problem per
    signature (first line shown)."""
    problems = []
    for pattern, fatal in STDERR_SIGNATURES:
        if policy == "tolerant" and not fatal:
            continue
        line = next((ln.strip() for ln in messages.splitlines() if pattern.search(ln)), None)
        if line is not None:
            problems.append(f"stderr shows damage ({pattern.pattern}): {line}")
    return problems


def verify_output(
    output: MediaInfo,
    source: MediaInfo,
    *,
    expect_audio: bool,
    policy: Policy,
    messages: str,
    expect_video: bool = True,
) -> list[str]:
    """Problems with an encoded output compared with its source; an empty list means OK."""
    problems = []
    if output.size_bytes <= 0 or output.duration <= 0:
        problems.append(f"output is empty ({output.size_bytes} bytes, {output.duration:.3f} s)")
    video = output.video
    if expect_video and (video is None or not video.width or not video.height):
        problems.append("output has no video stream")
    if expect_audio and source.audio is not None and output.audio is None:
        problems.append("source has audio but the output has none")
    absolute, relative = _DURATION_TOLERANCE[policy]
    tolerance = max(absolute, relative * source.duration)
    if abs(output.duration - source.duration) > tolerance:
        problems.append(
            f"output lasts {output.duration:.3f} s but the source {source.duration:.3f} s "
            f"(tolerance {tolerance:.3f} s, {policy})"
        )
    problems.extend(stderr_problems(messages, policy))
    return problems
