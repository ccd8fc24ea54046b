"""Synthetic test clips from FFmpeg's lavfi sources (demo, tests, benchmarks)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import ffmpeg

from .commands import VideoOutput
from .languages import bcp47, iso639_2
from .runner import run_ffmpeg

PINK_LUFS = -18.1  # the integrated loudness of `anoisesrc=c=pink:a=0.5` in both stereo channels


def make_clip(
    out: Path,
    *,
    duration_s: float = 6.0,
    width: int = 1920,
    height: int = 1080,
    fps: int | str = 30,
    audio: bool = True,
    noisy: bool = False,
    languages: Sequence[str] = (),
    default_language: Optional[str] = None,
    black_s: Optional[tuple[float, float]] = None,
    silence_s: Optional[tuple[float, float]] = None,
    loud_db: Optional[float] = None,
    ffmpeg_bin: str = "ffmpeg",
) -> Path:
    """An H.264/AAC MP4 test pattern with a moving clock; `noisy` adds grain (hard to encode).
    `fps` may be a rational such as "30000/1001". `languages`: one audio stream per language
    instead of one (each its own tone: 440, 660, 880 Hz...), tagged, `default_language` (else
    the first) flagged default. For source QC: `black_s` (start, end) black video, `silence_s`
    silent audio, `loud_db`: pink noise (a tone's loudness range is 0, which loudnorm will not
    normalize linearly) that many LU above -23 LUFS instead of the tone."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    video = ffmpeg.input(
        f"testsrc2=size={width}x{height}:rate={fps}:duration={duration_s:g}", f="lavfi"
    )["v"]
    if noisy:
        video = video.filter("noise", alls=40, allf="t+u")
    if black_s is not None:
        video = video.filter(
            "drawbox", color="black", t="fill", enable=f"gte(t,{black_s[0]:g})*lt(t,{black_s[1]:g})"
        )
    streams = [video]
    tags: dict[str, str] = {}
    for i, language in enumerate((languages or [None]) if audio else []):
        tone = f"sine=frequency={220 * (i + 2)}:sample_rate=48000:duration={duration_s:g}"
        if loud_db is not None:  # pink noise of amplitude 0.5, in stereo, measures PINK_LUFS
            amplitude = 0.5 * 10 ** ((-23 + loud_db - PINK_LUFS) / 20)
            tone = f"anoisesrc=c=pink:r=48000:a={amplitude:.4f}:d={duration_s:g}:seed=7"
        sound = ffmpeg.input(tone, f="lavfi")["a"]
        if loud_db is not None:  # in both channels of stereo: 3 LU louder, unclipped
            both = sound.filter_multi_output("asplit")
            sound = ffmpeg.filter([both.stream(0), both.stream(1)], "amerge", inputs=2)
        if silence_s is not None:
            sound = sound.filter(
                "volume", 0, enable=f"gte(t,{silence_s[0]:g})*lt(t,{silence_s[1]:g})"
            )
        streams.append(sound)
        if language:
            default = language == (default_language or languages[0])
            tags[f"metadata:s:a:{i}"] = f"language={iso639_2(bcp47(language))}"
            tags[f"disposition:a:{i}"] = "default" if default else "0"
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
        **tags,
    ).get_args()
    run_ffmpeg(args, ffmpeg=ffmpeg_bin, duration_s=duration_s)
    return out


def x264_rung(height: int, video_bitrate_kbps: int, **changes: object) -> VideoOutput:
    """An H.264/AAC rendition's settings, as the x264-vod preset's (veryfast, 2 s GOP, 30 fps,
    128 kb/s stereo AAC), with `changes`: for tests and benchmarks that encode without a spec."""
    rung = VideoOutput(
        encoder="libx264",
        height=height,
        video_bitrate_kbps=video_bitrate_kbps,
        maxrate_factor=1.5,
        profile=None,
        level=None,
        crf=None,
        audio_bitrate_kbps=128,
        speed="veryfast",
        tune=None,
        pix_fmt="yuv420p",
        encoder_params=(),
        audio_sample_rate=48000,
        audio_channels=2,
        gop_s=2.0,
        frame_rate=30.0,
        has_audio=True,
    )
    return dataclasses.replace(rung, **changes)  # pyright: ignore[reportArgumentType]


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
    directory: Path,
    name: str = "sample",
    duration_s: float = 12.0,
    height: int = 1080,
    languages: Sequence[str] = (),
) -> Path:
    """The demo's source: a 16:9 clip with audio and a `.srt` beside it; with `languages`, an
    audio stream and a subtitle sidecar (`<name>.<language>.srt`) per language."""
    width = (height * 16 // 9) // 2 * 2
    clip = make_clip(
        Path(directory) / f"{name}.mp4",
        duration_s=duration_s,
        width=width,
        height=height,
        languages=languages,
    )
    write_srt(clip.with_suffix(".srt"), duration_s)
    for language in languages:
        write_srt(clip.with_suffix(f".{language}.srt"), duration_s, text=language.upper())
    return clip
