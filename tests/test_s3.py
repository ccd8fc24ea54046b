"""S3 artifact store, IO manager and delivery against a real (moto) S3 server over HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import pytest
from boto3.s3.transfer import TransferConfig
from dagster import AssetIn, DagsterInstance, StaticPartitionsDefinition, asset, materialize
from s3_server import bucket, list_keys, moto_endpoint, s3  # noqa: F401  (fixtures)

from mpegflow_dagster.s3.io_manager import S3BinaryIOManager
from mpegflow_dagster.s3.resources import S3DeliveryResource
from mpegflow_dagster.s3.store import (
    DeliveryHeaders,
    S3ArtifactStore,
    download_source,
    parse_s3_uri,
)
from mpegflow_dagster.storage import describe, sha256_file

SMALL_PARTS = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)


def record_calls(client, operation: str) -> list[dict]:
    """Params of every `operation` request the client sends (botocore event hook, no mocking)."""
    calls: list[dict] = []
    client.meta.events.register(
        f"before-parameter-build.s3.{operation}", lambda params, **_: calls.append(params)
    )
    return calls


def hls_tree(root: Path, segments: int = 3) -> Path:
    (root / "v720").mkdir(parents=True)
    for i in range(segments):
        (root / "v720" / f"seg_{i:03d}.ts").write_bytes(bytes([i]) * 1000)
    (root / "v720" / "index.m3u8").write_text("#EXTM3U\n")
    (root / "master.m3u8").write_text("#EXTM3U\nv720/index.m3u8\n")
    (root / "poster.jpg").write_bytes(b"\xff\xd8jpeg")
    (root / "storyboard.vtt").write_text("WEBVTT\n")
    return root


def test_publish_large_file_streams_multipart_and_hashes(s3, bucket, tmp_path):
    client = s3.get_client()
    store = S3ArtifactStore(client, bucket, "art", tmp_path / "cache", transfer=SMALL_PARTS)
    src = tmp_path / "source.mp4"
    with open(src, "wb") as fh:
        for i in range(12):
            fh.write(bytes([i]) * (1 << 20))
    parts = record_calls(client, "UploadPart")
    copies = record_calls(client, "UploadPartCopy") + record_calls(client, "CopyObject")
    record = store.publish(src, PurePosixPath("video/ingest/source.mp4"))
    assert record.uri == f"s3://{bucket}/art/video/ingest/source.mp4"
    assert (record.sha256, record.size_bytes, record.files, record.is_dir) == (
        sha256_file(src),
        12 << 20,
        1,
        False,
    )
    assert len(parts) == 3  # 12 MiB in 5 MiB parts: never read whole
    assert copies == []  # one object is whole or absent in S3: uploaded to its key, no copy
    assert {p["Key"] for p in parts} == {"art/video/ingest/source.mp4"}
    assert list_keys(client, bucket) == ["art/video/ingest/source.mp4"]  # no staging object left
    assert src.exists()
    cached = store.local_path(PurePosixPath("video/ingest/source.mp4"))
    assert sha256_file(cached) == record.sha256 and cached.is_relative_to(tmp_path / "cache")
    assert store.exists(PurePosixPath("video/ingest/source.mp4"))
    assert store.exists(PurePosixPath("video/ingest"))  # a folder holding an artifact
    assert not store.exists(PurePosixPath("video/other"))


def test_delivery_sets_types_and_cache_control_and_writes_playlists_last(s3, bucket, tmp_path):
    delivery = S3DeliveryResource(
        s3=s3, bucket=bucket, prefix="cdn", cache_dir=str(tmp_path / "cache")
    )
    store = delivery.store()
    puts = record_calls(store.client, "PutObject")
    copies = record_calls(store.client, "CopyObject")
    tree = hls_tree(tmp_path / "hls")
    record = store.publish(tree, PurePosixPath("vid1/hls"))

    assert record.is_dir and record.files == 7 and record.uri == f"s3://{bucket}/cdn/vid1/hls"
    assert (record.sha256, record.size_bytes) == describe(tree)[:2]

    def in_order(calls: list[dict]) -> None:
        order = [PurePosixPath(c["Key"]).suffix for c in calls]
        assert len(order) == 7, order
        assert sorted(order[-3:]) == [".m3u8", ".m3u8", ".vtt"], order
        assert set(order[:-3]) == {".ts", ".jpg"}, order

    in_order(puts)  # a new tree goes straight to its keys, media first
    assert copies == [] and all("/.staging/" not in p["Key"] for p in puts)
    store.publish(tree, PurePosixPath("vid1/hls"))
    in_order(copies)  # replacing one: staged, then copied into place, media first
    client = s3.get_client()
    assert list_keys(client, bucket) == sorted(
        f"cdn/vid1/hls/{p.relative_to(tree).as_posix()}" for p in tree.rglob("*") if p.is_file()
    )
    expected = {
        "master.m3u8": ("application/vnd.apple.mpegurl", "public, max-age=10"),
        "v720/seg_000.ts": ("video/mp2t", "public, max-age=31536000, immutable"),
        "poster.jpg": ("image/jpeg", "public, max-age=31536000, immutable"),
        "storyboard.vtt": ("text/vtt", "public, max-age=10"),
    }
    for rel, (content_type, cache_control) in expected.items():
        head = client.head_object(Bucket=bucket, Key=f"cdn/vid1/hls/{rel}")
        assert (head["ContentType"], head["CacheControl"]) == (content_type, cache_control), rel


def test_republish_replaces_the_tree_and_the_cache_follows(s3, bucket, tmp_path):
    client = s3.get_client()
    store = S3ArtifactStore(client, bucket, "", tmp_path / "cache")
    store.publish(hls_tree(tmp_path / "one", segments=3), PurePosixPath("v/hls"))
    first = store.local_path(PurePosixPath("v/hls"))
    assert len([p for p in first.rglob("*") if p.is_file()]) == 7

    gets = record_calls(client, "GetObject")
    assert (
        store.local_path(PurePosixPath("v/hls")) == first and gets == []
    )  # cached: same ETag and size

    second = hls_tree(tmp_path / "two", segments=1)
    (second / "master.m3u8").write_text("#EXTM3U\nchanged\n")
    store.publish(second, PurePosixPath("v/hls"))
    assert list_keys(client, bucket, "v/hls/v720/") == [
        "v/hls/v720/index.m3u8",
        "v/hls/v720/seg_000.ts",
    ]
    again = store.local_path(PurePosixPath("v/hls"))
    assert describe(again) == describe(
        second
    )  # stale seg_001/002 pruned from the cache, master refreshed
    assert sorted(g["Key"] for g in gets) == ["v/hls/master.m3u8"]


@pytest.mark.parametrize("failing", ["PutObject", "CopyObject"])
def test_failure_mid_publish_leaves_no_new_final_and_no_staging_object(
    s3, bucket, tmp_path, failing
):
    """PutObject: a new tree, uploaded straight to its keys. CopyObject: a tree replacing one,
    copied from staging into place."""
    client = s3.get_client()
    store = S3ArtifactStore(client, bucket, "art", tmp_path / "cache")
    if failing == "CopyObject":
        store.publish(hls_tree(tmp_path / "before"), PurePosixPath("v/hls"))
    before = list_keys(client, bucket)
    calls = []

    def fail_third(params, **_):
        calls.append(params["Key"])
        if len(calls) == 3:
            raise ConnectionError(f"injected failure of {failing} {params['Key']}")

    client.meta.events.register(f"before-parameter-build.s3.{failing}", fail_third)
    with pytest.raises(ConnectionError, match="injected"):
        store.publish(hls_tree(tmp_path / "hls"), PurePosixPath("v/hls"))
    assert len(calls) >= 3
    assert list_keys(client, bucket) == before


def test_a_file_whose_upload_fails_midway_keeps_the_bytes_published_before(s3, bucket, tmp_path):
    client = s3.get_client()
    store = S3ArtifactStore(client, bucket, "art", tmp_path / "cache", transfer=SMALL_PARTS)
    key = PurePosixPath("video/rendition_720p/720p.mp4")
    first = tmp_path / "first.mp4"
    first.write_bytes(b"first" * 1000)
    store.publish(first, key)
    second = tmp_path / "second.mp4"
    second.write_bytes(b"\x01" * (12 << 20))  # three parts
    parts = []

    def fail_third(params, **_):
        parts.append(params["PartNumber"])
        if len(parts) == 3:
            raise ConnectionError("injected failure of the third part")

    client.meta.events.register("before-parameter-build.s3.UploadPart", fail_third)
    with pytest.raises(ConnectionError, match="injected"):
        store.publish(second, key)
    assert list_keys(client, bucket) == [f"art/{key}"]
    body = client.get_object(Bucket=bucket, Key=f"art/{key}")["Body"].read()
    assert body == first.read_bytes()  # never half of the new one
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted


def test_publish_to_a_missing_bucket_raises_and_leaves_nothing(s3, bucket, tmp_path):
    client = s3.get_client()
    store = S3ArtifactStore(client, bucket + "-missing", "art", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="does not exist: create it"):
        store.publish(hls_tree(tmp_path / "hls"), PurePosixPath("v/hls"))
    with pytest.raises(FileNotFoundError, match="materialize the upstream asset"):
        S3ArtifactStore(client, bucket, "art", tmp_path / "cache").local_path(
            PurePosixPath("v/hls")
        )
    with pytest.raises(ValueError, match="'..'"):
        store.publish(tmp_path / "hls", PurePosixPath("../escape"))


def test_io_manager_round_trip_through_dagster(s3, bucket, tmp_path):
    payload = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
    partitions = StaticPartitionsDefinition(["clip-a"])

    @asset(partitions_def=partitions)
    def encoded() -> Path:
        out = tmp_path / "work" / "encoded.bin"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(payload)
        return out

    @asset(partitions_def=partitions, ins={"encoded": AssetIn()})
    def checked(encoded: Path) -> Path:
        assert isinstance(encoded, Path) and encoded.name == "encoded.bin"
        assert encoded.read_bytes() == payload
        out = tmp_path / "work" / "checked.txt"
        out.write_text(str(encoded))
        return out

    io_manager = S3BinaryIOManager(
        s3=s3, bucket=bucket, prefix="store", cache_dir=str(tmp_path / "cache")
    )
    result = materialize(
        [encoded, checked],
        partition_key="clip-a",
        instance=DagsterInstance.ephemeral(),
        resources={"io_manager": io_manager},
    )
    assert result.success
    keys = list_keys(s3.get_client(), bucket)
    assert keys == ["store/checked/clip-a/checked.txt", "store/encoded/clip-a/encoded.bin"]
    meta = result.asset_materializations_for_node("encoded")[0].metadata
    assert meta["sha256"].value == hashlib.sha256(payload).hexdigest()
    assert meta["path"].value == f"s3://{bucket}/store/encoded/clip-a/encoded.bin"
    input_path = Path(
        s3.get_client().get_object(Bucket=bucket, Key=keys[0])["Body"].read().decode()
    )
    assert input_path.is_relative_to(
        tmp_path / "cache"
    )  # the downstream asset read a cached download


def test_download_source_streams_the_video_and_its_sidecars(s3, bucket, tmp_path):
    client = s3.get_client()
    client.put_object(Bucket=bucket, Key="in/../Ma Vidéo.MP4", Body=b"video-bytes")
    client.put_object(
        Bucket=bucket, Key="in/../Ma Vidéo.srt", Body=b"1\n00:00:00,000 --> 00:00:01,000\nhi\n"
    )
    for name in ("Ma Vidéo.fr.srt", "Ma Vidéo.pt-BR.vtt", "Ma Vidéo.final.mp4", "Ma Vidéo.x.srt"):
        client.put_object(Bucket=bucket, Key=f"in/../{name}", Body=name.encode())
    client.put_object(Bucket=bucket, Key="in/plain.mov", Body=b"mov")

    path = download_source(client, f"s3://{bucket}/in/../Ma Vidéo.MP4", tmp_path / "dl")
    assert (
        path.parent == tmp_path / "dl"
        and path.suffix == ".mp4"
        and path.read_bytes() == b"video-bytes"
    )
    assert path.with_suffix(".srt").read_bytes().startswith(b"1\n")
    # the language-tagged sidecars too, by the source's local stem (`stages.ingest` finds them)
    beside = {p.name for p in path.parent.iterdir()} - {path.name, path.with_suffix(".srt").name}
    assert beside == {f"{path.stem}.fr.srt", f"{path.stem}.pt-BR.vtt"}
    assert path.with_name(f"{path.stem}.fr.srt").read_bytes() == "Ma Vidéo.fr.srt".encode()
    plain = download_source(client, f"s3://{bucket}/in/plain.mov", tmp_path / "dl")
    assert plain.name == "plain.mov" and not plain.with_suffix(".srt").exists()
    with pytest.raises(FileNotFoundError, match="no object at"):
        download_source(client, f"s3://{bucket}/in/gone.mp4", tmp_path / "dl")
    with pytest.raises(ValueError, match="s3://<bucket>/<key>"):
        parse_s3_uri("/local/file.mp4")


def test_a_new_kind_of_output_gets_its_content_type_without_a_table_entry():
    """A stage of a new kind (e.g. DASH) needs no change here: Python's registry names its types,
    and whatever is not media is cached briefly and uploaded after the media it lists."""
    headers = DeliveryHeaders()
    assert headers("v/dash/manifest.mpd") == {
        "ContentType": "application/dash+xml",
        "CacheControl": headers.playlist_cache_control,
    }
    assert headers("v/dash/audio/seg-1.m4s")["CacheControl"] == headers.segment_cache_control
    assert headers("v/hls/720p/seg-1.ts")["ContentType"] == "video/mp2t"  # not Qt Linguist's .ts
    assert headers("v/thing.unknownext")["ContentType"] == "application/octet-stream"
