"""FFmpeg argv for each stage, built with ffmpeg-python (never a shell string).

Every input is opened with the `file:` protocol and only that protocol is allowed, so a file
named `-x.mp4` or `concat:a|b` is read as a plain local file and nothing else is fetched.
Outputs are written with bit-exact flags and without metadata so the same build gives the same
bytes twice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import ffmpeg

from .safety import SAFE_INPUT, SOURCE_FORMATS

_BITEXACT = {"fflags": "+bitexact", "flags:v": "+bitexact", "flags:a": "+bitexact", "map_metadata": "-1", "map_chapters": "-1"}

def _input(path: Path, *, formats: str = SOURCE_FORMATS, **options: object):
    return ffmpeg.input(f"file:{Path(path).resolve()}", **{**SAFE_INPUT, "format_whitelist": formats}, **options)


def _output_name(path: Path) -> str:
    return f"file:{Path(path).resolve()}"


def even(n: float) -> int:
    return max(2, int(round(n / 2.0)) * 2)


def rendition_height(target: int, source: int, upscale: bool) -> int:
    return even(target if upscale else min(target, source))


def encode_rendition_args(
    src: Path,
    out: Path,
    *,
    height: int,
    video_bitrate_kbps: int,
    maxrate_factor: float,
    profile: str,
    level: str,
    audio_bitrate_kbps: int,
    speed: str,
    tune: Optional[str],
    pix_fmt: str,
    x264_params: dict[str, str],
    audio_sample_rate: int,
    audio_channels: int,
    gop_s: float,
    frame_rate: float,
    has_audio: bool,
    threads: int,
    subtitles: Optional[str] = None,
    subtitle_font_size: int = 24,
) -> list[str]:
    """H.264/AAC MP4 with keyframes forced every `gop_s` seconds of source time, so every rendition
    of the same source has its keyframes (and so its HLS segment boundaries) at the same times.
    `subtitles` is a file name relative to the working directory FFmpeg runs in (filter-path
    escaping is avoided by running in a scratch dir holding a copy named plainly)."""
    inp = _input(src)
    video = inp["v:0"]
    if subtitles:
        # Burn in at source resolution before scaling, so text is sharp at every size.
        video = video.filter("subtitles", filename=subtitles, force_style=f"FontSize={subtitle_font_size}")
    video = video.filter("scale", -2, height, flags="bicubic").filter("format", pix_fmt)
    maxrate = int(video_bitrate_kbps * maxrate_factor)
    # x264 must not add keyframes of its own (scene cuts, keyint) or renditions drift apart.
    gop_frames = max(1, math.ceil(gop_s * max(frame_rate, 1.0)))
    # Frame threads with VBV make x264's output depend on thread timing (measured: three runs,
    # three hashes); sliced threads are deterministic for a given thread count.
    params = {"scenecut": "0", "open-gop": "0", "sliced-threads": "1", **x264_params}
    vopts: dict[str, object] = {
        "c:v": "libx264", "preset": speed, "profile:v": profile, "level:v": level,
        "b:v": f"{video_bitrate_kbps}k", "maxrate:v": f"{maxrate}k", "bufsize:v": f"{2 * maxrate}k",
        "g": 2 * gop_frames, "keyint_min": gop_frames, "sc_threshold": 0, "forced-idr": 1,
        "force_key_frames": f"expr:gte(t,n_forced*{gop_s:g})",
        "x264-params": ":".join(f"{k}={v}" for k, v in sorted(params.items())),
        "threads": threads,
    }
    if tune:
        vopts["tune"] = tune
    streams = [video]
    if has_audio:
        streams.append(inp["a:0"])
        vopts.update({"c:a": "aac", "b:a": f"{audio_bitrate_kbps}k", "ar": audio_sample_rate, "ac": audio_channels})
    return (
        ffmpeg.output(*streams, _output_name(out), movflags="+faststart", f="mp4", **vopts, **_BITEXACT)
        .get_args()
    )


def thumbnails_args(src: Path, out_dir: Path, *, interval_s: float, width: int, quality: int, threads: int) -> list[str]:
    """One JPEG for each of t = 0, interval, 2*interval, ... < duration (the first frame at or after
    each mark, so there are ceil(duration / interval)), named 00001.jpg, 00002.jpg, ...

    `select` against the frame count does not drift, unlike `fps=1/N`, which also drops the
    last mark when it falls within half an interval of the end."""
    video = _input(src)["v:0"].filter("select", f"gte(t,{interval_s:g}*selected_n)").filter("scale", width, -2)
    return (
        ffmpeg.output(video, _output_name(Path(out_dir) / "%05d.jpg"), f="image2", fps_mode="vfr",
                      **{"q:v": quality}, threads=threads, **_BITEXACT)
        .get_args()
    )


def sprite_args(thumb_dir: Path, out: Path, *, columns: int, rows: int, tile_width: int, quality: int) -> list[str]:
    """Tile the numbered thumbnails into one sprite sheet, row by row."""
    tiles = (
        _input(Path(thumb_dir) / "%05d.jpg", formats="image2", f="image2", start_number=1)
        .filter("scale", tile_width, -2)
        .filter("tile", f"{columns}x{rows}")
    )
    return ffmpeg.output(tiles, _output_name(out), vframes=1, f="image2", update=1, **{"q:v": quality}, **_BITEXACT).get_args()


def hls_variant_args(src: Path, out_dir: Path, *, segment_s: int, segment_type: str) -> list[str]:
    """Repackage one encoded rendition as an HLS VOD variant; no re-encode, cuts at its keyframes."""
    out_dir = Path(out_dir).resolve()
    ext = "m4s" if segment_type == "fmp4" else "ts"
    return (
        ffmpeg.output(
            _input(src, formats="mov,mp4"), _output_name(out_dir / "index.m3u8"), c="copy", f="hls",
            hls_time=segment_s, hls_playlist_type="vod", hls_segment_type=segment_type,
            hls_flags="independent_segments", hls_segment_filename=str(out_dir / f"seg_%05d.{ext}"),
            **_BITEXACT,
        ).get_args()
    )
