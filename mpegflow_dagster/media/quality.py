"""Per-rendition quality checks: PSNR, SSIM and (where the build has libvmaf) VMAF of every
rendition against its source, decode health, and keyframes at the forced times.

One run (`compare_args`) decodes the source once and each rendition: its decode is the
rendition's decode-health check too (`decode_errors` on what FFmpeg said). By default not the
whole file is decoded but sampled GOPs (`sample_windows`: one GOP in N, spread evenly), one run
per GOP, each input seeking to it: the renditions' GOPs are closed and cut at the same forced
times, so a GOP decodes on its own, and the cost is about 1/N of a full decode of every
rendition and of the source. Metrics
are written to files in a scratch directory (`read_frames`), never parsed from stderr, of which
the runner keeps only a tail, and pooled over every run (`Scores.pooled`).

The reference of a rendition is the source scaled to the rendition's size with the scaler the
encode used (bicubic, as `commands._rendition_output`): for a yuv420p source that is the very
picture the encoder was given, so the scores measure what encoding lost and nothing of a second,
different scaler. (They say nothing of how the rendition looks upscaled on a large screen.)

Assumptions: a rendition keeps the source's frames (the pipeline never drops, adds or
reorders them), so both sides are paired by frame number: each frame's timestamp is set to its
index over the frame rate (`setpts=N/(FRAME_RATE*TB)`), as the timestamps of a rendition joined from time chunks drift from the
source's by microseconds, enough to pair its last frame with nothing. A tone-mapped (HDR to SDR)
rendition is compared with its source tone-mapped alike (`Compared.tone_map`).
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import ffmpeg
from pydantic import BaseModel, ConfigDict

from .build import resolve_binary
from .commands import TONE_MAP
from .runner import FFmpegFailed, RunResult, run_ffmpeg, spawn_args
from .safety import SAFE_INPUT, SOURCE_FORMATS
from .verify import STDERR_SIGNATURES

# The scaler of the reference: the one `commands._rendition_output` encodes from.
REFERENCE_SCALER = "bicubic"


class QualityError(RuntimeError):
    """A quality check could not be made: no such file, no video stream, no metrics written."""


# --- the binary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsBinary:
    """An FFmpeg build that computes metrics: `psnr` and `ssim` always (checked), `libvmaf` if
    `vmaf`. `version` is the first line of `-version`."""

    path: str
    version: str
    vmaf: bool


def metrics_binary(choice: str, ffmpeg: str = "ffmpeg") -> MetricsBinary:
    """The binary `choice` names: "ffmpeg" (the pipeline's own, `ffmpeg`), "imageio-ffmpeg" (the
    static build the imageio-ffmpeg wheel ships, which has libvmaf but no ffprobe), or a path."""
    if choice == "ffmpeg":
        path = ffmpeg
    elif choice == "imageio-ffmpeg":
        try:
            import imageio_ffmpeg  # lazily: an optional dependency
        except ImportError as exc:
            raise QualityError(
                "the imageio-ffmpeg binary was asked for but the package is not installed: "
                "`pip install imageio-ffmpeg` (its static FFmpeg has libvmaf)"
            ) from exc
        path = imageio_ffmpeg.get_ffmpeg_exe()
    else:
        path = choice
    return _inspect(resolve_binary(path))


@functools.cache
def _inspect(path: str) -> MetricsBinary:
    def listing(flag: str) -> str:
        proc = subprocess.run(
            [path, "-hide_banner", flag], capture_output=True, text=True, timeout=30, check=False
        )
        if proc.returncode != 0:
            raise QualityError(f"`{path} {flag}` failed: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    version = (listing("-version").splitlines() or [""])[0]
    # lines like " TS psnr   VV->V   Calculate the PSNR..." (5.1 has three flag columns, 9.0 two)
    filters = set(re.findall(r"^\s*[A-Z.]{2,3}\s+(\S+)\s+\S+->\S+", listing("-filters"), re.M))
    missing = {"psnr", "ssim", "framestep"} - filters
    if missing:
        raise QualityError(f"{path} ({version}) lacks the filters {sorted(missing)}")
    return MetricsBinary(path=path, version=version, vmaf="libvmaf" in filters)


# --- the joint run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Compared:
    """One rendition to score: its name (the key of `read_scores`), file and picture size."""

    name: str
    path: Path
    width: int
    height: int
    tone_map: bool = False  # an SDR rendition of an HDR source: the reference is tone-mapped alike


@dataclass(frozen=True)
class Window:
    """A stretch compared on both sides: the `frames` frames that follow the keyframe at
    `start_s` (`frame_s`: one frame's duration). Every input seeks a quarter frame past the
    keyframe (`compare_args`): a rendition's seek lands on that keyframe, the source's on its own
    keyframe before it, and both decode from there and drop what is before the seek point, so
    both sides start on the same frame, the one after the keyframe, without either side's exact
    timestamps having to agree (a chunked rendition's drift by microseconds). The keyframe is
    decoded (its errors count) but not scored: one frame of a GOP, the best one."""

    start_s: float
    frames: int
    frame_s: float

    @property
    def seek_s(self) -> float:
        return self.start_s + self.frame_s / 4


def sample_windows(
    packets: Sequence[tuple[float, bool]], every_nth_gop: int, frame_s: float
) -> list[Window]:
    """One GOP in `every_nth_gop` of a rendition whose `video_packets` are `packets`, spread
    evenly over it (centred: neither only the first GOP, often a fade or a title, nor only the
    last), at least one; every GOP for 1. GOPs of a single frame have nothing to score: none
    (an empty list) if every GOP is one frame (an all-intra file: compare the whole of it)."""
    if every_nth_gop < 1:
        raise ValueError(f"every_nth_gop must be >= 1, not {every_nth_gop}")
    keys = [i for i, (_, key) in enumerate(packets) if key]
    gops = [
        Window(packets[k][0], end - k - 1, frame_s)
        for k, end in zip(keys, [*keys[1:], len(packets)], strict=True)
        if end - k > 1
    ]
    if not gops:
        return []
    count = math.ceil(len(gops) / every_nth_gop)
    return [gops[int((k + 0.5) * len(gops) / count)] for k in range(count)]


def _stats_names(i: int) -> tuple[str, str, str]:
    """The plain file names (in `out_dir`) the i-th rendition's metrics are written to."""
    return f"psnr-{i}.log", f"ssim-{i}.log", f"vmaf-{i}.json"


def _open(path: Path, formats: str, window: Optional[Window] = None):
    path = Path(path)
    if not path.is_file():
        raise QualityError(f"no such file: {path}")
    options: dict[str, object] = {**SAFE_INPUT, "format_whitelist": formats}
    if window is not None:
        # -t stops the decode after the window's frames (see `Window`): frame k >= 1 after the
        # keyframe lies k - 1/4 frames past the seek point, kept while under `frames` frames
        options.update(ss=f"{window.seek_s:.6f}", t=f"{window.frames * window.frame_s:.6f}")
    return ffmpeg.input(f"file:{path.resolve()}", **options)


RENDITION_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,mpegts,matroska,webm"


def compare_args(
    source: Path,
    compared: Sequence[Compared],
    out_dir: Path,
    *,
    every: int = 10,
    vmaf: bool,
    vmaf_model: str = "version=vmaf_v0.6.1",
    threads: int = 2,
    window: Optional[Window] = None,
) -> list[str]:
    """The argv (for `run_ffmpeg`) of one run that scores every rendition against `source`, over
    the whole files or over `window` of them.

    The caller must run it with `cwd=out_dir`: the metrics files are named plainly
    (`psnr-0.log`, ...) relative to it, so no path needs escaping inside the filter graph.
    Building the argv creates `out_dir` and removes those files of an earlier run there (a run
    without VMAF would otherwise leave an older VMAF log to be read).

    The source is decoded once, the renditions fully (over the window); of both, every
    `every`-th frame (1: all) is kept. The source is split once per rendition and scaled to its
    size (bicubic: REFERENCE_SCALER); then psnr, ssim and, with `vmaf`, libvmaf (`threads`
    threads, `vmaf_model`) run in a chain, each passing the rendition's frames on, into one null
    output per rendition. Each metric filter ends with the shorter input (`shortest=1`), so a
    rendition that decodes to fewer frames shows as fewer frames compared instead of its last
    frame being repeated. Only video is read (extra audio streams are ignored); the log level is
    `warning` so that the stderr tail holds decode errors, not summaries.

    Sampling keeps frames 0, every, 2 every, ...: with an `every` that divides the keyframe
    interval (10 and 60-frame GOPs) every keyframe is sampled, which are the best frames, so
    PSNR reads higher than over all frames (+0.8 dB at 1080p in bench/quality.py); an `every`
    prime to the GOP (7, 11, 13) samples frame types in their proportion. VMAF's motion feature
    is taken between consecutive *sampled* frames, so its every=10 score is not its every=1
    score either (0.2 to 0.4 points apart there)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, not {every}")
    if not compared:
        raise ValueError("nothing to compare")
    if len({c.name for c in compared}) != len(compared):
        raise ValueError("rendition names must be unique")

    def sampled(stream):
        # paired by frame number (see the docstring), in seconds: the time bases differ
        stream = stream.filter("setpts", "N/(FRAME_RATE*TB)")
        return stream.filter("framestep", every) if every > 1 else stream

    reference = sampled(_open(source, SOURCE_FORMATS, window)["v:0"])
    if len(compared) > 1:
        split = reference.filter_multi_output("split", len(compared))
        references = [split.stream(i) for i in range(len(compared))]
    else:
        references = [reference]
    metrics = 3 if vmaf else 2
    outputs = []
    for i, (c, ref) in enumerate(zip(compared, references, strict=True)):
        psnr_log, ssim_log, vmaf_log = _stats_names(i)
        ref = ref.filter("scale", c.width, c.height, flags=REFERENCE_SCALER)
        if c.tone_map:  # as the encode does it (after scaling), so only encoding is measured
            for filter_name, options in TONE_MAP:
                ref = ref.filter(filter_name, **options)
            ref = ref.filter("format", "yuv420p")  # the SDR rungs' (x264-vod)
        refs = ref.filter_multi_output("split", metrics)
        # libvmaf takes the distorted picture first (FFmpeg 5+); psnr and ssim do not mind
        dist = sampled(_open(c.path, RENDITION_FORMATS, window)["v:0"])
        dist = ffmpeg.filter([dist, refs.stream(0)], "psnr", stats_file=psnr_log, shortest=1)
        dist = ffmpeg.filter([dist, refs.stream(1)], "ssim", stats_file=ssim_log, shortest=1)
        if vmaf:
            dist = ffmpeg.filter(
                [dist, refs.stream(2)],
                "libvmaf",
                model=vmaf_model,
                log_fmt="json",
                log_path=vmaf_log,
                n_threads=threads,
                shortest=1,
            )
        outputs.append(ffmpeg.output(dist, "-", f="null"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (n for i in range(len(compared)) for n in _stats_names(i)):
        (out_dir / name).unlink(missing_ok=True)  # `read_scores` must not read a previous run's
    return ffmpeg.merge_outputs(*outputs).global_args("-loglevel", "warning").get_args()


@dataclass
class Frames:
    """Per-frame values of one rendition, from one run or several (`extend`): psnr's and ssim's
    stats lines, libvmaf's per-frame scores (empty without VMAF)."""

    psnr: list[dict[str, float]]
    ssim: list[dict[str, float]]
    vmaf: list[float]

    def extend(self, more: Frames) -> None:
        self.psnr += more.psnr
        self.ssim += more.ssim
        self.vmaf += more.vmaf


class Scores(BaseModel):
    """The scores of one rendition over the frames compared.

    `psnr_y` and `psnr_avg` pool as FFmpeg's summary does: the PSNR of the mean MSE over the
    frames (not the mean of per-frame PSNRs), `psnr_avg` being of the plane-size-weighted MSE of
    Y, U and V; `psnr_min` is the worst frame's `psnr_avg` (FFmpeg's `min:`). Identical frames
    have an infinite PSNR: kept as float('inf') (only if every frame compared is identical does
    the pooled value become inf), written in JSON as the string "Infinity", which reads back.
    `ssim` is the mean of the per-frame `All`, `ssim_min` the worst frame's. The VMAF values pool
    the per-frame scores as libvmaf does (mean, min, harmonic mean), None when VMAF was not
    computed."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    frames: int
    psnr_y: float
    psnr_avg: float
    psnr_min: float
    ssim: float
    ssim_min: float
    vmaf_mean: Optional[float] = None
    vmaf_min: Optional[float] = None
    vmaf_harmonic_mean: Optional[float] = None

    @classmethod
    def pooled(cls, name: str, f: Frames) -> Scores:
        if not f.psnr or len(f.psnr) != len(f.ssim) or (f.vmaf and len(f.vmaf) != len(f.psnr)):
            raise QualityError(
                f"{name}: {len(f.psnr)} frames in the PSNR stats but {len(f.ssim)} in the SSIM's"
                + (f" and {len(f.vmaf)} in the VMAF log" if f.vmaf else "")
            )
        v = f.vmaf
        return cls(
            frames=len(f.psnr),
            psnr_y=_pooled_psnr([x["psnr_y"] for x in f.psnr]),
            psnr_avg=_pooled_psnr([x["psnr_avg"] for x in f.psnr]),
            psnr_min=min(x["psnr_avg"] for x in f.psnr),
            ssim=round(sum(x["All"] for x in f.ssim) / len(f.ssim), 6),  # the file's precision
            ssim_min=min(x["All"] for x in f.ssim),
            vmaf_mean=sum(v) / len(v) if v else None,
            vmaf_min=min(v) if v else None,
            # libvmaf's harmonic mean: of the scores plus one, minus one
            vmaf_harmonic_mean=len(v) / sum(1 / (x + 1) for x in v) - 1 if v else None,
        )


_FIELD = re.compile(r"(\w+):(\S+)")


def _stats_lines(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        raise QualityError(f"no metrics were written to {path.name} (did the run use cwd=out_dir?)")
    return [
        {k: float(v) for k, v in _FIELD.findall(line)}
        for line in path.read_text().splitlines()
        if line.startswith("n:")
    ]


def _pooled_psnr(values: Sequence[float]) -> float:
    """The PSNR of the mean MSE, from per-frame PSNRs: the peak cancels out, and an infinite
    PSNR (MSE 0) counts as 0. The stats file's PSNRs have two decimals (0.1 % of the MSE); its
    MSEs too, which is coarser for good frames (an MSE of 0.004 prints as 0.00)."""
    mean = sum(10 ** (-v / 10) for v in values) / len(values)
    return math.inf if mean == 0 else -10 * math.log10(mean)


def read_frames(out_dir: Path, compared: Sequence[Compared]) -> dict[str, Frames]:
    """The per-frame values `compare_args`'s run wrote in `out_dir`, by rendition name."""
    found = {}
    for i, c in enumerate(compared):
        psnr_log, ssim_log, vmaf_log = (out_dir / n for n in _stats_names(i))
        vmaf = (
            [x["metrics"]["vmaf"] for x in json.loads(vmaf_log.read_text())["frames"]]
            if vmaf_log.is_file()
            else []
        )
        found[c.name] = Frames(_stats_lines(psnr_log), _stats_lines(ssim_log), vmaf)
    return found


def read_scores(out_dir: Path, compared: Sequence[Compared]) -> dict[str, Scores]:
    """The scores `compare_args`'s run wrote in `out_dir`, by rendition name."""
    return {n: Scores.pooled(n, f) for n, f in read_frames(out_dir, compared).items()}


def compare(
    source: Path,
    compared: Sequence[Compared],
    out_dir: Path,
    binary: MetricsBinary,
    *,
    every: int = 10,
    vmaf: Optional[bool] = None,
    threads: int = 2,
    windows: Optional[Sequence[Window]] = None,
    at_once: int = 1,
) -> tuple[dict[str, Scores], list[RunResult]]:
    """`compare_args` run (in `out_dir`) with `binary` over the whole files, or once per window
    of `windows` (in its own subdirectory, `at_once` runs at a time), and read: the scores,
    pooled over every run, and the runs (whose `messages` `decode_errors` reads). `vmaf`
    defaults to whether the binary has libvmaf."""
    use_vmaf = binary.vmaf if vmaf is None else vmaf
    if use_vmaf and not binary.vmaf:
        raise QualityError(f"{binary.path} ({binary.version}) has no libvmaf filter")
    if windows is not None and not windows:
        raise ValueError("no window to compare")
    runs = (
        [(out_dir, None)]
        if windows is None
        else [(out_dir / f"window-{k}", w) for k, w in enumerate(windows)]
    )

    def run(where: Path, window: Optional[Window]) -> RunResult:
        args = compare_args(
            source, compared, where, every=every, vmaf=use_vmaf, threads=threads, window=window
        )
        try:
            return run_ffmpeg(args, ffmpeg=binary.path, cwd=where)
        except FFmpegFailed as exc:
            tail = exc.result.messages
            if "matches no streams" in tail:  # FFmpeg does not say which input: name them all
                names = ", ".join(Path(p).name for p in (source, *(c.path for c in compared)))
                raise QualityError(f"an input has no video stream (of {names})") from exc
            if "must be same" in tail:  # psnr: "Width and height of input videos must be same."
                sizes = ", ".join(f"{c.name} {c.width}x{c.height}" for c in compared)
                raise QualityError(
                    f"a rendition is not the size it was given as ({sizes})"
                ) from exc
            raise

    with ThreadPoolExecutor(max_workers=max(1, at_once)) as pool:
        results = list(pool.map(lambda r: run(*r), runs))
    frames = {c.name: Frames([], [], []) for c in compared}
    for where, _ in runs:
        for name, found in read_frames(where, compared).items():
            frames[name].extend(found)
    return {n: Scores.pooled(n, f) for n, f in frames.items()}, results


# --- decode health ------------------------------------------------------------------------


def decode_errors(messages: str) -> list[str]:
    """The lines of what FFmpeg said (`RunResult.messages`) that show decode damage (any of
    `verify.STDERR_SIGNATURES`, the concealed kinds too)."""
    return [
        line.strip()
        for line in messages.splitlines()
        if any(pattern.search(line) for pattern, _ in STDERR_SIGNATURES)
    ]


def decode_args(path: Path) -> list[str]:
    """A full decode of one file's video to the null muxer, saying only warnings and errors:
    run it for each rendition when the joint run showed errors, which it cannot attribute to
    an input; `decode_errors(result.messages)` then holds that file's."""
    inp = _open(path, RENDITION_FORMATS)
    return ffmpeg.output(inp["v:0"], "-", f="null").global_args("-loglevel", "warning").get_args()


def expected_frames(source_frames: int, every: int) -> int:
    """How many frames a run with `every` compares of a source of `source_frames` frames."""
    return math.ceil(source_frames / every)


def frame_problems(scores: dict[str, Scores], *, source_frames: int, every: int) -> list[str]:
    """Renditions that decoded to fewer (or more) frames compared than the source gives."""
    want = expected_frames(source_frames, every)
    return [
        f"{name}: {s.frames} frames compared, {want} expected ({source_frames} / {every})"
        for name, s in scores.items()
        if s.frames != want
    ]


def frame_count(path: Path, ffprobe: str = "ffprobe") -> int:
    """The number of video frames of a file, counted from its packets (no decode)."""
    out = _ffprobe(path, ffprobe, "-count_packets", "-show_entries", "stream=nb_read_packets")
    return int(out.strip().splitlines()[0])


# --- keyframes ----------------------------------------------------------------------------


def _ffprobe(path: Path, ffprobe: str, *shown: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise QualityError(f"no such file: {path}")
    argv = [
        resolve_binary(ffprobe),
        "-v",
        "error",
        "-select_streams",
        "v:0",
        *shown,
        "-of",
        "csv=p=0",
        f"file:{path.resolve()}",
    ]
    spawned, preexec = spawn_args(argv)
    proc = subprocess.run(
        spawned, capture_output=True, text=True, timeout=120, check=False, preexec_fn=preexec
    )
    if proc.returncode != 0:
        raise QualityError(f"ffprobe cannot read {path.name}: {proc.stderr.strip()[-300:]}")
    if not proc.stdout.strip():
        raise QualityError(f"{path.name} has no video stream")
    return proc.stdout


def video_packets(path: Path, ffprobe: str = "ffprobe") -> list[tuple[float, bool]]:
    """(presentation time, keyframe) of each video packet with a time, in presentation order,
    read without decoding: the frames a file holds and where its keyframes are, in one read."""
    out = _ffprobe(path, ffprobe, "-show_entries", "packet=pts_time,flags")
    packets = []
    for line in out.splitlines():
        pts, _, flags = line.partition(",")
        if pts not in ("", "N/A"):
            packets.append((float(pts), "K" in flags))
    return sorted(packets)


def keyframe_times(path: Path, ffprobe: str = "ffprobe") -> list[float]:
    """Presentation times of the video's keyframes, in order, from the packets' K flag (no
    decode: fast on any length)."""
    return [t for t, key in video_packets(path, ffprobe) if key]


def keyframe_problems(
    times: Sequence[float],
    *,
    every_s: float,
    duration_s: float,
    tolerance_s: float,
    extra_allowed: bool = False,
) -> list[str]:
    """Problems with keyframes at `times` against marks 0, every_s, 2 every_s, ... below
    `duration_s`: a mark with no keyframe within `tolerance_s` (one frame, say: the keyframe is
    forced on the first frame at or after the mark). Keyframes at no mark are problems too unless
    `extra_allowed`: the pipeline's encoders make none of their own (x264 `sc_threshold=0` and
    `scenecut=0`, x265 `scenecut=0`, SVT-AV1 `scd=0`; their own interval is twice the marks')."""
    marks = [
        k * every_s for k in range(math.ceil(duration_s / every_s) + 1) if k * every_s < duration_s
    ]
    # (1e-6: times are microseconds, 2.04 - 2.0 is a hair above 0.04 in binary floating point)
    problems = [
        f"no keyframe at {mark:g} s (within {tolerance_s:g} s)"
        for mark in marks
        if not any(abs(t - mark) <= tolerance_s + 1e-6 for t in times)
    ]
    if not extra_allowed:
        problems += [
            f"keyframe at {t:g} s is at no mark"
            for t in times
            if not any(abs(t - mark) <= tolerance_s + 1e-6 for mark in marks)
        ]
    return problems
