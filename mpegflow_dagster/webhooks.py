"""Signed webhook delivery of pipeline events, with retries and a durable outbox.

Each event is POSTed as compact JSON (`Event.to_dict()`, sorted keys) with these headers:

    Content-Type: application/json
    X-Mpegflow-Event: rendition.ready
    X-Mpegflow-Event-Id: evt_...           (stable: re-emission of the same fact keeps the id)
    X-Mpegflow-Timestamp: 1767225600       (unix seconds at the time of this attempt)
    X-Mpegflow-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

Delivery is at least once: a timed-out attempt may still have reached the receiver, so receivers
should drop an `X-Mpegflow-Event-Id` they have already processed. To verify a request, compute the
HMAC over the timestamp header, a `.`, and the raw body bytes exactly as received (before any
JSON parsing), compare in constant time, and reject old timestamps. In Python:

    .. code-block:: python

        from mpegflow_dagster.webhooks import verify_signature

        ok = verify_signature(
            secret, request.headers["X-Mpegflow-Timestamp"], request.body,
            request.headers["X-Mpegflow-Signature"],
        )
        if not ok:
            return 401

Failures never reach the pipeline: 5xx, 408, 429, connection errors and timeouts are retried with
exponential backoff, and an event that exhausts its retries waits in a SQLite outbox until
`flush_outbox()` (run at the start of every send, or from a schedule) delivers it. Other 4xx and
3xx answers are permanent and recorded as rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import random
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence, Union

from dagster import ConfigurableResource, InitResourceContext, get_dagster_logger
from pydantic import Field

from .events import Event, EventSink, JsonlEventSink

SIGNATURE_VERSION = "v1"
USER_AGENT = "mpegflow-dagster-webhooks/1"
OUTBOX_FILE = "webhook-outbox.sqlite3"

Status = Literal["delivered", "duplicate", "rejected", "deferred"]


def event_body(event: Event) -> bytes:
    """The exact bytes that are POSTed and signed."""
    return json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, timestamp: Union[int, str], body: Union[bytes, str]) -> str:
    """`v1=<hex>`: HMAC-SHA256 keyed with `secret` over `f"{timestamp}.{body}"`."""
    if isinstance(body, str):
        body = body.encode()
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str,
    timestamp: Union[int, str],
    body: Union[bytes, str],
    signature: str,
    tolerance_s: float = 300,
    now: Optional[float] = None,
) -> bool:
    """True if `signature` (the X-Mpegflow-Signature header) signs `timestamp` and `body` with
    `secret`, and the timestamp is within `tolerance_s` of `now` (so a captured request cannot be
    replayed later). Pass the raw body bytes as received."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    # Bytes on both sides: compare_digest rejects non-ASCII str, and a header is attacker-controlled.
    return hmac.compare_digest(sign(secret, ts, body).encode(), signature.encode())


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one event: delivered, duplicate (already delivered earlier, not sent),
    rejected (permanent 3xx/4xx, recorded, not retried) or deferred (kept in the outbox)."""

    event_id: str
    status: Status
    attempts: int
    http_status: Optional[int] = None
    error: Optional[str] = None


class _Transient(Exception):
    def __init__(self, message: str, http_status: Optional[int] = None, retry_after_s: Optional[float] = None):
        super().__init__(message)
        self.http_status = http_status
        self.retry_after_s = retry_after_s


class _Permanent(Exception):
    def __init__(self, message: str, http_status: int):
        super().__init__(message)
        self.http_status = http_status


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a bodiless GET whose 200 would count as delivered.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


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


class WebhookSink:
    """EventSink that POSTs signed events to `url`; `send` never raises for delivery problems.

    A send first flushes the outbox. If the endpoint is still down, the new event goes straight
    to the outbox instead of waiting out its own retries, so an outage costs the pipeline one
    failed attempt per event rather than `max_attempts` with backoff.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        outbox_dir: Union[str, Path],
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"Webhook url must start with https:// (or http://), got {url!r}.")
        if not secret:
            raise ValueError(
                "Webhook secret is empty: set one (e.g. from EnvVar('MPEGFLOW_WEBHOOK_SECRET')) and share "
                "it with the receiver so it can verify X-Mpegflow-Signature."
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}.")
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.outbox = WebhookOutbox(outbox_dir)
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._log = get_dagster_logger()

    def send(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> DeliveryResult:
        """Like `send`, but says what happened."""
        flushed = self.flush_outbox()
        if self.outbox.is_delivered(event.id):  # earlier, or by that flush
            return DeliveryResult(event.id, "duplicate", 0)
        body = event_body(event)
        if any(r.status == "deferred" for r in flushed):
            self.outbox.defer(event.id, event.type, body, 0, "endpoint unreachable during outbox flush")
            return DeliveryResult(event.id, "deferred", 0, error="endpoint unreachable; queued in outbox")
        return self._attempt(event.id, event.type, body, self.max_attempts)

    def flush_outbox(self) -> list[DeliveryResult]:
        """Retry queued events, oldest first, one attempt each; stop at the first transient
        failure (the endpoint is still down, so the rest would fail too)."""
        results = []
        for row in self.outbox.pending():
            if not self.outbox.claim(row["event_id"], lease_s=self.timeout_s + 60):
                continue  # another process is sending it right now
            result = self._attempt(row["event_id"], row["type"], row["body"], attempts=1)
            results.append(result)
            if result.status == "deferred":
                break
        return results

    def _attempt(self, event_id: str, event_type: str, body: bytes, attempts: int) -> DeliveryResult:
        attempt = 0
        while True:
            attempt += 1
            try:
                status = self._post(event_id, event_type, body)
            except _Permanent as exc:
                self.outbox.reject(event_id, body, exc.http_status, str(exc))
                self._log.warning(f"Webhook rejected {event_type} {event_id}, not retrying: {exc}")
                return DeliveryResult(event_id, "rejected", attempt, exc.http_status, str(exc))
            except _Transient as exc:
                if attempt >= attempts:
                    self.outbox.defer(event_id, event_type, body, attempts, str(exc))
                    self._log.warning(
                        f"Webhook delivery of {event_type} {event_id} failed {attempts}x ({exc}); kept in "
                        f"{self.outbox.path} for flush_outbox()."
                    )
                    return DeliveryResult(event_id, "deferred", attempt, exc.http_status, str(exc))
                time.sleep(self._backoff(attempt, exc.retry_after_s))
            else:
                self.outbox.mark_delivered(event_id)
                return DeliveryResult(event_id, "delivered", attempt, status)

    def _backoff(self, attempt: int, retry_after_s: Optional[float]) -> float:
        delay = self.backoff_s * 2 ** (attempt - 1)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        # Jitter in [delay/2, delay] spreads retries from parallel steps hitting the same endpoint.
        return min(delay, self.max_backoff_s) * random.uniform(0.5, 1.0)

    def _post(self, event_id: str, event_type: str, body: bytes) -> int:
        timestamp = str(int(time.time()))  # signed per attempt, so a late retry is not stale
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-Mpegflow-Event": event_type,
                "X-Mpegflow-Event-Id": event_id,
                "X-Mpegflow-Timestamp": timestamp,
                "X-Mpegflow-Signature": sign(self.secret, timestamp, body),
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as exc:
            code = exc.code
            detail = f"HTTP {code} from {self.url}: {_excerpt(exc)}"
            if code >= 500 or code in (408, 429):
                raise _Transient(detail, code, _retry_after(exc.headers.get("Retry-After"))) from exc
            if 300 <= code < 400:
                detail += f" (redirect to {exc.headers.get('Location')!r}; configure that url instead)"
            raise _Permanent(detail, code) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, DNS, TLS, timeout, reset
            reason = getattr(exc, "reason", exc)
            raise _Transient(f"{type(reason).__name__} posting to {self.url}: {reason}") from exc


def _excerpt(exc: urllib.error.HTTPError, limit: int = 200) -> str:
    try:
        text = exc.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or str(exc.reason)


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date; our own backoff applies


class FanoutSink:
    """Sends every event to each sink in order. Each sink gets the event even if an earlier one
    raised; the first error is re-raised afterwards."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def send(self, event: Event) -> None:
        error: Optional[BaseException] = None
        for sink in self.sinks:
            try:
                sink.send(event)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error


class WebhookResource(ConfigurableResource):
    """Where pipeline events go: always a JSON Lines file, and a signed webhook when `url` is set.

    Examples:
        .. code-block:: python

            from dagster import Definitions, EnvVar
            from mpegflow_dagster.webhooks import WebhookResource

            defs = Definitions(
                resources={
                    "events": WebhookResource(
                        url="https://example.com/hooks/mpegflow",
                        secret=EnvVar("MPEGFLOW_WEBHOOK_SECRET"),
                    )
                }
            )

            # in an asset: context.resources.events.sink().send(event)
    """

    url: Optional[str] = Field(None, description="Endpoint that receives POSTed events. None disables webhooks.")
    secret: str = Field(
        "", description="HMAC key for X-Mpegflow-Signature; required with `url`. Use an EnvVar, not a literal."
    )
    timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the endpoint on one attempt.")
    max_attempts: int = Field(4, ge=1, description="Attempts per event before it is queued in the outbox.")
    backoff_s: float = Field(
        1.0, ge=0, description="Wait before the first retry; doubles on each later one (with jitter, max 30 s)."
    )
    outbox_dir: str = Field(
        ".mpegflow/webhooks",
        description="Holds the outbox (undelivered events and delivered ids). One endpoint per directory.",
    )
    events_path: str = Field(".mpegflow/events.jsonl", description="JSON Lines file that records every event.")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.webhook()  # a bad url or missing secret fails the run at start, not at the first event

    def webhook(self) -> Optional[WebhookSink]:
        if not self.url:
            return None
        return WebhookSink(
            self.url,
            self.secret,
            self.outbox_dir,
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
        )

    def sink(self) -> FanoutSink:
        """The JSONL file, then the webhook if configured."""
        webhook = self.webhook()
        return FanoutSink([JsonlEventSink(Path(self.events_path)), *([webhook] if webhook else [])])

    def flush_outbox(self) -> list[DeliveryResult]:
        """Retry undelivered events now, e.g. from a schedule; a no-op without `url`."""
        webhook = self.webhook()
        return webhook.flush_outbox() if webhook else []
