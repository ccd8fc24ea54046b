"""The shared store of chunk pieces (chunk_steps), on local disk and on a real (moto) S3 server:
what a failed run left there and no run came back for is collected; nothing else is."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

import pytest
from s3_server import bucket, moto_endpoint, s3  # noqa: F401  (fixtures)

from mpegflow_dagster.chunk_store import ChunkStore, local_chunks
from mpegflow_dagster.media.runner import RunResult
from mpegflow_dagster.s3.store import S3ArtifactStore
from mpegflow_dagster.storage import ArtifactStore, LocalArtifactStore


def make_piece(into: Path) -> RunResult:
    (into / "chunk.mp4").write_bytes(b"\x00" * 1000)
    return RunResult(argv=["ffmpeg"], returncode=0, stderr_tail="", wall_s=1.0, cpu_s=1.0)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "storage")
    client = request.getfixturevalue("s3").get_client()
    return S3ArtifactStore(client, request.getfixturevalue("bucket"), "art", tmp_path / "cache")


def test_pieces_nobody_wrote_for_a_while_are_collected_and_fresh_ones_kept(
    store: ArtifactStore, tmp_path: Path
) -> None:
    chunks = ChunkStore(store, tmp_path / "scratch", prefix=".chunks")
    chunks.ensure("failed-run-piece", make_piece)
    cut_short = tmp_path / "cut-short"  # published, but its worker died before the record
    cut_short.mkdir()
    make_piece(cut_short)
    store.publish(cut_short, PurePosixPath(".chunks/cut-short-piece"))
    time.sleep(2.5)  # S3's LastModified has whole seconds
    chunks.ensure("running-piece", make_piece)
    assert set(store.entries(PurePosixPath(".chunks"))) == {
        "failed-run-piece",
        "failed-run-piece.json",
        "cut-short-piece",
        "running-piece",
        "running-piece.json",
    }

    assert chunks.collect_stale(max_age_s=1.5) == 2
    assert set(store.entries(PurePosixPath(".chunks"))) == {"running-piece", "running-piece.json"}
    assert chunks.get("failed-run-piece") is None
    found = chunks.get("running-piece")
    assert found is not None and (found[0] / "chunk.mp4").stat().st_size == 1000
    assert chunks.collect_stale() == 0  # the default (a day) keeps what is a few seconds old


def test_a_store_without_pieces_has_nothing_to_collect(
    store: ArtifactStore, tmp_path: Path
) -> None:
    assert ChunkStore(store, tmp_path / "scratch", prefix=".chunks").collect_stale(0) == 0


def test_the_local_chunk_cache_is_collected_the_same_way(tmp_path: Path) -> None:
    """This machine's cache of pieces (the store's root itself, no prefix), collected when each
    run's FFmpeg resource starts."""
    chunks = local_chunks(tmp_path)
    chunks.ensure("old", make_piece)
    time.sleep(1.2)
    chunks.ensure("new", make_piece)
    assert chunks.collect_stale(max_age_s=1.0) == 1
    assert chunks.get("old") is None and chunks.get("new") is not None
