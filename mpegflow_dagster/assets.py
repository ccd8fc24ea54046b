"""The built-in stages of a pipeline spec, as Dagster assets made with the stage API (`stage.py`).

One spec in, the assets of its video graph out: ingest + probe (one step), the ladder's
renditions + thumbnails (one step sharing each decode of the source), captions, hls, emit and
emit_captions. Every output gets what `StageRun` gives any stage: skip when unchanged, scratch
and atomic publish, classified failures, provenance, events.
"""

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Generator, Iterable, Iterator, Optional

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, Failure, Output
from pydantic import Field

from . import stages
from .provenance import code_version
from .spec import PipelineSpec
from .stage import (
    Retryable,
    StageContext,
    StageRun,
    VideoStage,
    latest_metadata,
    video_asset,
    video_multi_asset,
)
from .stages import StageOutput
from .storage import release_scratch


class IngestConfig(Config):
    source_path: Optional[str] = Field(
        None,
        description="Local path or s3:// URI of the source video. Default: where this video was last ingested from.",
    )


def rendition_asset_name(name: str) -> str:
    return f"rendition_{name}"


def _ingest_and_probe(context: AssetExecutionContext, spec: PipelineSpec, runs: dict[str, StageRun],
                      source: str) -> Iterator[Output]:
    """Ingest and probe share one step: the probe reads the stored copy before it is published,
    and a video pays for one step instead of two. Each is still its own asset."""
    ingest_run, probe_run = runs["ingest"], runs["probe"]
    sources = context.resources.sources
    extensions = spec.captions.sidecar_extensions
    try:
        if source.startswith("s3://"):
            head = sources.head(source)
            identity: dict[str, Any] = {"source": source, "etag": head["ETag"], "size": head["ContentLength"]}
        else:
            identity = stages.source_fingerprint(Path(source))
    except Exception as exc:  # a missing source, a link out of its directory: classified like any failure
        raise ingest_run.failure(exc) from exc

    def produce(sc: StageContext) -> StageOutput:
        if source.startswith("s3://"):
            local = sources.download(source, sc.work / "download", extensions)
            return stages.ingest(local, sc.work, extensions, origin=source)
        return stages.ingest(Path(source), sc.work, extensions)

    ingested = ingest_run.prepare(identity)
    if ingested is not None:
        probe_run.upstream_versions["ingest"] = ingested.data_version.value if ingested.data_version else None
        probed = probe_run.prepare()
        if probed is not None:
            yield from (ingested, probed)
            return
    # The probe needs the stored copy in hand: the two are reused together or made again.
    ingested = ingest_run.make(produce)
    assert ingested is not None and ingested.data_version is not None  # ingest always has an output
    probe_run.upstream_versions["ingest"] = ingested.data_version.value
    try:
        probed = probe_run.run(lambda sc: stages.probe_source(ingested.value, sc.work, sc.ffmpeg, name=source))
    except (Failure, Retryable):
        release_scratch(ingested.value)  # a copy that is not valid media is not kept
        raise
    assert probed is not None
    yield from (ingested, probed)


def _encode_shared(context: AssetExecutionContext, spec: PipelineSpec, runs: dict[str, StageRun],
                   ingest: Path, probe: Path) -> Iterator[Output]:
    """The selected renditions and thumbnails of one video, encoded together (`stages.encode_ladder`:
    time chunks that each decode their part once, or lanes of renditions for a short source).

    If the shared run fails and a retry can heal it, the step retries (what was already
    materialized is reused). Otherwise each output is encoded alone, so one bad rendition does not
    take its siblings down, and the step fails naming the ones that failed (see `_settle`)."""
    todo: list[str] = []
    failed: dict[str, Exception] = {}
    for name, run in runs.items():
        try:
            reused = run.prepare()
        except (Failure, Retryable) as exc:  # e.g. its stored artifact changed: this output alone
            failed[name] = exc
            continue
        if reused is not None:
            yield reused
        else:
            todo.append(name)
    if todo:
        failed.update((yield from _encode_todo(context, spec, runs, todo, ingest, probe)))
    _settle(context, spec, failed, renditions_done=_renditions(runs, exclude=failed))


def _encode_todo(context: AssetExecutionContext, spec: PipelineSpec, runs: dict[str, StageRun], todo: list[str],
                 ingest: Path, probe: Path) -> Generator[Output, None, dict[str, Exception]]:
    """Encode the outputs `todo` together, or one by one after a permanent failure of the shared
    run; yields what was made, returns the failures by output."""
    info = stages.load_probe(probe)
    rungs = [spec.rendition(n.removeprefix("rendition_")) for n in todo if n != "thumbnails"]
    started = time.time()
    try:
        with ExitStack() as scratches:
            work = {n.removeprefix("rendition_"): scratches.enter_context(runs[n].ffmpeg.scratch(n, context.partition_key))
                    for n in todo}
            tools = runs[todo[0]].tools(threads=min(runs[n].threads for n in todo), lanes=min(runs[n].lanes for n in todo))
            outs = stages.encode_ladder(ingest, info, spec, rungs, "thumbnails" in todo, tools, work)
            finished = [runs[n].finish(outs[n.removeprefix("rendition_")], started) for n in todo]
    except Exception as exc:
        first = runs[todo[0]]
        if len(todo) == 1 or first.retryable(first.classification(exc)):
            verdicts = {n: runs[n].failure(exc) for n in todo}
            if isinstance(verdicts[todo[0]], Retryable):
                raise verdicts[todo[0]] from exc
            return verdicts
        context.log.warning(f"shared encode of {', '.join(todo)} failed ({exc}); encoding each alone to isolate it")
        return (yield from _encode_each(spec, {n: runs[n] for n in todo}, ingest, info))
    yield from finished
    return {}


def _settle(context: AssetExecutionContext, spec: PipelineSpec, failures: dict[str, Exception],
            renditions_done: int) -> None:
    """After some outputs failed for good: fail the step, unless only renditions failed, the spec
    packages a partial ladder (hls.min_renditions) and enough renditions are done; then the failed
    ones are simply not produced (their failure is recorded and announced) and packaging goes on."""
    retry = next((f for f in failures.values() if isinstance(f, Retryable)), None)
    if retry is not None:
        raise retry
    final = {n: f for n, f in failures.items() if isinstance(f, Failure)}
    if not final:
        return
    partial_ok = spec.hls.min_renditions is not None and renditions_done >= spec.hls.min_renditions
    if partial_ok and all(n.startswith("rendition_") for n in final):
        context.log.warning(f"{', '.join(final)} failed; packaging goes on without them (hls.min_renditions)")
        return
    first = next(iter(final.values()))
    raise Failure(description="; ".join(f.description or "" for f in final.values()), metadata=first.metadata,
                  allow_retries=False)


def _renditions(names: Iterable[str], exclude: Iterable[str] = ()) -> int:
    return sum(1 for n in names if n.startswith("rendition_") and n not in set(exclude))


def _encode_each(spec: PipelineSpec, runs: dict[str, StageRun], ingest: Path,
                 info: stages.MediaInfo) -> Generator[Output, None, dict[str, Exception]]:
    failures: dict[str, Exception] = {}
    for name, run in runs.items():
        def produce(sc: StageContext, key: str = name.removeprefix("rendition_")) -> StageOutput:
            rungs = [] if key == "thumbnails" else [spec.rendition(key)]  # the same chunks and bytes as shared
            return stages.encode_ladder(ingest, info, spec, rungs, key == "thumbnails", sc.ffmpeg, {key: sc.work})[key]
        try:
            output = run.run(produce)
        except (Failure, Retryable) as exc:
            failures[name] = exc
            continue
        if output is not None:
            yield output
    return failures


def build_video_assets(spec: PipelineSpec, *, encoder_build: Optional[str] = None) -> list[AssetsDefinition]:
    """Assets for one pipeline spec, every key prefixed with `spec.name` and partitioned by video:
    ingest -> probe -> rendition_<rung> (one per ladder rung), thumbnails, captions -> hls ->
    emit / emit_captions. `encoder_build` (the FFmpeg build hash or pinned version) is part of
    every FFmpeg stage's code version, so a new encoder build marks those stages stale.

    Examples:
        .. code-block:: python

            from pathlib import Path
            from mpegflow_dagster import build_video_assets, load_spec

            assets = build_video_assets(load_spec(Path("resources/pipelines/vod.yaml")))
    """
    prefix = spec.name
    retry = spec.failures.retry_for

    def key(name: str) -> AssetKey:
        return AssetKey([prefix, name])

    def version(*parts: Any) -> str:
        return code_version(*parts, encoder_build=encoder_build)

    source = {"ingest": key("ingest"), "probe": key("probe")}
    ingest_stages = [
        VideoStage(key("ingest"), code_version("ingest"), description="Stored copy of the source video and its caption "
                   "sidecar.", announces="video.received", retry=retry("ingest"), kinds=frozenset()),
        VideoStage(key("probe"), code_version("probe"), inputs={"ingest": key("ingest")},
                   description="ffprobe facts of the source (JSON).", retry=retry("ingest"), kinds=frozenset()),
    ]

    @video_multi_asset(name=f"{prefix}__ingest", stages=ingest_stages, config=IngestConfig, retry=retry("ingest"),
                       required_resource_keys=["sources"])
    def ingest(context: AssetExecutionContext, runs: dict[str, StageRun], config: IngestConfig) -> Iterator[Output]:
        yield from _ingest_and_probe(context, spec, runs, config.source_path or _last_source(context, key("ingest")))

    # Renditions and thumbnails share one step so that each decode of the source feeds every encoder;
    # each is still its own asset (own materialization, code version, retries, provenance), and
    # any subset can be materialized on demand.
    encode_stages = [
        VideoStage(key(rendition_asset_name(r.name)), version(r, spec.preset_for(r), spec.encode_settings()),
                   inputs=source, description=f"{r.name}: H.264 {r.profile} {r.video_bitrate_kbps} kb/s, keyframes "
                   f"every {spec.gop_s:g}s.", rendition=r.name, announces="rendition.ready", optional=True,
                   retry=retry("encode"), preset=spec.preset_for(r).ref)
        for r in spec.ladder
    ]
    if spec.thumbnails.enabled:
        encode_stages.append(VideoStage(key("thumbnails"), version(spec.thumbnails), inputs=source, optional=True,
                                        description="JPEG thumbnails, a sprite sheet and a WebVTT storyboard.",
                                        retry=retry("encode")))

    @video_multi_asset(name=f"{prefix}__encode", stages=encode_stages, ins=source, can_subset=True, retry=retry("encode"))
    def encode(context: AssetExecutionContext, runs: dict[str, StageRun], ingest: Path, probe: Path) -> Iterator[Output]:
        yield from _encode_shared(context, spec, runs, ingest, probe)

    assets: list[AssetsDefinition] = [ingest, encode]
    if spec.captions.enabled:  # else no captions assets, and `captions.rendition` need not be a rung
        rung = spec.rendition(spec.captions.rendition)

        @video_asset(key=key("captions"), ins=source, rendition="captioned", optional=True, retry=retry("captions"),
                     code_version=version(spec.captions, rung, spec.preset_for(rung), spec.encode_settings()),
                     preset=spec.preset_for(rung).ref,
                     description="A rendition with the sidecar captions burned in; skipped when there is no sidecar.")
        def captions(context: StageContext, ingest: Path, probe: Path) -> Optional[StageOutput]:
            if stages.captions_file(ingest) is None:
                context.log.info(f"no caption sidecar ({', '.join(spec.captions.sidecar_extensions)}) beside the "
                                 "source: skipped")
                return None
            return stages.burn_captions(ingest, stages.load_probe(probe), spec, context.ffmpeg, context.work,
                                        sidecar_name=_sidecar_origin(context.dagster, key("ingest")))

        @video_asset(key=key("emit_captions"), ins={"captions": key("captions")}, code_version=version("emit_captions"),
                     reusable=False, retry=retry("emit"), kinds=(), required_resource_keys=["delivery"],
                     description="Publishes the captioned rendition to the delivery location.")
        def emit_captions(context: StageContext, captions: Path) -> StageOutput:
            return stages.emit(context.video, {"captioned.mp4": captions}, context.dagster.resources.delivery.store(),
                               context.work)

        assets += [captions, emit_captions]

    packaged = [key(rendition_asset_name(r.name)) for r in spec.ladder] + [key(n) for n in spec.hls.include]

    @video_asset(key=key("hls"), ins={"renditions": packaged}, code_version=version(spec.hls), announces="package.ready",
                 retry=retry("package"), run_with_missing=spec.hls.min_renditions is not None,
                 description="HLS VOD: one variant per rendition and a master playlist.")
    def hls(context: StageContext, renditions: list[Path]) -> StageOutput:
        by_name = {path.stem: path for path in renditions}
        if len(by_name) < len(renditions):
            raise Failure(description="the renditions to package were loaded ambiguously: materialize hls together "
                                      "with all its renditions (unchanged ones are reused, not re-encoded)",
                          allow_retries=False)
        if len(by_name) < spec.renditions_required:
            raise Failure(description=f"only {len(by_name)} of {len(packaged)} renditions were produced; packaging "
                                      f"needs {spec.renditions_required} (hls.min_renditions)", allow_retries=False)
        return stages.package_hls(by_name, spec.hls, context.ffmpeg, context.work)

    published = {"hls": key("hls"), **({"thumbnails": key("thumbnails")}
                                       if spec.thumbnails.enabled and spec.emit.thumbnails else {})}

    @video_asset(key=key("emit"), ins=published, code_version=version(spec.emit), reusable=False,
                 announces="video.published", retry=retry("emit"), kinds=(), required_resource_keys=["delivery"],
                 description=f"Publishes {' and '.join(published)} to the delivery location.")
    def emit(context: StageContext, **parts: Path) -> StageOutput:
        return stages.emit(context.video, parts, context.dagster.resources.delivery.store(), context.work)

    return [*assets, hls, emit]


def _sidecar_origin(context: Any, key: AssetKey) -> str:
    """Where the stored caption sidecar came from (beside the source the user named), for messages."""
    meta = latest_metadata(context, key)
    if "original_path" not in meta or "caption_sidecar" not in meta:
        return "of this video"
    return f"{str(meta['original_path']).rsplit('/', 1)[0]}/{meta['caption_sidecar']}"


def _last_source(context: AssetExecutionContext, key: AssetKey) -> str:
    """The path this partition was last ingested from, so a re-run from the UI needs no config."""
    meta = latest_metadata(context, key)
    if "original_path" in meta:
        return str(meta["original_path"])
    raise Failure(
        description=(
            f"video {context.partition_key!r} has never been ingested: pass its file as run config "
            "`ops: {<prefix>__ingest: {config: {source_path: /path/to/video.mp4}}}` or use `mpegflow run FILE`."
        ),
        allow_retries=False,
    )
