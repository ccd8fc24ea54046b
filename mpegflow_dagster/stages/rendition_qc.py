"""What the rendition checks judge (`qc.rendition_checks`), measured on renditions just encoded:
keyframes at the forced times (packets, no decode), and from FFmpeg runs that decode the source
and the renditions over one GOP in N (`qc.renditions.every_nth_gop`; 1: whole files, in one run),
decode health and PSNR/SSIM (and VMAF) against the source scaled to each rung's size, on every
Nth frame of those GOPs."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
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
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:  # ffprobe reads, one per file
        read = pool.map(lambda o: quality.video_packets(o.path, tools.ffprobe), todo.values())
        packets = dict(zip(todo, read, strict=True))
    first = next(iter(todo))
    frame_s = 1.0 / _rate(todo[first])
    for name, out in todo.items():
        # a mark needs a keyframe if a frame starts at or after it: up to the last frame's
        # time (the container's duration counts the audio too)
        last_frame_s = (len(packets[name]) - 1) / _rate(out)
        out.facts[qc.KEYFRAMES] = quality.keyframe_problems(
            [t for t, key in packets[name] if key],
            every_s=spec.gop_s,
            duration_s=last_frame_s + 1e-3,
            tolerance_s=1.0 / _rate(out),
        )
    # the renditions of one encode are cut at the same times: the first one's GOPs are theirs
    windows = (
        quality.sample_windows(packets[first], cfg.every_nth_gop, frame_s) or None
        if cfg.every_nth_gop > 1
        else None
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
        scores, runs = quality.compare(
            source,
            compared,
            work,
            binary,
            every=cfg.every_nth_frame,
            vmaf=vmaf,
            windows=windows,
            at_once=max(1, tools.lanes),  # at the end of an encode, its lanes' cores are free
        )
    wall = round(time.monotonic() - started, 3)
    errors = {n: [] for n in todo}
    # the joint runs cannot say whose: decode each alone, in full
    if any(quality.decode_errors(run.messages) for run in runs):
        for name, out in todo.items():
            alone = run_ffmpeg(quality.decode_args(out.path), ffmpeg=tools.ffmpeg)
            errors[name] = quality.decode_errors(alone.messages)
    for name, out in todo.items():
        s = scores[name]
        # every frame decoded (a rendition keeps the source's frames: no need to count the
        # source's, which would read the whole source again for each lane)
        expected = (
            sum(quality.expected_frames(w.frames, cfg.every_nth_frame) for w in windows)
            if windows is not None
            else quality.expected_frames(len(packets[name]), cfg.every_nth_frame)
        )
        gops = len(windows) if windows is not None else sum(k for _, k in packets[name])
        one_in = cfg.every_nth_gop if windows is not None else 1  # all-intra: the whole file
        out.facts[qc.DECODE] = {
            "errors": len(errors[name]),
            "first_error": errors[name][0] if errors[name] else None,
            "frames": s.frames,
            "frames_expected": expected,
            "gops": gops,
            "every_nth_gop": one_in,
        }
        out.facts[qc.QUALITY] = _quality_facts(
            s, (cfg.every_nth_frame, gops, one_in), binary, vmaf, cfg.vmaf_model, wall
        )


def _rate(out: StageOutput) -> float:
    return float(str(out.facts.get("frame_rate") or 30.0))


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
    sample: tuple[int, int, int],  # every Nth frame, of how many GOPs, 1 in how many GOPs
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
        "every_nth_frame": sample[0],
        "gops": sample[1],
        "every_nth_gop": sample[2],
        "binary": binary.path,
        "binary_version": binary.version,
        "vmaf_model": model if vmaf else None,
        "wall_s": wall_s,  # of the run scoring every rendition measured with this one
    }
