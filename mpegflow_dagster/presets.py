"""Versioned encoding presets: named, versioned bundles of encoder settings, kept in YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .media.codecs import CODECS, Encoder, codec


class Preset(BaseModel):
    """Encoder settings shared by many renditions. Bump `version` whenever the output would change."""

    # `speed: 10` (SVT-AV1) is read as the string "10"
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: int = Field(ge=1)
    description: str = ""
    encoder: Encoder = Field(
        default="libx264", description=f"The video encoder: {', '.join(CODECS)}."
    )
    speed: str = Field(
        default="veryfast",
        description="The encoder's speed preset: x264/x265 `ultrafast` ... `veryslow`, SVT-AV1 "
        "`0` (slowest) ... `13`.",
    )
    crf: Optional[int] = Field(
        default=None,
        ge=0,
        le=63,
        description="SVT-AV1 only, required there: the quality of its capped CRF (lower is better; "
        "the rung's maxrate caps it). SVT-AV1 1.4 forces keyframes only in CRF mode.",
    )
    tune: Optional[str] = Field(default=None, description="x264/x265 `-tune`.")
    pix_fmt: str = Field(
        default="yuv420p", description="yuv420p; yuv420p10le for HEVC main10 or 10-bit AV1."
    )
    encoder_params: dict[str, str] = Field(
        default_factory=dict,
        description="Extra key=value pairs for -x264-params, -x265-params or -svtav1-params "
        "(over the ones that keep keyframes on the marks: set those only knowingly).",
    )
    audio_sample_rate: int = 48000
    audio_channels: int = 2

    @model_validator(mode="after")
    def _fits_encoder(self) -> "Preset":
        c = codec(self.encoder)
        if self.speed not in c.speeds:
            raise ValueError(
                f"speed {self.speed!r} is not a {self.encoder} preset (one of {', '.join(c.speeds)})"
            )
        if c.takes_crf != (self.crf is not None):
            raise ValueError(
                f"{self.encoder} needs crf (its capped CRF's quality, e.g. 35)"
                if c.takes_crf
                else f"crf is for SVT-AV1's capped CRF; {self.encoder} encodes to the rung's bitrate"
            )
        if self.tune and self.encoder == "libsvtav1":
            raise ValueError("tune is for x264/x265; SVT-AV1 takes `tune` in encoder_params")
        return self

    @property
    def ten_bit(self) -> bool:
        return "10" in self.pix_fmt

    @property
    def carries_hdr(self) -> bool:
        """Whether its rungs keep an HDR source's PQ or HLG (else they are tone-mapped to SDR)."""
        return codec(self.encoder).hdr and self.ten_bit

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class PresetError(ValueError):
    pass


def field_errors(exc: ValidationError) -> str:
    """One `  field.path: message` line per error: what a user edits, without pydantic's noise."""
    return "\n".join(
        f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


def load_presets(directory: Path) -> dict[str, Preset]:
    """All presets in a directory of YAML files (one preset per file), keyed by name."""
    presets: dict[str, Preset] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        try:
            preset = Preset.model_validate(yaml.safe_load(path.read_text()) or {})
        except ValidationError as exc:
            raise PresetError(f"invalid preset file {path}:\n{field_errors(exc)}") from exc
        except Exception as exc:  # YAML errors and the like: say which file
            raise PresetError(f"invalid preset file {path}: {exc}") from exc
        if preset.name in presets:
            raise PresetError(f"preset {preset.name!r} is defined twice (second time in {path})")
        presets[preset.name] = preset
    return presets
