"""Signing of webhook requests, for senders and receivers. No Dagster here.

Each event is POSTed as compact JSON (`event_body`: `Event.to_dict()`, sorted keys) with these headers:

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

        from mpegflow_dagster.webhooks.signing import verify_signature

        ok = verify_signature(
            secret, request.headers["X-Mpegflow-Timestamp"], request.body,
            request.headers["X-Mpegflow-Signature"],
        )
        if not ok:
            return 401
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Optional, Union

from ..events import Event

SIGNATURE_VERSION = "v1"


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
