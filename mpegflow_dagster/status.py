"""One video at a glance: every stage's status in the latest runs that selected it, attempts,
failure class and reason, where it was delivered and its poster. Read back from the Dagster
instance (`why.explain`); printed by `mpegflow status` and put on the final asset `emit` as its
`summary` metadata."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from dagster import DagsterInstance, MetadataValue

from .events import entries
from .spec import PipelineSpec
from .stage import Context
from .why import explain

SUMMARY_KEY = "summary"  # metadata of `emit`: this summary as Markdown


def video_status(instance: DagsterInstance, spec: PipelineSpec, video: str) -> dict[str, Any]:
    """`video`'s stages as `mpegflow status --json` prints them."""
    report = explain(instance, spec, video)
    stages: dict[str, dict[str, Any]] = {}
    published: dict[str, str] = {}
    poster: Optional[str] = None
    for name, s in report["stages"].items():
        outcome = s["outcome"]
        status = outcome["status"]
        if status == "materialized" and outcome.get("reused"):
            status = "reused"
        row: dict[str, Any] = {"status": status, "run_id": outcome.get("run_id")}
        row["attempts"] = outcome.get("attempt", s.get("attempts"))
        for field in ("failure_class", "reason_code", "reason", "exit_code", "stderr_tail"):
            if field in outcome:
                row[field] = outcome[field]
        materialized = s.get("materialized")
        if materialized:
            row["path"] = materialized["path"]
            published.update(materialized["published"])
            poster = materialized.get("poster", poster)
        stages[name] = row
    return {
        "video": video,
        "pipeline": spec.name,
        "latest_run": report["latest_run"],
        "runs": report["runs"],
        "stages": stages,
        "published": dict(sorted(published.items())),
        "poster": poster,
    }


def summary_metadata(
    context: Context,
    facts: Mapping[str, Any],
    reused: bool,
    *,
    spec: PipelineSpec,
    stage: str,
) -> dict[str, MetadataValue]:
    """The `summary` of an emit stage while it records its output (its step has not ended): the
    current run's events so far and earlier materializations, with the stage itself materialized
    (or reused) in this run and what it published (`facts`) among the delivery URLs."""
    status = video_status(context.instance, spec, context.partition_key)
    status["stages"][stage] = {
        "status": "reused" if reused else "materialized",
        "run_id": context.run_id,
        "attempts": context.retry_number + 1,
    }
    status["published"] = dict(sorted({**status["published"], **entries(facts)}.items()))
    return {SUMMARY_KEY: MetadataValue.md(markdown(status))}


def _detail(row: Mapping[str, Any]) -> str:
    return str(row.get("reason") or row.get("path") or "").strip().split("\n")[0]


def render(status: Mapping[str, Any]) -> str:
    """A terminal view: one line per stage, then the delivery URLs and the poster."""
    latest = status["latest_run"] or {}
    lines = [
        f"{status['pipeline']} / {status['video']}: latest run {latest.get('run_id', '-')} "
        f"{latest.get('status', '')} ({status['runs']} run(s))",
        f"  {'stage':<18} {'status':<13} {'attempts':<9} {'run':<9} detail",
    ]
    for name, row in status["stages"].items():
        run = (row.get("run_id") or "-")[:8]
        attempts = row.get("attempts") if row.get("attempts") is not None else "-"
        lines.append(f"  {name:<18} {row['status']:<13} {attempts!s:<9} {run:<9} {_detail(row)}")
        if row.get("stderr_tail"):
            lines.extend(f"      | {line}" for line in row["stderr_tail"].splitlines()[-5:])
    for part, uri in status["published"].items():
        lines.append(f"published {part}: {uri}")
    if status.get("poster"):
        lines.append(f"poster: {_image_url(status['poster'])}")
    return "\n".join(lines)


def _image_url(markdown: str) -> str:
    """The URL of the first Markdown image in `markdown` (else the text as it is)."""
    found = re.search(r"!\[[^\]]*\]\(([^)\s]+)", markdown)
    return found.group(1) if found else markdown


def _cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def markdown(status: Mapping[str, Any]) -> str:
    """The same as a Markdown table (Dagster's UI renders MetadataValue.md), with the poster."""
    lines = [
        f"**{status['pipeline']} / {status['video']}**",
        "",
        "| stage | status | attempts | run | class: reason |",
        "|---|---|---|---|---|",
    ]
    for name, row in status["stages"].items():
        cause = row.get("reason") if row["status"] in ("failed", "not_run") else ""
        lines.append(
            f"| {name} | {row['status']} | {_cell(row.get('attempts'))} | "
            f"{_cell((row.get('run_id') or '')[:8])} | {_cell(cause)} |"
        )
    if status["published"]:
        lines += ["", "**Delivery**", ""]
        lines += [f"- {part}: {_cell(uri)}" for part, uri in status["published"].items()]
    if status.get("poster"):
        lines += ["", status["poster"]]
    return "\n".join(lines)
