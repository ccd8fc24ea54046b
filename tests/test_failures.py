"""Failure handling through Dagster: classify, retry only what can heal, isolate, clean up, announce."""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, instance_for_test
from pipeline_helpers import (
    FAST_RETRY,
    ffmpeg_wrapper,
    project_with,
    project_with_broken,
    run_cli,
    temp_project,
)

from mpegflow_dagster.events import JsonlEventSink
from mpegflow_dagster.project import Project
from mpegflow_dagster.runs import materialize_video, stage_report

pytestmark = pytest.mark.pipeline  # every test materializes the pipeline or runs `mpegflow run`


def events_of(project: Project) -> list[dict]:
    return JsonlEventSink(Path(project.settings.events_path)).read()


def test_permanent_failure_isolates_one_rendition(tmp_path, make_source):
    project = project_with_broken(tmp_path, {"480p"})
    spec = project.spec()
    with instance_for_test() as instance:
        result = materialize_video(
            project, spec, "clip", instance=instance, source=make_source(duration_s=2.0)
        )
        report = stage_report(result.all_events, spec)
        retries = [
            e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
        ]
    assert report["rendition_480p"]["status"] == "failed"
    assert report["rendition_480p"]["failure_class"] == "permanent"
    assert report["rendition_480p"]["reason_code"].startswith("config.")
    for sibling in (
        "rendition_240p",
        "rendition_720p",
        "rendition_1080p",
        "thumbnails",
        "captions",
    ):
        assert report[sibling]["status"] in ("materialized", "skipped"), sibling
    assert report["hls"]["status"] == "not_run" and report["emit"]["status"] == "not_run"
    assert retries == []  # permanent: no retry
    failed = [e for e in events_of(project) if e["type"] == "rendition.failed"]
    assert len(failed) == 1
    assert (
        failed[0]["message"] == f"rendition 480p failed: permanent: {failed[0]['data']['reason']}"
    )
    assert failed[0]["data"]["reason"].startswith("config.")
    assert not list((tmp_path / "work").iterdir())  # partial outputs removed
    assert not (tmp_path / "storage" / "vod" / "rendition_480p").exists()
    assert not (tmp_path / "delivery" / "clip").exists()


def test_min_renditions_packages_what_succeeded(tmp_path, make_source):
    project = project_with_broken(tmp_path, {"480p"}, hls={"segment_s": 4, "min_renditions": 3})
    spec = project.spec()
    source = {"duration_s": 2.0, "width": 1280, "height": 720}  # 480p would be packaged
    with instance_for_test() as instance:
        result = materialize_video(
            project, spec, "clip", instance=instance, source=make_source(**source)
        )
    report = stage_report(result.all_events, spec)
    assert (
        report["rendition_480p"]["status"] == "failed"
        and report["rendition_480p"]["failure_class"] == "permanent"
    )
    assert report["hls"]["status"] == "materialized" and report["emit"]["status"] == "materialized"
    master = (tmp_path / "delivery" / "clip" / "hls" / "master.m3u8").read_text()
    # 240p and 720p: 480p failed, 1080p is above the source
    assert master.count("#EXT-X-STREAM-INF") == 2 and "480p/" not in master
    assert [e["subject"] for e in events_of(project) if e["type"] == "rendition.failed"] == ["480p"]
    [outcome] = [e for e in events_of(project) if e["type"] == "video.succeeded"]  # from the run
    assert outcome["run_id"] == result.run_id and outcome["data"]["degraded"] == ["rendition_480p"]
    # On demand, a partial ladder is re-packaged together with its renditions (reused, not re-encoded).
    with instance_for_test() as instance:
        materialize_video(project, spec, "clip", instance=instance, source=make_source(**source))
        alone = materialize_video(project, spec, "clip", instance=instance, stages=["hls"])
        [packaged] = (
            alone.get_asset_materialization_events()
        )  # nothing changed: the stored package is kept
        assert packaged.step_materialization_data.materialization.metadata["reused"].value
        forced = materialize_video(
            project, spec, "clip", instance=instance, stages=["hls"], force=True
        )
        assert (
            "materialize hls together with all its renditions"
            in stage_report(forced.all_events, spec)["hls"]["reason"]
        )
        rungs = [f"rendition_{r.name}" for r in spec.ladder]
        together = materialize_video(
            project, spec, "clip", instance=instance, stages=[*rungs, "hls"]
        )
        assert stage_report(together.all_events, spec)["hls"]["status"] == "materialized"
        assert all(
            e.step_materialization_data.materialization.metadata["reused"].value
            for e in together.get_asset_materialization_events()
            if e.asset_key.path[-1] in rungs
        )


def test_min_renditions_still_fails_when_too_few_succeed(tmp_path, make_source):
    project = project_with_broken(
        tmp_path, {"480p", "720p"}, hls={"segment_s": 4, "min_renditions": 3}
    )
    spec = project.spec()
    with instance_for_test() as instance:
        result = materialize_video(
            project, spec, "clip", instance=instance, source=make_source(duration_s=2.0)
        )
    report = stage_report(result.all_events, spec)
    assert {report[r]["status"] for r in ("rendition_480p", "rendition_720p")} == {"failed"}
    assert report["rendition_240p"]["status"] == "materialized"
    assert report["hls"]["status"] == "not_run" and not (tmp_path / "delivery" / "clip").exists()
    types = [e["type"] for e in events_of(project)]  # sent by the run itself (a failure hook)
    assert types.count("video.failed") == 1 and "video.succeeded" not in types


def test_killed_encode_is_retried_alone_and_completes(tmp_path, make_source):
    marker = tmp_path / "killed-once"
    # First 480p encode: start the real FFmpeg, SIGKILL it mid-way (as the OOM killer would).
    harness = ffmpeg_wrapper(
        tmp_path,
        f"""
if [[ "$*" == *480p.mp4* && ! -e {marker} ]]; then
  touch {marker}; ffmpeg "$@" & sleep 0.3; kill -9 $!; wait $!; kill -9 $$
fi""",
    )
    project = project_with(tmp_path, {"failures": FAST_RETRY})
    spec = project.spec()
    with instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPEGFLOW_FFMPEG", str(harness))
        result = materialize_video(
            project, spec, "clip", instance=instance, source=make_source(duration_s=2.0)
        )
        report = stage_report(result.all_events, spec)
        retried = {
            e.step_key
            for e in result.all_events
            if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
        }
        meta = (
            instance.fetch_materializations(
                AssetRecordsFilter(
                    asset_key=AssetKey(["vod", "rendition_480p"]), asset_partitions=["clip"]
                ),
                limit=1,
            )
            .records[0]
            .asset_materialization.metadata
        )
    assert marker.exists() and result.success
    assert retried == {"vod__encode"}
    assert report["emit"]["status"] == "materialized"
    prov = meta["provenance"].value
    assert prov["attempt"] == 2 and prov["earlier_failures"] == ["transient"]
    types = [e["type"] for e in events_of(project)]
    # A retried attempt is not a failure: no failure hook, no failure event, one success.
    assert "rendition.failed" not in types and "video.failed" not in types
    assert types.count("video.succeeded") == 1


def test_resource_failure_is_retried_with_fewer_ffmpeg_processes(tmp_path, make_source):
    marker, calls = tmp_path / "limited-once", tmp_path / "calls.log"
    # The lane that encodes 480p first runs under a 64 KiB file-size limit: the kernel stops the real
    # FFmpeg with SIGXFSZ as soon as an output grows past it, as on a full quota.
    harness = ffmpeg_wrapper(
        tmp_path,
        f"""
[[ "$*" == *-version* ]] || echo "$*" >> {calls}
if [[ "$*" == *480p.mp4* && ! -e {marker} ]]; then touch {marker}; ulimit -f 64; fi""",
    )
    project = project_with(tmp_path, {"failures": FAST_RETRY})
    spec = project.spec()
    with instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPEGFLOW_FFMPEG", str(harness))
        result = materialize_video(
            project, spec, "clip", instance=instance, source=make_source(duration_s=2.0)
        )
        failed = instance.fetch_observations(
            AssetRecordsFilter(
                asset_key=AssetKey(["vod", "rendition_480p"]), asset_partitions=["clip"]
            ),
            limit=5,
        ).records
        meta = (
            instance.fetch_materializations(
                AssetRecordsFilter(
                    asset_key=AssetKey(["vod", "rendition_480p"]), asset_partitions=["clip"]
                ),
                limit=1,
            )
            .records[0]
            .asset_materialization.metadata
        )
    assert marker.exists() and result.success
    assert [r.asset_observation.metadata["reason"].value for r in failed] == ["resource.disk_full"]
    prov = meta["provenance"].value
    assert prov["attempt"] == 2 and prov["earlier_failures"] == ["resource"]
    encodes = [line for line in calls.read_text().splitlines() if "libx264" in line]
    outputs = [
        sum(f"{rung}.mp4" in line for rung in ("240p", "480p", "720p", "1080p")) for line in encodes
    ]
    # two lanes at once (1080p | 720p, 480p, 240p), then one lane for all four
    assert sorted(outputs[:2]) == [1, 3] and outputs[2:] == [4], outputs


@pytest.mark.parametrize(
    "name, content, failure_class, reason",
    [
        (
            "playlist.mp4",
            b"#EXTM3U\n#EXTINF:1,\n/etc/passwd\n",
            "security",
            "security.playlist_input",
        ),
        (
            "list.mp4",
            b"ffconcat version 1.0\nfile '/etc/passwd'\n",
            "security",
            "security.playlist_input",
        ),
        (
            "-dash.mp4",
            b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2000,
            "permanent",
            "input.invalid_data",
        ),
        ("empty.mp4", b"", "permanent", "input.rejected"),
    ],
)
def test_hostile_and_broken_sources_fail_with_a_class_and_publish_nothing(
    tmp_path, name, content, failure_class, reason
):
    source = tmp_path / "in" / name
    source.parent.mkdir()
    source.write_bytes(content)
    project = temp_project(tmp_path)
    spec = project.spec()
    with instance_for_test() as instance:
        result = materialize_video(project, spec, "bad", instance=instance, source=source)
        failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    meta = failures[0].step_failure_data.user_failure_data.metadata
    assert (meta["failure_class"].value, meta["reason"].value) == (failure_class, reason)
    assert not (tmp_path / "delivery").exists()
    assert not any((tmp_path / "storage" / "vod").glob("rendition_*"))
    assert source.read_bytes() == content


def test_audio_only_source_is_rejected_as_no_video(tmp_path):
    from mpegflow_dagster.media.runner import run_ffmpeg

    audio = tmp_path / "in" / "radio.m4a"
    audio.parent.mkdir()
    run_ffmpeg(["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", f"file:{audio}"])
    project = temp_project(tmp_path)
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "radio", instance=instance, source=audio
        )
    report = stage_report(result.all_events, project.spec())
    assert "permanent: input.no_video_stream" in report["probe"]["reason"]


def test_cli_json_reports_class_and_reason(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"#EXTM3U\n")
    proc = run_cli(["run", str(junk), "--json", "--out", str(tmp_path / "o")], tmp_path)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert report["stages"]["probe"]["failure_class"] == "security"
    assert report["stages"]["probe"]["reason_code"] == "security.playlist_input"
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("video.failed") == 1


def ffmpeg_families():
    """The FFmpeg on PATH (Debian's 5.1 here) and, when the dev dependency is installed, a static 9.0 build."""
    families = [pytest.param("ffmpeg", id="system-ffmpeg")]
    try:
        import imageio_ffmpeg

        families.append(pytest.param(imageio_ffmpeg.get_ffmpeg_exe(), id="static-ffmpeg-9"))
    except ImportError:
        pass
    return families


@pytest.mark.parametrize("ffmpeg_bin", ffmpeg_families())
def test_truncated_source_is_rejected_by_verification_on_both_families(
    tmp_path, make_source, monkeypatch, ffmpeg_bin
):
    """A faststart MP4 cut in half probes as whole and encodes with exit 0: only verification sees it."""
    import corpus

    monkeypatch.setenv("MPEGFLOW_FFMPEG", ffmpeg_bin)
    (tmp_path / "in").mkdir()
    cut = corpus.truncated(
        corpus.faststart(make_source("cut", duration_s=4.0), tmp_path), tmp_path / "in"
    )
    project = temp_project(tmp_path)
    spec = project.spec()
    with instance_for_test() as instance:
        result = materialize_video(project, spec, "cut", instance=instance, source=cut)
    report = stage_report(result.all_events, spec)
    assert report["rendition_720p"]["status"] == "failed"
    assert report["rendition_720p"]["reason_code"] == "output.verification_failed"
    assert report["hls"]["status"] == "not_run"
    failed = [e for e in events_of(project) if e["type"] == "rendition.failed"]
    assert sorted(e["subject"] for e in failed) == [
        "1080p",
        "240p",
        "480p",
        "720p",
    ]  # one each, isolated
    assert all(e["message"].endswith("permanent: output.verification_failed") for e in failed)
    assert not any((tmp_path / "storage" / "vod").glob("rendition_*"))
