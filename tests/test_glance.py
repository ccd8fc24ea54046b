"""One video at a glance: a failed stage on its own asset, `mpegflow status`, emit's `summary`,
`why`'s per-output commands, and progress per rendition from the first seconds."""

import json
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    instance_for_test,
)
from pipeline_helpers import ffmpeg_wrapper, project_with, run_cli

from mpegflow_dagster.runs import materialize_video
from mpegflow_dagster.why import explain

pytestmark = pytest.mark.pipeline  # runs of the pipeline and of `mpegflow run`


def _instance(tmp_path: Path) -> DagsterInstance:
    """The instance `run_cli` ran on."""
    return DagsterInstance.from_config(str(tmp_path / "home"))


def _status(video: str, tmp_path: Path) -> dict:
    proc = run_cli(["status", video, "--json"], tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_a_refused_source_fails_probe_on_its_own_asset(tmp_path):
    """The probe, not its step-sibling ingest, is the failed asset: Dagster's failed-partition
    status (a run that planned the asset, failed, and did not materialize it), the observation
    on the asset, the step's Failure and `mpegflow status` all name it."""
    junk = tmp_path / "in" / "junk.mp4"
    junk.parent.mkdir()
    junk.write_bytes(b"\x00garbage" * 4096)
    run = run_cli(["run", str(junk), "--out", str(tmp_path / "out")], tmp_path)
    assert run.returncode == 1, run.stderr[-2000:]

    status = _status("junk", tmp_path)
    probe, ingest = status["stages"]["probe"], status["stages"]["ingest"]
    assert ingest["status"] == "materialized"
    assert (probe["status"], probe["failure_class"], probe["reason_code"]) == (
        "failed",
        "permanent",
        "input.invalid_data",
    )
    assert probe["attempts"] == 1 and "Invalid data found" in probe["stderr_tail"]
    assert status["stages"]["rendition_720p"]["status"] == "not_run"
    assert status["published"] == {}
    text = run_cli(["status", "junk"], tmp_path)
    assert text.returncode == 1 and "probe              failed" in text.stdout

    with _instance(tmp_path) as instance:
        storage = instance.event_log_storage
        failed_in = {
            name: storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                AssetKey(["vod", name])
            )
            for name in ("ingest", "probe")
        }
        assert list(failed_in["probe"]) == ["junk"] and failed_in["ingest"] == {}
        [observed] = instance.fetch_observations(
            AssetRecordsFilter(asset_key=AssetKey(["vod", "probe"]), asset_partitions=["junk"]),
            limit=5,
        ).records
        assert observed.asset_observation is not None
        assert (observed.asset_observation.description or "").startswith(
            "probe failed: permanent: input.invalid_data: source "
        )
        [failure] = instance.all_logs(status["latest_run"]["run_id"], DagsterEventType.STEP_FAILURE)
        data = failure.dagster_event.step_failure_data.user_failure_data
        assert data.description.startswith("probe failed: permanent: input.invalid_data")
        assert "Invalid data found" in data.metadata["stderr_tail"].value


def test_status_why_and_summary_of_a_published_video(tmp_path, make_source):
    source = make_source("clip", duration_s=2.0, width=320, height=180, captions=True)
    first = run_cli(["run", str(source), "--out", str(tmp_path / "out")], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli(["run", str(source), "--out", str(tmp_path / "out")], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]

    status = _status("clip", tmp_path)
    stages = status["stages"]
    assert stages["rendition_240p"]["status"] == "reused"  # the second run encoded nothing
    # and published nothing again: the delivery still holds what emit published
    assert stages["emit"]["status"] == "reused" and stages["emit"]["attempts"] == 1
    assert {s["run_id"] for s in stages.values()} == {status["latest_run"]["run_id"]}
    delivery = tmp_path / "out" / "clip"
    assert status["published"] == {
        "captioned.mp4": str(delivery / "captioned.mp4"),
        "hls": str(delivery / "hls" / "master.m3u8"),
        "thumbnails": str(delivery / "thumbnails" / "storyboard.vtt"),
    }
    text = run_cli(["status", "clip"], tmp_path).stdout
    assert f"published hls: {delivery / 'hls' / 'master.m3u8'}" in text

    why = json.loads(run_cli(["why", "clip", "rendition_240p", "--json"], tmp_path).stdout)
    made = why["stages"]["rendition_240p"]["materialized"]
    stored, [command] = made["path"], made["commands"]
    [shared] = made["provenance"]["argv"]  # the full argv, as run, for reproduction
    work = str(tmp_path / "work")
    assert work in " ".join(shared) and work not in " ".join(command)
    assert command[-1] == f"file:{stored}" and command.count("-c:v") == 1
    assert shared.count("-c:v") > 1  # one run made every rendition
    assert "[s0][s1]" in command[command.index("-filter_complex") + 1]  # the shared split
    text = run_cli(["why", "clip", "thumbnails"], tmp_path).stdout
    assert f"stored   {tmp_path / 'storage'}/vod/thumbnails/clip/thumbnails" in text
    assert work not in text and "frames/%05d.jpg" in text

    with _instance(tmp_path) as instance:
        [emit] = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(["vod", "emit"]), asset_partitions=["clip"]),
            limit=1,
        ).records
        assert emit.asset_materialization is not None
        summary = emit.asset_materialization.metadata["summary"].value
    for name in stages:
        assert f"| {name} |" in summary, name
    assert "| rendition_240p | reused | 1 |" in summary
    assert "| emit | reused | 1 |" in summary  # as of the second run, not the first
    assert f"- hls: {delivery / 'hls' / 'master.m3u8'}" in summary


def test_a_chunked_rendition_shows_its_own_chunks_and_progress_adds_them_up(
    tmp_path, make_source, monkeypatch
):
    """Read at its own pace (`-re`), a 5 s source in two time chunks takes about 3 s: each
    rendition says progress within the first seconds, out of the whole source, and is done at
    100%; `why` shows each rendition its own part of each chunk, its audio and its join."""
    monkeypatch.setenv("MPEGFLOW_FFMPEG", str(ffmpeg_wrapper(tmp_path, options="-re")))
    project = project_with(
        tmp_path, {"chunk_s": 2.5, "gop_s": 1.0, "thumbnails": {"interval_s": 1.0}}
    )
    spec = project.spec()
    source = make_source("clip", duration_s=5.0, width=320, height=180)
    renditions = ["rendition_240p", "rendition_480p"]
    with instance_for_test() as instance:
        assert materialize_video(
            project, spec, "clip", instance=instance, source=source, stages=["ingest"]
        ).success
        result = materialize_video(project, spec, "clip", instance=instance, stages=renditions)
        assert result.success
        logs = instance.all_logs(result.run_id)
        started = next(
            r.timestamp
            for r in logs
            if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_START
        )
        said = [
            (r.timestamp - started, r.user_message)
            for r in logs
            if r.user_message.startswith("progress ")
        ]
        report = explain(instance, spec, "clip", "rendition_240p", work_dir=tmp_path / "work")
    for name in renditions:
        lines = [(t, m) for t, m in said if m.split()[1] == name]
        assert lines and lines[0][0] < 2.5, said  # the first within the first seconds
        assert "/5.0 s" in lines[0][1]  # out of the whole source, not of one chunk
        assert lines[-1][1].split()[2] == "100%" and len(lines) <= 4, lines
    # not a flood: the audio and the joins (read at their pace here too) a few lines each
    labels = [m.removeprefix("progress ").split("%")[0].rsplit(maxsplit=1)[0] for _, m in said]
    assert set(labels) == {*renditions, "encode audio", "join 240p", "join 480p"}, labels
    assert all(labels.count(label) <= 4 for label in labels), said
    made = report["stages"]["rendition_240p"]["materialized"]
    commands, argv = made["commands"], made["provenance"]["argv"]
    assert len(commands) == len(argv) == 4  # two chunks, the audio, the join
    work = str((tmp_path / "work").resolve())
    assert all(work not in " ".join(c) for c in commands)
    assert [c[-1] for c in commands[:3]] == [
        "file:<scratch>/240p.mp4",
        "file:<scratch>/240p.mp4",
        "file:<scratch>/240p.m4a",
    ]
    assert commands[-1][-1] == f"file:{made['path']}"
    assert all(c.count("file:<scratch>/480p.mp4") == 0 for c in commands)


def test_a_bad_rendition_is_named_on_its_own_asset(tmp_path, make_source):
    """A rendition whose encode fails permanently: its observation and the step's Failure start
    with its asset name; its siblings of the same step stand."""
    project = project_with(
        tmp_path,
        {
            "ladder": [
                {
                    "name": "240p",
                    "height": 240,
                    "video_bitrate_kbps": 400,
                    "profile": "baseline",
                    "level": "3.0",
                    "audio_bitrate_kbps": 64,
                    "preset": "broken-tune",
                },
                {
                    "name": "480p",
                    "height": 480,
                    "video_bitrate_kbps": 1200,
                    "profile": "main",
                    "level": "3.1",
                    "audio_bitrate_kbps": 96,
                },
            ],
            "captions": {"rendition": "480p"},
        },
        {"broken.yaml": "name: broken-tune\nversion: 1\ntune: no-such-tune\n"},
    )
    spec = project.spec()
    with instance_for_test() as instance:
        result = materialize_video(
            project, spec, "clip", instance=instance, source=make_source(duration_s=2.0)
        )
        assert not result.success
        [observed] = instance.fetch_observations(
            AssetRecordsFilter(asset_key=AssetKey(["vod", "rendition_240p"])), limit=5
        ).records
        report = explain(instance, spec, "clip")
    assert observed.asset_observation is not None
    assert (observed.asset_observation.description or "").startswith(
        "rendition_240p failed: permanent: config."
    )
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failure.step_failure_data.user_failure_data.description.startswith(
        "rendition_240p failed: permanent: config."
    )
    assert report["stages"]["rendition_240p"]["outcome"]["status"] == "failed"
    assert report["stages"]["rendition_480p"]["outcome"]["status"] == "materialized"
    assert report["stages"]["thumbnails"]["outcome"]["status"] == "materialized"
    assert report["stages"]["hls"]["outcome"]["status"] == "not_run"
