"""What every stage function works with, without Dagster: the FFmpeg runner of a stage
(`Tools`), what a stage returns (`StageOutput`) and the refusal of bad input (`MediaRejected`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Optional, Sequence

from ..media.progress import ProgressBoard
from ..media.runner import RunLimits, RunResult, run_ffmpeg


class MediaRejected(ValueError):
    """The input is not something this pipeline can process; retrying will not help."""

    def __init__(
        self, message: str, *, reason: str = "input.rejected", failure_class: str = "permanent"
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.failure_class = failure_class


@dataclass
class Tools:
    """How to run FFmpeg for one stage."""

    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    threads: int = 1  # per encoder; 1 = reproducible x264 bytes, 0 = let FFmpeg choose
    lanes: int = 1  # FFmpeg processes a shared encode may run at once
    limits: RunLimits = field(default_factory=RunLimits)
    build: str = ""  # the FFmpeg build hash, when known: part of what names a reusable piece
    progress: Optional[ProgressBoard] = None  # where each output's progress is said
    runs: list[RunResult] = field(default_factory=list)  # every run so far, for provenance

    def expect(self, outputs: Iterable[str], total_s: float) -> None:
        """Progress of `outputs` is out of `total_s` each (for outputs made in several runs)."""
        if self.progress is not None:
            self.progress.expect(outputs, total_s)

    def run(
        self,
        label: str,
        args: list[str],
        *,
        duration_s: Optional[float] = None,
        outputs: Sequence[str] = (),
        cwd: Optional[Path] = None,
        cancel: Optional[threading.Event] = None,
    ) -> RunResult:
        """Run FFmpeg; its progress counts towards each of `outputs` (default: one named `label`)."""
        callback = (
            self.progress.run(outputs or [label], duration_s) if self.progress is not None else None
        )
        result = run_ffmpeg(
            args,
            ffmpeg=self.ffmpeg,
            cwd=cwd,
            duration_s=duration_s,
            limits=self.limits,
            on_progress=callback,
            cancel=cancel,
        )
        self.runs.append(result)
        return result

    def picture(self, label: str, args: list[str], out: Path) -> Path:
        """A display-only FFmpeg run writing the preview picture `out` (see `media.stills`). It is
        not added to `runs`: a preview is no part of the artifact, so its argv (naming a scratch
        file gone after the attempt) stays out of the artifact's provenance and its cost out of
        the FFmpeg time. It fails like any FFmpeg run of the stage."""
        run_ffmpeg(args, ffmpeg=self.ffmpeg, limits=self.limits)
        if not out.is_file():
            raise MediaRejected(f"{label}: FFmpeg wrote no picture (no frame decoded at that time)")
        return out


@dataclass
class StageOutput:
    """What a stage made: the file or directory `path` (inside its scratch directory), facts for
    the metadata (and provenance), the FFmpeg runs that made it (provenance), hashes already
    computed, and what the UI shows of it (`display`: metadata key -> a small JPEG written beside
    `path`, not inside it, stored as a preview and shown as a picture; or a Dagster metadata value,
    e.g. a table, shown as it is). Display entries are no part of the artifact or its provenance."""

    path: Path
    facts: dict[str, object] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    hashed: dict[Path, str] = field(default_factory=dict)  # sha256 of files hashed while written
    display: dict[str, object] = field(default_factory=dict)


IN_MENUS = "{} ({})"  # `unique_name`'s numbering of a name players show: `English (2)`


def unique_name(wanted: str, taken: Collection[str], numbered: str = "{}-{}") -> str:
    """`wanted`, or if taken `numbered` with 2, 3, ...: `en`, `en-2`; `English`, `English (2)`."""
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = numbered.format(wanted, n)
    return name
