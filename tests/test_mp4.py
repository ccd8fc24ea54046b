"""The MP4 header reader that packaging uses instead of ffprobe agrees with ffprobe on real files."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Optional

import pytest

from mpegflow_dagster.media.mp4 import Mp4Error, read_mp4

FFMPEG = ["ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error"]
PROFILE_BYTE = {"Constrained Baseline": 0x42, "Baseline": 0x42, "Main": 0x4D, "High": 0x64}


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def encode(out: Path, *, rate: str, profile: str, audio: bool, faststart: bool) -> Path:
    argv = FFMPEG + ["-f", "lavfi", "-i", f"testsrc2=size=320x180:rate={rate}:duration=2"]
    if audio:
        argv += [
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=2",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ]
    argv += [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-profile:v",
        profile,
        "-pix_fmt",
        "yuv420p",
    ]
    argv += (["-movflags", "+faststart"] if faststart else []) + [str(out)]
    subprocess.run(argv, check=True)
    return out


@pytest.mark.parametrize(
    "rate,profile,audio,faststart",
    [
        ("30000/1001", "high", False, True),  # NTSC rate, moov first, no audio
        ("25", "baseline", True, False),  # moov after mdat, with AAC
        ("30", "main", True, True),
    ],
)
def test_header_matches_ffprobe(
    tmp_path: Path, rate: str, profile: str, audio: bool, faststart: bool
) -> None:
    mp4 = encode(tmp_path / "v.mp4", rate=rate, profile=profile, audio=audio, faststart=faststart)
    probed = ffprobe(mp4)
    video = next(s for s in probed["streams"] if s["codec_type"] == "video")
    header = read_mp4(mp4)
    assert (header.video.width, header.video.height) == (video["width"], video["height"])
    assert header.video.frame_rate == Fraction(video["avg_frame_rate"])
    assert header.duration_s == pytest.approx(float(probed["format"]["duration"]), abs=0.002)
    assert header.video.codec.startswith(f"avc1.{PROFILE_BYTE[video['profile']]:02x}")
    assert header.video.codec_name == video["codec_name"] == "h264"
    assert int(header.video.codec[-2:], 16) == video["level"]
    has_audio = any(s["codec_type"] == "audio" for s in probed["streams"])
    assert header.audio_codec == (
        "mp4a.40.2" if has_audio else None
    )  # FFmpeg's aac encoder: AAC-LC
    assert header.codecs == header.video.codec + (",mp4a.40.2" if has_audio else "")


def test_not_a_rendition_is_refused_with_a_reason(tmp_path: Path) -> None:
    good = encode(tmp_path / "v.mp4", rate="25", profile="main", audio=True, faststart=True)
    text = tmp_path / "notes.mp4"
    text.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(Mp4Error, match="moov"):
        read_mp4(text)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(
        good.read_bytes()[:2000]
    )  # ends inside the moov box (faststart: moov first)
    with pytest.raises(Mp4Error, match="truncated moov"):
        read_mp4(truncated)
    audio_only = tmp_path / "a.mp4"
    subprocess.run(FFMPEG + ["-i", str(good), "-vn", "-c", "copy", str(audio_only)], check=True)
    with pytest.raises(
        Mp4Error, match=r"no H\.264 \(avc1\), HEVC \(hvc1, hev1\) or AV1 \(av01\) video track"
    ):
        read_mp4(audio_only)


def encode_clip(out: Path, video_args: list[str], *, audio: bool = False) -> Path:
    """One second of 320x240 at 30 fps, encoded with `video_args` (codec, pixel format, tag)."""
    argv = FFMPEG + ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=1"]
    if audio:
        argv += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=1"]
        argv += ["-c:a", "aac", "-b:a", "64k"]
    subprocess.run(argv + video_args + [str(out)], check=True)
    return out


X265 = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]
SVTAV1 = ["-c:v", "libsvtav1", "-preset", "12"]
HEVC_PROFILE_IDC = {"Main": 1, "Main 10": 2}
AV1_PROFILE = {"Main": 0, "High": 1, "Professional": 2}


# The expected strings, from the hvcC that x265 writes (bytes 0-12: version, profile byte,
# 4 compatibility flag bytes, 6 constraint bytes, level):
#   Main:    01 01 60000000 900000000000 3c   Main 10: 01 02 20000000 900000000000 3c
# profile byte 0x01/0x02: profile space 0 (no letter), tier 0 (L), general_profile_idc 1/2;
# compatibility flags 1 (Main) and 2 (Main 10, which a Main stream also is) for Main, flag 2
# alone for Main 10: 0x60000000 / 0x20000000 stored flag[0] first, reversed 0x6 / 0x4; 0x3c = 60
# (level 2, ffprobe's level=60); constraint byte 0x90 = progressive_source and
# frame_only_constraint, the five zero bytes after it left out. `ffmpeg -bsf:v trace_headers`
# shows the same fields in the VPS/SPS profile_tier_level.
# The av1C that SVT-AV1 writes is 81 00 0c 00 (8-bit) and 81 00 4c 00 (yuv420p10le): marker and
# version 1, seq_profile 0 and seq_level_idx_0 0 (level 2.0, enough for 320x240 at 30 fps),
# then tier 0 (M), high_bitdepth 0 or 1 (08 or 10), twelve_bit 0, 4:2:0 subsampling.
@pytest.mark.parametrize(
    "video_args,codec,audio",
    [
        (X265 + ["-tag:v", "hvc1", "-pix_fmt", "yuv420p"], "hvc1.1.6.L60.90", False),
        (
            X265 + ["-tag:v", "hvc1", "-pix_fmt", "yuv420p10le", "-profile:v", "main10"],
            "hvc1.2.4.L60.90",
            True,
        ),
        (X265 + ["-pix_fmt", "yuv420p"], "hev1.1.6.L60.90", False),  # FFmpeg's default tag
        (SVTAV1 + ["-pix_fmt", "yuv420p"], "av01.0.00M.08", False),
        (SVTAV1 + ["-pix_fmt", "yuv420p10le"], "av01.0.00M.10", True),
    ],
)
def test_hevc_and_av1_codec_strings(
    tmp_path: Path, video_args: list[str], codec: str, audio: bool
) -> None:
    mp4 = encode_clip(tmp_path / "v.mp4", video_args, audio=audio)
    video = next(s for s in ffprobe(mp4)["streams"] if s["codec_type"] == "video")
    header = read_mp4(mp4)
    assert header.video.codec == codec
    assert header.codecs == codec + (",mp4a.40.2" if audio else "")
    assert header.video.codec_name == video["codec_name"]
    assert (header.video.width, header.video.height) == (video["width"], video["height"])
    assert header.video.frame_rate == Fraction(video["avg_frame_rate"]) == 30
    # the fields that ffprobe also shows, in its own terms: entry type, profile, level, bit depth
    parts = codec.split(".")
    assert parts[0] == video["codec_tag_string"]
    if video["codec_name"] == "hevc":
        assert parts[1] == str(HEVC_PROFILE_IDC[video["profile"]])
        assert parts[3] == f"L{video['level']}"
    else:
        assert parts[1] == str(AV1_PROFILE[video["profile"]])
        assert parts[2] == f"{video['level']:02d}M"
        assert parts[3] == ("10" if video["pix_fmt"] == "yuv420p10le" else "08")


def cut_box(data: bytes, kind: bytes, keep: int) -> bytes:
    """`data` with its one `kind` box cut to `keep` payload bytes, a free box taking the rest so
    that the boxes around it keep their sizes (the reader then sees a short box, not an overrun)."""
    assert data.count(kind) == 1
    at = data.index(kind) - 4
    size = int.from_bytes(data[at : at + 4], "big")
    rest = size - 8 - keep
    assert rest >= 8
    return b"".join(
        [
            data[:at],
            (8 + keep).to_bytes(4, "big") + kind + data[at + 8 : at + 8 + keep],
            rest.to_bytes(4, "big") + b"free" + bytes(rest - 8),
            data[at + size :],
        ]
    )


def garble_box(data: bytes, kind: bytes) -> bytes:
    """`data` with the first payload byte of its one `kind` box zeroed (version, marker)."""
    assert data.count(kind) == 1
    at = data.index(kind) + 4
    return data[:at] + b"\0" + data[at + 1 :]


@pytest.mark.parametrize(
    "video_args,kind,keep,message",
    [  # keep: payload bytes left in the box; None: all of them, the first one zeroed
        (X265 + ["-tag:v", "hvc1"], b"hvcC", 5, r"hvcC box of 5 bytes, shorter than its 23"),
        (X265 + ["-tag:v", "hvc1"], b"hvcC", None, r"hvcC of configuration version 0"),
        (SVTAV1, b"av1C", 2, r"av1C box of 2 bytes, shorter than its 4"),
        (SVTAV1, b"av1C", None, r"av1C starting with 0x00, not marker and version 1"),
        (["-c:v", "libx264", "-preset", "ultrafast"], b"avcC", 2, r"avcC box of 2 bytes"),
    ],
)
def test_damaged_codec_configuration_is_refused_with_a_reason(
    tmp_path: Path, video_args: list[str], kind: bytes, keep: Optional[int], message: str
) -> None:
    data = encode_clip(tmp_path / "v.mp4", video_args).read_bytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(garble_box(data, kind) if keep is None else cut_box(data, kind, keep))
    with pytest.raises(Mp4Error, match=message):
        read_mp4(damaged)
