"""Events with exactly-once meaning, on real runs: ids from what an event announces, nothing new
from a run that changed nothing, outcome events from the run itself (no daemon, no sensor), a
maintenance run that announces only what it made, and forcing as a launch option."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    instance_for_test,
    validate_run_config,
)
from http_receiver import Receiver
from pipeline_helpers import (
    BIN,
    ROOT,
    cli_env,
    project_with_broken,
    run_cli,
    temp_project,
)

from mpegflow_dagster.events import Event, JsonlEventSink
from mpegflow_dagster.project import Project
from mpegflow_dagster.runs import materialize_video, stage_report

pytestmark = pytest.mark.pipeline

SECRET = "whsec-events-test"
NO_PROXY = {
    n: ""
    for n in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
}
WARNING = re.compile(r"\b(BetaWarning|SupersessionWarning|PreviewWarning)\b")


def events_at(path: Path) -> list[dict]:
    return JsonlEventSink(path).read()


def with_events_file(project: Project, path: Path) -> Project:
    """The same project whose events go to `path`: what one run sends, seen on its own."""
    settings = project.settings.model_copy(update={"events_path": str(path)})
    return project.model_copy(update={"settings": settings})


def test_id_names_the_fact_not_the_run() -> None:
    def ready(run_id: str, version: str, **kw) -> Event:
        return Event(
            type="rendition.ready",
            pipeline="vod",
            video="clip",
            run_id=run_id,
            subject="720p",
            version=version,
            message="720p ready",
            **kw,
        )

    first = ready("run-1", "ab" * 32)
    assert (
        ready("run-2", "ab" * 32, time=first.time + 3600).id == first.id
    )  # a later run, a re-send
    assert ready("run-1", "cd" * 32).id != first.id  # other bytes: another fact
    assert first.to_dict()["run_id"] == "run-1"  # the run is data, not identity


def test_jsonl_sink_drops_a_repeat_anywhere_in_the_file(tmp_path: Path) -> None:
    """A repeat may come weeks later (the same failure again): not only the file's tail is searched."""
    sink = JsonlEventSink(tmp_path / "events.jsonl")
    first = Event(
        type="video.failed", pipeline="vod", video="v", run_id="r1", message="m", version="x"
    )
    sink.send(first)
    with open(sink.path, "a") as fh:  # 3 MB of other events after it
        for i in range(3000):
            other = Event(
                type="rendition.ready",
                pipeline="vod",
                video=f"v{i}",
                run_id="r",
                message="m" * 1000,
            )
            fh.write(json.dumps(other.to_dict(), sort_keys=True) + "\n")
    size = sink.path.stat().st_size
    assert size > 3_000_000
    sink.send(
        Event(type="video.failed", pipeline="vod", video="v", run_id="r9", message="m", version="x")
    )
    assert sink.path.stat().st_size == size
    sink.send(
        Event(type="video.failed", pipeline="vod", video="v", run_id="r9", message="m", version="y")
    )
    assert sink.path.stat().st_size > size


# -- in process: outcomes from the run, ids across a restart, a one-rendition redo -------------


@pytest.fixture(scope="module")
def first_run(make_source, tmp_path_factory):
    base = tmp_path_factory.mktemp("events")
    project = temp_project(base)
    source = make_source("clip", duration_s=2.0, width=320, height=180, captions=True)
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "clip", instance=instance, source=source
        )
        yield {
            "project": project,
            "instance": instance,
            "result": result,
            "source": source,
            "events": events_at(Path(project.settings.events_path)),
        }


def test_a_run_announces_its_outputs_and_its_success_itself(first_run) -> None:
    assert first_run["result"].success
    events = first_run["events"]
    assert {e["run_id"] for e in events} == {first_run["result"].run_id}
    assert [e["type"] for e in events].count("video.succeeded") == 1
    [succeeded] = [e for e in events if e["type"] == "video.succeeded"]
    [published] = [e for e in events if e["type"] == "video.published" and e["subject"] == "emit"]
    assert succeeded["version"] == published["version"] == published["data"]["sha256"]
    assert "degraded" not in succeeded["data"]
    assert succeeded["data"]["published"]["hls"].endswith("clip/hls/master.m3u8")
    ready = {e["subject"]: e for e in events if e["type"] == "rendition.ready"}
    assert sorted(ready) == ["1080p", "240p", "480p", "720p"]
    assert all(e["version"] == e["data"]["sha256"] for e in ready.values())


def test_a_restart_that_lost_its_state_sends_the_same_ids(first_run, tmp_path) -> None:
    """Another instance and storage, publishing to the same place, make the same bytes again:
    every event keeps its id."""
    project = temp_project(tmp_path)
    delivery = first_run["project"].settings.delivery_dir
    project = project.model_copy(
        update={"settings": project.settings.model_copy(update={"delivery_dir": delivery})}
    )
    with instance_for_test() as instance:
        again = materialize_video(
            project, project.spec(), "clip", instance=instance, source=first_run["source"]
        )
    assert again.success and again.run_id != first_run["result"].run_id
    second = events_at(Path(project.settings.events_path))

    def ids(events: list[dict]) -> dict[tuple[str, str], str]:
        return {(e["type"], e["subject"] or ""): e["id"] for e in events}

    assert len(second) == len(first_run["events"]) and ids(second) == ids(first_run["events"])


def test_one_rendition_redone_announces_that_rendition_only(first_run, tmp_path) -> None:
    project, instance = first_run["project"], first_run["instance"]
    alone = with_events_file(project, tmp_path / "redo.jsonl")
    result = materialize_video(
        alone, project.spec(), "clip", instance=instance, stages=["rendition_720p"], force=True
    )
    [made] = result.get_asset_materialization_events()
    meta = made.step_materialization_data.materialization.metadata
    assert made.asset_key == AssetKey(["vod", "rendition_720p"]) and not meta["reused"].value
    sent = events_at(tmp_path / "redo.jsonl")
    assert [(e["type"], e["subject"]) for e in sent] == [("rendition.ready", "720p")]
    # The same bytes again (threads: 1): the same event, which the first run's file already has.
    [before] = [
        e for e in first_run["events"] if e["type"] == "rendition.ready" and e["subject"] == "720p"
    ]
    assert sent[0]["id"] == before["id"] and sent[0]["run_id"] == result.run_id
    assert events_at(Path(project.settings.events_path)) == first_run["events"]


def test_an_unchanged_rerun_publishes_and_announces_nothing(first_run, tmp_path) -> None:
    project, instance = first_run["project"], first_run["instance"]
    delivered = Path(project.settings.delivery_dir) / "clip" / "hls" / "master.m3u8"
    published_at = delivered.stat().st_mtime_ns
    rerun = with_events_file(project, tmp_path / "rerun.jsonl")
    result = materialize_video(rerun, project.spec(), "clip", instance=instance)
    report = stage_report(result.all_events, project.spec())
    assert result.success and all(s.get("reused") for s in report.values()), report
    assert delivered.stat().st_mtime_ns == published_at  # not published again
    assert events_at(tmp_path / "rerun.jsonl") == []


def test_emit_publishes_again_when_the_delivery_lost_a_part(first_run, tmp_path) -> None:
    project, instance = first_run["project"], first_run["instance"]
    master = Path(project.settings.delivery_dir) / "clip" / "hls" / "master.m3u8"
    master.unlink()
    result = materialize_video(
        with_events_file(project, tmp_path / "repair.jsonl"),
        project.spec(),
        "clip",
        instance=instance,
    )
    report = stage_report(result.all_events, project.spec())
    assert report["emit"]["status"] == "materialized" and not report["emit"]["reused"]
    assert report["hls"]["reused"] and master.exists()
    # The same publication as before (same manifest bytes): the same events, nothing new.
    sent = events_at(tmp_path / "repair.jsonl")
    assert sorted(e["type"] for e in sent) == ["video.published", "video.succeeded"]
    before = {e["id"] for e in first_run["events"]}
    assert {e["id"] for e in sent} <= before


def test_a_failed_stage_sends_video_failed_from_the_run_and_a_redo_does_not(
    tmp_path, make_source
) -> None:
    """No daemon, no sensor: the stage's failure hook sends it, once per distinct failure."""
    project = project_with_broken(tmp_path, {"480p"})
    spec = project.spec()
    source = make_source("clip", duration_s=2.0, width=320, height=180)
    with instance_for_test() as instance:
        result = materialize_video(project, spec, "clip", instance=instance, source=source)
        assert not result.success
        events = events_at(Path(project.settings.events_path))
        [failed] = [e for e in events if e["type"] == "video.failed"]
        assert failed["run_id"] == result.run_id
        assert failed["data"]["failed"] == ["rendition_480p"]
        assert failed["data"]["failure_class"] == "permanent"
        assert failed["data"]["reason"].startswith("config.")
        assert {"hls", "emit"} <= set(failed["data"]["not_run"])
        assert "video.succeeded" not in [e["type"] for e in events]

        again = materialize_video(project, spec, "clip", instance=instance, source=source)
        assert again.run_id != result.run_id
        assert events_at(Path(project.settings.events_path)) == events  # the same failure, same ids

        redo = with_events_file(project, tmp_path / "redo.jsonl")
        materialize_video(redo, spec, "clip", instance=instance, stages=["rendition_480p"])
        assert [e["type"] for e in events_at(tmp_path / "redo.jsonl")] == ["rendition.failed"]


def test_a_partial_ladder_succeeds_degraded(tmp_path, make_source) -> None:
    project = project_with_broken(tmp_path, {"480p"}, hls={"segment_s": 4, "min_renditions": 3})
    with instance_for_test() as instance:
        result = materialize_video(
            project,
            project.spec(),
            "clip",
            instance=instance,
            source=make_source("clip", duration_s=2.0, width=320, height=180),
        )
    events = events_at(Path(project.settings.events_path))
    [succeeded] = [e for e in events if e["type"] == "video.succeeded"]
    assert succeeded["run_id"] == result.run_id
    assert succeeded["data"]["degraded"] == ["rendition_480p"]
    assert succeeded["message"] == "video clip published without: rendition_480p"
    assert "video.failed" not in [e["type"] for e in events]


# -- the CLI: run, re-run, redo, `dagster asset materialize` with force --------------------------


def last_materialization(home: Path, name: str) -> dict:
    with DagsterInstance.from_config(str(home)) as instance:
        [record] = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=["clip"]),
            limit=1,
        ).records
        assert record.asset_materialization is not None
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def cli(make_source, tmp_path_factory):
    """`mpegflow run` twice, `dagster asset materialize` without and with the force config and
    `mpegflow redo`, on one instance, with webhooks to a real receiver."""
    base = tmp_path_factory.mktemp("cli-events")
    source = make_source("clip", duration_s=2.0, width=320, height=180, captions=True)
    env = {
        "MPEGFLOW_WEBHOOK_SECRET": SECRET,
        "MPEGFLOW_DELIVERY_DIR": str(base / "out"),
        **NO_PROXY,
    }
    seen: dict = {"base": base}
    with Receiver() as receiver:
        env["MPEGFLOW_WEBHOOK_URL"] = receiver.url

        def run(*args: str) -> subprocess.CompletedProcess:
            proc = run_cli(list(args), base, **env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            return proc

        def dagster_materialize(*args: str) -> subprocess.CompletedProcess:
            proc = subprocess.run(
                [str(BIN / "dagster"), "asset", "materialize", "-f", "definitions.py", *args],
                cwd=ROOT,
                env={**cli_env(base, **env), "DAGSTER_DISABLE_TELEMETRY": "1"},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            return proc

        seen["first"] = run("run", str(source), "--json")
        seen["after_first"] = (events_at(base / "events.jsonl"), len(receiver.requests))
        seen["second"] = run("run", str(source), "--json")
        seen["after_second"] = (events_at(base / "events.jsonl"), len(receiver.requests))
        select = ["--select", "vod/rendition_240p", "--partition", "clip"]
        dagster_materialize(*select)
        seen["plain"] = last_materialization(base / "home", "rendition_240p")
        force = base / "force.yaml"
        force.write_text("resources:\n  ffmpeg:\n    config:\n      force: true\n")
        dagster_materialize(*select, "-c", str(force))
        seen["forced"] = last_materialization(base / "home", "rendition_240p")
        seen["redo"] = run("redo", "clip", "rendition_480p", "thumbnails")
        seen["after_redo"] = (events_at(base / "events.jsonl"), len(receiver.requests))
        seen["bad_stage"] = run_cli(["redo", "clip", "rendition_999p"], base, **env)
        with DagsterInstance.from_config(str(base / "home")) as instance:
            seen["runs"] = [(r.job_name, dict(r.tags)) for r in instance.get_runs()]
    yield seen


def test_cli_runs_are_named_by_pipeline_and_video(cli) -> None:
    report = json.loads(cli["first"].stdout)
    assert report["status"] == "succeeded"
    ours = [(job, tags) for job, tags in cli["runs"] if tags.get("mpegflow/video")]
    assert len(ours) == 3  # run, run, redo (`dagster asset materialize` runs Dagster's own job)
    for job, tags in ours:
        assert job == "vod_video"
        assert tags["dagster/partition"] == tags["mpegflow/video"] == "clip"


def test_cli_prints_no_dagster_warnings(cli) -> None:
    for name in ("first", "second", "redo"):
        assert not WARNING.findall(cli[name].stderr), (name, cli[name].stderr[-2000:])


def test_cli_unchanged_rerun_writes_no_event_and_queues_no_webhook(cli) -> None:
    events, delivered = cli["after_first"]
    assert events and delivered == len(events)  # each event POSTed once during the first run
    assert cli["after_second"] == (events, delivered)
    report = json.loads(cli["second"].stdout)
    assert all(s.get("reused") for s in report["stages"].values()), report["stages"]
    assert report["webhooks_queued"] == 0


def test_dagster_asset_materialize_reencodes_with_the_force_config(cli) -> None:
    assert cli["plain"]["reused"] is True
    assert cli["forced"]["reused"] is False and cli["forced"]["wall_s"] > 0
    assert cli["forced"]["sha256"] == cli["plain"]["sha256"]  # pinned: the same bytes again


def test_cli_redo_remakes_the_chosen_outputs_and_announces_nothing_new(cli) -> None:
    out = cli["redo"].stdout
    assert re.search(r"rendition_480p\s+materialized", out)
    assert re.search(r"thumbnails\s+materialized", out)
    assert re.search(r"rendition_720p\s+not_selected", out) and re.search(
        r"emit\s+not_selected", out
    )
    assert "Dagster UI:" in out
    # Same bytes again: same ids, so no new line and no new delivery.
    assert cli["after_redo"] == cli["after_first"]


def test_cli_redo_of_an_unknown_stage_or_video_is_an_error(cli, tmp_path) -> None:
    assert cli["bad_stage"].returncode == 2
    assert "no stage vod/rendition_999p in pipeline vod; known: " in cli["bad_stage"].stderr
    proc = run_cli(["redo", "nosuch", "rendition_720p"], tmp_path)
    assert proc.returncode == 2 and "no video 'nosuch'" in proc.stderr


def test_force_is_a_launch_option_of_the_pipeline_job_and_the_asset_job(monkeypatch) -> None:
    """What the launchpad validates (the asset's Materialize and the `vod_video` job alike)."""
    monkeypatch.delenv("MPEGFLOW_WEBHOOK_URL", raising=False)
    defs = Project.load(ROOT).definitions()
    force = {"resources": {"ffmpeg": {"config": {"force": True}}}}
    job = defs.resolve_job_def("vod_video")
    assert job.partitions_def is not None and job.partitions_def.name == "vod_videos"
    for launched in (job, defs.resolve_implicit_global_asset_job_def()):
        assert validate_run_config(launched, force)["resources"]["ffmpeg"]["config"]["force"]
    described = job.run_config_schema.config_type.fields["resources"].config_type.fields["ffmpeg"]
    assert "launchpad" in str(
        described.config_type.fields["config"].config_type.fields["force"].description
    )
