"""mpegflow-dagster: the video layer for Dagster.

The public names below are imported on first use (PEP 562), so importing a Dagster-free part of
the package (`mpegflow_dagster.media`, `.s3.store`, `.webhooks.signing`, `.webhooks.outbox`, `.webhooks.delivery`)
does not import Dagster.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .assets import build_video_assets
    from .events import Event, JsonlEventSink
    from .io_manager import ArtifactIOManager, BinaryIOManager
    from .presets import Preset, load_presets
    from .project import Project, Settings
    from .resources import DeliveryResource, FFmpegResource, LocalDeliveryResource
    from .s3.io_manager import S3BinaryIOManager
    from .s3.resources import S3DeliveryResource, S3SourceResource
    from .s3.sensor import build_s3_upload_sensor
    from .spec import PipelineSpec, Rendition, SpecError, load_spec
    from .videos import video_key
    from .webhooks.resources import WebhookResource
    from .webhooks.sensor import build_webhook_delivery_sensor
    from .webhooks.signing import verify_signature

# public name -> the module that defines it
_MODULES = {
    "build_video_assets": ".assets",
    "Event": ".events", "JsonlEventSink": ".events",
    "ArtifactIOManager": ".io_manager", "BinaryIOManager": ".io_manager",
    "Preset": ".presets", "load_presets": ".presets",
    "Project": ".project", "Settings": ".project",
    "DeliveryResource": ".resources", "FFmpegResource": ".resources", "LocalDeliveryResource": ".resources",
    "S3BinaryIOManager": ".s3.io_manager", "S3DeliveryResource": ".s3.resources", "S3SourceResource": ".s3.resources",
    "build_s3_upload_sensor": ".s3.sensor",
    "PipelineSpec": ".spec", "Rendition": ".spec", "SpecError": ".spec", "load_spec": ".spec",
    "video_key": ".videos",
    "WebhookResource": ".webhooks.resources", "build_webhook_delivery_sensor": ".webhooks.sensor",
    "verify_signature": ".webhooks.signing",
}

__all__ = [
    "ArtifactIOManager", "BinaryIOManager", "DeliveryResource", "Event", "FFmpegResource", "JsonlEventSink",
    "LocalDeliveryResource", "PipelineSpec", "Preset", "Project", "Rendition", "S3BinaryIOManager",
    "S3DeliveryResource", "S3SourceResource", "Settings", "SpecError", "WebhookResource", "build_s3_upload_sensor",
    "build_video_assets", "build_webhook_delivery_sensor", "load_presets", "load_spec", "verify_signature", "video_key",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_MODULES[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
