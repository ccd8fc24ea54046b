"""The asset factory: one typed spec in, the Dagster assets of its video graph out."""


from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    Backoff,
    Config,
    DynamicPartitionsDefinition,
    Failure,
    Jitter,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)
from pydantic import Field

from . import stages
from .media.build import FFmpegNotFound
from .media.probe import ProbeError
from .resources import DeliveryResource, FFmpegResource
from .spec import PipelineSpec
from .stages import MediaRejected, StageOutput

IO_MANAGER_KEY = "media_io_manager"
# Until failures are classified, any FFmpeg error gets a short, bounded retry with backoff.
FFMPEG_RETRY = RetryPolicy(max_retries=2, delay=2.0, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


class IngestConfig(Config):
    source_path: Optional[str] = Field(
        None,
        description="Local path of the source video. Default: the path this video was last ingested from.",
    )


def partitions_for(spec: PipelineSpec) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=f"{spec.name}_videos")


def rendition_asset_name(name: str) -> str:
    return f"rendition_{name}"


def _output(stage: StageOutput, ffmpeg: FFmpegResource, code: str, **extra: Any) -> Output[Path]:
    """The Output of a stage with the metadata a video engineer reads first."""
    metadata: dict[str, Any] = {k: v for k, v in stage.facts.items() if v is not None}
    metadata.update(ffmpeg.build_metadata())
    metadata["stage_fingerprint"] = MetadataValue.text(code)
    if stage.runs:
        metadata["ffmpeg_argv"] = MetadataValue.json([r.argv for r in stage.runs])
        metadata["ffmpeg_wall_s"] = round(sum(r.wall_s for r in stage.runs), 3)
        metadata["ffmpeg_cpu_s"] = round(sum(r.cpu_s for r in stage.runs), 3)
    metadata.update(extra)
    return Output(stage.path, metadata=metadata)


def _rejected(context: AssetExecutionContext, exc: Exception) -> Failure:
    """Bad input or a missing tool: fail at once, no retry would change the outcome."""
    return Failure(
        description=f"video {context.partition_key!r}: {exc}",
        metadata={"error": type(exc).__name__},
        allow_retries=False,
    )


def build_video_assets(spec: PipelineSpec) -> list[AssetsDefinition]:
    """Assets for one pipeline spec, every key prefixed with `spec.name` and partitioned by video:
    ingest -> probe -> rendition_<rung> (one per ladder rung), thumbnails, captions -> hls ->
    emit / emit_captions.

    Examples:
        .. code-block:: python

            from pathlib import Path
            from mpegflow_dagster import build_video_assets, load_spec

            assets = build_video_assets(load_spec(Path("resources/pipelines/vod.yaml")))
    """
    prefix = spec.name
    partitions = partitions_for(spec)
    common: dict[str, Any] = dict(
        key_prefix=[prefix], group_name=prefix, partitions_def=partitions, io_manager_key=IO_MANAGER_KEY
    )
    ffmpeg_common = dict(common, retry_policy=FFMPEG_RETRY, kinds={"ffmpeg"})

    def key(name: str) -> AssetKey:
        return AssetKey([prefix, name])

    @asset(name="ingest", code_version="1", description="Stored copy of the source video and its caption sidecar.", **common)
    def ingest(context: AssetExecutionContext, config: IngestConfig, ffmpeg: FFmpegResource) -> Output[Path]:
        source = config.source_path or _last_source(context)
        with ffmpeg.scratch("ingest", context.partition_key) as work:
            try:
                out = stages.ingest(Path(source), work, spec.captions.sidecar_extensions)
            except MediaRejected as exc:
                raise _rejected(context, exc) from exc
        return Output(out.path, metadata=out.facts)

    @asset(name="probe", code_version="1", ins={"ingest": AssetIn(key("ingest"))},
           description="ffprobe facts of the source (JSON).", **common)
    def probe(context: AssetExecutionContext, ffmpeg: FFmpegResource, ingest: Path) -> Output[Path]:
        with ffmpeg.scratch("probe", context.partition_key) as work:
            try:
                out = stages.probe_source(ingest, work, ffmpeg.tools())
            except (MediaRejected, ProbeError, FFmpegNotFound) as exc:
                raise _rejected(context, exc) from exc
        return _output(out, ffmpeg, "1")

    def rendition_asset(rung_name: str) -> AssetsDefinition:
        rung = spec.rendition(rung_name)
        code = spec.stage_fingerprint(rung, spec.preset_for(rung))

        @asset(name=rendition_asset_name(rung.name), code_version=code,
               ins={"ingest": AssetIn(key("ingest")), "probe": AssetIn(key("probe"))},
               description=f"{rung.name}: H.264 {rung.profile} {rung.video_bitrate_kbps} kb/s, keyframes every {spec.gop_s:g}s.",
               **ffmpeg_common)
        def _rendition(context: AssetExecutionContext, ffmpeg: FFmpegResource, ingest: Path, probe: Path) -> Output[Path]:
            with ffmpeg.scratch(rung.name, context.partition_key) as work:
                out = stages.encode_rendition(ingest, stages.load_probe(probe), spec, rung, ffmpeg.tools(context.log), work)
            return _output(out, ffmpeg, code)

        return _rendition

    thumbs_code = spec.stage_fingerprint(spec.thumbnails)

    @asset(name="thumbnails", code_version=thumbs_code,
           ins={"ingest": AssetIn(key("ingest")), "probe": AssetIn(key("probe"))},
           description="JPEG thumbnails, a sprite sheet and a WebVTT storyboard.", **ffmpeg_common)
    def thumbnails(context: AssetExecutionContext, ffmpeg: FFmpegResource, ingest: Path, probe: Path) -> Output[Path]:
        with ffmpeg.scratch("thumbnails", context.partition_key) as work:
            try:
                out = stages.thumbnails(ingest, stages.load_probe(probe), spec.thumbnails, ffmpeg.tools(context.log), work)
            except MediaRejected as exc:
                raise _rejected(context, exc) from exc
        return _output(out, ffmpeg, thumbs_code)

    caption_rung = spec.rendition(spec.captions.rendition)
    captions_code = spec.stage_fingerprint(spec.captions, caption_rung, spec.preset_for(caption_rung))

    @asset(name="captions", code_version=captions_code, output_required=False,
           ins={"ingest": AssetIn(key("ingest")), "probe": AssetIn(key("probe"))},
           description="A rendition with the sidecar captions burned in; skipped when there is no sidecar.",
           **ffmpeg_common)
    def captions(context: AssetExecutionContext, ffmpeg: FFmpegResource, ingest: Path, probe: Path):
        if not spec.captions.enabled:
            context.log.info("captions are disabled in the spec: nothing to burn in")
            return
        with ffmpeg.scratch("captions", context.partition_key) as work:
            out = stages.burn_captions(ingest, stages.load_probe(probe), spec, ffmpeg.tools(context.log), work)
        if out is None:
            context.log.info(f"no caption sidecar ({', '.join(spec.captions.sidecar_extensions)}) beside the source: skipped")
            return
        yield _output(out, ffmpeg, captions_code)

    rung_ins = {rendition_asset_name(r.name): AssetIn(key(rendition_asset_name(r.name))) for r in spec.ladder}
    hls_code = spec.stage_fingerprint(spec.hls)

    @asset(name="hls", code_version=hls_code, ins=rung_ins,
           description="HLS VOD: one variant per rendition and a master playlist.", **ffmpeg_common)
    def hls(context: AssetExecutionContext, ffmpeg: FFmpegResource, **renditions: Path) -> Output[Path]:
        by_rung = {name.removeprefix("rendition_"): path for name, path in renditions.items()}
        with ffmpeg.scratch("hls", context.partition_key) as work:
            out = stages.package_hls(by_rung, spec.hls, ffmpeg.tools(context.log), work)
        return _output(out, ffmpeg, hls_code, master_playlist=MetadataValue.path(str(out.path / "master.m3u8")))

    @asset(name="emit", code_version=spec.stage_fingerprint(spec.emit),
           ins={"hls": AssetIn(key("hls")), "thumbnails": AssetIn(key("thumbnails"))},
           description="Publishes the HLS tree and thumbnails to the delivery location.", **common)
    def emit(context: AssetExecutionContext, ffmpeg: FFmpegResource, delivery: DeliveryResource,
             hls: Path, thumbnails: Path) -> Output[Path]:
        parts = {"hls": hls, **({"thumbnails": thumbnails} if spec.emit.thumbnails else {})}
        with ffmpeg.scratch("emit", context.partition_key) as work:
            out = stages.emit(context.partition_key, parts, delivery.store(), work)
        master = Path(delivery.store().root) / context.partition_key / "hls" / "master.m3u8"
        return Output(out.path, metadata={**out.facts, "master_playlist": MetadataValue.path(str(master))})

    @asset(name="emit_captions", code_version="1", ins={"captions": AssetIn(key("captions"))},
           description="Publishes the captioned rendition to the delivery location.", **common)
    def emit_captions(context: AssetExecutionContext, ffmpeg: FFmpegResource, delivery: DeliveryResource,
                      captions: Path) -> Output[Path]:
        with ffmpeg.scratch("emit_captions", context.partition_key) as work:
            out = stages.emit(context.partition_key, {"captioned.mp4": captions}, delivery.store(), work)
        return Output(out.path, metadata=out.facts)

    renditions = [rendition_asset(r.name) for r in spec.ladder]
    return [ingest, probe, *renditions, thumbnails, captions, hls, emit, emit_captions]


def _last_source(context: AssetExecutionContext) -> str:
    """The path this partition was last ingested from, so a re-run from the UI needs no config."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.partition_key]), limit=1
    ).records
    if records:
        meta = records[0].asset_materialization.metadata if records[0].asset_materialization else {}
        if "original_path" in meta:
            return str(meta["original_path"].value)
    raise Failure(
        description=(
            f"video {context.partition_key!r} has never been ingested: pass its file as run config "
            "`ops: {<prefix>__ingest: {config: {source_path: /path/to/video.mp4}}}` or use `mpegflow run FILE`."
        ),
        allow_retries=False,
    )
