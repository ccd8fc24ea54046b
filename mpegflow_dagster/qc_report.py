"""The checks' latest results for one video, read back from Dagster (`mpegflow qc VIDEO`)."""

from __future__ import annotations

from typing import Any

from dagster import DagsterInstance

from .assets import build_video_assets
from .dagster_private import latest_checks
from .spec import PipelineSpec
from .why import utc_time


def check_results(instance: DagsterInstance, spec: PipelineSpec, video: str) -> dict[str, Any]:
    """Every check of the pipeline's assets with its latest evaluation for `video`: status
    (passed, failed, not_run), severity, the description (the figure and its floor) and metadata."""
    specs = {s.key: s for a in build_video_assets(spec) for s in a.check_specs}
    keys = sorted(specs, key=lambda k: (k.asset_key.to_user_string(), k.name))
    latest = latest_checks(instance, keys, video)
    assets: dict[str, dict[str, Any]] = {}
    for key in keys:
        record = latest.get(key)
        entry: dict[str, Any] = {"status": "not_run"}
        evaluation = (
            record.event.dagster_event.asset_check_evaluation_data
            if record and record.event and record.event.dagster_event
            else None
        )
        if record is not None and evaluation is not None:  # a planned, never run check has none
            entry = {
                "status": "passed" if evaluation.passed else "failed",
                "severity": evaluation.severity.value.lower(),
                "blocking": specs[key].blocking,
                "description": evaluation.description,
                "run_id": record.run_id,
                "at": utc_time(record.create_timestamp),
                "metadata": {k: v.value for k, v in evaluation.metadata.items()},
            }
        assets.setdefault(key.asset_key.path[-1], {})[key.name] = entry
    return {"video": video, "pipeline": spec.name, "assets": assets}


def render(report: dict[str, Any]) -> str:
    """A terminal view: one line per check, its asset first."""
    lines = [f"{report['pipeline']} / {report['video']}: checks"]
    for asset, checks in report["assets"].items():
        lines.append(f"\n{asset}")
        for name, c in checks.items():
            status = c["status"] if c["status"] != "failed" else f"FAILED ({c['severity']})"
            lines.append(f"  {name:<22} {status:<16} {c.get('description') or ''}")
    return "\n".join(lines)
