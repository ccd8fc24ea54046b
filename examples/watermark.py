"""Example 2: a rendition with your own encoder arguments (a watermark), packaged by the
built-in HLS stage next to the spec's rungs: the spec lists it under `hls.include`."""

from pathlib import Path

from mpegflow_dagster import StageContext, source_file, video_asset
from mpegflow_dagster.stages.ingest import load_probe

GOP_S = 2  # the spec's gop_s: every variant switches on the same keyframes


@video_asset(
    key=["vod", "watermarked"],
    ins={"ingest": ["vod", "ingest"], "probe": ["vod", "probe"]},
    code_version="watermark 360p 600k",
    rendition="watermarked",
    announces="rendition.ready",
)
def watermarked(context: StageContext, ingest: Path, probe: Path) -> Path:
    """360p H.264 with a PREVIEW watermark."""
    out = context.work / "watermarked.mp4"
    context.ffmpeg.run(
        "watermarked",
        [
            "-i",
            str(source_file(ingest)),
            "-vf",
            "scale=-2:360,drawtext=text=PREVIEW:x=w-tw-16:y=16:fontsize=28:fontcolor=white@0.7",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            "600k",
            "-threads",
            str(context.ffmpeg.threads),
            "-force_key_frames",
            f"expr:gte(t,n_forced*{GOP_S})",
            "-sc_threshold",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-movflags",
            "+faststart",
            str(out),
        ],
        duration_s=load_probe(probe).duration,
    )
    return out
