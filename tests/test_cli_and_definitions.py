"""`mpegflow run` as a user runs it, and the code location as `dagster dev` loads it."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DefaultSensorStatus, Definitions, in_process_executor
from http_receiver import Receiver, free_port
from pipeline_helpers import BIN, ROOT, run_cli

from mpegflow_dagster import Project, build_video_assets
from mpegflow_dagster.executors import celery_executor_config
from mpegflow_dagster.project import load_settings
from mpegflow_dagster.spec import SpecError
from mpegflow_dagster.sqlite_event_log import CachedEngineSqliteEventLogStorage
from mpegflow_dagster.webhooks.sensor import DELIVERY_SENSOR
from mpegflow_dagster.webhooks.signing import verify_signature


@pytest.mark.pipeline
def test_run_json_reports_each_stage_and_the_master_playlist(make_source, tmp_path):
    source = make_source("My Clip", duration_s=2.0, width=1280, height=720, captions=True)
    proc = run_cli(["run", str(source), "--out", str(tmp_path / "out"), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "succeeded"
    video = report["video"]
    assert video.startswith("my-clip-")  # unsafe name -> slug + hash
    delivered = tmp_path / "out" / video
    assert report["published"] == {
        "hls": str(delivered / "hls" / "master.m3u8"),
        "thumbnails": str(delivered / "thumbnails" / "storyboard.vtt"),
        "captioned.mp4": str(delivered / "captioned.mp4"),
    }
    master = Path(report["published"]["hls"]).read_text()
    assert master.count("#EXT-X-STREAM-INF") == 3 and "1080p/" not in master  # above the source
    assert report["stages"]["rendition_1080p"]["status"] == "materialized"
    # The CLI's kept event-log connections were closed at exit: each write-ahead log was folded
    # into its .db file, so a copy of a run's .db alone has every event.
    assert not list((tmp_path / "home" / "history" / "runs").glob("*-wal"))
    # The run is on the persistent instance, where the UI will show it.
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert isinstance(instance.event_log_storage, CachedEngineSqliteEventLogStorage)
        assert instance.get_run_by_id(report["run_id"]).is_success
        assert video in instance.get_dynamic_partitions("vod_videos")


@pytest.mark.pipeline
def test_run_fails_with_nonzero_exit_and_reasons(tmp_path):
    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"junk" * 1000)
    proc = run_cli(["run", str(junk), "--out", str(tmp_path / "out"), "--json"], tmp_path)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["status"] == "failed" and report["published"] == {}
    assert report["stages"]["probe"]["status"] == "failed"
    assert "broken" in report["stages"]["probe"]["reason"]
    missing = run_cli(["run", str(tmp_path / "nope.mp4")], tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.pipeline  # `mpegflow run` in its own process, stopped by the spec
def test_invalid_spec_is_reported_before_anything_runs(make_source, tmp_path):
    spec = yaml.safe_load((ROOT / "resources" / "pipelines" / "vod.yaml").read_text())
    spec["gop_s"] = 3
    bad = tmp_path / "pipelines" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump(spec))
    proc = run_cli(["run", str(make_source(duration_s=2.0)), "--spec", str(bad)], tmp_path)
    assert proc.returncode == 2 and "multiple of gop_s" in proc.stderr
    assert not (tmp_path / "home" / "history").exists()


@pytest.mark.slow  # the `dagster` CLI in its own process: 2-7 s
def test_code_location_validates():
    proc = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Validation successful" in proc.stdout + proc.stderr


def test_two_specs_coexist_by_key_prefix(tmp_path):
    raw = yaml.safe_load((ROOT / "resources" / "pipelines" / "vod.yaml").read_text())
    raw["name"] = "shorts"
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "shorts.yaml").write_text(yaml.safe_dump(raw))
    project = Project.load(
        ROOT,
        [ROOT / "resources" / "pipelines" / "vod.yaml", tmp_path / "pipelines" / "shorts.yaml"],
    )
    defs = project.definitions()
    Definitions.validate_loadable(defs)
    assert defs.executor is in_process_executor  # UI and sensor runs too: no process per step
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"vod/rendition_720p", "shorts/rendition_720p", "shorts/hls"} <= keys
    assert len(keys) == 2 * len(
        [k for a in build_video_assets(project.spec("vod")) for k in a.keys]
    )


def test_readme_code_location_example_loads(monkeypatch):
    """The README's "own code location" snippet names every resource the assets need."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it in your own code location") :]
    code = section[section.index("```python") + len("```python") :]
    code = code[: code.index("```")]
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    Definitions.validate_loadable(scope["defs"])
    assert scope["defs"].executor is in_process_executor


@pytest.mark.pipeline
def test_run_delivers_webhooks_outside_the_steps_and_says_what_is_left(tmp_path):
    """`mpegflow run`: the steps queue their events, a thread POSTs them while the run goes and
    for at most --webhook-wait after it; what is still queued is reported."""
    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"junk" * 1000)
    secret = "whsec-cli-test"
    no_proxy = {
        name: ""
        for name in (
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        )
    }

    def run(base: Path, url: str, *args: str):
        proc = run_cli(
            ["run", str(junk), "--out", str(base / "out"), "--json", *args],
            base,
            MPEGFLOW_WEBHOOK_URL=url,
            MPEGFLOW_WEBHOOK_SECRET=secret,
            **no_proxy,
        )
        assert proc.returncode == 1, proc.stderr[
            -3000:
        ]  # the run failed (junk input); delivery never changes that
        return proc, json.loads(proc.stdout)

    with Receiver() as receiver:
        proc, report = run(tmp_path / "up", receiver.url)
    assert report["webhooks_queued"] == 0 and "not delivered yet" not in proc.stderr
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert [b["type"] for b in bodies][-1] == "video.failed" and {b["run_id"] for b in bodies} == {
        report["run_id"]
    }
    assert all(
        verify_signature(
            secret, r.headers["X-Mpegflow-Timestamp"], r.body, r.headers["X-Mpegflow-Signature"]
        )
        for r in receiver.requests
    )

    started = time.monotonic()
    proc, report = run(
        tmp_path / "down", f"http://127.0.0.1:{free_port()}/hooks", "--webhook-wait", "1"
    )
    assert report["webhooks_queued"] == len(bodies)
    assert (
        f"{len(bodies)} webhook event(s) not delivered yet" in proc.stderr
        and "Connection" in proc.stderr
    )
    assert str(tmp_path / "down" / "webhooks" / "webhook-outbox.sqlite3") in proc.stderr
    assert time.monotonic() - started < 60


def test_code_location_delivers_webhooks_by_sensor_when_a_url_is_set(monkeypatch):
    monkeypatch.delenv("MPEGFLOW_WEBHOOK_URL", raising=False)
    assert DELIVERY_SENSOR not in [s.name for s in Project.load(ROOT).definitions().sensors]
    monkeypatch.setenv("MPEGFLOW_WEBHOOK_URL", "https://example.invalid/hooks")
    defs = Project.load(ROOT).definitions()
    Definitions.validate_loadable(defs)
    [sensor_def] = [s for s in defs.sensors if s.name == DELIVERY_SENSOR]
    assert (
        sensor_def.default_status == DefaultSensorStatus.RUNNING
    )  # the daemon runs it without a click


@pytest.mark.slow
def test_dg_lists_what_the_components_build(tmp_path):
    """`dg list defs` reads the project's defs folder: each pipeline's assets and job come
    from its VideoPipelineComponent, the resources from the VideoDeploymentComponent."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "VIRTUAL_ENV": str(BIN.parent),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    out = subprocess.run(
        [str(BIN / "dg"), "list", "defs", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    listed = json.loads(out.stdout)
    sources = {a["asset_key"]: a["source"] for a in listed["assets"]}
    assert sources["vod/rendition_720p"].startswith("resources/defs/vod/defs.yaml")
    assert [j["name"] for j in listed["jobs"]] == ["vod_video"]  # one video a run, by pipeline
    assert not {s["name"] for s in listed["sensors"]} & {"vod_video_succeeded", "vod_video_failed"}
    assert {r["name"] for r in listed["resources"]} >= {
        "ffmpeg",
        "media_io_manager",
        "delivery",
        "events",
    }


def test_celery_executor_from_the_settings_redelivers_a_lost_workers_step(monkeypatch):
    monkeypatch.setenv("MPEGFLOW_EXECUTOR", "celery")
    monkeypatch.setenv("MPEGFLOW_CELERY_BROKER", "redis://10.0.0.5:6379/0")
    monkeypatch.setenv("MPEGFLOW_CELERY_LOST_STEP_AFTER_S", "120")
    project = Project.load(ROOT)
    assert project.settings.celery.lost_step_after_s == 120
    executor = project.definitions().resolve_job_def("vod_video").executor_def
    assert executor.name == "mpegflow_celery"
    config = celery_executor_config(
        project.settings.celery
    )  # what the executor was configured with
    assert config["broker"] == "redis://10.0.0.5:6379/0"
    source = config["config_source"]
    assert source["task_acks_late"] and source["task_reject_on_worker_lost"]
    assert source["broker_transport_options"]["visibility_timeout"] == 120
    monkeypatch.setenv("MPEGFLOW_EXECUTOR", "threads")
    with pytest.raises(SpecError, match="'in_process' or 'celery'"):
        load_settings(ROOT / "resources" / "settings.yaml", ROOT)
