"""FFmpegResource checks the build when the run starts, before any stage does work."""

import pytest
from dagster import DagsterEventType, instance_for_test

from mpegflow_dagster.runs import materialize_video, stage_report

from pipeline_helpers import temp_project


@pytest.mark.parametrize(
    "settings, env, message",
    [
        ({"required_version": "0.0.1"}, {}, "FFmpeg version mismatch: this deployment requires 0.0.1, but"),
        ({}, {"MPEGFLOW_FFMPEG": "/nonexistent/ffmpeg"}, "apt-get install ffmpeg"),
        ({}, {"MPEGFLOW_FFPROBE": "no-such-ffprobe"}, "`no-such-ffprobe` was not found"),
    ],
)
def test_wrong_or_missing_ffmpeg_fails_the_run_at_start(make_source, tmp_path, monkeypatch, settings, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    project = temp_project(tmp_path, **settings)
    spec = project.spec("vod")
    with instance_for_test() as instance:
        result = materialize_video(project, spec, "v", instance=instance, source=make_source(duration_s=2.0))
    assert not result.success
    failures = [e for e in result.all_events if e.event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE)]
    text = " ".join(str(e.event_specific_data) for e in failures) + " ".join(e.message or "" for e in failures)
    assert message in text
    assert not result.get_asset_materialization_events()  # not even ingest ran
    assert not any(stage["status"] == "materialized" for stage in stage_report(result.all_events, spec).values())
