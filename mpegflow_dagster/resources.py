"""Dagster resources: the FFmpeg installation a run uses, and the delivery location."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from dagster import ConfigurableResource, Failure, InitResourceContext
from pydantic import Field, PrivateAttr

from .chunk_store import local_chunks
from .media.build import FFmpegBuild, FFmpegNotFound, detect_build, resolve_binary
from .media.progress import ProgressBoard
from .media.runner import RunLimits
from .previews import PreviewStore
from .stages.toolkit import Tools
from .storage import (
    ArtifactStore,
    LocalArtifactStore,
    collect_abandoned_scratch,
    scratch_dir,
)


class FFmpegResource(ConfigurableResource):
    """The FFmpeg build every stage runs, checked when the run starts (before any encode).

    Examples:
        .. code-block:: python

            from dagster import Definitions
            from mpegflow_dagster import FFmpegResource

            defs = Definitions(resources={"ffmpeg": FFmpegResource(threads=1, required_version="5.1")})
    """

    ffmpeg_path: Optional[str] = Field(
        default=None,
        description="ffmpeg binary (name on PATH or path). Default: $MPEGFLOW_FFMPEG, else `ffmpeg`.",
    )
    ffprobe_path: Optional[str] = Field(
        default=None,
        description="ffprobe binary (name on PATH or path). Default: $MPEGFLOW_FFPROBE, else `ffprobe`.",
    )
    threads: int = Field(
        default=1,
        ge=0,
        description="-threads of every encoder. 1 gives the same bytes on every run; more (or 0, FFmpeg decides) "
        "speeds up a lone encode, but x264's output then varies from run to run when maxrate binds.",
    )
    encode_lanes: int = Field(
        default=2,
        ge=1,
        description="FFmpeg processes the shared rendition encode runs at once: time chunks of a long source "
        "(see the spec's chunk_s), else groups of renditions. About the number of cores; it never changes the bytes.",
    )
    required_version: Optional[str] = Field(
        default=None,
        description="Fail the run at start unless `ffmpeg -version` starts with this (e.g. `5.1`).",
    )
    required_build_hash: Optional[str] = Field(
        default=None,
        description="Fail the run at start unless the build hash (version line + configuration) is this.",
    )
    timeout_s: Optional[float] = Field(
        default=None, gt=0, description="Stop one FFmpeg run after this many seconds."
    )
    stall_s: Optional[float] = Field(
        default=300.0,
        gt=0,
        description="Stop one FFmpeg run that reports no progress for this many seconds.",
    )
    work_dir: str = Field(
        default=".mpegflow/work",
        description="Scratch space for stages; keep it on the storage root's filesystem.",
    )
    force: bool = Field(
        default=False,
        description="Make every output of this run again, even those whose inputs, parameters and "
        "encoder build are unchanged (a deliberate re-encode; unchanged bytes announce nothing new). "
        "A launch option: in the launchpad `resources: {ffmpeg: {config: {force: true}}}`, the same in "
        "a file for `dagster asset materialize -c`; `mpegflow run --force`, `mpegflow redo`.",
    )

    _build: Optional[FFmpegBuild] = PrivateAttr(None)

    @property
    def ffmpeg(self) -> str:
        return self.ffmpeg_path or os.environ.get("MPEGFLOW_FFMPEG") or "ffmpeg"

    @property
    def ffprobe(self) -> str:
        return self.ffprobe_path or os.environ.get("MPEGFLOW_FFPROBE") or "ffprobe"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._build = self.check()
        removed, size = collect_abandoned_scratch(Path(self.work_dir))
        if removed and context.log is not None:
            context.log.warning(
                f"removed {removed} scratch directories ({size / 1e6:.1f} MB) left in "
                f"{self.work_dir} by processes that are gone (killed mid-stage)"
            )
        stale = local_chunks(Path(self.work_dir)).collect_stale()
        if stale and context.log is not None:
            context.log.info(
                f"removed {stale} finished time chunks no retry came back for in a day"
            )

    def check(self) -> FFmpegBuild:
        """Find both binaries and check the pinned version; raise a Failure saying what to install."""
        try:
            build = detect_build(self.ffmpeg)
            resolve_binary(self.ffprobe)
        except FFmpegNotFound as exc:
            raise Failure(description=str(exc), allow_retries=False) from exc
        mismatches = [
            (what, expected, found)
            for what, expected, found in (
                ("version", self.required_version, build.version),
                ("build hash", self.required_build_hash, build.build_hash),
            )
            if expected and not found.startswith(expected)
        ]
        for what, expected, found in mismatches:
            raise Failure(
                description=(
                    f"FFmpeg {what} mismatch: this deployment requires {expected}, but {build.path} is {found}. "
                    f"Install the required build or change the pin (required_version / required_build_hash)."
                ),
                metadata={"expected": expected, "found": found, "path": build.path},
                allow_retries=False,
            )
        return build

    @property
    def pin(self) -> Optional[str]:
        """The deployment's pin, as recorded in provenance."""
        parts = [p for p in (self.required_version, self.required_build_hash) if p]
        return "/".join(parts) or None

    @property
    def build(self) -> FFmpegBuild:
        if self._build is None:
            self._build = self.check()
        return self._build

    def tools(
        self,
        log=None,
        *,
        threads: Optional[int] = None,
        lanes: Optional[int] = None,
        every_s: float = 3.0,
    ) -> Tools:
        """Stage tools whose progress goes to `log` (a Dagster logger), per output: a first line
        after a second, then one every `every_s`, and a last one when done (`ProgressBoard`)."""
        return Tools(
            ffmpeg=self.build.path,
            ffprobe=resolve_binary(self.ffprobe),
            threads=self.threads if threads is None else threads,
            lanes=self.encode_lanes if lanes is None else lanes,
            limits=RunLimits(timeout_s=self.timeout_s, stall_s=self.stall_s),
            progress=ProgressBoard(log.info, every_s=every_s) if log is not None else None,
            build=self.build.build_hash,
        )

    @contextmanager
    def scratch(self, *parts: str) -> Iterator[Path]:
        with scratch_dir(Path(self.work_dir), *parts) as path:
            yield path


class DeliveryResource(ConfigurableResource):
    """Where `emit` publishes finished trees, as `<video>/hls/master.m3u8`, `<video>/thumbnails/`...
    Use `LocalDeliveryResource` or `mpegflow_dagster.S3DeliveryResource`."""

    def store(self) -> ArtifactStore:
        raise NotImplementedError("use LocalDeliveryResource or S3DeliveryResource")


class LocalDeliveryResource(DeliveryResource):
    """Publishes to a local directory: `<root>/<video>/hls/master.m3u8`, ...

    Examples:
        .. code-block:: python

            from mpegflow_dagster import LocalDeliveryResource

            delivery = LocalDeliveryResource(root="/srv/cdn-origin")
    """

    root: str = Field(
        default=".mpegflow/delivery",
        description="Local directory of the delivery tree (the CDN origin).",
    )

    def store(self) -> ArtifactStore:
        return LocalArtifactStore(Path(self.root))


class PreviewsResource(ConfigurableResource):
    """Where stages put the small JPEG previews the Dagster UI shows in asset metadata (a poster,
    the sprite, a frame of each rendition): `<dir>/<sha256>.jpg`, shown from `<url>/<sha256>.jpg`.
    `mpegflow previews` serves `dir` at `url`. Display only: no artifact, recipe or provenance
    depends on it.

    Examples:
        .. code-block:: python

            from mpegflow_dagster import PreviewsResource

            previews = PreviewsResource(dir="/data/mpegflow/previews", url="http://127.0.0.1:3001")
    """

    dir: str = Field(
        description="Local directory of the previews (on the machine the steps run on)."
    )
    url: str = Field(
        description="The URL a browser showing the Dagster UI reaches `dir` at (`mpegflow previews`)."
    )

    def store(self) -> PreviewStore:
        return PreviewStore(Path(self.dir), self.url)
