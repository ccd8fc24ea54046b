"""FFmpegResource checks the build when the run starts, before any stage does work."""

import logging
import time

import pytest
from dagster import DagsterEventType, instance_for_test
from pipeline_helpers import temp_project

from mpegflow_dagster.media.progress import Progress
from mpegflow_dagster.resources import FFmpegResource
from mpegflow_dagster.runs import materialize_video, stage_report


@pytest.mark.pipeline  # launches runs of the pipeline (they fail at start)
@pytest.mark.parametrize(
    "settings, env, message",
    [
        (
            {"required_version": "0.0.1"},
            {},
            "FFmpeg version mismatch: this deployment requires 0.0.1, but",
        ),
        ({}, {"MPEGFLOW_FFMPEG": "/nonexistent/ffmpeg"}, "apt-get install ffmpeg"),
        ({}, {"MPEGFLOW_FFPROBE": "no-such-ffprobe"}, "`no-such-ffprobe` was not found"),
    ],
)
def test_wrong_or_missing_ffmpeg_fails_the_run_at_start(
    make_source, tmp_path, monkeypatch, settings, env, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    project = temp_project(tmp_path, **settings)
    spec = project.spec("vod")
    with instance_for_test() as instance:
        result = materialize_video(
            project, spec, "v", instance=instance, source=make_source(duration_s=2.0)
        )
    assert not result.success
    failures = [
        e
        for e in result.all_events
        if e.event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE)
    ]
    text = " ".join(str(e.event_specific_data) for e in failures) + " ".join(
        e.message or "" for e in failures
    )
    assert message in text
    assert not result.get_asset_materialization_events()  # not even ingest ran
    assert not any(
        stage["status"] == "materialized"
        for stage in stage_report(result.all_events, spec).values()
    )


def test_progress_is_logged_only_for_runs_longer_than_the_interval(tmp_path):
    """Each log line is an event-log write: a short FFmpeg run logs nothing, a long one a line per
    interval and a last one when done."""
    lines: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("mpegflow-test-progress")
    log.addHandler(Recorder())
    log.setLevel(logging.INFO)
    tools = FFmpegResource(work_dir=str(tmp_path)).tools(log, every_s=0.2)

    def report(label: str, at_s: float, done: bool = False) -> None:
        tools.on_progress(
            label, Progress(out_time_s=at_s, speed=1.0, frame=None, duration_s=10.0, done=done)
        )

    report("short", 0.0)
    report("short", 10.0, done=True)
    assert lines == []
    report("long", 0.0)
    time.sleep(0.25)
    report("long", 5.0)
    report("long", 6.0)  # within the interval: not logged
    report("long", 10.0, done=True)
    assert [line.split(":")[0] for line in lines] == ["long", "long"] and "100.0%" in lines[-1]
