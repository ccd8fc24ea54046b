"""Which renditions the HLS package holds: none above the source unless asked for, one per resolution."""

import re

import pytest
from dagster import AssetKey, AssetRecordsFilter, instance_for_test
from pipeline_helpers import project_with

from mpegflow_dagster.media.variants import Candidate, choose_variants
from mpegflow_dagster.runs import materialize_video

SOURCE = {"duration_s": 3.0, "width": 640, "height": 360}


def rung(name: str, height: int, kbps: int) -> dict:
    return {"name": name, "height": height, "video_bitrate_kbps": kbps, "audio_bitrate_kbps": 64}


LADDER = [rung("180p", 180, 300), rung("360p", 360, 700), rung("480p", 480, 1000)]
LADDER += [rung("720p", 720, 1500)]


def test_rungs_above_the_source_are_left_out_and_the_lowest_stays_if_all_are():
    rungs = [Candidate("240p", 320, 240, 400_000, 240), Candidate("480p", 320, 240, 900_000, 480)]
    kept, dropped = choose_variants(rungs, source_height=240, keep_above_source=False)
    assert [c.name for c in kept] == ["240p"]
    assert dropped == {"480p": "above the source's 240p"}
    kept, dropped = choose_variants(rungs[1:], source_height=240, keep_above_source=False)
    assert [c.name for c in kept] == ["480p"] and dropped == {}  # never an empty package


def test_one_variant_per_resolution_the_rung_at_its_own_height_first():
    clamped = Candidate("1080p", 1280, 720, 5_000_000, 1080)  # encoded at the source's height
    own = Candidate("720p", 1280, 720, 2_800_000, 720)
    mine = Candidate("watermarked", 640, 360, 600_000)  # hls.include: at its own height
    louder = Candidate("360p", 640, 360, 900_000, 360)
    kept, dropped = choose_variants([own, clamped, mine, louder], 720, keep_above_source=True)
    assert [c.name for c in kept] == ["720p", "360p"]
    assert dropped == {
        "1080p": "same resolution as 720p (1280x720)",
        "watermarked": "same resolution as 360p (640x360)",  # both at their own height: bitrate
    }


def materialized(instance, key: str) -> dict:
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["vod", key]), asset_partitions=["clip"]), limit=1
    ).records
    assert record.asset_materialization is not None
    return record.asset_materialization.metadata


def package(tmp_path, make_source, ladder: list[dict], **spec_changes) -> dict:
    """Run the pipeline on the 640x360 source; the master playlist's variants and what was said."""
    changes = {"ladder": ladder, "captions": {"enabled": False}, **spec_changes}
    project = project_with(tmp_path, changes)
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "clip", instance=instance, source=make_source(**SOURCE)
        )
        assert result.success
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
        meta = materialized(instance, "hls")
        renditions = {r["name"]: materialized(instance, f"rendition_{r['name']}") for r in ladder}
    master = (tmp_path / "delivery" / "clip" / "hls" / "master.m3u8").read_text()
    variants = {
        uri.split("/")[0]: re.search(r"RESOLUTION=(\d+x\d+)", attrs).group(1)
        for attrs, uri in re.findall(r"#EXT-X-STREAM-INF:(.*)\n(.*)", master)
    }
    assert len(set(variants.values())) == len(variants), master  # never two of one resolution
    return {"variants": variants, "meta": meta, "logs": logs, "renditions": renditions}


@pytest.mark.pipeline
def test_a_source_below_the_top_rungs_packages_only_what_it_can_fill(tmp_path, make_source):
    run = package(tmp_path, make_source, LADDER)
    assert run["variants"] == {"180p": "320x180", "360p": "640x360"}
    said = "480p: above the source's 360p; 720p: above the source's 360p"
    assert run["meta"]["dropped"].value == said
    assert run["meta"]["provenance"].value["media"]["dropped"] == said
    assert run["meta"]["variants"].value == 2
    assert any(f"left out of the package: {said}" in m for m in run["logs"]), run["logs"]
    # The renditions stay as they are (made at the source's height), only the package leaves them out.
    assert run["renditions"]["720p"]["resolution"].value == "640x360"
    assert not (tmp_path / "delivery" / "clip" / "hls" / "720p").exists()


@pytest.mark.pipeline
def test_kept_and_upscaled_rungs_are_packaged_at_their_heights(tmp_path, make_source):
    run = package(tmp_path, make_source, LADDER, upscale=True, hls={"above_source": "keep"})
    assert run["variants"] == {
        "180p": "320x180",
        "360p": "640x360",
        "480p": "854x480",
        "720p": "1280x720",
    }
    assert run["meta"]["dropped"].value == "none"


@pytest.mark.pipeline
def test_kept_rungs_at_the_source_height_never_duplicate_a_resolution(tmp_path, make_source):
    ladder = [*LADDER[:2], rung("360p_hi", 360, 1400), LADDER[3]]
    run = package(tmp_path, make_source, ladder, hls={"above_source": "keep"})
    assert run["variants"] == {"180p": "320x180", "360p_hi": "640x360"}
    assert run["meta"]["dropped"].value == (
        "360p: same resolution as 360p_hi (640x360); 720p: same resolution as 360p_hi (640x360)"
    )
