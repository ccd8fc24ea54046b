"""HTTP delivery of signed webhook events, with retries and the outbox. No Dagster here.

Failures never reach the pipeline: 5xx, 408, 429, connection errors and timeouts are retried with
exponential backoff, and an event that exhausts its retries waits in the outbox until
`flush_outbox()` (run at the start of every send, or from a schedule) delivers it. Other 4xx and
3xx answers are permanent and recorded as rejected.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from ..events import Event
from .outbox import WebhookOutbox
from .signing import event_body, sign

USER_AGENT = "mpegflow-dagster-webhooks/1"

Status = Literal["delivered", "duplicate", "rejected", "deferred"]


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
        self._log = logging.getLogger(__name__)

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
