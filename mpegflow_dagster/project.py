"""A code location's deployment settings (`resources/settings.yaml`, the one place their defaults
are declared) and the Definitions the Components build from them and from the pipeline specs."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Iterator, Optional, Sequence

import yaml
from dagster import (
    AssetsDefinition,
    AssetSelection,
    BetaWarning,
    ComponentTree,
    DefaultSensorStatus,
    Definitions,
    EnvVar,
    build_resources,
)
from dagster_aws.s3 import S3Resource
from pydantic import BaseModel, ConfigDict, Field

from .assets import build_video_assets
from .executors import CelerySettings, ExecutorName, run_executor
from .io_manager import BinaryIOManager
from .media.build import FFmpegBuild, FFmpegNotFound, build_encoders, detect_build
from .resources import FFmpegResource, LocalDeliveryResource, PreviewsResource
from .runs import video_job
from .s3.io_manager import S3BinaryIOManager
from .s3.resources import S3DeliveryResource, S3SourceResource
from .s3.sensor import build_s3_upload_sensor
from .spec import PipelineSpec, SpecError, load_spec
from .stage import IO_MANAGER_KEY, video_partitions
from .webhooks.resources import WebhookResource
from .webhooks.sensor import build_webhook_delivery_sensor


class FFmpegSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int = (
        1  # 1: reproducible bytes; lanes keep the cores busy (see FFmpegResource.threads)
    )
    encode_lanes: int = 2
    required_version: Optional[str] = None
    required_build_hash: Optional[str] = None
    timeout_s: Optional[float] = None
    stall_s: Optional[float] = 300.0


class S3Settings(BaseModel):
    """S3 (or an S3-compatible store). Unset buckets keep the local default for that role."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: Optional[str] = Field(
        default=None, description="For S3-compatible stores (MinIO, moto...)."
    )
    region: Optional[str] = None
    storage_bucket: Optional[str] = Field(
        default=None, description="Artifacts (the IO manager) go here instead of storage_dir."
    )
    storage_prefix: str = "mpegflow/storage"
    delivery_bucket: Optional[str] = Field(
        default=None, description="emit publishes here (the CDN origin) instead of delivery_dir."
    )
    delivery_prefix: str = ""
    upload_bucket: Optional[str] = Field(
        default=None, description="Watched by the upload sensor: <upload_prefix>/<pipeline>/..."
    )
    upload_prefix: str = "uploads"
    upload_interval_s: int = Field(
        default=30, ge=1, description="How often the upload sensor lists the upload bucket."
    )
    watch_uploads: bool = Field(
        default=False,
        description="Start the upload sensor with the daemon (else turn it on in the UI).",
    )


class PreviewSettings(BaseModel):
    """Small JPEG previews the Dagster UI shows (display only; see `mpegflow_dagster.previews`)."""

    model_config = ConfigDict(extra="forbid")

    dir: str = Field(
        default=".mpegflow/previews",
        description="Where stages write them, as <dir>/<sha256>.jpg ($MPEGFLOW_PREVIEWS_DIR).",
    )
    url: str = Field(
        default="http://127.0.0.1:3001",
        description="Where the browser showing the UI finds dir: `mpegflow previews` serves it "
        "($MPEGFLOW_PREVIEWS_URL).",
    )


_S3_ENV = {
    "endpoint_url": "MPEGFLOW_S3_ENDPOINT_URL",
    "region": "MPEGFLOW_S3_REGION",
    "storage_bucket": "MPEGFLOW_S3_BUCKET",
    "storage_prefix": "MPEGFLOW_S3_PREFIX",
    "delivery_bucket": "MPEGFLOW_DELIVERY_BUCKET",
    "delivery_prefix": "MPEGFLOW_DELIVERY_PREFIX",
    "upload_bucket": "MPEGFLOW_UPLOAD_BUCKET",
    "upload_prefix": "MPEGFLOW_UPLOAD_PREFIX",
    "upload_interval_s": "MPEGFLOW_UPLOAD_INTERVAL_S",
    "watch_uploads": "MPEGFLOW_WATCH_UPLOADS",
}
_CELERY_ENV = {
    "broker": "MPEGFLOW_CELERY_BROKER",
    "backend": "MPEGFLOW_CELERY_BACKEND",
    "lost_step_after_s": "MPEGFLOW_CELERY_LOST_STEP_AFTER_S",
}


class Settings(BaseModel):
    """resources/settings.yaml. Relative directories are resolved against the project directory;
    MPEGFLOW_STORAGE_DIR / MPEGFLOW_WORK_DIR / MPEGFLOW_DELIVERY_DIR / MPEGFLOW_PREVIEWS_DIR
    override them."""

    model_config = ConfigDict(extra="forbid")

    storage_dir: str = Field(
        default=".mpegflow/storage", description="Published artifacts (the IO manager root)."
    )
    work_dir: str = Field(
        default=".mpegflow/work", description="Scratch space; same filesystem as storage_dir."
    )
    delivery_dir: str = Field(
        default=".mpegflow/delivery", description="Delivery tree: <delivery_dir>/<video>/..."
    )
    events_path: str = Field(
        default=".mpegflow/events.jsonl",
        description="Every pipeline event, one JSON object a line.",
    )
    webhook_url: Optional[str] = Field(
        default=None, description="POST signed events here (secret: $MPEGFLOW_WEBHOOK_SECRET)."
    )
    chunk_steps: int = Field(
        default=0,
        ge=0,
        description="0: a video's time chunks are encoded inside its encode step (fastest on one "
        "machine); N: in N chunk-batch steps before it, which a distributed executor places on "
        "its workers (about the number of workers). Never changes the bytes "
        "($MPEGFLOW_CHUNK_STEPS).",
    )
    ffmpeg: FFmpegSettings = FFmpegSettings()
    executor: ExecutorName = Field(
        default="in_process",
        description="Where a run's steps execute: in the run's process, or `celery` on the "
        "workers of a cluster (docs/cluster.md) ($MPEGFLOW_EXECUTOR).",
    )
    celery: CelerySettings = CelerySettings()
    s3: S3Settings = S3Settings()
    previews: PreviewSettings = PreviewSettings()

    def resolved(self, base: Path) -> "Settings":
        def pick(name: str, env: str, within: BaseModel = self) -> str:
            value = os.environ.get(env) or getattr(within, name)
            return str((base / value).resolve()) if not Path(value).is_absolute() else value

        resolved = self.model_copy(
            update={
                "storage_dir": pick("storage_dir", "MPEGFLOW_STORAGE_DIR"),
                "work_dir": pick("work_dir", "MPEGFLOW_WORK_DIR"),
                "delivery_dir": pick("delivery_dir", "MPEGFLOW_DELIVERY_DIR"),
                "events_path": pick("events_path", "MPEGFLOW_EVENTS_PATH"),
                "webhook_url": os.environ.get("MPEGFLOW_WEBHOOK_URL") or self.webhook_url,
                "chunk_steps": os.environ.get("MPEGFLOW_CHUNK_STEPS") or self.chunk_steps,
                "executor": os.environ.get("MPEGFLOW_EXECUTOR") or self.executor,
                "celery": _with_env(self.celery, _CELERY_ENV),
                "s3": _with_env(self.s3, _S3_ENV),
                "previews": self.previews.model_copy(
                    update={
                        "dir": pick("dir", "MPEGFLOW_PREVIEWS_DIR", self.previews),
                        "url": os.environ.get("MPEGFLOW_PREVIEWS_URL") or self.previews.url,
                    }
                ),
            }
        )
        return Settings.model_validate(resolved.model_dump())  # environment values validated too


def _with_env(model: BaseModel, env: dict[str, str]) -> BaseModel:
    """`model` with the fields named in `env` (field -> variable) set from the environment,
    validated (so `MPEGFLOW_UPLOAD_INTERVAL_S=5` is an int)."""
    changes = {f: os.environ[e] for f, e in env.items() if os.environ.get(e)}
    return type(model).model_validate({**model.model_dump(), **changes}) if changes else model


def load_settings(path: Path, root: Path) -> Settings:
    """The deployment settings in `path` (defaults if it does not exist), paths resolved against `root`."""
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else {}
        return Settings.model_validate(raw or {}).resolved(root)
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(f"settings file {path} is invalid: {exc}") from exc


def deployment_resources(
    settings: Settings, delivery_dir: Optional[str] = None
) -> dict[str, object]:
    """Local storage and delivery unless S3 buckets are configured; `delivery_dir` forces a
    local delivery directory (the CLI's --out)."""
    s, b = settings, settings.s3
    s3 = S3Resource(endpoint_url=b.endpoint_url, region_name=b.region)
    cache_dir = str(Path(s.work_dir) / "s3-cache")
    if b.storage_bucket:
        io_manager: object = S3BinaryIOManager(
            s3=s3, bucket=b.storage_bucket, prefix=b.storage_prefix, cache_dir=cache_dir
        )
    else:
        io_manager = BinaryIOManager(root=s.storage_dir)
    if b.delivery_bucket and not delivery_dir:
        delivery: object = S3DeliveryResource(
            s3=s3, bucket=b.delivery_bucket, prefix=b.delivery_prefix, cache_dir=cache_dir
        )
    else:
        delivery = LocalDeliveryResource(root=delivery_dir or s.delivery_dir)
    return {
        "ffmpeg": FFmpegResource(work_dir=s.work_dir, **s.ffmpeg.model_dump()),
        IO_MANAGER_KEY: io_manager,
        "delivery": delivery,
        "s3": s3,
        "sources": S3SourceResource(s3=s3),
        "previews": PreviewsResource(dir=s.previews.dir, url=s.previews.url),
        "events": WebhookResource(
            events_path=s.events_path,
            outbox_dir=str(Path(s.events_path).parent / "webhooks"),
            url=s.webhook_url,
            secret=EnvVar("MPEGFLOW_WEBHOOK_SECRET") if s.webhook_url else "",
        ),
    }


def encoder_build(settings: Settings) -> Optional[str]:
    """The FFmpeg build the code versions name: the pinned build hash, else the build found
    here (so a new FFmpeg marks the FFmpeg stages stale), else the pinned version, if any."""
    f = settings.ffmpeg
    if f.required_build_hash:
        return f.required_build_hash
    return _detected_build(settings.work_dir) or f.required_version


@cache
def _detected_build(work_dir: str) -> Optional[str]:
    try:
        return detect_build(FFmpegResource(work_dir=work_dir).ffmpeg).build_hash
    except FFmpegNotFound:
        return None


def check_encoders(spec: PipelineSpec, settings: Settings) -> None:
    """A preset naming an encoder this FFmpeg build lacks fails the code location's load, not a
    run. Without FFmpeg here (a webserver's machine) the runs' own check is what is left."""
    ffmpeg = FFmpegResource(work_dir=settings.work_dir, **settings.ffmpeg.model_dump()).ffmpeg
    try:
        build, have = detect_build(ffmpeg), build_encoders(ffmpeg)
    except FFmpegNotFound:
        return
    refuse_missing_encoders(spec, build, have)


def refuse_missing_encoders(spec: PipelineSpec, build: FFmpegBuild, have: frozenset[str]) -> None:
    """SpecError naming the first rung whose preset's encoder is not in `have` (of `build`)."""
    for rung in spec.ladder:
        preset = spec.preset_for(rung)
        if preset.encoder not in have:
            raise SpecError(
                f"pipeline {spec.name}, rung {rung.name}: preset {preset.ref} names encoder "
                f"{preset.encoder}, which the FFmpeg build at {build.path} ({build.version}) "
                "lacks: install an FFmpeg that has it (Debian 12's has libx264, libx265 and "
                "libsvtav1) or point MPEGFLOW_FFMPEG at one"
            )


def pipeline_definitions(spec: PipelineSpec, settings: Settings) -> Definitions:
    """One pipeline: its assets, its job (`<pipeline>_video`: one video a run) and, with an
    upload bucket, its upload sensor. Outcome events come from the runs themselves (outcomes.py)."""
    check_encoders(spec, settings)
    sensors = []
    b = settings.s3
    if b.upload_bucket:
        sensors.append(
            build_s3_upload_sensor(
                spec.name,
                AssetSelection.groups(spec.name),
                video_partitions(spec.name),
                b.upload_bucket,
                f"{b.upload_prefix.strip('/')}/{spec.name}",
                minimum_interval_seconds=b.upload_interval_s,
                default_status=DefaultSensorStatus.RUNNING
                if b.watch_uploads
                else DefaultSensorStatus.STOPPED,
            )
        )
    return Definitions(
        assets=build_video_assets(
            spec, encoder_build=encoder_build(settings), chunk_steps=settings.chunk_steps
        ),
        jobs=[video_job(spec)],
        sensors=sensors,
    )


def deployment_definitions(settings: Settings) -> Definitions:
    """The resources every stage uses; webhook delivery when a webhook url is set; the executor
    the settings choose (in process by default, see `run_executor`)."""
    return Definitions(
        resources=deployment_resources(settings),
        sensors=[build_webhook_delivery_sensor()] if settings.webhook_url else [],
        executor=run_executor(settings.executor, settings.celery),
    )


class Project(BaseModel):
    """What the CLI and the tests work with: a code location's pipelines, settings and Definitions.
    `load` reads them through the location's Components (its defs folder)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    root: Path
    specs: list[PipelineSpec]
    settings: Settings
    loaded: Optional[Definitions] = None  # what the defs folder built, stages of your own included

    @classmethod
    def load(cls, root: Path, spec_files: Optional[Sequence[Path]] = None) -> "Project":
        """The code location at `root` (its `[tool.dg]` defs folder), or only the pipeline specs
        `spec_files` (presets from `resources/presets/`) with its settings."""
        from .components import SETTINGS_FILE, VideoDeploymentComponent, VideoPipelineComponent  # noqa: PLC0415 (cycle)

        root = Path(root).resolve()
        if spec_files:
            specs = [load_spec(f, root / "resources" / "presets") for f in spec_files]
            return cls(root=root, specs=specs, settings=load_settings(root / SETTINGS_FILE, root))
        if str(root) not in sys.path:  # the defs folder is a module of the project (resources.defs)
            sys.path.insert(0, str(root))
        with warnings.catch_warnings():  # Dagster's own loader uses its beta code references
            warnings.simplefilter("ignore", BetaWarning)
            tree = ComponentTree.for_project(root)
            pipelines = tree.get_all_components(VideoPipelineComponent)
            deployments = tree.get_all_components(VideoDeploymentComponent)
            loaded = tree.build_defs()
        if not pipelines:
            raise SpecError(
                f"no VideoPipelineComponent in the defs folder of {root}: add one (see docs/configuration.md)"
            )
        settings_file = deployments[0].settings if deployments else SETTINGS_FILE
        return cls(
            root=root,
            specs=[p.load_spec() for p in pipelines],
            loaded=loaded,
            settings=load_settings(root / settings_file, root),
        )

    def resources(self, delivery_dir: Optional[str] = None) -> dict[str, object]:
        return deployment_resources(self.settings, delivery_dir)

    @contextmanager
    def events(self) -> Iterator[WebhookResource]:
        """The configured events resource outside a run, with EnvVar secrets resolved as in a run."""
        with build_resources({"events": self.resources()["events"]}) as resources:
            yield resources.events

    def assets(self, spec: PipelineSpec) -> list[AssetsDefinition]:
        """The assets of a pipeline's videos: its own and, in a loaded location, every stage of
        yours on its partitions."""
        if self.loaded is None:
            return build_video_assets(
                spec,
                encoder_build=encoder_build(self.settings),
                chunk_steps=self.settings.chunk_steps,
            )
        partitions = video_partitions(spec.name)
        return [
            a
            for a in self.loaded.assets or ()
            if isinstance(a, AssetsDefinition) and a.partitions_def == partitions
        ]

    def spec(self, name: Optional[str] = None) -> PipelineSpec:
        if name is None:
            return self.specs[0]
        try:
            return next(s for s in self.specs if s.name == name)
        except StopIteration:
            raise SpecError(
                f"no pipeline named {name!r}; known: {', '.join(s.name for s in self.specs)}"
            ) from None

    def definitions(self) -> Definitions:
        if self.loaded is not None:
            return self.loaded
        return Definitions.merge(
            deployment_definitions(self.settings),
            *(pipeline_definitions(spec, self.settings) for spec in self.specs),
        )
