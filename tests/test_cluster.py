"""The cluster (issue 18): `mpegflow_dagster.cluster` starts Postgres, Redis, a moto S3 server, two
dagster-celery workers, the daemon and the webserver as real processes on 127.0.0.1; videos
uploaded to its S3 go through the upload sensor, Dagster's run queue and the workers. Faults are
real: a worker's process group SIGKILLed mid-encode, Redis stopped and started mid-step."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEvent,
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
    instance_for_test,
)
from pipeline_helpers import BIN, ROOT, temp_project

from mpegflow_dagster import cluster
from mpegflow_dagster.runs import materialize_video

pytestmark = pytest.mark.pipeline

LOST_STEP_AFTER_S = 60  # well above any step of these small clips, even with another test file
# running beside this one (`-n 2`): a step still running at this age is handed out a second time
# (30 s was outlived by a chunk-batch step on a clean clone while the codec tests ran beside it)
MEDIA = (".mp4", ".m3u8", ".ts", ".jpg", ".vtt")


# -- helpers ------------------------------------------------------------------------------------

# The cluster runs the encode as chunk-batch steps (chunk_steps = its workers); a 3 s clip is not
# cut in time, so its batch steps find nothing to do and the encode happens in the joining step.
ENCODE_STEP = "vod__encode.vod__encode_outputs"


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def encoder_on_a_worker(state: cluster.ClusterState) -> Optional[tuple[cluster.Service, str]]:
    """(the worker, the FFmpeg command line) of an x264 encode running under one of the workers."""
    workers = {s.pid: s for s in state.services if s.name.startswith("worker")}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if (entry / "comm").read_text().strip() != "ffmpeg" or b"libx264" not in cmdline:
                continue
            pid = int(entry.name)
            while pid > 1:
                pid = _ppid(pid)
                if pid in workers:
                    return workers[pid], cmdline.decode(errors="replace")
        except (OSError, ValueError):
            continue
    return None


def wait_for_encoder(state: cluster.ClusterState, timeout_s: float = 120) -> tuple:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = encoder_on_a_worker(state)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no encode started on a worker")


def events_of(state: cluster.ClusterState, run: DagsterRun) -> list:
    with cluster.instance(state) as instance:
        return [r for r in instance.all_logs(run.run_id) if r.dagster_event is not None]


def step_workers(records: list, step: str) -> list[str]:
    """The workers that took `step`, in order (dagster-celery's engine event names each)."""
    return [
        str(r.dagster_event.engine_event_data.metadata["Celery worker"].value).split("@")[0]
        for r in records
        if r.dagster_event.step_key == step
        and r.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
        and "Celery worker" in (r.dagster_event.engine_event_data.metadata or {})
    ]


def step_overheads(records: list) -> dict[str, float]:
    """Per step: wall time from its submission to Celery until the run went on (the next step's
    submission, or the run's end) minus the step's own duration."""
    submitted: dict[str, float] = {}
    durations: dict[str, float] = {}
    marks: list[float] = []
    for r in records:
        e = r.dagster_event
        if e.event_type == DagsterEventType.ENGINE_EVENT and (e.message or "").startswith(
            "Submitting celery task"
        ):
            submitted.setdefault(e.step_key, r.timestamp)
            marks.append(r.timestamp)
        elif e.event_type == DagsterEventType.STEP_SUCCESS:
            durations[e.step_key] = e.step_success_data.duration_ms / 1000
        elif e.event_type == DagsterEventType.RUN_SUCCESS:
            marks.append(r.timestamp)
    out = {}
    for step, start in submitted.items():
        later = [m for m in marks if m > start + durations.get(step, 0)]
        if step in durations and later:
            out[step] = min(later) - start - durations[step]
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the cluster, once for the module -----------------------------------------------------------


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.ClusterState]:
    # Postgres runs as user postgres under root: its folder must be reachable by it (pytest's
    # base temp folder is private), so the cluster gets a folder of its own in /tmp.
    directory = Path(tempfile.mkdtemp(prefix="mpegflow-cluster-"))
    directory.chmod(0o755)
    options = cluster.ClusterOptions(
        workers=2, max_concurrent_runs=2, lost_step_after_s=LOST_STEP_AFTER_S, upload_interval_s=1
    )
    state = cluster.up(ROOT, directory, options)
    print(f"\ncluster up: {state.started_s:.1f} s")
    try:
        yield state
    finally:
        cluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Batch:
    """Three uploads at once, one worker SIGKILLed while it encoded one of them."""

    runs: dict[str, DagsterRun]  # video -> its finished run
    snapshots: list[dict[str, str]] = field(default_factory=list)  # video -> run status, sampled
    killed_worker: str = ""
    killed_video: str = ""
    local_dir: Path = Path()


@pytest.fixture(scope="module")
def batch(grid: cluster.ClusterState, make_source, tmp_path_factory) -> Batch:
    sources = {
        f"batch{i}": make_source(f"batch{i}", duration_s=d, width=320, height=180)
        for i, d in enumerate((2.0, 2.5, 2.0))
    }
    # the same first source through the local default: in process, local storage and delivery
    local = tmp_path_factory.mktemp("local")
    project = temp_project(local)
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "batch0", instance=instance, source=sources["batch0"]
        )
        assert result.success

    run_keys = {v: cluster.upload(grid, s, "vod") for v, s in sources.items()}
    done = Batch(runs={}, local_dir=local)
    stop = threading.Event()

    def sample() -> None:
        with cluster.instance(grid) as instance:
            while not stop.is_set():
                seen = {}
                for video, key in run_keys.items():
                    runs = instance.get_runs(RunsFilter(tags={cluster.RUN_KEY_TAG: key}), limit=1)
                    if runs:
                        seen[video] = runs[0].status.value
                done.snapshots.append(seen)
                time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        worker, cmdline = wait_for_encoder(grid)
        os.killpg(worker.pid, signal.SIGKILL)  # the whole worker, as when its machine is lost
        done.killed_worker = worker.name
        done.killed_video = next(v for v in sources if f".{v}." in cmdline)
        for video, key in run_keys.items():
            done.runs[video] = cluster.wait_for_run(grid, key, 240)
    finally:
        stop.set()
        sampler.join()
    cluster.restart(grid, done.killed_worker)  # two workers again for the next tests
    return done


# -- many videos at once ------------------------------------------------------------------------


def test_uploads_at_once_are_held_by_the_run_queue_and_each_delivered_once(
    grid: cluster.ClusterState, batch: Batch
) -> None:
    assert {v: r.status for v, r in batch.runs.items()} == {
        v: DagsterRunStatus.SUCCESS for v in batch.runs
    }
    in_progress = [
        sum(s in ("STARTING", "STARTED") for s in snap.values()) for snap in batch.snapshots
    ]
    assert max(in_progress) <= grid.max_concurrent_runs
    held = [
        snap
        for snap, n in zip(batch.snapshots, in_progress, strict=True)
        if n == grid.max_concurrent_runs and "QUEUED" in snap.values()
    ]
    assert held, f"no sample saw a run QUEUED behind {grid.max_concurrent_runs} running ones"
    delivery = grid.s3_client()
    for video in batch.runs:
        assert cluster.outcome_events(grid, video)["video.succeeded"] == 1
        delivery.head_object(Bucket=cluster.BUCKETS["delivery"], Key=f"{video}/hls/master.m3u8")
    overheads = sorted(
        o for run in batch.runs.values() for o in step_overheads(events_of(grid, run)).values()
    )
    print(
        f"\nCelery step overhead (2 runs at once on 2 workers, one worker lost): median "
        f"{overheads[len(overheads) // 2]:.2f} s, max {overheads[-1]:.2f} s over {len(overheads)} steps"
    )


def test_cluster_output_is_byte_identical_to_the_local_default(
    grid: cluster.ClusterState, batch: Batch
) -> None:
    """Renditions, HLS segments and playlists, thumbnails: the cluster's in S3 (storage and
    delivery buckets) against the in-process run's on local disk, file by file."""
    client = grid.s3_client()
    compared = 0
    for bucket, prefix, local_root in (
        (cluster.BUCKETS["storage"], "mpegflow/storage/", batch.local_dir / "storage"),
        (cluster.BUCKETS["delivery"], "", batch.local_dir / "delivery"),
    ):
        keys = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for o in page.get("Contents", [])
            if "/batch0/" in f"/{o['Key']}" and o["Key"].endswith(MEDIA)
        ]
        assert keys, f"nothing of batch0 in s3://{bucket}/{prefix}"
        for key in keys:
            local = local_root / key[len(prefix) :]
            assert local.is_file(), f"the local run has no {local} (cluster: s3://{bucket}/{key})"
            remote = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert sha256(remote) == sha256(local.read_bytes()), key
            compared += 1
    suffixes = Counter(Path(k).suffix for k in keys)
    assert compared >= 8 and suffixes[".ts"] and suffixes[".m3u8"]


# -- faults -------------------------------------------------------------------------------------


def test_a_worker_killed_mid_encode_has_its_step_run_again_elsewhere(
    grid: cluster.ClusterState, batch: Batch
) -> None:
    run = batch.runs[batch.killed_video]
    assert run.status == DagsterRunStatus.SUCCESS
    records = events_of(grid, run)
    takers = step_workers(records, ENCODE_STEP)
    assert len(takers) == 2 and takers[0] == batch.killed_worker != takers[1], takers
    successes = [
        r
        for r in records
        if r.dagster_event.event_type == DagsterEventType.STEP_SUCCESS
        and r.dagster_event.step_key == ENCODE_STEP
    ]
    assert len(successes) == 1
    events = cluster.outcome_events(grid, batch.killed_video)
    assert events["video.succeeded"] == 1 and events["video.published"] == 1
    assert max(Counter(events).values()) <= 4  # rendition.ready once per rung, nothing doubled


def deliver_again(
    state: cluster.ClusterState, run: DagsterRun, step: str, attempt: int
) -> list[DagsterEvent]:
    """What a broker does after a restart or a lost acknowledgement, made deterministic: the task of
    `step`'s attempt `attempt` (0 = the first) sent to the workers again, as dagster-celery sent
    it; returns the events the task answered with."""
    from celery import Celery  # noqa: PLC0415
    from dagster._core.execution.plan.state import KnownExecutionState  # noqa: PLC0415
    from dagster._core.execution.retries import RetryMode  # noqa: PLC0415
    from dagster._grpc.types import ExecuteStepArgs  # noqa: PLC0415
    from dagster._serdes import deserialize_value, pack_value  # noqa: PLC0415
    from dagster._utils.hosted_user_process import recon_job_from_origin  # noqa: PLC0415

    assert run.job_code_origin is not None
    with cluster.instance(state) as instance:
        step_args = ExecuteStepArgs(
            job_origin=run.job_code_origin,
            run_id=run.run_id,
            step_keys_to_execute=[step],
            instance_ref=instance.get_ref(),
            retry_mode=RetryMode.ENABLED.for_inner_plan(),
            known_state=KnownExecutionState(previous_retry_attempts={step: attempt}),
            print_serialized_events=True,
        )
    app = Celery(
        broker=state.env["MPEGFLOW_CELERY_BROKER"], backend=state.env["MPEGFLOW_CELERY_BACKEND"]
    )
    try:
        result = app.send_task(
            "execute_plan",
            kwargs={
                "execute_step_args_packed": pack_value(step_args),
                "executable_dict": recon_job_from_origin(run.job_code_origin).to_dict(),
            },
            queue="dagster",
            routing_key="dagster.execute_plan",
        ).get(timeout=120)
    finally:
        app.close()
    return [deserialize_value(e, DagsterEvent) for e in result]


def assert_nothing_ran_again(state: cluster.ClusterState, run: DagsterRun, before: list) -> None:
    """Since `before` (the run's event records), only the workers' notes that they skipped a
    delivery (more than one where the broker itself delivered the attempt again meanwhile)."""
    new = [r.dagster_event for r in events_of(state, run)[len(before) :]]
    assert new, "the delivery left no note"
    for event in new:
        assert event.event_type == DagsterEventType.ENGINE_EVENT, new
        assert "did not run it again" in (event.message or ""), new


def test_a_step_task_delivered_again_after_its_attempt_ended_does_not_run_it_again(
    grid: cluster.ClusterState, batch: Batch
) -> None:
    run = batch.runs["batch1"]
    before = events_of(grid, run)
    returned = [e.event_type for e in deliver_again(grid, run, ENCODE_STEP, 0)]
    assert DagsterEventType.STEP_SUCCESS in returned  # the first delivery's outcome, again
    assert_nothing_ran_again(grid, run, before)


# -- one video over several workers ------------------------------------------------------------


def sha256_by_asset(instance, video: str) -> dict[str, str]:
    names = ("rendition_240p", "rendition_480p", "thumbnails", "hls")
    found = {}
    for name in names:
        wanted = AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=[video])
        [record] = instance.fetch_materializations(wanted, limit=1).records
        found[name] = record.asset_materialization.metadata["sha256"].value
    return found


def test_a_long_video_is_cut_into_chunk_steps_that_the_workers_share(
    grid: cluster.ClusterState, make_source, tmp_path
) -> None:
    """A source long enough for two time chunks (chunk_s 30): each chunk-batch step makes its
    pieces on a worker, the encode step joins them from the storage bucket, and the bytes are
    those of the local default's one encode step."""
    source = make_source("long", duration_s=46.0, width=320, height=180)
    project = temp_project(tmp_path)
    with instance_for_test() as instance:
        assert materialize_video(
            project, project.spec(), "long", instance=instance, source=source
        ).success
        local = sha256_by_asset(instance, "long")
    run = cluster.wait_for_run(grid, cluster.upload(grid, source, "vod"), 300)
    assert run.status == DagsterRunStatus.SUCCESS
    records = events_of(grid, run)
    with cluster.instance(grid) as instance:
        assert sha256_by_asset(instance, "long") == local
        made = [
            r.user_message
            for r in instance.all_logs(run.run_id)
            if r.user_message.startswith("chunk batch")
        ]
    assert sorted(m.split(":")[0] for m in made) == ["chunk batch 1/2", "chunk batch 2/2"]
    assert all(" 0 of its" not in m for m in made), made  # each batch made its own pieces
    for step in ("vod__encode.vod__encode_work_0", "vod__encode.vod__encode_work_1"):
        assert len(step_workers(records, step)) == 1, step


def test_redis_restarted_mid_step_the_run_completes_with_its_step_retried(
    grid: cluster.ClusterState, make_source
) -> None:
    source = make_source("redisfault", duration_s=3.0, width=320, height=180)
    run_key = cluster.upload(grid, source, "vod")
    wait_for_encoder(grid)
    cluster.stop([grid.service("redis")])  # SIGTERM: Redis writes its append-only file and exits
    time.sleep(2)
    cluster.restart(grid, "redis")
    run = cluster.wait_for_run(grid, run_key, 240)
    assert run.status == DagsterRunStatus.SUCCESS
    records = events_of(grid, run)
    kinds = Counter(
        r.dagster_event.event_type for r in records if r.dagster_event.step_key == ENCODE_STEP
    )
    # What happens: the worker that lost Redis cancels the step it ran (it could not acknowledge
    # it any more); the step fails as transient and Dagster's RetryPolicy runs it again. The
    # cancelled attempt's task is delivered again once Redis is back: the workers' app sees that
    # attempt ended and does not run it a second time (mpegflow_dagster.celery_app).
    assert kinds[DagsterEventType.STEP_UP_FOR_RETRY] == 1, kinds
    assert kinds[DagsterEventType.STEP_SUCCESS] == 1, kinds
    events = cluster.outcome_events(grid, "redisfault")
    assert events["video.succeeded"] == 1 and events["video.published"] == 1
    # the cancelled first attempt delivered again (as the restored Redis may do): it ran nothing
    # and answered with that attempt's events, which end in its hand-over to the retry
    returned = deliver_again(grid, run, ENCODE_STEP, 0)
    assert returned[-1].event_type == DagsterEventType.STEP_UP_FOR_RETRY, returned[-1]
    assert_nothing_ran_again(grid, run, records)
    quiet = step_overheads(records)
    print("\nCelery step overhead, one run alone (s):", {k: round(v, 2) for k, v in quiet.items()})


# -- the command --------------------------------------------------------------------------------


def test_submit_of_a_missing_file_exits_2_and_uploads_nothing(
    grid: cluster.ClusterState, tmp_path: Path
) -> None:
    client = grid.s3_client()
    before = client.list_objects_v2(Bucket=cluster.BUCKETS["upload"]).get("KeyCount", 0)
    done = subprocess.run(
        [str(BIN / "mpegflow"), "cluster", "submit", str(tmp_path / "nope.mp4"), "--dir", grid.dir],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "nope.mp4 does not exist" in done.stderr
    assert client.list_objects_v2(Bucket=cluster.BUCKETS["upload"]).get("KeyCount", 0) == before


def test_up_without_a_server_package_says_what_to_install_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis missing (not on PATH): a clear error before anything starts, not a Postgres left
    running by a half-started cluster."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    directory = Path(tempfile.mkdtemp(prefix="mpegflow-cluster-"))
    directory.chmod(0o755)  # as the grid's: Postgres, run as user postgres, could start here
    try:
        with pytest.raises(
            cluster.ClusterError,
            match=r"redis-server is not installed: run `make cluster-services`",
        ):
            cluster.up(ROOT, directory, cluster.ClusterOptions(workers=1))
        mine = [
            p.name
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and str(directory).encode() in _cmdline(p)
        ]
    finally:
        cluster.down(directory)  # whatever a failed `up` left running
        shutil.rmtree(directory, ignore_errors=True)
    assert not mine


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def test_the_instance_reaches_postgres_through_pgbouncer(grid: cluster.ClusterState) -> None:
    """Dagster opens a connection per query: PgBouncer must be what the instance talks to, lending
    a few long-lived Postgres backends to thousands of short client connections."""
    import psycopg2  # noqa: PLC0415 (a dependency of dagster-postgres)

    pool = urlsplit(grid.postgres_url)
    with cluster.instance(grid) as instance:
        assert instance.get_runs(limit=1)  # the runs of the tests above, read through the pool
    admin = psycopg2.connect(
        host=pool.hostname, port=pool.port, user="postgres", dbname="pgbouncer"
    )
    admin.autocommit = True  # the admin console takes no transactions
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW STATS")
            names = [c.name for c in cur.description]
            stats = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
            cur.execute("SHOW SERVERS")
            backends = cur.fetchall()
    finally:
        admin.close()
    assert stats["dagster"]["total_query_count"] > 1000, stats.get("dagster")
    assert 0 < len(backends) <= 80
    print(f"\nPgBouncer: {stats['dagster']['total_query_count']} queries, {len(backends)} backends")


def test_down_stops_every_process_it_started(grid: cluster.ClusterState) -> None:
    groups = {s.pid for s in grid.services}
    assert cluster.down(Path(grid.dir))
    left = []  # live members of the groups (an orphaned zombie is dead: only init may reap it)
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, NotADirectoryError):
            continue
        state, _, pgid = stat[stat.rfind(")") + 2 :].split()[:3]
        if int(pgid) in groups and state not in ("Z", "X"):
            left.append(stat[:80])
    assert not left
    assert not (Path(grid.dir) / cluster.STATE_FILE).exists()
