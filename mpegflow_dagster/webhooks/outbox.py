"""The webhook outbox: a SQLite file of events awaiting delivery. No Dagster here."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

OUTBOX_FILE = "webhook-outbox.sqlite3"


class WebhookOutbox:
    """SQLite file holding events awaiting delivery, the ids already delivered (the newest
    `max_delivered_ids`) and permanently rejected events. Safe to share between processes."""

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
            return db.execute("SELECT 1 FROM delivered WHERE event_id = ?", (event_id,)).fetchone() is not None

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
                "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?)", (event_id, body, http_status, error, time.time())
            )

    def defer(self, event_id: str, event_type: str, body: bytes, attempts: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO pending (event_id, body, type, attempts, last_error, queued_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (event_id) DO UPDATE SET attempts = attempts + excluded.attempts,
                       last_error = excluded.last_error, lease_until = 0""",
                (event_id, body, event_type, attempts, error, time.time()),
            )

    def claim(self, event_id: str, lease_s: float) -> bool:
        """Take `event_id` for one flush attempt so concurrent flushes do not both send it; the
        lease expires on its own if this process dies mid-attempt."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE pending SET lease_until = ? WHERE event_id = ? AND lease_until <= ?",
                (now + lease_s, event_id, now),
            )
            return cur.rowcount == 1

    def pending(self) -> list[dict[str, Any]]:
        """Events awaiting delivery, oldest first."""
        with self._tx() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT event_id, type, body, attempts, last_error, queued_at FROM pending ORDER BY queued_at"
            )
            return [dict(row) for row in rows]

    def rejected(self) -> list[dict[str, Any]]:
        with self._tx() as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM rejected ORDER BY at")]
