"""Asset checks of stage outputs: what a stage measured, judged against the spec, as Dagster's own
asset checks (`AssetCheckSpec`, `AssetCheckResult`), shown in each asset's Checks tab and in the run.

A stage declares its checks (`StageCheck`) and puts its measurements in the output's facts; each
check judges those facts. The measurement is part of the artifact (its metadata and provenance),
the verdict is not: a reused output is judged again against today's thresholds, without FFmpeg.

A failing *blocking* check refuses the output: the stage fails with the check's reason (classified,
retried never, announced as `rendition.failed` for a rendition, its partial files removed), just as
a failed encode does. Dagster's own `blocking` stops the whole step after it ends, which in a
multi-asset would take every sibling rendition down with the one that failed; so the stage refuses
the one output itself and records that check's evaluation as not blocking the step, which Dagster
then leaves running (see `ChecksFailed.evaluations`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    PartitionsDefinition,
    PreviewWarning,
)


@dataclass(frozen=True)
class CheckOutcome:
    """A check's verdict on one output."""

    passed: bool
    description: str  # for humans: the figure and the floor, e.g. "VMAF 41.2 < 50 (vmaf_min)"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""  # a failure's stable dotted code, e.g. "quality.vmaf_below_threshold"


NOTHING_TO_JUDGE = CheckOutcome(True, "nothing to judge in this output")

# The output's facts (its metadata values: what the stage measured) -> the verdict; None when the
# facts hold no measurement for it (e.g. a source without audio has no loudness to judge): the
# check then passes, saying so (Dagster expects a result of every check of a materialization).
Judge = Callable[[Mapping[str, Any]], Optional[CheckOutcome]]


@dataclass(frozen=True)
class StageCheck:
    """An asset check a stage evaluates on each output it makes or reuses."""

    name: str
    description: str
    judge: Judge
    blocking: bool = False  # a failure refuses the output (the stage fails)
    # Dagster's `blocking` (its downstream assets wait for the check and do not run after a
    # failure); default: `blocking`. False where a refused output must not stop what follows:
    # a rendition when the package takes a partial ladder (hls.min_renditions), whose packaging
    # step also could not take the wait (Dagster cannot put it inside a fan-in).
    stops_downstream: Optional[bool] = None

    def spec(self, key: AssetKey, partitions_def: Optional[PartitionsDefinition]) -> AssetCheckSpec:
        # a check per video, as the asset: Dagster 1.13 marks partitioned checks preview and
        # warns at every definition, which says nothing to a user of this API
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PreviewWarning)
            return AssetCheckSpec(
                self.name,
                asset=key,
                description=self.description,
                blocking=self.blocking if self.stops_downstream is None else self.stops_downstream,
                partitions_def=partitions_def,
            )


@dataclass(frozen=True)
class Verdict:
    check: StageCheck
    outcome: CheckOutcome

    @property
    def refuses(self) -> bool:
        return self.check.blocking and not self.outcome.passed


class ChecksFailed(Exception):
    """A blocking check refused the output; the first refusal names the failure."""

    failure_class = "permanent"

    def __init__(self, key: AssetKey, partition: str, verdicts: Sequence[Verdict]) -> None:
        refused = [v for v in verdicts if v.refuses]
        self.reason = refused[0].outcome.reason or f"check.{refused[0].check.name}_failed"
        self.key, self.partition, self.verdicts = key, partition, list(verdicts)
        super().__init__("; ".join(v.outcome.description for v in refused))

    def evaluations(self) -> list[AssetCheckEvaluation]:
        """The verdicts on the refused output, for no materialization (there is none); a check
        with nothing to judge in it (not measured, as it was refused) has none."""
        return [
            AssetCheckEvaluation(
                asset_key=self.key,
                check_name=v.check.name,
                passed=v.outcome.passed,
                metadata=dict(v.outcome.metadata),
                severity=_severity(v.check),
                description=v.outcome.description,
                blocking=False,  # refused here, for this output alone (see the module docstring)
                partition=self.partition,
            )
            for v in self.verdicts
            if v.outcome is not NOTHING_TO_JUDGE
        ]


def _severity(check: StageCheck) -> AssetCheckSeverity:
    return AssetCheckSeverity.ERROR if check.blocking else AssetCheckSeverity.WARN


def judge(checks: Sequence[StageCheck], facts: Mapping[str, Any]) -> list[Verdict]:
    return [Verdict(c, c.judge(facts) or NOTHING_TO_JUDGE) for c in checks]


def results(key: AssetKey, verdicts: Sequence[Verdict]) -> list[AssetCheckResult]:
    """The verdicts on an output that was materialized (none refuses it)."""
    return [
        AssetCheckResult(
            asset_key=key,
            check_name=v.check.name,
            passed=v.outcome.passed,
            metadata=dict(v.outcome.metadata),
            severity=_severity(v.check),
            description=v.outcome.description,
        )
        for v in verdicts
    ]
