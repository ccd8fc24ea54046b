"""Throughput (issue 18): many videos uploaded at once to the Celery cluster, against the best
hand-written script run over the same files as many at a time as the cluster has workers.

The files: `--count` (10) 1080p30 sources of `--duration` (30) s with audio, v00.mp4, v01.mp4, ...:
stream copies of ladder.py's cached lavfi clip (clean; `--mixed`: clean and noisy in turn), each
with its own name in its metadata. No two are byte-identical, since a source's pieces are keyed
by its content: identical files would share work on the cluster.

  script   ladder.py's per-file scripts (its VARIANTS, and the same-bytes one with the pipeline's
           x264 threads), each run once over the first two files, two at a time; the fastest is
           then run over every file with `--workers` files in flight (a pool of processes, each
           running one file's script at a time), the whole bench confined to the workers' cores.
  cluster  `cluster.up` with `--workers` (2) dagster-celery workers, each pinned to a core of its
           own (bench/cluster_scale.py), the shipped run queue (`--max-concurrent-runs`, 2) and
           chunk_steps (`--chunk-steps`, default the workers); every file uploaded at once, through
           the upload sensor, the run queue and the workers. Wall: first upload to the last run's
           end. Each video must be delivered exactly once: one run of its partition, succeeded;
           one materialization of its emit asset; one `video.published` and one `video.succeeded`
           event; its master playlist in the delivery bucket.

Reported: videos per hour of both and the ratio cluster / script (goal >= 0.9); the runs the
queue held QUEUED behind full concurrency; per run the time from the upload to its queueing (the
sensor), in the queue, launching and running; the median wall of each step; the CPU seconds of
each cluster service. Prints a table, writes bench/cluster_throughput.json (`--out`).

    .venv/bin/python bench/cluster_throughput.py                          # 10 x 30 s
    .venv/bin/python bench/cluster_throughput.py --count 3 --duration 4 \\
        --out bench/work/throughput-smoke.json                            # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

from cluster_scale import pin_workers
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, RunsFilter
from ladder import (
    BENCH,
    ROOT,
    SAME_BYTES_VARIANT,
    SCRIPT_THREADS,
    SPEC_NAME,
    VARIANTS,
    WORK,
    Plan,
    cached_clip,
    log,
    machine_busy_s,
    measured,
    repo_project,
    run_all,
)

from mpegflow_dagster import cluster
from mpegflow_dagster.media.probe import MediaInfo, probe
from mpegflow_dagster.outcomes import CONCLUDING_ASSET

RESULTS = BENCH / "cluster_throughput.json"
OUT = WORK / "throughput"
GOAL = 0.9  # cluster videos per hour / the best script's
PARTITION_TAG = "dagster/partition"

Script = tuple[Callable[[Plan], None], int]  # a per-file script and its x264 threads


def sources(count: int, duration_s: float, mixed: bool) -> list[Path]:
    """v00.mp4 ... : the cached clip stream-copied, each with its own title (distinct bytes)."""
    folder = OUT / "sources" / f"{duration_s:g}s{'-mixed' if mixed else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        noisy = mixed and i % 2 == 1
        path = folder / f"v{i:02d}.mp4"
        if not path.is_file():
            clip = cached_clip("noisy" if noisy else "clean", duration_s, noisy)
            tmp = path.with_name(f"{path.stem}.part.mp4")
            copy = ["-i", str(clip), "-map", "0", "-c", "copy", "-metadata", f"title={path.stem}"]
            run_all([[*copy, "-f", "mp4", str(tmp)]])
            tmp.rename(path)
        files.append(path)
    digests = set()
    for path in files:
        with open(path, "rb") as fh:
            digests.add(hashlib.file_digest(fh, "sha256").hexdigest())
    assert len(digests) == len(files), f"identical sources in {folder}: remove it and run again"
    return files


def candidates() -> dict[str, Script]:
    """The per-file scripts of ladder.py, as its `best` and `best_same_bytes` run them."""
    same = repo_project().settings.ffmpeg.threads
    return {
        **{name: (fn, SCRIPT_THREADS) for name, fn in VARIANTS.items()},
        f"{SAME_BYTES_VARIANT}-x264-threads-{same}": (VARIANTS[SAME_BYTES_VARIANT], same),
    }


def one_file(fn: Callable[[Plan], None], plan: Plan) -> float:
    """One file's script (in a pool process of its own: a script may wait for any child)."""
    started = time.monotonic()
    fn(plan)
    return round(time.monotonic() - started, 2)


def run_scripts(
    script: Script, files: list[Path], infos: dict[Path, MediaInfo], slots: int, tag: str
) -> dict:
    """`script` over `files`, `slots` files in flight at a time."""
    fn, threads = script
    spec = repo_project().spec(SPEC_NAME)
    plans = [Plan(spec, f, infos[f], OUT / tag / f.stem, threads) for f in files]
    for plan in plans:
        plan.prepare()
    rec: dict = {}
    with measured(rec), ProcessPoolExecutor(slots) as pool:  # its processes end inside: CPU counted
        walls = list(pool.map(one_file, [fn] * len(plans), plans))
    shutil.rmtree(OUT / tag)
    return {
        "wall_s": rec["wall_s"],
        "cpu_s": rec["cpu_s"],  # FFmpeg and the pool processes
        "other_cpu_s": rec["other_cpu_s"],
        "videos_per_hour": round(len(files) * 3600 / rec["wall_s"], 1),
        "per_file_wall_s": {f.stem: w for f, w in zip(files, walls, strict=True)},
    }


def run_figures(instance: DagsterInstance, run_id: str, uploaded: float) -> dict:
    """One run's times (epoch) and phases: the upload until the sensor's run is queued, in the
    queue, launching (its run worker starting), running; its step failures and step walls."""
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.start_time and record.end_time
    at = {
        e.dagster_event_type: e.timestamp
        for e in instance.all_logs(
            run_id, of_type={DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING}
        )
    }
    # out of the queue: its RUN_STARTING (Dagster 1.13's queue daemon sends no RUN_DEQUEUED)
    enqueued, dequeued = at[DagsterEventType.RUN_ENQUEUED], at[DagsterEventType.RUN_STARTING]
    start, end = record.start_time, record.end_time
    return {
        "status": record.dagster_run.status.value,
        "enqueued": enqueued,
        "dequeued": dequeued,
        "end": end,
        "sensor_s": round(enqueued - uploaded, 2),
        "queued_s": round(dequeued - enqueued, 2),
        "launch_s": round(start - dequeued, 2),
        "wall_s": round(end - start, 2),
        "upload_to_end_s": round(end - uploaded, 2),
        "step_failures": len(instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)),
        "steps": {
            s.step_key: round(s.end_time - s.start_time, 2)
            for s in instance.get_run_step_stats(run_id)
            if s.start_time and s.end_time  # a skipped step has no start
        },
    }


def deliveries(state: cluster.ClusterState, instance: DagsterInstance, video: str) -> dict:
    """Each witness of `video`'s delivery, counted: each must be 1 (see the module's doc)."""
    runs = instance.get_runs(RunsFilter(tags={PARTITION_TAG: video}))
    emits = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey([SPEC_NAME, CONCLUDING_ASSET]), asset_partitions=[video]
        ),
        limit=10,
    ).records
    events = cluster.outcome_events(state, video)
    listed = state.s3_client().list_objects_v2(
        Bucket=cluster.BUCKETS["delivery"], Prefix=f"{video}/hls/master.m3u8"
    )
    return {
        "runs_succeeded": sum(r.status.value == "SUCCESS" for r in runs),
        "runs": len(runs),
        "emit_materializations": len(emits),
        "video.published": events["video.published"],
        "video.succeeded": events["video.succeeded"],
        "master_playlists": listed.get("KeyCount", 0),
    }


def in_progress(runs: dict[str, dict], t: float, but: str = "") -> int:
    """How many runs (`but` one) were out of the queue and not ended at `t`."""
    return sum(r["dequeued"] <= t < r["end"] for v, r in runs.items() if v != but)


def held_in_queue(runs: dict[str, dict], limit: int) -> list[str]:
    """The runs that waited QUEUED while `limit` others were in progress."""
    return [
        video
        for video, r in runs.items()
        if any(
            in_progress(runs, o["dequeued"], but=video) >= limit
            for o in runs.values()
            if r["enqueued"] <= o["dequeued"] < r["dequeued"]
        )
    ]


def service_cpu_s(state: cluster.ClusterState) -> dict[str, float]:
    """CPU seconds each service's processes used so far, with the children they reaped (a worker's
    FFmpeg, the daemon's run workers): `cluster.up` starts each service in a session of its own."""
    by_session: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rfind(")") + 2 :].split()
        sid, ticks = int(fields[3]), sum(int(x) for x in fields[11:15])  # utime..cstime
        by_session[sid] = by_session.get(sid, 0) + ticks
    hz = os.sysconf("SC_CLK_TCK")
    return {s.name: by_session.get(s.pid, 0) / hz for s in state.services}


def run_cluster(files: list[Path], options: cluster.ClusterOptions, timeout_s: float) -> dict:
    directory = WORK / "cluster" / "throughput"
    shutil.rmtree(directory, ignore_errors=True)
    state = cluster.up(ROOT, directory, options)
    log(f"cluster up in {state.started_s:.1f} s; uploading {len(files)} files at once")
    try:
        pin_workers(state)
        busy, cpu = machine_busy_s(), service_cpu_s(state)
        first_upload = time.time()
        keys = {f.stem: cluster.upload(state, f, SPEC_NAME) for f in files}
        uploaded = time.time()
        deadline = time.monotonic() + timeout_s
        done = {}
        for video, key in keys.items():
            done[video] = cluster.wait_for_run(state, key, max(1.0, deadline - time.monotonic()))
            log(f"  {video}: {done[video].status.value}")
        machine_cpu = machine_busy_s() - busy
        cpu = {k: round(v - cpu.get(k, 0.0), 1) for k, v in service_cpu_s(state).items()}
        with cluster.instance(state) as instance:
            runs = {v: run_figures(instance, r.run_id, first_upload) for v, r in done.items()}
            delivered = {v: deliveries(state, instance, v) for v in done}
    finally:
        cluster.down(directory)
    wall = max(r["end"] for r in runs.values()) - first_upload
    steps: dict[str, list[float]] = {}
    for r in runs.values():
        for step, s in r["steps"].items():
            steps.setdefault(step, []).append(s)
    return {
        "workers": options.workers,
        "max_concurrent_runs": options.max_concurrent_runs,
        "chunk_steps": int(state.env["MPEGFLOW_CHUNK_STEPS"]),
        "upload_interval_s": options.upload_interval_s,
        "up_s": state.started_s,
        "uploads_s": round(uploaded - first_upload, 2),
        "wall_s": round(wall, 2),
        "machine_cpu_s": round(machine_cpu, 1),
        "service_cpu_s": cpu,  # the rest of machine_cpu_s: this process (uploads) and others
        "videos_per_hour": round(len(files) * 3600 / wall, 1),
        "delivered_once": sorted(v for v, d in delivered.items() if set(d.values()) == {1}),
        "held_in_queue": held_in_queue(runs, options.max_concurrent_runs),
        "max_in_progress": max(in_progress(runs, r["dequeued"]) for r in runs.values()),
        "runs": {
            v: {k: x for k, x in r.items() if k not in ("enqueued", "dequeued", "end", "steps")}
            for v, r in runs.items()
        },
        "deliveries": delivered,
        "median_step_wall_s": {k: round(statistics.median(v), 2) for k, v in steps.items()},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="videos (default 10)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each (default 30)")
    parser.add_argument("--mixed", action="store_true", help="clean and noisy sources in turn")
    parser.add_argument("--workers", type=int, default=2, help="workers = script slots (default 2)")
    parser.add_argument("--max-concurrent-runs", type=int, default=2, help="the run queue's limit")
    parser.add_argument(
        "--chunk-steps", type=int, help="the cluster's chunk_steps (default: the workers)"
    )
    parser.add_argument(
        "--best", choices=sorted(candidates()), help="skip the selection: use this script"
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="for all the runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON written")
    args = parser.parse_args(argv)
    if args.count < 1 or not 1 <= args.workers <= (os.cpu_count() or 1):
        parser.error(f"--count must be >= 1 and --workers 1 to {os.cpu_count()} (a core each)")
    cores = set(range(args.workers))
    os.sched_setaffinity(0, cores)  # the scripts, the cluster and all they start: the same cores
    files = sources(args.count, args.duration, args.mixed)
    infos = {f: probe(f) for f in files}
    kind = "clean and noisy in turn" if args.mixed else "clean"
    results: dict = {
        "sources": f"{args.count} x {args.duration:g} s {kind} 1080p30 (distinct bytes)",
        "cores": sorted(cores),
    }

    scripts = candidates()
    selection: dict[str, float] = {}
    if args.best:
        best = args.best
    else:
        pair = files[:2]
        names = ", ".join(f.stem for f in pair)
        log(f"picking the script: each once over {names}, {args.workers} at a time")
        for name, script in scripts.items():
            selection[name] = run_scripts(script, pair, infos, args.workers, "select")["wall_s"]
            log(f"  {name:28s} {selection[name]:7.2f} s")
        best = min(selection, key=selection.__getitem__)
    log(f"script {best} over {len(files)} files, {args.workers} at a time")
    script = run_scripts(scripts[best], files, infos, args.workers, "script")
    log(f"script: {script['wall_s']} s")
    results["script"] = {
        "best": best,
        "picked_on": [f.stem for f in files[:2]] if selection else "--best",
        "selection_wall_s": selection,
        "slots": args.workers,
        **script,
    }

    options = cluster.ClusterOptions(
        workers=args.workers,
        max_concurrent_runs=args.max_concurrent_runs,
        chunk_steps=args.chunk_steps,
    )
    results["cluster"] = run_cluster(files, options, args.timeout_s)
    on = results["cluster"]
    ratio = on["videos_per_hour"] / script["videos_per_hour"]
    results.update(
        ratio_cluster_over_script=round(ratio, 3),
        all_delivered_once=len(on["delivered_once"]) == len(files),
        goals={"ratio_cluster_over_script": GOAL, "all_delivered_once": True},
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    log(f"wrote {args.out}")
    return 0


def print_table(r: dict) -> None:
    s, c = r["script"], r["cluster"]
    print(f"\nThroughput, {r['sources']}, on cores {r['cores']}")
    if s["selection_wall_s"]:
        picks = ", ".join(
            f"{k} {v:.1f} s" for k, v in sorted(s["selection_wall_s"].items(), key=lambda kv: kv[1])
        )
        print(f"  script picked on {', '.join(s['picked_on'])}, {s['slots']} at a time: {picks}")
    print(
        f"  script  {s['best']}, {s['slots']} files at a time: wall {s['wall_s']:.1f} s, "
        f"{s['videos_per_hour']:.1f} videos/h (CPU {s['cpu_s']:.0f} s, "
        f"other CPU {s['other_cpu_s']:.0f} s)"
    )
    print(
        f"  cluster {c['workers']} pinned workers, chunk_steps {c['chunk_steps']}, at most "
        f"{c['max_concurrent_runs']} runs: wall {c['wall_s']:.1f} s first upload to last run end, "
        f"{c['videos_per_hour']:.1f} videos/h (machine CPU {c['machine_cpu_s']:.0f} s; the wall "
        f"holds the uploads, {c['uploads_s']:.1f} s, not `cluster up`, {c['up_s']:.1f} s)"
    )
    print(
        "  cluster CPU s by service: "
        + ", ".join(f"{k} {v:g}" for k, v in c["service_cpu_s"].items())
    )
    print(
        f"  ratio cluster/script: {r['ratio_cluster_over_script']:.3f} (goal >= {GOAL}); "
        f"delivered once: {len(c['delivered_once'])}/{len(c['runs'])}"
    )
    print(
        f"  run queue: {len(c['held_in_queue'])} run(s) held QUEUED behind "
        f"{c['max_concurrent_runs']} in progress ({', '.join(c['held_in_queue']) or 'none'}); "
        f"at most {c['max_in_progress']} in progress"
    )
    columns = ("sensor_s", "queued_s", "launch_s", "wall_s", "upload_to_end_s", "step_failures")
    print(f"  {'video':6s} {'status':8s} " + " ".join(f"{k:>15s}" for k in columns) + "  delivery")
    for video, run in c["runs"].items():
        print(
            f"  {video:6s} {run['status']:8s} "
            + " ".join(f"{run[k]:15g}" for k in columns)
            + ("  once" if video in c["delivered_once"] else f"  {c['deliveries'][video]}")
        )
    steps = ", ".join(f"{k.split('__', 1)[-1]} {v:.1f}" for k, v in c["median_step_wall_s"].items())
    print(f"  median step wall (s): {steps}")


if __name__ == "__main__":
    sys.exit(main())
