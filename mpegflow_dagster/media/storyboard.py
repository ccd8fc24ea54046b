"""WebVTT storyboard: one cue per thumbnail, pointing into the sprite with a media fragment."""

from __future__ import annotations


def _ts(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def storyboard_vtt(
    *,
    count: int,
    interval_s: float,
    duration_s: float,
    sprite_uri: str,
    tile_width: int,
    tile_height: int,
    columns: int,
) -> str:
    cues = ["WEBVTT", ""]
    for i in range(count):
        start = i * interval_s
        end = min(duration_s, start + interval_s) if i == count - 1 else start + interval_s
        x, y = (i % columns) * tile_width, (i // columns) * tile_height
        cues += [
            f"{_ts(start)} --> {_ts(max(end, start + 0.001))}",
            f"{sprite_uri}#xywh={x},{y},{tile_width},{tile_height}",
            "",
        ]
    return "\n".join(cues)
