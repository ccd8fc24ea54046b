"""The stage API: a function over local files becomes a video-grade Dagster asset.

A stage function receives a `StageContext` (a scratch directory, the FFmpeg runner, the video)
and its inputs as local paths, and returns the file or directory it wrote (a `Path`, or a
`StageOutput` with facts for the metadata). `@video_asset` makes it a Dagster asset partitioned
by video that gets, with no further code: the binary IO manager (local disk or S3, published
atomically, never pickled), a scratch directory removed after each attempt, classification of
every FFmpeg and S3 failure with a retry (Dagster's RetryPolicy) only for what can heal and
`Failure(allow_retries=False)` for the rest, provenance (argv of every FFmpeg run, encoder
build, input data versions, output sha256, attempts), a recipe hash that skips unchanged work,
the pinned encoder build, and events (`rendition.failed`, `rendition.ready`, ...).
Every built-in stage (see `assets.py`) is made with these same decorators.

Example:
    .. code-block:: python

        from pathlib import Path
        from mpegflow_dagster import StageContext, source_file, video_asset

        @video_asset(key=["vod", "preview"], ins={"ingest": ["vod", "ingest"]}, code_version="1")
        def preview(context: StageContext, ingest: Path) -> Path:
            out = context.work / "preview.mp4"
            context.ffmpeg.run("preview", ["-i", str(source_file(ingest)), "-t", "5", "-c", "copy", str(out)])
            return out
"""

import dataclasses
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Callable, Iterator, Mapping, Optional, Sequence, Union, cast

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetObservation,
    AssetOut,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSpec,
    Backoff,
    BetaWarning,
    Config,
    DataVersion,
    DynamicPartitionsDefinition,
    EventLogRecord,
    Failure,
    In,
    Jitter,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    asset,
    graph_multi_asset,
    multi_asset,
    op,
)

from .checks import ChecksFailed, StageCheck, Verdict, judge, results
from .dagster_private import data_version, step_key
from .events import Event, failure_version
from .io_manager import PROVENANCE_KEY, RECORD_METADATA, ArtifactIOManager, Reused
from .media.classify import Classification, classify_exception
from .media.codecs import encoder_versions
from .media.probe import MediaInfo, probe
from .outcomes import degraded, video_failed, video_succeeded
from .provenance import EncoderBuild, Provenance, recipe_hash
from .resources import FFmpegResource, PreviewsResource
from .s3.store import classify_s3_error
from .spec import PipelineSpec, RetrySpec
from .stages.toolkit import StageOutput, Tools
from .storage import describe
from .webhooks.resources import WebhookResource

IO_MANAGER_KEY = "media_io_manager"
# Run tag: "true" re-runs stages even when nothing changed, as the ffmpeg resource's `force`.
FORCE_TAG = "mpegflow/force"
# Asset metadata by which a stage tells emit what to publish (see stages/emit.py).
PUBLISH_TAG = "mpegflow/publish_as"
ENTRY_TAG = "mpegflow/entry"
OPTIONAL_TAG = "mpegflow/optional"
STAGE_RESOURCES = frozenset({"ffmpeg", "events", "previews"})  # FFmpeg-, Webhook-, PreviewsResource

KeyLike = Union[AssetKey, str, Sequence[str]]
Context = Union[AssetExecutionContext, OpExecutionContext]
# (context, the stored output's metadata values, the inputs' data versions) -> may it be reused?
ReuseCheck = Callable[[Context, Mapping[str, Any], Mapping[str, Optional[str]]], bool]
# Metadata made afresh each time an output is recorded, made or reused (emit's summary of the
# video): `(dagster_context, metadata values, reused) -> metadata`.
Annotate = Callable[[Context, Mapping[str, Any], bool], Mapping[str, Any]]


def videos_partitions_name(pipeline: str) -> str:
    return f"{pipeline}_videos"


def video_partitions(pipeline: str) -> DynamicPartitionsDefinition:
    """The partitions of a pipeline: one per source video, named by `videos.video_key`."""
    return DynamicPartitionsDefinition(name=videos_partitions_name(pipeline))


def retry_policy(spec: RetrySpec) -> RetryPolicy:
    """Dagster's RetryPolicy for a RetrySpec: it alone decides when a retry runs."""
    return RetryPolicy(
        max_retries=spec.max_retries,
        delay=spec.delay_s,
        backoff={"exponential": Backoff.EXPONENTIAL, "linear": Backoff.LINEAR}.get(spec.backoff),
        jitter={"plus_minus": Jitter.PLUS_MINUS, "full": Jitter.FULL}.get(spec.jitter),
    )


def _key(key: KeyLike) -> AssetKey:
    return key if isinstance(key, AssetKey) else AssetKey.from_coercible(key)


def pipeline_key(spec: PipelineSpec, name: str) -> AssetKey:
    """The key of a pipeline's asset: `<pipeline>/<name>`."""
    return AssetKey([spec.name, name])


@dataclass(frozen=True)
class StepLayout:
    """How a deployment lays a video's work out in Dagster steps; never what the bytes are."""

    # 0: a shared encode's time chunks are made inside its step (fastest on one machine); N: in N
    # chunk-batch steps before it, which a distributed executor places on its workers
    chunk_steps: int = 0


@dataclass(frozen=True)
class VideoStage:
    """One output of a stage: its asset and how it behaves. The decorators build these."""

    key: AssetKey  # [pipeline, ..., name]; the first part names the pipeline in events
    code_version: str  # e.g. `provenance.code_version(settings, encoder_build=...)`
    inputs: Mapping[str, AssetKey] = field(
        default_factory=dict
    )  # upstream assets whose data versions feed the recipe
    description: Optional[str] = None
    rendition: Optional[str] = (
        None  # failures are announced as `rendition.failed` of this rendition
    )
    announces: Optional[str] = None  # event type sent on success, e.g. "rendition.ready"
    reusable: bool = True  # False: always run
    # Whether a stored output whose recipe is unchanged may be reused (emit: the delivery still
    # holds it); None: always.
    reuse_if: Optional[ReuseCheck] = None
    concludes: bool = False  # a new output of it is the video's publication: `video.succeeded`
    annotate: Optional[Annotate] = None
    optional: bool = False  # the function may return None: no output, downstream stages skip
    retry: RetrySpec = RetrySpec()
    preset: Optional[str] = None  # recorded in provenance
    kinds: frozenset[str] = frozenset({"ffmpeg"})
    publish_as: Optional[str] = None  # emit publishes the output as `<video>/<publish_as>`
    entry: Optional[str] = None  # the file of a published tree a viewer opens (e.g. master.m3u8)
    checks: tuple[StageCheck, ...] = ()  # asset checks judging each output's facts

    @property
    def pipeline(self) -> str:
        return self.key.path[0]

    @property
    def name(self) -> str:
        return self.key.path[-1]

    @property
    def metadata(self) -> dict[str, Any]:
        """What the asset tells other stages (emit) about its output."""
        if not self.publish_as:
            return {}
        return {
            PUBLISH_TAG: self.publish_as,
            OPTIONAL_TAG: self.optional,
            **({ENTRY_TAG: self.entry} if self.entry else {}),
        }


@dataclass
class StageContext:
    """What a stage function is given besides its inputs."""

    work: (
        Path  # empty scratch directory of this attempt: write the output here (removed afterwards)
    )
    ffmpeg: (
        Tools  # `ffmpeg.run(label, argv)`: progress logged, failures classified, argv in provenance
    )
    video: str  # the partition key
    log: Any  # Dagster's logger for this step
    dagster: Context  # the Dagster context, for anything else

    def probe(self, path: Path) -> MediaInfo:
        """ffprobe facts of a file (streams, duration, frame rate)."""
        return probe(path, self.ffmpeg.ffprobe)


StageFunction = Callable[..., Union[Path, StageOutput, None]]


class StageOutputError(ValueError):
    """A stage function returned something the IO manager cannot publish."""

    failure_class = "permanent"
    reason = "stage.invalid_output"


class Retryable(Exception):
    """A classified failure that a retry may heal: Dagster's RetryPolicy of the step retries it."""


def _latest(context: Context, key: AssetKey) -> Optional[EventLogRecord]:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
    ).records
    return records[0] if records else None


def _metadata_of(record: Optional[EventLogRecord]) -> Mapping[str, MetadataValue]:
    return record.asset_materialization.metadata if record and record.asset_materialization else {}


def _values(record: Optional[EventLogRecord]) -> dict[str, Any]:
    return {k: v.value for k, v in _metadata_of(record).items()}


def latest_metadata(context: Context, key: AssetKey) -> dict[str, Any]:
    """Metadata values of the latest materialization of `key` for this video ({} if none)."""
    return _values(_latest(context, key))


class StageRun:
    """One attempt of one stage output for one video. `run(produce)` does all of it; stages whose
    outputs share one FFmpeg pass use its parts: `prepare` (recipe; an Output reusing the stored
    artifact when nothing changed), then `finish` for what they made or `failure` for what failed."""

    def __init__(
        self,
        context: Context,
        stage: VideoStage,
        *,
        output_name: str = "result",
        upstream_versions: Optional[dict[str, Optional[str]]] = None,
    ) -> None:
        self.context, self.stage, self.output_name = context, stage, output_name
        self.ffmpeg: FFmpegResource = context.resources.ffmpeg
        self.events: WebhookResource = context.resources.events
        self.previews: PreviewsResource = context.resources.previews
        self.video = context.partition_key
        # Data versions of upstream assets; outputs of one step share the dict (one query each).
        self.upstream_versions = {} if upstream_versions is None else upstream_versions
        self.inputs: dict[str, Optional[str]] = {}
        self.recipe = ""
        self.threads = self.ffmpeg.threads
        self.lanes = self.ffmpeg.encode_lanes
        self.earlier: list[dict[str, Any]] = []  # failed attempts of this output in this run
        # What the step yields after its outputs: the checks' results (see `checks`).
        self.check_events: list[Any] = []

    def run(
        self, produce: Callable[[StageContext], Union[Path, StageOutput, None]]
    ) -> Optional[Output]:
        reused = self.prepare()
        return reused if reused is not None else self.make(produce)

    def tools(self, *, threads: Optional[int] = None, lanes: Optional[int] = None) -> Tools:
        return self.ffmpeg.tools(
            self.context.log,
            threads=self.threads if threads is None else threads,
            lanes=self.lanes if lanes is None else lanes,
        )

    def make(
        self, produce: Callable[[StageContext], Union[Path, StageOutput, None]]
    ) -> Optional[Output]:
        """Produce the output now (after `prepare`), in a scratch directory that a failure removes."""
        started = time.time()
        try:
            with self.ffmpeg.scratch(self.stage.name, self.video) as work:
                tools = self.tools()
                result = produce(
                    StageContext(work, tools, self.video, self.context.log, self.context)
                )
                out = self._checked(result, work, tools)
                if out is None:
                    shutil.rmtree(work, ignore_errors=True)  # nothing to publish
                    return None
                return self.finish(out, started)
        except (Failure, Retryable):
            raise
        except Exception as exc:
            raise self.failure(exc) from exc

    def _checked(
        self, result: Union[Path, StageOutput, None], work: Path, tools: Tools
    ) -> Optional[StageOutput]:
        if result is None:
            if self.stage.optional:
                return None
            raise StageOutputError(
                f"{self.stage.name} returned None: return the Path it wrote, or declare the "
                "stage optional=True to produce nothing"
            )
        out = result if isinstance(result, StageOutput) else StageOutput(Path(result))
        path = out.path.resolve()
        if not path.exists() or not path.is_relative_to(work.resolve()):
            raise StageOutputError(
                f"{self.stage.name} returned {out.path}: return a file or directory it wrote "
                f"inside context.work ({work}), which the IO manager publishes"
            )
        return out if out.runs else dataclasses.replace(out, runs=list(tools.runs))

    def pending(self) -> bool:
        """Whether `prepare` would make the output (no record of it with this recipe), for a step
        working ahead of the one that records it. Nothing is logged, recorded or announced, and
        the stored artifact is not read: the recording step checks it (a changed one fails there)."""
        self._work_out_recipe()
        record = self._matching_record()
        if record is None:
            return True
        check = self.stage.reuse_if
        return check is not None and not check(self.context, _values(record), self.inputs)

    def prepare(self, recipe_extra: Optional[dict] = None) -> Optional[Output]:
        """Work out the recipe; an Output reusing the stored artifact when nothing changed."""
        self._work_out_recipe(recipe_extra)
        try:
            return self._reuse()
        except Exception as exc:  # the stored artifact changed: a failure of this output alone
            raise self.failure(exc) from exc

    def _work_out_recipe(self, recipe_extra: Optional[dict] = None) -> None:
        for name, key in self.stage.inputs.items():
            if name not in self.upstream_versions:
                self.upstream_versions[name] = data_version(_latest(self.context, key))
            self.inputs[name] = self.upstream_versions[name]
        self.earlier = self._failures()
        self.threads = self._reduced(self.ffmpeg.threads)
        self.lanes = self._reduced(self.ffmpeg.encode_lanes)
        self.recipe = recipe_hash(
            fingerprint=self.stage.code_version,
            build_hash=self.ffmpeg.build.build_hash,
            inputs={**self.inputs, **(recipe_extra or {})},
            threads=self.threads,
        )

    def finish(self, out: StageOutput, started: float) -> Output:
        """Judge the output by its checks (`ChecksFailed` if one refuses it), hash it (inside the
        scratch dir, so a failure here still cleans up) and describe it."""
        self._judged(out.facts)
        sha, size, files = describe(out.path, out.hashed)
        provenance = Provenance(
            pipeline=self.stage.pipeline,
            asset=self.stage.name,
            video=self.video,
            run_id=self.context.run_id,
            recipe=self.recipe,
            stage_fingerprint=self.stage.code_version,
            preset=self.stage.preset,
            encoder=EncoderBuild.of(self.ffmpeg.build, self.ffmpeg.pin),
            encoder_libraries=encoder_versions(out.path, self.ffmpeg.build.path),
            argv=[r.argv for r in out.runs],
            inputs=self.inputs,
            output_sha256=sha,
            output_size_bytes=size,
            output_files=files,
            media={k: v for k, v in out.facts.items() if v is not None},
            wall_s=round(time.time() - started, 3),
            ffmpeg_cpu_s=round(sum(r.cpu_s for r in out.runs), 3),
            ffmpeg_runs=[(round(r.started_at, 3), round(r.wall_s, 3)) for r in out.runs],
            attempt=self.context.retry_number + 1,
            earlier_failures=[o["failure_class"] for o in self.earlier],
            bit_exact=self.threads == 1,
        )
        self._announce_success(out, sha)
        return self._output(
            out.path, sha, {**self._display(out), **self._metadata(provenance, out.facts)}
        )

    def _judged(self, facts: Mapping[str, Any]) -> None:
        """The checks' verdicts on an output with these facts, queued for the step to yield after
        its outputs (a check result follows the materialization it judges)."""
        verdicts: list[Verdict] = judge(self.stage.checks, facts)
        if any(v.refuses for v in verdicts):
            refused = ChecksFailed(self.stage.key, self.video, verdicts)
            self.check_events.extend(refused.evaluations())
            raise refused
        self.check_events.extend(results(self.stage.key, verdicts))

    def _display(self, out: StageOutput) -> dict[str, Any]:
        """What the UI shows of the output (never in provenance): pictures stored as previews and
        shown as Markdown images, other values as they are."""
        store = self.previews.store()
        return {
            k: MetadataValue.md(store.markdown(k, v)) if isinstance(v, Path) else v
            for k, v in out.display.items()
        }

    def _output(self, value: Union[Path, Reused], sha: str, metadata: dict[str, Any]) -> Output:
        """The Output whose data version is the artifact's sha256 (Dagster marks `data_version`
        beta and warns on every use; the warning says nothing to a user of this API)."""
        if self.stage.annotate is not None:
            values = {k: getattr(v, "value", v) for k, v in metadata.items()}
            reused = isinstance(value, Reused)
            metadata = {**metadata, **self.stage.annotate(self.context, values, reused)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BetaWarning)
            return Output(
                value,
                output_name=self.output_name,
                data_version=DataVersion(sha),
                metadata=metadata,
            )

    def _metadata(self, prov: Provenance, facts: Mapping[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {k: v for k, v in facts.items() if v is not None}
        metadata.update(
            sha256=prov.output_sha256,
            size_bytes=prov.output_size_bytes,
            files=prov.output_files,
            recipe=prov.recipe,
            stage_fingerprint=prov.stage_fingerprint,
            attempt=prov.attempt,
            ffmpeg_version=prov.encoder.ffmpeg_version,
            ffmpeg_build_hash=prov.encoder.ffmpeg_build_hash,
            wall_s=prov.wall_s,
            ffmpeg_cpu_s=prov.ffmpeg_cpu_s,
            reused=prov.reused_from_run is not None,
        )
        if prov.preset:
            metadata["preset"] = prov.preset
        if prov.argv:
            metadata["ffmpeg_argv"] = MetadataValue.json(prov.argv)
        metadata[PROVENANCE_KEY] = MetadataValue.json(prov.model_dump(mode="json"))
        return metadata

    # -- skip unchanged work ------------------------------------------------------------------

    def _matching_record(self) -> Optional[EventLogRecord]:
        """The latest materialization of this output if it may be reused: made by this recipe,
        with its provenance, in a store we can check, and no force asked for."""
        context = self.context
        forced = self.ffmpeg.force or context.run.tags.get(FORCE_TAG, "").lower() == "true"
        if not self.stage.reusable or forced:
            return None
        record = _latest(context, self.stage.key)
        meta = _metadata_of(record)
        if (
            record is None
            or "recipe" not in meta
            or meta["recipe"].value != self.recipe
            or PROVENANCE_KEY not in meta
        ):
            return None
        io_manager = getattr(context.resources, IO_MANAGER_KEY, None)
        return record if isinstance(io_manager, ArtifactIOManager) else None

    def _reuse(self) -> Optional[Output]:
        context = self.context
        record = self._matching_record()
        if record is None:
            return None
        meta = _metadata_of(record)
        prov = Provenance.model_validate(meta[PROVENANCE_KEY].value)
        io_manager = getattr(context.resources, IO_MANAGER_KEY)
        stored = io_manager.stored(
            self.stage.key, self.video, Path(str(meta["path"].value)).name, prov.output_sha256
        )
        if self.stage.reuse_if is not None and not self.stage.reuse_if(
            context, _values(record), self.inputs
        ):
            return None
        prov = prov.model_copy(
            update={
                "run_id": context.run_id,
                "reused_from_run": prov.reused_from_run or record.run_id,
                "attempt": context.retry_number + 1,
                "wall_s": 0.0,
                "ffmpeg_cpu_s": 0.0,
                "ffmpeg_runs": [],
            }
        )
        context.log.info(
            f"{self.stage.name}: inputs, parameters and encoder build unchanged: "
            f"reusing the output of run {prov.reused_from_run}"
        )
        # The same artifact, described as before (its facts and what the UI shows of it, e.g.
        # previews), with this run's bookkeeping; the IO manager writes its record anew.
        described = {k: v for k, v in meta.items() if k not in RECORD_METADATA}
        self._judged({k: v.value for k, v in described.items()})  # today's thresholds
        return self._output(
            Reused(stored), prov.output_sha256, {**described, **self._metadata(prov, {})}
        )

    # -- failures -----------------------------------------------------------------------------

    def _reduced(self, base: int) -> int:
        """`base` (threads or lanes) halved for each earlier `resource` failure of this stage in this
        run: less memory, fewer frames in flight. A base of 0 (FFmpeg decides) counts as the CPUs."""
        resource_failures = sum(1 for o in self.earlier if o["failure_class"] == "resource")
        if not resource_failures:
            return base
        return max(1, (base or os.cpu_count() or 2) >> resource_failures)

    def _failures(self) -> list[dict[str, Any]]:
        """Failed attempts of this output in this run, oldest first (recorded as asset observations)."""
        if self.context.retry_number == 0:
            return []
        records = self.context.instance.fetch_observations(
            AssetRecordsFilter(asset_key=self.stage.key, asset_partitions=[self.video]), limit=50
        ).records
        found = [
            r.asset_observation.metadata
            for r in records
            if r.run_id == self.context.run_id
            and r.asset_observation
            and "failure_class" in r.asset_observation.metadata
        ]
        return [{k: v.value for k, v in m.items()} for m in reversed(found)]

    def classification(self, exc: Exception) -> Classification:
        return classify_s3_error(exc) or classify_exception(exc, family=self.ffmpeg.build.family)

    def retryable(self, c: Classification) -> bool:
        return (
            c.failure_class in ("transient", "resource")
            and self.context.retry_number < self.stage.retry.max_retries
        )

    def failure(self, exc: Exception) -> Exception:
        """Record a failed attempt and say what to raise: `Retryable` while a retry can heal it (the
        step's RetryPolicy then waits and retries), else a Failure that stops retries (announcing a
        failed rendition once)."""
        c = self.classification(exc)
        attempt = self.context.retry_number
        stderr = getattr(getattr(exc, "result", None), "stderr_tail", "") or getattr(
            exc, "stderr_tail", ""
        )  # FFmpegFailed's run, or ProbeError's
        details = {
            "failure_class": c.failure_class,
            "reason": c.reason,
            "message": c.message,
            "exit_code": c.exit_code,
            "signal": c.signal,
            "attempt": attempt + 1,
            # What failed: the same recipe failing the same way again is the same event.
            "recipe": self.recipe or None,
        }
        meta = {
            **{k: v for k, v in details.items() if v is not None},
            "stderr_tail": MetadataValue.md(f"```\n{stderr[-4000:]}\n```"),
        }
        # Named after the stage's asset, so the asset's own event list says what failed and why.
        stage_failed = f"{self.stage.name} failed: {c.failure_class}: {c.reason}"
        retry = self.retryable(c)
        self.context.log_event(
            AssetObservation(
                asset_key=self.stage.key,
                partition=self.video,
                description=f"{stage_failed}: {c.message}"
                + (f" (attempt {attempt + 1}; retried)" if retry else ""),
                metadata=meta,
            )
        )
        if retry:
            self.context.log.warning(
                f"{self.stage.name} attempt {attempt + 1} failed ({c.failure_class}: {c.reason}: "
                f"{c.message}); the step's retry policy runs it again"
            )
            return Retryable(f"{self.stage.name}: {c.failure_class}: {c.reason}: {c.message}")
        subject = (
            f"rendition {self.stage.rendition}"
            if self.stage.rendition
            else f"stage {self.stage.name}"
        )
        headline = f"{subject} failed: {c.failure_class}: {c.reason}"
        if self.stage.rendition:
            self.events.sink().send(
                Event(
                    type="rendition.failed",
                    pipeline=self.stage.pipeline,
                    video=self.video,
                    run_id=self.context.run_id,
                    subject=self.stage.rendition,
                    version=failure_version(self.recipe, c.message, c.failure_class, c.reason),
                    message=headline,
                    data=details,
                )
            )
        return Failure(
            description=f"{stage_failed}: {c.message} (video {self.video!r})",
            metadata=meta,
            allow_retries=False,
        )

    def _announce_success(self, out: StageOutput, sha: str) -> None:
        """What a new output announces; its id derives from `sha`, so the same bytes made again
        (a forced re-encode) are the same event, which the sinks drop."""
        facts = json.loads(json.dumps(out.facts, default=str))
        sink = self.events.sink()
        if self.stage.announces:
            sink.send(
                Event(
                    type=self.stage.announces,
                    pipeline=self.stage.pipeline,
                    video=self.video,
                    run_id=self.context.run_id,
                    subject=self.stage.rendition or self.stage.name,
                    version=sha,
                    message=f"{self.stage.name} ready",
                    data={"sha256": sha, **facts},
                )
            )
        if self.stage.concludes:
            missing = degraded(self.context.instance, self.context.run, step_key(self.context))
            sink.send(
                video_succeeded(
                    self.stage.pipeline, self.video, self.context.run_id, sha, missing, facts
                )
            )


# -- decorators -------------------------------------------------------------------------------


def _with_checks(runs: Sequence[StageRun], outputs: Iterator[Output]) -> Iterator[Any]:
    """The outputs, then the checks' results on them; on a failure, the results so far first."""
    try:
        yield from outputs
    except Exception:
        for run in runs:
            yield from run.check_events
        raise
    for run in runs:
        yield from run.check_events


def _check_outs(
    stages: Sequence[VideoStage], partitions: DynamicPartitionsDefinition
) -> dict[str, Out]:
    """An op's outputs for its stages' checks, in a graph-backed asset (Dagster names them)."""
    return {
        c.spec(s.key, partitions).get_python_identifier(): Out(dagster_type=None, is_required=False)
        for s in stages
        for c in s.checks
    }


def _check_specs(
    stages: Sequence[VideoStage], partitions: DynamicPartitionsDefinition
) -> list[AssetCheckSpec]:
    return [c.spec(s.key, partitions) for s in stages for c in s.checks]


def _split_ins(
    ins: Optional[Mapping[str, Union[KeyLike, list[AssetKey]]]],
) -> tuple[dict[str, AssetKey], dict[str, list[AssetKey]]]:
    """Inputs of one upstream asset, and fan-ins: a list of AssetKeys is one input fed by all of
    them (a list of strings is one key's path)."""
    single: dict[str, AssetKey] = {}
    fans: dict[str, list[AssetKey]] = {}
    for name, key in (ins or {}).items():
        if isinstance(key, list) and key and all(isinstance(k, AssetKey) for k in key):
            fans[name] = [k for k in key if isinstance(k, AssetKey)]
        else:
            single[name] = _key(cast(KeyLike, key))
    return single, fans


def _asset_ins(single: dict[str, AssetKey], fans: dict[str, list[AssetKey]]) -> dict[str, AssetIn]:
    """Dagster inputs: a fan-in gets one input per upstream asset (`<name>_<i>`)."""
    found = {name: AssetIn(key) for name, key in single.items()}
    for name, keys in fans.items():
        found.update({f"{name}_{i}": AssetIn(k) for i, k in enumerate(keys)})
    return found


def _recipe_inputs(
    single: dict[str, AssetKey], fans: dict[str, list[AssetKey]]
) -> dict[str, AssetKey]:
    """Upstream assets by the name provenance gives them: the input's, or each fanned-in asset's."""
    return {**single, **{k.path[-1]: k for keys in fans.values() for k in keys}}


def video_asset(
    *,
    key: KeyLike,
    code_version: str,
    ins: Optional[Mapping[str, Union[KeyLike, list[AssetKey]]]] = None,
    description: Optional[str] = None,
    rendition: Optional[str] = None,
    announces: Optional[str] = None,
    reusable: bool = True,
    reuse_if: Optional[ReuseCheck] = None,
    concludes: bool = False,
    annotate: Optional[Annotate] = None,
    optional: bool = False,
    retry: RetrySpec = RetrySpec(),
    preset: Optional[str] = None,
    kinds: Sequence[str] = ("ffmpeg",),
    partitions_def: Optional[DynamicPartitionsDefinition] = None,
    required_resource_keys: Sequence[str] = (),
    run_with_missing: bool = False,
    publish_as: Optional[str] = None,
    entry: Optional[str] = None,
    checks: Sequence[StageCheck] = (),
) -> Callable[[StageFunction], AssetsDefinition]:
    """Make `fn(context: StageContext, **inputs: Path) -> Path | StageOutput | None` a video stage.

    Args:
        key: Asset key; its first part is the pipeline (group name, events, default partitions).
        code_version: What shapes the output; a change marks the asset stale and re-runs it.
        ins: Input name -> upstream asset key, or a list of AssetKeys: one input, a list of paths.
        rendition: The rendition this stage makes: its final failure sends `rendition.failed`.
        announces: Event type sent on success, e.g. `rendition.ready` (default: none).
        reusable: False to run even when nothing changed.
        reuse_if: `(dagster_context, stored_metadata, input_versions) -> bool`: whether an output
            with an unchanged recipe may be reused (e.g. emit: the delivery still holds it).
        concludes: A new output of this stage is the video's publication (`video.succeeded`).
        annotate: `(dagster_context, metadata_values, reused) -> metadata` added each time the
            output is recorded, made or reused (e.g. emit's summary of the whole video).
        optional: The function may return None to produce nothing; downstream stages then skip.
        retry: Retries of transient and resource failures (Dagster's RetryPolicy).
        preset: Preset name recorded in provenance.
        partitions_def: Default `video_partitions(key[0])`; another pipeline's, to consume its outputs.
        required_resource_keys: Further resources, as `context.dagster.resources.<key>`.
        publish_as: Publish the output (by emit) as `<video>/<publish_as>` in the delivery location.
        entry: The file of a published tree a viewer opens (e.g. `master.m3u8`), reported by emit.
        run_with_missing: Run when some upstream outputs were not produced (e.g. a packager with a
            partial ladder); lists then hold what exists. Such a stage is materialized together
            with its inputs: Dagster cannot load a fan-in from storage alone.
        checks: Asset checks judging each output's facts (`StageOutput.facts`, see `checks`);
            a failing blocking one refuses the output.
    """
    asset_key = _key(key)
    plain_ins, fans = _split_ins(ins)
    names = [*plain_ins, *fans]
    stage = VideoStage(
        key=asset_key,
        code_version=code_version,
        inputs=_recipe_inputs(plain_ins, fans),
        description=description,
        rendition=rendition,
        announces=announces,
        reusable=reusable,
        reuse_if=reuse_if,
        concludes=concludes,
        annotate=annotate,
        optional=optional,
        retry=retry,
        preset=preset,
        kinds=frozenset(kinds),
        publish_as=publish_as,
        entry=entry,
        checks=tuple(checks),
    )
    partitions = partitions_def or video_partitions(stage.pipeline)
    resources = STAGE_RESOURCES | set(required_resource_keys)

    def decorator(fn: StageFunction) -> AssetsDefinition:
        doc = description or (fn.__doc__ or "").strip() or None

        def body(context: Context, inputs: dict[str, Any]) -> Iterator[Any]:
            run = StageRun(context, stage)

            def made() -> Iterator[Output]:
                output = run.run(lambda sc: fn(sc, **inputs))
                if output is not None:
                    yield output

            yield from _with_checks([run], made())

        if not run_with_missing:

            @asset(
                key=asset_key,
                ins=_asset_ins(plain_ins, fans),
                code_version=code_version,
                description=doc,
                partitions_def=partitions,
                io_manager_key=IO_MANAGER_KEY,
                group_name=stage.pipeline,
                retry_policy=retry_policy(retry),
                required_resource_keys=resources,
                kinds=set(kinds),
                output_required=not optional,
                metadata=stage.metadata,
                hooks={video_failed},
                check_specs=_check_specs([stage], partitions),
            )
            def single(context: AssetExecutionContext, **loaded: Any) -> Iterator[Output]:
                yield from body(
                    context,
                    {
                        n: [loaded[f"{n}_{i}"] for i in range(len(fans[n]))]
                        if n in fans
                        else loaded[n]
                        for n in names
                    },
                )

            return single

        # Each input reaches one op of a graph-backed asset as a fan-in, which Dagster runs with the
        # upstream outputs that exist (a plain input from a missing one would skip the step); a
        # single-key input is then its path or None.
        name = asset_key.to_python_identifier()
        graph_ins = _asset_ins(plain_ins, fans)

        @op(
            name=f"{name}_stage",
            ins={n: In() for n in names},
            out={
                "result": Out(io_manager_key=IO_MANAGER_KEY, is_required=not optional),
                **_check_outs([stage], partitions),
            },
            retry_policy=retry_policy(retry),
            required_resource_keys=resources,
        )
        def stage_op(context: OpExecutionContext, **loaded: list[Any]) -> Iterator[Output]:
            yield from body(
                context,
                {n: loaded[n] if n in fans else next(iter(loaded[n]), None) for n in names},
            )

        @graph_multi_asset(
            name=name,
            ins=graph_ins,
            partitions_def=partitions,
            hooks={video_failed},
            outs={
                "result": AssetOut(
                    key=asset_key,
                    code_version=code_version,
                    kinds=set(kinds),
                    group_name=stage.pipeline,
                    io_manager_key=IO_MANAGER_KEY,
                    description=doc,
                    is_required=not optional,
                    metadata=stage.metadata,
                )
            },
            check_specs=_check_specs([stage], partitions),
        )
        def fanned(**upstream: Any) -> Any:
            made = stage_op(
                **{
                    n: [upstream[f"{n}_{i}"] for i in range(len(fans[n]))]
                    if n in fans
                    else [upstream[n]]
                    for n in names
                }
            )
            return (
                dict(zip(["result", *_check_outs([stage], partitions)], made, strict=True))
                if stage.checks
                else made
            )

        return fanned

    return decorator


# A multi-asset's work ahead of its main step, in steps of its own:
# `(dagster_context, runs, step, steps, **inputs) -> None`.
WorkFunction = Callable[..., None]


def video_multi_asset(
    *,
    name: str,
    stages: Sequence[VideoStage],
    ins: Optional[Mapping[str, KeyLike]] = None,
    can_subset: bool = False,
    config: Optional[type[Config]] = None,
    retry: RetrySpec = RetrySpec(),
    partitions_def: Optional[DynamicPartitionsDefinition] = None,
    required_resource_keys: Sequence[str] = (),
    work_steps: int = 0,
    work: Optional[WorkFunction] = None,
) -> Callable[[Callable[..., Iterator[Output]]], AssetsDefinition]:
    """Several stage outputs from one step, for work that is cheaper done together (one decode
    feeding every rendition). The function is `fn(context, runs, **inputs)` (plus `config` when a
    Config class is given), where `runs` maps each selected output's asset name to its `StageRun`;
    it yields the Outputs. Each output is its own asset: materialization, code version, provenance.

    With `work_steps` N >= 1 and `work`, the asset is a graph: N steps `<name>_work_<i>` run
    `work(context, runs, i, N, **inputs)` first, each placed by the executor on its own (Celery
    workers, processes) and retried alone by the RetryPolicy, then the main step
    `<name>_outputs` runs `fn`. A work step leaves what it made where `fn` finds it (a content-addressed store), so the
    main step only makes what is missing: a work step that fails for good (or runs out of retries)
    logs why and ends, and the main step meets the same failure with its own handling (isolating
    outputs, classifying, announcing)."""
    partitions = partitions_def or video_partitions(stages[0].pipeline)
    resources = STAGE_RESOURCES | set(required_resource_keys)
    input_keys = {n: _key(k) for n, k in (ins or {}).items()}

    def runs_for(context: Context) -> dict[str, StageRun]:
        upstream: dict[str, Optional[str]] = {}
        return {
            s.name: StageRun(
                context, s, output_name=s.key.to_python_identifier(), upstream_versions=upstream
            )
            for s in stages
            if s.key in context.selected_asset_keys
        }

    def decorator(fn: Callable[..., Iterator[Output]]) -> AssetsDefinition:
        if work_steps and work is not None:
            if config is not None:
                raise ValueError(f"{name}: a multi-asset with work steps takes no config class")
            return _with_work_steps(
                name, stages, input_keys, can_subset, retry, partitions, resources, runs_for,
                fn, work, work_steps,
            )  # fmt: skip
        specs = [
            AssetSpec(
                s.key,
                deps=list(s.inputs.values()),
                code_version=s.code_version,
                description=s.description,
                skippable=s.optional,
                kinds=set(s.kinds),
                group_name=s.pipeline,
                metadata=s.metadata,
                partitions_def=partitions,
            ).with_io_manager_key(IO_MANAGER_KEY)
            for s in stages
        ]
        common: dict[str, Any] = dict(
            name=name,
            specs=specs,
            ins={n: AssetIn(k) for n, k in input_keys.items()},
            can_subset=can_subset,
            retry_policy=retry_policy(retry),
            required_resource_keys=resources,
            hooks={video_failed},
            check_specs=_check_specs(stages, partitions),
        )
        if config is None:

            @multi_asset(**common)
            def plain(context: AssetExecutionContext, **inputs: Any) -> Iterator[Output]:
                runs = runs_for(context)
                yield from _with_checks(list(runs.values()), fn(context, runs, **inputs))

            return plain

        config_class = config

        @multi_asset(**common)
        def configured(
            context: AssetExecutionContext,
            config: config_class,  # pyright: ignore[reportInvalidTypeForm] (Dagster reads it at run time)
            **inputs: Any,
        ) -> Iterator[Output]:
            runs = runs_for(context)
            yield from _with_checks(list(runs.values()), fn(context, runs, config=config, **inputs))

        return configured

    return decorator


def _with_work_steps(
    name: str,
    stages: Sequence[VideoStage],
    input_keys: dict[str, AssetKey],
    can_subset: bool,
    retry: RetrySpec,
    partitions: DynamicPartitionsDefinition,
    resources: AbstractSet[str],
    runs_for: Callable[[Context], dict[str, StageRun]],
    fn: Callable[..., Iterator[Output]],
    work: WorkFunction,
    steps: int,
) -> AssetsDefinition:
    """`video_multi_asset` as a graph: `steps` work steps, then the main step yielding the outputs."""
    policy = retry_policy(retry)
    op_resources = {*resources, IO_MANAGER_KEY}  # the work steps reach the artifact store

    def work_op(step: int) -> Any:
        @op(
            name=f"{name}_work_{step}",
            ins={n: In() for n in input_keys},
            out=Out(Nothing),
            retry_policy=policy,
            required_resource_keys=op_resources,
        )
        def work_step(context: OpExecutionContext, **inputs: Any) -> None:
            runs = runs_for(context)
            try:
                work(context, runs, step, steps, **inputs)
            except Exception as exc:
                first = next(iter(runs.values()), None)
                c = first.classification(exc) if first else classify_exception(exc)
                summary = f"{c.failure_class}: {c.reason}: {c.message}"
                if first is not None and first.retryable(c):
                    context.log.warning(f"work step {step} failed ({summary}); retried")
                    raise Retryable(f"{name} work step {step}: {summary}") from exc
                context.log.warning(
                    f"work step {step} failed ({summary}); the {name} step makes what is "
                    "missing and reports what fails for good"
                )

        return work_step

    outs = {s.key.to_python_identifier(): s for s in stages}
    check_outs = _check_outs(stages, partitions)

    @op(
        name=f"{name}_outputs",
        ins={**{n: In() for n in input_keys}, "after": In(Nothing)},
        out={
            **{
                n: Out(io_manager_key=IO_MANAGER_KEY, is_required=not s.optional)
                for n, s in outs.items()
            },
            **check_outs,
        },
        retry_policy=policy,
        required_resource_keys=op_resources,
    )
    def main(context: OpExecutionContext, **inputs: Any) -> Iterator[Output]:
        runs = runs_for(context)
        yield from _with_checks(list(runs.values()), fn(context, runs, **inputs))

    workers = [work_op(i) for i in range(steps)]

    @graph_multi_asset(
        name=name,
        ins={n: AssetIn(k) for n, k in input_keys.items()},
        outs={
            n: AssetOut(
                key=s.key,
                code_version=s.code_version,
                description=s.description,
                is_required=not s.optional,
                kinds=set(s.kinds),
                metadata=s.metadata,
                io_manager_key=IO_MANAGER_KEY,
            )
            for n, s in outs.items()
        },
        partitions_def=partitions,
        can_subset=can_subset,
        hooks={video_failed},
        group_name=stages[0].pipeline,  # an AssetOut's own group is not applied to a graph's
        check_specs=_check_specs(stages, partitions),
    )
    def graph(**inputs: Any) -> Any:
        made = main(after=[w(**inputs) for w in workers], **inputs)
        names = [*outs, *check_outs]
        return dict(zip(names, made, strict=True)) if len(names) > 1 else {names[0]: made}

    return graph


def step_keys(assets: Sequence[AssetsDefinition]) -> dict[AssetKey, str]:
    """The node that materializes each asset (outputs of a multi-asset share one). A graph-backed
    asset's steps are `<node>.<op>` (see `step_node`), however many there are: a run's events
    name the same node in every step layout."""
    return {key: a.node_def.name for a in assets for key in a.keys}


def step_node(step: str) -> str:
    """The node a step belongs to (`vod__encode.vod__encode_work_0` -> `vod__encode`)."""
    return step.split(".", 1)[0]
