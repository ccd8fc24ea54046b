import hashlib
import os
import threading
from pathlib import PurePosixPath

import pytest

from mpegflow_dagster import storage
from mpegflow_dagster.storage import (
    LocalArtifactStore,
    SourceChanged,
    copy_hashing,
    describe,
    release_scratch,
    scratch_dir,
    sha256_file,
)


def test_publish_file_moves_hashes_and_replaces(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 3_000_000)
    expected = sha256_file(src)
    record = store.publish(src, PurePosixPath("k/a.bin"))
    assert record.sha256 == expected and record.size_bytes == 3_000_000 and not src.exists()
    src.write_bytes(b"new")
    record2 = store.publish(src, PurePosixPath("k/a.bin"))
    assert store.local_path(PurePosixPath("k/a.bin")).read_bytes() == b"new"
    assert record2.sha256 != expected
    assert [p.name for p in (tmp_path / "store" / "k").iterdir()] == [
        "a.bin"
    ]  # no staging leftovers


def test_copy_hashing_copies_every_byte_and_returns_its_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(
        storage, "COPY_CHUNK", 65_537
    )  # many kernel copy calls, the last one partial
    data = os.urandom(1_000_003)
    (tmp_path / "src.bin").write_bytes(data)
    digest = copy_hashing(tmp_path / "src.bin", tmp_path / "dest.bin")
    assert (tmp_path / "dest.bin").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_copy_hashing_refuses_a_source_still_being_written(tmp_path):
    src = tmp_path / "growing.bin"
    src.write_bytes(os.urandom(32 << 20))
    stop = threading.Event()

    def append() -> None:  # like an upload still in progress
        with open(src, "ab") as fh:
            while not stop.is_set():
                fh.write(b"x" * 4096)
                fh.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        with pytest.raises(SourceChanged, match="changed while it was being copied"):
            copy_hashing(src, tmp_path / "dest.bin")
    finally:
        stop.set()
        writer.join()


def test_publish_directory_replaces_whole_tree(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    for version in ("one", "two"):
        tree = tmp_path / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / f"{version}.txt").write_text(version)
        record = store.publish(tree, PurePosixPath("k/tree"))
        assert record.is_dir and record.files == 1
    published = store.local_path(PurePosixPath("k/tree"))
    assert [p.name for p in published.rglob("*.txt")] == ["two.txt"]
    assert describe(published)[0] == record.sha256


def test_keys_cannot_escape_the_root(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(ValueError, match="escapes"):
        store.local_path(PurePosixPath("../outside"))
    with pytest.raises(FileNotFoundError, match="materialize the upstream asset"):
        store.local_path(PurePosixPath("never/written"))


def test_scratch_is_removed_on_failure_and_released_after_publish(tmp_path):
    with pytest.raises(RuntimeError):
        with scratch_dir(tmp_path, "stage", "../../video") as work:
            (work / "partial.mp4").write_bytes(b"half")
            raise RuntimeError("encode failed")
    assert not work.exists() and work.parent == tmp_path.resolve()
    with scratch_dir(tmp_path, "stage") as work:
        (work / "out.mp4").write_bytes(b"done")
    LocalArtifactStore(tmp_path / "store").publish(work / "out.mp4", PurePosixPath("x/out.mp4"))
    release_scratch(work / "out.mp4")
    assert not work.exists()


def test_jsonl_events_are_written_once_per_id(tmp_path):
    """An id names the fact (type, pipeline, video, subject, version), not the run that found it:
    a re-send from another run is dropped, a new version of the fact is written."""
    from mpegflow_dagster.events import Event, JsonlEventSink

    sink = JsonlEventSink(tmp_path / "events.jsonl")

    def failed(run_id: str, version: str) -> Event:
        return Event(
            type="rendition.failed",
            pipeline="vod",
            video="v",
            run_id=run_id,
            subject="480p",
            message="m",
            version=version,
        )

    first = failed("r1", "recipe-a:permanent:input.invalid_data")
    for run_id in ("r1", "r1", "r2"):
        sink.send(failed(run_id, first.version))
    sink.send(failed("r3", "recipe-b:permanent:input.invalid_data"))
    assert [e["run_id"] for e in sink.read()] == ["r1", "r3"]
    assert sink.read()[0]["id"] == first.id


@pytest.mark.parametrize("own_download", [False, True])
def test_ingest_copies_a_users_file_and_moves_only_its_own_download(tmp_path, own_download):
    from mpegflow_dagster.stages import ingest

    source = tmp_path / "in" / "Clip.MP4"
    source.parent.mkdir()
    data = os.urandom(2_000_001)
    source.write_bytes(data)
    source.with_suffix(".srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n")
    work = tmp_path / "work"
    work.mkdir()
    out = ingest.ingest(
        source, work, (".srt",), origin="s3://bucket/Clip.MP4" if own_download else None
    )
    stored = ingest.source_file(out.path)
    assert stored.read_bytes() == data and stored.name == "source.mp4"
    assert out.facts["source_sha256"] == out.hashed[stored] == hashlib.sha256(data).hexdigest()
    assert ingest.captions_file(out.path).read_text().endswith("hi\n")
    # a user's file is never touched; our own download is moved, not copied a second time
    assert source.exists() == (not own_download) and source.with_suffix(".srt").exists() == (
        not own_download
    )
