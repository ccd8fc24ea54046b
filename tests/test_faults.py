"""Faults a production deployment meets, replayed as a user meets them: through `mpegflow` in its
own process on a persistent instance, with real FFmpeg (issue 22)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, instance_for_test
from pipeline_helpers import (
    BIN,
    ROOT,
    cli_env,
    ffmpeg_wrapper,
    processes_with,
    run_cli,
    temp_project,
    wait_for,
)

from mpegflow_dagster.events import JsonlEventSink
from mpegflow_dagster.runs import materialize_video, stage_report
from mpegflow_dagster.storage import SCRATCH_MARKER

pytestmark = pytest.mark.pipeline  # every test runs the pipeline or `mpegflow run`


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def _start_and_kill(
    tmp_path: Path, source: Path, *, survivor_too: bool = False
) -> tuple[list[Path], str]:
    """Start `mpegflow run` on real FFmpeg reading the source at its own pace (the encode lasts
    as long as the clip), kill -9 it mid-encode (and its survivor first, if asked), and check
    that no FFmpeg outlives it by 5 s. Returns the scratch it left and the run's id."""
    work = tmp_path / "work"
    slow = ffmpeg_wrapper(tmp_path, options="-re")
    run = subprocess.Popen(
        [str(BIN / "mpegflow"), "run", str(source), "--out", str(tmp_path / "out"), "--json"],
        cwd=ROOT,
        env=cli_env(tmp_path, MPEGFLOW_FFMPEG=str(slow)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ffmpegs = wait_for(
        lambda: processes_with("libx264", f"file:{work}"), 120, "the encode to start"
    )
    time.sleep(1.0)
    left = [m.parent for m in work.glob(f"*/{SCRATCH_MARKER}")]
    assert left, "the run should have scratch in use (else this test proves nothing)"
    if survivor_too:
        [survivor] = processes_with("survivor.py", str(tmp_path / "home"))
        os.kill(survivor, signal.SIGKILL)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    wait_for(
        lambda: not any(pid in processes_with("ffmpeg") for pid in ffmpegs) or None,
        5,
        "FFmpeg to exit",
    )
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        [latest, *_] = instance.get_runs(limit=1)
    return left, latest.run_id


def _status(tmp_path: Path, run_id: str) -> DagsterRunStatus:
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        return instance.get_run_by_id(run_id).status


def test_kill_9_of_a_run_leaves_no_ffmpeg_and_its_run_is_failed_and_cleaned_up(
    tmp_path, make_source
):
    source = make_source("long", duration_s=12.0, width=320, height=240)
    # Its survivor marks the run failed and removes its scratch at once.
    left, killed = _start_and_kill(tmp_path, source)
    wait_for(
        lambda: _status(tmp_path, killed) == DagsterRunStatus.FAILURE,
        20,
        "the run to be marked failed",
    )
    wait_for(lambda: not any(path.exists() for path in left), 20, "the scratch to be removed")

    # Killed together with its survivor (as by a reboot): `why` marks the run failed, and the
    # next run collects the scratch and encodes anew.
    left, killed = _start_and_kill(tmp_path, source, survivor_too=True)
    time.sleep(1.0)
    assert _status(tmp_path, killed) == DagsterRunStatus.STARTED and all(
        path.exists() for path in left
    )
    why = run_cli(["why", "long", "--json"], tmp_path)
    assert why.returncode == 0, why.stderr[-2000:]
    assert _status(tmp_path, killed) == DagsterRunStatus.FAILURE
    again = run_cli(["run", str(source), "--out", str(tmp_path / "out"), "--json"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["status"] == "succeeded"
    assert not any(path.exists() for path in left)
    assert not list((tmp_path / "work").glob(f"*/{SCRATCH_MARKER}"))


def test_two_first_runs_at_once_on_a_new_home_both_succeed(tmp_path, make_source):
    sources = [
        make_source(name, duration_s=2.0, width=320, height=240) for name in ("first", "second")
    ]
    env = cli_env(tmp_path)
    runs = [
        subprocess.Popen(
            [str(BIN / "mpegflow"), "run", str(s), "--out", str(tmp_path / "out"), "--json"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in sources
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
        assert json.loads(out)["status"] == "succeeded"
    # The home is sound afterwards: one alembic head, every command works.
    why = run_cli(["why", "first", "--json"], tmp_path)
    assert why.returncode == 0, why.stderr[-2000:]


def _pad(path: Path, size: int) -> None:
    """Grow an MP4 to `size` bytes with a `free` box (valid MP4: players skip it)."""
    extra = size - path.stat().st_size
    assert extra >= 8
    with open(path, "ab") as fh:
        fh.write(struct.pack(">I4s", extra, b"free") + bytes(extra - 8))


def test_a_source_swapped_for_another_of_equal_size_and_mtime_is_ingested_again(
    instance, tmp_path, make_source
):
    source = make_source("talk", duration_s=2.0, width=320, height=240)
    other = make_source("other", duration_s=2.0, width=320, height=240, fps=30)
    size = max(source.stat().st_size, other.stat().st_size) + 64
    _pad(source, size)
    _pad(other, size)
    project = temp_project(tmp_path)
    spec = project.spec()
    first = stage_report(
        materialize_video(project, spec, "talk", instance=instance, source=source).all_events, spec
    )
    assert first["emit"]["status"] == "materialized"
    before = source.stat()
    shutil.copyfile(other, source)  # `cp -p`: the bytes change, size and mtime stay
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    again = stage_report(
        materialize_video(project, spec, "talk", instance=instance, source=source).all_events, spec
    )
    assert again["ingest"]["status"] == "materialized" and again["ingest"]["reused"] is False
    assert again["ingest"]["sha256"] != first["ingest"]["sha256"]
    assert (
        again["rendition_240p"]["reused"] is False
        and again["rendition_240p"]["sha256"] != first["rendition_240p"]["sha256"]
    )
    # Unchanged, it is reused as before.
    third = stage_report(
        materialize_video(project, spec, "talk", instance=instance, source=source).all_events, spec
    )
    assert third["ingest"]["reused"] is True and third["rendition_240p"]["reused"] is True


def test_links_out_of_the_source_directory_are_refused_and_nothing_is_stored(
    instance, tmp_path, make_source
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "passwd.mp4").symlink_to("/etc/passwd")
    clip = make_source("talk", duration_s=2.0, width=320, height=240)
    shutil.copyfile(clip, inbox / "talk.mp4")
    (inbox / "talk.srt").symlink_to("/etc/passwd")
    shutil.copyfile(clip, inbox / "real.mp4")
    (inbox / "alias.mp4").symlink_to(
        "real.mp4"
    )  # a link to a file beside it is the user's own file
    project = temp_project(tmp_path)
    spec = project.spec()
    for video, what in (("passwd", "source"), ("talk", "caption sidecar")):
        result = materialize_video(
            project, spec, video, instance=instance, source=inbox / f"{video}.mp4", stages=["probe"]
        )
        ingest = stage_report(result.all_events, spec)["ingest"]
        assert (ingest["status"], ingest["failure_class"], ingest["reason_code"]) == (
            "failed",
            "security",
            "security.symlink_outside",
        )
        assert f"{what} {inbox / video}" in ingest["reason"] and "/etc/passwd" in ingest["reason"]
        steps = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_RESTARTED]
        assert steps == []  # never retried
    assert not (tmp_path / "storage").exists()
    assert list((tmp_path / "work").iterdir()) == []
    result = materialize_video(
        project, spec, "alias", instance=instance, source=inbox / "alias.mp4", stages=["probe"]
    )
    assert stage_report(result.all_events, spec)["probe"]["status"] == "materialized"


def test_a_name_that_reads_like_damage_encodes_like_any_other(instance, tmp_path, make_source):
    source = make_source("anti-corruption-talk", duration_s=2.0, width=320, height=240)
    project = temp_project(tmp_path)
    spec = project.spec()
    result = materialize_video(
        project, spec, "anti-corruption-talk", instance=instance, source=source
    )
    report = stage_report(result.all_events, spec)
    assert result.success, report
    assert all(report[f"rendition_{r.name}"]["status"] == "materialized" for r in spec.ladder)


def test_a_changed_stored_artifact_fails_its_own_output_once_and_force_repairs_it(
    instance, tmp_path, make_source
):
    source = make_source("talk", duration_s=2.0, width=320, height=240)
    project = temp_project(tmp_path)
    spec = project.spec()
    assert materialize_video(project, spec, "talk", instance=instance, source=source).success
    stored = tmp_path / "storage" / "vod" / "rendition_240p" / "talk" / "240p.mp4"
    with open(stored, "ab") as fh:
        fh.write(b"tampered")
    published = (tmp_path / "delivery" / "talk" / "hls" / "master.m3u8").read_bytes()
    result = materialize_video(project, spec, "talk", instance=instance, source=source)
    report = stage_report(result.all_events, spec)
    assert (report["rendition_240p"]["failure_class"], report["rendition_240p"]["reason_code"]) == (
        "permanent",
        "storage.artifact_changed",
    )
    assert str(stored) in report["rendition_240p"]["reason"]
    assert all(
        report[f"rendition_{r.name}"]["status"] == "materialized"
        for r in spec.ladder
        if r.name != "240p"
    )
    assert report["thumbnails"]["status"] == "materialized"
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_RESTARTED]
    failed = [
        e
        for e in JsonlEventSink(Path(project.settings.events_path)).read()
        if e["type"] == "rendition.failed"
    ]
    assert [e["subject"] for e in failed] == ["240p"]
    assert (tmp_path / "delivery" / "talk" / "hls" / "master.m3u8").read_bytes() == published
    repaired = materialize_video(
        project, spec, "talk", instance=instance, source=source, force=True
    )
    assert repaired.success


def test_a_bad_caption_sidecar_fails_captions_alone_naming_the_sidecar(
    instance, tmp_path, make_source
):
    source = make_source("talk", duration_s=2.0, width=320, height=240)
    source.with_suffix(".srt").write_text("this is not a subtitle file\n")
    project = temp_project(tmp_path)
    spec = project.spec()
    report = stage_report(
        materialize_video(project, spec, "talk", instance=instance, source=source).all_events, spec
    )
    captions = report["captions"]
    assert (captions["failure_class"], captions["reason_code"]) == (
        "permanent",
        "input.invalid_captions",
    )
    assert f"caption sidecar {source.with_suffix('.srt')}" in captions["reason"]
    assert report["emit"]["status"] == "materialized"


@pytest.mark.parametrize("case", ["missing", "directory", "bad_spec"])
def test_cli_errors_are_json_under_json_and_name_the_file(tmp_path, make_source, case):
    source = {"missing": tmp_path / "nope.mp4", "directory": tmp_path}.get(case) or make_source(
        "talk", duration_s=2.0
    )
    extra = ["--spec", str(tmp_path / "no-such-spec.yaml")] if case == "bad_spec" else []
    proc = run_cli(["run", str(source), "--json", *extra], tmp_path)
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    expected = {
        "missing": ("permanent", "input.not_found", str(source)),
        "directory": ("permanent", "input.not_a_regular_file", str(source)),
        "bad_spec": ("permanent", "config.invalid_spec", "no-such-spec.yaml"),
    }[case]
    assert (report["status"], report["failure_class"], report["reason_code"]) == (
        "error",
        *expected[:2],
    )
    assert expected[2] in report["reason"] and expected[2] in proc.stderr
