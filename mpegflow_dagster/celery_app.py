"""The Celery app of the cluster's workers (`dagster-celery worker start -A
mpegflow_dagster.celery_app`): dagster-celery's own tasks, with its step task run at most once per
step attempt.

A broker hands a task out again when it cannot know that it was done: Redis' unacknowledged
messages restored after a restart, an acknowledgement lost with the connection. dagster-celery
would then run the step again in the same run, beside or after the attempt that Dagster's retry
policy already started: the outputs are the same by recipe, but the work is done twice and the
step succeeds twice in the run's event log. So before running, the task reads the run's event log:
if the attempt it carries has already ended, it does nothing and returns that attempt's events
(what the run's executor would have got from the first delivery). A delivery of an attempt that
started but never ended (its worker was lost) runs again."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

from celery import Task
from dagster import DagsterEvent, DagsterEventType, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._grpc.types import ExecuteStepArgs
from dagster._serdes import deserialize_value, serialize_value, unpack_value
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

# What the code location's steps import (dagster-aws, the stages), loaded in the worker's main
# process: the pool's processes fork with it, so a worker's first step loads definitions.py in
# 0.33 CPU-s instead of 0.87 (measured here).
from . import components  # noqa: F401

_ENDED = {
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_SKIPPED,
}
_RETRIED = DagsterEventType.STEP_UP_FOR_RETRY


@lru_cache(maxsize=4)
def _instance(ref: str) -> DagsterInstance:
    # One instance per worker process: every step task of a deployment carries the same ref.
    return DagsterInstance.from_ref(deserialize_value(ref, InstanceRef))


def ended_attempt_events(
    instance: DagsterInstance, run_id: str, step_key: str, attempt: int
) -> Optional[list[DagsterEvent]]:
    """The events of attempt `attempt` (0 = the first) of `step_key` in the run, if that attempt
    has ended (succeeded, failed, skipped, or failed and handed to a retry); None if it has not."""
    ends = [
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(run_id, of_type={*_ENDED, _RETRIED}).records
        if r.event_log_entry.dagster_event is not None
        and r.event_log_entry.dagster_event.step_key == step_key
    ]
    retried = sum(e.event_type == _RETRIED for e in ends)
    if retried <= attempt and not any(e.event_type in _ENDED for e in ends):
        return None
    attempts: list[list[DagsterEvent]] = [[]]
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key != step_key:
            continue
        attempts[-1].append(event)
        if event.event_type == _RETRIED:
            attempts.append([])
    return attempts[attempt] if attempt < len(attempts) else []


class StepTaskOncePerAttempt(Task):
    """dagster-celery's step task, skipped when the broker delivers an attempt that has ended."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        packed = kwargs.get("execute_step_args_packed", args[0] if args else None)
        step_args = unpack_value(packed, as_type=ExecuteStepArgs)
        keys = step_args.step_keys_to_execute or []
        if len(keys) != 1 or step_args.instance_ref is None:  # dagster-celery sends one step
            return super().__call__(*args, **kwargs)
        step_key = keys[0]
        known = step_args.known_state
        attempt = known.previous_retry_attempts.get(step_key, 0) if known else 0
        instance = _instance(serialize_value(step_args.instance_ref))
        events = ended_attempt_events(instance, step_args.run_id, step_key, attempt)
        if events is None:
            return super().__call__(*args, **kwargs)
        run = instance.get_run_by_id(step_args.run_id)
        if run is not None:
            instance.report_engine_event(
                f"Celery delivered step {step_key}'s attempt {attempt + 1} again after it had"
                f" ended; {self.request.hostname} did not run it again",
                run,
                step_key=step_key,
            )
        return [serialize_value(e) for e in events]


app = make_app()
execute_plan = create_task(app, base=StepTaskOncePerAttempt)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
