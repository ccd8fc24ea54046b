"""ffprobe into a typed model."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .build import resolve_binary
from .runner import spawn_args
from .safety import SOURCE_FORMATS, safe_input_args


class ProbeError(RuntimeError):
    """ffprobe could not read the file as media; `stderr_tail` is what it said."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class StreamInfo(BaseModel):
    index: int
    codec_type: str
    codec_name: Optional[str] = None
    profile: Optional[str] = None
    level: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    pix_fmt: Optional[str] = None
    color_transfer: Optional[str] = None  # e.g. smpte2084 (PQ), arib-std-b67 (HLG), bt709
    color_primaries: Optional[str] = None
    frame_rate: Optional[float] = None
    constant_frame_rate: Optional[str] = (
        None  # exact rate ("30/1") when every frame lasts the same, else None
    )
    bit_rate: Optional[int] = None
    sample_rate: Optional[int] = None
    channels: Optional[int] = None
    duration: Optional[float] = None
    language: Optional[str] = None  # the stream's tag as the container says it (often ISO 639-2)
    title: Optional[str] = None
    default: bool = False  # disposition: the stream a player picks first


HDR_TRANSFERS = ("smpte2084", "arib-std-b67")  # PQ, HLG
# Subtitle codecs by what FFmpeg can make of them: cues of text (into WebVTT), or pictures, which
# no encoder of FFmpeg 5.1 turns into text
TEXT_SUBTITLE_CODECS = frozenset({"subrip", "ass", "ssa", "webvtt", "mov_text", "text"})
BITMAP_SUBTITLE_CODECS = frozenset({"dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "xsub"})

Chromaticity = tuple[Fraction, Fraction]  # CIE 1931 x, y


class MasteringDisplay(BaseModel):
    """SMPTE ST 2086: the colour volume of the display the video was graded on, exactly as the
    stream states it (luminance in cd/m²)."""

    model_config = ConfigDict(frozen=True)

    red: Chromaticity
    green: Chromaticity
    blue: Chromaticity
    white_point: Chromaticity
    min_luminance: Fraction
    max_luminance: Fraction


class ContentLight(BaseModel):
    """CTA-861.3, in cd/m²: the brightest pixel (MaxCLL) and brightest frame average (MaxFALL)."""

    model_config = ConfigDict(frozen=True)

    max_cll: int
    max_fall: int


class Hdr10Metadata(BaseModel):
    """HDR10's static metadata: what a display needs to map the PQ signal to its own range."""

    model_config = ConfigDict(frozen=True)

    mastering_display: Optional[MasteringDisplay] = None
    content_light: Optional[ContentLight] = None


class MediaInfo(BaseModel):
    format_name: str
    duration: float
    size_bytes: int
    bit_rate: Optional[int] = None
    streams: list[StreamInfo]
    # of the first video stream, from its first frame (`probe(hdr10=True)`); left out of the JSON
    # when there is none, so a probe without it stays the same bytes
    hdr10: Optional[Hdr10Metadata] = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def video(self) -> Optional[StreamInfo]:
        return next((s for s in self.streams if s.codec_type == "video"), None)

    @property
    def hdr(self) -> bool:
        """A video in PQ or HLG (high dynamic range)."""
        return self.video is not None and self.video.color_transfer in HDR_TRANSFERS

    @property
    def audio(self) -> Optional[StreamInfo]:
        return next((s for s in self.streams if s.codec_type == "audio"), None)

    @property
    def audio_streams(self) -> list[StreamInfo]:
        return [s for s in self.streams if s.codec_type == "audio"]

    @property
    def default_audio(self) -> int:
        """Which audio stream a player picks first (0: the first): the first one flagged
        default, else the first."""
        return next((i for i, s in enumerate(self.audio_streams) if s.default), 0)

    @property
    def subtitles(self) -> list[StreamInfo]:
        return [s for s in self.streams if s.codec_type == "subtitle"]

    def summary(self) -> dict[str, object]:
        """Flat facts a video engineer reads first."""
        v, a = self.video, self.audio
        facts: dict[str, object] = {
            "duration_s": round(self.duration, 3),
            "container": self.format_name,
            "bitrate_kbps": round((self.bit_rate or 0) / 1000),
        }
        if v:
            facts.update(
                resolution=f"{v.width}x{v.height}",
                video_codec=f"{v.codec_name} {v.profile or ''}".strip(),
                frame_rate=round(v.frame_rate or 0, 3),
            )
        if a:
            facts.update(audio_codec=a.codec_name, audio_channels=a.channels)
        return facts


def _num(value: object, cast: type = int) -> Any:  # an int or float (as `cast`), or None
    try:
        return cast(value) if value not in (None, "N/A", "") else None
    except (TypeError, ValueError):
        return None


def _rate(value: Optional[str]) -> Optional[float]:
    if not value or value in ("0/0", "N/A"):
        return None
    try:
        return float(Fraction(value))
    except (ValueError, ZeroDivisionError):
        return None


def _constant_rate(stream: dict) -> Optional[str]:
    """The stream's frame rate as an exact fraction when its average equals its base rate (the
    container declares one duration for every frame), else None."""
    base, average = _rate(stream.get("r_frame_rate")), _rate(stream.get("avg_frame_rate"))
    return str(Fraction(stream["r_frame_rate"])) if base and base == average else None


def parse_probe(data: dict) -> MediaInfo:
    fmt = data.get("format") or {}
    streams = [
        StreamInfo(
            index=s["index"],
            codec_type=s.get("codec_type", "unknown"),
            codec_name=s.get("codec_name"),
            profile=s.get("profile"),
            level=_num(s.get("level")),
            width=_num(s.get("width")),
            height=_num(s.get("height")),
            pix_fmt=s.get("pix_fmt"),
            color_transfer=s.get("color_transfer"),
            color_primaries=s.get("color_primaries"),
            frame_rate=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")),
            constant_frame_rate=_constant_rate(s),
            bit_rate=_num(s.get("bit_rate")),
            sample_rate=_num(s.get("sample_rate")),
            channels=_num(s.get("channels")),
            duration=_num(s.get("duration"), float),
            language=(s.get("tags") or {}).get("language"),
            title=(s.get("tags") or {}).get("title"),
            default=bool((s.get("disposition") or {}).get("default")),
        )
        for s in data.get("streams", [])
    ]
    return MediaInfo(
        format_name=fmt.get("format_name", "unknown"),
        duration=_num(fmt.get("duration"), float) or 0.0,
        size_bytes=_num(fmt.get("size")) or 0,
        bit_rate=_num(fmt.get("bit_rate")),
        streams=streams,
    )


_MASTERING = "Mastering display metadata"
_CONTENT_LIGHT = "Content light level metadata"


def parse_hdr10(data: dict) -> Optional[Hdr10Metadata]:
    """The HDR10 side data of the first frame in ffprobe's `-show_frames` JSON."""
    frames = data.get("frames") or [{}]
    side = {d.get("side_data_type"): d for d in frames[0].get("side_data_list", [])}
    mastering = None
    if md := side.get(_MASTERING):
        points = ("red", "green", "blue", "white_point")
        fields = {c: (md.get(f"{c}_x"), md.get(f"{c}_y")) for c in points}
        fields.update({k: md.get(k) for k in ("min_luminance", "max_luminance")})
        try:
            mastering = MasteringDisplay.model_validate(fields)
        except ValidationError:  # a part unset ("0/0", absent): no encoder takes half a display
            mastering = None
    light = None
    if cl := side.get(_CONTENT_LIGHT):
        light = ContentLight(max_cll=cl["max_content"], max_fall=cl["max_average"])
    if mastering is None and light is None:
        return None
    return Hdr10Metadata(mastering_display=mastering, content_light=light)


def probe(
    path: Path,
    ffprobe: str = "ffprobe",
    timeout_s: float = 60.0,
    formats: str = SOURCE_FORMATS,
    *,
    hdr10: bool = False,
) -> MediaInfo:
    """Probe a local file with the untrusted-input restrictions (only `formats` demuxers, the
    pixel cap). The path is passed with the `file:` protocol so names like `-x.mp4` or
    `concat:a|b` are read as plain files. `hdr10`: of a PQ or HLG video also read the static
    metadata on its first frame (a second ffprobe run, which decodes that frame)."""
    info = parse_probe(_ffprobe(path, ffprobe, timeout_s, formats, "-show_format", "-show_streams"))
    if hdr10 and info.hdr:
        first_frame = ("-read_intervals", "%+#1", "-select_streams", "v:0", "-show_frames")
        # `-show_frames` too: `-show_entries` alone prints each side data entry empty
        only_side_data = ("-show_entries", "frame=side_data_list")
        frames = _ffprobe(path, ffprobe, timeout_s, formats, *first_frame, *only_side_data)
        info.hdr10 = parse_hdr10(frames)
    return info


def _ffprobe(path: Path, ffprobe: str, timeout_s: float, formats: str, *shown: str) -> dict:
    argv = [
        resolve_binary(ffprobe),
        "-v",
        "error",
        "-hide_banner",
        *safe_input_args(formats),
        "-print_format",
        "json",
        *shown,
        f"file:{Path(path).resolve()}",
    ]
    try:
        spawned, preexec = spawn_args(argv)
        proc = subprocess.run(
            spawned,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"ffprobe did not finish within {timeout_s:.0f}s on {path}") from exc
    if proc.returncode != 0:
        raise ProbeError(
            f"ffprobe cannot read {Path(path).name}: {proc.stderr.strip()[-500:] or 'no output'}",
            stderr_tail=proc.stderr[-4000:],
        )
    return json.loads(proc.stdout or "{}")
