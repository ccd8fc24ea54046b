"""Source QC: black, frozen and silent stretches, loudness (EBU R 128 / ATSC A/85 with its true
peak) and interlacing of the stored source, from one decode, judged by the source checks (`qc`);
and loudnorm's first pass when the spec normalizes loudness (`audio.loudnorm`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from dagster import AssetKey, AssetsDefinition

from .. import qc
from ..media.commands import Loudnorm, LoudnormTarget
from ..media.source_qc import Detectors, SourceReport, loudnorm_for, run_source_qc
from ..spec import PipelineSpec
from ..stage import StageContext, StepLayout, pipeline_key, video_asset
from .ingest import load_probe, source_file
from .toolkit import StageOutput

REPORT = "source_qc.json"
DETECTORS = Detectors()


def loudnorm_target(spec: PipelineSpec) -> Optional[LoudnormTarget]:
    cfg = spec.audio.loudnorm
    if cfg is None:
        return None
    return LoudnormTarget(
        integrated_lufs=cfg.target_lufs, true_peak_dbtp=cfg.true_peak_dbtp, range_lu=cfg.range_lu
    )


def analyse_source(
    ingest_dir: Path, probe: Path, spec: PipelineSpec, context: StageContext
) -> StageOutput:
    """The source's report (`source_qc.json`), its findings also in the facts the checks judge."""
    info = load_probe(probe)
    report, _ = run_source_qc(
        source_file(ingest_dir),
        context.work / "findings",
        info,
        settings=DETECTORS,
        loudnorm=loudnorm_target(spec),
        run=lambda args, duration_s: context.ffmpeg.run("source qc", args, duration_s=duration_s),
    )
    out = context.work / REPORT
    out.write_text(report.model_dump_json(indent=2))
    return StageOutput(out, {qc.SOURCE_QC: json.loads(report.model_dump_json())})


def load_report(path: Path) -> SourceReport:
    return SourceReport.model_validate_json(Path(path).read_text())


def source_inputs(spec: PipelineSpec) -> dict[str, AssetKey]:
    """The inputs of a stage that encodes the source: ingest and probe, and source_qc when the
    encodes wait for it (`PipelineSpec.encodes_after_source_qc`)."""
    found = {"ingest": pipeline_key(spec, "ingest"), "probe": pipeline_key(spec, "probe")}
    if spec.encodes_after_source_qc:
        found["source_qc"] = pipeline_key(spec, "source_qc")
    return found


def source_loudnorm(spec: PipelineSpec, report: Optional[Path]) -> Optional[Loudnorm]:
    """The second pass of the spec's loudness normalization for this source (None: none)."""
    target = loudnorm_target(spec)
    if target is None or report is None:
        return None
    return loudnorm_for(load_report(report), target)


ORDER = 15  # after ingest, before the encode that may wait for it


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The source_qc asset, when the spec checks sources or normalizes loudness."""
    if not spec.analyses_source:
        return []

    @video_asset(
        key=pipeline_key(spec, "source_qc"),
        ins={"ingest": pipeline_key(spec, "ingest"), "probe": pipeline_key(spec, "probe")},
        # the detectors' settings and the loudnorm target shape the report; the limits judge it
        code_version=version(dataclasses.asdict(DETECTORS), spec.audio.loudnorm),
        retry=spec.failures.retry_for("ingest"),
        checks=qc.source_checks(spec),
        description="Black, frozen and silent stretches, loudness and interlacing of the source "
        "(JSON), judged by its checks.",
    )
    def source_qc(context: StageContext, ingest: Path, probe: Path) -> StageOutput:
        return analyse_source(ingest, probe, spec, context)

    return [source_qc]
