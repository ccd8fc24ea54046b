"""A deployment: the specs and settings in `resources/`, turned into Dagster Definitions."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import yaml
from dagster import (
    AssetSelection, AssetsDefinition, Definitions, EnvVar, SensorDefinition, build_resources, in_process_executor,
)
from dagster_aws.s3 import S3Resource
from pydantic import BaseModel, ConfigDict, Field

from .assets import build_video_assets
from .io_manager import BinaryIOManager
from .media.build import FFmpegNotFound, detect_build
from .outcomes import outcome_sensors
from .resources import FFmpegResource, LocalDeliveryResource
from .s3.io_manager import S3BinaryIOManager
from .s3.resources import S3DeliveryResource, S3SourceResource
from .s3.sensor import build_s3_upload_sensor
from .spec import PipelineSpec, SpecError, load_spec
from .stage import IO_MANAGER_KEY, video_partitions
from .webhooks.resources import WebhookResource
from .webhooks.sensor import build_webhook_delivery_sensor


class FFmpegSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int = 1  # 1: reproducible bytes; lanes keep the cores busy (see FFmpegResource.threads)
    encode_lanes: int = 2
    required_version: Optional[str] = None
    required_build_hash: Optional[str] = None
    timeout_s: Optional[float] = None
    stall_s: Optional[float] = 300.0


class S3Settings(BaseModel):
    """S3 (or an S3-compatible store). Unset buckets keep the local default for that role."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: Optional[str] = Field(None, description="For S3-compatible stores (MinIO, moto...).")
    region: Optional[str] = None
    storage_bucket: Optional[str] = Field(None, description="Artifacts (the IO manager) go here instead of storage_dir.")
    storage_prefix: str = "mpegflow/storage"
    delivery_bucket: Optional[str] = Field(None, description="emit publishes here (the CDN origin) instead of delivery_dir.")
    delivery_prefix: str = ""
    upload_bucket: Optional[str] = Field(None, description="Watched by the upload sensor: <upload_prefix>/<pipeline>/...")
    upload_prefix: str = "uploads"


_S3_ENV = {
    "endpoint_url": "MPEGFLOW_S3_ENDPOINT_URL", "region": "MPEGFLOW_S3_REGION",
    "storage_bucket": "MPEGFLOW_S3_BUCKET", "storage_prefix": "MPEGFLOW_S3_PREFIX",
    "delivery_bucket": "MPEGFLOW_DELIVERY_BUCKET", "delivery_prefix": "MPEGFLOW_DELIVERY_PREFIX",
    "upload_bucket": "MPEGFLOW_UPLOAD_BUCKET", "upload_prefix": "MPEGFLOW_UPLOAD_PREFIX",
}


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
    s3: S3Settings = S3Settings()

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
            "s3": self.s3.model_copy(update={f: os.environ[e] for f, e in _S3_ENV.items() if os.environ.get(e)}),
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
            raise SpecError(f"no pipeline spec in {resources / 'pipelines'}: add one (see docs/configuration.md)")
        settings_file = resources / "settings.yaml"
        raw = yaml.safe_load(settings_file.read_text()) if settings_file.exists() else {}
        settings = Settings.model_validate(raw or {}).resolved(root)
        return cls(root=root, specs=[load_spec(f, resources / "presets") for f in files], settings=settings)

    def resources(self, delivery_dir: Optional[str] = None) -> dict[str, object]:
        """Local storage and delivery unless S3 buckets are configured; `delivery_dir` forces a
        local delivery directory (the CLI's --out)."""
        s, b = self.settings, self.settings.s3
        s3 = S3Resource(endpoint_url=b.endpoint_url, region_name=b.region)
        cache = str(Path(s.work_dir) / "s3-cache")
        if b.storage_bucket:
            io_manager: object = S3BinaryIOManager(s3=s3, bucket=b.storage_bucket, prefix=b.storage_prefix, cache_dir=cache)
        else:
            io_manager = BinaryIOManager(root=s.storage_dir)
        if b.delivery_bucket and not delivery_dir:
            delivery: object = S3DeliveryResource(s3=s3, bucket=b.delivery_bucket, prefix=b.delivery_prefix, cache_dir=cache)
        else:
            delivery = LocalDeliveryResource(root=delivery_dir or s.delivery_dir)
        return {
            "ffmpeg": FFmpegResource(work_dir=s.work_dir, **s.ffmpeg.model_dump()),
            IO_MANAGER_KEY: io_manager,
            "delivery": delivery,
            "s3": s3,
            "sources": S3SourceResource(s3=s3),
            "events": WebhookResource(
                events_path=s.events_path,
                outbox_dir=str(Path(s.events_path).parent / "webhooks"),
                url=s.webhook_url,
                secret=EnvVar("MPEGFLOW_WEBHOOK_SECRET") if s.webhook_url else "",
            ),
        }

    @contextmanager
    def events(self) -> Iterator[WebhookResource]:
        """The configured events resource outside a run, with EnvVar secrets resolved as in a run."""
        with build_resources({"events": self.resources()["events"]}) as resources:
            yield resources.events

    def sensors(self) -> list[SensorDefinition]:
        """Run-outcome announcements always; webhook delivery when a webhook url is set; an S3
        upload sensor per pipeline when a bucket is set."""
        found = [*outcome_sensors(self.specs), *([build_webhook_delivery_sensor()] if self.settings.webhook_url else [])]
        b = self.settings.s3
        if b.upload_bucket:
            found += [
                build_s3_upload_sensor(spec.name, AssetSelection.groups(spec.name), video_partitions(spec.name),
                                       b.upload_bucket, f"{b.upload_prefix.strip('/')}/{spec.name}")
                for spec in self.specs
            ]
        return found

    def assets(self, spec: PipelineSpec) -> list[AssetsDefinition]:
        return build_video_assets(spec, encoder_build=self.encoder_build())

    def encoder_build(self) -> Optional[str]:
        """The FFmpeg build the code versions name: the pinned build hash, else the build found
        here (so a new FFmpeg marks the FFmpeg stages stale), else the pinned version, if any."""
        f = self.settings.ffmpeg
        if f.required_build_hash:
            return f.required_build_hash
        try:
            return detect_build(FFmpegResource(work_dir=self.settings.work_dir).ffmpeg).build_hash
        except FFmpegNotFound:
            return f.required_version

    def spec(self, name: Optional[str] = None) -> PipelineSpec:
        if name is None:
            return self.specs[0]
        try:
            return next(s for s in self.specs if s.name == name)
        except StopIteration:
            raise SpecError(f"no pipeline named {name!r}; known: {', '.join(s.name for s in self.specs)}") from None

    def definitions(self) -> Definitions:
        """Runs execute in process: a video's parallel work is inside its encode step (lanes of
        FFmpeg processes), so a process per step would only add start-up time (~3 s a step with
        the default multiprocess executor here, ~0.02 s in process; see docs/performance.md)."""
        assets = [a for spec in self.specs for a in self.assets(spec)]
        return Definitions(assets=assets, resources=self.resources(), sensors=self.sensors(), executor=in_process_executor)
