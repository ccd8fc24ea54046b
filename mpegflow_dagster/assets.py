"""The asset factory: one typed spec in, the Dagster assets of its video graph out.

Every stage runs through `_StageRun`, which gives it what a video pipeline needs around the
FFmpeg work: skip when nothing changed, a scratch directory removed on failure, failure
classification with retries only for what can heal, one `rendition.failed` event per failed
rendition, and a provenance record on the materialization.
"""

import json
import os
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Optional

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetObservation,
    AssetOut,
    AssetRecordsFilter,
    AssetSpec,
    AssetsDefinition,
    Backoff,
    Config,
    DataVersion,
    DynamicPartitionsDefinition,
    EventLogRecord,
    Failure,
    GraphDefinition,
    Jitter,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    RetryRequested,
    asset,
    graph_multi_asset,
    multi_asset,
    op,
)
from pydantic import Field

from . import stages
from .events import Event
from .io_manager import PROVENANCE_KEY, ArtifactIOManager, Reused
from .media.classify import Classification, classify_exception
from .provenance import EncoderBuild, Provenance, recipe_hash, x264_version
from .resources import DeliveryResource, FFmpegResource
from .s3.resources import S3SourceResource
from .s3.store import classify_s3_error
from .spec import PipelineSpec, StageKind
from .stages import StageOutput, Tools
from .storage import describe, release_scratch
from .webhooks.resources import WebhookResource

IO_MANAGER_KEY = "media_io_manager"
FORCE_TAG = "mpegflow/force"  # run tag: "true" re-runs stages even when nothing changed
DATA_VERSION_TAG = "dagster/data_version"


class IngestConfig(Config):
    source_path: Optional[str] = Field(
        None,
        description="Local path or s3:// URI of the source video. Default: where this video was last ingested from.",
    )


def partitions_for(spec: PipelineSpec) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=f"{spec.name}_videos")


def rendition_asset_name(name: str) -> str:
    return f"rendition_{name}"


def step_keys(assets: list[AssetsDefinition]) -> dict[AssetKey, str]:
    """Which step materializes each asset (renditions and thumbnails share one; a graph-backed
    asset's step is named `<graph>.<op>`)."""
    def step(node: Any) -> str:
        if isinstance(node, GraphDefinition):
            [inner] = node.node_defs
            return f"{node.name}.{inner.name}"
        return node.name

    return {key: step(a.node_def) for a in assets for key in a.keys_by_output_name.values()}  # in spec order


@dataclass(frozen=True)
class _StageDef:
    name: str  # asset name
    kind: StageKind
    fingerprint: str  # hash of the resolved stage spec
    inputs: tuple[str, ...] = ()  # upstream asset names whose data versions feed the recipe
    preset: Optional[str] = None
    rendition: Optional[str] = None  # set for encodes: failures are announced as rendition.failed
    reusable: bool = True  # False: always run (publishing to the outside world)


def _latest(context: AssetExecutionContext, key: AssetKey) -> Optional[EventLogRecord]:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
    ).records
    return records[0] if records else None


class _StageRun:
    """One attempt of one stage (one asset) for one video: prepare (recipe, reuse), produce in a
    scratch directory, finish (provenance, Output) or fail (classification, retry or Failure)."""

    def __init__(self, context: AssetExecutionContext | OpExecutionContext, spec: PipelineSpec, stage: _StageDef,
                 ffmpeg: FFmpegResource, events: WebhookResource, *, multi: bool = False,
                 upstream_versions: Optional[dict[str, Optional[str]]] = None) -> None:
        self.context, self.spec, self.stage, self.ffmpeg, self.events = context, spec, stage, ffmpeg, events
        self.video = context.partition_key
        self.asset_key = AssetKey([spec.name, stage.name])
        # A multi-asset names each output after its key; a single asset has one default output.
        self.output_name = self.asset_key.to_python_identifier() if multi else "result"
        self.inputs: dict[str, Optional[str]] = {}
        # Data versions of upstream assets by name; outputs of one step share it (one query each).
        self.upstream_versions = {} if upstream_versions is None else upstream_versions
        self.recipe = ""
        self.threads = ffmpeg.threads
        self.lanes = ffmpeg.encode_lanes
        self.earlier: list[dict[str, Any]] = []  # failed attempts of this stage in this run

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.spec.name, name])

    def run(self, produce: Callable[[Path, Tools], Optional[StageOutput]], *, recipe_extra: Optional[dict] = None) -> Optional[Output]:
        reused = self.prepare(recipe_extra)
        return reused if reused is not None else self.make(produce)

    def make(self, produce: Callable[[Path, Tools], Optional[StageOutput]]) -> Optional[Output]:
        """Produce the output now (after `prepare`), in a scratch directory that a failure removes."""
        started = time.time()
        try:
            with self.ffmpeg.scratch(self.stage.name, self.video) as work:
                out = produce(work, self.ffmpeg.tools(self.context.log, threads=self.threads, lanes=self.lanes))
                return None if out is None else self.finish(out, started)
        except (Failure, RetryRequested):
            raise
        except Exception as exc:
            raise self.failure(exc) from exc

    def prepare(self, recipe_extra: Optional[dict] = None) -> Optional[Output]:
        """Work out the recipe; an Output reusing the stored artifact when nothing changed."""
        for name in self.stage.inputs:
            if name not in self.upstream_versions:
                record = _latest(self.context, self.key(name))
                self.upstream_versions[name] = (record.asset_materialization.tags.get(DATA_VERSION_TAG)
                                                if record and record.asset_materialization else None)
            self.inputs[name] = self.upstream_versions[name]
        self.earlier = self._failures()
        self.threads = self._reduced(self.ffmpeg.threads)
        self.lanes = self._reduced(self.ffmpeg.encode_lanes)
        self.recipe = recipe_hash(fingerprint=self.stage.fingerprint, build_hash=self.ffmpeg.build.build_hash,
                                  inputs={**self.inputs, **(recipe_extra or {})}, threads=self.threads)
        try:
            return self._reuse()
        except Exception as exc:  # the stored artifact changed: a failure of this output alone
            raise self.failure(exc) from exc

    def finish(self, out: StageOutput, started: float) -> Output:
        """Hash the output (inside the scratch dir, so a failure here still cleans up) and describe it."""
        sha, size, files = describe(out.path, out.hashed)
        provenance = Provenance(
            pipeline=self.spec.name, asset=self.stage.name, video=self.video, run_id=self.context.run_id,
            recipe=self.recipe, stage_fingerprint=self.stage.fingerprint, preset=self.stage.preset,
            encoder=EncoderBuild.of(self.ffmpeg.build, self.ffmpeg.pin),
            encoder_libraries={"x264": v} if (v := x264_version(out.path)) else {},
            argv=[r.argv for r in out.runs], inputs=self.inputs, output_sha256=sha, output_size_bytes=size, output_files=files,
            media={k: v for k, v in out.facts.items() if v is not None},
            wall_s=round(time.time() - started, 3), ffmpeg_cpu_s=round(sum(r.cpu_s for r in out.runs), 3),
            ffmpeg_runs=[(round(r.started_at, 3), round(r.wall_s, 3)) for r in out.runs],
            attempt=self.context.retry_number + 1, earlier_failures=[o["failure_class"] for o in self.earlier],
            bit_exact=self.threads == 1,
        )
        self._announce_success(out, sha)
        return Output(out.path, output_name=self.output_name, data_version=DataVersion(sha),
                      metadata=self._metadata(provenance, out.facts))

    def _metadata(self, prov: Provenance, facts: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {k: v for k, v in facts.items() if v is not None}
        metadata.update(
            sha256=prov.output_sha256, size_bytes=prov.output_size_bytes, files=prov.output_files,
            recipe=prov.recipe, stage_fingerprint=prov.stage_fingerprint, attempt=prov.attempt,
            ffmpeg_version=prov.encoder.ffmpeg_version, ffmpeg_build_hash=prov.encoder.ffmpeg_build_hash,
            wall_s=prov.wall_s, ffmpeg_cpu_s=prov.ffmpeg_cpu_s, reused=prov.reused_from_run is not None,
        )
        if prov.preset:
            metadata["preset"] = prov.preset
        if prov.argv:
            metadata["ffmpeg_argv"] = MetadataValue.json(prov.argv)
        metadata[PROVENANCE_KEY] = MetadataValue.json(prov.model_dump(mode="json"))
        return metadata

    # -- skip unchanged work ------------------------------------------------------------------

    def _reuse(self) -> Optional[Output]:
        context = self.context
        if not self.stage.reusable or context.run.tags.get(FORCE_TAG, "").lower() == "true":
            return None
        record = _latest(context, self.asset_key)
        meta = record.asset_materialization.metadata if record and record.asset_materialization else {}
        if "recipe" not in meta or meta["recipe"].value != self.recipe or PROVENANCE_KEY not in meta:
            return None
        prov = Provenance.model_validate(meta[PROVENANCE_KEY].value)
        io_manager = getattr(context.resources, IO_MANAGER_KEY, None)
        if not isinstance(io_manager, ArtifactIOManager):
            return None  # a store we cannot check: make it again
        stored = io_manager.stored(self.asset_key, self.video, Path(meta["path"].value).name, prov.output_sha256)
        prov = prov.model_copy(update={"run_id": context.run_id, "reused_from_run": prov.reused_from_run or record.run_id,
                                       "attempt": context.retry_number + 1, "wall_s": 0.0, "ffmpeg_cpu_s": 0.0,
                                       "ffmpeg_runs": []})
        context.log.info(f"{self.stage.name}: inputs, parameters and encoder build unchanged: reusing the output of run {prov.reused_from_run}")
        facts = {k: v.value for k, v in meta.items() if k in prov.media}
        return Output(Reused(stored), output_name=self.output_name,
                      data_version=DataVersion(prov.output_sha256), metadata=self._metadata(prov, facts))

    # -- failures -----------------------------------------------------------------------------

    def _reduced(self, base: int) -> int:
        """`base` (threads or lanes) halved for each earlier `resource` failure of this stage in this
        run: less memory, fewer frames in flight. A base of 0 (FFmpeg decides) counts as the CPUs."""
        resource_failures = sum(1 for o in self.earlier if o["failure_class"] == "resource")
        if not resource_failures:
            return base
        return max(1, (base or os.cpu_count() or 2) >> resource_failures)

    def _failures(self) -> list[dict[str, Any]]:
        """Failed attempts of this stage in this run, oldest first (recorded as asset observations)."""
        if self.context.retry_number == 0:
            return []
        records = self.context.instance.fetch_observations(
            AssetRecordsFilter(asset_key=self.asset_key, asset_partitions=[self.video]), limit=50
        ).records
        found = [r.asset_observation.metadata for r in records
                 if r.run_id == self.context.run_id and r.asset_observation and "failure_class" in r.asset_observation.metadata]
        return [{k: v.value for k, v in m.items()} for m in reversed(found)]

    def classification(self, exc: Exception) -> Classification:
        return classify_s3_error(exc) or classify_exception(exc, family=self.ffmpeg.build.family)

    def retryable(self, c: Classification) -> bool:
        policy = self.spec.failures.retry_for(self.stage.kind)
        return c.failure_class in ("transient", "resource") and self.context.retry_number < policy.max_retries

    def failure(self, exc: Exception) -> Exception:
        """Record a failed attempt and say what to raise: RetryRequested while a retry can heal it,
        else a Failure (announcing a failed rendition once)."""
        c = self.classification(exc)
        attempt = self.context.retry_number
        stderr = getattr(getattr(exc, "result", None), "stderr_tail", "") or ""
        details = {"failure_class": c.failure_class, "reason": c.reason, "message": c.message,
                   "exit_code": c.exit_code, "signal": c.signal, "attempt": attempt + 1}
        meta = {**{k: v for k, v in details.items() if v is not None},
                "stderr_tail": MetadataValue.md(f"```\n{stderr[-4000:]}\n```")}
        self.context.log_event(AssetObservation(asset_key=self.asset_key, partition=self.video, metadata=meta))
        policy = self.spec.failures.retry_for(self.stage.kind)
        if self.retryable(c):
            wait = policy.wait_s(attempt, random.random())
            self.context.log.warning(
                f"{self.stage.name} attempt {attempt + 1} failed ({c.failure_class}: {c.reason}: {c.message}); "
                f"retrying in {wait:.1f}s"
            )
            return RetryRequested(max_retries=policy.max_retries, seconds_to_wait=wait)
        subject = f"rendition {self.stage.rendition}" if self.stage.rendition else f"stage {self.stage.name}"
        headline = f"{subject} failed: {c.failure_class}: {c.reason}"
        if self.stage.rendition:
            self.events.sink().send(Event(
                type="rendition.failed", pipeline=self.spec.name, video=self.video, run_id=self.context.run_id,
                subject=self.stage.rendition, message=headline, data=details,
            ))
        return Failure(description=f"video {self.video!r}: {headline} ({c.message})", metadata=meta, allow_retries=False)

    def _announce_success(self, out: StageOutput, sha: str) -> None:
        kinds = {"encode": "rendition.ready", "package": "package.ready", "ingest": "video.received", "emit": "video.published"}
        event_type = kinds.get(self.stage.kind)
        if event_type:
            self.events.sink().send(Event(
                type=event_type, pipeline=self.spec.name, video=self.video, run_id=self.context.run_id,
                subject=self.stage.rendition or (self.stage.name if self.stage.kind == "emit" else None),
                message=f"{self.stage.name} ready", data={"sha256": sha, **_jsonable(out.facts)},
            ))


def _encode_shared(context: AssetExecutionContext, spec: PipelineSpec, runs: dict[str, _StageRun],
                   ffmpeg: FFmpegResource, ingest: Path, probe: Path) -> Iterator[Output]:
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
        except (Failure, RetryRequested) as exc:  # e.g. its stored artifact changed: this output alone
            failed[name] = exc
            continue
        if reused is not None:
            yield reused
        else:
            todo.append(name)
    if todo:
        failed.update((yield from _encode_todo(context, spec, runs, todo, ffmpeg, ingest, probe)))
    _settle(context, spec, failed, renditions_done=_renditions(runs, exclude=failed))


def _encode_todo(context: AssetExecutionContext, spec: PipelineSpec, runs: dict[str, _StageRun], todo: list[str],
                 ffmpeg: FFmpegResource, ingest: Path, probe: Path) -> Generator[Output, None, dict[str, Exception]]:
    """Encode the outputs `todo` together, or one by one after a permanent failure of the shared
    run; yields what was made, returns the failures by output."""
    info = stages.load_probe(probe)
    rungs = [spec.rendition(n.removeprefix("rendition_")) for n in todo if n != "thumbnails"]
    started = time.time()
    try:
        with ExitStack() as scratches:
            work = {n.removeprefix("rendition_"): scratches.enter_context(ffmpeg.scratch(n, context.partition_key))
                    for n in todo}
            tools = ffmpeg.tools(context.log, threads=min(runs[n].threads for n in todo),
                                 lanes=min(runs[n].lanes for n in todo))
            outs = stages.encode_ladder(ingest, info, spec, rungs, "thumbnails" in todo, tools, work)
            finished = [runs[n].finish(outs[n.removeprefix("rendition_")], started) for n in todo]
    except Exception as exc:
        first = runs[todo[0]]
        if len(todo) == 1 or first.retryable(first.classification(exc)):
            verdicts = {n: runs[n].failure(exc) for n in todo}
            if isinstance(verdicts[todo[0]], RetryRequested):
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
    retry = next((f for f in failures.values() if isinstance(f, RetryRequested)), None)
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


def _encode_each(spec: PipelineSpec, runs: dict[str, _StageRun], ingest: Path,
                 info) -> Generator[Output, None, dict[str, Exception]]:
    failures: dict[str, Exception] = {}
    for name, run in runs.items():
        def produce(work: Path, tools: Tools, key: str = name.removeprefix("rendition_")) -> StageOutput:
            rungs = [] if key == "thumbnails" else [spec.rendition(key)]  # the same chunks and bytes as shared
            return stages.encode_ladder(ingest, info, spec, rungs, key == "thumbnails", tools, {key: work})[key]
        try:
            output = run.run(produce)
        except (Failure, RetryRequested) as exc:
            failures[name] = exc
            continue
        if output is not None:
            yield output
    return failures


def _jsonable(facts: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(facts, default=str))


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
    retry = spec.failures.retry
    common: dict[str, Any] = dict(
        key_prefix=[prefix], group_name=prefix, partitions_def=partitions_for(spec), io_manager_key=IO_MANAGER_KEY,
        # Stage bodies classify their own failures (RetryRequested / Failure); this policy covers
        # what happens outside them: storage errors while loading inputs or publishing outputs.
        retry_policy=RetryPolicy(max_retries=retry.max_retries, delay=retry.delay_s, backoff=Backoff.EXPONENTIAL,
                                 jitter=Jitter.PLUS_MINUS),
    )

    def key(name: str) -> AssetKey:
        return AssetKey([prefix, name])

    def fingerprint(*parts: Any) -> str:
        return spec.stage_fingerprint(*parts) + (f"+{encoder_build}" if encoder_build else "")

    def ins(*names: str) -> dict[str, AssetIn]:
        return {n: AssetIn(key(n)) for n in names}

    ingest_def = _StageDef("ingest", "ingest", "ingest-1")
    probe_def = _StageDef("probe", "probe", "probe-1", inputs=("ingest",))

    # Ingest and probe share one step: the probe reads the stored copy before it is published,
    # and a video pays for one step instead of two. Each is still its own asset.
    @multi_asset(
        name=f"{prefix}__ingest",
        specs=[
            AssetSpec(key("ingest"), code_version=ingest_def.fingerprint, group_name=prefix,
                      description="Stored copy of the source video and its caption sidecar.",
                      partitions_def=common["partitions_def"]).with_io_manager_key(IO_MANAGER_KEY),
            AssetSpec(key("probe"), deps=[key("ingest")], code_version=probe_def.fingerprint, group_name=prefix,
                      description="ffprobe facts of the source (JSON).",
                      partitions_def=common["partitions_def"]).with_io_manager_key(IO_MANAGER_KEY),
        ],
        retry_policy=common["retry_policy"],
    )
    def ingest(context: AssetExecutionContext, config: IngestConfig, ffmpeg: FFmpegResource, events: WebhookResource,
               sources: S3SourceResource) -> Iterator[Output]:
        source = config.source_path or _last_source(context, key("ingest"))
        extensions = spec.captions.sidecar_extensions
        upstream: dict[str, Optional[str]] = {}
        ingest_run = _StageRun(context, spec, ingest_def, ffmpeg, events, multi=True)
        probe_run = _StageRun(context, spec, probe_def, ffmpeg, events, multi=True, upstream_versions=upstream)
        try:
            if source.startswith("s3://"):
                head = sources.head(source)
                identity: dict[str, Any] = {"source": source, "etag": head["ETag"], "size": head["ContentLength"]}
            else:
                identity = stages.source_fingerprint(Path(source))
        except Exception as exc:  # a missing source, a link out of its directory: classified like any failure
            raise ingest_run.failure(exc) from exc

        def produce(work: Path, tools: Tools) -> StageOutput:
            if source.startswith("s3://"):
                local = sources.download(source, work / "download", extensions)
                return stages.ingest(local, work, extensions, origin=source)
            return stages.ingest(Path(source), work, extensions)

        ingested = ingest_run.prepare(identity)
        if ingested is not None:
            upstream["ingest"] = ingested.data_version.value
            probed = probe_run.prepare()
            if probed is not None:
                yield from (ingested, probed)
                return
        # The probe needs the stored copy in hand: the two are reused together or made again.
        ingested = ingest_run.make(produce)
        assert ingested is not None and ingested.data_version is not None  # ingest always has an output
        upstream["ingest"] = ingested.data_version.value
        try:
            probed = probe_run.run(lambda work, tools: stages.probe_source(ingested.value, work, tools, name=source))
        except (Failure, RetryRequested):
            release_scratch(ingested.value)  # a copy that is not valid media is not kept
            raise
        yield from (ingested, probed)

    # Renditions and thumbnails share one step so that each decode of the source feeds every encoder;
    # each is still its own asset (own materialization, code version, retries, provenance), and
    # any subset can be materialized on demand.
    encode_defs = {
        rendition_asset_name(r.name): _StageDef(
            rendition_asset_name(r.name), "encode", fingerprint(r, spec.preset_for(r), spec.encode_settings()),
            inputs=("ingest", "probe"), preset=spec.preset_for(r).ref, rendition=r.name)
        for r in spec.ladder
    }
    if spec.thumbnails.enabled:
        encode_defs["thumbnails"] = _StageDef("thumbnails", "thumbnails", fingerprint(spec.thumbnails),
                                              inputs=("ingest", "probe"))
    descriptions = {rendition_asset_name(r.name): f"{r.name}: H.264 {r.profile} {r.video_bitrate_kbps} kb/s, "
                    f"keyframes every {spec.gop_s:g}s." for r in spec.ladder}
    descriptions["thumbnails"] = "JPEG thumbnails, a sprite sheet and a WebVTT storyboard."

    @multi_asset(
        name=f"{prefix}__encode",
        specs=[
            AssetSpec(key(name), deps=[key("ingest"), key("probe")], code_version=sdef.fingerprint, skippable=True,
                      kinds={"ffmpeg"}, group_name=prefix, description=descriptions[name],
                      partitions_def=common["partitions_def"]).with_io_manager_key(IO_MANAGER_KEY)
            for name, sdef in encode_defs.items()
        ],
        ins=ins("ingest", "probe"),
        can_subset=True,
        retry_policy=common["retry_policy"],
    )
    def encode(context: AssetExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource,
               ingest: Path, probe: Path) -> Iterator[Output]:
        upstream: dict[str, Optional[str]] = {}
        runs = {name: _StageRun(context, spec, sdef, ffmpeg, events, multi=True, upstream_versions=upstream)
                for name, sdef in encode_defs.items() if key(name) in context.selected_asset_keys}
        yield from _encode_shared(context, spec, runs, ffmpeg, ingest, probe)

    assets: list[AssetsDefinition] = [ingest, encode]
    if spec.captions.enabled:  # else no captions assets, and `captions.rendition` need not be a rung
        caption_rung = spec.rendition(spec.captions.rendition)
        captions_def = _StageDef("captions", "captions",
                                 fingerprint(spec.captions, caption_rung, spec.preset_for(caption_rung), spec.encode_settings()),
                                 inputs=("ingest", "probe"), preset=spec.preset_for(caption_rung).ref, rendition="captioned")

        @asset(name="captions", code_version=captions_def.fingerprint, output_required=False, ins=ins("ingest", "probe"),
               kinds={"ffmpeg"}, description="A rendition with the sidecar captions burned in; skipped when there is no sidecar.",
               **common)
        def captions(context: AssetExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource, ingest: Path, probe: Path):
            if stages.captions_file(ingest) is None:
                context.log.info(f"no caption sidecar ({', '.join(spec.captions.sidecar_extensions)}) beside the source: skipped")
                return
            result = _StageRun(context, spec, captions_def, ffmpeg, events).run(
                lambda work, tools: stages.burn_captions(ingest, stages.load_probe(probe), spec, tools, work,
                                                         sidecar_name=_sidecar_origin(context, key("ingest"))))
            if result is not None:
                yield result

        emit_captions_def = _StageDef("emit_captions", "emit", "emit-captions-1", inputs=("captions",), reusable=False)

        @asset(name="emit_captions", code_version=emit_captions_def.fingerprint, ins=ins("captions"),
               description="Publishes the captioned rendition to the delivery location.", **common)
        def emit_captions(context: AssetExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource,
                          delivery: DeliveryResource, captions: Path) -> Output:
            return _StageRun(context, spec, emit_captions_def, ffmpeg, events).run(
                lambda work, tools: stages.emit(context.partition_key, {"captioned.mp4": captions}, delivery.store(), work))

        assets += [captions, emit_captions]

    rung_names = tuple(rendition_asset_name(r.name) for r in spec.ladder)
    hls_def = _StageDef("hls", "package", fingerprint(spec.hls), inputs=rung_names)

    def package(context: AssetExecutionContext | OpExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource,
                renditions: list[Path]) -> Output:
        by_rung = {path.stem: path for path in renditions}
        if len(by_rung) < len(renditions):
            raise Failure(description="the renditions to package were loaded ambiguously: materialize hls together "
                                      "with all its renditions (unchanged ones are reused, not re-encoded)", allow_retries=False)
        if len(by_rung) < spec.renditions_required:
            raise Failure(description=f"only {len(by_rung)} of {len(spec.ladder)} renditions were produced; packaging "
                                      f"needs {spec.renditions_required} (hls.min_renditions)", allow_retries=False)
        return _StageRun(context, spec, hls_def, ffmpeg, events).run(
            lambda work, tools: stages.package_hls(by_rung, spec.hls, tools, work))

    hls_description = "HLS VOD: one variant per rendition and a master playlist."
    if spec.hls.min_renditions is None:
        @asset(name="hls", code_version=hls_def.fingerprint, ins=ins(*rung_names), kinds={"ffmpeg"},
               description=hls_description, **common)
        def hls(context: AssetExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource, **renditions: Path) -> Output:
            return package(context, ffmpeg, events, [renditions[name] for name in rung_names])
    else:
        # A partial ladder reaches the packager through one fan-in input, which Dagster runs with
        # the renditions that were produced (a plain input from a missing asset skips the step).
        @op(name=f"{prefix}__package_hls", retry_policy=common["retry_policy"], out=Out(io_manager_key=IO_MANAGER_KEY))
        def package_hls(context: OpExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource,
                        renditions: list[Path]) -> Output:
            return package(context, ffmpeg, events, renditions)

        @graph_multi_asset(
            name=f"{prefix}__hls",
            outs={"hls": AssetOut(key=key("hls"), code_version=hls_def.fingerprint, kinds={"ffmpeg"}, group_name=prefix,
                                  io_manager_key=IO_MANAGER_KEY, description=hls_description)},
            ins=ins(*rung_names),
            partitions_def=common["partitions_def"],
        )
        def hls(**renditions):
            return package_hls([renditions[name] for name in rung_names])

    published = ("hls", *(("thumbnails",) if spec.thumbnails.enabled and spec.emit.thumbnails else ()))
    emit_def = _StageDef("emit", "emit", fingerprint(spec.emit), inputs=published, reusable=False)

    @asset(name="emit", code_version=emit_def.fingerprint, ins=ins(*published),
           description=f"Publishes {' and '.join(published)} to the delivery location.", **common)
    def emit(context: AssetExecutionContext, ffmpeg: FFmpegResource, events: WebhookResource, delivery: DeliveryResource,
             **parts: Path) -> Output:
        return _StageRun(context, spec, emit_def, ffmpeg, events).run(
            lambda work, tools: stages.emit(context.partition_key, parts, delivery.store(), work))

    return [*assets, hls, emit]


def _sidecar_origin(context: AssetExecutionContext, key: AssetKey) -> str:
    """Where the stored caption sidecar came from (beside the source the user named), for messages."""
    record = _latest(context, key)
    meta = record.asset_materialization.metadata if record and record.asset_materialization else {}
    if "original_path" not in meta or "caption_sidecar" not in meta:
        return "of this video"
    return f"{str(meta['original_path'].value).rsplit('/', 1)[0]}/{meta['caption_sidecar'].value}"


def _last_source(context: AssetExecutionContext, key: AssetKey) -> str:
    """The path this partition was last ingested from, so a re-run from the UI needs no config."""
    record = _latest(context, key)
    meta = record.asset_materialization.metadata if record and record.asset_materialization else {}
    if "original_path" in meta:
        return str(meta["original_path"].value)
    raise Failure(
        description=(
            f"video {context.partition_key!r} has never been ingested: pass its file as run config "
            "`ops: {<prefix>__ingest: {config: {source_path: /path/to/video.mp4}}}` or use `mpegflow run FILE`."
        ),
        allow_retries=False,
    )
