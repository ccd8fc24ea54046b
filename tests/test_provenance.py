"""Provenance, pinning, reproducible outputs, skipping unchanged work, and `mpegflow why`."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, instance_for_test
from pipeline_helpers import ROOT, temp_project

from mpegflow_dagster.assets import build_video_assets
from mpegflow_dagster.dagster_private import StaleStatus, get_stale_status_resolver
from mpegflow_dagster.media.build import detect_build
from mpegflow_dagster.runs import materialize_video
from mpegflow_dagster.why import explain

pytestmark = pytest.mark.pipeline  # runs of the pipeline and of `mpegflow run` / `why`

FFMPEG_STAGES = (
    "rendition_240p",
    "rendition_480p",
    "rendition_720p",
    "rendition_1080p",
    "thumbnails",
    "captions",
    "hls",
)


def latest_record(instance, name: str, video: str):
    return instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=[video]), limit=1
    ).records[0]


def latest(instance, name: str, video: str):
    return latest_record(instance, name, video).asset_materialization


def of_run(instance, run_id: str, name: str):
    """`name`'s materialization by run `run_id`, whatever later runs on the instance made."""
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    [mat] = [
        r.asset_materialization
        for r in records
        if r.asset_materialization.asset_key == AssetKey(["vod", name])
    ]
    return mat


def logging_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """A harness around the real FFmpeg that records every invocation except `-version`."""
    log = tmp_path / "ffmpeg-calls.log"
    script = tmp_path / "ffmpeg-logged"
    script.write_text(
        f'#!/bin/bash\n[[ "$*" == *-version* ]] || echo "$*" >> {log}\nexec ffmpeg "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


@pytest.fixture(scope="module")
def first_run(make_source, tmp_path_factory):
    base = tmp_path_factory.mktemp("prov")
    project = temp_project(base, required_version=detect_build("ffmpeg").version[:3])
    source = make_source("clip", duration_s=3.0, captions=True)
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "clip", instance=instance, source=source
        )
        assert result.success
        yield {
            "project": project,
            "instance": instance,
            "source": source,
            "base": base,
            "run_id": result.run_id,
        }


def test_every_artifact_carries_provenance_in_metadata_and_sidecar(first_run):
    instance, run_id = first_run["instance"], first_run["run_id"]
    mat = of_run(
        instance, run_id, "rendition_720p"
    )  # other tests here add later runs of the same video
    prov = mat.metadata["provenance"].value
    build = detect_build("ffmpeg")
    assert prov["encoder"]["ffmpeg_version"] == build.version
    assert prov["encoder"]["ffmpeg_build_hash"] == build.build_hash
    assert prov["encoder"]["pinned"] == build.version[:3]
    assert prov["encoder_libraries"]["x264"].startswith("core ")
    assert (
        prov["preset"] == "x264-vod@1" and prov["attempt"] == 1 and prov["earlier_failures"] == []
    )
    assert prov["bit_exact"] is True  # one x264 thread (the shipped setting)
    assert any("libx264" in argv and "-b:v" in argv for argv in prov["argv"])
    ingest_sha = of_run(instance, run_id, "ingest").metadata["sha256"].value
    assert prov["inputs"]["ingest"] == ingest_sha  # the source's identity: the ingest data version
    assert prov["output_sha256"] == mat.metadata["sha256"].value == mat.tags["dagster/data_version"]
    assert prov["media"]["resolution"] == "640x360" and prov["media"]["duration_s"] > 2.5
    assert prov["wall_s"] > 0 and prov["ffmpeg_cpu_s"] > 0 and prov["host"]
    sidecar = Path(mat.metadata["path"].value + ".provenance.json")
    assert json.loads(sidecar.read_text())["output_sha256"] == prov["output_sha256"]


def test_unchanged_rematerialization_runs_no_ffmpeg(first_run, tmp_path, monkeypatch):
    harness, log = logging_ffmpeg(tmp_path)
    monkeypatch.setenv("MPEGFLOW_FFMPEG", str(harness))
    instance, project = first_run["instance"], first_run["project"]
    before = {n: latest_record(instance, n, "clip") for n in FFMPEG_STAGES}
    result = materialize_video(
        project, project.spec(), "clip", instance=instance, source=first_run["source"]
    )
    assert result.success
    assert not log.exists(), log.read_text()  # not one FFmpeg process besides -version
    for name, was in before.items():
        meta = latest(instance, name, "clip").metadata
        assert meta["reused"].value is True, name
        assert meta["sha256"].value == was.asset_materialization.metadata["sha256"].value
        # the run that made these bytes: the first run, unless another test here made them again
        made_by = (
            was.asset_materialization.metadata["provenance"].value.get("reused_from_run")
            or was.event_log_entry.run_id
        )
        assert meta["provenance"].value["reused_from_run"] == made_by, name


def test_forced_rerun_reencodes_byte_identical_outputs(first_run, tmp_path, monkeypatch):
    harness, log = logging_ffmpeg(tmp_path)
    monkeypatch.setenv("MPEGFLOW_FFMPEG", str(harness))
    instance, project = first_run["instance"], first_run["project"]
    before = {
        n: latest(instance, n, "clip").metadata["sha256"].value for n in (*FFMPEG_STAGES, "probe")
    }
    result = materialize_video(
        project, project.spec(), "clip", instance=instance, source=first_run["source"], force=True
    )
    assert result.success
    assert log.read_text().count("libx264") == 5  # four rungs and the captioned encode ran again
    for name, sha in before.items():
        meta = latest(instance, name, "clip").metadata
        assert meta["reused"].value is False, name
        assert meta["sha256"].value == sha, (
            f"{name} is not reproducible"
        )  # hls: every segment and playlist


def test_changing_one_rung_marks_only_it_and_its_dependents_stale(first_run):
    instance, project = first_run["instance"], first_run["project"]
    spec = project.spec()
    ladder = tuple(
        r.model_copy(update={"video_bitrate_kbps": 1100}) if r.name == "480p" else r
        for r in spec.ladder
    )
    changed = project.model_copy(update={"specs": [spec.model_copy(update={"ladder": ladder})]})
    assets = changed.assets(changed.spec())

    def stale(assets=assets) -> set[str]:
        resolver = get_stale_status_resolver(instance, assets)  # what the UI computes for "stale"
        return {
            k.path[-1]
            for a in assets
            for k in a.keys
            if resolver.get_status(k, "clip") == StaleStatus.STALE
        }

    assert stale() == {"rendition_480p"}  # its code version changed; nothing else did
    try:
        # Re-encoding it changes its data version: now (and only now) its consumer is stale too.
        assert materialize_video(
            changed, changed.spec(), "clip", instance=instance, stages=["rendition_480p"]
        ).success
        assert stale() == {"hls"}
    finally:  # the other tests here share the instance: the shipped 480p again, the very bytes of the first run
        restored = materialize_video(
            project, spec, "clip", instance=instance, stages=["rendition_480p"]
        )
    assert restored.success and stale(project.assets(spec)) == set()


def test_a_new_encoder_build_marks_the_ffmpeg_stages_stale(first_run):
    instance, project = first_run["instance"], first_run["project"]
    assets = build_video_assets(project.spec(), encoder_build="another-build")
    resolver = get_stale_status_resolver(instance, assets)
    stale = {
        k.path[-1]
        for a in assets
        for k in a.keys
        if resolver.get_status(k, "clip") == StaleStatus.STALE
    }
    assert stale == {
        "source_qc",  # an FFmpeg stage too: its analysis names the build
        "rendition_240p",
        "rendition_480p",
        "rendition_720p",
        "rendition_1080p",
        "thumbnails",
        "captions",
        "hls",
        "emit",
        "emit_captions",
    }


def test_pinned_build_mismatch_fails_before_encoding(make_source, tmp_path):
    project = temp_project(tmp_path, required_build_hash="0123456789abcdef")
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "v", instance=instance, source=make_source(duration_s=2.0)
        )
    assert not result.success
    assert not result.get_asset_materialization_events()
    text = " ".join(str(e.event_specific_data) for e in result.all_events if e.is_failure)
    assert "requires 0123456789abcdef" in text and detect_build("ffmpeg").build_hash in text


def test_why_answers_for_a_finished_and_a_failed_video(first_run, tmp_path):
    instance, project = first_run["instance"], first_run["project"]
    started = time.perf_counter()
    report = explain(instance, project.spec(), "clip")
    elapsed = time.perf_counter() - started
    print(f"mpegflow why over {len(report['stages'])} stages: {elapsed:.3f}s")
    r720 = report["stages"]["rendition_720p"]
    assert r720["status"] == "success" and r720["attempts"] >= 1 and r720["start"] and r720["end"]
    prov = r720["materialized"]["provenance"]
    assert prov["preset"] == "x264-vod@1" and prov["argv"]
    assert (
        r720["materialized"]["consumed"]["vod/ingest"]["sha256"]
        == report["stages"]["ingest"]["materialized"]["sha256"]
    )

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 5000)
    materialize_video(project, project.spec(), "junk", instance=instance, source=junk)
    failed = explain(instance, project.spec(), "junk")
    assert failed["latest_run"]["status"] == "failure"
    probe = failed["stages"]["probe"]
    assert probe["status"] == "failure"
    assert (probe["failure"]["failure_class"], probe["failure"]["reason"]) == (
        "permanent",
        "input.invalid_data",
    )
    assert failed["stages"]["rendition_720p"]["status"] == "never_run"


def test_why_cli_prints_json_and_refuses_unknown_videos(make_source, tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "MPEGFLOW_STORAGE_DIR": str(tmp_path / "s"),
        "MPEGFLOW_WORK_DIR": str(tmp_path / "w"),
        "MPEGFLOW_EVENTS_PATH": str(tmp_path / "e.jsonl"),
    }
    (tmp_path / "home").mkdir()
    mpegflow = str(Path(sys.executable).parent / "mpegflow")
    src = make_source("tiny", duration_s=2.0)
    run = subprocess.run(
        [mpegflow, "run", str(src), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    why = subprocess.run(
        [mpegflow, "why", "tiny", "rendition_240p", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    report = json.loads(why.stdout)
    assert list(report["stages"]) == ["rendition_240p"]
    assert (
        report["stages"]["rendition_240p"]["materialized"]["provenance"]["asset"]
        == "rendition_240p"
    )
    text = subprocess.run(
        [mpegflow, "why", "tiny"], cwd=ROOT, env=env, capture_output=True, text=True
    ).stdout
    assert "encoder  ffmpeg" in text and "argv" in text
    unknown = subprocess.run(
        [mpegflow, "why", "nope"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "no run of video 'nope'" in unknown.stderr


def test_a_chunked_encode_is_recorded_run_by_run_and_reproduced_with_fewer_lanes(
    make_source, tmp_path
):
    """A 29.97 fps source long enough for `chunk_s`: each rendition's provenance lists its chunk
    encodes (each with its seek: the cut is on frame 60, at 2.002 s, and that chunk's encode
    starts a GOP before, on frame 31 at 1.0343666... s), the audio encode and the
    join; a forced re-run with one lane instead of two makes the same renditions and HLS."""
    shipped = temp_project(tmp_path / "a", encode_lanes=2)
    spec = shipped.spec().model_copy(
        update={
            "gop_s": 1.0,
            "chunk_s": 2.0,
            "chunk_lead_gops": 1,
            "thumbnails": shipped.spec().thumbnails.model_copy(update={"interval_s": 1.0}),
        }
    )
    two, one = (
        p.model_copy(update={"specs": [spec]})
        for p in (shipped, temp_project(tmp_path / "b", encode_lanes=1))
    )
    source = make_source("clip", duration_s=4.0, fps="30000/1001")
    with instance_for_test() as instance:
        assert materialize_video(two, spec, "clip", instance=instance, source=source).success
        prov = latest(instance, "rendition_480p", "clip").metadata["provenance"].value
        encodes = [argv for argv in prov["argv"] if "libx264" in argv]
        assert [argv[argv.index("-ss") + 1] for argv in encodes] == ["0", "1.034366"]
        assert any(
            "aac" in argv and "libx264" not in argv for argv in prov["argv"]
        )  # the audio, once
        assert "concat" in prov["argv"][-1]  # the join
        before = {
            n: latest(instance, n, "clip").metadata["sha256"].value
            for n in (*FFMPEG_STAGES[:5], "hls")
        }
    with instance_for_test() as instance:
        assert materialize_video(
            one, spec, "clip", instance=instance, source=source, force=True
        ).success
        for name, sha in before.items():
            assert latest(instance, name, "clip").metadata["sha256"].value == sha, name
