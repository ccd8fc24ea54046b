"""Time chunks as Dagster steps (`chunk_steps`): chunk-batch steps fill the artifact store, the
encode step joins; the bytes are those of the one-step default, a killed chunk retries its batch
step alone, and a new run after a failure encodes only the chunks that never finished."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Sequence

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    instance_for_test,
)
from pipeline_helpers import FAST_RETRY, ROOT, ffmpeg_wrapper, project_with
from s3_server import REGION, list_keys, moto_endpoint, s3_resource  # noqa: F401  (fixtures)

from mpegflow_dagster.assets import build_video_assets
from mpegflow_dagster.project import Project, S3Settings
from mpegflow_dagster.provenance import Provenance
from mpegflow_dagster.runs import materialize_video, stage_report
from mpegflow_dagster.stages.encode import SHARED_CHUNKS

pytestmark = pytest.mark.pipeline

# 6 s at 25 fps cut every 2 s, each chunk's encode starting 1 s early: three chunks (-ss 0, 1, 3);
# two batch steps take chunks 0 and 2, and chunk 1 with the audio
SPEC = {"gop_s": 1.0, "chunk_s": 2.0, "chunk_lead_gops": 1, "thumbnails": {"interval_s": 1.0}}
OUTPUTS = ("rendition_240p", "rendition_480p", "rendition_720p", "rendition_1080p", "thumbnails")
ENCODE = "vod__encode"


def hashes(
    instance: DagsterInstance, video: str, outputs: Sequence[str] = OUTPUTS
) -> dict[str, str]:
    """sha256 of each output's (and hls's) latest materialization."""
    found = {}
    for name in (*outputs, "hls"):
        wanted = AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=[video])
        [record] = instance.fetch_materializations(wanted, limit=1).records
        assert record.asset_materialization is not None
        found[name] = record.asset_materialization.metadata["sha256"].value
    return found


@pytest.fixture(scope="module")
def one_step(make_source, tmp_path_factory) -> dict[str, str]:
    """What the one-step default makes of the source."""
    base = tmp_path_factory.mktemp("one-step")
    project = project_with(base, SPEC)
    with instance_for_test() as instance:
        result = run_clip(project, instance, make_source)
        assert result.success
        return hashes(instance, "clip")


def in_steps(project: Project, steps: int = 2, **settings: Any) -> Project:
    """`project` with its chunks in `steps` chunk-batch steps (and other settings changed)."""
    changed = project.settings.model_copy(update={"chunk_steps": steps, **settings})
    return project.model_copy(update={"settings": changed})


def run_clip(project: Project, instance: DagsterInstance, make_source: Any):
    """A run of the 6 s clip through `project`'s pipeline."""
    source = make_source(duration_s=6.0, width=320, height=180)
    return materialize_video(project, project.spec(), "clip", instance=instance, source=source)


def run_log(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(e.user_message for e in instance.all_logs(run_id))


def test_chunk_steps_keep_the_encode_in_its_pipelines_group() -> None:
    """The pipeline's job and upload sensor select its group: the encode must be in it."""
    spec = Project.load(ROOT).spec("vod")
    groups = {
        key: group
        for a in build_video_assets(spec, chunk_steps=2)
        for key, group in a.group_names_by_key.items()
    }
    assert AssetKey(["vod", "rendition_480p"]) in groups
    assert set(groups.values()) == {"vod"}


def started_steps(result) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START]


def test_chunk_steps_make_the_bytes_of_one_step_and_leave_no_pieces(
    one_step, make_source, tmp_path
):
    project = in_steps(project_with(tmp_path, SPEC))
    with instance_for_test() as instance:
        result = run_clip(project, instance, make_source)
        assert result.success
        steps = started_steps(result)
        assert {f"{ENCODE}.{ENCODE}_work_0", f"{ENCODE}.{ENCODE}_work_1"} <= set(steps)
        assert steps.index(f"{ENCODE}.{ENCODE}_outputs") > steps.index(f"{ENCODE}.{ENCODE}_work_1")
        assert hashes(instance, "clip") == one_step
        report = stage_report(result.all_events, project.spec())
        assert all(report[n]["status"] == "materialized" for n in OUTPUTS), report
        # the join found every piece made by the batch steps, then removed them
        logs = run_log(instance, result.run_id)
        assert logs.count("of its 2 pieces made") == 2, logs
        assert (
            "chunk batch 1/2: 2 of its 2 pieces made" in logs
        )  # each batch: two chunks, or a chunk and the audio
        chunks = Path(project.settings.storage_dir) / SHARED_CHUNKS
        assert not chunks.exists() or not any(chunks.iterdir())
        # an unchanged run encodes nothing in any step
        again = materialize_video(project, project.spec(), "clip", instance=instance)
        assert again.success
        logs = run_log(instance, again.run_id)
        assert logs.count("every selected output is reused: nothing to encode") == 2


def killing_wrapper(tmp_path: Path, times: int) -> tuple[Path, Path]:
    """FFmpeg that SIGKILLs every encode of the chunk cut at 2 s (-ss 1), the first `times` times;
    every x264 or AAC encode is logged by its seek (`-ss N`, or `audio`)."""
    calls, kills = tmp_path / "calls.log", tmp_path / "kills"
    wrapper = ffmpeg_wrapper(
        tmp_path,
        f"""
if [[ "$*" == *libx264* && "$*" == *" -ss "* ]]; then echo "$*" | grep -o -- "-ss [0-9.]*" >> {calls}; fi
if [[ "$*" == *"-c:a aac"* && "$*" != *libx264* ]]; then echo audio >> {calls}; fi
if [[ "$*" == *libx264* && "$*" == *" -ss 1 "* && $(cat {kills} 2>/dev/null | wc -l) -lt {times} ]]; then
  echo killed >> {kills}; ffmpeg "$@" & sleep 0.2; kill -9 $!; wait $!; kill -9 $$
fi""",
    )
    return wrapper, calls


def test_a_killed_chunk_is_encoded_again_by_its_batch_step_alone(one_step, make_source, tmp_path):
    wrapper, calls = killing_wrapper(tmp_path, times=1)
    project = in_steps(project_with(tmp_path, {**SPEC, "failures": FAST_RETRY}))
    with instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPEGFLOW_FFMPEG", str(wrapper))
        result = run_clip(project, instance, make_source)
        assert result.success
        retried = [
            e.step_key
            for e in result.all_events
            if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
        ]
        assert retried == [f"{ENCODE}.{ENCODE}_work_1"]
        # the killed chunk twice, every other piece once (the audio beside it was kept)
        assert sorted(calls.read_text().split()) == sorted(
            ["-ss", "0", "-ss", "1", "-ss", "1", "-ss", "3", "audio"]
        )
        assert hashes(instance, "clip") == one_step


def test_a_new_run_after_a_failed_one_encodes_only_the_chunk_that_never_finished(
    one_step, make_source, tmp_path
):
    """No retries, and the chunk cut at 2 s killed every time in the first run (in its batch step, in
    the encode step's shared run, in each output's own run): the run fails, the pieces that
    finished stay; the next run encodes that chunk alone. (Without thumbnails: they encode no
    x264 and would be made alone in the first run, and a chunk's recipe names every output.)"""
    wrapper, calls = killing_wrapper(tmp_path, times=1000)
    changes = {
        **SPEC,
        "thumbnails": {"enabled": False, "interval_s": 1.0},
        "failures": {"retry": {"max_retries": 0}},
    }
    project = in_steps(project_with(tmp_path, changes))
    with instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPEGFLOW_FFMPEG", str(wrapper))
        failed = run_clip(project, instance, make_source)
        assert not failed.success
        report = stage_report(failed.all_events, project.spec())
        assert report["rendition_480p"]["status"] == "failed"
        assert "transient: process.killed" in report["rendition_480p"]["reason"]
        calls.unlink()
        (tmp_path / "kills").write_text("killed\n" * 1000)  # no more kills
        again = materialize_video(project, project.spec(), "clip", instance=instance)
        assert again.success
        assert calls.read_text().split() == ["-ss", "1"]
        made = hashes(instance, "clip", [n for n in OUTPUTS if n != "thumbnails"])
        assert made == {n: sha for n, sha in one_step.items() if n != "thumbnails"}


def test_chunk_steps_pass_their_pieces_through_the_s3_storage_bucket(
    one_step, make_source, tmp_path, moto_endpoint
):
    """Artifacts on S3 (as on a cluster, where every worker reaches only the bucket): the batch
    steps publish the pieces there, the encode step joins them without encoding any, and removes
    them; the bytes are the one-step default's."""
    client = s3_resource(moto_endpoint).get_client()
    bucket = f"storage-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    storage = S3Settings(endpoint_url=moto_endpoint, storage_bucket=bucket)
    project = in_steps(project_with(tmp_path, SPEC), s3=storage)
    settings = project.settings
    with instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
            mp.setenv(name, value)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        result = run_clip(project, instance, make_source)
        assert result.success
        assert hashes(instance, "clip") == one_step
        # every chunk encode of a rendition ran before the encode step started: it only joined
        [joining] = [
            e.timestamp
            for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START)
            if e.step_key == f"{ENCODE}.{ENCODE}_outputs"
        ]
        wanted = AssetRecordsFilter(
            asset_key=AssetKey(["vod", "rendition_480p"]), asset_partitions=["clip"]
        )
        [record] = instance.fetch_materializations(wanted, limit=1).records
        assert record.asset_materialization is not None
        prov = Provenance.model_validate(record.asset_materialization.metadata["provenance"].value)
        starts = [
            start
            for argv, (start, _) in zip(prov.argv, prov.ffmpeg_runs, strict=True)
            if "libx264" in argv
        ]
        assert len(starts) == 3 and max(starts) < joining
    keys = list_keys(client, bucket)
    assert any(k.startswith("mpegflow/storage/vod/rendition_480p/clip/") for k in keys)
    assert not [k for k in keys if f"/{SHARED_CHUNKS}/" in k]  # joined, then removed
    assert not (Path(settings.storage_dir) / SHARED_CHUNKS).exists()
