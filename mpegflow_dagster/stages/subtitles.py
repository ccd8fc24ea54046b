"""Subtitles: every text subtitle of the source as a WebVTT file, for a CMAF package's selectable
subtitle tracks: each sidecar (`movie.fr.srt`, `movie.en.vtt`, and the plain `movie.srt` as
`und`), then each text stream inside the source (subrip, ASS, mov_text...). What cannot be a
track is left out, named with why (a file that is not SRT or WebVTT, a bitmap stream, one without
a cue); the others still ship."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from dagster import AssetsDefinition

from ..media import commands
from ..media.classify import classify_exception
from ..media.languages import UNDETERMINED, bcp47, display_name
from ..media.probe import BITMAP_SUBTITLE_CODECS, TEXT_SUBTITLE_CODECS, MediaInfo
from ..spec import PipelineSpec
from ..stage import StageContext, StepLayout, pipeline_key, video_asset
from .captions import check_subtitle_file
from .ingest import load_probe, source_file, subtitle_files
from .toolkit import IN_MENUS, MediaRejected, StageOutput, Tools, unique_name

# {"tracks": [{"name", "language", "label", "file", "from"}], "rejected": {what: why}}
TRACKS = "tracks.json"


@dataclass(frozen=True)
class WebvttTrack:
    name: str  # unique in the package, its folder: `es`, `es-2` (the language stays a valid tag)
    language: Optional[str]  # BCP 47; None: undetermined
    path: Path
    label: str  # unique, its name in menus: the stream's title, else the language's own name


def webvtt_tracks(ingest_dir: Path, info: MediaInfo, tools: Tools, work: Path) -> StageOutput:
    """`<name>.vtt` per subtitle that converts, sidecars first (they get the plain language
    names), then the source's text streams by index, and `tracks.json` saying what is there and
    what was left out (so a source without subtitles is an artifact too, holding no track)."""
    out = work / "subtitles"
    out.mkdir()
    tracks: list[dict[str, str]] = []
    rejected: dict[str, str] = {}
    pending = work / "converting.vtt"

    def convert(
        what: str,
        tag: Optional[str],
        args: list[str],
        sidecar: Optional[Path],
        title: Optional[str] = None,
    ) -> None:
        """Make `pending` with FFmpeg `args` and keep it as a track of language `tag`, or name
        `what` in `rejected` with why."""
        named = what if sidecar is None else f"the {what} subtitle file"
        try:
            if sidecar is not None:
                check_subtitle_file(sidecar, tools, named)
            tools.run(f"subtitles {what}", args)
            if "-->" not in pending.read_text(errors="replace"):
                # Shaka Packager fails the whole package on a text track without a cue
                raise MediaRejected("it holds no cue", reason="input.invalid_captions")
        except Exception as exc:
            found = classify_exception(exc)
            if found.failure_class != "permanent":  # a retry may heal it: the step retries
                raise
            rejected[what] = found.message  # this track alone: the others ship
            return
        language = bcp47(tag)
        name = unique_name(language, {t["name"] for t in tracks})
        label = unique_name(title or display_name(language), {t["label"] for t in tracks}, IN_MENUS)
        pending.rename(out / f"{name}.vtt")
        tracks.append(
            {"name": name, "language": language, "label": label, "file": f"{name}.vtt"}
            | {"from": named}
        )

    for tag, path in subtitle_files(ingest_dir):
        convert(tag, tag, commands.webvtt_args(path, pending), sidecar=path)
    source = source_file(ingest_dir)
    for stream in info.subtitles:
        what = f"stream {stream.index} ({stream.codec_name or 'unknown codec'})"
        if stream.codec_name in TEXT_SUBTITLE_CODECS:
            args = commands.webvtt_args(source, pending, stream=stream.index)
            convert(what, stream.language, args, sidecar=None, title=stream.title)
        elif stream.codec_name in BITMAP_SUBTITLE_CODECS:  # pictures: no cues to make WebVTT of
            rejected[what] = "bitmap, not text"
        else:
            rejected[what] = (
                f"not a text subtitle codec ({', '.join(sorted(TEXT_SUBTITLE_CODECS))})"
            )
    (out / TRACKS).write_text(json.dumps({"tracks": tracks, "rejected": rejected}, indent=2))
    facts: dict[str, object] = {
        "languages": ", ".join(dict.fromkeys(t["language"] for t in tracks)) or "none",
        "tracks": "; ".join(f"{t['name']}: {t['from']}" for t in tracks) or "none",
        "rejected": "; ".join(f"{what}: {why}" for what, why in rejected.items()) or "none",
    }
    return StageOutput(out, facts, list(tools.runs))


def load_tracks(subtitles_dir: Path) -> list[WebvttTrack]:
    """The WebVTT tracks of a subtitles artifact, in package order."""
    listed = json.loads((Path(subtitles_dir) / TRACKS).read_text())["tracks"]
    return [
        WebvttTrack(
            t["name"],
            None if t["language"] == UNDETERMINED else t["language"],
            Path(subtitles_dir) / t["file"],
            t["label"],
        )
        for t in listed
    ]


ORDER = 35  # after ingest, before packaging


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The subtitles asset of a CMAF package (hls.segment_type: cmaf), unless
    subtitles.enabled is false."""
    if not spec.packages_subtitles:
        return []

    @video_asset(
        key=pipeline_key(spec, "subtitles"),
        ins={"ingest": pipeline_key(spec, "ingest"), "probe": pipeline_key(spec, "probe")},
        code_version=version(spec.subtitles),
        retry=spec.failures.retry_for("package"),
        description="Each subtitle sidecar and text subtitle stream of the source as WebVTT, for "
        "the package's subtitle tracks; what cannot be one (not SRT or WebVTT, a bitmap stream, "
        "no cue) is left out and named.",
    )
    def subtitles(context: StageContext, ingest: Path, probe: Path) -> StageOutput:
        made = webvtt_tracks(ingest, load_probe(probe), context.ffmpeg, context.work)
        if made.facts["rejected"] != "none":
            context.log.warning(f"subtitles left out: {made.facts['rejected']}")
        return made

    return [subtitles]
