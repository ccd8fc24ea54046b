"""The S3 upload sensor against a real (moto) S3 server over HTTP."""

import re
import time
from pathlib import Path

import pytest
from dagster import (
    AssetExecutionContext,
    Config,
    DagsterInstance,
    DynamicPartitionsDefinition,
    SensorResult,
    asset,
    build_sensor_context,
    materialize,
)
from dagster_aws.s3 import S3Resource
from s3_server import bucket, moto_endpoint, s3, seed_objects  # noqa: F401  (fixtures)

from mpegflow_dagster.s3.resources import S3SourceResource
from mpegflow_dagster.s3.sensor import (
    SOURCE_TAG,
    UploadCursor,
    build_s3_upload_sensor,
    partition_key_for,
)
from mpegflow_dagster.s3.store import download_source

VIDEOS = DynamicPartitionsDefinition(name="vod_videos")
SAFE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class IngestConfig(Config):
    source_path: str


@asset(key=["vod", "ingest"], partitions_def=VIDEOS)
def ingest(context: AssetExecutionContext, config: IngestConfig, s3: S3Resource) -> None:
    """Stands in for the real ingest: fetches the source the sensor pointed it at."""
    local = download_source(
        s3.get_client(), config.source_path, Path(context.instance.storage_directory())
    )
    context.add_output_metadata({"bytes": local.read_bytes().decode()})


def make_sensor(bucket: str, **kwargs):
    return build_s3_upload_sensor("vod", [ingest], VIDEOS, bucket, "uploads/", **kwargs)


def tick(sensor_def, instance: DagsterInstance, s3: S3Resource, cursor: str | None) -> SensorResult:
    sources = S3SourceResource(s3=s3)  # a nested resource: the context must be entered
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"sources": sources}
    ) as context:
        result = sensor_def(context)
    assert isinstance(result, SensorResult) and result.cursor
    return result


def requested(result: SensorResult) -> list[str]:
    return [r.run_key.rsplit(":", 1)[0] for r in result.run_requests or []]


def put(client, bucket: str, key: str, body: bytes = b"media") -> str:
    return client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')


def at_start_of_a_second() -> None:
    """So that what a test uploads next shares one LastModified second."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_new_uploads_request_runs_that_ingest_them(s3, bucket, tmp_path):
    client = s3.get_client()
    etag = put(client, bucket, "uploads/sample.mp4", b"sample-bytes")
    put(client, bucket, "uploads/notes.txt")  # not media
    put(client, bucket, "uploads/empty.mov", b"")  # zero bytes: still uploading or broken
    put(client, bucket, "elsewhere/other.mp4")  # outside the prefix
    put(client, bucket, "uploads-old/old.mp4")  # a sibling prefix, not under "uploads/"
    instance = DagsterInstance.ephemeral(tempdir=str(tmp_path))
    sensor_def = make_sensor(bucket)

    data = tick(sensor_def, instance, s3, None)
    [request] = data.run_requests
    uri = f"s3://{bucket}/uploads/sample.mp4"
    assert (request.run_key, request.partition_key, request.tags[SOURCE_TAG]) == (
        f"uploads/sample.mp4:{etag}",
        "sample",
        uri,
    )
    assert request.run_config == {"ops": {"vod__ingest": {"config": {"source_path": uri}}}}
    [add] = data.dynamic_partitions_requests
    assert (add.partitions_def_name, list(add.partition_keys)) == ("vod_videos", ["sample"])

    instance.add_dynamic_partitions("vod_videos", ["sample"])
    run = materialize(
        [ingest],
        partition_key="sample",
        run_config=request.run_config,
        instance=instance,
        resources={"s3": s3},
    )
    assert (
        run.asset_materializations_for_node("vod__ingest")[0].metadata["bytes"].value
        == "sample-bytes"
    )

    again = tick(sensor_def, instance, s3, data.cursor)
    assert requested(again) == [] and again.skip_reason and not again.dynamic_partitions_requests


def test_same_second_uploads_deleted_keys_and_reuploads(s3, bucket):
    client = s3.get_client()
    instance = DagsterInstance.ephemeral()
    sensor_def = make_sensor(bucket)
    for _ in range(5):  # on a loaded host the tick between the two uploads can outlast the second
        for key in ("uploads/a.mp4", "uploads/b.mp4"):
            client.delete_object(Bucket=bucket, Key=key)
        at_start_of_a_second()
        put(client, bucket, "uploads/b.mp4")
        first = tick(sensor_def, instance, s3, None)
        put(client, bucket, "uploads/a.mp4")  # sorts before b and shares its LastModified second
        heads = [
            client.head_object(Bucket=bucket, Key=f"uploads/{k}.mp4")["LastModified"] for k in "ab"
        ]
        if heads[0] == heads[1]:
            break
    else:
        pytest.fail("could not upload two objects within one second in five tries")
    second = tick(sensor_def, instance, s3, first.cursor)
    assert requested(first) == ["uploads/b.mp4"] and requested(second) == ["uploads/a.mp4"]

    client.delete_object(Bucket=bucket, Key="uploads/b.mp4")  # the newest key seen goes away
    third = tick(sensor_def, instance, s3, second.cursor)
    assert requested(third) == []

    same = put(client, bucket, "uploads/a.mp4")  # same bytes again: nothing to do
    fourth = tick(sensor_def, instance, s3, third.cursor)
    assert requested(fourth) == []
    changed = put(client, bucket, "uploads/a.mp4", b"new content")
    fifth = tick(sensor_def, instance, s3, fourth.cursor)
    [request] = fifth.run_requests
    assert (
        changed != same
        and request.run_key == f"uploads/a.mp4:{changed}"
        and request.partition_key == "a"
    )


def test_restart_with_the_saved_cursor_finds_exactly_the_new_uploads(s3, bucket):
    client = s3.get_client()
    for name in ("one", "two", "three"):
        put(client, bucket, f"uploads/{name}.mkv", name.encode())
    before = tick(make_sensor(bucket), DagsterInstance.ephemeral(), s3, None)
    assert sorted(requested(before)) == ["uploads/one.mkv", "uploads/three.mkv", "uploads/two.mkv"]
    saved = before.cursor

    put(client, bucket, "uploads/four.webm", b"four")
    put(client, bucket, "uploads/two.mkv", b"two, re-exported")
    restarted = tick(make_sensor(bucket), DagsterInstance.ephemeral(), s3, saved)
    assert sorted(requested(restarted)) == ["uploads/four.webm", "uploads/two.mkv"]
    assert (
        len(UploadCursor.load(restarted.cursor).seen) == 5
    )  # one per (key, etag) still in the window


def test_hostile_keys_give_safe_distinct_partition_keys(s3, bucket):
    client = s3.get_client()
    keys = [
        "uploads/x.mp4",
        "uploads/a/x.mp4",
        "uploads/b/x.mp4",
        "uploads/../../x.mp4",
        "uploads/x/../x.mp4",
        "uploads/Vidéo été 2024.MOV",
        "uploads/视频.mxf",
        "uploads/with spaces  and (parens).avi",
        "uploads/" + "long name " * 90 + ".m4v",
        "uploads/.hidden.ts",
        "uploads/a b.mp4",
        "uploads/a_b.mp4",
    ]
    for key in keys:
        put(client, bucket, key)
    result = tick(make_sensor(bucket), DagsterInstance.ephemeral(), s3, None)
    by_key = {r.run_key.rsplit(":", 1)[0]: r.partition_key for r in result.run_requests}
    assert sorted(by_key) == sorted(keys)
    assert len(set(by_key.values())) == len(keys)  # no two objects share a partition
    assert all(SAFE.fullmatch(p) for p in by_key.values()), by_key
    assert by_key["uploads/x.mp4"] == "x" and by_key["uploads/a/x.mp4"].startswith("x-")
    [add] = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == sorted(by_key.values())
    assert partition_key_for("uploads/a/x.mp4", "uploads") == by_key["uploads/a/x.mp4"]  # stable


def test_cursor_forgets_what_is_older_than_the_lookback(s3, bucket):
    client = s3.get_client()
    sensor_def = make_sensor(bucket, lookback_seconds=0.5)
    put(client, bucket, "uploads/old.mp4")
    at_start_of_a_second()  # LastModified has whole seconds: new.mp4's is at least a second later
    put(client, bucket, "uploads/new.mp4")
    result = tick(sensor_def, DagsterInstance.ephemeral(), s3, None)
    assert sorted(requested(result)) == ["uploads/new.mp4", "uploads/old.mp4"]
    assert (
        len(UploadCursor.load(result.cursor).seen) == 1
    )  # only new.mp4 is within the lookback of the newest
    assert requested(tick(sensor_def, DagsterInstance.ephemeral(), s3, result.cursor)) == []


@pytest.mark.slow  # 10k objects listed over HTTP from moto, twice: 12-18 s
def test_tick_over_ten_thousand_objects(s3, bucket):
    seed_objects(bucket, [f"uploads/batch/{i:05d}.mp4" for i in range(10_000)])
    sensor_def = make_sensor(bucket)
    instance = DagsterInstance.ephemeral()
    started = time.perf_counter()
    first = tick(sensor_def, instance, s3, None)
    first_s = time.perf_counter() - started
    put(s3.get_client(), bucket, "uploads/batch/zz-late.mp4")
    started, cpu = time.perf_counter(), time.thread_time()
    steady = tick(sensor_def, instance, s3, first.cursor)
    steady_s, steady_cpu = time.perf_counter() - started, time.thread_time() - cpu
    # The moto server runs in this process: wall time includes its own work (~2/3 of it).
    print(
        f"\n10k objects: first tick {first_s:.2f}s ({len(first.run_requests)} run requests, cursor "
        f"{len(first.cursor) / 1024:.0f} KiB); next tick {steady_s:.2f}s wall, {steady_cpu:.2f}s sensor CPU"
    )
    assert len(first.run_requests) == 10_000 and requested(steady) == ["uploads/batch/zz-late.mp4"]
    assert steady_s < 60  # a generous ceiling; the figure is printed above
