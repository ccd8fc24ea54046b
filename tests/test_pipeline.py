"""The whole graph through Dagster on real FFmpeg: a 1080p clip with audio and captions in, a
playable HLS ladder, thumbnails and a captioned rendition out."""

import json
import math
import re

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, instance_for_test
from pipeline_helpers import decode_errors, gray_crop, mean_abs_diff, project_with, temp_project

from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.media.quality import keyframe_times
from mpegflow_dagster.runs import materialize_video, stage_report
from mpegflow_dagster.storage import describe

pytestmark = pytest.mark.pipeline  # every test reads or makes runs of the whole graph

DURATION = 6.0


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def run(instance, make_source, tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    project = temp_project(base)
    spec = project.spec("vod")
    source = make_source(
        "clip", duration_s=DURATION, width=1920, height=1080, fps=30, captions=True
    )
    result = materialize_video(project, spec, "clip", instance=instance, source=source)
    return {
        "project": project,
        "spec": spec,
        "result": result,
        "report": stage_report(result.all_events, spec),
        "delivery": base / "delivery" / "clip",
        "base": base,
    }


def test_every_stage_materializes(run):
    assert run["result"].success
    assert {name: s["status"] for name, s in run["report"].items()} == {
        name: "materialized" for name in run["report"]
    }


def test_master_playlist_lists_each_rendition_with_honest_attributes(run):
    master = (run["delivery"] / "hls" / "master.m3u8").read_text()
    variants = re.findall(r"#EXT-X-STREAM-INF:(.*)\n(.*)", master)
    assert [uri for _, uri in variants] == [
        f"{r}/index.m3u8" for r in ("240p", "480p", "720p", "1080p")
    ]
    for attrs, uri in variants:
        height = int(uri.split("p/")[0])
        mp4 = next(
            (run["base"] / "storage" / "vod" / f"rendition_{height}p" / "clip").glob("*.mp4")
        )
        info = probe(mp4)
        assert f"RESOLUTION={info.video.width}x{height}" in attrs
        assert re.search(r'CODECS="avc1\.[0-9a-f]{6},mp4a\.40\.2"', attrs)
        bandwidth = int(re.search(r"BANDWIDTH=(\d+)", attrs).group(1))
        average = int(re.search(r"AVERAGE-BANDWIDTH=(\d+)", attrs).group(1))
        assert bandwidth >= average > 0
    assert "avc1.42" in variants[0][0]  # 240p is baseline profile


def test_all_segments_decode_and_keyframes_align(run):
    hls = run["delivery"] / "hls"
    segments = sorted(hls.glob("*/seg_*.ts"))
    assert len(segments) == 4 * math.ceil(DURATION / run["spec"].hls.segment_s)
    for seg in segments:
        assert decode_errors(seg) == "", seg
    keyframes = {
        r: keyframe_times(
            next((run["base"] / "storage" / "vod" / f"rendition_{r}" / "clip").glob("*.mp4"))
        )
        for r in ("240p", "480p", "720p", "1080p")
    }
    expected = [
        round(t * run["spec"].gop_s, 3) for t in range(math.ceil(DURATION / run["spec"].gop_s))
    ]
    for rung, times in keyframes.items():
        assert times == pytest.approx(expected, abs=0.04), rung


def test_thumbnails_sprite_and_storyboard(run):
    thumbs = run["delivery"] / "thumbnails"
    cfg = run["spec"].thumbnails
    frames = sorted((thumbs / "frames").glob("*.jpg"))
    count = math.ceil(DURATION / cfg.interval_s)
    assert len(frames) == count
    assert probe(frames[0], formats="image2").video.width == cfg.width
    sprite = probe(thumbs / "sprite.jpg", formats="image2").video
    tile_h = 90  # 160 wide at 16:9
    assert (sprite.width, sprite.height) == (
        min(count, cfg.sprite_columns) * cfg.sprite_tile_width,
        math.ceil(count / cfg.sprite_columns) * tile_h,
    )
    vtt = (thumbs / "storyboard.vtt").read_text()
    assert vtt.startswith("WEBVTT") and vtt.count("sprite.jpg#xywh=") == count
    assert f"sprite.jpg#xywh=160,0,160,{tile_h}" in vtt


def test_captions_are_burned_in(run):
    captioned = run["delivery"] / "captioned.mp4"
    plain = next((run["base"] / "storage" / "vod" / "rendition_720p" / "clip").glob("*.mp4"))
    bottom, top = "1280:120:0:600", "1280:120:0:200"
    assert mean_abs_diff(gray_crop(captioned, 1.5, bottom), gray_crop(plain, 1.5, bottom)) > 8
    assert mean_abs_diff(gray_crop(captioned, 1.5, top), gray_crop(plain, 1.5, top)) < 4


def test_metadata_is_queryable_from_the_instance(run, instance):
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey(["vod", "rendition_720p"]), asset_partitions=["clip"]
        ),
        limit=1,
    ).records
    meta = records[0].asset_materialization.metadata
    assert meta["resolution"].value == "1280x720"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"].value)
    assert meta["ffmpeg_version"].value and meta["preset"].value == "x264-vod@1"
    assert meta["path"].value.endswith("720p.mp4") and meta["size_bytes"].value > 0
    assert any("libx264" in argv for argv in meta["ffmpeg_argv"].value)
    assert 2000 < meta["bitrate_kbps"].value < 4500


def test_published_parts_carry_the_hash_of_what_was_delivered(run, instance):
    manifest = json.loads(
        next((run["base"] / "storage" / "vod" / "emit" / "clip").glob("*.json")).read_text()
    )
    for part in ("hls", "thumbnails"):
        record = manifest["parts"][part]
        assert (record["sha256"], record["size_bytes"], record["files"]) == describe(
            run["delivery"] / part
        )
        stored = (
            instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(["vod", part]), asset_partitions=["clip"]),
                limit=1,
            )
            .records[0]
            .asset_materialization.metadata
        )
        assert (
            record["sha256"] == stored["sha256"].value
        )  # the delivered tree is the stored one, byte for byte


def test_rematerializing_one_rendition_runs_only_that_step(run, instance):
    project, spec = run["project"], run["spec"]
    result = materialize_video(project, spec, "clip", instance=instance, stages=["rendition_480p"])
    started = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
    assert started == {"vod__encode"}  # the shared encode step, asked for one output
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [
        AssetKey(["vod", "rendition_480p"])
    ]


def test_probe_alone_runs_in_ingests_step_and_reuses_both(run, instance):
    result = materialize_video(
        run["project"], run["spec"], "clip", instance=instance, stages=["probe"]
    )
    started = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
    assert result.success and started == {"vod__ingest"}  # ingest and probe share one step
    metadata = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert set(metadata) == {"ingest", "probe"}
    assert all(
        m["reused"].value for m in metadata.values()
    )  # same source, same recipe: no copy, no ffprobe


def test_no_sidecar_skips_captions_cleanly(instance, make_source, tmp_path):
    project = temp_project(tmp_path)
    spec = project.spec("vod")
    source = make_source("nocap", duration_s=2.0, captions=False)
    result = materialize_video(project, spec, "nocap", instance=instance, source=source)
    report = stage_report(result.all_events, spec)
    assert result.success
    assert report["captions"]["status"] == "skipped"
    assert report["emit_captions"]["status"] == "skipped"
    assert report["emit"]["status"] == "materialized"
    assert (tmp_path / "delivery" / "nocap" / "hls" / "master.m3u8").exists()
    assert not (tmp_path / "delivery" / "nocap" / "captioned.mp4").exists()


def test_bad_input_fails_clearly_and_publishes_nothing(instance, tmp_path):
    project = temp_project(tmp_path)
    spec = project.spec("vod")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 4096)
    result = materialize_video(project, spec, "junk", instance=instance, source=junk)
    report = stage_report(result.all_events, spec)
    assert not result.success
    assert report["probe"]["status"] == "failed" and "junk" in report["probe"]["reason"]
    # The probe, not its step-sibling ingest, failed: the stored copy stands, nothing uses it.
    assert report["ingest"]["status"] == "materialized"
    assert (tmp_path / "storage" / "vod" / "ingest" / "junk" / "ingest").is_dir()
    assert not (tmp_path / "storage" / "vod" / "probe").exists()
    assert report["rendition_720p"]["status"] == "not_run"
    assert not (tmp_path / "delivery" / "junk").exists()
    assert list((tmp_path / "work").iterdir()) == []  # no scratch left behind
    assert junk.read_bytes().startswith(b"\x00garbage")  # the input is untouched
    again = stage_report(
        materialize_video(project, spec, "junk", instance=instance, source=junk).all_events, spec
    )
    assert again["ingest"]["status"] == "materialized"
    assert (
        again["probe"]["status"] == "failed"
        and again["probe"]["reason_code"] == report["probe"]["reason_code"]
    )


def test_disabled_thumbnails_and_captions_build_no_assets_and_threads_0_is_not_bit_exact(
    tmp_path, make_source
):
    """Config means what it says: `enabled: false` removes the stage (a caption rung that is not
    in the ladder is then no error), and provenance says whether the bytes are reproducible."""
    project = project_with(
        tmp_path,
        {
            "thumbnails": {"enabled": False},
            "captions": {"enabled": False, "rendition": "no-such-rung"},
        },
        threads=0,
    )
    spec = project.spec()
    keys = {k.path[-1] for a in project.assets(spec) for k in a.keys}
    assert not keys & {"thumbnails", "captions", "emit_captions"} and {"hls", "emit"} <= keys
    source = make_source("plain", duration_s=2.0, width=320, height=240, captions=True)
    with instance_for_test() as instance:
        result = materialize_video(project, spec, "plain", instance=instance, source=source)
        assert result.success
        rec = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(["vod", "rendition_240p"])), limit=1
        )
        assert (
            rec.records[0].asset_materialization.metadata["provenance"].value["bit_exact"] is False
        )
    assert sorted(p.name for p in (tmp_path / "delivery" / "plain").iterdir()) == ["hls"]
