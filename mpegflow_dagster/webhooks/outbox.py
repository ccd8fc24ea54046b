"""The webhook outbox: a SQLite file of events awaiting delivery, in the order they were sent.
No Dagster here.

A step only appends to it (`WebhookOutbox.send`: one local insert, no network); `delivery.py`
POSTs from it, outside the step.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from ..events import Event
from .signing import event_body

OUTBOX_FILE = "webhook-outbox.sqlite3"


class WebhookOutbox:
    """SQLite file holding events awaiting delivery, the ids already delivered (the newest
    `max_delivered_ids`) and permanently rejected events. Safe to share between processes.

    An `EventSink`: `send` queues an event. Queued events are delivered in the order they were
    queued (rowid order). A queued event's `lease_until` holds it back: until then no deliverer
    may take it, because one is sending it (`claim_next`) or its last attempt failed (`retry_later`).
    """

    def __init__(self, directory: Union[str, Path], max_delivered_ids: int = 100_000) -> None:
        self.path = Path(directory) / OUTBOX_FILE
        self.max_delivered_ids = max_delivered_ids
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as db:
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS pending (
                    event_id TEXT PRIMARY KEY, body BLOB NOT NULL, type TEXT NOT NULL,
                    attempts INTEGER NOT NULL, last_error TEXT, queued_at REAL NOT NULL,
                    lease_until REAL NOT NULL DEFAULT 0);
                CREATE TABLE IF NOT EXISTS delivered (event_id TEXT PRIMARY KEY, at REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS delivered_at ON delivered (at);
                CREATE TABLE IF NOT EXISTS rejected (
                    event_id TEXT PRIMARY KEY, body BLOB NOT NULL, http_status INTEGER,
                    error TEXT, at REAL NOT NULL);
                """
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # A short-lived connection per operation: safe across forked Dagster step processes.
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def is_delivered(self, event_id: str) -> bool:
        with self._tx() as db:
            return (
                db.execute("SELECT 1 FROM delivered WHERE event_id = ?", (event_id,)).fetchone()
                is not None
            )

    def mark_delivered(self, event_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))
            db.execute("INSERT OR REPLACE INTO delivered VALUES (?, ?)", (event_id, time.time()))
            db.execute(
                "DELETE FROM delivered WHERE at < "
                "(SELECT at FROM delivered ORDER BY at DESC LIMIT 1 OFFSET ?)",
                (self.max_delivered_ids - 1,),
            )

    def reject(self, event_id: str, body: bytes, http_status: int, error: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))
            db.execute(
                "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?)",
                (event_id, body, http_status, error, time.time()),
            )

    def send(self, event: Event) -> None:
        """Queue `event` behind those queued before it, unless its id is delivered or queued already."""
        with self._tx() as db:
            db.execute(
                """INSERT OR IGNORE INTO pending (event_id, body, type, attempts, queued_at)
                   SELECT ?, ?, ?, 0, ? WHERE NOT EXISTS (SELECT 1 FROM delivered WHERE event_id = ?)""",
                (event.id, event_body(event), event.type, time.time(), event.id),
            )

    def claim_next(self, lease_s: float) -> Optional[dict[str, Any]]:
        """The oldest queued event, taken for one attempt; None if nothing is queued or the oldest
        is held (another process is sending it, or it waits out a backoff). Later events wait
        behind it, so events arrive in the order they were sent. The claim lapses after `lease_s`,
        so an event whose deliverer died mid-attempt is sent again."""
        now = time.time()
        with self._tx() as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT event_id, type, body, attempts, lease_until FROM pending ORDER BY rowid LIMIT 1"
            ).fetchone()
            if row is None or row["lease_until"] > now:
                return None
            cur = db.execute(  # guarded: of two processes that read the same row, one takes it
                "UPDATE pending SET lease_until = ? WHERE event_id = ? AND lease_until <= ?",
                (now + lease_s, row["event_id"], now),
            )
            return dict(row) if cur.rowcount == 1 else None

    def retry_later(self, event_id: str, error: str, delay_s: float) -> None:
        """Count a failed attempt and hold the event back for `delay_s`."""
        with self._tx() as db:
            db.execute(
                "UPDATE pending SET attempts = attempts + 1, last_error = ?, lease_until = ? WHERE event_id = ?",
                (error, time.time() + delay_s, event_id),
            )

    def next_attempt_at(self) -> Optional[float]:
        """When the oldest queued event may be taken (unix time; past if now), None if nothing is queued."""
        with self._tx() as db:
            row = db.execute("SELECT lease_until FROM pending ORDER BY rowid LIMIT 1").fetchone()
            return None if row is None else row[0]

    def pending(self) -> list[dict[str, Any]]:
        """Events awaiting delivery, in delivery order."""
        with self._tx() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT event_id, type, body, attempts, last_error, queued_at FROM pending ORDER BY rowid"
            )
            return [dict(row) for row in rows]

    def rejected(self) -> list[dict[str, Any]]:
        with self._tx() as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM rejected ORDER BY at")]
