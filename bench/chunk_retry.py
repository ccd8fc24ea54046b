"""Localized retry (issue 18): what a chunk's FFmpeg SIGKILLed late costs in extra work.

For a clean 1080p30 source (120 s by default: four 30 s chunks), in each step layout (the local
default, `chunk_steps: 0`, chunks inside the encode step; `chunk_steps: 2`, two chunk-batch
steps, here run by the in-process executor; and `cluster`, `mpegflow_dagster.cluster` with two
Celery workers, whose two batch steps pass their pieces through S3), runs the shipped pipeline
twice through Dagster with an FFmpeg wrapper that logs each process's CPU and wall (on the
cluster, each run on a cluster of its own, so nothing of the first is reused):

  clean   a forced run that never fails;
  killed  the same, with the last chunk's FFmpeg SIGKILLed (as the OOM killer would) at 80 % of
          the wall it took in the clean run; the spec's retry policy runs it again.

Extra work = the killed run's FFmpeg CPU minus the clean run's; the goal is at most 1.2x that
chunk's own FFmpeg CPU (in the clean run). Before chunks survived a retry, the whole encode was
done again. Prints a table and writes bench/chunk_retry.json.

    .venv/bin/python bench/chunk_retry.py               # 120 s source
    .venv/bin/python bench/chunk_retry.py --duration 60 # quicker: two chunks
    .venv/bin/python bench/chunk_retry.py --layouts cluster
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import Optional, Sequence

from dagster import DagsterEvent, DagsterRunStatus
from ladder import BENCH, ROOT, WORK, bench_project, cached_clip, local_instance, log, measured

from mpegflow_dagster import cluster
from mpegflow_dagster.project import Project
from mpegflow_dagster.runs import materialize_video, stage_report

RESULTS = BENCH / "chunk_retry.json"
GOAL = 1.2  # extra FFmpeg CPU / the killed chunk's own
KILL_AT = 0.8  # of the chunk's clean wall


def wrapper(base: Path, log_file: Path, target: str, kill_after: Optional[float]) -> Path:
    """FFmpeg that logs `<seek or label> <cpu_s> <wall_s>` per process; with `kill_after`, the
    first x264 run seeking to `target` is SIGKILLed that many seconds in."""
    marker = base / "killed"
    kill = (
        f"""if [[ "$*" == *libx264* && "$*" == *" -ss {target} "* && ! -e {marker} ]]; then
  touch {marker}; ffmpeg "$@" & pid=$!; sleep {kill_after}; kill -9 $pid; wait $pid
  times > {base}/times.$$; echo "killed $(tail -1 {base}/times.$$)" >> {log_file}; kill -9 $$
fi"""
        if kill_after is not None
        else ""
    )
    script = base / "ffmpeg-logged"
    script.write_text(
        f"""#!/bin/bash
[[ "$*" == *-version* ]] && exec ffmpeg "$@"
what=$(echo "$*" | grep -o -- "-ss [0-9.]*" | head -1 | tr -d ' ')
[[ "$*" == *libx264* ]] || what="other"
[[ -n "$what" ]] || what="whole"  # x264 over the whole source: it was not cut
{kill}
start=$(date +%s.%N); ffmpeg "$@"; rc=$?; end=$(date +%s.%N)
times > {base}/times.$$  # in this shell: a pipe or $(...) would report a subshell's children
echo "$what $(tail -1 {base}/times.$$) $start $end" >> {log_file}; rm -f {base}/times.$$
exit $rc
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)m([\d.]+)s", text)
    assert m, text
    return int(m.group(1)) * 60 + float(m.group(2))


def parse(log_file: Path) -> list[dict]:
    """One entry per FFmpeg process: what it was, its CPU (children user+sys of the wrapper), wall."""
    found = []
    for line in log_file.read_text().splitlines():
        parts = line.split()
        entry = {"what": parts[0], "cpu_s": seconds(parts[1]) + seconds(parts[2])}
        if len(parts) == 5:
            entry["wall_s"] = float(parts[4]) - float(parts[3])
        found.append(entry)
    return found


def one_run(
    layout: str, src: Path, base: Path, target: str, kill_after: Optional[float]
) -> tuple[dict, list[dict]]:
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log_file = base / "ffmpeg.log"
    project = bench_project(base)
    # the cluster's workers get this process's environment
    os.environ["MPEGFLOW_FFMPEG"] = str(wrapper(base, log_file, target, kill_after))
    try:
        if layout == "cluster":
            rec, events = cluster_run(src, base)
        else:
            rec, events = local_run(project, int(layout), src, base)
    finally:
        del os.environ["MPEGFLOW_FFMPEG"]
    report = stage_report(events, project.spec())
    rec["rendition_sha256"] = {
        n: r.get("sha256") for n, r in report.items() if n.startswith("rendition_")
    }
    return rec, parse(log_file)


def local_run(
    project: Project, chunk_steps: int, src: Path, base: Path
) -> tuple[dict, list[DagsterEvent]]:
    """A forced run in process, with `chunk_steps`; its figures and events."""
    project = project.model_copy(
        update={"settings": project.settings.model_copy(update={"chunk_steps": chunk_steps})}
    )
    instance = local_instance(base / "home")
    try:
        rec: dict = {}
        with measured(rec):
            result = materialize_video(
                project,
                project.spec(),
                "bench",
                instance=instance,
                source=src,
                force=True,
                log_level="WARNING",
            )
        rec["success"] = result.success
        return rec, list(result.all_events)
    finally:
        instance.dispose()


def cluster_run(src: Path, base: Path) -> tuple[dict, list[DagsterEvent]]:
    """The source uploaded to a cluster of two workers of its own; its run's figures and events."""
    directory = base / "cluster"
    directory.mkdir()
    directory.chmod(0o755)  # Postgres runs as user postgres
    state = cluster.up(ROOT, directory, cluster.ClusterOptions(workers=2))
    try:
        rec: dict = {}
        with measured(rec):
            run = cluster.wait_for_run(state, cluster.upload(state, src, "vod"), 3600)
        rec["success"] = run.status == DagsterRunStatus.SUCCESS
        with cluster.instance(state) as instance:
            events = [r.dagster_event for r in instance.all_logs(run.run_id) if r.dagster_event]
    finally:
        cluster.down(directory)
    return rec, events


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument(
        "--layouts", default="0,2,cluster", help="chunk_steps values (in process) and/or cluster"
    )
    args = parser.parse_args(argv)
    src = cached_clip("clean", args.duration, noisy=False)
    spec = bench_project(WORK / "retry").spec()
    chunk_s = spec.chunk_s
    results: dict = {"source": f"clean 1080p30, {args.duration:g} s", "chunk_s": chunk_s}
    for layout in args.layouts.split(","):
        log(f"chunk_steps={layout}: clean run")
        clean, clean_runs = one_run(layout, src, WORK / "retry" / f"clean-{layout}", "", None)
        # the last chunk: the x264 run seeking furthest (to its cut less the chunk's lead)
        seeks = [r for r in clean_runs if r["what"].startswith("-ss")]
        if not seeks:
            raise SystemExit(
                f"a {args.duration:g} s source is not cut into chunks: try a longer one"
            )
        chunk = max(seeks, key=lambda r: float(r["what"][3:]))
        target = chunk["what"][3:]
        kill_after = round(KILL_AT * chunk["wall_s"], 2)
        log(f"chunk_steps={layout}: killed run (chunk at {target} s killed after {kill_after} s)")
        killed, killed_runs = one_run(
            layout, src, WORK / "retry" / f"killed-{layout}", target, kill_after
        )
        clean_cpu = sum(r["cpu_s"] for r in clean_runs)
        killed_cpu = sum(r["cpu_s"] for r in killed_runs)
        extra = killed_cpu - clean_cpu
        results[layout if layout == "cluster" else f"chunk_steps_{layout}"] = {
            "clean": {**clean, "ffmpeg_cpu_s": round(clean_cpu, 2)},
            "killed": {**killed, "ffmpeg_cpu_s": round(killed_cpu, 2)},
            "killed_chunk_cpu_s": round(chunk["cpu_s"], 2),
            "killed_after_s": kill_after,
            "encodes_of_killed_chunk": sum(1 for r in killed_runs if r["what"] == f"-ss{target}"),
            "extra_cpu_s": round(extra, 2),
            "extra_over_chunk": round(extra / chunk["cpu_s"], 3),
            "same_bytes": clean["rendition_sha256"] == killed["rendition_sha256"],
            "goal": GOAL,
        }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nLocalized retry, {results['source']}, chunk_s {chunk_s:g}, last chunk killed late")
    print(f"{'layout':<14}{'clean CPU':>11}{'killed CPU':>12}{'chunk CPU':>11}{'extra':>8}"
          f"{'extra/chunk':>13}{'bytes':>7}")  # fmt: skip
    for key, r in results.items():
        if not isinstance(r, dict):
            continue
        print(
            f"{key:<14}{r['clean']['ffmpeg_cpu_s']:>11.1f}{r['killed']['ffmpeg_cpu_s']:>12.1f}"
            f"{r['killed_chunk_cpu_s']:>11.1f}{r['extra_cpu_s']:>8.1f}{r['extra_over_chunk']:>13.3f}"
            f"{'same' if r['same_bytes'] else 'DIFF':>7}"
        )
    ok = all(
        r["extra_over_chunk"] <= GOAL and r["same_bytes"] and r["killed"]["success"]
        for r in results.values()
        if isinstance(r, dict)
    )
    print(f"goal extra/chunk <= {GOAL}: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
