"""The Dagster resource that says where pipeline events go."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from ..events import EventSink, FanoutSink, JsonlEventSink
from .delivery import DeliveryResult, WebhookDelivery, check_endpoint
from .outbox import WebhookOutbox


class WebhookResource(ConfigurableResource):
    """Where pipeline events go: always a JSON Lines file, and a signed webhook when `url` is set.

    A step only queues a webhook event in the outbox (a local SQLite file), so no step waits on
    the endpoint. The events are POSTed from outside the steps: by `mpegflow run` while and after
    it runs, and in a deployment by the sensor of `build_webhook_delivery_sensor()` (in
    `Project.definitions()` when a url is set; add it to your own Definitions).

    Examples:
        .. code-block:: python

            from dagster import Definitions, EnvVar
            from mpegflow_dagster import WebhookResource, build_webhook_delivery_sensor

            defs = Definitions(
                resources={
                    "events": WebhookResource(
                        url="https://example.com/hooks/mpegflow",
                        secret=EnvVar("MPEGFLOW_WEBHOOK_SECRET"),
                    )
                },
                sensors=[build_webhook_delivery_sensor()],
            )

            # in an asset: context.resources.events.sink().send(event)
    """

    url: Optional[str] = Field(
        default=None, description="Endpoint that receives POSTed events. None disables webhooks."
    )
    secret: str = Field(
        default="",
        description="HMAC key for X-Mpegflow-Signature; required with `url`. Use an EnvVar, not a literal.",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to wait for the endpoint on one attempt."
    )
    backoff_s: float = Field(
        default=1.0,
        ge=0,
        description="Wait before an event's second attempt; doubles on each later one (with jitter, max 30 s), "
        "never shorter than the endpoint's Retry-After.",
    )
    outbox_dir: str = Field(
        default=".mpegflow/webhooks",
        description="Holds the outbox (queued events, delivered and rejected ids). One endpoint per directory.",
    )
    events_path: str = Field(
        default=".mpegflow/events.jsonl", description="JSON Lines file that records every event."
    )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if self.url:  # a bad url or missing secret fails the run at start, not at delivery
            check_endpoint(self.url, self.secret)

    def sink(self) -> EventSink:
        """The JSONL file (written at once), then the outbox if a url is set."""
        return FanoutSink(
            [JsonlEventSink(Path(self.events_path)), *([self.outbox()] if self.url else [])]
        )

    def outbox(self) -> WebhookOutbox:
        return WebhookOutbox(self.outbox_dir)

    def delivery(self) -> Optional[WebhookDelivery]:
        """What POSTs the outbox's events; None without `url`."""
        if not self.url:
            return None
        return WebhookDelivery(
            self.url, self.secret, self.outbox(), timeout_s=self.timeout_s, backoff_s=self.backoff_s
        )

    def drain(self, budget_s: Optional[float] = None) -> list[DeliveryResult]:
        """Deliver queued events now, starting no attempt after `budget_s` (see
        `WebhookDelivery.drain`); a no-op without `url`."""
        delivery = self.delivery()
        if delivery is None:
            return []
        return delivery.drain(None if budget_s is None else time.monotonic() + budget_s)
