"""Provenance records: everything needed to answer "why does this output look this way?".

A record is stored as Dagster materialization metadata and as a JSON sidecar next to the
artifact (`<artifact>.provenance.json`). No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field

from .media.build import FFmpegBuild

SIDECAR_SUFFIX = ".provenance.json"


class EncoderBuild(BaseModel):
    ffmpeg_version: str
    ffmpeg_build_hash: str
    ffmpeg_path: str
    libraries: dict[str, str]
    pinned: Optional[str] = Field(
        default=None, description="The deployment's pin (version prefix or build hash), if any."
    )

    @classmethod
    def of(cls, build: FFmpegBuild, pinned: Optional[str]) -> "EncoderBuild":
        return cls(
            ffmpeg_version=build.version,
            ffmpeg_build_hash=build.build_hash,
            ffmpeg_path=build.path,
            libraries=build.libraries,
            pinned=pinned,
        )


class Provenance(BaseModel):
    pipeline: str
    asset: str
    video: str
    run_id: str
    recipe: str = Field(
        description="Hash of everything that determines the output: stage spec, encoder build, inputs."
    )
    stage_fingerprint: str = Field(
        description="Hash of the resolved stage spec (rung, preset, parameters)."
    )
    preset: Optional[str] = None
    encoder: EncoderBuild
    encoder_libraries: dict[str, str] = Field(
        default_factory=dict,
        description="The encoder library that wrote the video, as it names itself: x264's and "
        "x265's SEI in the stream, SVT-AV1's own banner; e.g. {'x264': 'core 164 r3095'}.",
    )
    argv: list[list[str]] = Field(default_factory=list)
    inputs: dict[str, Optional[str]] = Field(
        default_factory=dict, description="Upstream asset -> data version used."
    )
    output_sha256: str
    output_size_bytes: int
    output_files: int = 1
    media: dict[str, Any] = Field(default_factory=dict)
    wall_s: float
    ffmpeg_cpu_s: float
    ffmpeg_runs: list[tuple[float, float]] = Field(
        default_factory=list, description="(start epoch, wall seconds) of each FFmpeg run."
    )
    attempt: int
    earlier_failures: list[str] = Field(
        default_factory=list, description="Failure classes of earlier attempts."
    )
    host: str = Field(default_factory=socket.gethostname)
    bit_exact: bool = Field(
        description="The same build, recipe and inputs give the same bytes again: every "
        "encoder ran with one thread (ffmpeg.threads: 1)."
    )
    reused_from_run: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def code_version(*parts: Any, encoder_build: Optional[str] = None) -> str:
    """A stage's code version: a stable hash of what shapes its output (pydantic models, dicts,
    strings), plus the encoder build it is pinned to, so a new build marks FFmpeg stages stale."""
    blob = json.dumps(
        [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16] + (
        f"+{encoder_build}" if encoder_build else ""
    )


def recipe_hash(
    *, fingerprint: str, build_hash: str, inputs: dict[str, Optional[str]], threads: int
) -> str:
    """Equal recipes give equal bytes (with bit-exact output): the key for skipping unchanged work."""
    blob = json.dumps(
        {"f": fingerprint, "b": build_hash, "i": inputs, "t": threads}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def sidecar_path(artifact: Path) -> Path:
    return Path(artifact).with_name(Path(artifact).name + SIDECAR_SUFFIX)
