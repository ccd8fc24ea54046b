"""Run one video's graph through Dagster and summarize what happened to each stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    RunConfig,
    materialize,
)

from .assets import FORCE_TAG, IngestConfig, build_video_assets, partitions_for
from .project import Project
from .spec import PipelineSpec


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
) -> ExecuteInProcessResult:
    """Register `video` as a partition and materialize its graph (or only `stages`, by asset name).
    With `source`, the video is (re-)ingested from that file; `force` re-runs unchanged stages."""
    assets = project.assets(spec)
    instance.add_dynamic_partitions(partitions_for(spec).name, [video])
    selection = [AssetKey([spec.name, name]) for name in stages] if stages else None
    ops = {f"{spec.name}__ingest": IngestConfig(source_path=str(source))} if source else {}
    return materialize(
        assets,
        instance=instance,
        partition_key=video,
        selection=selection,
        resources=project.resources(delivery_dir=delivery_dir),
        run_config=RunConfig(ops=ops, loggers={"console": {"config": {"log_level": log_level}}}),
        tags={"mpegflow/video": video, **({"mpegflow/source": str(source)} if source else {}),
              **({FORCE_TAG: "true"} if force else {})},
        raise_on_error=False,
    )


def stage_report(result: ExecuteInProcessResult, spec: PipelineSpec) -> dict[str, dict[str, Any]]:
    """Per asset of the spec: materialized / skipped (produced nothing to do) / failed (with the
    error) / not_run (an upstream stage failed, or it was not selected)."""
    materialized = {
        e.asset_key: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key is not None
    }
    steps: dict[str, tuple[str, Optional[str]]] = {}
    for event in result.all_events:
        if event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_SUCCESS:
            steps[event.step_key] = ("succeeded", None)
        elif event.event_type == DagsterEventType.STEP_SKIPPED:
            steps[event.step_key] = ("skipped", "an upstream output was not produced")
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                message = data.user_failure_data.description
            else:
                error = data.error
                message = (error.cause.message if error and error.cause else error.message if error else "").strip()
            steps[event.step_key] = ("failed", message.splitlines()[0] if message else "failed")
    report: dict[str, dict[str, Any]] = {}
    for key in (k for a in build_video_assets(spec) for k in a.keys):
        entry: dict[str, Any] = {"asset_key": key.to_user_string()}
        if key in materialized:
            entry["status"] = "materialized"
            for field in ("path", "sha256", "size_bytes", "resolution", "bitrate_kbps", "duration_s"):
                if field in materialized[key]:
                    entry[field] = materialized[key][field].value
        else:
            status, reason = steps.get("__".join(key.path), ("not_run", "an upstream stage failed or it was not selected"))
            entry["status"] = "skipped" if status == "succeeded" else status
            entry["reason"] = reason or "nothing to do (no output produced)"
        report[key.path[-1]] = entry
    return report
