"""Scale (issue 18): one long video on the Celery cluster, with 1 worker and with 2, each worker
pinned to a core of its own (`taskset`), so the second worker is a second machine's worth of CPU.

For a clean 1080p30 source (180 s by default: six 30 s chunks), `mpegflow cluster up --workers N`
(chunk_steps = N) on this machine's Postgres, Redis and moto S3, then one upload through the
sensor and the run queue, timed from the run's start to its end. Reported: the wall with 1 and 2
workers and the speedup; each chunk-batch step's overhead (its wall not covered by FFmpeg); and,
from the measured serial part (the steps other than the batch steps) and parallel part, the
speedup Amdahl's law gives at 8, 32 and 128 workers. Prints a table, writes
bench/cluster_scale.json.

    .venv/bin/python bench/cluster_scale.py                # 180 s source
    .venv/bin/python bench/cluster_scale.py --duration 60  # quicker
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType
from ladder import BENCH, ROOT, WORK, cached_clip, log

from mpegflow_dagster import cluster
from mpegflow_dagster.provenance import Provenance

RESULTS = BENCH / "cluster_scale.json"
WORK_STEP = "vod__encode.vod__encode_work_"


def pin_workers(state: cluster.ClusterState) -> None:
    """Each worker's processes (and so the FFmpeg they start) on a core of its own."""
    workers = sorted(
        (s for s in state.services if s.name.startswith("worker")), key=lambda s: s.name
    )
    for core, worker in enumerate(workers):
        pids = subprocess.run(
            ["pgrep", "-g", str(worker.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        for pid in pids:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(core), pid], capture_output=True, check=True
            )


def union_s(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def one_run(source: Path, workers: int) -> dict:
    directory = WORK / "cluster" / f"w{workers}"
    shutil.rmtree(directory, ignore_errors=True)
    state = cluster.up(ROOT, directory, cluster.ClusterOptions(workers=workers))
    try:
        pin_workers(state)
        run = cluster.wait_for_run(state, cluster.upload(state, source, "vod"), 3600)
        with cluster.instance(state) as instance:
            stats = {s.step_key: s for s in instance.get_run_step_stats(run.run_id)}
            record = instance.get_run_record_by_id(run.run_id)
            assert record is not None and record.start_time and record.end_time
            runs: list[tuple[float, float]] = []
            for name in ("rendition_240p", "rendition_480p", "rendition_720p", "rendition_1080p"):
                wanted = AssetRecordsFilter(
                    asset_key=AssetKey(["vod", name]), asset_partitions=[source.stem]
                )
                [rec] = instance.fetch_materializations(wanted, limit=1).records
                assert rec.asset_materialization is not None
                prov = Provenance.model_validate(
                    rec.asset_materialization.metadata["provenance"].value
                )
                runs += [(start, start + wall) for start, wall in prov.ffmpeg_runs]
            failures = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    finally:
        cluster.down(directory)
    work = {k: s for k, s in stats.items() if k.startswith(WORK_STEP)}
    overheads = []
    for s in work.values():
        assert s.start_time and s.end_time
        inside = [
            (max(a, s.start_time), min(b, s.end_time))
            for a, b in runs
            if a < s.end_time and b > s.start_time
        ]
        overheads.append((s.end_time - s.start_time) - union_s(inside))
    starts = [s.start_time for s in work.values() if s.start_time]
    ends = [s.end_time for s in work.values() if s.end_time]
    parallel = max(ends) - min(starts)
    wall = record.end_time - record.start_time
    return {
        "workers": workers,
        "status": run.status.value,
        "step_failures": len(failures),
        "wall_s": round(wall, 2),
        "batch_steps_wall_s": round(parallel, 2),
        "serial_s": round(wall - parallel, 2),
        "batch_step_overhead_s": [round(o, 2) for o in overheads],
        "steps": {  # a skipped step (no captions sidecar) has no start
            k: round(s.end_time - s.start_time, 2)
            for k, s in stats.items()
            if s.start_time and s.end_time
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0)
    args = parser.parse_args(argv)
    source = cached_clip("clean", args.duration, noisy=False)
    upload = WORK / "cluster" / "scale.mp4"  # the video is named after the file
    upload.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, upload)
    results: dict = {"source": f"clean 1080p30, {args.duration:g} s", "runs": []}
    for workers in (1, 2):
        log(f"{workers} worker(s)")
        results["runs"].append(one_run(upload, workers))
        log(f"{workers} worker(s): {results['runs'][-1]['wall_s']} s")
    one, two = results["runs"]
    speedup = one["wall_s"] / two["wall_s"]
    serial = statistics.fmean([one["serial_s"], two["serial_s"]])
    parallel_one = one["batch_steps_wall_s"]  # the chunk work on one core
    overheads = one["batch_step_overhead_s"] + two["batch_step_overhead_s"]
    results.update(
        speedup_2_over_1=round(speedup, 3),
        median_batch_step_overhead_s=round(statistics.median(overheads), 2),
        # Amdahl: the serial part stays, the chunk work divides (while there are chunks to share)
        extrapolated_wall_s={n: round(serial + parallel_one / n, 1) for n in (8, 32, 128)},
        goals={"speedup_2_over_1": 1.8, "median_batch_step_overhead_s": 0.5},
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nScale on the cluster, {results['source']}, workers pinned to a core each")
    for r in results["runs"]:
        print(
            f"  {r['workers']} worker(s): {r['status']}, wall {r['wall_s']:.1f} s (chunk steps "
            f"{r['batch_steps_wall_s']:.1f} s, serial {r['serial_s']:.1f} s), batch step overhead "
            f"{r['batch_step_overhead_s']}"
        )
    print(f"  speedup 2/1: {speedup:.2f} (goal >= 1.8)")
    print(
        f"  median batch-step overhead: {results['median_batch_step_overhead_s']} s (goal <= 0.5)"
    )
    print(
        f"  extrapolated wall (serial {serial:.1f} s + chunk work / N): {results['extrapolated_wall_s']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
