"""The sensor that delivers queued webhook events in a deployment (`dagster dev`, the daemon)."""

from __future__ import annotations

from collections import Counter

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from .resources import WebhookResource

DELIVERY_SENSOR = "mpegflow_webhook_delivery"


def build_webhook_delivery_sensor(
    *,
    name: str = DELIVERY_SENSOR,
    minimum_interval_seconds: int = 15,
    budget_s: float = 20.0,
    default_status: DefaultSensorStatus = DefaultSensorStatus.RUNNING,
) -> SensorDefinition:
    """A sensor that POSTs the webhook events steps queued, oldest first, on each tick.

    Uses the `events` resource (`WebhookResource`); requests no runs. A tick starts no attempt
    after `budget_s`, so it stays well inside Dagster's sensor timeout (60 s by default) even with
    an endpoint that times out; what is left goes on the next tick. Each tick's outcome is its
    skip reason (delivered, rejected and still-queued counts) in the UI, and a rejected event is
    logged as a warning.

    Examples:
        .. code-block:: python

            from dagster import Definitions
            from mpegflow_dagster import WebhookResource, build_webhook_delivery_sensor

            defs = Definitions(sensors=[build_webhook_delivery_sensor()], resources={"events": WebhookResource(...)})
    """

    @sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="POSTs queued pipeline events to the webhook endpoint (signed, in order, retried with backoff)",
    )
    def _delivery_sensor(context: SensorEvaluationContext, events: WebhookResource) -> SkipReason:
        if not events.url:
            return SkipReason("no webhook url configured on the `events` resource")
        results = events.drain(budget_s)
        for r in results:
            if r.status == "rejected":
                context.log.warning(f"webhook rejected event {r.event_id}, not retrying: {r.error}")
        counts = Counter(r.status for r in results)
        pending = events.outbox().pending()
        summary = f"delivered {counts['delivered']}, rejected {counts['rejected']}, {len(pending)} still queued"
        if pending and pending[0]["last_error"]:
            summary += f" (last error: {pending[0]['last_error']})"
        return SkipReason(summary)

    return _delivery_sensor
