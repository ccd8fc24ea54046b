"""A Dagster cluster on this machine, from the project's .venv and Debian's packages.

`up` starts, each as its own process group on 127.0.0.1 with its data under one directory:
Postgres (the instance's run, event-log and schedule storage, via dagster-postgres, behind
PgBouncer), Redis (the Celery broker and result backend, with an append-only file so a restart
loses no queued step), a moto S3 server (the storage, delivery and upload buckets), N
`dagster-celery` workers, the code location's gRPC server, the Dagster daemon (upload sensor, run
queue, run monitoring) and the webserver. The code location is this project's, with the cluster's
settings in the environment (`env`): the same variables a worker on another machine needs
(docs/cluster.md). `down` stops every process group `up` started. `submit` uploads a video to the
upload bucket and waits for the run the upload sensor requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional
from urllib.parse import urlsplit

import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._grpc.client import DagsterGrpcClient
from pydantic import BaseModel

from . import liveness
from .executors import CelerySettings, celery_executor_config

RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster gives a sensor's run: its run key
STATE_FILE = "cluster.json"
LOCATION = "mpegflow"
BUCKETS = {
    "storage": "mpegflow-storage",
    "delivery": "mpegflow-delivery",
    "upload": "mpegflow-uploads",
}
UPLOAD_PREFIX = "uploads"
_DATABASE = "dagster"
_MOTO_KEYS = {  # moto accepts any credentials; boto3 wants some
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ClusterError(RuntimeError):
    """The cluster cannot start, or is not there: the message says what to do."""


class Service(BaseModel):
    name: str
    pid: int
    owner: str  # liveness owner string: a reused pid is not taken for the service
    log: str
    argv: list[str]
    cwd: str
    cluster_env: bool  # runs with the cluster's settings (the Dagster processes)
    user: Optional[str] = None


class ClusterState(BaseModel):
    """What `up` started (`<dir>/cluster.json`): enough for `status`, `down`, `submit` and tests."""

    dir: str
    project: str
    home: str  # DAGSTER_HOME: the instance config the webserver, daemon and workers share
    ui_url: str
    s3_endpoint: str
    redis_url: str
    postgres_url: str
    workers: int
    max_concurrent_runs: int
    env: dict[str, str]  # the cluster's settings, as every process of it sees them
    services: list[Service] = []
    started_s: float = 0.0  # how long `up` took

    @classmethod
    def load(cls, directory: Path) -> "ClusterState":
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise ClusterError(f"no cluster in {directory}: start one with `mpegflow cluster up`")
        return cls.model_validate_json(path.read_text())

    def save(self) -> None:
        (Path(self.dir) / STATE_FILE).write_text(self.model_dump_json(indent=2))

    def alive(self) -> dict[str, bool]:
        return {s.name: not liveness.is_gone(s.owner) for s in self.services}

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def s3_client(self) -> Any:
        import boto3  # noqa: PLC0415 (only submit and tests read S3)

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )


@dataclass
class ClusterOptions:
    workers: int = 2
    max_concurrent_runs: int = 2
    lost_step_after_s: int = CelerySettings().lost_step_after_s
    upload_interval_s: int = 5
    chunk_steps: Optional[int] = None  # Settings.chunk_steps; None: the number of workers
    ui_port: int = 0  # 0: a free port
    postgres_port: int = 0
    pgbouncer_port: int = 0
    redis_port: int = 0
    s3_port: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """Debian's server binaries (/usr/lib/postgresql/<version>/bin), the newest."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise ClusterError("PostgreSQL is not installed: run `make cluster-services`")
    return found[-1].parent


def _require(tool: str) -> str:
    path = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin")  # pgbouncer's home
    if not path:
        raise ClusterError(f"{tool} is not installed: run `make cluster-services`")
    return path


def instance_config(postgres_url: str, max_concurrent_runs: int) -> dict[str, Any]:
    """The cluster's dagster.yaml: Postgres storage, Dagster's run queue with its concurrency
    limit, run monitoring (a run worker that dies is marked failed), no telemetry."""
    return {
        "storage": {"postgres": {"postgres_url": postgres_url}},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": max_concurrent_runs, "dequeue_interval_seconds": 1},
        },
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 5},
        "telemetry": {"enabled": False},
    }


def cluster_env(
    project: Path, directory: Path, redis_url: str, s3_endpoint: str, options: ClusterOptions
) -> dict[str, str]:
    """The settings of the cluster's code location (env overrides of resources/settings.yaml)."""
    return {
        **_MOTO_KEYS,
        "DAGSTER_HOME": str(directory / "home"),
        "MPEGFLOW_EXECUTOR": "celery",
        "MPEGFLOW_CELERY_BROKER": f"{redis_url}/0",
        "MPEGFLOW_CELERY_BACKEND": f"{redis_url}/1",
        "MPEGFLOW_CELERY_LOST_STEP_AFTER_S": str(options.lost_step_after_s),
        "MPEGFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MPEGFLOW_S3_BUCKET": BUCKETS["storage"],
        "MPEGFLOW_DELIVERY_BUCKET": BUCKETS["delivery"],
        "MPEGFLOW_UPLOAD_BUCKET": BUCKETS["upload"],
        "MPEGFLOW_UPLOAD_PREFIX": UPLOAD_PREFIX,
        "MPEGFLOW_UPLOAD_INTERVAL_S": str(options.upload_interval_s),
        "MPEGFLOW_WATCH_UPLOADS": "true",
        # The encode's time chunks as chunk-batch steps spread over the workers
        # (Settings.chunk_steps, about the number of workers).
        "MPEGFLOW_CHUNK_STEPS": str(
            options.workers if options.chunk_steps is None else options.chunk_steps
        ),
        "MPEGFLOW_WORK_DIR": str(directory / "work"),
        "MPEGFLOW_STORAGE_DIR": str(directory / "storage"),
        "MPEGFLOW_DELIVERY_DIR": str(directory / "delivery"),
        "MPEGFLOW_EVENTS_PATH": str(directory / "events" / "events.jsonl"),
        "MPEGFLOW_PREVIEWS_DIR": str(directory / "previews"),
    }


def _process_env(env: Mapping[str, str]) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # dagster-celery starts `celery` from PATH
    return {**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _default_sigint() -> None:
    # A process started from a background shell inherits SIGINT ignored; Dagster's servers then
    # ignore SIGTERM too. Their own session lets `down` stop each with its children.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(
    name: str,
    argv: list[str],
    directory: Path,
    env: Optional[Mapping[str, str]],
    cwd: Path,
    user: Optional[str] = None,
) -> Service:
    """Start `argv` in its own session (so `stop` reaches its children), logging to logs/<name>.log;
    with the cluster's settings `env` for Dagster's processes."""
    log = directory / "logs" / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_process_env(env or {}),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_default_sigint,
            user=user,
        )
    return Service(
        name=name,
        pid=proc.pid,
        owner=liveness.of(proc.pid),
        log=str(log),
        argv=argv,
        cwd=str(cwd),
        cluster_env=env is not None,
        user=user,
    )


def _wait(what: str, ready: Callable[[], bool], services: Iterable[Service], timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 -- not up yet: connection refused, no such database...
            pass
        for s in services:
            if liveness.is_gone(s.owner):
                tail = Path(s.log).read_text(errors="replace")[-2000:]
                raise ClusterError(f"{s.name} exited while starting; its log {s.log} ends:\n{tail}")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{what} not ready after {timeout_s:.0f} s: see {directory_logs(services)}"
            )
        time.sleep(0.2)


def directory_logs(services: Iterable[Service]) -> str:
    return ", ".join(s.log for s in services)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _postgres_user() -> Optional[str]:
    """Postgres refuses to run as root: as root, it runs as Debian's `postgres` user."""
    return "postgres" if os.geteuid() == 0 else None


def _start_postgres(directory: Path, port: int) -> Service:
    data = directory / "postgres"
    user = _postgres_user()
    bindir = postgres_bin()
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        if user:
            shutil.chown(data, user, user)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        made = subprocess.run(initdb, capture_output=True, text=True, user=user)
        if made.returncode:
            hint = f" (as root it runs as user {user}: every folder above {data} must let it in)"
            raise ClusterError(f"initdb failed{hint if user else ''}: {made.stderr.strip()[-500:]}")
    argv = [
        str(bindir / "postgres"),
        "-D", str(data),
        "-p", str(port),
        "-c", "listen_addresses=127.0.0.1",
        "-c", "unix_socket_directories=",
        # commits are not flushed one by one (a crash may lose the last events, never corrupts)
        "-c", "synchronous_commit=off",
    ]  # fmt: skip
    return _start("postgres", argv, directory, None, directory, user=user)


def _start_pgbouncer(directory: Path, port: int, pg_port: int) -> Service:
    """PgBouncer in front of Postgres. Dagster's Postgres storage opens a connection per query
    (SQLAlchemy's NullPool; dagster-io/dagster#20325): measured here, 9 a second from an idle
    daemon and 40 with two runs, each a new Postgres backend process (fork, catalog load). PgBouncer
    keeps the backends open and lends one per client connection (session pooling: a connection's
    SET statements stay its own), so a query costs no backend start."""
    users = directory / "pgbouncer-users.txt"
    users.write_text('"postgres" ""\n')  # trust: the name must be listed, with no password
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host=127.0.0.1 port={pg_port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {users}",
                "admin_users = postgres",
                "pool_mode = session",
                "max_client_conn = 1000",
                # below Postgres' max_connections (100): the webserver keeps a few open in its
                # own pools, everyone else borrows one for a query; the rest wait their turn
                "default_pool_size = 80",
                "log_connections = 0",
                "log_disconnections = 0",
            ]
        )
        + "\n"
    )
    argv = [_require("pgbouncer"), str(ini)]
    return _start("pgbouncer", argv, directory, None, directory, user=_postgres_user())


def _create_database(postgres_url: str) -> bool:
    import psycopg2  # noqa: PLC0415 (a dependency of dagster-postgres)

    server = urlsplit(postgres_url)
    conn = psycopg2.connect(
        host=server.hostname, port=server.port, user="postgres", dbname="postgres"
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {_DATABASE}")
    finally:
        conn.close()
    return True


def redis_argv(directory: Path, port: int) -> list[str]:
    """Redis with an append-only file synced at each write: a restart keeps every queued and
    unacknowledged step (Celery's messages), so no video is lost."""
    data = directory / "redis"
    data.mkdir(exist_ok=True)
    return [
        _require("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip


def _redis_ping(url: str) -> bool:
    import redis  # noqa: PLC0415

    return bool(redis.Redis.from_url(url, socket_timeout=1).ping())


def _create_buckets(endpoint: str) -> bool:
    import boto3  # noqa: PLC0415

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=_MOTO_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_MOTO_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=_MOTO_KEYS["AWS_DEFAULT_REGION"],
    )
    for bucket in BUCKETS.values():
        client.create_bucket(Bucket=bucket)
    return True


def _workers_ready(broker: str, names: set[str]) -> bool:
    from celery import Celery  # noqa: PLC0415

    app = Celery(broker=broker)
    try:
        replies = app.control.ping(timeout=0.5) or []
    finally:
        app.close()
    answered = {name.split("@", 1)[0] for reply in replies for name in reply}
    return names <= answered


def instance(state: ClusterState) -> DagsterInstance:
    """The cluster's Dagster instance (its Postgres storage), from its DAGSTER_HOME."""
    return DagsterInstance.from_config(state.home)


def _daemon_ready(state: ClusterState) -> bool:
    with instance(state) as dagster:
        statuses = dagster.get_daemon_statuses()
        return bool(statuses) and all(s.healthy for s in statuses.values())


def restart(state: ClusterState, name: str, timeout_s: float = 60.0) -> Service:
    """Start the service `name` again as `up` started it (after it was stopped or killed: a fault,
    a lost worker replaced), on the same port and data; returns when it answers."""
    old = state.service(name)
    if not liveness.is_gone(old.owner):
        raise ClusterError(f"{name} still runs (pid {old.pid}): stop it first")
    directory = Path(state.dir)
    service = _start(
        name,
        old.argv,
        directory,
        state.env if old.cluster_env else None,
        Path(old.cwd),
        user=old.user,
    )
    state.services = [service if s.name == name else s for s in state.services]
    state.save()
    ready: Callable[[], bool] = {
        "redis": lambda: _redis_ping(state.redis_url),
        "postgres": lambda: _create_database(state.postgres_url),
        "s3": lambda: _http_ok(state.s3_endpoint),
        "codeserver": lambda: _code_server_ready(int(old.argv[old.argv.index("-p") + 1])),
        "daemon": lambda: _daemon_ready(state),
        "webserver": lambda: _http_ok(f"{state.ui_url}/server_info"),
    }.get(name, lambda: _workers_ready(state.env["MPEGFLOW_CELERY_BROKER"], {name}))
    _wait(name, ready, [service], timeout_s)
    return service


def worker_argv(config_yaml: Path, name: str) -> list[str]:
    """One Celery worker running one step at a time (`-c 1`: a step's FFmpeg lanes use the cores)."""
    return [
        str(Path(sys.executable).parent / "dagster-celery"),
        "worker", "start",
        "-y", str(config_yaml),
        "-A", "mpegflow_dagster.celery_app",
        "-n", name,
        "--", "-c", "1", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def code_server_argv(project: Path, port: int) -> list[str]:
    """The code location's gRPC server (`dagster code-server start`): it loads `definitions.py`
    once and launches the runs' processes; a reload is asked for, never on a timer."""
    return [
        str(Path(sys.executable).parent / "dagster"),
        "code-server", "start",
        "-h", "127.0.0.1", "-p", str(port),
        "-f", str(project / "definitions.py"),
        "-d", str(project),
        "--location-name", LOCATION,
    ]  # fmt: skip


def _code_server_ready(port: int) -> bool:
    try:  # the proxy forwards a ping to the server that holds the loaded definitions
        DagsterGrpcClient(port=port, host="127.0.0.1").ping("")
    except DagsterUserCodeUnreachableError:
        return False
    return True


def up(project: Path, directory: Path, options: Optional[ClusterOptions] = None) -> ClusterState:
    """Start the cluster (see the module's doc); returns when every part answers. On any failure
    everything started so far is stopped again."""
    options = options or ClusterOptions()
    project, directory = Path(project).resolve(), Path(directory).resolve()
    if (directory / STATE_FILE).exists():
        old = ClusterState.load(directory)
        if any(old.alive().values()):
            raise ClusterError(
                f"a cluster already runs from {directory}: `mpegflow cluster down` first"
            )
        (directory / STATE_FILE).unlink()
    started = time.monotonic()
    for sub in ("logs", "home", "work", "events"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    pg_port = options.postgres_port or free_port()
    redis_port = options.redis_port or free_port()
    s3_port = options.s3_port or free_port()
    ui_port = options.ui_port or free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}"
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    pool_port = options.pgbouncer_port or free_port()
    direct_url = f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/{_DATABASE}"
    postgres_url = f"postgresql+psycopg2://postgres@127.0.0.1:{pool_port}/{_DATABASE}"
    env = cluster_env(project, directory, redis_url, s3_endpoint, options)
    state = ClusterState(
        dir=str(directory),
        project=str(project),
        home=env["DAGSTER_HOME"],
        ui_url=f"http://127.0.0.1:{ui_port}",
        s3_endpoint=s3_endpoint,
        redis_url=redis_url,
        postgres_url=postgres_url,
        workers=options.workers,
        max_concurrent_runs=options.max_concurrent_runs,
        env=env,
    )
    # Debian's servers, all of them, before anything starts (a missing one must not leave the
    # others running)
    postgres_bin()
    for tool in ("redis-server", "pgbouncer"):
        _require(tool)

    def record(service: Service) -> Service:
        # recorded at once: `down` (below, on any failure) stops what the state file lists
        state.services.append(service)
        state.save()
        return service

    try:
        # the servers first, at once
        bin_dir = Path(sys.executable).parent
        postgres = record(_start_postgres(directory, pg_port))
        redis = record(
            _start("redis", redis_argv(directory, redis_port), directory, None, directory)
        )
        moto = record(
            _start(
                "s3",
                [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                directory,
                None,
                directory,
            )
        )
        _wait("postgres", lambda: _create_database(direct_url), [postgres], 60)
        pgbouncer = record(_start_pgbouncer(directory, pool_port, pg_port))
        _wait("pgbouncer", lambda: _create_database(postgres_url), [pgbouncer], 30)
        _wait("redis", lambda: _redis_ping(redis_url), [redis], 30)
        _wait("s3", lambda: _create_buckets(s3_endpoint), [moto], 30)

        # the instance and the code location, then Dagster's processes, at once
        home = Path(env["DAGSTER_HOME"])
        (home / "dagster.yaml").write_text(
            yaml.safe_dump(instance_config(postgres_url, options.max_concurrent_runs))
        )
        # the instance's tables, from here: on a new database, Dagster's processes started at
        # once each create them and race (`type "run_tags" already exists`: the daemon exits)
        with instance(state) as dagster:
            dagster.get_runs(limit=1)
        # A code server of its own, as production deployments run it: the daemon and the
        # webserver reach the definitions over gRPC. With a `python_file` workspace instead the
        # daemon starts a new code server every 60 s (Dagster's workspace refresh) and imports
        # the definitions again each time (docs/cluster.md: 2.8 CPU-s a minute here).
        code_port = free_port()
        code_server = record(
            _start("codeserver", code_server_argv(project, code_port), directory, env, project)
        )
        workspace = directory / "workspace.yaml"
        workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "grpc_server": {
                                "host": "127.0.0.1",
                                "port": code_port,
                                "location_name": LOCATION,
                            }
                        }
                    ]
                }
            )
        )
        celery = CelerySettings(
            broker=env["MPEGFLOW_CELERY_BROKER"],
            backend=env["MPEGFLOW_CELERY_BACKEND"],
            lost_step_after_s=options.lost_step_after_s,
        )
        worker_yaml = directory / "celery.yaml"
        worker_yaml.write_text(
            yaml.safe_dump({"execution": {"config": celery_executor_config(celery)}})
        )
        names = {f"worker{i}" for i in range(1, options.workers + 1)}
        workers = [
            record(_start(n, worker_argv(worker_yaml, n), directory, env, project))
            for n in sorted(names)
        ]
        # the daemon and the webserver load the workspace when they start: the code first
        _wait("codeserver", lambda: _code_server_ready(code_port), [code_server], 120)
        daemon = record(
            _start(
                "daemon",
                [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
                directory,
                env,
                project,
            )
        )
        webserver = record(
            _start(
                "webserver",
                [
                    str(bin_dir / "dagster-webserver"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ui_port),
                    "-w",
                    str(workspace),
                ],  # fmt: skip
                directory,
                env,
                project,
            )
        )
        _wait("workers", lambda: _workers_ready(celery.broker, names), workers, 120)
        _wait("daemon", lambda: _daemon_ready(state), [daemon], 120)
        _wait("webserver", lambda: _http_ok(f"{state.ui_url}/server_info"), [webserver], 120)
    except BaseException:
        down(directory)
        raise
    state.started_s = round(time.monotonic() - started, 2)
    state.save()
    return state


_STOP_SIGNAL = {"postgres": signal.SIGINT}  # Postgres' fast shutdown (SIGTERM waits for clients)


def stop(services: Iterable[Service], timeout_s: float = 15.0) -> list[str]:
    """Stop each service's whole process group (its children too), all at once: its stop signal,
    then SIGKILL for what is left after `timeout_s`. Returns the names of those that ran."""
    running = [s for s in services if not liveness.is_gone(s.owner)]
    for service in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, _STOP_SIGNAL.get(service.name, signal.SIGTERM))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(liveness.is_gone(s.owner) for s in running):
        time.sleep(0.1)
    for service in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)  # whatever is left of the group
        with contextlib.suppress(ChildProcessError):  # not a zombie of ours (started here)
            os.waitpid(service.pid, 0)
    return [s.name for s in running]


def down(directory: Path) -> list[str]:
    """Stop every process group `up` started, the Dagster processes before the servers they use.
    Returns the names of the services stopped. The data (Postgres, Redis, logs) stays."""
    directory = Path(directory).resolve()
    try:
        state = ClusterState.load(directory)
    except ClusterError:
        return []
    servers = {"postgres", "redis", "s3"}
    stopped = stop(s for s in state.services if s.name not in servers)
    stopped += stop(s for s in state.services if s.name in servers)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped


def describe(state: ClusterState) -> str:
    alive = state.alive()
    lines = [
        f"Dagster UI:   {state.ui_url}",
        f"S3 endpoint:  {state.s3_endpoint} (access key {state.env['AWS_ACCESS_KEY_ID']!r})",
        *(f"  {role:9} s3://{bucket}" for role, bucket in BUCKETS.items()),
        f"  uploads go under s3://{BUCKETS['upload']}/{UPLOAD_PREFIX}/<pipeline>/",
        f"Redis:        {state.redis_url} (Celery broker /0, results /1)",
        f"Postgres:     {state.postgres_url} (PgBouncer, pooling the instance's connections)",
        f"Instance:     DAGSTER_HOME={state.home}",
        f"Run queue:    at most {state.max_concurrent_runs} runs at once",
        "Processes:    "
        + ", ".join(
            f"{s.name} {s.pid}{'' if alive[s.name] else ' (gone)'}" for s in state.services
        ),
        f"Logs:         {Path(state.dir) / 'logs'}",
        f"Submit:       mpegflow cluster submit VIDEO --dir {state.dir}",
        f"Stop:         mpegflow cluster down --dir {state.dir}",
    ]
    return "\n".join(lines)


def worker_settings(state: ClusterState) -> str:
    """The environment a worker on another machine needs (docs/cluster.md), as shell lines."""
    return "\n".join(f"export {k}={json.dumps(v)}" for k, v in sorted(state.env.items()))


def upload(state: ClusterState, source: Path, pipeline: str) -> str:
    """Put `source` where the upload sensor of `pipeline` looks; returns the run key the sensor
    gives its run (`<key>:<etag>`, so the same upload never runs twice)."""
    key = f"{UPLOAD_PREFIX}/{pipeline}/{source.name}"
    with open(source, "rb") as body:
        etag = state.s3_client().put_object(Bucket=BUCKETS["upload"], Key=key, Body=body)["ETag"]
    return f"{key}:{etag.strip(chr(34))}"


def outcome_events(state: ClusterState, video: str) -> Counter[str]:
    """How many customer events of each type (`video.published`, `video.succeeded`, ...) the
    cluster sent for `video`: its events file, which every worker on this machine appends to."""
    path = Path(state.env["MPEGFLOW_EVENTS_PATH"])
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(e["type"] for e in map(json.loads, lines) if e.get("video") == video)


def wait_for_run(
    state: ClusterState,
    run_key: str,
    timeout_s: float,
    on_status: Callable[[DagsterRun], None] = lambda run: None,
) -> DagsterRun:
    """The run the sensor requested for `run_key`, once finished; `on_status` sees each status
    it passes through (QUEUED while the run queue holds it)."""
    deadline = time.monotonic() + timeout_s
    seen: Optional[DagsterRunStatus] = None
    with instance(state) as dagster:
        while time.monotonic() < deadline:
            runs = dagster.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
            if runs:
                run = runs[0]
                if run.status != seen:
                    seen = run.status
                    on_status(run)
                if run.is_finished:
                    return run
            time.sleep(0.5)
    raise ClusterError(
        f"no finished run for upload {run_key} after {timeout_s:.0f} s "
        f"(last status: {seen.value if seen else 'not requested yet'}); see {state.ui_url}"
    )
