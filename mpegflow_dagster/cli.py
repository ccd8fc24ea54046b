"""`mpegflow`: run the whole graph for one video through Dagster, redo chosen outputs of a video,
say why, serve the UI's previews, make a sample clip, or run a cluster on this machine."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlsplit

from dagster import DagsterInstance

from . import cluster
from .media.classify import classify_exception
from .media.synth import sample_with_captions
from .previews import server
from .project import Project
from .qc_report import check_results
from .qc_report import render as render_checks
from .runs import (
    fail_abandoned_runs,
    materialize_video,
    published_entries,
    run_status,
    stage_report,
)
from .spec import PipelineSpec
from .stage import videos_partitions_name
from .stages.toolkit import MediaRejected
from .status import render as render_status
from .status import video_status
from .survivor import watch_this_process
from .videos import video_key
from .webhooks.delivery import BackgroundDrain
from .webhooks.sensor import DELIVERY_SENSOR
from .why import explain, render


def _instance(project_root: Path) -> DagsterInstance:
    """DAGSTER_HOME if set, else `<project>/.dagster_home`, so `make dev` shows CLI runs.

    Opened under a lock on the home: on a new home, the first use creates the SQLite schema, and
    two processes doing it at once crash (`table ... already exists`) or leave the run database
    with two alembic heads, which every later command then refuses."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(project_root / ".dagster_home")
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".mpegflow-instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return DagsterInstance.get()  # builds every storage, and so its schema


def _source(name: str) -> Path:
    """The source as named (absolute, links not resolved: ingest judges a link where it stands)."""
    source = Path(name).absolute()
    if not os.path.lexists(source):
        raise MediaRejected(f"source {source} does not exist", reason="input.not_found")
    if source.is_dir():
        raise MediaRejected(
            f"source {source} is a directory, not a video file", reason="input.not_a_regular_file"
        )
    return source


def cmd_run(args: argparse.Namespace) -> int:
    source = _source(args.source)
    return _run(args, video=args.video or video_key(source.name), source=source, force=args.force)


def cmd_redo(args: argparse.Namespace) -> int:
    """The chosen outputs made again even when unchanged (from the source last ingested);
    everything else they read is reused."""
    return _run(args, video=args.video, stages=args.stages, force=True)


def _run(
    args: argparse.Namespace,
    *,
    video: str,
    force: bool,
    source: Optional[Path] = None,
    stages: Optional[Sequence[str]] = None,
) -> int:
    """One run of the pipeline's job for `video`, its webhooks delivered meanwhile, and the summary."""
    root = Path(args.project).resolve()
    project = Project.load(root, [Path(args.spec)] if args.spec else None)
    spec = project.spec(args.pipeline)
    out_dir = str(Path(args.out).resolve()) if args.out else project.settings.delivery_dir
    instance = _instance(root)
    if source is None and video not in instance.get_dynamic_partitions(
        videos_partitions_name(spec.name)
    ):
        raise MediaRejected(
            f"no video {video!r} in pipeline {spec.name} ({os.environ['DAGSTER_HOME']}): "
            "run `mpegflow run FILE` first",
            reason="input.unknown_video",
        )
    with project.events() as events:
        # Steps only queue webhook events; this thread POSTs them while the run goes.
        delivery = events.delivery()
        with BackgroundDrain(delivery) if delivery else contextlib.nullcontext() as drain:
            release = watch_this_process(os.environ["DAGSTER_HOME"], project.settings.work_dir)
            try:
                result = materialize_video(
                    project,
                    spec,
                    video,
                    instance=instance,
                    source=source,
                    delivery_dir=out_dir,
                    stages=stages,
                    force=force,
                    log_level=args.log_level,
                )
            finally:
                release()
            run = instance.get_run_by_id(result.run_id)
            selected = run.asset_selection if run and run.asset_selection else None
            report_stages = stage_report(
                result.all_events,
                spec,
                selected=list(selected or (k for a in project.assets(spec) for k in a.keys)),
            )
            queued = drain.finish(args.webhook_wait) if drain else []
            if queued:
                print(
                    f"mpegflow: {len(queued)} webhook event(s) not delivered yet (last error: "
                    f"{queued[0]['last_error']}); they stay queued in {events.outbox().path} for the next "
                    f"`mpegflow run`, or in a deployment (`make dev`) the {DELIVERY_SENSOR} sensor",
                    file=sys.stderr,
                )
    report = {
        "video": video,
        "pipeline": spec.name,
        "status": run_status(report_stages),
        "run_id": result.run_id,
        "dagster_home": os.environ["DAGSTER_HOME"],
        "published": published_entries(result.all_events),
        "delivery_dir": str(Path(out_dir) / video),
        "stages": report_stages,
        "webhooks_queued": len(queued),
    }
    _print_report(spec, report, as_json=args.json)
    return 0 if report["status"] == "succeeded" else 1


def _print_report(spec: PipelineSpec, report: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"\n{spec.name} / {report['video']}: {report['status']} (run {report['run_id']})")
    for name, s in report["stages"].items():
        detail = s.get("path") or s.get("reason") or ""
        status = "reused" if s.get("reused") else s["status"]  # materialized without running
        print(f"  {name:<18} {status:<13} {detail}")
    for part, uri in report["published"].items():
        print(f"published {part}: {uri}")
    print(f"Dagster UI: `make dev`, then http://127.0.0.1:3000 (instance {report['dagster_home']})")


def cmd_why(args: argparse.Namespace) -> int:
    root = Path(args.project).resolve()
    project = Project.load(root, [Path(args.spec)] if args.spec else None)
    instance = _instance(root)
    fail_abandoned_runs(instance)  # a run killed a moment ago shows as failed, not as running
    report = explain(
        instance,
        project.spec(args.pipeline),
        args.video,
        args.asset,
        work_dir=Path(project.settings.work_dir),
    )
    if report["runs"] == 0 and not any("materialized" in s for s in report["stages"].values()):
        raise MediaRejected(
            f"no run of video {args.video!r} in {os.environ['DAGSTER_HOME']}",
            reason="input.unknown_video",
        )
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    root = Path(args.project).resolve()
    project = Project.load(root, [Path(args.spec)] if args.spec else None)
    report = check_results(_instance(root), project.spec(args.pipeline), args.video)
    checks = [c for a in report["assets"].values() for c in a.values()]
    if all(c["status"] == "not_run" for c in checks):
        raise MediaRejected(
            f"no check of video {args.video!r} has run in {os.environ['DAGSTER_HOME']}",
            reason="input.unknown_video",
        )
    print(json.dumps(report, indent=2, default=str) if args.json else render_checks(report))
    return 1 if any(c["status"] == "failed" for c in checks) else 0


def cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.project).resolve()
    project = Project.load(root, [Path(args.spec)] if args.spec else None)
    instance = _instance(root)
    fail_abandoned_runs(instance)
    status = video_status(instance, project.spec(args.pipeline), args.video)
    if status["runs"] == 0 and all(s["status"] == "never_run" for s in status["stages"].values()):
        raise MediaRejected(
            f"no run of video {args.video!r} in {os.environ['DAGSTER_HOME']}",
            reason="input.unknown_video",
        )
    print(json.dumps(status, indent=2, default=str) if args.json else render_status(status))
    return 0 if all(s["status"] != "failed" for s in status["stages"].values()) else 1


def _error(args: argparse.Namespace, exc: Exception) -> int:
    """Any error of a command, classified like a stage's failure: one line on stderr and, under
    --json, a JSON report on stdout too. Exit status 2."""
    c = classify_exception(exc)
    print(f"mpegflow: {c.message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "status": "error",
                    "command": args.command,
                    "failure_class": c.failure_class,
                    "reason_code": c.reason,
                    "reason": c.message,
                },
                indent=2,
            )
        )
    return 2


def cmd_previews(args: argparse.Namespace) -> int:
    """Serve the previews directory until stopped (Ctrl-C or SIGTERM)."""
    settings = Project.load(Path(args.project).resolve()).settings.previews
    directory = Path(settings.dir)
    directory.mkdir(parents=True, exist_ok=True)
    port = args.port or urlsplit(settings.url).port or 3001
    with server(directory, args.host, port) as httpd:
        print(
            f"mpegflow: serving previews of {directory} on http://{args.host}:{port} "
            f"(the UI links them as {settings.url})",
            flush=True,
        )
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    clip = sample_with_captions(
        Path(args.directory),
        name=args.name,
        duration_s=args.duration,
        height=args.height,
        languages=[x for x in args.languages.split(",") if x],
    )
    print(clip)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.action == "up":
        options = cluster.ClusterOptions(
            workers=args.workers,
            max_concurrent_runs=args.max_concurrent_runs,
            ui_port=args.ui_port,
        )
        state = cluster.up(Path(args.project), directory, options)
        print(f"mpegflow: cluster up in {state.started_s:.1f} s\n{cluster.describe(state)}")
    elif args.action == "down":
        stopped = cluster.down(directory)
        print(f"mpegflow: stopped {', '.join(stopped)}" if stopped else "mpegflow: no cluster ran")
    elif args.action == "status":
        state = cluster.ClusterState.load(directory)
        print(cluster.describe(state))
        return 0 if all(state.alive().values()) else 1
    elif args.action == "env":
        print(cluster.worker_settings(cluster.ClusterState.load(directory)))
    else:
        return _submit(args, cluster.ClusterState.load(directory))
    return 0


def _submit(args: argparse.Namespace, state: cluster.ClusterState) -> int:
    if not args.source:
        raise ValueError("submit needs a video file: mpegflow cluster submit VIDEO")
    source = _source(args.source)
    if not source.is_file():
        raise MediaRejected(
            f"source {source} is not a regular file", reason="input.not_a_regular_file"
        )
    pipeline = Project.load(Path(state.project)).spec(args.pipeline).name
    run_key = cluster.upload(state, source, pipeline)
    print(f"mpegflow: uploaded {source.name} (run key {run_key}); waiting for its run", flush=True)
    run = cluster.wait_for_run(
        state,
        run_key,
        args.timeout,
        on_status=lambda r: print(f"mpegflow: run {r.run_id} {r.status.value}", flush=True),
    )
    return 0 if run.status.value == "SUCCESS" else 1


def _location_options(parser: argparse.ArgumentParser) -> None:
    """Which code location and pipeline a command reads, and its JSON output."""
    parser.add_argument(
        "--spec", help="pipeline spec YAML (default: the first in resources/pipelines/)"
    )
    parser.add_argument("--pipeline", help="pipeline name, when the project has several specs")
    parser.add_argument(
        "--project", default=".", help="project directory holding resources/ (default: .)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The options `run` and `redo` share."""
    _location_options(parser)
    parser.add_argument(
        "--out", help="delivery directory (default: delivery_dir in resources/settings.yaml)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--webhook-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after the run, keep delivering queued webhook events this long at most (default: 10)",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mpegflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="register a video and materialize its whole graph through Dagster"
    )
    run.add_argument("source", help="source video file (a .srt/.vtt beside it is burned in)")
    run.add_argument("--video", help="video id (partition key); default derived from the file name")
    run.add_argument(
        "--force",
        action="store_true",
        help="make every output again even when nothing changed (ffmpeg config force: true)",
    )
    _run_options(run)
    run.set_defaults(func=cmd_run)

    redo = sub.add_parser(
        "redo",
        help="make chosen outputs of a video again even when unchanged, reusing everything else",
    )
    redo.add_argument("video", help="video id (partition key) of a video run before")
    redo.add_argument(
        "stages", nargs="+", metavar="STAGE", help="asset names, e.g. rendition_720p thumbnails"
    )
    _run_options(redo)
    redo.set_defaults(func=cmd_redo)

    why = sub.add_parser(
        "why", help="what happened to a video: each stage's status, attempts, provenance"
    )
    why.add_argument("video", help="video id (partition key)")
    why.add_argument("asset", nargs="?", help="one asset name (e.g. rendition_720p); default: all")
    _location_options(why)
    why.set_defaults(func=cmd_why)

    qc = sub.add_parser(
        "qc",
        help="a video's quality checks: each check's latest result, its figures and floors",
    )
    qc.add_argument("video", help="video id (partition key)")
    _location_options(qc)
    qc.set_defaults(func=cmd_qc)

    status = sub.add_parser(
        "status",
        help="one video at a glance: every stage's status, attempts, failures, delivery URLs",
    )
    status.add_argument("video", help="video id (partition key)")
    _location_options(status)
    status.set_defaults(func=cmd_status)

    previews = sub.add_parser(
        "previews",
        help="serve the previews directory (the pictures in the Dagster UI) read-only over HTTP",
    )
    previews.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    previews.add_argument("--port", type=int, help="port (default: the port of previews.url, 3001)")
    previews.add_argument(
        "--project", default=".", help="project directory holding resources/ (default: .)"
    )
    previews.set_defaults(func=cmd_previews)

    sample = sub.add_parser(
        "sample", help="generate a test clip with a caption sidecar (FFmpeg lavfi)"
    )
    sample.add_argument("directory")
    sample.add_argument("--name", default="sample")
    sample.add_argument("--duration", type=float, default=12.0)
    sample.add_argument("--height", type=int, default=1080)
    sample.add_argument(
        "--languages",
        default="",
        help="e.g. en,fr: an audio stream and a subtitle sidecar per language (the first the "
        "default audio)",
    )
    sample.set_defaults(func=cmd_sample)

    grid = sub.add_parser(
        "cluster",
        help="a Dagster cluster on this machine: Postgres, Redis, S3 (moto), Celery workers, "
        "daemon and UI (docs/cluster.md)",
    )
    grid.add_argument("action", choices=["up", "down", "status", "submit", "env"])
    grid.add_argument("source", nargs="?", help="submit: the video file to upload")
    grid.add_argument(
        "--dir", default=".cluster", help="the cluster's data and logs (default: .cluster)"
    )
    grid.add_argument("--project", default=".", help="up: the code location (default: .)")
    grid.add_argument("--workers", type=int, default=2, help="up: Celery workers (default: 2)")
    grid.add_argument(
        "--max-concurrent-runs", type=int, default=2, help="up: the run queue's limit (default: 2)"
    )
    grid.add_argument("--ui-port", type=int, default=3000, help="up: the UI's port (default: 3000)")
    grid.add_argument("--pipeline", help="submit: the pipeline (default: the first)")
    grid.add_argument(
        "--timeout", type=float, default=3600.0, help="submit: wait this long for the run (s)"
    )
    grid.set_defaults(func=cmd_cluster)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 -- every error reaches the user as a classified report
        return _error(args, exc)


if __name__ == "__main__":
    sys.exit(main())
