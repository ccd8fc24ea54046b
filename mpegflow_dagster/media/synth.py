"""Synthetic test clips from FFmpeg's lavfi sources (demo, tests, benchmarks)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import ffmpeg

from .runner import run_ffmpeg


def make_clip(
    out: Path,
    *,
    duration_s: float = 6.0,
    width: int = 1920,
    height: int = 1080,
    fps: int | str = 30,
    audio: bool = True,
    noisy: bool = False,
    ffmpeg_bin: str = "ffmpeg",
) -> Path:
    """An H.264/AAC MP4 test pattern with a moving clock; `noisy` adds grain (hard to encode).
    `fps` may be a rational such as "30000/1001"."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    video = ffmpeg.input(
        f"testsrc2=size={width}x{height}:rate={fps}:duration={duration_s:g}", f="lavfi"
    )["v"]
    if noisy:
        video = video.filter("noise", alls=40, allf="t+u")
    streams = [video]
    if audio:
        streams.append(
            ffmpeg.input(
                f"sine=frequency=440:sample_rate=48000:duration={duration_s:g}", f="lavfi"
            )["a"]
        )
    args = ffmpeg.output(
        *streams,
        str(out),
        **{
            "c:v": "libx264",
            "preset": "ultrafast",
            "pix_fmt": "yuv420p",
            "g": round(Fraction(fps)),
        },
        **({"c:a": "aac", "b:a": "128k"} if audio else {}),
    ).get_args()
    run_ffmpeg(args, ffmpeg=ffmpeg_bin, duration_s=duration_s)
    return out


def write_srt(
    out: Path, duration_s: float, text: str = "MPEGFLOW CAPTION", every_s: float = 2.0
) -> Path:
    """A sidecar .srt with one cue every `every_s` seconds (numbered, so frames differ)."""

    def ts(t: float) -> str:
        ms = int(round(t * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    cues = []
    t, n = 0.0, 1
    while t < duration_s:
        end = min(duration_s, t + every_s)
        cues.append(f"{n}\n{ts(t)} --> {ts(end)}\n{text} {n}\n")
        t, n = end, n + 1
    Path(out).write_text("\n".join(cues), encoding="utf-8")
    return Path(out)


def sample_with_captions(
    directory: Path, name: str = "sample", duration_s: float = 12.0, height: int = 1080
) -> Path:
    """The demo's source: a 16:9 clip with audio and a `.srt` beside it."""
    width = (height * 16 // 9) // 2 * 2
    clip = make_clip(
        Path(directory) / f"{name}.mp4", duration_s=duration_s, width=width, height=height
    )
    write_srt(clip.with_suffix(".srt"), duration_s)
    return clip
