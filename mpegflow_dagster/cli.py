"""`mpegflow`: run the whole graph for one video through Dagster, or make a sample clip."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from dagster import AssetKey, DagsterEventType, DagsterInstance, ExecuteInProcessResult, RunConfig, materialize

from .assets import IngestConfig, build_video_assets, partitions_for
from .media.synth import sample_with_captions
from .project import Project
from .spec import SpecError
from .videos import video_key


def _instance(project_root: Path) -> DagsterInstance:
    """DAGSTER_HOME if set, else `<project>/.dagster_home`, so `make dev` shows CLI runs."""
    if not os.environ.get("DAGSTER_HOME"):
        home = project_root / ".dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def _stage_report(result: ExecuteInProcessResult, asset_keys: Sequence[AssetKey], prefix: str) -> dict[str, dict[str, Any]]:
    materialized = {
        e.asset_key: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key is not None
    }
    step_status: dict[str, tuple[str, Optional[str]]] = {}
    for event in result.all_events:
        if event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_SUCCESS:
            step_status[event.step_key] = ("succeeded", None)
        elif event.event_type == DagsterEventType.STEP_SKIPPED:
            step_status[event.step_key] = ("skipped", "an upstream output was not produced")
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            message = (error.cause.message if error and error.cause else error.message if error else "").strip()
            step_status[event.step_key] = ("failed", message.splitlines()[0] if message else "failed")
    stages: dict[str, dict[str, Any]] = {}
    for key in asset_keys:
        name = key.path[-1]
        step = "__".join(key.path)
        entry: dict[str, Any] = {"asset_key": key.to_user_string()}
        if key in materialized:
            meta = materialized[key]
            entry["status"] = "materialized"
            for field in ("path", "sha256", "size_bytes", "resolution", "bitrate_kbps", "duration_s"):
                if field in meta:
                    entry[field] = meta[field].value
        else:
            status, reason = step_status.get(step, ("not_run", "an upstream stage failed"))
            entry["status"] = "skipped" if status == "succeeded" else status
            entry["reason"] = reason or "produced no output (nothing to do)"
        stages[name] = entry
    return stages


def cmd_run(args: argparse.Namespace) -> int:
    source = Path(args.source).resolve()
    if not source.is_file():
        print(f"mpegflow: source {args.source} does not exist or is not a file", file=sys.stderr)
        return 2
    root = Path(args.project).resolve()
    try:
        project = Project.load(root, [Path(args.spec)] if args.spec else None)
    except (SpecError, FileNotFoundError) as exc:
        print(f"mpegflow: {exc}", file=sys.stderr)
        return 2
    spec = project.spec(args.pipeline)
    out_dir = str(Path(args.out).resolve()) if args.out else project.settings.delivery_dir
    video = args.video or video_key(source.name)
    instance = _instance(root)
    assets = build_video_assets(spec)
    instance.add_dynamic_partitions(partitions_for(spec).name, [video])
    result = materialize(
        assets,
        instance=instance,
        partition_key=video,
        resources=project.resources(delivery_dir=out_dir),
        run_config=RunConfig(
            ops={f"{spec.name}__ingest": IngestConfig(source_path=str(source))},
            loggers={"console": {"config": {"log_level": args.log_level}}},
        ),
        tags={"mpegflow/video": video, "mpegflow/source": str(source)},
        raise_on_error=False,
    )
    keys = [k for a in assets for k in a.keys]
    stages = _stage_report(result, keys, spec.name)
    failed = [n for n, s in stages.items() if s["status"] in ("failed", "not_run")]
    master = Path(out_dir) / video / "hls" / "master.m3u8"
    report = {
        "video": video,
        "pipeline": spec.name,
        "status": "failed" if failed or not result.success else "succeeded",
        "run_id": result.run_id,
        "dagster_home": os.environ["DAGSTER_HOME"],
        "master_playlist": str(master) if stages.get("emit", {}).get("status") == "materialized" else None,
        "delivery_dir": str(Path(out_dir) / video),
        "stages": stages,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"\n{spec.name} / {video}: {report['status']} (run {result.run_id})")
        for name, s in stages.items():
            detail = s.get("path") or s.get("reason") or ""
            print(f"  {name:<18} {s['status']:<13} {detail}")
        if report["master_playlist"]:
            print(f"\nmaster playlist: {report['master_playlist']}")
        print(f"Dagster UI: `make dev`, then http://127.0.0.1:3000 (instance {report['dagster_home']})")
    return 0 if report["status"] == "succeeded" else 1


def cmd_sample(args: argparse.Namespace) -> int:
    clip = sample_with_captions(Path(args.directory), name=args.name, duration_s=args.duration, height=args.height)
    print(clip)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mpegflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="register a video and materialize its whole graph through Dagster")
    run.add_argument("source", help="source video file (a .srt/.vtt beside it is burned in)")
    run.add_argument("--spec", help="pipeline spec YAML (default: the first in resources/pipelines/)")
    run.add_argument("--pipeline", help="pipeline name, when the project has several specs")
    run.add_argument("--out", help="delivery directory (default: delivery_dir in resources/settings.yaml)")
    run.add_argument("--video", help="video id (partition key); default derived from the file name")
    run.add_argument("--project", default=".", help="project directory holding resources/ (default: .)")
    run.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    sample = sub.add_parser("sample", help="generate a test clip with a caption sidecar (FFmpeg lavfi)")
    sample.add_argument("directory")
    sample.add_argument("--name", default="sample")
    sample.add_argument("--duration", type=float, default=12.0)
    sample.add_argument("--height", type=int, default=1080)
    sample.set_defaults(func=cmd_sample)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
