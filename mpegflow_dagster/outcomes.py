"""`video.succeeded` / `video.failed`, announced from inside the run that decides them.

A video succeeds when its concluding asset (`<pipeline>/emit`, the publication) makes a new output:
its stage sends `video.succeeded` (see `StageRun`), with `degraded` naming the renditions a partial
ladder went without. A video fails when a step fails for good in a run that was to publish it and
now cannot: the `video_failed` failure hook, which every stage asset carries, sends `video.failed`.
Dagster runs hooks in the step's own process after its last attempt (never on an attempt that is
retried), so neither depends on the daemon, on a sensor, or on who launched the run. A maintenance
run that does not publish (one rendition redone) announces only what it made or what failed.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    Failure,
    HookContext,
    failure_hook,
)

from .dagster_private import planned_steps
from .events import Event, entries, failure_version
from .media.classify import classify_exception

PARTITION_TAG = "dagster/partition"  # Dagster's tag naming a run's partition (the video)
CONCLUDING_ASSET = "emit"  # `<pipeline>/emit` publishes the video: its new output is the success


def concluding_key(pipeline: str) -> AssetKey:
    return AssetKey([pipeline, CONCLUDING_ASSET])


def _reached(
    steps: dict[str, tuple[frozenset[AssetKey], frozenset[str]]], start: str, upstream: bool
) -> set[AssetKey]:
    """The assets of the planned steps that `start` reads from (`upstream`) or that read from it,
    directly or not."""
    edges = {s: set(reads) for s, (_, reads) in steps.items()}
    if not upstream:
        edges = {s: {t for t, reads in edges.items() if s in reads} for s in edges}
    reached: set[str] = set()
    todo = [start]
    while todo:
        for step in edges.get(todo.pop(), set()) - reached:
            if step in steps:
                reached.add(step)
                todo.append(step)
    return {k for s in reached for k in steps[s][0]}


def degraded(instance: DagsterInstance, run: DagsterRun, step_key: str) -> list[str]:
    """What the publication made by `step_key` goes without: the outputs upstream of it in this
    run that failed for good (renditions a partial ladder left out)."""
    upstream = _reached(planned_steps(instance, run), step_key, upstream=True)
    return failed_in_run(instance, run.run_id, upstream)


def failed_in_run(instance: DagsterInstance, run_id: str, keys: Iterable[AssetKey]) -> list[str]:
    """Names of `keys` whose attempts failed in this run and that it did not materialize (an
    output that failed once and was made by a retry is not failed)."""
    wanted = set(keys)
    failed: set[AssetKey] = set()
    made: set[AssetKey] = set()
    for entry in instance.all_logs(
        run_id,
        of_type={DagsterEventType.ASSET_OBSERVATION, DagsterEventType.ASSET_MATERIALIZATION},
    ):
        event = entry.dagster_event
        if event is None or event.asset_key not in wanted:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            made.add(event.asset_key)
        elif "failure_class" in event.asset_observation_data.asset_observation.metadata:
            failed.add(event.asset_key)
    return sorted(k.path[-1] for k in failed - made)


def video_succeeded(
    pipeline: str, video: str, run_id: str, sha256: str, missing: Sequence[str], facts: dict
) -> Event:
    """The video's new publication (`sha256` of its manifest) as `video.succeeded`; `missing`:
    what it goes without (`degraded`)."""
    return Event(
        type="video.succeeded",
        pipeline=pipeline,
        video=video,
        run_id=run_id,
        version=sha256,
        message=f"video {video} published without: {', '.join(missing)}"
        if missing
        else f"video {video} succeeded",
        data={
            "sha256": sha256,
            "published": entries(facts),
            **({"degraded": list(missing)} if missing else {}),
        },
    )


def _cause(exc: Optional[BaseException]) -> dict[str, Any]:
    """Class, reason, message and recipe of what a step raised: a stage's Failure carries them
    (StageRun.failure); anything else is classified here."""
    if isinstance(exc, Failure) and "failure_class" in exc.metadata:
        meta = {k: v.value for k, v in exc.metadata.items()}
        return {
            "failure_class": meta["failure_class"],
            "reason": meta["reason"],
            "message": meta.get("message") or exc.description or "failed",
            "recipe": meta.get("recipe") or "",
        }
    c = classify_exception(exc or RuntimeError("failed"))
    message = exc.description if isinstance(exc, Failure) else str(exc) if exc else ""
    return {
        "failure_class": c.failure_class,
        "reason": c.reason,
        "message": message or c.message,
        "recipe": "",
    }


@failure_hook(name="mpegflow_video_failed", required_resource_keys={"events"})
def video_failed(context: HookContext) -> None:
    """`video.failed` when this step failed for good and the run's publication of the video
    (planned in this run, downstream of the step or the step itself) can no longer happen."""
    run = context.instance.get_run_by_id(context.run_id)
    video = run.tags.get(PARTITION_TAG) if run else None
    if run is None or not video:
        return
    steps = planned_steps(context.instance, run)
    mine = steps.get(context.step_key, (frozenset(), frozenset()))[0]
    downstream = _reached(steps, context.step_key, upstream=False)
    cause = _cause(context.op_exception)
    for pipeline in sorted({k.path[0] for k in mine}):
        if concluding_key(pipeline) not in mine | downstream:
            continue  # e.g. a failed caption burn: the video is still published without it
        own = [k for k in mine if k.path[0] == pipeline]
        failed = failed_in_run(context.instance, context.run_id, own) or sorted(
            k.path[-1] for k in own
        )
        version = failure_version(
            cause["recipe"], cause["message"], cause["failure_class"], cause["reason"]
        )
        context.resources.events.sink().send(
            Event(
                type="video.failed",
                pipeline=pipeline,
                video=video,
                run_id=context.run_id,
                version=version,
                message=f"video {video} failed: {', '.join(failed)} "
                f"({cause['failure_class']}: {cause['reason']})",
                data={
                    "failed": failed,
                    "not_run": sorted(k.path[-1] for k in downstream if k.path[0] == pipeline),
                    "failure_class": cause["failure_class"],
                    "reason": cause["reason"],
                    "message": cause["message"],
                },
            )
        )
