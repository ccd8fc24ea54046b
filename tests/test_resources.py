"""FFmpegResource checks the build when the run starts, before any stage does work."""

import logging
import re
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


def test_progress_is_said_per_output_adding_up_its_chunks(tmp_path):
    """Each line is an event-log write: an output done within the first second says nothing; a
    longer one says a first line after a second, then at most one every interval, and a last
    one when done. A rendition made in two time chunks is out of the whole source."""
    lines: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("mpegflow-test-progress")
    log.addHandler(Recorder())
    log.setLevel(logging.INFO)
    board = FFmpegResource(work_dir=str(tmp_path)).tools(log, every_s=0.3).progress
    assert board is not None

    def at(s: float, duration: float, done: bool = False) -> Progress:
        return Progress(out_time_s=s, speed=1.0, frame=None, duration_s=duration, done=done)

    short = board.run(["sprite"], 1.0)
    short(at(0.5, 1.0))
    short(at(1.0, 1.0, done=True))
    assert lines == []
    board.expect(["rendition_240p"], 10.0)
    first, second = board.run(["rendition_240p"], 5.0), board.run(["rendition_240p"], 5.0)
    first(at(0.5, 5.0))
    assert lines == []  # not a second yet
    time.sleep(1.0)
    first(at(1.0, 5.0))
    second(at(1.5, 5.0))  # within the interval: not said
    time.sleep(0.3)
    second(at(2.0, 5.0))
    first(at(5.0, 5.0, done=True))  # the other chunk is not done: no last line yet
    assert [line.split()[:3] for line in lines] == [
        ["progress", "rendition_240p", "10%"],  # 1.0 of 10 s
        ["progress", "rendition_240p", "30%"],  # 1.0 + 2.0
    ]
    assert re.fullmatch(
        r"progress rendition_240p +10% \(1\.0/10\.0 s, \d+\.\dx realtime, eta \d+ s\)", lines[0]
    ), lines[0]
    second(at(5.0, 5.0, done=True))
    assert lines[-1].split()[:4] == ["progress", "rendition_240p", "100%", "(10.0/10.0"]
    assert "done in" in lines[-1] and len(lines) == 3
