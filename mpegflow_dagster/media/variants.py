"""Which renditions become the variants of an HLS package: none above the source unless asked
for, and never two of one resolution in one codec (a player cannot choose between them; one is
wasted bytes). The same resolution in H.264 and AV1 is two variants: each player takes the codec
it can decode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .commands import even, rendition_height


@dataclass(frozen=True)
class Candidate:
    """A rendition as encoded, and the height its rung asked for."""

    name: str
    width: int
    height: int
    bitrate_bps: int  # average over the file (bits / duration)
    rung_height: Optional[int] = None  # None: a rendition of your own (hls.include)
    codec: str = "h264"  # ffprobe's codec_name: h264, hevc, av1

    @property
    def at_own_height(self) -> bool:
        return self.rung_height is None or self.height == even(self.rung_height)


def above_source(rung_height: int, source_height: int) -> bool:
    """A rung the source is too small for: encoding it at its height means scaling up."""
    return rendition_height(rung_height, source_height, upscale=False) < even(rung_height)


def choose_variants(
    candidates: Sequence[Candidate], source_height: int, keep_above_source: bool
) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates that become variants (in the given order), and why each other one was
    left out, by name.

    - Rungs above the source are left out unless `keep_above_source`; if every rung is, the
      lowest of them stays, so the package is never empty.
    - Of several at one resolution (width x height) in one codec, the one at its rung's own
      height stays (a rendition of your own always is), else the one with the highest average
      bitrate.
    """
    dropped: dict[str, str] = {}
    kept = list(candidates)
    if not keep_above_source:
        above = [c for c in kept if c.rung_height and above_source(c.rung_height, source_height)]
        if len(above) == len(kept) and above:
            lowest = min(above, key=lambda c: (c.rung_height or 0, c.bitrate_bps))
            above.remove(lowest)
        for c in above:
            dropped[c.name] = f"above the source's {source_height}p"
        kept = [c for c in kept if c.name not in dropped]
    by_resolution: dict[tuple[str, int, int], list[Candidate]] = {}
    for c in kept:
        by_resolution.setdefault((c.codec, c.width, c.height), []).append(c)
    for (_, width, height), same in by_resolution.items():
        best = max(same, key=lambda c: (c.at_own_height, c.bitrate_bps))
        for c in same:
            if c is not best:
                dropped[c.name] = f"same resolution as {best.name} ({width}x{height})"
    return [c for c in kept if c.name not in dropped], dropped


def dropped_text(dropped: Mapping[str, str]) -> str:
    """`name: why` per rendition left out, as the hls metadata and log say it."""
    return "; ".join(f"{name}: {why}" for name, why in dropped.items()) or "none"
