"""`mpegflow why`: the resolved graph of one video, read back from the Dagster instance.

For each stage: its outcome in the newest run that selected it (`runs.latest_reports`), its
step's status in the latest run of the video, start/end, attempts, and from its latest
materialization the provenance record (encoder build, argv, preset, input and output hashes),
each FFmpeg command cut to this output's own part, and the upstream materializations it
consumed; for a failed stage, the failure class, reason and exit code.
"""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, RunsFilter

from .assets import build_video_assets
from .dagster_private import data_provenance, data_version
from .events import entries
from .media.commands import output_part, split_outputs
from .outcomes import PARTITION_TAG
from .runs import latest_reports
from .spec import PipelineSpec, SpecError
from .stage import step_keys, step_node


def utc_time(ts: Optional[float]) -> Optional[str]:
    """An epoch time as ISO 8601 in UTC, to the second (None for none)."""
    return (
        dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None
    )


def explain(
    instance: DagsterInstance,
    spec: PipelineSpec,
    video: str,
    asset: Optional[str] = None,
    work_dir: Optional[Path] = None,
) -> dict[str, Any]:
    """Everything known about `video` in pipeline `spec` (or one `asset` of it). With the
    scratch root `work_dir`, each output's own part of its FFmpeg runs (`output_commands`)."""
    steps_of = step_keys(build_video_assets(spec))
    keys = [k for k in steps_of if asset is None or k.path[-1] == asset]
    if not keys:
        raise SpecError(f"pipeline {spec.name} has no asset {asset!r}")
    runs = instance.get_runs(RunsFilter(tags={PARTITION_TAG: video}), limit=50)
    steps: dict[str, Any] = {}
    failures: dict[str, dict[str, Any]] = {}
    for run in reversed(runs):  # oldest first: newer runs overwrite what they touched
        # by node, the step that started last deciding (a graph's main step, after its work steps)
        stats = instance.get_run_step_stats(run.run_id)
        for stat in sorted(stats, key=lambda s: s.start_time or 0.0):
            steps[step_node(stat.step_key)] = (run.run_id, stat)
        for record in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE):
            event = record.dagster_event
            data = event.step_failure_data if event else None
            if event and event.step_key and data and data.user_failure_data:
                meta = {
                    k: v.value
                    for k, v in data.user_failure_data.metadata.items()
                    if k != "stderr_tail"
                }
                failures[step_node(event.step_key)] = {
                    "run_id": run.run_id,
                    "description": data.user_failure_data.description,
                    **meta,
                }
    outcomes = latest_reports(instance, spec, runs)
    stages: dict[str, Any] = {}
    for key in keys:
        step_key = steps_of[key]
        entry: dict[str, Any] = {
            "asset_key": key.to_user_string(),
            # the asset's own part of its step: outputs of one step fail or succeed apart
            "outcome": outcomes.get(key.path[-1], {"status": "never_run"}),
        }
        if step_key in steps:
            run_id, stat = steps[step_key]
            entry.update(
                status=stat.status.value.lower() if stat.status else "unknown",
                run_id=run_id,
                start=utc_time(stat.start_time),
                end=utc_time(stat.end_time),
                attempts=stat.attempts,
            )
            if stat.status and stat.status.value == "FAILURE" and step_key in failures:
                entry["failure"] = failures[step_key]
        else:
            entry["status"] = "never_run"
        entry.update(_materialization(instance, key, video, work_dir))
        stages[key.path[-1]] = entry
    latest = runs[0] if runs else None
    return {
        "video": video,
        "pipeline": spec.name,
        "pipeline_description": spec.description,
        "runs": len(runs),
        "latest_run": {"run_id": latest.run_id, "status": latest.status.value.lower()}
        if latest
        else None,
        "stages": stages,
    }


def _materialization(
    instance: DagsterInstance, key: AssetKey, video: str, work_dir: Optional[Path]
) -> dict[str, Any]:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[video]), limit=1
    ).records
    record = records[0] if records else None
    mat = record.asset_materialization if record else None
    if record is None or mat is None:
        return {}
    meta = mat.metadata
    provenance = data_provenance(record)
    upstream = {}
    for upstream_key, storage_id in (provenance.input_storage_ids if provenance else {}).items():
        found = (
            instance.fetch_materializations(
                AssetRecordsFilter(asset_key=upstream_key, storage_ids=[storage_id]), limit=1
            ).records
            if storage_id
            else []
        )
        up = found[0] if found else None
        upstream[upstream_key.to_user_string()] = {
            "storage_id": storage_id,
            "run_id": up.run_id if up else None,
            "sha256": up.asset_materialization.metadata["sha256"].value
            if up and up.asset_materialization and "sha256" in up.asset_materialization.metadata
            else None,
        }
    values: dict[str, Any] = {k: v.value for k, v in meta.items()}
    return {
        "materialized": {
            "run_id": record.run_id,
            "at": utc_time(record.timestamp),
            "path": meta["path"].value if "path" in meta else None,
            "published": entries(values),  # what an emit stage published, by part
            **({"poster": values["poster"]} if "poster" in values else {}),
            "sha256": meta["sha256"].value if "sha256" in meta else None,
            "data_version": data_version(record),
            "code_version": provenance.code_version if provenance else None,
            "provenance": meta["provenance"].value if "provenance" in meta else None,
            "commands": output_commands(
                values.get("provenance") or {}, values.get("path"), work_dir
            ),
            "consumed": upstream,
        }
    }


def output_commands(
    provenance: Mapping[str, Any], stored: Optional[str], work_dir: Optional[Path]
) -> list[list[str]]:
    """Each FFmpeg run of an output (its provenance `argv`) cut to the output's own part: one run
    of the encode step makes every rendition, so its argv holds every output. The scratch paths
    in it, deleted after the run, are shown as the stored artifact (`stored`, its metadata
    `path`) or, for intermediate files, `<scratch>/<name>`. The full argv stays in provenance.

    Which outputs of a run are this one's: those written into its own scratch directory
    (`<work_dir>/<asset>.<video>.<id>`), and in shared scratch (time chunks, their audio) those
    named after it (`240p.mp4` and `240p.m4a` for `240p.mp4`, `thumbnails/` for `thumbnails`);
    a run of one output is all its own."""
    asset = str(provenance.get("asset", ""))
    name = PurePosixPath(str(stored)).name if stored else None
    root = str(work_dir.resolve()) + "/" if work_dir else None

    def scratch(token: str) -> Optional[PurePosixPath]:
        path = token.removeprefix("file:")
        return PurePosixPath(path[len(root) :]) if root and path.startswith(root) else None

    def mine(rel: PurePosixPath) -> bool:
        return rel.parts[0].startswith(f"{asset}.")

    def shown(token: str) -> str:
        rel = scratch(token)
        if rel is None:
            return token
        prefix = "file:" if token.startswith("file:") else ""
        if mine(rel) and len(rel.parts) > 1:
            rest = "/".join(rel.parts[1:])
            return prefix + (
                f"{str(stored).rsplit('/', 1)[0]}/{rest}" if stored else f"<output>/{rest}"
            )
        return f"{prefix}<scratch>/{rel.name}"

    stem = PurePosixPath(name).stem if name else None

    def own(output: str) -> bool:
        rel = scratch(output)
        return rel is not None and (
            mine(rel) or any(PurePosixPath(part).stem == stem for part in rel.parts[1:])
        )

    found = []
    for argv in provenance.get("argv", []):
        # a run of one output, in this output's record, is all its own
        part = argv if len(split_outputs(argv)[1]) == 1 else output_part(argv, own)
        if part is not None:
            found.append([shown(token) for token in part])
    return found


def render(report: dict[str, Any]) -> str:
    """A terminal view: one block per stage."""
    lines = [
        f"{report['pipeline']} / {report['video']}: {report['runs']} run(s); latest "
        f"{(report['latest_run'] or {}).get('run_id', '-')} {(report['latest_run'] or {}).get('status', '')}",
        *([f"({report['pipeline_description']})"] if report.get("pipeline_description") else []),
    ]
    for name, s in report["stages"].items():
        outcome = s["outcome"]
        lines.append(
            f"\n{name}: {outcome['status']}"
            + (
                f"  step {s['status']} {s.get('start')} -> {s.get('end')}, attempts {s.get('attempts')}"
                if s.get("start")
                else ""
            )
        )
        if outcome["status"] == "failed":
            lines.append(
                f"  failed: {outcome['reason']}"
                + (
                    f" (exit {outcome['exit_code']})"
                    if outcome.get("exit_code") is not None
                    else ""
                )
            )
        m = s.get("materialized")
        if m:
            prov = m.get("provenance") or {}
            enc = prov.get("encoder", {})
            lines.append(
                f"  stored   {m['path']}  sha256 {str(m['sha256'])[:16]}...  (run {m['run_id'][:8]}, {m['at']})"
            )
            if enc:
                lines.append(
                    f"  encoder  ffmpeg {enc.get('ffmpeg_version')} build {enc.get('ffmpeg_build_hash')}"
                    + "".join(f", {k} {v}" for k, v in prov.get("encoder_libraries", {}).items())
                    + (f", pinned {enc['pinned']}" if enc.get("pinned") else "")
                )
            if prov.get("preset"):
                lines.append(
                    f"  preset   {prov['preset']}  stage {prov.get('stage_fingerprint')}  recipe {prov.get('recipe')}"
                )
            if prov.get("reused_from_run"):
                lines.append(
                    f"  reused   output of run {prov['reused_from_run']} (nothing changed)"
                )
            for upstream, u in m["consumed"].items():
                lines.append(
                    f"  consumed {upstream} sha256 {str(u['sha256'])[:16]}... (run {str(u['run_id'])[:8]})"
                )
            for argv in m["commands"]:  # this output's part of each run (provenance: all)
                lines.append("  argv     " + shlex.join(argv))
    return "\n".join(lines)
