"""The spec's quality control as stage checks: each judges what a stage measured (its output's
facts) against the spec's thresholds. Renditions (streams and duration, keyframes, decode health,
PSNR/SSIM/VMAF), the source (black, freeze, silence, loudness, interlacing) and the package
(references, target duration, segment alignment)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .checks import CheckOutcome, StageCheck
from .spec import PipelineSpec, Rendition

# Facts the stages write (their metadata keys), which the checks read.
VERIFICATION = "verification_problems"
KEYFRAMES = "keyframe_problems"
DECODE = "decode"
QUALITY = "quality"
SOURCE_QC = "source_qc"
PACKAGE_QC = "package_qc"
LOUDNORM = "loudnorm"  # a normalized rendition's loudness, measured and reached (no check reads it)


def _problems(name: str, reason: str, what: str) -> Any:
    def judge(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
        if name not in facts:
            return None
        problems = list(facts[name])
        return CheckOutcome(
            passed=not problems,
            description="; ".join(problems) if problems else f"{what}: no problem",
            metadata={"problems": problems},
            reason=reason,
        )

    return judge


def rendition_checks(spec: PipelineSpec, rung: Rendition) -> tuple[StageCheck, ...]:
    """A failing blocking check refuses the rendition, which then fails like any other: it stops
    packaging, unless the package takes a partial ladder (hls.min_renditions)."""
    cfg = spec.qc.renditions
    isolated = spec.hls.min_renditions is not None
    verification = StageCheck(
        "streams_and_duration",
        "The rendition has video (and audio where the source has it) and lasts as long as the "
        f"source ({spec.failures.verification} verification), and FFmpeg reported no damage.",
        _problems(VERIFICATION, "output.verification_failed", "streams and duration"),
        blocking=True,
        stops_downstream=not isolated,
    )
    if not cfg.enabled:
        return (verification,)

    def decode(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
        found = facts.get(DECODE)
        if not found:
            return None
        errors, frames, expected = found["errors"], found["frames"], found["frames_expected"]
        # one frame short (per run) is the end of the pairing: the last sampled frames of the
        # two sides may not meet (a source whose video starts late); a missing decode is more
        runs = found.get("gops", 1) if found.get("every_nth_gop", 1) > 1 else 1
        short = frames + runs < expected
        problems = ([f"{errors} decode error(s): {found['first_error']}"] if errors else []) + (
            [f"decodes to {frames} compared frames, {expected} expected"] if short else []
        )
        return CheckOutcome(
            passed=not problems,
            description="; ".join(problems)
            or f"decoded cleanly ({frames} frames compared, of {_gops(found)})",
            metadata=dict(found),
            reason="quality.decode_errors" if errors else "quality.frames_missing",
        )

    floors = {
        "vmaf": rung.vmaf_min if rung.vmaf_min is not None else cfg.vmaf_min,
        "psnr": rung.psnr_min if rung.psnr_min is not None else cfg.psnr_min,
        "ssim": rung.ssim_min if rung.ssim_min is not None else cfg.ssim_min,
    }
    units = {"vmaf": "", "psnr": " dB", "ssim": ""}

    def quality(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
        scores = facts.get(QUALITY)
        if not scores:
            return None
        below = [
            m
            for m in ("vmaf", "psnr", "ssim")
            if scores.get(m) is not None and scores[m] < floors[m]
        ]
        measured = ", ".join(
            f"{m.upper()} {scores[m]:g}{units[m]}"
            for m in ("vmaf", "psnr", "ssim")
            if scores.get(m) is not None
        )
        sample = (
            f"{scores['frames']} frames (every {scores['every_nth_frame']}th of "
            f"{_gops(scores)}), scored by {scores['binary_version']}"
        )
        if below:
            description = "; ".join(
                f"{m.upper()} {scores[m]:g}{units[m]} < {floors[m]:g}{units[m]} ({m}_min)"
                for m in below
            )
        else:
            description = f"{measured}: at or above the floors"
        return CheckOutcome(
            passed=not below,
            description=f"{description}, on {sample}",
            metadata={**scores, **{f"{m}_min": floors[m] for m in floors}},
            reason=f"quality.{below[0]}_below_threshold" if below else "",
        )

    return (
        verification,
        StageCheck(
            "keyframes",
            f"A keyframe at each forced time (every gop_s = {spec.gop_s:g} s), so segments cut "
            "there and variants switch cleanly.",
            _problems(KEYFRAMES, "quality.keyframes_missing", f"a keyframe every {spec.gop_s:g} s"),
            blocking=cfg.keyframes == "block",
            stops_downstream=not isolated and cfg.keyframes == "block",
        ),
        StageCheck(
            "decode_health",
            "The GOPs decoded for the checks (one in every_nth_gop = "
            f"{cfg.every_nth_gop}; 1: the whole rendition) decode with no error and to every frame.",
            decode,
            blocking=cfg.decode == "block",
            stops_downstream=not isolated and cfg.decode == "block",
        ),
        StageCheck(
            "quality",
            "PSNR and SSIM (and VMAF where the metrics binary has libvmaf) against the source "
            f"scaled to the rung's size, on every {cfg.every_nth_frame}th frame of one GOP in "
            f"{cfg.every_nth_gop}; floors: "
            + ", ".join(f"{m}_min {v:g}" for m, v in floors.items()),
            quality,
            blocking=cfg.quality == "block",
            stops_downstream=not isolated and cfg.quality == "block",
        ),
    )


def _gops(found: Mapping[str, Any]) -> str:
    """Which GOPs a rendition's measurement covered, from its facts (older ones: every GOP)."""
    every = found.get("every_nth_gop", 1)
    return "every GOP" if every == 1 else f"{found['gops']} GOPs, 1 in {every}"


def _stretches(
    kind: str, label: str, detector: str, longest_allowed: float, action: str
) -> StageCheck:
    """The check of one kind of stretch the source analysis found (black, freeze, silence)."""

    def judge(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
        report = facts.get(SOURCE_QC)
        if not report or report.get(kind) is None:
            return None
        if kind == "silence" and not report.get("audio_stream"):
            return CheckOutcome(True, "the source has no audio")
        spans = [(float(i["start_s"]), float(i["end_s"])) for i in report[kind]]
        longest = max((e - s for s, e in spans), default=0.0)
        listed = ", ".join(f"{s:.2f}-{e:.2f} s" for s, e in spans[:5]) + (
            " ..." if len(spans) > 5 else ""
        )
        return CheckOutcome(
            passed=longest <= longest_allowed,
            description=(
                f"{label} at {listed} (longest {longest:.2f} s; allowed {longest_allowed:g} s)"
                if spans
                else f"no {label}"
            ),
            metadata={"intervals": [[s, e] for s, e in spans], "longest_s": round(longest, 3)},
            reason=f"source.{kind}",
        )

    return StageCheck(
        kind,
        f"No {label} longer than {longest_allowed:g} s ({detector}).",
        judge,
        blocking=action == "block",
    )


def source_checks(spec: PipelineSpec) -> tuple[StageCheck, ...]:
    cfg = spec.qc.source
    target, peak = cfg.loudness_target

    def loudness(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
        report = facts.get(SOURCE_QC)
        if report and not report.get("audio_stream"):
            return CheckOutcome(True, "the source has no audio")
        found = report.get("loudness") if report else None
        if not found:
            return None
        integrated, true_peak = found["integrated_lufs"], found["true_peak_dbtp"]
        off = integrated - target
        problems = (
            [f"integrated {integrated:.1f} LUFS is {off:+.1f} LU from {target:g}"]
            if abs(off) > cfg.loudness_tolerance_lu
            else []
        ) + ([f"true peak {true_peak:.1f} dBTP above {peak:g}"] if true_peak > peak else [])
        return CheckOutcome(
            passed=not problems,
            description="; ".join(problems)
            or f"integrated {integrated:.1f} LUFS, range {found['range_lu']:.1f} LU, true peak {true_peak:.1f} dBTP",
            metadata={
                **found,
                "target_lufs": target,
                "max_true_peak_dbtp": peak,
                "standard": cfg.loudness_standard,
            },
            reason="source.loudness_off_target"
            if abs(off) > cfg.loudness_tolerance_lu
            else "source.true_peak_too_high",
        )

    def interlace(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
        report = facts.get(SOURCE_QC)
        found = report.get("interlace") if report else None
        if not found:
            return None
        return CheckOutcome(
            passed=not found["interlaced"],
            description=f"interlaced ({found['field_order']}): TFF {found['tff']}, BFF {found['bff']}, progressive {found['progressive']} frames"
            if found["interlaced"]
            else f"progressive ({found['progressive']} of {found['tff'] + found['bff'] + found['progressive'] + found['undetermined']} frames)",
            metadata=dict(found),
            reason="source.interlaced",
        )

    if not cfg.enabled:
        return ()
    return (
        _stretches("black", "black video", "blackdetect", cfg.max_black_s, cfg.black),
        _stretches("freeze", "frozen video", "freezedetect", cfg.max_freeze_s, cfg.freeze),
        _stretches("silence", "silence", "silencedetect", cfg.max_silence_s, cfg.silence),
        StageCheck(
            "loudness",
            f"Integrated loudness within {cfg.loudness_tolerance_lu:g} LU of {target:g} LUFS and true peak at most {peak:g} dBTP ({cfg.loudness_standard}, ebur128).",
            loudness,
            blocking=cfg.loudness == "block",
        ),
        StageCheck(
            "interlacing",
            "The source is progressive (idet).",
            interlace,
            blocking=cfg.interlaced == "block",
        ),
    )


def package_checks(spec: PipelineSpec) -> tuple[StageCheck, ...]:
    cfg = spec.qc.package
    if not cfg.enabled:
        return ()
    blocking = cfg.action == "block"

    def part(name: str, reason: str, what: str) -> Any:
        def judge(facts: Mapping[str, Any]) -> Optional[CheckOutcome]:
            report = facts.get(PACKAGE_QC)
            if not report:
                return None
            problems = list(report[name])
            return CheckOutcome(
                passed=not problems,
                description="; ".join(problems[:5])
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                if problems
                else what,
                metadata={
                    "problems": problems,
                    **{k: v for k, v in report.items() if not k.endswith("problems")},
                },
                reason=reason,
            )

        return judge

    return (
        StageCheck(
            "references",
            "Every file the playlists and the MPD name is in the package.",
            part("references_problems", "package.missing_reference", "every reference present"),
            blocking=blocking,
        ),
        StageCheck(
            "target_duration",
            f"No segment longer than the target duration ({spec.hls.segment_s} s).",
            part(
                "target_duration_problems",
                "package.segment_too_long",
                "every segment within the target duration",
            ),
            blocking=blocking,
        ),
        StageCheck(
            "segment_alignment",
            "Every variant's segments start at the same times, so players switch cleanly.",
            part(
                "alignment_problems",
                "package.segments_misaligned",
                "segments aligned across variants",
            ),
            blocking=blocking,
        ),
    )
