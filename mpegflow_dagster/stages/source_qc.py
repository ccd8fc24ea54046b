"""Source QC: black, frozen and silent stretches, loudness (EBU R 128 / ATSC A/85 with its true
peak) and interlacing of the stored source, judged by the source checks (`qc`); and loudnorm's
first pass when the spec normalizes loudness (`audio.loudnorm`).

The `source_qc` asset is its own step, before the encodes, when they wait for it
(`PipelineSpec.encodes_after_source_qc`: a check that blocks, or loudnorm's measurement). Otherwise
it is an output of the encode step (`source_qc_stage` among the encode's stages): the detectors
ride on the decodes of the source the encode makes anyway (the lightest lane's, or each time
chunk's video and the audio piece's audio), for the cost of the detectors alone instead of a
decode of their own (which for a 1080p source of high bitrate is most of what an encode lane
costs). An analysis asked for alone, or one whose chunks a run that did not analyse made, is a
run of its own (`analyse_alone`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from dagster import AssetKey, AssetsDefinition

from .. import qc
from ..media.commands import Loudnorm, LoudnormTarget
from ..media.probe import MediaInfo
from ..media.runner import RunResult
from ..media.source_qc import Analysis, Detectors, SourceReport, analysis_of, loudnorm_for
from ..spec import PipelineSpec
from ..stage import StageContext, StepLayout, VideoStage, pipeline_key, video_asset
from .ingest import load_probe, source_file
from .toolkit import StageOutput, Tools

REPORT = "source_qc.json"
FINDINGS = "findings"  # the detectors' files, in the output's scratch dir or an encode's piece
DETECTORS = Detectors()


def loudnorm_target(spec: PipelineSpec) -> Optional[LoudnormTarget]:
    cfg = spec.audio.loudnorm
    if cfg is None:
        return None
    return LoudnormTarget(
        integrated_lufs=cfg.target_lufs, true_peak_dbtp=cfg.true_peak_dbtp, range_lu=cfg.range_lu
    )


def source_analysis(ingest_dir: Path, info: MediaInfo, spec: PipelineSpec, work: Path) -> Analysis:
    """The analysis of the stored source into the scratch dir `work` of the source_qc output."""
    return analysis_of(
        source_file(ingest_dir),
        work / FINDINGS,
        info,
        settings=DETECTORS,
        loudnorm=loudnorm_target(spec),
    )


def report_output(report: SourceReport, runs: list[RunResult], work: Path) -> StageOutput:
    """The source's report (`source_qc.json` in `work`) made by `runs`, its findings also in the
    facts the checks judge."""
    out = work / REPORT
    out.write_text(report.model_dump_json(indent=2))
    return StageOutput(out, {qc.SOURCE_QC: json.loads(report.model_dump_json())}, runs)


def analyse_alone(
    ingest_dir: Path, info: MediaInfo, spec: PipelineSpec, work: Path, tools: Tools
) -> StageOutput:
    """The source analysed in a run of its own (one decode)."""
    analysis = source_analysis(ingest_dir, info, spec, work)
    run = tools.run("source qc", analysis.args(source_file(ingest_dir)), duration_s=info.duration)
    return report_output(analysis.read(run), [run], work)


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


def source_qc_stage(spec: PipelineSpec, version: Callable[..., str]) -> VideoStage:
    """The source_qc asset, as its own step or as an output of the encode step."""
    return VideoStage(
        pipeline_key(spec, "source_qc"),
        # the detectors' settings and the loudnorm target shape the report; the limits judge it
        version(dataclasses.asdict(DETECTORS), spec.audio.loudnorm),
        inputs={"ingest": pipeline_key(spec, "ingest"), "probe": pipeline_key(spec, "probe")},
        description="Black, frozen and silent stretches, loudness and interlacing of the source "
        "(JSON), judged by its checks.",
        retry=spec.failures.retry_for("ingest"),
        checks=qc.source_checks(spec),
    )


def rides_on_encode(spec: PipelineSpec) -> bool:
    """Whether the source_qc asset is an output of the encode step (see the module docstring)."""
    return spec.analyses_source and not spec.encodes_after_source_qc


ORDER = 15  # after ingest, before the encode that may wait for it


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The source_qc asset as its own step, when the encodes wait for it."""
    if not spec.analyses_source or rides_on_encode(spec):
        return []
    stage = source_qc_stage(spec, version)

    @video_asset(
        key=stage.key,
        ins=stage.inputs,
        code_version=stage.code_version,
        retry=stage.retry,
        checks=stage.checks,
        description=stage.description,
    )
    def source_qc(context: StageContext, ingest: Path, probe: Path) -> StageOutput:
        return analyse_alone(ingest, load_probe(probe), spec, context.work, context.ffmpeg)

    return [source_qc]
