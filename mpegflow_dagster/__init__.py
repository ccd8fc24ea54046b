"""mpegflow-dagster: the video layer for Dagster."""

from .assets import build_video_assets
from .io_manager import BinaryIOManager
from .presets import Preset, load_presets
from .project import Project, Settings
from .resources import DeliveryResource, FFmpegResource
from .spec import PipelineSpec, Rendition, SpecError, load_spec
from .videos import video_key

__all__ = [
    "BinaryIOManager", "DeliveryResource", "FFmpegResource", "PipelineSpec", "Preset", "Project",
    "Rendition", "Settings", "SpecError", "build_video_assets", "load_presets", "load_spec", "video_key",
]
