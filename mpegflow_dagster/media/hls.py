"""HLS master playlists with honest BANDWIDTH, RESOLUTION and CODECS attributes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


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
    audio_group: Optional[str] = None  # CMAF: the GROUP-ID of its audio (AudioRenditions)
    subtitles_group: Optional[str] = None  # CMAF: the GROUP-ID of the subtitle tracks
    video_range: str = "SDR"  # PQ, HLG or SDR (from the stream's colr box)


@dataclass(frozen=True)
class AudioRendition:
    """An audio track of its own (CMAF) in audio group `group`: one per language of the source at
    one bitrate, the source's default stream the group's DEFAULT."""

    group: str
    uri: str
    channels: int
    name: str  # unique in its group: what a player's menu shows
    language: Optional[str] = None  # BCP 47; None: undetermined
    default: bool = True


@dataclass(frozen=True)
class SubtitleTrack:
    """A selectable subtitle track (segmented WebVTT) of the subtitles group."""

    group: str
    uri: str
    language: Optional[str]  # BCP 47; None: undetermined
    name: str  # unique in the group, as HLS wants: two tracks may share a language


# A segment this short (the few milliseconds of audio past the last video frame) is mostly its
# headers: its bits per second say nothing about what a player must sustain.
_PEAK_MIN_S = 0.5


def measure_variant(playlist: Path) -> tuple[int, int, int]:
    """(peak, average) bits per second of a VOD media playlist, from its segment sizes and
    durations (the peak over segments of at least half a second, unless none is), and its
    EXT-X-VERSION."""
    playlist = Path(playlist)
    lines = playlist.read_text().splitlines()
    version = next((int(x.split(":")[1]) for x in lines if x.startswith("#EXT-X-VERSION:")), 3)
    segments: list[tuple[float, float]] = []  # (bits, seconds)
    duration: Optional[float] = None
    for line in lines:
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",")[0])
        elif line and not line.startswith("#") and duration:
            segments.append(((playlist.parent / line).stat().st_size * 8, duration))
            duration = None
    total_s = sum(s for _, s in segments)
    if total_s <= 0:
        raise ValueError(f"{playlist} lists no segments")
    long_enough = [seg for seg in segments if seg[1] >= _PEAK_MIN_S] or segments
    peak = max(bits / s for bits, s in long_enough)
    return int(round(peak)), int(round(sum(b for b, _ in segments) / total_s)), version


def master_playlist(
    variants: list[VariantStream],
    audio: Sequence[AudioRendition] = (),
    subtitles: Sequence[SubtitleTrack] = (),
) -> str:
    """Variants ordered by bandwidth, lowest first (players start there); with `audio`, a
    variant's BANDWIDTH counts its audio group's highest too (the caller adds it). VIDEO-RANGE is said
    on every variant of a package holding an HDR one (SDR is what a player assumes)."""
    version = max(v.version for v in variants)
    ranges = any(v.video_range != "SDR" for v in variants)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for a in audio:  # every language selectable (AUTOSELECT), one of each group the DEFAULT
        language = f'LANGUAGE="{a.language}",' if a.language else ""
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{a.group}",{language}NAME="{a.name}",'
            f'DEFAULT={"YES" if a.default else "NO"},AUTOSELECT=YES,CHANNELS="{a.channels}",'
            f'URI="{a.uri}"'
        )
    for t in subtitles:  # offered, never forced on: DEFAULT=NO
        language = f'LANGUAGE="{t.language}",' if t.language else ""
        lines.append(
            f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="{t.group}",NAME="{t.name}",{language}'
            f'DEFAULT=NO,AUTOSELECT=YES,URI="{t.uri}"'
        )
    for v in sorted(variants, key=lambda v: (v.peak_bps, v.height)):
        attrs = [
            f"BANDWIDTH={v.peak_bps}",
            f"AVERAGE-BANDWIDTH={v.average_bps}",
            f"RESOLUTION={v.width}x{v.height}",
            *([f"FRAME-RATE={v.frame_rate:.3f}"] if v.frame_rate else []),
            f'CODECS="{v.codecs}"',
            *([f"VIDEO-RANGE={v.video_range}"] if ranges else []),
            *([f'AUDIO="{v.audio_group}"'] if v.audio_group else []),
            *([f'SUBTITLES="{v.subtitles_group}"'] if v.subtitles_group else []),
        ]
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"
