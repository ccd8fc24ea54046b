"""The event log storage we ship in resources/dagster.yaml: Dagster's SQLite files, kept engines and connections."""

import logging
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterInvalidConfigError,
    DynamicPartitionsDefinition,
    EventLogEntry,
    asset,
    materialize,
)
from pipeline_helpers import write_instance_config

from mpegflow_dagster.dagster_private import SqliteEventLogStorage
from mpegflow_dagster.sqlite_event_log import CachedEngineSqliteEventLogStorage

VIDEOS = DynamicPartitionsDefinition(name="videos")


@asset(partitions_def=VIDEOS)
def size(context) -> int:
    return len(context.partition_key)


def materialize_videos(instance: DagsterInstance, keys: list[str]) -> list[str]:
    instance.add_dynamic_partitions("videos", keys)
    run_ids = []
    for key in keys:
        result = materialize([size], instance=instance, partition_key=key)
        assert result.success
        run_ids.append(result.run_id)
    return run_ids


def test_the_shipped_config_writes_what_dagsters_own_storage_reads(tmp_path: Path):
    home = tmp_path / "home"
    write_instance_config(home)
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, CachedEngineSqliteEventLogStorage)
        run_ids = materialize_videos(instance, ["a", "bb"])
        assert (home / "history" / "runs" / f"{run_ids[0]}.db").is_file()  # Dagster's default place
        ours = {r: [e.dagster_event_type for e in instance.all_logs(r)] for r in run_ids}
    # Dagster's own class on the same directory sees every event and the cross-run asset index.
    plain = SqliteEventLogStorage(str(home / "history" / "runs"))
    assert {r: [e.dagster_event_type for e in plain.get_logs_for_run(r)] for r in run_ids} == ours
    assert all(DagsterEventType.RUN_SUCCESS in types for types in ours.values())
    records = plain.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("size")), limit=10
    ).records
    assert sorted(r.partition_key for r in records) == ["a", "bb"]


def test_engines_kept_are_bounded_and_every_run_stays_readable(tmp_path: Path):
    home = tmp_path / "home"
    config = yaml.safe_load(write_instance_config(home).read_text())
    config["event_log_storage"]["config"]["max_engines"] = 2
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(home)) as instance:
        run_ids = materialize_videos(instance, ["a", "b", "c", "d"])
        assert instance.event_log_storage.engines_kept == 2
        for run_id in run_ids:  # evicted engines are rebuilt on demand
            assert any(
                e.dagster_event_type == DagsterEventType.RUN_SUCCESS
                for e in instance.all_logs(run_id)
            )


def test_a_table_is_remembered_once_seen_and_a_missing_one_asked_again(tmp_path: Path):
    storage = CachedEngineSqliteEventLogStorage(str(tmp_path))
    assert storage.has_table("dynamic_partitions")
    assert not storage.has_table("added_later")
    with sqlite3.connect(tmp_path / "index.db") as conn:  # e.g. a migration run by another process
        conn.execute("CREATE TABLE added_later (x INTEGER)")
    assert storage.has_table("added_later")


def test_a_config_without_base_dir_is_refused_with_the_field_named(tmp_path: Path):
    home = tmp_path / "home"
    config = yaml.safe_load(write_instance_config(home).read_text())
    del config["event_log_storage"]["config"]["base_dir"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DagsterInvalidConfigError, match="base_dir"):
        DagsterInstance.from_config(str(home))
    assert not (home / "history" / "runs").exists()  # nothing was created for the refused config


@pytest.mark.parametrize("configured, pragma", [(None, 1), ("NORMAL", 1), ("FULL", 2)])
def test_commits_are_synced_as_configured(tmp_path: Path, configured, pragma):
    home = tmp_path / "home"
    config = yaml.safe_load(write_instance_config(home).read_text())
    if configured:
        config["event_log_storage"]["config"]["synchronous"] = configured
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        for connect in (lambda: storage.run_connection("r1"), storage.index_connection):
            with connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == pragma


def test_an_unknown_synchronous_setting_is_refused_with_the_choices(tmp_path: Path):
    home = tmp_path / "home"
    config = yaml.safe_load(write_instance_config(home).read_text())
    config["event_log_storage"]["config"]["synchronous"] = "OFF"
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DagsterInvalidConfigError, match="synchronous"):
        DagsterInstance.from_config(str(home))
    with pytest.raises(ValueError, match="NORMAL, FULL"):
        CachedEngineSqliteEventLogStorage(str(tmp_path / "direct"), synchronous="OFF")


def _schema(db: Path) -> tuple:
    with sqlite3.connect(db) as conn:
        return (
            sorted(conn.execute("SELECT type, name, sql FROM sqlite_master")),
            conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            conn.execute("PRAGMA journal_mode").fetchone(),
        )


def test_a_new_run_database_is_a_copy_of_dagsters_own_empty_schema(tmp_path: Path):
    ours_dir, plain_dir = tmp_path / "ours", tmp_path / "plain"
    ours = CachedEngineSqliteEventLogStorage(str(ours_dir))
    plain = SqliteEventLogStorage(str(plain_dir))
    for storage in (ours, plain):
        for run_id in ("r1", "r2"):  # r1 makes the template, r2 is copied from it
            with storage.run_connection(run_id):
                pass
    assert [p.name for p in ours_dir.glob(".shard-template-*.sqlite")]  # kept for the next process
    assert (
        _schema(ours_dir / "r2.db") == _schema(plain_dir / "r2.db") == _schema(ours_dir / "r1.db")
    )
    assert _schema(ours_dir / "r2.db")[2] == ("wal",)
    assert sorted(ours.get_all_run_ids()) == ["r1", "r2"]  # the template is not taken for a run
    assert not list(ours_dir.glob("*.new"))


def test_an_existing_run_database_is_never_replaced_by_the_template(tmp_path: Path):
    home = tmp_path / "home"
    write_instance_config(home)
    with DagsterInstance.from_config(str(home)) as instance:
        [run_id] = materialize_videos(instance, ["a"])
        events = [e.dagster_event_type for e in instance.all_logs(run_id)]
    # A new process (new storage object) opening that run keeps every event.
    fresh = CachedEngineSqliteEventLogStorage(str(home / "history" / "runs"))
    assert [e.dagster_event_type for e in fresh.get_logs_for_run(run_id)] == events
    assert DagsterEventType.RUN_SUCCESS in events


def _log_entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level=logging.INFO,
        user_message=message,
        run_id=run_id,
        timestamp=time.time(),
        step_key=None,
        job_name=None,
        dagster_event=None,
    )


def test_the_uis_live_watch_of_a_run_sees_each_write(tmp_path: Path):
    # The webserver follows a running run by watching its .db file (Dagster's watchdog), in another
    # process with a storage object of its own; the connections kept open must not hide the writes.
    writer = CachedEngineSqliteEventLogStorage(str(tmp_path))
    reader = CachedEngineSqliteEventLogStorage(str(tmp_path))
    writer.store_event(_log_entry("r1", "first"))
    seen: list[str] = []
    arrived = threading.Event()

    def on_event(entry: EventLogEntry, _cursor: str) -> None:
        seen.append(entry.user_message)
        if entry.user_message == "third":
            arrived.set()

    reader.watch("r1", None, on_event)
    try:
        for message in ("second", "third"):
            time.sleep(0.2)
            writer.store_event(_log_entry("r1", message))
        assert arrived.wait(10), f"the watcher saw only {seen}"
    finally:
        reader.end_watch("r1", on_event)
        reader.dispose()
        writer.dispose()
    assert seen[-2:] == ["second", "third"]


def _child_engine_is_its_own(
    storage: CachedEngineSqliteEventLogStorage, parent_engine_id: int, out
) -> None:
    out.put(id(storage._engine("r1")) != parent_engine_id)
    storage.store_event(_log_entry("r1", "from the child"))


def test_a_forked_child_opens_connections_of_its_own(tmp_path: Path):
    storage = CachedEngineSqliteEventLogStorage(str(tmp_path))
    storage.store_event(_log_entry("r1", "from the parent"))
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    child = fork.Process(
        target=_child_engine_is_its_own, args=(storage, id(storage._engine("r1")), out)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0 and out.get(timeout=5)
    storage.store_event(_log_entry("r1", "from the parent again"))
    assert [e.user_message for e in storage.get_logs_for_run("r1")] == [
        "from the parent",
        "from the child",
        "from the parent again",
    ]
    with sqlite3.connect(tmp_path / "r1.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_wipe_closes_the_kept_connections_before_deleting_the_files(tmp_path: Path):
    storage = CachedEngineSqliteEventLogStorage(str(tmp_path))
    storage.store_event(_log_entry("r1", "before the wipe"))
    storage.wipe()
    storage.store_event(_log_entry("r1", "after the wipe"))
    assert [e.user_message for e in storage.get_logs_for_run("r1")] == ["after the wipe"]
    plain = SqliteEventLogStorage(str(tmp_path))
    assert [e.user_message for e in plain.get_logs_for_run("r1")] == ["after the wipe"]
