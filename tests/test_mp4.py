"""The MP4 header reader that packaging uses instead of ffprobe agrees with ffprobe on real files."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

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
    with pytest.raises(Mp4Error, match="no H.264"):
        read_mp4(audio_only)
