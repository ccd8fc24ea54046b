"""HLS master playlists with honest BANDWIDTH, RESOLUTION and CODECS attributes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class VariantStream:
    uri: str  # relative to the master playlist
    version: int  # EXT-X-VERSION of the media playlist
    width: int
    height: int
    frame_rate: Optional[float]
    codecs: str
    peak_bps: int
    average_bps: int


def measure_variant(playlist: Path) -> tuple[int, int, int]:
    """(peak, average) bits per second of a VOD media playlist, from its segment sizes and
    durations, and its EXT-X-VERSION."""
    playlist = Path(playlist)
    lines = playlist.read_text().splitlines()
    version = next((int(x.split(":")[1]) for x in lines if x.startswith("#EXT-X-VERSION:")), 3)
    peak = total_bits = 0.0
    total_s = 0.0
    duration: Optional[float] = None
    for line in lines:
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",")[0])
        elif line and not line.startswith("#") and duration:
            bits = (playlist.parent / line).stat().st_size * 8
            peak = max(peak, bits / duration)
            total_bits += bits
            total_s += duration
            duration = None
    if total_s <= 0:
        raise ValueError(f"{playlist} lists no segments")
    return int(round(peak)), int(round(total_bits / total_s)), version


def master_playlist(variants: list[VariantStream]) -> str:
    """Variants ordered by bandwidth, lowest first (players start there)."""
    version = max(v.version for v in variants)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: (v.peak_bps, v.height)):
        attrs = [
            f"BANDWIDTH={v.peak_bps}",
            f"AVERAGE-BANDWIDTH={v.average_bps}",
            f"RESOLUTION={v.width}x{v.height}",
            *([f"FRAME-RATE={v.frame_rate:.3f}"] if v.frame_rate else []),
            f'CODECS="{v.codecs}"',
        ]
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"
