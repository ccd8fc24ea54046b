"""Source QC: black, frozen and silent stretches, loudness (EBU R 128), interlacing, and the first
pass of a two-pass loudness normalization, all from ONE decode of the source: a run of its own
(`source_qc_args`), or branches of an encode's filter graph on the decode it makes anyway
(`Analysis.streams`); an encode cut in time chunks analyses each chunk's video and its audio
piece's audio, read back as one (`read_parts`).

Every detector writes what it finds into a file of `out_dir` (FFmpeg's `metadata`/`ametadata`
filters in print mode, which write a frame's metadata only when it has some), so nothing is read
from FFmpeg's log, whose tail is all `run_ffmpeg` keeps. The one exception is loudnorm's first
pass: FFmpeg 5.1's loudnorm has no file output, it prints its JSON to the log as the filtergraph
is freed, after the final statistics; that block (12 lines, with at most ~20 lines of other
filters' summaries after it) is read from `RunResult.stderr_tail`.

Times are seconds from the stream's first frame (`setpts=PTS-STARTPTS` on the video and
`asetpts=PTS-STARTPTS` on the audio), so a source whose first timestamp is not 0 still reports
black at 5.0 s as 5.0 s.

Cost: the video is downscaled to `analysis_width` with the cheapest scaler (`fast_bilinear`;
swscale's default bicubic cost more than blackdetect and freezedetect together at 1080p) before
blackdetect and freezedetect, which look at averages and so lose nothing; idet needs the real
lines, so it runs at full resolution but only on the first `idet_frames` frames (a `trim` on its
own branch of a `split`: after them that branch ends and costs nothing). The audio goes through
silencedetect, then ebur128 (with true peak) and, when asked, loudnorm's measuring pass (the
costliest audio part: it works at 192 kHz). On a 20 s 1920x1080 30 fps H.264 clip (600 frames,
so idet saw all of them) a plain decode took 1.19 s of CPU, the QC 1.88 s, with loudnorm 2.40 s.
The files: ebur128's running values take ~10 MB per hour of audio (only their last 8 KB are
read), idet's ~0.5 KB a frame for its frames, the video detectors' ~60 bytes a frame (every frame
is written, so that the frames analysed are counted), silencedetect's a few lines per finding.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import ffmpeg
from pydantic import BaseModel, ConfigDict, computed_field

from .commands import Loudnorm, LoudnormTarget, _input, _output_name
from .probe import MediaInfo
from .runner import RunResult, run_ffmpeg

VIDEO_FILE = "video.txt"  # every frame analysed, with blackdetect's and freezedetect's findings
ANALYSED = "lavfi.mpegflow.analysed"  # the key that has every frame written into VIDEO_FILE
IDET_FILE = "idet.txt"  # idet's running counts, on the first frames at full resolution
SILENCE_FILE = "silence.txt"  # silencedetect
LOUDNESS_FILE = "ebur128.txt"  # ebur128's running values, every 100 ms of audio
_FILES = (VIDEO_FILE, IDET_FILE, SILENCE_FILE, LOUDNESS_FILE)


class SourceQcError(RuntimeError):
    """The source cannot be checked (missing, nothing to analyse) or the run left no findings."""


@dataclass(frozen=True)
class Detectors:
    """The detectors' settings.

    black: a picture is black when at least `black_picture_threshold` (blackdetect's pic_th) of
    its pixels are darker than `black_pixel_threshold` (pix_th, a fraction of the luma range),
    and a black stretch counts from `black_min_s` (d) on: 0.5 s, long enough to skip a fade's
    few black frames. freeze: frames differing by less than `freeze_noise_db` (freezedetect's n,
    -60 dB: compression noise of a still) for `freeze_min_s` (d, 2 s). silence: audio below
    `silence_noise_db` (silencedetect's n, -50 dB) for `silence_min_s` (d, 2 s). interlacing:
    idet on the first `idet_frames` frames (600: 20 s at 30 fps, 12 s at 50). `analysis_width`:
    the width black and freeze detection see (256 pixels, the height keeps the aspect)."""

    black_min_s: float = 0.5
    black_pixel_threshold: float = 0.10
    black_picture_threshold: float = 0.98
    freeze_noise_db: float = -60.0
    freeze_min_s: float = 2.0
    silence_noise_db: float = -50.0
    silence_min_s: float = 2.0
    idet_frames: int = 600
    analysis_width: int = 256


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Loudness(BaseModel):
    """EBU R 128 of the whole stream (ebur128's running values at its last 100 ms)."""

    model_config = ConfigDict(frozen=True)

    integrated_lufs: float
    range_lu: float
    true_peak_dbtp: float  # the highest of the channels' true peaks


class Interlace(BaseModel):
    """idet's single-frame decisions over the frames it saw. Its multi-frame counts are not
    used: they carry the last decision over undetermined frames (a black stretch after combed
    frames counts as interlaced)."""

    model_config = ConfigDict(frozen=True)

    tff: int
    bff: int
    progressive: int
    undetermined: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def field_order(self) -> str:
        """ "tff" or "bff" when that field order wins clearly: over the progressive frames, and
        by four to one over the other order (truly interlaced video is combed one way; FFmpeg's
        testsrc2 and other progressive pictures with fine horizontal detail fool idet about as
        often in both orders), else "progressive"."""
        for order, mine, other in (("tff", self.tff, self.bff), ("bff", self.bff, self.tff)):
            if mine > self.progressive and mine >= 4 * other and mine > 0:
                return order
        return "progressive"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def interlaced(self) -> bool:
        return self.field_order != "progressive"


class LoudnormMeasurement(BaseModel):
    """loudnorm's first pass, what its second pass takes as measured_* and offset."""

    model_config = ConfigDict(frozen=True)

    input_i: float
    input_tp: float
    input_lra: float
    input_thresh: float
    target_offset: float


class SourceReport(BaseModel):
    black: list[Interval]
    freeze: list[Interval]
    silence: list[Interval]
    loudness: Optional[Loudness]
    interlace: Optional[Interlace]
    loudnorm: Optional[LoudnormMeasurement]  # of `loudnorm_target`, for `audio_stream`
    frames_analysed: int  # video frames through black and freeze detection
    duration_s: float
    audio_stream: Optional[str] = None  # the stream silence and loudness were measured on
    loudnorm_target: Optional[LoudnormTarget] = None


def detector_streams(
    video,
    audio,
    out_dir: Path,
    *,
    settings: Detectors = Detectors(),
    loudnorm: Optional[LoudnormTarget] = None,
    idet: bool = True,
    skip_s: float = 0.0,
) -> list:
    """The detectors as ffmpeg-python streams, for one null output: on `video` (the source's
    first video stream as decoded, or a branch of it; None: none) and `audio` (its audio stream
    to check; None: none), each writing what it finds into `out_dir` (by absolute `file:` paths,
    escaped by ffmpeg-python, so it runs from any working directory); with `loudnorm`, loudnorm's
    measuring pass for that target too (read from the log, see the module's docstring). An
    encode adds them to its own decode of the source (`commands.encode_ladder_args`); a time
    chunk's decode skips its lead first (`skip_s`) and only the first chunk runs `idet`."""

    def file(name: str) -> str:
        return _output_name(Path(out_dir) / name)

    streams = []
    if video is not None:
        if skip_s:
            video = video.filter("trim", start=f"{skip_s:.6f}")
        v = video.filter("setpts", "PTS-STARTPTS").filter_multi_output("split", 1 + idet)
        streams.append(
            v.stream(0)
            .filter("scale", settings.analysis_width, -2, flags="fast_bilinear")
            .filter(
                "blackdetect",
                d=settings.black_min_s,
                pix_th=settings.black_pixel_threshold,
                pic_th=settings.black_picture_threshold,
            )
            .filter("freezedetect", n=f"{settings.freeze_noise_db:g}dB", d=settings.freeze_min_s)
            # print writes only frames with metadata: this counts every frame the detectors saw
            # (an encode's log tail, ending with its encoders' summaries, cannot be relied on to)
            .filter("metadata", mode="add", key=ANALYSED, value="1")
            .filter("metadata", mode="print", file=file(VIDEO_FILE))
        )
        if idet:
            streams.append(
                v.stream(1)
                .filter("trim", end_frame=settings.idet_frames)
                .filter("idet")
                .filter("metadata", mode="print", file=file(IDET_FILE))
            )
    if audio is not None:
        a = (
            audio.filter("asetpts", "PTS-STARTPTS")
            .filter("silencedetect", n=f"{settings.silence_noise_db:g}dB", d=settings.silence_min_s)
            .filter("ametadata", mode="print", file=file(SILENCE_FILE))
        )
        if loudnorm is not None:
            split = a.filter_multi_output("asplit", 2)
            a = split.stream(0)
            streams.append(
                split.stream(1).filter(
                    "loudnorm",
                    I=loudnorm.integrated_lufs,
                    TP=loudnorm.true_peak_dbtp,
                    LRA=loudnorm.range_lu,
                    print_format="json",
                )
            )
        streams.append(
            a.filter("ebur128", metadata=1, peak="true").filter(
                "ametadata", mode="print", file=file(LOUDNESS_FILE)
            )
        )
    return streams


def source_qc_args(
    src: Path,
    out_dir: Path,
    *,
    video: bool,
    audio_stream: Optional[str],
    settings: Detectors = Detectors(),
    loudnorm: Optional[LoudnormTarget] = None,
) -> list[str]:
    """One FFmpeg run, one decode of `src`, every detector (`detector_streams`) writing into
    `out_dir`, its outputs to the null muxer. `video`: check the first video stream;
    `audio_stream` ("a:0"...): the audio stream to check, None for none; `loudnorm`: also
    measure for a two-pass loudnorm to that target."""
    src = Path(src)
    if not src.is_file():
        raise SourceQcError(f"source {src} does not exist or is not a file")
    if not video and audio_stream is None:
        raise SourceQcError(f"source {src.name}: no video and no audio stream to check")
    inp = _input(src)
    streams = detector_streams(
        inp["v:0"] if video else None,
        inp[audio_stream] if audio_stream is not None else None,
        out_dir,
        settings=settings,
        loudnorm=loudnorm,
    )
    return ffmpeg.output(*streams, "-", f="null").get_args()


Frame = tuple[float, dict[str, str]]  # pts_time, the frame's metadata


def _frames(path: Path, *, tail_bytes: Optional[int] = None) -> list[Frame]:
    """The frames of a `metadata=mode=print` file; with `tail_bytes` only those in its last
    bytes (the running values of ebur128 and idet: the last frame is the summary)."""
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        if tail_bytes is not None:
            fh.seek(max(0, path.stat().st_size - tail_bytes))
        text = fh.read().decode("utf-8", "replace")
    frames: list[Frame] = []
    for line in text.splitlines():
        if line.startswith("frame:"):
            found = re.search(r"pts_time:(\S+)", line)
            try:
                t = float(found.group(1)) if found else math.nan
            except ValueError:
                t = math.nan
            frames.append((t, {}))
        elif frames and "=" in line:
            key, _, value = line.partition("=")
            frames[-1][1][key] = value
    return frames


def _intervals(
    frames: list[Frame], start: str, end: str, *, duration_s: float, min_s: float = 0.0
) -> list[Interval]:
    """Pairs of `start` and `end` keys' values (seconds) in order; one still open at the end of
    the file closes at `duration_s`. Shorter than `min_s` are dropped (blackdetect marks every
    black frame's start, however short the stretch: its `d` only decides what it logs)."""
    found: list[Interval] = []
    opened: Optional[float] = None
    for _, meta in frames:
        if end in meta and opened is not None:
            found.append(Interval(start_s=opened, end_s=float(meta[end])))
            opened = None
        if start in meta:
            opened = float(meta[start])
    if opened is not None:
        found.append(Interval(start_s=opened, end_s=max(opened, duration_s)))
    return [i for i in found if i.duration_s >= min_s]


def _loudness(frames: list[Frame]) -> Optional[Loudness]:
    last = next((m for _, m in reversed(frames) if "lavfi.r128.I" in m), None)
    if last is None:
        return None
    peaks = [float(v) for k, v in last.items() if k.startswith("lavfi.r128.true_peaks_ch")]
    peak = max(peaks) if peaks else float(last.get("lavfi.r128.true_peak", "0"))
    return Loudness(
        integrated_lufs=float(last["lavfi.r128.I"]),
        range_lu=float(last["lavfi.r128.LRA"]),
        # ebur128 gives the peak as a linear amplitude; a silent stream's floor is -140 dBTP
        true_peak_dbtp=round(20 * math.log10(max(peak, 1e-7)), 2),
    )


def _interlace(frames: list[Frame]) -> Optional[Interlace]:
    last = next((m for _, m in reversed(frames) if "lavfi.idet.single.tff" in m), None)
    if last is None:
        return None
    count = {
        k: int(float(last[f"lavfi.idet.single.{k}"]))
        for k in ("tff", "bff", "progressive", "undetermined")
    }
    return Interlace(**count)


_LOUDNORM_KEYS = ("input_i", "input_tp", "input_lra", "input_thresh", "target_offset")


def parse_loudnorm(stderr_tail: str) -> Optional[LoudnormMeasurement]:
    """The last JSON block loudnorm (print_format=json) printed in the log, if it is there."""
    blocks = re.findall(r"\{[^{}]*\"input_i\"[^{}]*\}", stderr_tail)
    if not blocks:
        return None
    data = json.loads(blocks[-1])
    return LoudnormMeasurement(**{k: float(data[k]) for k in _LOUDNORM_KEYS})


@dataclass(frozen=True)
class Part:
    """The findings of one run over a part of the source: where they are, where the part starts
    in the source and how long it is, and the run's log tail (loudnorm's measurement)."""

    out_dir: Path
    start_s: float
    duration_s: float
    stderr_tail: str = ""


def _joined(parts: list[tuple[float, list[Interval]]], min_s: float) -> list[Interval]:
    """The parts' stretches in source time; one running up to a part's end and the next part's
    starting there are one stretch (a chunk's closes at its end, see `_intervals`)."""
    found: list[Interval] = []
    for start, intervals in parts:
        for i in intervals:
            i = Interval(start_s=start + i.start_s, end_s=start + i.end_s)
            if found and i.start_s - found[-1].end_s <= 1e-3:
                found[-1] = Interval(start_s=found[-1].start_s, end_s=i.end_s)
            else:
                found.append(i)
    return [i for i in found if i.duration_s >= min_s]


def read_parts(
    video: list[Part],
    audio: Optional[Part],
    *,
    duration_s: float,
    settings: Detectors = Detectors(),
    audio_stream: Optional[str] = None,
    loudnorm: Optional[LoudnormTarget] = None,
) -> SourceReport:
    """The findings of the runs that analysed the source: its video in `video`'s parts, in order
    (idet's in the first), its audio in `audio`'s (see `read_source_qc`)."""
    runs = [*video, *([audio] if audio is not None else [])]
    if not any((p.out_dir / n).exists() for p in runs for n in _FILES) and not any(
        p.stderr_tail for p in runs
    ):
        raise SourceQcError("no source QC findings: did the run happen?")
    tail = audio.stderr_tail if audio is not None else ""
    measured = parse_loudnorm(tail) if loudnorm is not None else None
    if loudnorm is not None and measured is None:
        raise SourceQcError("loudnorm's first-pass measurement is not in the end of FFmpeg's log")

    def stretches(parts: list[Part], file: str, start: str, end: str, min_s: float = 0.0):
        return _joined(
            [
                (
                    p.start_s,
                    _intervals(_frames(p.out_dir / file), start, end, duration_s=p.duration_s),
                )
                for p in parts
            ],
            min_s,
        )

    audio_parts = [audio] if audio is not None else []
    return SourceReport(
        black=stretches(
            video, VIDEO_FILE, "lavfi.black_start", "lavfi.black_end", settings.black_min_s
        ),
        freeze=stretches(
            video, VIDEO_FILE, "lavfi.freezedetect.freeze_start", "lavfi.freezedetect.freeze_end"
        ),
        silence=stretches(audio_parts, SILENCE_FILE, "lavfi.silence_start", "lavfi.silence_end"),
        loudness=_loudness(_frames(audio.out_dir / LOUDNESS_FILE, tail_bytes=8192))
        if audio is not None
        else None,
        interlace=_interlace(_frames(video[0].out_dir / IDET_FILE, tail_bytes=8192))
        if video
        else None,
        loudnorm=measured,
        frames_analysed=sum(len(_frames(p.out_dir / VIDEO_FILE)) for p in video),
        duration_s=duration_s,
        audio_stream=audio_stream,
        loudnorm_target=loudnorm,
    )


def read_source_qc(
    out_dir: Path,
    *,
    duration_s: float,
    stderr_tail: str = "",
    settings: Detectors = Detectors(),
    audio_stream: Optional[str] = None,
    loudnorm: Optional[LoudnormTarget] = None,
) -> SourceReport:
    """The findings `source_qc_args`'s run left in `out_dir` (run with the same `settings`:
    blackdetect's minimum duration is applied here). `duration_s` (the probe's) closes the
    stretches still open when the source ends; `stderr_tail` gives loudnorm's measurement (when
    `loudnorm` was asked for it is required: SourceQcError if the log does not have it)."""
    whole = Part(Path(out_dir), 0.0, duration_s, stderr_tail)
    return read_parts(
        [whole],
        whole,
        duration_s=duration_s,
        settings=settings,
        audio_stream=audio_stream,
        loudnorm=loudnorm,
    )


@dataclass(frozen=True)
class Analysis:
    """One analysis of a source (made by `analysis_of`): its first video stream (if `video`) and
    `audio_stream` (None: none) through the detectors, into `out_dir`."""

    out_dir: Path
    duration_s: float
    video: bool
    audio_stream: Optional[str]
    settings: Detectors = Detectors()
    loudnorm: Optional[LoudnormTarget] = None
    idet: bool = True
    skip_s: float = 0.0  # of the decoded video (a time chunk's lead)

    def streams(self, video, inp) -> list:
        """The detectors (`detector_streams`) on `video` (the decoded first video stream of
        `inp`, the source's ffmpeg-python input, or a branch of it) and on `inp`'s audio."""
        return detector_streams(
            video if self.video else None,
            inp[self.audio_stream] if self.audio_stream is not None else None,
            self.out_dir,
            settings=self.settings,
            loudnorm=self.loudnorm,
            idet=self.idet,
            skip_s=self.skip_s,
        )

    def args(self, src: Path) -> list[str]:
        """The run of this analysis alone (`source_qc_args`) of the whole source."""
        if self.skip_s or not self.idet:
            raise ValueError("a run of its own analyses the whole source")
        return source_qc_args(
            src,
            self.out_dir,
            video=self.video,
            audio_stream=self.audio_stream,
            settings=self.settings,
            loudnorm=self.loudnorm,
        )

    def read(self, result: RunResult) -> SourceReport:
        """The findings of the run that made them (`read_source_qc`)."""
        return read_source_qc(
            self.out_dir,
            duration_s=self.duration_s,
            stderr_tail=result.stderr_tail,
            settings=self.settings,
            audio_stream=self.audio_stream,
            loudnorm=self.loudnorm,
        )


def analysis_of(
    src: Path,
    out_dir: Path,
    info: MediaInfo,
    *,
    settings: Detectors = Detectors(),
    loudnorm: Optional[LoudnormTarget] = None,
    video: bool = True,
    audio: bool = True,
    part: Optional[tuple[float, float]] = None,
) -> Analysis:
    """The analysis of the source's first video stream (unless not `video`) and default audio
    stream (unless not `audio`), with `out_dir` made and cleared of an earlier run's findings.
    `part`: (skip_s, duration_s) of a time chunk's decode (its video only, `idet` only for the
    chunk at the start, skip_s 0)."""
    audio_stream = f"a:{info.default_audio}" if audio and info.audio is not None else None
    video = video and info.video is not None
    if not video and audio_stream is None:
        raise SourceQcError(f"source {Path(src).name}: no video and no audio stream to check")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _FILES:  # a finding of an earlier run must not be read as this one's
        (out_dir / name).unlink(missing_ok=True)
    skip_s, duration_s = part if part is not None else (0.0, info.duration)
    return Analysis(
        out_dir,
        duration_s,
        video,
        audio_stream,
        settings,
        loudnorm if audio_stream is not None else None,  # nothing to normalize
        idet=part is None or skip_s == 0,
        skip_s=skip_s,
    )


def run_source_qc(
    src: Path,
    out_dir: Path,
    info: MediaInfo,
    *,
    settings: Detectors = Detectors(),
    loudnorm: Optional[LoudnormTarget] = None,
    ffmpeg_bin: str = "ffmpeg",
    run: Optional[Callable[[list[str], float], RunResult]] = None,
    video: bool = True,
) -> tuple[SourceReport, RunResult]:
    """Probe facts in, report out: the source's first video stream (unless not `video`) and
    default audio stream checked in one run of their own (`analysis_of`), its findings read.
    `run(args, duration_s)` runs FFmpeg (default: `run_ffmpeg` of `ffmpeg_bin`), e.g. a stage's
    runner, for its progress and provenance."""
    analysis = analysis_of(src, out_dir, info, settings=settings, loudnorm=loudnorm, video=video)
    args = analysis.args(src)
    result = (
        run(args, info.duration)
        if run is not None
        else run_ffmpeg(args, ffmpeg=ffmpeg_bin, duration_s=info.duration)
    )
    return analysis.read(result), result


def loudnorm_for(report: SourceReport, target: LoudnormTarget) -> Optional[Loudnorm]:
    """The second pass's settings for `target` from the report's measurement (None without
    one). The measurement was made for the report's own target: loudnorm's `target_offset`
    depends on it, so another target raises ValueError."""
    if report.loudnorm is None:
        return None
    if report.loudnorm_target is not None and report.loudnorm_target != target:
        raise ValueError(
            f"the source was measured for {report.loudnorm_target}, not {target}: measure again"
        )
    m = report.loudnorm
    return Loudnorm(
        target=target,
        measured_i=m.input_i,
        measured_tp=m.input_tp,
        measured_lra=m.input_lra,
        measured_thresh=m.input_thresh,
        offset=m.target_offset,
    )
