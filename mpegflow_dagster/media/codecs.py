"""The video encoders a preset can name, and what each needs so that every rung of every codec
switches cleanly and encodes the same bytes twice:

- keyframes only at the forced source times (`force_key_frames`), closed GOPs, no keyframes of
  the encoder's own choosing (scene cuts, its own keyint);
- one thread (`threads=1`) where the encoder is otherwise not reproducible;
- what it writes about its own version, for provenance.

Measured on Debian 12's FFmpeg 5.1 (x264 core 164, x265 3.5, SVT-AV1 1.4.1): x265 gives the same
bytes with `pools=none:frame-threads=1`, SVT-AV1 with `lp=1`. SVT-AV1 1.4 forces keyframes only
in CRF mode, so its rungs are capped CRF: the preset's `crf`, with the rung's maxrate as the cap.
FFmpeg 5.1 hands neither encoder the source frames' HDR10 side data, so a source's mastering
display and content light levels are given to them as parameters (`hdr10`).
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

from .probe import Hdr10Metadata

Encoder = Literal["libx264", "libx265", "libsvtav1"]

_X26X_SPEEDS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


@dataclass(frozen=True)
class Codec:
    encoder: Encoder
    family: str  # ffprobe's codec_name of what it writes
    label: str  # as people say it
    profiles: tuple[str, ...]
    default_profile: str
    speeds: tuple[str, ...]
    takes_level: bool
    takes_crf: bool
    # encoder CPU against libx264, each at its shipped preset, one thread, 720p (bench/codecs.py,
    # docs/codecs.md): spreads rungs over lanes of similar cost
    relative_cost: float
    mpegts: bool  # hls.js and Apple play it from MPEG-TS segments
    hdr: bool = False  # carries PQ/HLG in a 10-bit pix_fmt (else HDR sources are tone-mapped)
    max_cap_kbps: Optional[int] = None  # the highest maxrate the encoder takes


CODECS: dict[str, Codec] = {
    c.encoder: c
    for c in (
        Codec(
            "libx264",
            "h264",
            "H.264",
            ("baseline", "main", "high"),
            "high",
            _X26X_SPEEDS,
            takes_level=True,
            takes_crf=False,
            relative_cost=1.0,
            mpegts=True,
        ),
        Codec(
            "libx265",
            "hevc",
            "HEVC",
            ("main", "main10"),
            "main",
            _X26X_SPEEDS,
            takes_level=True,
            takes_crf=False,
            relative_cost=3.3,
            mpegts=False,  # HLS carries HEVC in fMP4 (Apple's authoring spec, hls.js)
            hdr=True,
        ),
        Codec(
            "libsvtav1",
            "av1",
            "AV1",
            ("main",),
            "main",
            tuple(str(p) for p in range(14)),
            takes_level=False,  # SVT-AV1 picks the level from size and rate
            takes_crf=True,
            relative_cost=1.8,
            mpegts=False,  # no AV1 mapping for MPEG-TS in HLS
            hdr=True,
            max_cap_kbps=100_000,  # SVT-AV1 1.4
        ),
    )
}

X264_DEFAULT_LEVEL = "4.0"


def codec(encoder: str) -> Codec:
    try:
        return CODECS[encoder]
    except KeyError:
        raise ValueError(
            f"unknown encoder {encoder!r}: a preset names one of {', '.join(CODECS)}"
        ) from None


def video_options(
    encoder: str,
    *,
    speed: str,
    profile: Optional[str],
    level: Optional[str],
    bitrate_kbps: int,
    maxrate_kbps: int,
    crf: Optional[int],
    gop_frames: int,
    keyframes: str,
    params: Sequence[tuple[str, str]],
    threads: int,
    hdr10: Optional[Hdr10Metadata] = None,
) -> dict[str, object]:
    """The output options of one video stream: `keyframes` is the force_key_frames expression
    that puts a keyframe on each mark; the encoder's own keyframe cadence (`g` twice the marks'
    spacing) is never reached. `hdr10`: the source's static HDR metadata, for a rung that keeps
    its PQ (HEVC and AV1 only; H.264 rungs are tone-mapped)."""
    forced = {
        "g": 2 * gop_frames,
        "force_key_frames": f"expr:{keyframes}",
        "threads": threads,
    }
    if encoder == "libx264":
        return {
            "c:v": "libx264",
            "preset": speed,
            "profile:v": profile or "high",
            "level:v": level or X264_DEFAULT_LEVEL,
            **_vbv(bitrate_kbps, maxrate_kbps),
            **forced,
            "keyint_min": gop_frames,
            "sc_threshold": 0,
            "forced-idr": 1,
            # Only `threads=1` gives the same bytes every time: with more threads x264's rate
            # control reads how far the other threads got whenever maxrate binds (measured on a
            # noisy 60 s 1080p source: frame and sliced threads both gave a different file each run).
            "x264-params": _params({"scenecut": "0", "open-gop": "0"}, params),
        }
    if encoder == "libx265":
        own = {"scenecut": "0", "open-gop": "0", "log-level": "error"}
        if level:
            own["level-idc"] = level
        if threads == 1:  # x265's thread pool otherwise runs wavefronts and frames side by side
            own.update({"pools": "none", "frame-threads": "1"})
        if hdr10:
            own.update(hdr10_params(encoder, hdr10))
        return {
            "c:v": "libx265",
            "preset": speed,
            "profile:v": profile or "main",
            **_vbv(bitrate_kbps, maxrate_kbps),
            **forced,
            "keyint_min": gop_frames,
            "forced-idr": 1,
            "tag:v": "hvc1",  # parameter sets in the sample entry: what Apple's players require
            "x265-params": _params(own, params),
        }
    if encoder == "libsvtav1":
        own = {"scd": "0", "irefresh-type": "2", "enable-force-key-frames": "1"}
        if threads == 1:
            own["lp"] = "1"
        if hdr10:
            own.update(hdr10_params(encoder, hdr10))
        return {
            "c:v": "libsvtav1",
            "preset": int(speed),
            "crf": crf,
            "maxrate:v": f"{maxrate_kbps}k",
            **forced,
            "svtav1-params": _params(own, params),
        }
    raise ValueError(f"unknown encoder {encoder!r}")


def _vbv(bitrate_kbps: int, maxrate_kbps: int) -> dict[str, str]:
    return {
        "b:v": f"{bitrate_kbps}k",
        "maxrate:v": f"{maxrate_kbps}k",
        "bufsize:v": f"{2 * maxrate_kbps}k",
    }


def hdr10_params(encoder: str, hdr10: Hdr10Metadata) -> dict[str, str]:
    """The x265-params or svtav1-params that write `hdr10` into the stream: a mastering display
    as `G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)`, content light as `MaxCLL,MaxFALL`. x265 3.5 writes
    both SEI messages from these keys alone (no `hdr10=1` needed). SVT-AV1 1.4.1 reads
    decimals; x265's integers it takes silently as out of range (chromaticities 65535/65536)."""
    x265 = encoder == "libx265"

    def xy(v: Fraction) -> str:  # x265: integers in ST 2086's unit, 0.00002
        return str(round(v * 50_000)) if x265 else str(float(v))

    def nits(v: Fraction) -> str:  # x265: in units of 0.0001 cd/m²
        return str(round(v * 10_000)) if x265 else str(float(v))

    params = {}
    if md := hdr10.mastering_display:
        points = (("G", md.green), ("B", md.blue), ("R", md.red), ("WP", md.white_point))
        params["master-display" if x265 else "mastering-display"] = (
            "".join(f"{name}({xy(x)},{xy(y)})" for name, (x, y) in points)
            + f"L({nits(md.max_luminance)},{nits(md.min_luminance)})"
        )
    if cl := hdr10.content_light:
        params["max-cll" if x265 else "content-light"] = f"{cl.max_cll},{cl.max_fall}"
    return params


def _params(own: Mapping[str, str], extra: Sequence[tuple[str, str]]) -> str:
    """`key=value:...` with the preset's own pairs over ours, sorted (the same argv every time)."""
    return ":".join(f"{k}={v}" for k, v in sorted({**own, **dict(extra)}.items()))


_SEI = {
    "x264": re.compile(rb"x264 - core (\d+)(?: r(\d+))?"),
    "x265": re.compile(rb"x265 \(build (\d+)\) - ([0-9][^:\s]*)"),
}


def encoder_versions(path: Path, ffmpeg: str, scan_bytes: int = 4 << 20) -> dict[str, str]:
    """The encoder that wrote the video of one of our MP4s, as it names itself: x264's and x265's
    SEI messages in the stream (e.g. {"x264": "core 164 r3095"}); an AV1 stream carries none, so
    for one (its av1C box in the moov, which our faststart files hold up front) the SVT-AV1 this
    `ffmpeg` links."""
    if not Path(path).is_file():
        return {}
    with open(path, "rb") as fh:
        head = fh.read(scan_bytes)
    found = {}
    if m := _SEI["x264"].search(head):
        found["x264"] = f"core {m.group(1).decode()}" + (
            f" r{m.group(2).decode()}" if m.group(2) else ""
        )
    if m := _SEI["x265"].search(head):
        found["x265"] = f"{m.group(2).decode()} (build {m.group(1).decode()})"
    if b"av1C" in head and (svt := svt_av1_version(ffmpeg)):
        found["svt-av1"] = svt
    return found


@functools.lru_cache(maxsize=8)
def svt_av1_version(ffmpeg: str) -> Optional[str]:
    """The SVT-AV1 library this FFmpeg links, as it names itself when it opens (`SVT-AV1 Encoder
    Lib v1.4.1`): an AV1 stream does not say who wrote it. One 64x64 frame, ~0.1 s, once."""
    proc = subprocess.run(
        [ffmpeg, "-hide_banner", "-nostdin", "-f", "lavfi", "-i", "color=size=64x64:duration=0.04"]
        + ["-frames:v", "1", "-c:v", "libsvtav1", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"SVT-AV1 Encoder Lib (v[0-9][^\s]*)", proc.stderr)
    return m.group(1) if m else None
