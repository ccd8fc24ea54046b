"""Captions: a rendition with the caption sidecar burned in (skipped without a sidecar)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from dagster import AssetKey, AssetsDefinition

from ..media.commands import Loudnorm
from ..media.probe import MediaInfo, ProbeError, probe
from ..spec import PipelineSpec
from ..stage import StageContext, StepLayout, latest_metadata, pipeline_key, video_asset
from .encode import encode_rendition
from .ingest import captions_file, load_probe
from .source_qc import source_inputs, source_loudnorm
from .toolkit import MediaRejected, StageOutput, Tools


def check_subtitle_file(path: Path, tools: Tools, named: str) -> None:
    """MediaRejected (`input.invalid_captions`) unless `path` reads as SRT or WebVTT."""
    try:
        probe(path, tools.ffprobe, formats="srt,webvtt")
    except ProbeError as exc:
        raise MediaRejected(
            f"{named} is not a valid SRT or WebVTT file ({exc})", reason="input.invalid_captions"
        ) from exc


def burn_captions(
    ingest_dir: Path,
    info: MediaInfo,
    spec: PipelineSpec,
    tools: Tools,
    work: Path,
    sidecar_name: str,
    loudnorm: Optional[Loudnorm] = None,
) -> Optional[StageOutput]:
    """The captioned rendition, or None when the source has no caption sidecar. `sidecar_name`
    (where the sidecar was ingested from) is what a message about it names."""
    sidecar = captions_file(ingest_dir)
    if sidecar is None:
        return None
    check_subtitle_file(sidecar, tools, f"caption sidecar {sidecar_name}")
    rung = spec.rendition(spec.captions.rendition)
    return encode_rendition(
        ingest_dir,
        info,
        spec,
        rung,
        tools,
        work,
        subtitles=sidecar,
        label="captioned",
        loudnorm=loudnorm,
    )


def _sidecar_origin(context: Any, key: AssetKey) -> str:
    """Where the stored caption sidecar came from (beside the source the user named), for messages."""
    meta = latest_metadata(context, key)
    if "original_path" not in meta or "caption_sidecar" not in meta:
        return "of this video"
    return f"{str(meta['original_path']).rsplit('/', 1)[0]}/{meta['caption_sidecar']}"


ORDER = 30  # after ingest


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The captions asset, unless `captions.enabled` is false (then `captions.rendition` need not be a rung)."""
    if not spec.captions.enabled:
        return []
    rung = spec.rendition(spec.captions.rendition)
    ingest_key = pipeline_key(spec, "ingest")

    @video_asset(
        key=pipeline_key(spec, "captions"),
        ins=source_inputs(spec),
        code_version=version(
            spec.captions, rung.encoding, spec.preset_for(rung), spec.encode_settings()
        ),
        rendition="captioned",
        optional=True,
        retry=spec.failures.retry_for("captions"),
        preset=spec.preset_for(rung).ref,
        publish_as="captioned.mp4",
        description="A rendition with the sidecar captions burned in; skipped when there is no sidecar.",
    )
    def captions(
        context: StageContext, ingest: Path, probe: Path, source_qc: Optional[Path] = None
    ) -> Optional[StageOutput]:
        if captions_file(ingest) is None:
            context.log.info(
                f"no caption sidecar ({', '.join(spec.captions.sidecar_extensions)}) beside the source: skipped"
            )
            return None
        return burn_captions(
            ingest,
            load_probe(probe),
            spec,
            context.ffmpeg,
            context.work,
            sidecar_name=_sidecar_origin(context.dagster, ingest_key),
            loudnorm=source_loudnorm(spec, source_qc),
        )

    return [captions]
