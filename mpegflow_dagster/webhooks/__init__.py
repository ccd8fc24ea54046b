"""Signed webhooks of pipeline events:

- `signing`: the request body and its HMAC signature (`verify_signature` for receivers). No Dagster.
- `outbox`: `WebhookOutbox`, the SQLite file where steps queue events for delivery. No Dagster.
- `delivery`: HTTP delivery from the outbox, with retries and backoff, and the thread that does
  it during `mpegflow run`. No Dagster.
- `resources`: `WebhookResource`, where a Dagster step sends its events.
- `sensor`: `build_webhook_delivery_sensor`, which delivers the outbox in a deployment.

Nothing is re-exported here, so the Dagster-free modules import without Dagster; the public
names are also importable from `mpegflow_dagster`.
"""
