"""Quality control through Dagster: a starved rung fails its quality check and is left out of the
package (announced, the good rungs shipped), a source with black and silence in the middle is
flagged with the right intervals, a loud source is flagged and normalized; every check is a
Dagster asset check read back through the instance and `mpegflow qc`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import AssetCheckKey, AssetKey, instance_for_test
from pipeline_helpers import ROOT, project_with, run_cli

from mpegflow_dagster.dagster_private import latest_checks
from mpegflow_dagster.events import JsonlEventSink
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.media.source_qc import run_source_qc
from mpegflow_dagster.media.synth import make_clip
from mpegflow_dagster.runs import materialize_video, stage_report

pytestmark = pytest.mark.pipeline

FPS = 25


def _evaluated(instance, asset: str, check: str, video: str):
    key = AssetCheckKey(AssetKey(["vod", asset]), check)
    record = latest_checks(instance, [key], video).get(key)
    assert record is not None and record.event is not None, f"{asset} {check} never evaluated"
    return record.event


def evaluation(instance, asset: str, check: str, video: str = "clip"):
    return _evaluated(instance, asset, check, video).dagster_event.asset_check_evaluation_data


def evaluated_in(instance, asset: str, check: str, video: str = "clip") -> str:
    """The step that evaluated the check."""
    return _evaluated(instance, asset, check, video).step_key


def events(tmp_path: Path) -> list[dict]:
    return JsonlEventSink(tmp_path / "events.jsonl").read()  # where run_cli's mpegflow sends them


def test_a_starved_rung_fails_its_vmaf_check_and_is_left_out(tmp_path: Path):
    """Through `mpegflow run` and `mpegflow qc`: 1080p at 150 kb/s scores a VMAF far below the
    floor (the imageio-ffmpeg 9.0 build scores), the good rungs ship."""
    source = make_clip(
        tmp_path / "in" / "clip.mp4", duration_s=3.0, width=1920, height=1080, fps=FPS
    )
    raw = yaml.safe_load((ROOT / "resources" / "pipelines" / "vod.yaml").read_text())
    raw["ladder"] = [
        {"name": "240p", "height": 240, "video_bitrate_kbps": 400},
        {"name": "480p", "height": 480, "video_bitrate_kbps": 1200},
        {"name": "1080p", "height": 1080, "video_bitrate_kbps": 150},
    ]
    raw["captions"] = {"enabled": False}
    raw["hls"] = {"segment_s": 2, "min_renditions": 2}
    # whole files: every frame decoded and every 7th scored (the default samples GOPs)
    raw["qc"] = {"renditions": {"metrics_binary": "imageio-ffmpeg", "every_nth_gop": 1}}
    spec_file = tmp_path / "resources" / "pipelines" / "vod.yaml"
    spec_file.parent.mkdir(parents=True)
    spec_file.write_text(yaml.safe_dump(raw))
    presets = tmp_path / "resources" / "presets"
    presets.mkdir()
    for p in (ROOT / "resources" / "presets").glob("*.yaml"):
        (presets / p.name).write_text(p.read_text())
    out = tmp_path / "delivery"
    ran = run_cli(
        ["run", str(source), "--spec", str(spec_file), "--out", str(out), "--json"], tmp_path
    )
    report = json.loads(ran.stdout)
    assert report["status"] == "partial", ran.stderr[-2000:]
    failed = report["stages"]["rendition_1080p"]
    assert failed["status"] == "failed" and failed["reason_code"] == "quality.vmaf_below_threshold"
    assert "VMAF" in failed["reason"] and "< 50 (vmaf_min)" in failed["reason"]
    master = (out / "clip" / "hls" / "master.m3u8").read_text()
    assert master.count("#EXT-X-STREAM-INF") == 2 and "1080p/" not in master
    assert not list((tmp_path / "work").iterdir())  # the refused rendition's files are gone
    assert not (tmp_path / "storage" / "vod" / "rendition_1080p").exists()

    shown = run_cli(["qc", "clip", "--spec", str(spec_file), "--json"], tmp_path)
    assert shown.returncode == 1  # a check failed
    checks = json.loads(shown.stdout)["assets"]
    starved = checks["rendition_1080p"]["quality"]
    assert (
        starved["status"] == "failed"
        and starved["severity"] == "error"
        and starved["blocking"] is False
    )  # isolated: min_renditions
    scores = starved["metadata"]
    assert scores["vmaf"] < 50 and scores["binary_version"].startswith("ffmpeg version n9.0")
    assert scores["vmaf_model"] == "version=vmaf_v0.6.1" and scores["every_nth_frame"] == 7
    for rung in ("240p", "480p"):
        good = checks[f"rendition_{rung}"]
        assert good["quality"]["status"] == "passed", good["quality"]
        assert good["quality"]["metadata"]["vmaf"] > 80
        assert {
            good[c]["status"] for c in ("streams_and_duration", "keyframes", "decode_health")
        } == {"passed"}
        decoded = good["decode_health"]["metadata"]
        assert (decoded["gops"], decoded["frames"], decoded["errors"]) == (2, 11, 0)  # 75 / 7
    assert {c["status"] for c in checks["hls"].values()} == {"passed"}
    assert checks["source_qc"]["black"]["status"] == "passed"
    text = run_cli(["qc", "clip", "--spec", str(spec_file)], tmp_path).stdout
    assert "FAILED (error)" in text and "quality.vmaf" not in text and "VMAF" in text

    announced = [e for e in events(tmp_path) if e["type"] == "rendition.failed"]
    assert [e["subject"] for e in announced] == ["1080p"]
    assert (
        announced[0]["message"] == "rendition 1080p failed: permanent: quality.vmaf_below_threshold"
    )
    assert "VMAF" in announced[0]["data"]["message"]


def test_black_and_silence_in_the_middle_are_flagged_and_can_block(tmp_path: Path):
    source = make_clip(
        tmp_path / "in" / "clip.mp4",
        duration_s=15.0,
        width=320,
        height=240,
        fps=FPS,
        black_s=(5.0, 10.0),
        silence_s=(5.0, 10.0),
    )
    # in 4 s time chunks: the black stretch crosses the cut at 8 s, found by two chunks' decodes
    chunked = {"chunk_s": 4, "thumbnails": {"interval_s": 2}}
    project = project_with(tmp_path / "warn", {"captions": {"enabled": False}, **chunked})
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "clip", instance=instance, source=source
        )
        assert result.success  # warnings by default: the video ships
        black = evaluation(instance, "source_qc", "black")
        silence = evaluation(instance, "source_qc", "silence")
        assert not black.passed and black.severity.value == "WARN"
        [[start, end]] = black.metadata["intervals"].value
        assert start == pytest.approx(5.0, abs=1 / FPS) and end == pytest.approx(10.0, abs=1 / FPS)
        [[start, end]] = silence.metadata["intervals"].value
        assert start == pytest.approx(5.0, abs=0.1) and end == pytest.approx(10.0, abs=0.1)
        assert "5.00-10.00 s" in black.description
        assert evaluation(instance, "source_qc", "interlacing").passed
        quality = evaluation(instance, "rendition_240p", "quality")
        assert quality.passed and quality.metadata["every_nth_gop"].value == 5
        # 15 s in 2 s GOPs: 8, one in five is 2 (the 3rd and 7th), 49 frames each after the key
        assert (quality.metadata["gops"].value, quality.metadata["frames"].value) == (2, 14)
        # warn only: the analysis rode on the encode's decodes (chunks, audio), in its step
        assert evaluated_in(instance, "source_qc", "black") == "vod__encode"
        [record] = instance.fetch_materializations(AssetKey(["vod", "source_qc"]), limit=1).records
        meta = record.asset_materialization.metadata
        assert meta["source_qc"].value["frames_analysed"] == 15 * FPS  # the chunks' leads left out
        argv = meta["provenance"].value["argv"]
        assert sum("libx264" in a for a in argv) == 4 and any(
            "blackdetect" in " ".join(a) for a in argv
        )

    blocking = project_with(
        tmp_path / "block", {"captions": {"enabled": False}, "qc": {"source": {"black": "block"}}}
    )
    with instance_for_test() as instance:
        result = materialize_video(
            blocking, blocking.spec(), "clip", instance=instance, source=source
        )
        report = stage_report(result.all_events, blocking.spec())
        assert not result.success
        assert report["source_qc"]["status"] == "failed"
        assert report["source_qc"]["reason_code"] == "source.black"
        assert report["rendition_240p"]["status"] == "not_run"  # the encode waited for it
        assert not evaluation(instance, "source_qc", "black").passed
        assert evaluated_in(instance, "source_qc", "black") == "vod__source_qc"


def test_a_loud_source_is_flagged_and_normalized_to_the_target(tmp_path: Path):
    source = make_clip(
        tmp_path / "in" / "clip.mp4", duration_s=12.0, width=320, height=240, fps=FPS, loud_db=10
    )
    project = project_with(
        tmp_path,
        {"captions": {"enabled": False}, "audio": {"loudnorm": {"target_lufs": -23.0}}},
    )
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "clip", instance=instance, source=source
        )
        assert result.success
        loudness = evaluation(instance, "source_qc", "loudness")
        assert not loudness.passed
        assert loudness.metadata["integrated_lufs"].value == pytest.approx(-13.0, abs=1.0)
        assert "LU from -23" in loudness.description
        [record] = instance.fetch_materializations(
            AssetKey(["vod", "rendition_480p"]), limit=1
        ).records
        meta = record.asset_materialization.metadata
        reached = meta["loudnorm"].value
        assert reached["measured_lufs"] == pytest.approx(-13.0, abs=1.0)
        assert reached["result_lufs"] == pytest.approx(-23.0, abs=1.0)
        assert meta["provenance"].value["media"]["loudnorm"] == reached
        assert "loudnorm=" in " ".join(sum(meta["provenance"].value["argv"], []))
    # measured again, apart, on what was delivered
    delivered = next((tmp_path / "delivery" / "clip" / "hls").rglob("*.ts"))
    stored = next((tmp_path / "storage" / "vod" / "rendition_480p" / "clip").glob("*.mp4"))
    report, _ = run_source_qc(stored, tmp_path / "measured", probe(stored))
    assert report.loudness is not None
    assert report.loudness.integrated_lufs == pytest.approx(-23.0, abs=1.0)
    assert delivered.stat().st_size > 0
