"""HTTP delivery of the outbox's events to the webhook endpoint, outside the pipeline's steps.
No Dagster here.

`WebhookDelivery.drain` POSTs queued events oldest first, each signed (see `signing.py`).
Failures never reach the pipeline: 5xx, 408, 429, connection errors and timeouts leave the event
queued for another attempt after exponential backoff (never before the endpoint's Retry-After),
and end the drain, since the events behind it must wait to stay in order. Other 4xx and 3xx
answers are permanent: the event is recorded as rejected and the drain goes on.

Who drains: `mpegflow run` in a thread while the run goes and for a bounded time after it
(`BackgroundDrain`); a deployment (`dagster dev`, the daemon) in the sensor of `sensor.py`.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal, Optional

from .outbox import WebhookOutbox
from .signing import sign

USER_AGENT = "mpegflow-dagster-webhooks/1"

Status = Literal["delivered", "rejected", "deferred"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt did to one event: delivered, rejected (permanent 3xx/4xx, recorded, not
    retried) or deferred (still queued, for another attempt after a backoff). `attempts` counts
    this event's attempts so far, this one included."""

    event_id: str
    status: Status
    attempts: int
    http_status: Optional[int] = None
    error: Optional[str] = None


class _Transient(Exception):
    def __init__(
        self, message: str, http_status: Optional[int] = None, retry_after_s: Optional[float] = None
    ):
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


def check_endpoint(url: str, secret: str) -> None:
    """Raise ValueError, saying what to fix, unless events can be signed and POSTed to `url`."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"Webhook url must start with https:// (or http://), got {url!r}.")
    if not secret:
        raise ValueError(
            "Webhook secret is empty: set one (e.g. from EnvVar('MPEGFLOW_WEBHOOK_SECRET')) and share "
            "it with the receiver so it can verify X-Mpegflow-Signature."
        )


class WebhookDelivery:
    """POSTs the events queued in `outbox` to `url`, signed with `secret`.

    Safe to run in several processes at once on one outbox: each attempt first claims its event
    (`WebhookOutbox.claim_next`), so no event is sent by two of them at a time.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        outbox: WebhookOutbox,
        timeout_s: float = 10.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        check_endpoint(url, secret)
        self.url = url
        self.secret = secret
        self.outbox = outbox
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._opener = urllib.request.build_opener(_NoRedirects)

    def drain(self, deadline: Optional[float] = None) -> list[DeliveryResult]:
        """Deliver queued events, oldest first, one attempt each, until the outbox is empty, its
        oldest event is held (being sent elsewhere, or backing off), an attempt fails transiently,
        or `time.monotonic()` passes `deadline` (an attempt started before it may end up to
        `timeout_s` later)."""
        results: list[DeliveryResult] = []
        while deadline is None or time.monotonic() < deadline:
            # The claim outlives the longest attempt, so only a dead deliverer's claim lapses.
            row = self.outbox.claim_next(lease_s=self.timeout_s + 60)
            if row is None:
                break
            results.append(self._attempt(row))
            if results[-1].status == "deferred":
                break
        return results

    def _attempt(self, row: dict[str, Any]) -> DeliveryResult:
        event_id, event_type, body, attempts = (
            row["event_id"],
            row["type"],
            row["body"],
            row["attempts"] + 1,
        )
        try:
            status = self._post(event_id, event_type, body)
        except _Permanent as exc:
            self.outbox.reject(event_id, body, exc.http_status, str(exc))
            log.warning(f"Webhook rejected {event_type} {event_id}, not retrying: {exc}")
            return DeliveryResult(event_id, "rejected", attempts, exc.http_status, str(exc))
        except _Transient as exc:
            delay = self._backoff(attempts, exc.retry_after_s)
            self.outbox.retry_later(event_id, str(exc), delay)
            log.info(
                f"Webhook delivery of {event_type} {event_id} failed ({exc}); attempt {attempts + 1} "
                f"in {delay:.1f} s"
            )
            return DeliveryResult(event_id, "deferred", attempts, exc.http_status, str(exc))
        self.outbox.mark_delivered(event_id)
        return DeliveryResult(event_id, "delivered", attempts, status)

    def _backoff(self, attempts: int, retry_after_s: Optional[float]) -> float:
        delay = min(self.backoff_s * 2 ** min(attempts - 1, 30), self.max_backoff_s)
        # Jitter in [delay/2, delay] spreads the retries of outboxes that share an endpoint.
        return max(delay * random.uniform(0.5, 1.0), retry_after_s or 0.0)

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
                raise _Transient(
                    detail, code, _retry_after(exc.headers.get("Retry-After"))
                ) from exc
            if 300 <= code < 400:
                detail += (
                    f" (redirect to {exc.headers.get('Location')!r}; configure that url instead)"
                )
            raise _Permanent(detail, code) from exc
        except (
            urllib.error.URLError,
            OSError,
            http.client.HTTPException,
        ) as exc:  # refused, DNS, TLS, timeout, reset
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


class BackgroundDrain:
    """Delivers the outbox from a daemon thread while this process works, so no step waits on the
    endpoint; `finish` then delivers what is left, for a bounded time.

    Examples:
        .. code-block:: python

            with BackgroundDrain(delivery) as drain:
                ...  # steps queue events
                left = drain.finish(wait_s=10)  # the events still queued after that
    """

    POLL_S = 0.5  # how soon an event queued by a step is picked up

    def __init__(self, delivery: WebhookDelivery) -> None:
        self.delivery = delivery
        self._deadline: Optional[float] = None  # set by finish (time.monotonic())
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="mpegflow-webhook-delivery", daemon=True
        )

    def __enter__(self) -> "BackgroundDrain":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(0)

    def finish(self, wait_s: float) -> list[dict[str, Any]]:
        """Keep delivering until nothing is queued or `wait_s` has passed, stop, and return the
        events still queued (oldest first)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + wait_s
            self._wake.set()
            self._thread.join(
                wait_s + self.delivery.timeout_s + 1
            )  # the last attempt may start just before the deadline
        return self.delivery.outbox.pending()

    def _run(self) -> None:
        try:
            while True:
                self.delivery.drain(self._deadline)
                if self._deadline is not None and self._finished(self._deadline):
                    return
                if self._wake.wait(self.POLL_S):
                    self._wake.clear()
        except Exception:  # the outbox is unusable (disk, permissions): say so once and stop
            log.exception(
                f"Webhook delivery stopped; events stay queued in {self.delivery.outbox.path}"
            )

    def _finished(self, deadline: float) -> bool:
        """Nothing queued, time is up, or the next attempt would start after the deadline."""
        next_at = self.delivery.outbox.next_attempt_at()
        left_s = deadline - time.monotonic()
        return next_at is None or left_s <= 0 or next_at - time.time() > left_s
