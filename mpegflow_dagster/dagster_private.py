"""Every use of Dagster's private modules, in one place.

At each Dagster upgrade, check that these names still exist and mean the same:
- `extract_data_version_from_entry`, `extract_data_provenance_from_entry`: how a materialization
  records its data version and its DataProvenance (code version, input data versions);
- `SqliteEventLogStorage`, `INDEX_SHARD_NAME`, `SQLITE_BUSY_TIMEOUT_SECONDS`,
  `ConfigurableClassData`: what `sqlite_event_log.py` subclasses (see its docstring);
- `StaleStatus` and the stale-status resolver used by tests;
- `UnresolvedAssetJobDefinition`: what `define_asset_job` returns (for type hints);
- `PartitionKeyFilter`: how the event log's check queries take a partition (`latest_checks`);
- `ExecutionPlanSnapshot` (what `instance.get_execution_plan_snapshot` returns): a run's steps,
  the asset keys of their outputs and the steps their inputs come from.
"""

from typing import Any, Optional

from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    DagsterRun,
    DataProvenance,
    DataVersion,
    EventLogRecord,
)
from dagster._core.definitions.data_version import (
    StaleStatus,
    extract_data_provenance_from_entry,
    extract_data_version_from_entry,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecord
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from dagster._utils.test.data_versions import get_stale_status_resolver

__all__ = [
    "INDEX_SHARD_NAME",
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "ConfigurableClassData",
    "SqliteEventLogStorage",
    "StaleStatus",
    "UnresolvedAssetJobDefinition",
    "data_provenance",
    "data_version",
    "get_stale_status_resolver",
    "latest_checks",
    "planned_steps",
    "step_key",
]


def data_version(record: Optional[EventLogRecord]) -> Optional[str]:
    """The data version a materialization record carries, if any."""
    version: Optional[DataVersion] = (
        extract_data_version_from_entry(record.event_log_entry) if record else None
    )
    return version.value if version is not None else None


def data_provenance(record: Optional[EventLogRecord]) -> Optional[DataProvenance]:
    """The code version and input data versions a materialization record carries, if any."""
    return extract_data_provenance_from_entry(record.event_log_entry) if record else None


def latest_checks(
    instance: DagsterInstance, keys: list[AssetCheckKey], partition: str
) -> dict[AssetCheckKey, AssetCheckExecutionRecord]:
    """The latest execution of each check for one partition (the instance's own accessor has no
    partition argument)."""
    return dict(
        instance.event_log_storage.get_latest_asset_check_execution_by_key(
            keys, partition_filter=PartitionKeyFilter(key=partition)
        )
    )


def step_key(context: Any) -> str:
    """The key of the step an asset or op context executes (Dagster marks the accessor private)."""
    return context.get_step_execution_context().step.key


def planned_steps(
    instance: DagsterInstance, run: DagsterRun
) -> dict[str, tuple[frozenset[AssetKey], frozenset[str]]]:
    """The steps `run` planned to execute: for each, the asset keys of its outputs and the steps
    its inputs read from (Dagster's public API has no asset graph in a hook's context)."""
    if run.execution_plan_snapshot_id is None:
        return {}
    snap = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    to_run = set(snap.step_keys_to_execute or [s.key for s in snap.steps])
    return {
        step.key: (
            frozenset(
                o.properties.asset_key
                for o in step.outputs
                if o.properties is not None and o.properties.asset_key is not None
            ),
            frozenset(h.step_key for i in step.inputs for h in i.upstream_output_handles),
        )
        for step in snap.steps
        if step.key in to_run
    }
