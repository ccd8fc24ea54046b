"""Example 3: pipeline B (`preview`) whose stage consumes pipeline A's (`vod`) output by asset
key, on A's partitions: the same video name in both."""

from pathlib import Path

from mpegflow_dagster import StageContext, video_asset, video_partitions


@video_asset(
    key=["preview", "teaser"],
    ins={"rendition": ["vod", "rendition_480p"]},
    code_version="teaser 3s",
    partitions_def=video_partitions("vod"),
)
def teaser(context: StageContext, rendition: Path) -> Path:
    """The first three seconds of vod's 480p rendition, stream-copied."""
    out = context.work / "teaser.mp4"
    context.ffmpeg.run("teaser", ["-i", str(rendition), "-t", "3", "-c", "copy", str(out)])
    return out
