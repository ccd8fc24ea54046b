"""Example 1: your own stage after a built-in one. The source's audio, loudness-normalized to
EBU R128 (-23 LUFS) in two passes: `loudnorm` measures, then applies with the measured values."""

import json
from pathlib import Path

from mpegflow_dagster import StageContext, StageOutput, source_file, video_asset

TARGET = "I=-23:TP=-1:LRA=11"


@video_asset(
    key=["vod", "audio_loudnorm"],
    ins={"ingest": ["vod", "ingest"]},
    code_version=f"loudnorm {TARGET}",
)
def audio_loudnorm(context: StageContext, ingest: Path) -> StageOutput:
    """The source's audio at -23 LUFS (EBU R128), AAC in MP4."""
    source = str(source_file(ingest))
    measure = context.ffmpeg.run(
        "measure",
        ["-i", source, "-vn", "-af", f"loudnorm={TARGET}:print_format=json", "-f", "null", "-"],
    )
    measured = json.loads(measure.stderr_tail[measure.stderr_tail.rindex("{") :])
    apply = (
        f"loudnorm={TARGET}:linear=true:measured_I={measured['input_i']}:measured_TP={measured['input_tp']}"
        f":measured_LRA={measured['input_lra']}:measured_thresh={measured['input_thresh']}"
        f":offset={measured['target_offset']}"
    )
    out = context.work / "audio.m4a"
    context.ffmpeg.run(
        "apply",
        [
            "-i",
            source,
            "-vn",
            "-af",
            apply,
            "-ar",
            "48000",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            str(out),
        ],
    )
    return StageOutput(out, {"measured_lufs": float(measured["input_i"]), "target_lufs": -23.0})
