"""Signed webhooks of pipeline events:

- `signing`: the request body and its HMAC signature (`verify_signature` for receivers). No Dagster.
- `outbox`: `WebhookOutbox`, the SQLite file of events awaiting delivery. No Dagster.
- `delivery`: HTTP delivery with retries, backoff and the outbox. No Dagster.
- `resources`: `WebhookResource`, where a Dagster step sends its events.

Nothing is re-exported here, so the Dagster-free modules import without Dagster; the public
names are also importable from `mpegflow_dagster`.
"""
