"""Run one video's graph through Dagster and summarize what happened to each stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Optional, Sequence

from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
    RunConfig,
    RunsFilter,
    define_asset_job,
)

from . import liveness
from .assets import build_video_assets
from .dagster_private import UnresolvedAssetJobDefinition
from .events import entries
from .spec import PipelineSpec, SpecError
from .stage import step_keys, step_node, video_partitions, videos_partitions_name
from .stages.ingest import IngestConfig

OWNER_TAG = "mpegflow/owner"  # the process executing a run in process (host/boot/pid/start)
VIDEO_TAG = "mpegflow/video"

if TYPE_CHECKING:  # project.py builds sensors from this module
    from .project import Project


def video_job_name(pipeline: str) -> str:
    return f"{pipeline}_video"


def video_job(
    spec: PipelineSpec, selection: Optional[AssetSelection] = None
) -> UnresolvedAssetJobDefinition:
    """The job that runs one video (a partition) of a pipeline: its group's assets, or `selection`.
    `mpegflow run`, `mpegflow redo` and the UI's Jobs page launch it, so runs are named after it."""
    return define_asset_job(
        video_job_name(spec.name),
        selection=selection or AssetSelection.groups(spec.name),
        partitions_def=video_partitions(spec.name),
        description=f"One video through the {spec.name} pipeline; pick the video as the partition. "
        "Outputs whose inputs, parameters and encoder build are unchanged are reused; to make "
        "them again set `resources: {ffmpeg: {config: {force: true}}}` in the launchpad.",
    )


def materialize_video(
    project: Project,
    spec: PipelineSpec,
    video: str,
    *,
    instance: DagsterInstance,
    source: Optional[Path] = None,
    delivery_dir: Optional[str] = None,
    stages: Optional[Sequence[str]] = None,
    force: bool = False,
    log_level: str = "INFO",
    own_stages: Sequence[AssetsDefinition] = (),
) -> ExecuteInProcessResult:
    """Register `video` as a partition and materialize its graph (or only `stages`, by asset name
    in the spec's pipeline or by full key `pipeline/name`, with what shares their step: ingest and probe go together), with `own_stages` (assets made
    with `video_asset`) beside the built-in ones.
    With `source`, the video is (re-)ingested from that file; `force` makes the selected outputs
    again even when unchanged (the `force` config of the ffmpeg resource, as in the launchpad).
    The run is one of the pipeline's job (`<pipeline>_video`), executed in this process."""
    assets = [*project.assets(spec), *own_stages]
    fail_abandoned_runs(instance)
    instance.add_dynamic_partitions(videos_partitions_name(spec.name), [video])
    job_name = video_job_name(spec.name)
    defs = Definitions(
        assets=assets,
        jobs=[video_job(spec, AssetSelection.assets(*(k for a in assets for k in a.keys)))],
        resources=project.resources(delivery_dir=delivery_dir),
    )
    # Assets that share a step and cannot run apart (ingest and probe) are selected together.
    keys = [
        AssetKey.from_user_string(n) if "/" in n else AssetKey([spec.name, n]) for n in stages or ()
    ]
    known = {k for a in assets for k in a.keys}
    unknown = [k.to_user_string() for k in keys if k not in known]
    if unknown:
        raise SpecError(
            f"no stage {', '.join(unknown)} in pipeline {spec.name}; known: "
            f"{', '.join(sorted(k.path[-1] if k.path[0] == spec.name else k.to_user_string() for k in known))}"
        )
    selected = (
        sorted(
            AssetSelection.assets(*keys)
            .required_multi_asset_neighbors()
            .resolve(defs.resolve_asset_graph())
        )
        if keys
        else None
    )
    ops = {f"{spec.name}__ingest": IngestConfig(source_path=str(source))} if source else {}
    run_config = RunConfig(
        ops=ops,
        resources={"ffmpeg": {"config": {"force": True}}} if force else {},
        loggers={"console": {"config": {"log_level": log_level}}},
    )
    return defs.resolve_job_def(job_name).execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=video,
        asset_selection=selected,
        tags={
            VIDEO_TAG: video,
            OWNER_TAG: liveness.current(),
            **({"mpegflow/source": str(source)} if source else {}),
        },
        raise_on_error=False,
    )


def fail_abandoned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the runs still shown as started whose process is gone (`kill -9`, the OOM
    killer, a reboot): nothing else would, since an in-process run has no run worker for
    Dagster's run monitoring to check. Returns their run ids."""
    running = instance.get_runs(
        RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
    )
    abandoned = [run for run in running if liveness.is_gone(run.tags.get(OWNER_TAG, ""))]
    for run in abandoned:
        instance.report_run_failed(
            run,
            message=(
                f"the process that ran it ({run.tags[OWNER_TAG]}) is gone (killed, or the machine restarted); "
                "marked failed when mpegflow next opened this instance"
            ),
        )
    return [run.run_id for run in abandoned]


def stage_report(
    events: Sequence[DagsterEvent],
    spec: PipelineSpec,
    selected: Optional[Collection[AssetKey]] = None,
    finished: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per asset of the spec, from one run's events: materialized / skipped (nothing to do) /
    failed (with class, reason and stderr tail) / not_run (an upstream stage, or a stage sharing
    its step, failed) / not_selected (outside the run's `selected` assets, when given) /
    running (its step has not ended yet, in a run not `finished`)."""
    materialized = {
        e.asset_key: e.step_materialization_data.materialization.metadata
        for e in events
        if e.event_type == DagsterEventType.ASSET_MATERIALIZATION and e.asset_key is not None
    }
    # Failed attempts are recorded as observations: they name the output (several outputs can
    # share a step) and stay visible when packaging went on without a failed rendition.
    observed: dict[AssetKey, dict[str, Any]] = {}
    for event in events:
        if event.event_type == DagsterEventType.ASSET_OBSERVATION and event.asset_key is not None:
            meta = event.asset_observation_data.asset_observation.metadata
            if "failure_class" in meta:
                observed[event.asset_key] = {
                    "status": "failed",
                    "failure_class": meta["failure_class"].value,
                    "reason_code": meta["reason"].value,
                    "reason": f"{meta['failure_class'].value}: {meta['reason'].value}: {meta['message'].value}",
                    **{k: meta[k].value for k in ("exit_code", "attempt") if k in meta},
                    **({"stderr_tail": tail} if (tail := _stderr_tail(meta)) else {}),
                }
    # by node: the last step of a graph-backed asset (after its work steps) decides
    steps: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.step_key is None:
            continue
        node = step_node(event.step_key)
        if event.event_type == DagsterEventType.STEP_SUCCESS:
            steps[node] = {"status": "succeeded"}
        elif event.event_type == DagsterEventType.STEP_SKIPPED:
            steps[node] = {
                "status": "skipped",
                "reason": "an upstream output was not produced",
            }
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            steps[node] = _failure(event)
    step_of = step_keys(build_video_assets(spec))
    failed_in_step = {step_of[k]: k for k in observed if k in step_of}
    report: dict[str, dict[str, Any]] = {}
    for key, step_key in step_of.items():
        entry: dict[str, Any] = {"asset_key": key.to_user_string()}
        if key in materialized:
            meta = materialized[key]
            entry["status"] = "materialized"
            for field in (
                "path",
                "sha256",
                "size_bytes",
                "resolution",
                "bitrate_kbps",
                "duration_s",
                "reused",
                "attempt",
            ):
                if field in meta:
                    entry[field] = meta[field].value
        elif selected is not None and key not in selected:
            entry["status"] = "not_selected"
        elif key in observed:
            entry.update(observed[key])
        elif step_key in failed_in_step and steps.get(step_key, {}).get("status") == "failed":
            sibling = failed_in_step[step_key].path[-1]
            entry.update(status="not_run", reason=f"{sibling} failed (they share a step)")
        else:
            pending = {"status": "not_run", "reason": "an upstream stage failed"}
            if not finished:
                pending = {"status": "running", "reason": "its step has not ended yet"}
            step = steps.get(step_key, pending)
            entry.update(step)
            if step["status"] == "succeeded":
                entry.update(status="skipped", reason="nothing to do (no output produced)")
        report[key.path[-1]] = entry
    return report


def _failure(event: DagsterEvent) -> dict[str, Any]:
    data = event.step_failure_data
    if data.user_failure_data is not None:
        meta = data.user_failure_data.metadata
        entry: dict[str, Any] = {
            "status": "failed",
            "reason": data.user_failure_data.description or "failed",
        }
        if "failure_class" in meta:
            entry.update(
                failure_class=meta["failure_class"].value, reason_code=meta["reason"].value
            )
            if "exit_code" in meta:
                entry["exit_code"] = meta["exit_code"].value
        return entry
    error = data.error
    message = (
        error.cause.message if error and error.cause else error.message if error else ""
    ).strip()
    return {"status": "failed", "reason": message.splitlines()[0] if message else "failed"}


def run_status(report: dict[str, dict[str, Any]]) -> str:
    """`succeeded` when every stage the run was about materialized or had nothing to do,
    `partial` when the video was published without some (a partial ladder, failed captions),
    else `failed`. The customer hears it from the run itself (`outcomes.py`)."""
    failed = [s for s in report.values() if s["status"] in ("failed", "not_run")]
    if not failed:
        return "succeeded"
    return "partial" if report.get("emit", {}).get("status") == "materialized" else "failed"


def published_entries(events: Sequence[DagsterEvent]) -> dict[str, str]:
    """What a run published, by part: the entry a viewer opens (e.g. the master playlist), as the
    emit stages report it (`<part>_entry`)."""
    found: dict[str, str] = {}
    for event in events:
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            meta = event.step_materialization_data.materialization.metadata
            found.update(entries({k: v.value for k, v in meta.items()}))
    return dict(sorted(found.items()))


def _stderr_tail(meta: Mapping[str, Any]) -> str:
    """A failure's stderr tail, stored as a Markdown code block."""
    text = str(meta["stderr_tail"].value) if "stderr_tail" in meta else ""
    return text.strip().removeprefix("```").removesuffix("```").strip("\n")


# What `stage_report` reads of a run, and what says which assets the run selected.
REPORT_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_OBSERVATION,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_SKIPPED,
    DagsterEventType.STEP_FAILURE,
}


def latest_reports(
    instance: DagsterInstance, spec: PipelineSpec, runs: Sequence[DagsterRun]
) -> dict[str, dict[str, Any]]:
    """Per asset of the spec, its `stage_report` entry in the newest of `runs` (newest first)
    that selected it, with that run's `run_id`: a maintenance run of one rendition tells about
    that rendition, the earlier full run about the rest. An asset no run selected is absent."""
    found: dict[str, dict[str, Any]] = {}
    wanted = {k.path[-1] for k in step_keys(build_video_assets(spec))}
    for run in runs:
        if wanted <= found.keys():
            break
        events = [
            r.dagster_event
            for r in instance.all_logs(run.run_id, of_type=REPORT_EVENTS)
            if r.dagster_event is not None
        ]
        planned = {
            e.asset_key
            for e in events
            if e.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED and e.asset_key
        }
        report = stage_report(events, spec, selected=planned, finished=run.is_finished)
        for name, entry in report.items():
            if name not in found and entry["status"] != "not_selected":
                found[name] = {**entry, "run_id": run.run_id}
    return found
