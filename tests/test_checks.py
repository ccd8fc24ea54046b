"""The checks' judgement without FFmpeg: floors per ladder and per rung, block or warn, Dagster's
`blocking` where a refusal stops packaging, reasons and descriptions, and a threshold that is no
part of a rendition's code version."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey

from mpegflow_dagster import qc
from mpegflow_dagster.assets import build_video_assets
from mpegflow_dagster.checks import ChecksFailed, judge
from mpegflow_dagster.project import Project

ROOT = Path(__file__).resolve().parents[1]
KEY = AssetKey(["vod", "rendition_720p"])
SCORES = {
    "psnr": 31.0,
    "ssim": 0.95,
    "vmaf": 42.0,
    "frames": 13,
    "every_nth_frame": 7,
    "binary_version": "ffmpeg version n9.0.2",
}


def spec_with(**changes):
    spec = Project.load(ROOT).spec()
    return spec.model_validate({**spec.model_dump(), **changes})


def checks_of(spec, rung: str):
    return {c.name: c for c in qc.rendition_checks(spec, spec.rendition(rung))}


def test_a_score_under_its_floor_refuses_the_rendition_with_the_figure():
    spec = spec_with()
    [verdict] = judge([checks_of(spec, "720p")["quality"]], {qc.QUALITY: SCORES})
    assert verdict.refuses and verdict.outcome.reason == "quality.vmaf_below_threshold"
    assert verdict.outcome.description.startswith("VMAF 42 < 50 (vmaf_min)")
    assert (
        "13 frames (every 7th of every GOP), scored by ffmpeg version n9.0.2"
        in verdict.outcome.description
    )
    refused = ChecksFailed(KEY, "clip", [verdict])
    assert refused.reason == "quality.vmaf_below_threshold" and "VMAF 42" in str(refused)


def test_a_rung_floor_replaces_the_ladders_and_warn_lets_it_through():
    raw = Project.load(ROOT).spec().model_dump()
    raw["ladder"][2]["vmaf_min"] = 40  # 720p
    raw["qc"] = {"renditions": {"quality": "warn", "psnr_min": 35}}
    spec = spec_with(ladder=raw["ladder"], qc=raw["qc"])
    quality = checks_of(spec, "720p")["quality"]
    [verdict] = judge([quality], {qc.QUALITY: SCORES})
    assert not verdict.outcome.passed and not verdict.refuses  # warn: recorded, not refused
    assert verdict.outcome.reason == "quality.psnr_below_threshold"  # VMAF 42 >= its own 40
    assert verdict.outcome.metadata["vmaf_min"] == 40 and verdict.outcome.metadata["psnr_min"] == 35
    assert not quality.blocking and not quality.spec(KEY, None).blocking


def test_dagster_blocks_downstream_only_where_a_refused_rendition_stops_packaging():
    whole = spec_with()
    partial = spec_with(hls={**whole.hls.model_dump(), "min_renditions": 2})
    for spec, stops in ((whole, True), (partial, False)):
        specs = {
            s.key.name: s
            for a in build_video_assets(spec)
            for s in a.check_specs
            if s.asset_key.path[-1] == "rendition_480p"
        }
        assert set(specs) == {"streams_and_duration", "keyframes", "decode_health", "quality"}
        assert {s.blocking for s in specs.values()} == {stops}, spec.hls


def test_source_checks_judge_the_report_and_warn_by_default():
    spec = spec_with()
    checks = {c.name: c for c in qc.source_checks(spec)}
    report = {
        "audio_stream": "a:0",
        "black": [{"start_s": 5.0, "end_s": 10.0}],
        "freeze": [],
        "silence": [{"start_s": 1.0, "end_s": 2.5}],
        "loudness": {"integrated_lufs": -13.2, "range_lu": 0.3, "true_peak_dbtp": -2.0},
        "interlace": None,
    }
    verdicts = {v.check.name: v for v in judge(list(checks.values()), {qc.SOURCE_QC: report})}
    black = verdicts["black"].outcome
    assert not black.passed and black.reason == "source.black"
    assert black.description == "black video at 5.00-10.00 s (longest 5.00 s; allowed 2 s)"
    assert verdicts["silence"].outcome.passed  # 1.5 s <= 5 s
    loud = verdicts["loudness"].outcome
    assert not loud.passed and loud.reason == "source.loudness_off_target"
    assert "+9.8 LU from -23" in loud.description
    assert verdicts["freeze"].outcome.passed
    assert verdicts["interlacing"].outcome.description == "nothing to judge in this output"
    assert not any(v.refuses for v in verdicts.values())  # every source check warns by default
    silent = judge([checks["loudness"]], {qc.SOURCE_QC: {**report, "audio_stream": None}})
    assert silent[0].outcome.passed and silent[0].outcome.description == "the source has no audio"


def test_a_rung_floor_is_no_part_of_its_code_version():
    spec = spec_with()
    raw = spec.model_dump()
    raw["ladder"][2]["vmaf_min"] = 90
    floored = spec_with(ladder=raw["ladder"])

    def version(s):
        [encode] = [a for a in build_video_assets(s) if a.node_def.name == "vod__encode"]
        return encode.code_versions_by_key

    assert version(spec) == version(floored)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"qc": {"renditions": {"every_nth_frame": 0}}}, "every_nth_frame"),
        ({"qc": {"source": {"black": "stop"}}}, "black"),
        ({"audio": {"loudnorm": {"target_lufs": 0}}}, "target_lufs"),
    ],
)
def test_bad_qc_settings_fail_at_load_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        spec_with(**changes)
