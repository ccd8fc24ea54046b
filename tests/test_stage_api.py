"""A stage of your own, written with the public API as the README shows, run through Dagster:
provenance, retry of a transient failure only, fail-fast of a permanent one, skip when
unchanged, atomic publish, and a clear error for an output it cannot publish."""

import hashlib
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, instance_for_test
from pipeline_helpers import ffmpeg_wrapper, temp_project

from mpegflow_dagster import (
    CheckOutcome,
    RetrySpec,
    StageCheck,
    StageContext,
    StageOutput,
    source_file,
    video_asset,
)
from mpegflow_dagster.runs import materialize_video

pytestmark = pytest.mark.pipeline
FAST = RetrySpec(max_retries=2, delay_s=0.1, jitter="none")


def gray_stage(name: str, *extra: str, out_name: str = "gray.mp4"):
    @video_asset(
        key=["vod", name], ins={"ingest": ["vod", "ingest"]}, code_version="gray 1", retry=FAST
    )
    def stage(context: StageContext, ingest: Path) -> Path:
        out = context.work / out_name
        context.ffmpeg.run(
            name,
            [
                "-i",
                str(source_file(ingest)),
                "-t",
                "1",
                "-vf",
                "hue=s=0",
                *extra,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-an",
                str(out),
            ],
        )
        return out if out_name == "gray.mp4" else ingest

    return stage


def run(project, instance, stage, source=None):
    result = materialize_video(
        project,
        project.spec(),
        "clip",
        instance=instance,
        source=source,
        own_stages=[stage],
        stages=["ingest", f"vod/{stage.key.path[-1]}"],
    )
    retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    return result, retries


def records(instance, name: str, observations: bool = False):
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    return fetch(
        AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=["clip"]), limit=10
    ).records


def test_provenance_skip_unchanged_and_atomic_publish(tmp_path, make_source):
    project = temp_project(tmp_path)
    stage = gray_stage("gray")
    with instance_for_test() as instance:
        result, retries = run(project, instance, stage, source=make_source(duration_s=2.0))
        assert result.success and retries == []
        [record] = records(instance, "gray")
        meta = record.asset_materialization.metadata
        stored = Path(project.settings.storage_dir) / "vod" / "gray" / "clip" / "gray.mp4"
        assert meta["sha256"].value == hashlib.sha256(stored.read_bytes()).hexdigest()
        prov = meta["provenance"].value
        [argv] = prov["argv"]
        assert "hue=s=0" in argv and argv[0].endswith("ffmpeg")
        assert (
            prov["encoder"]["ffmpeg_build_hash"]
            and prov["attempt"] == 1
            and prov["inputs"]["ingest"]
        )
        assert not list(Path(project.settings.work_dir).iterdir())  # the scratch directory is gone
        assert not [
            p for p in stored.parent.iterdir() if "partial" in p.name or p.name.startswith(".")
        ]

        again, _ = run(project, instance, stage)
        assert again.success
        latest = records(instance, "gray")[0].asset_materialization.metadata
        assert latest["reused"].value and latest["provenance"].value["ffmpeg_runs"] == []


def test_a_transient_failure_is_retried_and_only_it(tmp_path, make_source):
    # The first run of the stage's FFmpeg is killed (like the OOM killer would): transient.
    marker = tmp_path / "killed-once"
    wrapper = ffmpeg_wrapper(
        tmp_path,
        f'if [[ "$*" == *hue=s=0* && ! -e {marker} ]]; then touch {marker}; kill -KILL $$; fi',
    )
    project = temp_project(tmp_path)
    with instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPEGFLOW_FFMPEG", str(wrapper))
        result, retries = run(
            project, instance, gray_stage("gray"), source=make_source(duration_s=2.0)
        )
        assert result.success
        assert [e.step_key for e in retries] == [
            "vod__gray"
        ]  # the stage's step, once; ingest ran once
        prov = records(instance, "gray")[0].asset_materialization.metadata["provenance"].value
        assert prov["attempt"] == 2 and prov["earlier_failures"] == ["transient"]
        [observed] = records(instance, "gray", observations=True)
        assert observed.asset_observation.metadata["reason"].value == "process.killed"


def test_a_permanent_failure_fails_fast_and_publishes_nothing(tmp_path, make_source):
    project = temp_project(tmp_path)
    with instance_for_test() as instance:
        result, retries = run(
            project,
            instance,
            gray_stage("broken", "-tune", "no-such-tune"),
            source=make_source(duration_s=2.0),
        )
        assert not result.success and retries == []
        [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        assert (
            "broken failed: permanent: config.invalid_option"
            in failure.step_failure_data.error.message
        )
        assert records(instance, "broken") == []
        assert not (Path(project.settings.storage_dir) / "vod" / "broken").exists()
        assert not list(Path(project.settings.work_dir).iterdir())


def test_an_output_outside_the_scratch_directory_is_refused_and_nothing_is_lost(
    tmp_path, make_source
):
    project = temp_project(tmp_path)
    with instance_for_test() as instance:
        result, retries = run(
            project,
            instance,
            gray_stage("stray", out_name="elsewhere.mp4"),
            source=make_source(duration_s=2.0),
        )
        assert not result.success and retries == []
        [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        assert "inside context.work" in failure.step_failure_data.error.message
        ingested = Path(project.settings.storage_dir) / "vod" / "ingest" / "clip" / "ingest"
        assert [p.name for p in ingested.iterdir()] == [
            "source.mp4"
        ]  # the input it returned is untouched


def checked_stage(floor: float):
    """A stage measuring its output's size, with a warning check and a blocking one."""

    def size_floor(facts):
        size = facts["size_kb"]
        return CheckOutcome(
            passed=size >= floor,
            description=f"{size} kB against a floor of {floor} kB",
            metadata={"size_kb": size},
            reason="size.below_floor",
        )

    @video_asset(
        key=["vod", "sized"],
        ins={"ingest": ["vod", "ingest"]},
        code_version="sized 1",
        retry=FAST,
        checks=[
            StageCheck(
                "has_size",
                "the output has bytes",
                lambda f: CheckOutcome(f["size_kb"] > 0, "not empty"),
            ),
            StageCheck("size_floor", "the output is big enough", size_floor, blocking=True),
        ],
    )
    def sized(context: StageContext, ingest: Path) -> StageOutput:
        out = context.work / "copy.mp4"
        out.write_bytes(source_file(ingest).read_bytes())
        return StageOutput(out, {"size_kb": round(out.stat().st_size / 1024, 1)})

    return sized


def test_checks_are_dagster_asset_checks_and_a_blocking_one_refuses_the_output(
    tmp_path, make_source
):
    source = make_source(duration_s=1.0, width=160, height=120)
    project = temp_project(tmp_path)
    with instance_for_test() as instance:
        result, _ = run(project, instance, checked_stage(floor=1.0), source)
        assert result.success
        key = AssetKey(["vod", "sized"])
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert evaluations["has_size"].passed and evaluations["size_floor"].passed
        assert evaluations["size_floor"].target_materialization_data is not None
        # an unchanged output is reused and judged again, against today's floor
        result, _ = run(project, instance, checked_stage(floor=10**9), source)
        assert not result.success
        refused = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not refused["size_floor"].passed and refused["has_size"].passed
        assert "against a floor of" in refused["size_floor"].description
        failures = [
            r.asset_observation
            for r in instance.fetch_observations(
                AssetRecordsFilter(asset_key=key, asset_partitions=["clip"]), limit=5
            ).records
        ]
        assert failures[0].metadata["reason"].value == "size.below_floor"
