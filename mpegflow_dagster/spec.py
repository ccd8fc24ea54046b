"""The typed pipeline spec: the ladder and per-stage parameters a pipeline is generated from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .media.chunking import PLAN_VERSION
from .media.codecs import codec
from .presets import Preset, field_errors, load_presets

_NAME = r"^[a-z][a-z0-9_]*$|^[0-9]+p[a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rendition(_Strict):
    """One rung of the ABR ladder."""

    name: str = Field(
        pattern=_NAME, description="Rung name, used in asset keys and paths (e.g. 720p)."
    )
    height: int = Field(
        gt=0, le=4320, description="Output height; width follows the source aspect ratio."
    )
    video_bitrate_kbps: int = Field(gt=0, description="Target video bitrate.")
    maxrate_factor: float = Field(
        default=1.5, ge=1.0, description="VBV maxrate = bitrate x this; bufsize = 2 x maxrate."
    )
    profile: Optional[Literal["baseline", "main", "high", "main10"]] = Field(
        default=None,
        description="The encoder's profile: H.264 baseline/main/high (default high), HEVC "
        "main/main10 (default main), AV1 main. Unset: the default.",
    )
    level: Optional[str] = Field(
        default=None,
        pattern=r"^\d(\.\d)?$",
        description="H.264 (default 4.0) or HEVC (default: x265 picks) level; AV1: unset.",
    )
    audio_bitrate_kbps: int = Field(default=128, gt=0)
    preset: str = Field(default="x264-vod", description="Name of a preset in resources/presets/.")
    psnr_min: Optional[float] = Field(
        default=None,
        gt=0,
        description="This rung's PSNR floor (dB); default qc.renditions.psnr_min.",
    )
    ssim_min: Optional[float] = Field(
        default=None,
        gt=0,
        le=1,
        description="This rung's SSIM floor; default qc.renditions.ssim_min.",
    )
    vmaf_min: Optional[float] = Field(
        default=None,
        ge=0,
        le=100,
        description="This rung's VMAF floor; default qc.renditions.vmaf_min.",
    )

    @property
    def encoding(self) -> dict[str, object]:
        """What shapes the rung's bytes (its code version): not the quality floors, which judge
        the output and change no byte of it."""
        return self.model_dump(mode="json", exclude={"psnr_min", "ssim_min", "vmaf_min"})


class ThumbnailSpec(_Strict):
    enabled: bool = Field(
        default=True, description="False: no thumbnails asset (and nothing of it to publish)."
    )
    interval_s: float = Field(
        default=5.0, gt=0, description="One JPEG every this many seconds, from t=0."
    )
    width: int = Field(
        default=320, ge=16, description="Thumbnail width in pixels (height keeps the aspect ratio)."
    )
    sprite_tile_width: int = Field(
        default=160, ge=16, description="Width of one tile in the sprite sheet."
    )
    sprite_columns: int = Field(default=10, ge=1, le=100)
    quality: int = Field(default=4, ge=2, le=31, description="JPEG qscale (2 best, 31 worst).")


class CaptionSpec(_Strict):
    enabled: bool = Field(
        default=True,
        description="False: no captions or emit_captions asset; `rendition` is not checked.",
    )
    rendition: str = Field(
        default="720p", description="Ladder rung whose settings the captioned encode uses."
    )
    sidecar_extensions: tuple[str, ...] = (".srt", ".vtt")
    font_size: int = Field(default=24, ge=6, le=120)


class HlsSpec(_Strict):
    segment_s: int = Field(
        default=4, ge=1, le=30, description="Target segment length; a multiple of gop_s."
    )
    segment_type: Literal["mpegts", "fmp4", "cmaf"] = Field(
        default="mpegts",
        description="mpegts or fmp4: HLS by FFmpeg, each rendition's video and audio muxed; cmaf: one "
        "set of CMAF segments, video and each distinct audio in tracks of their own, behind an HLS "
        "playlist and a DASH MPD (manifest.mpd), by Shaka Packager (`make packager`).",
    )
    min_renditions: Optional[int] = Field(
        default=None,
        ge=1,
        description="Package when at least this many renditions succeed (None: all are required).",
    )
    encryption: Optional[Literal["cbcs"]] = Field(
        default=None,
        description="cmaf only: CENC `cbcs` encryption of the segments (the scheme one segment set "
        "serves to every DRM) with the deployment's raw key: $MPEGFLOW_CENC_KEY_ID and "
        "$MPEGFLOW_CENC_KEY, 32 hex digits each (never in a spec or in provenance).",
    )
    include: tuple[str, ...] = Field(
        default=(),
        description="Further rendition assets of this pipeline (made by your own stages, H.264 MP4 with keyframes "
        "every gop_s) packaged beside the ladder's rungs, by asset name.",
    )
    above_source: Optional[Literal["drop", "keep"]] = Field(
        default=None,
        description="Rungs taller than the source: drop (left out of the package, named in the hls "
        "asset's `dropped`) or keep (packaged: at their own height with upscale: true, else at the "
        "source's). Unset: keep with upscale: true, else drop. Never two variants of one resolution.",
    )


class SubtitleSpec(_Strict):
    enabled: bool = Field(
        default=True,
        description="A CMAF package (hls.segment_type: cmaf) gets a selectable WebVTT track per "
        "subtitle sidecar of the source (`movie.<language>.srt|vtt`, e.g. fr, fre, pt-BR; the "
        "plain `movie.srt` as `und`) and per text subtitle stream inside it (subrip, ASS, "
        "WebVTT, mov_text: its language tag). False: no subtitles asset.",
    )


class ExtraAudio(_Strict):
    """A further codec for every audio language of a CMAF package, beside the rungs' AAC: an audio
    group of its own that every rung is offered with."""

    codec: Literal["eac3", "ac3", "opus"] = Field(
        description="eac3 (Dolby Digital Plus: surround for TVs and set-top boxes), ac3 (Dolby "
        "Digital) or opus (by libopus)."
    )
    bitrate_kbps: int = Field(gt=0, le=1024)
    channels: int = Field(
        default=2, ge=1, le=8, description="6: 5.1, downmixed or upmixed by FFmpeg"
    )
    sample_rate: int = Field(default=48000)

    @model_validator(mode="after")
    def _encodable(self) -> "ExtraAudio":
        rates = (48000,) if self.codec == "opus" else (32000, 44100, 48000)
        if self.sample_rate not in rates:
            raise ValueError(f"{self.codec} takes sample_rate {' or '.join(map(str, rates))}")
        if self.codec != "opus" and self.channels > 6:
            raise ValueError(f"{self.codec} carries at most 6 channels (5.1)")
        if self.codec == "ac3" and self.bitrate_kbps > 640:
            raise ValueError("ac3 takes at most 640 kb/s")
        return self


class LoudnormSpec(_Strict):
    """Two-pass EBU R128 loudness normalization of every audio encode (FFmpeg's `loudnorm`, linear:
    the first pass is the source QC's measurement)."""

    target_lufs: float = Field(default=-23.0, ge=-70, le=-5, description="Integrated loudness.")
    true_peak_dbtp: float = Field(default=-1.0, ge=-9, le=0, description="Maximum true peak.")
    range_lu: float = Field(default=7.0, ge=1, le=50, description="Target loudness range.")


class AudioSpec(_Strict):
    extra: tuple[ExtraAudio, ...] = Field(
        default=(),
        description="Further audio codecs of a CMAF package (hls.segment_type: cmaf), each an "
        "audio group holding every language; every rung is offered with each.",
    )
    loudnorm: Optional[LoudnormSpec] = Field(
        default=None,
        description="Normalize the loudness of every audio encode (renditions and tracks) to this "
        "target; unset: the source's loudness is kept.",
    )


# What a failing check does: `block` refuses the output (a rendition is then a failed rendition,
# isolated like any other), `warn` records the failure and lets the output through.
Action = Literal["block", "warn"]


class RenditionQc(_Strict):
    """Checks of every rendition against its source (Dagster asset checks of the rendition)."""

    enabled: bool = Field(default=True, description="Measure and check every rendition.")
    every_nth_gop: int = Field(
        default=5,
        ge=1,
        description="Decode and score one GOP in N of each rendition (and the source over the "
        "same times), spread evenly, at least one: about 1/N of the cost of whole files. 1: "
        "every GOP, a full decode of every rendition (the decode-health check then covers every "
        "frame).",
    )
    every_nth_frame: int = Field(
        default=7,
        ge=1,
        description="PSNR/SSIM/VMAF on every Nth frame of the GOPs decoded, both sides (1: every "
        "frame); every frame of them is still decoded (the decode-health check). 7 divides no "
        "usual GOP (48, 50, 60 frames), so the sample is not all keyframes, the best frames of a "
        "GOP.",
    )
    metrics_binary: str = Field(
        default="ffmpeg",
        description="The FFmpeg that scores: `ffmpeg` (the pipeline's), `imageio-ffmpeg` (the "
        "static 9.0 build of that package, with libvmaf), or a path.",
    )
    vmaf: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="VMAF: auto = when the metrics binary has libvmaf; on = required (fails at "
        "load of the code location otherwise); off.",
    )
    vmaf_model: str = Field(
        default="version=vmaf_v0.6.1", description="libvmaf's model option (its built-in model)."
    )
    psnr_min: float = Field(default=24.0, gt=0, description="PSNR floor (dB, Y/U/V pooled).")
    ssim_min: float = Field(default=0.3, gt=0, le=1, description="SSIM floor (All).")
    vmaf_min: float = Field(default=50.0, ge=0, le=100, description="VMAF floor (mean).")
    quality: Action = Field(default="block", description="A score below its floor.")
    decode: Action = Field(default="block", description="Decode errors or missing frames.")
    keyframes: Action = Field(
        default="block", description="A keyframe missing at a forced time (every gop_s)."
    )


class SourceQc(_Strict):
    """Checks of the source at ingest (Dagster asset checks of the `source_qc` asset)."""

    enabled: bool = Field(default=True, description="Analyse and check every source.")
    max_black_s: float = Field(default=2.0, ge=0, description="Longest black stretch allowed.")
    black: Action = "warn"
    max_freeze_s: float = Field(default=5.0, ge=0, description="Longest frozen stretch allowed.")
    freeze: Action = "warn"
    max_silence_s: float = Field(default=5.0, ge=0, description="Longest silence allowed.")
    silence: Action = "warn"
    loudness_standard: Literal["ebu_r128", "atsc_a85"] = Field(
        default="ebu_r128",
        description="ebu_r128: -23 LUFS, true peak <= -1 dBTP; atsc_a85: -24 LKFS, <= -2 dBTP.",
    )
    loudness_tolerance_lu: float = Field(
        default=2.0, gt=0, description="Allowed distance of the integrated loudness from target."
    )
    loudness: Action = "warn"
    interlaced: Action = Field(default="warn", description="An interlaced source (idet).")

    @property
    def loudness_target(self) -> tuple[float, float]:
        """(integrated loudness target, maximum true peak) of the standard."""
        return (-23.0, -1.0) if self.loudness_standard == "ebu_r128" else (-24.0, -2.0)


class PackageQc(_Strict):
    """Checks of the package (Dagster asset checks of `hls`)."""

    enabled: bool = Field(default=True, description="Check every package.")
    action: Action = Field(
        default="block",
        description="References missing, a segment above the target duration, variants whose "
        "segments do not line up.",
    )


class QcSpec(_Strict):
    renditions: RenditionQc = RenditionQc()
    source: SourceQc = SourceQc()
    package: PackageQc = PackageQc()


StepKind = Literal["ingest", "encode", "captions", "package", "emit"]


class RetrySpec(_Strict):
    """Retries of transient and resource failures, as Dagster's RetryPolicy runs them (wait
    before retry n: exponential `delay_s * (2**n - 1)`, linear `delay_s * n`, constant `delay_s`;
    jitter `plus_minus` adds up to +-`delay_s`, `full` scales by a random [0, 1)). Permanent and
    security failures never retry."""

    max_retries: int = Field(default=3, ge=0, le=20)
    delay_s: float = Field(default=2.0, ge=0, description="Base wait before a retry.")
    backoff: Literal["exponential", "linear", "constant"] = "exponential"
    jitter: Literal["plus_minus", "full", "none"] = "plus_minus"


class FailureSpec(_Strict):
    verification: Literal["strict", "tolerant"] = Field(
        default="strict",
        description="strict: duration within 0.5 s/2% and no corruption in stderr; tolerant: 10%, warnings ignored.",
    )
    retry: RetrySpec = RetrySpec()
    retry_by_stage: dict[StepKind, RetrySpec] = Field(
        default_factory=dict,
        description="Overrides per step: ingest (with probe), encode (renditions and thumbnails), "
        "captions, package, emit.",
    )

    def retry_for(self, kind: StepKind) -> RetrySpec:
        return self.retry_by_stage.get(kind, self.retry)


class EmitSpec(_Strict):
    """What is published to the delivery location (configured per deployment, not per spec)."""

    thumbnails: bool = Field(
        default=True, description="Publish thumbnails, sprite and storyboard beside the HLS tree."
    )


class PipelineSpec(_Strict):
    """A whole video pipeline. `name` prefixes every asset key, so specs compose in one Definitions."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Asset key prefix and group name.")
    description: str = Field(
        default="", description="What the pipeline is for (shown by `mpegflow why`)."
    )
    gop_s: float = Field(
        default=2.0, gt=0, le=10, description="Keyframe interval, identical in every rendition."
    )
    chunk_s: float = Field(
        default=30.0,
        ge=0,
        description="Renditions of a source at least 1.5x this long are encoded in time chunks of about "
        "this length, side by side, cut at keyframes and joined without re-encoding; 0 = never.",
    )
    chunk_lead_gops: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Each time chunk after the first starts its encode this many keyframe intervals "
        "before its cut (frames dropped in the join), so x264's rate control has settled when the "
        "chunk's own part begins: without it the second after each cut loses up to 3 dB PSNR on "
        "light rungs (docs/seams.md). Costs that much more encoding per chunk.",
    )
    ladder: tuple[Rendition, ...] = Field(min_length=1)
    upscale: bool = Field(
        default=False,
        description="Encode rungs taller than the source at their own height (else at the "
        "source's); whether they are packaged: hls.above_source.",
    )
    thumbnails: ThumbnailSpec = ThumbnailSpec()
    captions: CaptionSpec = CaptionSpec()
    hls: HlsSpec = HlsSpec()
    subtitles: SubtitleSpec = SubtitleSpec()
    audio: AudioSpec = AudioSpec()
    emit: EmitSpec = EmitSpec()
    failures: FailureSpec = FailureSpec()
    qc: QcSpec = QcSpec()
    presets: dict[str, Preset] = Field(
        default_factory=dict, description="Resolved presets, by name."
    )

    @field_validator("ladder")
    @classmethod
    def _unique_rungs(cls, ladder: tuple[Rendition, ...]) -> tuple[Rendition, ...]:
        names = [r.name for r in ladder]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"ladder rung names must be unique; repeated: {', '.join(dupes)}")
        return tuple(sorted(ladder, key=lambda r: (r.height, r.video_bitrate_kbps)))

    @model_validator(mode="after")
    def _cross_checks(self) -> "PipelineSpec":
        if self.hls.segment_s % self.gop_s > 1e-9:
            raise ValueError(
                f"hls.segment_s ({self.hls.segment_s}) must be a multiple of gop_s ({self.gop_s})"
            )
        rungs = {r.name for r in self.ladder}
        if self.captions.enabled and self.captions.rendition not in rungs:
            raise ValueError(
                f"captions.rendition {self.captions.rendition!r} is not a ladder rung (rungs: {', '.join(sorted(rungs))})"
            )
        if self.hls.encryption and self.hls.segment_type != "cmaf":
            raise ValueError("hls.encryption needs hls.segment_type: cmaf (CENC is for CMAF)")
        if self.audio.extra and self.hls.segment_type != "cmaf":
            raise ValueError(
                "audio.extra needs hls.segment_type: cmaf (audio tracks of their own; the mpegts "
                "and fmp4 packages carry each rendition's AAC)"
            )
        packaged = len(self.ladder) + len(self.hls.include)
        if self.hls.min_renditions is not None and self.hls.min_renditions > packaged:
            raise ValueError(
                f"hls.min_renditions ({self.hls.min_renditions}) exceeds the {packaged} renditions packaged"
            )
        clashes = sorted(
            set(self.hls.include) & {f"rendition_{r}" for r in rungs}
            | set(self.hls.include) & set(rungs)
        )
        if clashes:
            raise ValueError(
                f"hls.include names ladder rungs ({', '.join(clashes)}): list only your own rendition assets"
            )
        missing = sorted({r.preset for r in self.ladder} - set(self.presets))
        if missing:
            raise ValueError(
                f"ladder refers to unknown preset(s) {', '.join(missing)}; known: {', '.join(sorted(self.presets)) or 'none'}"
            )
        for r in self.ladder:
            self._check_codec(r)
        return self

    def _check_codec(self, rendition: Rendition) -> None:
        """A rung's profile, level and packaging fit its preset's encoder."""
        preset = self.presets[rendition.preset]
        c = codec(preset.encoder)
        where = f"ladder rung {rendition.name} ({c.label}, preset {preset.name})"
        if rendition.profile is not None and rendition.profile not in c.profiles:
            raise ValueError(
                f"{where}: profile {rendition.profile!r} is not a {c.label} profile "
                f"({', '.join(c.profiles)})"
            )
        if "main10" in c.profiles and (rendition.profile == "main10") != preset.ten_bit:
            raise ValueError(
                f"{where}: profile main10 goes with a 10-bit pix_fmt (yuv420p10le) and main with "
                f"8 bits; the preset's is {preset.pix_fmt}"
            )
        cap = int(rendition.video_bitrate_kbps * rendition.maxrate_factor)
        if c.max_cap_kbps is not None and cap > c.max_cap_kbps:
            raise ValueError(
                f"{where}: its cap (video_bitrate_kbps x maxrate_factor = {cap} kb/s) is above "
                f"the {c.max_cap_kbps} kb/s {preset.encoder} takes"
            )
        if rendition.level is not None and not c.takes_level:
            raise ValueError(f"{where}: leave level unset ({preset.encoder} picks it)")
        if not c.mpegts and self.hls.segment_type == "mpegts":
            raise ValueError(
                f"{where}: HLS carries {c.label} in fMP4 segments only: set hls.segment_type: fmp4"
            )

    def encode_settings(self) -> dict[str, object]:
        """Spec-wide settings that shape every encoded rendition's bytes."""
        return {
            "gop_s": self.gop_s,
            "chunk_s": self.chunk_s,
            "chunk_lead_gops": self.chunk_lead_gops,
            "chunk_plan": PLAN_VERSION,
            "upscale": self.upscale,
            # only when set, so the code versions of specs without it are what they were
            **({"loudnorm": self.audio.loudnorm.model_dump()} if self.audio.loudnorm else {}),
        }

    @property
    def packages_above_source(self) -> bool:
        """Whether rungs taller than the source go into the HLS package (hls.above_source)."""
        if self.hls.above_source is None:
            return self.upscale
        return self.hls.above_source == "keep"

    @property
    def packages_tracks(self) -> bool:
        """Whether the package holds audio and subtitle tracks of their own (an audio asset, and
        a subtitles asset unless disabled): CMAF only."""
        return self.hls.segment_type == "cmaf"

    @property
    def packages_subtitles(self) -> bool:
        """Whether the package gets subtitle tracks (a subtitles asset)."""
        return self.subtitles.enabled and self.packages_tracks

    @property
    def analyses_source(self) -> bool:
        """Whether a source_qc asset analyses each source (its checks, or loudnorm's first pass)."""
        return self.qc.source.enabled or self.audio.loudnorm is not None

    @property
    def encodes_after_source_qc(self) -> bool:
        """Whether the encodes wait for source_qc: they normalize loudness with its measurement,
        or a failing source check must stop them (a check set to block). Otherwise it runs
        beside them."""
        cfg = self.qc.source
        blocks = cfg.enabled and "block" in (
            cfg.black,
            cfg.freeze,
            cfg.silence,
            cfg.loudness,
            cfg.interlaced,
        )
        return self.audio.loudnorm is not None or blocks

    @property
    def renditions_required(self) -> int:
        """How many renditions packaging needs (all of them unless hls.min_renditions)."""
        return self.hls.min_renditions or len(self.ladder) + len(self.hls.include)

    def rendition(self, name: str) -> Rendition:
        found = next((r for r in self.ladder if r.name == name), None)
        if found is None:
            raise KeyError(
                f"pipeline {self.name} has no ladder rung {name!r} (rungs: {', '.join(r.name for r in self.ladder)})"
            )
        return found

    def preset_for(self, rendition: Rendition) -> Preset:
        return self.presets[rendition.preset]


class SpecError(ValueError):
    """A spec file (or a project's set of them) that cannot be used; the message names the file
    and the field. Permanent: only an edit fixes it."""

    failure_class = "permanent"
    reason = "config.invalid_spec"


def load_spec(path: Path, presets_dir: Optional[Path] = None) -> PipelineSpec:
    """Load a spec YAML. Presets come from `presets_dir` (default: `../presets` beside the spec's folder)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path} must contain a mapping, got {type(raw).__name__}")
    presets_dir = presets_dir or path.parent.parent / "presets"
    raw = {**raw, "presets": {n: p.model_dump() for n, p in load_presets(presets_dir).items()}}
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"spec file {path} is invalid:\n{field_errors(exc)}") from exc
