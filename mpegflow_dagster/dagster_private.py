"""Every use of Dagster's private modules, in one place.

At each Dagster upgrade, check that these names still exist and mean the same:
- `extract_data_version_from_entry`, `extract_data_provenance_from_entry`: how a materialization
  records its data version and its DataProvenance (code version, input data versions);
- `SqliteEventLogStorage`, `INDEX_SHARD_NAME`, `SQLITE_BUSY_TIMEOUT_SECONDS`,
  `ConfigurableClassData`: what `sqlite_event_log.py` subclasses (see its docstring);
- `StaleStatus` and the stale-status resolver used by tests.
"""

from typing import Optional

from dagster import DataProvenance, DataVersion, EventLogRecord
from dagster._core.definitions.data_version import (
    StaleStatus,
    extract_data_provenance_from_entry,
    extract_data_version_from_entry,
)
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
    "data_provenance",
    "data_version",
    "get_stale_status_resolver",
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
