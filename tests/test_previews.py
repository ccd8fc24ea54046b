"""Pictures in the UI: preview JPEGs grabbed by real FFmpeg, stored content-addressed, served
read-only, referenced by URL in the metadata of a real Dagster run, and no part of any artifact."""

from __future__ import annotations

import hashlib
import http.client
import re
import threading
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, TableMetadataValue, instance_for_test
from pipeline_helpers import temp_project

from mpegflow_dagster.media import stills
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.previews import PreviewStore, server
from mpegflow_dagster.project import Settings
from mpegflow_dagster.runs import materialize_video
from mpegflow_dagster.stages.toolkit import MediaRejected, Tools
from mpegflow_dagster.storage import describe

MAX_BYTES = 20_000  # "a few KB": a 320x180 frame of a busy test pattern is about 6 KB
PICTURE = re.compile(r"!\[(\w+)\]\((http://[^)]+)/([0-9a-f]{64})\.jpg\)")


def jpeg_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:3] == b"\xff\xd8\xff", f"{path} is not a JPEG"
    video = probe(path, formats="image2").video
    assert video is not None
    return video.width or 0, video.height or 0


def test_a_frame_is_a_small_jpeg_never_wider_than_the_video(tmp_path, make_source):
    src = make_source("clip", duration_s=2.0, width=640, height=360)
    out = tmp_path / "frame.jpg"
    args = stills.frame_args(src, out, at_s=1.0, video_width=640)
    tools = Tools()
    assert tools.picture("frame", args, out) == out
    assert jpeg_size(out) == (320, 180) and out.stat().st_size < MAX_BYTES
    assert tools.runs == []  # display only: no run for provenance

    narrow = make_source("narrow", duration_s=2.0, width=256, height=144)
    small = tmp_path / "small.jpg"
    tools.picture("frame", stills.frame_args(narrow, small, at_s=0, video_width=256), small)
    assert jpeg_size(small) == (256, 144)


def test_a_frame_past_the_end_is_an_error_not_a_missing_picture(tmp_path, make_source):
    src = make_source("clip", duration_s=2.0, width=640, height=360)
    out = tmp_path / "frame.jpg"
    with pytest.raises(MediaRejected, match="frame: FFmpeg wrote no picture"):
        Tools().picture("frame", stills.frame_args(src, out, at_s=60, video_width=640), out)


def test_caption_moment_falls_inside_the_cue_nearest_the_middle():
    srt = (
        "1\n00:00:00,500 --> 00:00:01,500\nfirst\n\n"
        "2\n00:00:05,000 --> 00:00:06,000\nsecond\n\n"
        "3\n00:00:09,000 --> 00:00:09,800\nthird\n"
    )
    assert stills.caption_moment(srt, 10.0) == pytest.approx(5.5)
    vtt = "WEBVTT\n\n00:01.000 --> 00:03.000\nonly\n"
    assert stills.caption_moment(vtt, 10.0) == pytest.approx(2.0)
    assert stills.caption_moment("WEBVTT\n\n00:20.000 --> 00:21.000\nlate\n", 10.0) == 5.0
    assert stills.caption_moment("not captions", 8.0) == 4.0


def test_store_is_content_addressed_and_leaves_no_temporary_file(tmp_path):
    picture = tmp_path / "a.jpg"
    picture.write_bytes(b"\xff\xd8\xff picture")
    store = PreviewStore(tmp_path / "previews", "http://127.0.0.1:3001/")
    sha = hashlib.sha256(picture.read_bytes()).hexdigest()
    assert store.put(picture) == f"http://127.0.0.1:3001/{sha}.jpg"
    assert store.markdown("poster", picture) == f"![poster](http://127.0.0.1:3001/{sha}.jpg)"
    assert [p.name for p in (tmp_path / "previews").iterdir()] == [f"{sha}.jpg"]
    assert (tmp_path / "previews" / f"{sha}.jpg").read_bytes() == picture.read_bytes()


def test_settings_declare_previews_and_the_environment_overrides_them(tmp_path, monkeypatch):
    defaults = Settings().resolved(tmp_path)
    assert defaults.previews.dir == str(tmp_path / ".mpegflow" / "previews")
    assert defaults.previews.url == "http://127.0.0.1:3001"
    monkeypatch.setenv("MPEGFLOW_PREVIEWS_DIR", "pics")
    monkeypatch.setenv("MPEGFLOW_PREVIEWS_URL", "https://previews.example.test")
    changed = Settings().resolved(tmp_path)
    assert changed.previews.dir == str(tmp_path / "pics")
    assert changed.previews.url == "https://previews.example.test"


@pytest.fixture
def served(tmp_path):
    directory = tmp_path / "previews"
    directory.mkdir()
    httpd = server(directory, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield directory, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)  # sent as written: no normalization of `..`
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_server_serves_previews_and_nothing_else(served, tmp_path):
    directory, port = served
    body = b"\xff\xd8\xff a preview"
    name = f"{hashlib.sha256(body).hexdigest()}.jpg"
    (directory / name).write_bytes(body)
    (directory / "notes.txt").write_text("not a preview")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"outside")
    linked = f"{'0' * 64}.jpg"
    (directory / linked).symlink_to(secret)

    status, headers, got = request(port, f"/{name}")
    assert (status, headers["Content-Type"], got) == (200, "image/jpeg", body)
    assert "immutable" in headers["Cache-Control"]
    status, headers, got = request(port, f"/{name}?v=1", "HEAD")
    assert (status, headers["Content-Length"], got) == (200, str(len(body)), b"")
    for path in (
        "/",  # no listing
        "/notes.txt",
        f"/../{name}",
        f"/%2e%2e/{directory.name}/{name}",
        "/../../../../etc/passwd",
        f"/sub/{name}",
        f"/{name.upper()}",
        f"/{linked}",  # a link is not followed
    ):
        status, _, got = request(port, path)
        assert status == 404 and b"outside" not in got and b"not a preview" not in got, path
    assert request(port, f"/{name}", "POST")[0] == 501
    assert request(port, f"/{name}", "DELETE")[0] == 501
    assert (directory / name).read_bytes() == body


# -- in a pipeline run ------------------------------------------------------------------------


def _latest(instance, name: str, video: str):
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=[video]), limit=1
    ).records
    return record.asset_materialization.metadata


def _pictures(meta, previews: Path, url: str) -> dict[str, Path]:
    """The previews a materialization shows, checked: a URL under `url` naming a stored JPEG by
    its own sha256."""
    found = {}
    for key, value in meta.items():
        match = (
            PICTURE.fullmatch(str(value.value)) if key in ("poster", "sprite", "frame") else None
        )
        if match:
            title, base, sha = match.groups()
            assert (title, base) == (key, url)
            path = previews / f"{sha}.jpg"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
            found[key] = path
    return found


@pytest.mark.pipeline
def test_pictures_in_the_metadata_survive_reuse_and_leave_artifacts_alone(tmp_path, make_source):
    project = temp_project(tmp_path)
    spec = project.spec("vod")
    previews, url = Path(project.settings.previews.dir), project.settings.previews.url
    source = make_source("clip", duration_s=2.0, width=640, height=360, captions=True)
    renditions = [f"rendition_{r.name}" for r in spec.ladder]
    shown = {"thumbnails": {"poster", "sprite"}, "captions": {"frame"}}
    shown.update({name: {"frame"} for name in renditions})

    def runs(times: int) -> list[dict]:
        """The metadata of each run's outputs, `times` runs on a new instance."""
        found = []
        with instance_for_test() as instance:
            for _ in range(times):
                result = materialize_video(project, spec, "clip", instance=instance, source=source)
                assert result.success
                found.append({name: _latest(instance, name, "clip") for name in [*shown, "hls"]})
        return found

    made, reused = runs(2)
    for name, keys in shown.items():
        pictures = _pictures(made[name], previews, url)
        assert set(pictures) == keys, name
        for key, path in pictures.items():
            width, height = jpeg_size(path)
            assert width == (160 if key == "sprite" else 320) and height, (name, key)
            assert path.stat().st_size < MAX_BYTES
        # Display only: not among the provenance facts, no preview run in the provenance argv,
        # nothing of it inside the artifact, whose digest is the one recorded.
        prov = made[name]["provenance"].value
        assert not keys & set(prov["media"])
        assert "preview-" not in str(prov["argv"])
        artifact = Path(str(made[name]["path"].value))
        assert not [p for p in ([artifact] + list(artifact.rglob("*"))) if "preview" in p.name]
        assert describe(artifact)[0] == prov["output_sha256"] == made[name]["sha256"].value
        # Reused: the same pictures, still stored, and the same artifact.
        assert reused[name]["reused"].value is True
        assert {k: reused[name][k].value for k in keys} == {k: made[name][k].value for k in keys}
        assert set(_pictures(reused[name], previews, url)) == keys
        assert reused[name]["sha256"].value == made[name]["sha256"].value

    # The captions frame shows a caption: it differs from the uncaptioned 720p rung's frame.
    assert _pictures(made["captions"], previews, url) != _pictures(
        made["rendition_720p"], previews, url
    )
    # The packaged ladder: one row per variant, lowest bitrate first, as in the master playlist.
    master = (tmp_path / "delivery" / "clip" / "hls" / "master.m3u8").read_text()
    variants = re.findall(r"^(\w+)/index\.m3u8$", master, re.M)
    assert variants and variants[0] == "240p"
    for meta in (made["hls"], reused["hls"]):
        ladder = meta["ladder"]
        assert isinstance(ladder, TableMetadataValue)
        rows = [r.data for r in ladder.records]
        assert [r["rendition"] for r in rows] == variants
        assert rows[0]["resolution"] == "426x240" and rows[0]["codecs"].startswith("avc1.42")
        assert all(r["peak_kbps"] >= r["average_kbps"] > 0 for r in rows)
        assert "ladder" not in meta["provenance"].value["media"]

    # Encoded anew (a new instance has nothing to reuse): the same artifacts and pictures.
    [anew] = runs(1)
    for name in shown:
        assert anew[name]["reused"].value is False
        assert anew[name]["sha256"].value == made[name]["sha256"].value
        assert {k: anew[name][k].value for k in shown[name]} == {
            k: made[name][k].value for k in shown[name]
        }
