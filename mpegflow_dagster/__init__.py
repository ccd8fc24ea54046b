"""mpegflow-dagster: the video layer for Dagster.

Names are imported on first use (PEP 562), so `mpegflow_dagster.media` (the FFmpeg layer) and
other Dagster-free modules (`s3.store`, `webhooks.signing`, `webhooks.outbox`,
`webhooks.delivery`) can be imported without importing Dagster.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build_video_assets": "assets",
    "IngestConfig": "stages.ingest",
    "VideoDeploymentComponent": "components",
    "VideoPipelineComponent": "components",
    "Event": "events",
    "JsonlEventSink": "events",
    "ArtifactIOManager": "io_manager",
    "BinaryIOManager": "io_manager",
    "Preset": "presets",
    "load_presets": "presets",
    "Project": "project",
    "Settings": "project",
    "code_version": "provenance",
    "DeliveryResource": "resources",
    "FFmpegResource": "resources",
    "LocalDeliveryResource": "resources",
    "PreviewsResource": "resources",
    "S3BinaryIOManager": "s3.io_manager",
    "S3DeliveryResource": "s3.resources",
    "S3SourceResource": "s3.resources",
    "build_s3_upload_sensor": "s3.sensor",
    "PipelineSpec": "spec",
    "Rendition": "spec",
    "RetrySpec": "spec",
    "SpecError": "spec",
    "load_spec": "spec",
    "StageContext": "stage",
    "StageRun": "stage",
    "VideoStage": "stage",
    "video_asset": "stage",
    "video_multi_asset": "stage",
    "video_partitions": "stage",
    "StageOutput": "stages.toolkit",
    "StageCheck": "checks",
    "CheckOutcome": "checks",
    "source_file": "stages.ingest",
    "video_key": "videos",
    "WebhookResource": "webhooks.resources",
    "build_webhook_delivery_sensor": "webhooks.sensor",
    "verify_signature": "webhooks.signing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
