"""The Dagster resource that says where pipeline events go."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from ..events import FanoutSink, JsonlEventSink
from .delivery import DeliveryResult, WebhookSink


class WebhookResource(ConfigurableResource):
    """Where pipeline events go: always a JSON Lines file, and a signed webhook when `url` is set.

    Examples:
        .. code-block:: python

            from dagster import Definitions, EnvVar
            from mpegflow_dagster import WebhookResource

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
