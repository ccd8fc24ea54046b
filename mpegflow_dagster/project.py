"""A deployment: the specs and settings in `resources/`, turned into Dagster Definitions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import yaml
from dagster import AssetsDefinition, Definitions, EnvVar
from pydantic import BaseModel, ConfigDict, Field

from .assets import IO_MANAGER_KEY, build_video_assets
from .io_manager import BinaryIOManager
from .resources import DeliveryResource, FFmpegResource
from .spec import PipelineSpec, load_spec
from .webhooks import WebhookResource


class FFmpegSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int = 2  # fixed: x264 output depends on its thread count
    required_version: Optional[str] = None
    required_build_hash: Optional[str] = None
    timeout_s: Optional[float] = None
    stall_s: Optional[float] = 300.0


class Settings(BaseModel):
    """resources/settings.yaml. Relative directories are resolved against the project directory;
    MPEGFLOW_STORAGE_DIR / MPEGFLOW_WORK_DIR / MPEGFLOW_DELIVERY_DIR override them."""

    model_config = ConfigDict(extra="forbid")

    storage_dir: str = Field(".mpegflow/storage", description="Published artifacts (the IO manager root).")
    work_dir: str = Field(".mpegflow/work", description="Scratch space; same filesystem as storage_dir.")
    delivery_dir: str = Field(".mpegflow/delivery", description="Delivery tree: <delivery_dir>/<video>/...")
    events_path: str = Field(".mpegflow/events.jsonl", description="Every pipeline event, one JSON object a line.")
    webhook_url: Optional[str] = Field(None, description="POST signed events here (secret: $MPEGFLOW_WEBHOOK_SECRET).")
    ffmpeg: FFmpegSettings = FFmpegSettings()

    def resolved(self, base: Path) -> "Settings":
        def pick(name: str, env: str) -> str:
            value = os.environ.get(env) or getattr(self, name)
            return str((base / value).resolve()) if not Path(value).is_absolute() else value

        return self.model_copy(update={
            "storage_dir": pick("storage_dir", "MPEGFLOW_STORAGE_DIR"),
            "work_dir": pick("work_dir", "MPEGFLOW_WORK_DIR"),
            "delivery_dir": pick("delivery_dir", "MPEGFLOW_DELIVERY_DIR"),
            "events_path": pick("events_path", "MPEGFLOW_EVENTS_PATH"),
            "webhook_url": os.environ.get("MPEGFLOW_WEBHOOK_URL") or self.webhook_url,
        })


class Project(BaseModel):
    """Everything `definitions.py` and the CLI load from a project directory."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    root: Path
    specs: list[PipelineSpec]
    settings: Settings

    @classmethod
    def load(cls, root: Path, spec_files: Optional[Sequence[Path]] = None) -> "Project":
        root = Path(root).resolve()
        resources = root / "resources"
        files = list(spec_files) if spec_files else sorted((resources / "pipelines").glob("*.y*ml"))
        if not files:
            raise FileNotFoundError(f"no pipeline spec in {resources / 'pipelines'}: add one (see README, Spec reference)")
        settings_file = resources / "settings.yaml"
        raw = yaml.safe_load(settings_file.read_text()) if settings_file.exists() else {}
        settings = Settings.model_validate(raw or {}).resolved(root)
        return cls(root=root, specs=[load_spec(f, resources / "presets") for f in files], settings=settings)

    def resources(self, delivery_dir: Optional[str] = None) -> dict[str, object]:
        s = self.settings
        return {
            "ffmpeg": FFmpegResource(work_dir=s.work_dir, **s.ffmpeg.model_dump()),
            IO_MANAGER_KEY: BinaryIOManager(root=s.storage_dir),
            "delivery": DeliveryResource(root=delivery_dir or s.delivery_dir),
            "events": WebhookResource(
                events_path=s.events_path,
                outbox_dir=str(Path(s.events_path).parent / "webhooks"),
                url=s.webhook_url,
                secret=EnvVar("MPEGFLOW_WEBHOOK_SECRET") if s.webhook_url else "",
            ),
        }

    def assets(self, spec: PipelineSpec) -> list[AssetsDefinition]:
        pin = "/".join(p for p in (self.settings.ffmpeg.required_version, self.settings.ffmpeg.required_build_hash) if p)
        return build_video_assets(spec, encoder_pin=pin or None)

    def spec(self, name: Optional[str] = None) -> PipelineSpec:
        if name is None:
            return self.specs[0]
        try:
            return next(s for s in self.specs if s.name == name)
        except StopIteration:
            raise KeyError(f"no pipeline named {name!r}; known: {', '.join(s.name for s in self.specs)}") from None

    def definitions(self) -> Definitions:
        assets = [a for spec in self.specs for a in self.assets(spec)]
        return Definitions(assets=assets, resources=self.resources())
