"""What the rendition checks judge (`qc.rendition_checks`), measured on renditions just encoded:
keyframes at the forced times (packets, no decode), and from one FFmpeg run that decodes the
source once and each rendition fully, decode health and PSNR/SSIM (and VMAF) against the source
scaled to each rung's size, on every Nth frame."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from .. import qc
from ..media import quality
from ..media.commands import Loudnorm
from ..media.probe import probe
from ..media.runner import run_ffmpeg
from ..media.source_qc import run_source_qc
from ..spec import PipelineSpec
from ..storage import scratch_dir
from .toolkit import StageOutput, Tools

# PSNR of identical frames is infinite; metadata (JSON) holds this instead
PSNR_IDENTICAL = 100.0


def _finite(value: float) -> float:
    return PSNR_IDENTICAL if math.isinf(value) else round(value, 3)


def measure_renditions(
    outs: Mapping[str, StageOutput],
    source: Path,
    spec: PipelineSpec,
    tools: Tools,
    scratch: Path,
    loudnorm: Optional[Loudnorm] = None,
    tone_mapped: frozenset[str] = frozenset(),
) -> None:
    """Add the measurements to each rendition's facts (by rung name in `outs`); renditions that
    failed their verification are left alone (refused already). `scratch`: where the run's
    metric files go (removed after). `tone_mapped`: SDR renditions of an HDR source (their
    reference is tone-mapped as they were). With `loudnorm` (the audio was normalized), the loudness
    measured and reached (provenance)."""
    cfg = spec.qc.renditions
    todo = {n: o for n, o in outs.items() if not o.facts.get(qc.VERIFICATION)}
    if loudnorm is not None:
        for out in todo.values():
            out.facts[qc.LOUDNORM] = _loudness_reached(out.path, loudnorm, tools, scratch)
    if not cfg.enabled or not todo:
        return
    frames: dict[str, int] = {}
    for name, out in todo.items():
        packets = quality.video_packets(out.path, tools.ffprobe)
        frames[name] = len(packets)
        rate = float(str(out.facts.get("frame_rate") or 30.0))
        # a mark needs a keyframe if a frame starts at or after it: up to the last frame's
        # time (the container's duration counts the audio too)
        last_frame_s = (frames[name] - 1) / rate
        out.facts[qc.KEYFRAMES] = quality.keyframe_problems(
            [t for t, key in packets if key],
            every_s=spec.gop_s,
            duration_s=last_frame_s + 1e-3,
            tolerance_s=1.0 / rate,
        )
    binary = quality.metrics_binary(cfg.metrics_binary, tools.ffmpeg)
    vmaf = {"auto": binary.vmaf, "on": True, "off": False}[cfg.vmaf]
    compared = [
        quality.Compared(
            n, o.path, *map(int, str(o.facts["resolution"]).split("x")), tone_map=n in tone_mapped
        )
        for n, o in todo.items()
    ]
    started = time.monotonic()
    with scratch_dir(scratch, "qc", temporary=True) as work:
        scores, run = quality.compare(
            source, compared, work, binary, every=cfg.every_nth_frame, vmaf=vmaf
        )
    wall = round(time.monotonic() - started, 3)
    errors = {n: [] for n in todo}
    if quality.decode_errors(run.messages):  # the joint run cannot say whose: decode each alone
        for name, out in todo.items():
            alone = run_ffmpeg(quality.decode_args(out.path), ffmpeg=tools.ffmpeg)
            errors[name] = quality.decode_errors(alone.messages)
    for name, out in todo.items():
        s = scores[name]
        # every frame the rendition holds decoded (it keeps the source's frames: no need to
        # count the source's, which would read the whole source again for each lane)
        expected = quality.expected_frames(frames[name], cfg.every_nth_frame)
        out.facts[qc.DECODE] = {
            "errors": len(errors[name]),
            "first_error": errors[name][0] if errors[name] else None,
            "frames": s.frames,
            "frames_expected": expected,
        }
        out.facts[qc.QUALITY] = _quality_facts(
            s, cfg.every_nth_frame, binary, vmaf, cfg.vmaf_model, wall
        )


def _loudness_reached(
    path: Path, loudnorm: Loudnorm, tools: Tools, scratch: Path
) -> dict[str, Any]:
    """The source's loudness as loudnorm's first pass measured it, the target, and what the
    normalized audio measures (ebur128 on the output's first audio stream)."""
    with scratch_dir(scratch, "loudness", temporary=True) as work:
        report, _ = run_source_qc(
            path, work, probe(path, tools.ffprobe), video=False, ffmpeg_bin=tools.ffmpeg
        )
    reached = report.loudness
    target = loudnorm.target
    return {
        "target_lufs": target.integrated_lufs,
        "target_true_peak_dbtp": target.true_peak_dbtp,
        "measured_lufs": loudnorm.measured_i,
        "measured_true_peak_dbtp": loudnorm.measured_tp,
        "measured_range_lu": loudnorm.measured_lra,
        "result_lufs": reached.integrated_lufs if reached else None,
        "result_true_peak_dbtp": reached.true_peak_dbtp if reached else None,
        "result_range_lu": reached.range_lu if reached else None,
    }


def _quality_facts(
    s: quality.Scores,
    every: int,
    binary: quality.MetricsBinary,
    vmaf: bool,
    model: str,
    wall_s: float,
) -> dict[str, Any]:
    return {
        "psnr": _finite(s.psnr_avg),
        "psnr_y": _finite(s.psnr_y),
        "psnr_min": _finite(s.psnr_min),
        "ssim": s.ssim,
        "ssim_min": s.ssim_min,
        "vmaf": round(s.vmaf_mean, 3) if s.vmaf_mean is not None else None,
        "vmaf_min": round(s.vmaf_min, 3) if s.vmaf_min is not None else None,
        "vmaf_harmonic_mean": round(s.vmaf_harmonic_mean, 3)
        if s.vmaf_harmonic_mean is not None
        else None,
        "frames": s.frames,
        "every_nth_frame": every,
        "binary": binary.path,
        "binary_version": binary.version,
        "vmaf_model": model if vmaf else None,
        "wall_s": wall_s,  # of the run scoring every rendition measured with this one
    }
