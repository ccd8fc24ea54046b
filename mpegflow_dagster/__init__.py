"""mpegflow-dagster: the video layer for Dagster."""

from .assets import build_video_assets
from .events import Event, JsonlEventSink
from .io_manager import ArtifactIOManager, BinaryIOManager
from .presets import Preset, load_presets
from .project import Project, Settings
from .resources import DeliveryResource, FFmpegResource, LocalDeliveryResource
from .s3 import S3BinaryIOManager, S3DeliveryResource, S3SourceResource
from .sensors import build_s3_upload_sensor
from .spec import PipelineSpec, Rendition, SpecError, load_spec
from .videos import video_key
from .webhooks import WebhookResource, verify_signature

__all__ = [
    "ArtifactIOManager", "BinaryIOManager", "DeliveryResource", "Event", "FFmpegResource", "JsonlEventSink",
    "LocalDeliveryResource", "PipelineSpec", "Preset", "Project", "Rendition", "S3BinaryIOManager",
    "S3DeliveryResource", "S3SourceResource", "Settings", "SpecError", "WebhookResource", "build_s3_upload_sensor",
    "build_video_assets", "load_presets", "load_spec", "verify_signature", "video_key",
]
