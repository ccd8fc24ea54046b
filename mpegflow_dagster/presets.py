"""Versioned encoding presets: named, versioned bundles of encoder settings, kept in YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Preset(BaseModel):
    """Encoder settings shared by many renditions. Bump `version` whenever the output would change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: int = Field(ge=1)
    description: str = ""
    speed: str = Field(default="veryfast", description="x264 preset (ultrafast ... veryslow).")
    tune: Optional[str] = None
    pix_fmt: str = "yuv420p"
    x264_params: dict[str, str] = Field(
        default_factory=dict, description="Extra -x264-params key=value pairs."
    )
    audio_sample_rate: int = 48000
    audio_channels: int = 2

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class PresetError(ValueError):
    pass


def load_presets(directory: Path) -> dict[str, Preset]:
    """All presets in a directory of YAML files (one preset per file), keyed by name."""
    presets: dict[str, Preset] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        try:
            preset = Preset.model_validate(yaml.safe_load(path.read_text()) or {})
        except Exception as exc:  # pydantic and YAML errors alike: say which file
            raise PresetError(f"invalid preset file {path}: {exc}") from exc
        if preset.name in presets:
            raise PresetError(f"preset {preset.name!r} is defined twice (second time in {path})")
        presets[preset.name] = preset
    return presets
