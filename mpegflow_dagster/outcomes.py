"""`video.succeeded` / `video.failed` for runs launched from the UI, a schedule or a sensor.

The CLI announces its own runs; these run-status sensors do the same for every other run, from
the run's event log. Both paths build the event with `runs.outcome_event`, whose id is stable per
run, so a run announced twice is delivered once.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusSensorContext,
    SensorDefinition,
    run_status_sensor,
)

from .events import Event
from .runs import PARTITION_TAG, outcome_event, stage_report
from .spec import PipelineSpec
from .webhooks.resources import WebhookResource


def run_outcomes(
    instance: DagsterInstance, run: DagsterRun, specs: Sequence[PipelineSpec]
) -> Iterator[Event]:
    """One outcome event per pipeline the run touched (runs outside any pipeline give none)."""
    video = run.tags.get(PARTITION_TAG)
    if not video:
        return
    events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
    # A whole-job run (materialize(), a launched asset job) records no asset_selection: what it
    # planned to materialize is what it was about.
    selected = list(
        run.asset_selection
        or dict.fromkeys(
            e.asset_key
            for e in events
            if e.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED
            and e.asset_key is not None
        )
    )
    if not selected:
        return
    for spec in specs:
        mine = [k for k in selected if k.path[0] == spec.name]
        if mine:
            yield outcome_event(spec, video, run.run_id, stage_report(events, spec, selected=mine))


def outcome_sensors(spec: PipelineSpec) -> tuple[SensorDefinition, SensorDefinition]:
    """`video.succeeded` / `video.failed` for the runs that touched `spec`'s assets."""

    def announce(context: RunStatusSensorContext, events: WebhookResource) -> None:
        sink = events.sink()
        for event in run_outcomes(context.instance, context.dagster_run, [spec]):
            sink.send(event)

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name=f"{spec.name}_video_succeeded",
        default_status=DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=False,
    )
    def succeeded(context: RunStatusSensorContext, events: WebhookResource) -> None:
        announce(context, events)

    @run_status_sensor(
        run_status=DagsterRunStatus.FAILURE,
        name=f"{spec.name}_video_failed",
        default_status=DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=False,
    )
    def failed(context: RunStatusSensorContext, events: WebhookResource) -> None:
        announce(context, events)

    return succeeded, failed
