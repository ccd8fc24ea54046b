"""Subtitles: every subtitle sidecar of the source (`movie.fr.srt`, `movie.en.vtt`, and the plain
`movie.srt` as `und`) as a WebVTT file, for a CMAF package's selectable subtitle tracks. A file
that is not SRT or WebVTT is left out, named with why; the others still ship."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from dagster import AssetsDefinition

from ..media import commands
from ..media.classify import classify_exception
from ..spec import PipelineSpec
from ..stage import StageContext, StepLayout, pipeline_key, video_asset
from .captions import check_subtitle_file
from .ingest import subtitle_files
from .toolkit import StageOutput, Tools

TRACKS = "tracks.json"  # {"tracks": {language: file}, "rejected": {language: why}}


def webvtt_tracks(ingest_dir: Path, tools: Tools, work: Path) -> StageOutput:
    """`<language>.vtt` per good subtitle file and `tracks.json` saying what is there and what was
    left out (so a source without subtitles is an artifact too, holding no track)."""
    out = work / "subtitles"
    out.mkdir()
    tracks: dict[str, str] = {}
    rejected: dict[str, str] = {}
    for language, path in subtitle_files(ingest_dir).items():
        try:
            check_subtitle_file(path, tools, f"the {language} subtitle file")
            vtt = out / f"{language}.vtt"
            tools.run(f"subtitles {language}", commands.webvtt_args(path, vtt))
            tracks[language] = vtt.name
        except Exception as exc:
            found = classify_exception(exc)
            if found.failure_class != "permanent":  # a retry may heal it: the step retries
                raise
            rejected[language] = found.message  # this track alone: the others ship
    (out / TRACKS).write_text(json.dumps({"tracks": tracks, "rejected": rejected}, indent=2))
    facts: dict[str, object] = {
        "languages": ", ".join(tracks) or "none",
        "rejected": "; ".join(f"{lang}: {why}" for lang, why in rejected.items()) or "none",
    }
    return StageOutput(out, facts, list(tools.runs))


def load_tracks(subtitles_dir: Path) -> dict[str, Path]:
    """The WebVTT files of a subtitles artifact, by language."""
    listed = json.loads((Path(subtitles_dir) / TRACKS).read_text())["tracks"]
    return {language: Path(subtitles_dir) / name for language, name in listed.items()}


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
        ins={"ingest": pipeline_key(spec, "ingest")},
        code_version=version(spec.subtitles),
        retry=spec.failures.retry_for("package"),
        description="Each subtitle sidecar of the source as WebVTT, for the package's subtitle "
        "tracks; a file that is not SRT or WebVTT is left out and named.",
    )
    def subtitles(context: StageContext, ingest: Path) -> StageOutput:
        made = webvtt_tracks(ingest, context.ffmpeg, context.work)
        if made.facts["rejected"] != "none":
            context.log.warning(f"subtitles left out: {made.facts['rejected']}")
        return made

    return [subtitles]
