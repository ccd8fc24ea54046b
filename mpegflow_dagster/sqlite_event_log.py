"""Dagster's SQLite event log without a new database engine and connection for every query.

Dagster's `SqliteEventLogStorage` creates (and disposes) a SQLAlchemy engine each time it opens
one of its databases: about 250 times in one run of our graph, and twice more for every dynamic
partition check. A new engine costs 1-2 ms of CPU and starts with an empty compiled-statement
cache. Measured here (alternating runs of a 10 s clip), keeping the engines takes about 0.35 s of
wall time and 0.35 CPU-s off each run.

Each run also gets a new database file, whose schema Dagster creates through alembic, loading its
~90 migration scripts every time: 80-140 ms per run here. A new run's file is instead copied from
an empty one that Dagster's own code made once for this Dagster version (under 3 ms).

Each engine also keeps its one SQLite connection open, and commits are not synced to disk one by
one (`synchronous=NORMAL`, SQLite's advice for a write-ahead log: after an OS crash or power loss
the last events may be missing, and the database is never corrupted; `synchronous: FULL` restores
Dagster's setting). Opened per use, as Dagster does, every write parsed the schema again, its
commit was synced, and the close checkpointed and deleted the write-ahead log that the next write
created again: on this VM, with FFmpeg writing beside it, a sync takes 0.5-8 ms. Alternating runs
of a 10 s clip: 1.89 s of non-FFmpeg time per video with connections opened per use, 1.34 s with
them kept (FULL, and a checkpoint after each write), 1.15 s as shipped. Dagster's UI follows a
live run by watching its `.db` file for changes, which those closing checkpoints used to make; a
write to a run's database now touches the file's modification time instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager, suppress
from typing import Any, Iterator, Mapping, Optional

from dagster import Enum, EnumValue, Field, StringSource
from dagster.version import __version__ as DAGSTER_VERSION
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

from .dagster_private import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConfigurableClassData,
    SqliteEventLogStorage,
)

SYNCHRONOUS = ("NORMAL", "FULL")


class CachedEngineSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log storage (same files, same schema: either class reads what the
    other wrote) that keeps one SQLAlchemy engine per database file, for the `max_engines` most
    recently used files, instead of building one per query. Each engine keeps its SQLite connection
    open between uses (still used under Dagster's lock; a forked child opens its own), with
    `synchronous` set as configured, and a write to a run's database touches the file, which the
    UI's live view of the run waits for. A new run's database is a copy of an empty one made by
    Dagster's own schema code (kept in `base_dir` as `.shard-template-<dagster version>.sqlite`,
    a name Dagster does not list as a run).

    Point `base_dir` at `$DAGSTER_HOME/history/runs`, where Dagster's default storage keeps its
    event logs, and an existing instance keeps its history.

    Examples:
        In `$DAGSTER_HOME/dagster.yaml` (what `make install` writes from `resources/dagster.yaml`):

        .. code-block:: YAML

            event_log_storage:
              module: mpegflow_dagster.sqlite_event_log
              class: CachedEngineSqliteEventLogStorage
              config:
                base_dir: /path/to/dagster_home/history/runs

        In Python:

        .. code-block:: python

            import tempfile
            from mpegflow_dagster.sqlite_event_log import CachedEngineSqliteEventLogStorage

            storage = CachedEngineSqliteEventLogStorage(tempfile.mkdtemp())
            assert storage.get_all_run_ids() == []
    """

    def __init__(
        self,
        base_dir: str,
        inst_data: Optional[ConfigurableClassData] = None,
        max_engines: int = 32,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}"
            )
        self._synchronous = synchronous
        # set before Dagster's constructor, which may already query the index
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._engines_pid = os.getpid()
        self._max_engines = max(1, max_engines)
        self._tables: set[str] = set()
        # Closing the last connection folds the write-ahead log into the .db file and removes it,
        # so a process that never disposes its instance still leaves whole files behind.
        atexit.register(_dispose_engines_of, weakref.ref(self))
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {
            "base_dir": Field(
                StringSource,
                description="Directory of the event log databases (Dagster's default: "
                "$DAGSTER_HOME/history/runs).",
            ),
            "max_engines": Field(
                int,
                is_required=False,
                default_value=32,
                description="Database engines kept (one per run being written or read, plus the index).",
            ),
            "synchronous": Field(
                Enum("SqliteSynchronous", [EnumValue(v) for v in SYNCHRONOUS]),
                is_required=False,
                default_value="NORMAL",
                description="SQLite's `synchronous`: NORMAL syncs the write-ahead log at checkpoints "
                "(the last events may be lost on power loss, never corrupted); FULL, "
                "Dagster's own setting, syncs every commit.",
            ),
        }

    @classmethod
    def from_config_value(
        cls,
        inst_data: Optional[ConfigurableClassData],  # type: ignore[override]
        config_value: Mapping[str, Any],
    ) -> "CachedEngineSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            if self._engines_pid != os.getpid():
                self._drop_engines()  # a forked child opens connections of its own
            engine = self._engines.pop(shard, None) or self._new_engine(shard)
            self._engines[shard] = engine  # most recently used last
            while len(self._engines) > self._max_engines:
                self._engines.popitem(last=False)[1].dispose()
            return engine

    def _new_engine(self, shard: str) -> Engine:
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=-1,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        event.listen(engine, "connect", self._on_connect)
        return engine

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA synchronous={self._synchronous}")

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            self._drop_engines()

    def _drop_engines(self) -> None:
        """Close the kept connections; the caller holds `_engines_lock`. In a forked child they are
        its parent's, which it must neither use nor close: those are only forgotten."""
        own = self._engines_pid == os.getpid()
        while self._engines:
            self._engines.popitem()[1].dispose(close=own)
        self._engines_pid = os.getpid()

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                if shard == INDEX_SHARD_NAME or not self._new_from_template(shard):
                    self._initdb(engine)  # an existing file: Dagster checks its schema revision
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None  # a checked-out pool connection
                changes = raw.total_changes
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME and raw.total_changes != changes:
                    os.utime(
                        self.path_for_shard(shard)
                    )  # what the UI's watcher of this run's .db file waits for

    def wipe(self) -> None:
        self._dispose_engines()  # no open connection may outlive the files Dagster deletes
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()

    def _new_from_template(self, shard: str) -> bool:
        """Create the database of a new run as a copy of the template; False if it already exists
        (or cannot be linked into place), for Dagster's own initialization to handle."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        template = self._template()
        with _staged(path) as staged:
            shutil.copyfile(template, staged)
            try:
                os.link(staged, path)  # never replaces a file another process has just created
            except OSError:
                return False
        return True

    def _template(self) -> str:
        template = os.path.join(self._base_dir, f".shard-template-{DAGSTER_VERSION}.sqlite")
        if not os.path.exists(template):
            with _staged(template) as staged:
                engine = create_engine(f"sqlite:///{staged}", poolclass=NullPool)
                try:
                    self._initdb(engine)
                finally:
                    engine.dispose()
                os.replace(staged, template)
        return template

    def has_table(self, table_name: str) -> bool:
        # Asked before every dynamic-partition query. Migrations add tables and nothing here drops
        # them, so a table once seen is remembered; a missing one is asked again.
        if table_name in self._tables:
            return True
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables.add(table_name)
        return found

    @property
    def engines_kept(self) -> int:
        return len(self._engines)


def _dispose_engines_of(storage: "weakref.ref[CachedEngineSqliteEventLogStorage]") -> None:
    if (alive := storage()) is not None:
        alive._dispose_engines()


@contextmanager
def _staged(path: str) -> Iterator[str]:
    """A private name beside `path` to build a file under; whatever is left there is removed."""
    staged = f"{path}.{os.getpid()}.{threading.get_ident()}.new"
    try:
        yield staged
    finally:
        with suppress(FileNotFoundError):
            os.unlink(staged)
