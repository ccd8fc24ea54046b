"""Codecs benchmark (issue 19): what HEVC (x265) and AV1 (SVT-AV1) save in bits against H.264
(x264) at equal quality, and what each costs to encode, as the pipeline encodes them.

Sources: bench/ladder.py's clean and noisy 1080p30 test patterns with audio, cached in
bench/work/sources. Every encode is one FFmpeg run whose argv the pipeline builds itself, from a
spec made of the shipped vod pipeline (resources/pipelines/vod.yaml) with a ladder of the rungs
below and the shipped FFmpeg settings (resources/settings.yaml: one thread per encoder).

1. Bits at equal quality, per source and rung height (--heights, default 720 and 360), each point
   `commands.encode_rendition_args(src, out, stages.encode.video_output(spec, rung, info))`,
   --jobs (2) of them side by side:
     h264, hevc   presets x264-vod and x265-vod (veryfast, 1-pass ABR with VBV) on rungs of
                  1/4, 1/2, 1 and 2 x the height's reference bitrate: the vod ladder's at that
                  height, log-log interpolated between its rungs where it has none (720p: 2800
                  kb/s, its rung; 360p: 760);
     av1          svtav1-vod with crf 25, 35 (the shipped), 45, 55 and 63 (--crfs) on a 60000
                  kb/s rung, so a cap of 90000 kb/s that never binds (SVT-AV1 takes at most
                  100000): the AV1 curve, wide enough to span H.264's PSNR on both sources;
     av1 shipped  svtav1-vod as shipped (crf 35) on rungs at the h264 bitrates, capped at
                  1.5 x each; the cap bound where the video differs from the curve's crf-35 point.
   Bitrate: the video track's bytes (the sum of its MP4 samples, i.e. every encoded frame with
   its in-band headers; no container, no audio, no sample entry) x 8 / (frames / frame rate).
   Quality: PSNR-Y (mean of per-frame dB) and SSIM-Y of each rendition against the source scaled
   to the rendition's size by the encode's own scaler (bicubic, yuv420p), by bench/seams.py's
   `compare`. From the points, the BD-rate (Bjontegaard: log bitrate interpolated over PSNR by
   piecewise cubic Hermite (PCHIP), mean difference over the PSNR range both curves cover) of the
   HEVC and the AV1 curve against H.264 at the same height, the same over SSIM-Y in dB, and the
   BD-PSNR (dB at equal bitrate); and for every shipped-settings point, the H.264 bitrate that
   reaches its PSNR.
2. Encode time on the clean source (--time-sources) at one rung (--time-height, default 720, at
   its reference bitrate) with each codec's shipped preset, run alone (no other bench work beside
   it), through the pipeline's own `stages.encode.encode_ladder` with the shipped threads (1) and
   lanes (2):
     whole    the spec with chunk_s 0: one FFmpeg process encodes the whole source;
     chunked  the spec with chunk_s = duration / 2 (a 20 s source is cut at the 10 s mark, the
              cuts falling on multiples of 10 s here): the chunks encoded side by side, each
              after the first starting chunk_lead_gops (2) GOPs before its cut, the audio beside
              them, joined by stream copy.
   Wall (the call) and CPU seconds (user + sys of its FFmpeg processes); speed-up = whole wall /
   chunked wall; the bound is what the layout allows at best (duration over the longest lane's
   encoded seconds, leads included). Also the CPU of decoding and scaling the source alone, so
   encoder CPU = encode CPU - that.

Prints the tables (Markdown), writes bench/codecs.json; everything it makes is in
bench/work/codecs. PSNR, SSIM and bitrates do not depend on the host's load, CPU seconds little,
wall a lot.

    .venv/bin/python bench/codecs.py            # 20 s sources, 720p and 360p: 13-14 min idle
    .venv/bin/python bench/codecs.py --quick    # 12 s sources, 360p only: about 3 min (smoke)
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import ffmpeg

# bench/ladder.py owns the sources (and their cache), the project as shipped and the log format;
# bench/seams.py the comparison against the scaled source and the encode step run in a fresh
# directory.
from ladder import ROOT, WORK, cached_clip, ffmpeg_version_line, git_head, log, repo_project
from seams import compare, video_csv
from seams import encode as seams_encode

from mpegflow_dagster.media import commands
from mpegflow_dagster.media.codecs import codec, encoder_versions
from mpegflow_dagster.media.probe import MediaInfo, probe
from mpegflow_dagster.media.runner import run_ffmpeg
from mpegflow_dagster.spec import PipelineSpec, Rendition
from mpegflow_dagster.stages.encode import encode_spans, video_output

RESULTS = ROOT / "bench" / "codecs.json"
OUT = WORK / "codecs"
SPEC_NAME = "vod"
PRESETS = {"h264": "x264-vod", "hevc": "x265-vod", "av1": "svtav1-vod"}
RATE_STEPS = (0.25, 0.5, 1.0, 2.0)  # x the reference bitrate of the height
AV1_CRFS = (25, 35, 45, 55, 63)
UNCAPPED_KBPS = 60000  # an AV1 curve point's rung: maxrate 1.5 x that, under SVT-AV1's 100000
PSNR_CEILING = 100.0  # a frame encoded exactly (inf dB) counts as this
CURVES = ("h264", "hevc", "av1", "av1_shipped")


# -- the points -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One encode: a rung of the bench spec, on one of the curves."""

    curve: str  # h264, hevc, av1 (crf sweep, cap not binding), av1_shipped (shipped crf, capped)
    rung: Rendition
    crf: Optional[int]  # AV1's

    @property
    def setting(self) -> str:
        """What sets its rate, as a reader says it."""
        cap = f"cap {self.cap_kbps} kb/s"
        if self.curve == "av1":
            return f"crf {self.crf}, {cap} (never binds)"
        if self.curve == "av1_shipped":
            return f"crf {self.crf}, {cap}"
        return f"ABR {self.rung.video_bitrate_kbps} kb/s"

    @property
    def cap_kbps(self) -> int:
        return int(self.rung.video_bitrate_kbps * self.rung.maxrate_factor)


def reference_kbps(spec: PipelineSpec, height: int) -> int:
    """The ladder's bitrate at `height`: its rung's, else log-log interpolated (or extrapolated)
    between the two nearest rungs, rounded to 10 kb/s."""
    rungs = sorted({r.height: r.video_bitrate_kbps for r in spec.ladder}.items())
    if height in dict(rungs):
        return dict(rungs)[height]
    if len(rungs) < 2:
        raise SystemExit(f"the {spec.name} ladder has one height: cannot scale its bitrate")
    i = min(max(bisect.bisect(rungs, (height, 0)), 1), len(rungs) - 1)
    (h0, b0), (h1, b1) = rungs[i - 1], rungs[i]
    slope = math.log(b1 / b0) / math.log(h1 / h0)
    return int(round(b0 * (height / h0) ** slope, -1))


def rung(height: int, name: str, kbps: int, preset: str) -> dict:
    """A ladder rung as the spec file writes it: each encoder's default profile and level."""
    return {
        "name": f"{height}p_{name}",
        "height": height,
        "video_bitrate_kbps": kbps,
        "preset": preset,
    }


def bench_spec(
    base: PipelineSpec, heights: Sequence[int], crfs: Sequence[int]
) -> tuple[PipelineSpec, dict[int, list[Point]]]:
    """The shipped spec with a ladder of every point's rung (and a preset per AV1 crf besides the
    shipped one), validated as any spec is; fMP4 HLS and no captions, which HEVC and AV1 rungs
    need and the bench does not use."""
    raw = base.model_dump()
    av1 = base.presets[PRESETS["av1"]]
    presets = dict(raw["presets"])
    preset_of_crf = {av1.crf: av1.name}
    for crf in crfs:
        if crf != av1.crf:
            name = f"{av1.name}-crf{crf}"
            presets[name] = {**av1.model_dump(), "name": name, "crf": crf}
            preset_of_crf[crf] = name
    planned: dict[int, list[tuple[str, dict, Optional[int]]]] = {}
    for height in heights:
        ref = reference_kbps(base, height)
        rates = [int(round(ref * s, -1)) for s in RATE_STEPS]
        rows: list[tuple[str, dict, Optional[int]]] = []

        for kbps in rates:
            rows.append(("h264", rung(height, f"h264_{kbps}k", kbps, PRESETS["h264"]), None))
            rows.append(("hevc", rung(height, f"hevc_{kbps}k", kbps, PRESETS["hevc"]), None))
            rows.append(("av1_shipped", rung(height, f"av1cap_{kbps}k", kbps, av1.name), av1.crf))
        for crf in crfs:
            rows.append(
                ("av1", rung(height, f"av1_crf{crf}", UNCAPPED_KBPS, preset_of_crf[crf]), crf)
            )
        planned[height] = rows
    ladder = [r for rows in planned.values() for _, r, _ in rows]
    spec = PipelineSpec.model_validate(
        {
            **raw,
            "ladder": ladder,
            "presets": presets,
            "captions": {**raw["captions"], "enabled": False},
            "hls": {**raw["hls"], "segment_type": "fmp4"},
        }
    )
    points = {
        h: [Point(curve, spec.rendition(r["name"]), crf) for curve, r, crf in rows]
        for h, rows in planned.items()
    }
    return spec, points


# -- measuring one file -----------------------------------------------------------------------------


def video_track(path: Path, fps: Fraction) -> dict:
    """The video track's size: bytes of its samples, frames, and kb/s over frames / fps."""
    sizes = [int(line) for line in video_csv(path, "packet=size").split()]
    seconds = len(sizes) / fps
    return {
        "video_bytes": sum(sizes),
        "frames": len(sizes),
        "video_kbps": round(8 * sum(sizes) / float(seconds) / 1000, 1),
    }


def payload_md5(path: Path) -> str:
    """MD5 of the video track's packets (not the container: its `btrt` box holds the maxrate)."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy"]
        + ["-f", "md5", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().removeprefix("MD5=")


def ssim_db(ssim: float) -> float:
    return -10 * math.log10(1 - ssim) if ssim < 1 else PSNR_CEILING


# -- Bjontegaard --------------------------------------------------------------------------------


def pchip(xs: Sequence[float], ys: Sequence[float]) -> Callable[[float], float]:
    """Piecewise cubic Hermite interpolation with Fritsch-Carlson slopes (as scipy's
    PchipInterpolator): through every point, monotone between them, no overshoot. `xs` strictly
    increasing, at least 2 points."""
    n = len(xs)
    h = [xs[i + 1] - xs[i] for i in range(n - 1)]
    m = [(ys[i + 1] - ys[i]) / h[i] for i in range(n - 1)]
    if n == 2:
        d = [m[0], m[0]]
    else:
        d = [0.0] * n
        for k in range(1, n - 1):
            if m[k - 1] * m[k] > 0:
                w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
                d[k] = (w1 + w2) / (w1 / m[k - 1] + w2 / m[k])

        def edge(h0: float, h1: float, m0: float, m1: float) -> float:
            e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
            if e * m0 <= 0:
                return 0.0
            if m0 * m1 < 0 and abs(e) > 3 * abs(m0):
                return 3 * m0
            return e

        d[0] = edge(h[0], h[1], m[0], m[1])
        d[-1] = edge(h[-1], h[-2], m[-1], m[-2])

    def f(x: float) -> float:
        k = min(max(bisect.bisect_right(xs, x) - 1, 0), n - 2)
        t = (x - xs[k]) / h[k]
        return (
            (2 * t**3 - 3 * t**2 + 1) * ys[k]
            + (t**3 - 2 * t**2 + t) * h[k] * d[k]
            + (-2 * t**3 + 3 * t**2) * ys[k + 1]
            + (t**3 - t**2) * h[k] * d[k + 1]
        )

    return f


def _curve(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(x, y) pairs sorted by x, a repeated x kept once (its first y)."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in sorted(points):
        if not xs or x > xs[-1]:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _integral(f: Callable[[float], float], lo: float, hi: float, n: int = 1000) -> float:
    step = (hi - lo) / n
    inner = sum((4 if i % 2 else 2) * f(lo + i * step) for i in range(1, n))
    return step / 3 * (f(lo) + inner + f(hi))


def bd_delta(
    anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]
) -> Optional[dict]:
    """The mean of test's y minus anchor's y over the x range both cover, each curve a PCHIP
    through its (x, y) points; None if they do not overlap."""
    (xa, ya), (xt, yt) = _curve(anchor), _curve(test)
    if len(xa) < 2 or len(xt) < 2:
        return None
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if hi <= lo:
        return None
    fa, ft = pchip(xa, ya), pchip(xt, yt)
    delta = (_integral(ft, lo, hi) - _integral(fa, lo, hi)) / (hi - lo)
    return {
        "delta": delta,
        "range": [lo, hi],
        "anchor_points_in": sum(lo <= x <= hi for x in xa),
        "test_points_in": sum(lo <= x <= hi for x in xt),
    }


def bd_rate(
    anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]
) -> Optional[dict]:
    """Bjontegaard delta rate of `test` against `anchor`, both (kb/s, dB) points: the percent
    more bits (negative: fewer) test needs for the same quality, on average over the quality
    range both reach."""
    found = bd_delta([(q, math.log10(r)) for r, q in anchor], [(q, math.log10(r)) for r, q in test])
    if found is None:
        return None
    return {
        "pct": round((10 ** found.pop("delta") - 1) * 100, 1),
        "range_db": [round(q, 3) for q in found.pop("range")],
        **found,
    }


def bd_quality(
    anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]
) -> Optional[dict]:
    """Bjontegaard delta quality (e.g. BD-PSNR): the dB test gains at equal bitrate, on average
    over the log-bitrate range both cover."""
    found = bd_delta([(math.log10(r), q) for r, q in anchor], [(math.log10(r), q) for r, q in test])
    if found is None:
        return None
    lo, hi = found.pop("range")
    return {
        "db": round(found.pop("delta"), 3),
        "range_kbps": [round(10**lo), round(10**hi)],
        **found,
    }


def rate_at(curve: Sequence[tuple[float, float]], quality: float) -> Optional[float]:
    """The bitrate at which a (kb/s, dB) curve reaches `quality`, if within its points."""
    xs, ys = _curve([(q, math.log10(r)) for r, q in curve])
    if len(xs) < 2 or not xs[0] <= quality <= xs[-1]:
        return None
    return 10 ** pchip(xs, ys)(quality)


# -- 1. bits at equal quality -------------------------------------------------------------------


def encode_point(src: Path, info: MediaInfo, spec: PipelineSpec, point: Point, into: Path) -> dict:
    """One point's rendition, by the argv the pipeline's one-rendition encode builds."""
    out = into / f"{point.rung.name}.mp4"
    threads = repo_project().settings.ffmpeg.threads
    args = commands.encode_rendition_args(
        src, out, video_output(spec, point.rung, info), threads=threads
    )
    run = run_ffmpeg(args, duration_s=info.duration)
    return {"path": out, "cpu_s": round(run.cpu_s, 2), "wall_s": round(run.wall_s, 2), "argv": args}


def measure_height(
    kind: str,
    src: Path,
    info: MediaInfo,
    spec: PipelineSpec,
    height: int,
    points: list[Point],
    jobs: int,
) -> dict:
    fps = Fraction(info.video.constant_frame_rate or "30") if info.video else Fraction(30)
    reference = reference_kbps(repo_project().spec(SPEC_NAME), height)
    into = OUT / kind / f"{height}p"
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    t0 = time.monotonic()
    # the dearest first (x265, then AV1, then x264; the most bits first), so that the last to
    # finish is a short one
    order = sorted(
        points,
        key=lambda p: (
            -codec(spec.preset_for(p.rung).encoder).relative_cost,
            p.crf if p.curve == "av1" else -p.rung.video_bitrate_kbps,
        ),
    )
    with ThreadPoolExecutor(jobs) as pool:
        done = dict(
            zip(
                [p.rung.name for p in order],
                pool.map(lambda p: encode_point(src, info, spec, p, into), order),
                strict=True,
            )
        )
    log(f"{kind} {height}p: {len(points)} encodes in {time.monotonic() - t0:.0f}s")
    t0 = time.monotonic()
    names = [p.rung.name for p in points]
    groups = [names[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        found = list(
            pool.map(
                lambda g: compare(src, height, {n: done[n]["path"] for n in g}, into / "stats"),
                groups,
            )
        )
    stats = {n: s for group in found for n, s in group.items()}
    log(f"{kind} {height}p: compared in {time.monotonic() - t0:.0f}s")
    frames = round(info.duration * fps)
    rows = []
    for p in points:
        path = done[p.rung.name]["path"]
        track = video_track(path, fps)
        s = stats[p.rung.name]
        if not (len(s["psnr_y"]) == len(s["ssim_y"]) == track["frames"]):
            raise RuntimeError(f"{path}: {track['frames']} frames but {len(s['psnr_y'])} compared")
        if abs(track["frames"] - frames) > 1:
            raise RuntimeError(f"{path}: {track['frames']} frames, the source {frames}")
        ssim = statistics.fmean(s["ssim_y"])
        rows.append(
            {
                "name": p.rung.name,
                "curve": p.curve,
                "preset": spec.preset_for(p.rung).ref,
                "setting": p.setting,
                "target_kbps": p.rung.video_bitrate_kbps if p.curve in ("h264", "hevc") else None,
                "crf": p.crf,
                "cap_kbps": p.cap_kbps if p.crf is not None else None,
                **track,
                "psnr_y": round(statistics.fmean(min(v, PSNR_CEILING) for v in s["psnr_y"]), 3),
                "ssim_y": round(ssim, 5),
                "ssim_y_db": round(ssim_db(ssim), 3),
                "cpu_s": done[p.rung.name]["cpu_s"],
                "wall_s": done[p.rung.name]["wall_s"],
                **({"payload_md5": payload_md5(path)} if p.crf is not None else {}),
                # the argv of the shipped settings at the reference bitrate, for the record
                **(
                    {"argv": done[p.rung.name]["argv"]}
                    if p.rung.video_bitrate_kbps == reference
                    else {}
                ),
            }
        )
    return {"reference_kbps": reference} | analyse(rows, spec.presets[PRESETS["av1"]].crf)


def analyse(rows: list[dict], shipped_crf: Optional[int]) -> dict:
    """What follows from one height's measured points (in place, so a results file can be analysed
    again): BD figures of HEVC and AV1 against H.264; for each H.264 point the HEVC and AV1
    bitrates of its PSNR, and for each shipped-settings point the H.264 bitrate of its PSNR;
    whether each capped AV1 point's cap bound (its video is not the uncapped shipped-crf one's)."""

    def curve(name: str, key: str = "psnr_y") -> list[tuple[float, float]]:
        return [(r["video_kbps"], r[key]) for r in rows if r["curve"] == name]

    uncapped = next(
        (r for r in rows if r["curve"] == "av1" and r["crf"] == shipped_crf),
        None,
    )
    h264 = curve("h264")
    for r in rows:
        if r["curve"] == "av1_shipped":
            r["cap_bound"] = (
                None if uncapped is None else r["payload_md5"] != uncapped["payload_md5"]
            )
            r["bits_vs_uncapped_pct"] = (
                None
                if uncapped is None
                else round((r["video_kbps"] / uncapped["video_kbps"] - 1) * 100, 1)
            )
        if r["curve"] in ("hevc", "av1_shipped"):
            at = rate_at(h264, r["psnr_y"])
            r["h264_kbps_at_equal_psnr"] = None if at is None else round(at, 1)
            r["fewer_bits_than_h264_pct"] = (
                None if at is None else round((1 - r["video_kbps"] / at) * 100, 1)
            )
        if r["curve"] == "h264":
            for test in ("hevc", "av1"):
                at = rate_at(curve(test), r["psnr_y"])
                r[f"{test}_kbps_at_equal_psnr"] = None if at is None else round(at, 1)
                r[f"{test}_fewer_bits_pct"] = (
                    None if at is None else round((1 - at / r["video_kbps"]) * 100, 1)
                )
    bd = {}
    for test in ("hevc", "av1"):
        bd[test] = {
            "bd_rate_psnr_y": bd_rate(h264, curve(test)),
            "bd_rate_ssim_y": bd_rate(curve("h264", "ssim_y_db"), curve(test, "ssim_y_db")),
            "bd_psnr_y": bd_quality(h264, curve(test)),
        }
    return {"points": rows, "bd_vs_h264": bd}


# -- 2. encode time ---------------------------------------------------------------------------------


def time_spec(
    base: PipelineSpec, preset: str, height: int, kbps: int, chunk_s: float
) -> PipelineSpec:
    raw = base.model_dump()
    return PipelineSpec.model_validate(
        {
            **raw,
            "ladder": [
                {
                    "name": f"{height}p",
                    "height": height,
                    "video_bitrate_kbps": kbps,
                    "preset": preset,
                }
            ],
            "chunk_s": chunk_s,
            "captions": {**raw["captions"], "enabled": False},
            "hls": {**raw["hls"], "segment_type": "fmp4"},
        }
    )


def layout(info: MediaInfo, spec: PipelineSpec, lanes: int) -> dict:
    """The spans and the best speed-up they allow over `lanes`: chunks handed to the first free
    lane in order, as `encode_ladder` does, each costing its encoded seconds (lead included)."""
    spans = encode_spans(info, spec)
    lane_s = [0.0] * max(1, lanes)
    for sp in spans:
        seconds = float(sp.lead_s) + (
            float(sp.duration_s) if sp.duration_s is not None else info.duration - float(sp.start_s)
        )
        lane_s[lane_s.index(min(lane_s))] += seconds
    return {
        "spans": [
            {
                "start_s": round(float(sp.start_s), 3),
                "duration_s": None if sp.duration_s is None else round(float(sp.duration_s), 3),
                "lead_s": round(float(sp.lead_s), 3),
            }
            for sp in spans
        ],
        "bound_speedup": round(info.duration / max(lane_s), 3),
    }


def decode_cpu(src: Path, height: int) -> float:
    """CPU seconds of decoding the source and scaling it as an encode does, encoding nothing."""
    video = ffmpeg.input(str(src))["v:0"].filter("scale", -2, height, flags="bicubic")
    args = ffmpeg.output(video.filter("format", "yuv420p"), "-", f="null").get_args()
    return round(run_ffmpeg(args).cpu_s, 2)


def measure_time(
    kind: str,
    src: Path,
    info: MediaInfo,
    base: PipelineSpec,
    height: int,
    chunk_s: float,
    repeat: int,
) -> dict:
    """Whole and chunked encodes of each codec, alternating, `repeat` times each: the medians
    (and every round's figures)."""
    kbps = reference_kbps(base, height)
    lanes = repo_project().settings.ffmpeg.encode_lanes
    fps = Fraction(info.video.constant_frame_rate or "30") if info.video else Fraction(30)
    result: dict = {"height": height, "kbps": kbps, "chunk_s": chunk_s, "lanes": lanes}
    result["decode_scale_cpu_s"] = decode_cpu(src, height)
    for name, preset in PRESETS.items():
        whole_spec = time_spec(base, preset, height, kbps, 0.0)
        chunked_spec = time_spec(base, preset, height, kbps, chunk_s)
        plan = layout(info, chunked_spec, lanes)
        if len(plan["spans"]) < 2:
            raise SystemExit(
                f"a {info.duration:g} s source is not cut at chunk_s {chunk_s:g} (the vod spec cuts "
                "on multiples of 10 s): give --duration 12 or more, or --parts rd"
            )
        row: dict = {"preset": base.presets[preset].ref}
        rounds: dict[str, list[dict]] = {"whole": [], "chunked": []}
        for i in range(repeat):
            for label, spec in (("whole", whole_spec), ("chunked", chunked_spec)):
                # the pipeline's encode step, in a fresh directory (no piece of a run before)
                paths, cost = seams_encode(
                    src, info, spec, list(spec.ladder), OUT / kind / "time" / f"{name}-{label}"
                )
                path = paths[spec.ladder[0].name]
                made = {
                    "wall_s": cost["wall_s"],
                    "cpu_s": cost["ffmpeg_cpu_s"],
                    "ffmpeg_runs": cost["ffmpeg_runs"],
                }
                rounds[label].append(made)
                log(f"{kind} time: {name} {label} ({i + 1}/{repeat}) {made}")
                if i == 0:
                    row[label] = video_track(path, fps)
                if i == 0 and label == "whole":
                    row["encoder"] = encoder_versions(path, "ffmpeg")
        for label, made in rounds.items():
            row[label].update(
                {
                    "wall_s": round(statistics.median(m["wall_s"] for m in made), 2),
                    "cpu_s": round(statistics.median(m["cpu_s"] for m in made), 2),
                    "ffmpeg_runs": made[0]["ffmpeg_runs"],
                    "rounds": made,
                }
            )
        row["chunked"].update(plan)
        row["speedup"] = round(row["whole"]["wall_s"] / row["chunked"]["wall_s"], 3)
        row["chunked_cpu_over_whole"] = round(row["chunked"]["cpu_s"] / row["whole"]["cpu_s"], 3)
        row["encoder_cpu_s"] = round(row["whole"]["cpu_s"] - result["decode_scale_cpu_s"], 2)
        result[name] = row
    x264 = result["h264"]["encoder_cpu_s"]
    for name in PRESETS:
        result[name]["encoder_cpu_vs_h264"] = round(result[name]["encoder_cpu_s"] / x264, 2)
        result[name]["relative_cost_in_codecs_py"] = codec(
            base.presets[PRESETS[name]].encoder
        ).relative_cost
    return result


# -- the run ----------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, help="source length in s (default 20; --quick 12)")
    ap.add_argument("--heights", type=int, nargs="+", help="rung heights (default 720 360)")
    ap.add_argument("--crfs", type=int, nargs="+", default=list(AV1_CRFS), help="AV1 curve crfs")
    ap.add_argument("--sources", nargs="+", default=["clean", "noisy"], choices=["clean", "noisy"])
    ap.add_argument("--parts", nargs="+", default=["rd", "time"], choices=["rd", "time"])
    ap.add_argument("--time-height", type=int, help="the timed rung's height (default 720)")
    ap.add_argument(
        "--time-sources",
        nargs="+",
        default=["clean"],
        choices=["clean", "noisy"],
        help="sources of the encode-time part (default clean)",
    )
    ap.add_argument(
        "--time-repeat", type=int, default=1, help="rounds of the encode-time part (default 1)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="rate-quality encodes at once (default 2)")
    ap.add_argument(
        "--from-json",
        type=Path,
        help="encode nothing: analyse the points of an earlier run's results again, print the "
        "tables and write the results to --json",
    )
    ap.add_argument(
        "--json", type=Path, default=RESULTS, help="where to write the results (bench/codecs.json)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 12 s sources, 360p only (~2 min)"
    )
    args = ap.parse_args(argv)
    if args.from_json:
        return reanalyse(args.from_json, args.json)
    duration = args.duration or (12.0 if args.quick else 20.0)
    heights = args.heights or ([360] if args.quick else [720, 360])
    time_height = args.time_height or (360 if args.quick else 720)
    t_start = time.monotonic()
    project = repo_project()
    base = project.spec(SPEC_NAME)
    spec, points = bench_spec(base, heights, args.crfs)
    ffmpeg_version = ffmpeg_version_line()
    git_state = git_head()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "mpegflow_dagster", "resources"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    log(f"{ffmpeg_version}; library at {git_state}{' (uncommitted changes)' if dirty else ''}")
    sources = {}
    for kind in args.sources:
        src = cached_clip(kind, duration, kind == "noisy")
        info = probe(src)
        entry: dict = {"source": str(src.relative_to(ROOT)), "duration_s": info.duration}
        if "rd" in args.parts:
            entry["heights"] = {
                str(h): measure_height(kind, src, info, spec, h, points[h], args.jobs)
                for h in heights
            }
        sources[kind] = (src, info, entry)
    for kind in args.time_sources if "time" in args.parts else []:
        if kind not in sources:
            src = cached_clip(kind, duration, kind == "noisy")
            info = probe(src)
            sources[kind] = (
                src,
                info,
                {"source": str(src.relative_to(ROOT)), "duration_s": info.duration},
            )
        src, info, entry = sources[kind]  # alone: after every rate-quality encode
        entry["time"] = measure_time(
            kind, src, info, base, time_height, duration / 2, args.time_repeat
        )
    results = {
        "ffmpeg_version": ffmpeg_version,
        "git": git_state,
        "uncommitted_library_changes": bool(dirty),
        "settings_ffmpeg": project.settings.ffmpeg.model_dump(),
        "spec": SPEC_NAME,
        "presets": {n: base.presets[p].model_dump() for n, p in PRESETS.items()},
        "rate_steps": list(RATE_STEPS),
        "av1_crfs": args.crfs,
        "jobs": args.jobs,
        "sources": {kind: entry for kind, (_, _, entry) in sources.items()},
        "bench_wall_s": round(time.monotonic() - t_start, 1),
    }
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print_tables(results)
    log(f"wrote {args.json} (total {results['bench_wall_s']:.0f}s)")
    return 0


def reanalyse(source: Path, out: Path) -> int:
    results = json.loads(source.read_text())
    crf = results["presets"]["av1"]["crf"]
    for s in results["sources"].values():
        for x in s.get("heights", {}).values():
            x.update(analyse(x["points"], crf))
    out.write_text(json.dumps(results, indent=2, default=str))
    print_tables(results)
    log(f"analysed {source} again, wrote {out}")
    return 0


# -- tables -----------------------------------------------------------------------------------------

LABELS = {"h264": "H.264", "hevc": "HEVC", "av1": "AV1", "av1_shipped": "AV1 shipped"}


def _num(value: Optional[float], fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*columns: str) -> None:
    """A Markdown table's header row and the rule under it."""
    print(_row(*columns))
    print(_row(*["---"] * len(columns)))


def print_tables(r: dict) -> None:
    print(f"\n{r['ffmpeg_version']} | {r['git']}\n")
    with_rd = [(k, s) for k, s in r["sources"].items() if "heights" in s]
    if with_rd:
        print("Rate-quality points (video kb/s: the video track's bytes x 8 / duration; PSNR-Y and")
        print("SSIM-Y against the source scaled to the rung, bicubic; CPU s of each encode, run")
        print(f"{r['jobs']} at a time):\n")
        _header(
            "source", "height", "codec", "setting", "video kb/s", "PSNR-Y dB", "SSIM-Y", "CPU s"
        )
        for kind, s in with_rd:
            for h, x in s["heights"].items():
                for curve in CURVES:
                    for p in sorted(
                        (p for p in x["points"] if p["curve"] == curve),
                        key=lambda p: p["video_kbps"],
                    ):
                        setting = p["setting"] + (" (cap bound)" if p.get("cap_bound") else "")
                        print(
                            _row(
                                kind,
                                f"{h}p",
                                LABELS[curve],
                                setting,
                                f"{p['video_kbps']:.0f}",
                                f"{p['psnr_y']:.2f}",
                                f"{p['ssim_y']:.4f}",
                                f"{p['cpu_s']:.1f}",
                            )
                        )
        print("\nBD-rate against H.264 at the same height (negative: fewer bits for the same")
        print(
            "quality), over the quality range both curves reach (points of H.264/of the codec in it);"
        )
        print("BD-PSNR: dB more at the same bitrate:\n")
        _header(
            "source",
            "height",
            "codec",
            "BD-rate PSNR-Y",
            "PSNR range dB",
            "BD-rate SSIM-Y",
            "BD-PSNR dB",
        )
        for kind, s in with_rd:
            for h, x in s["heights"].items():
                for test in ("hevc", "av1"):
                    b = x["bd_vs_h264"][test]
                    rate, ssim, dpsnr = b["bd_rate_psnr_y"], b["bd_rate_ssim_y"], b["bd_psnr_y"]
                    print(
                        _row(
                            kind,
                            f"{h}p",
                            LABELS[test],
                            "-" if rate is None else f"{rate['pct']:+.1f} %",
                            "-"
                            if rate is None
                            else f"{rate['range_db'][0]:.2f}-{rate['range_db'][1]:.2f} "
                            f"({rate['anchor_points_in']}/{rate['test_points_in']})",
                            "-" if ssim is None else f"{ssim['pct']:+.1f} %",
                            "-" if dpsnr is None else f"{dpsnr['db']:+.2f}",
                        )
                    )
        print("\nAt each H.264 point, the bitrate the HEVC and the AV1 curve need for its PSNR-Y")
        print("(interpolated as for the BD-rate; '-': outside the curve):\n")
        _header(
            "source",
            "height",
            "H.264 kb/s",
            "PSNR-Y dB",
            "HEVC kb/s",
            "HEVC: fewer bits",
            "AV1 kb/s",
            "AV1: fewer bits",
        )
        for kind, s in with_rd:
            for h, x in s["heights"].items():
                for p in sorted(
                    (p for p in x["points"] if p["curve"] == "h264"), key=lambda p: p["video_kbps"]
                ):
                    print(
                        _row(
                            kind,
                            f"{h}p",
                            f"{p['video_kbps']:.0f}",
                            f"{p['psnr_y']:.2f}",
                            _num(p["hevc_kbps_at_equal_psnr"], "{:.0f}"),
                            _num(p["hevc_fewer_bits_pct"], "{:.0f} %"),
                            _num(p["av1_kbps_at_equal_psnr"], "{:.0f}"),
                            _num(p["av1_fewer_bits_pct"], "{:.0f} %"),
                        )
                    )
        print("\nAt the shipped settings: each HEVC rung and each AV1 rung (crf 35 capped at 1.5 x")
        print("the rung's bitrate) against the H.264 bitrate that reaches the same PSNR-Y; 'cap")
        print(
            "bound': the AV1 video differs from the uncapped crf-35 encode's (its bits against it):\n"
        )
        _header(
            "source",
            "height",
            "rung kb/s",
            "H.264 kb/s / dB",
            "HEVC kb/s / dB",
            "H.264 at equal PSNR",
            "HEVC saves",
            "AV1 cap kb/s",
            "AV1 kb/s / dB",
            "cap bound",
            "H.264 at equal PSNR",
            "AV1 saves",
        )
        for kind, s in with_rd:
            for h, x in s["heights"].items():
                by = {p["name"]: p for p in x["points"]}
                for p in sorted(
                    (p for p in x["points"] if p["curve"] == "h264"), key=lambda p: p["target_kbps"]
                ):
                    kbps = p["target_kbps"]
                    hevc, av1 = by[f"{h}p_hevc_{kbps}k"], by[f"{h}p_av1cap_{kbps}k"]
                    print(
                        _row(
                            kind,
                            f"{h}p",
                            kbps,
                            f"{p['video_kbps']:.0f} / {p['psnr_y']:.2f}",
                            f"{hevc['video_kbps']:.0f} / {hevc['psnr_y']:.2f}",
                            _num(hevc["h264_kbps_at_equal_psnr"], "{:.0f}"),
                            _num(hevc["fewer_bits_than_h264_pct"], "{:.0f} %"),
                            av1["cap_kbps"],
                            f"{av1['video_kbps']:.0f} / {av1['psnr_y']:.2f}",
                            "?"
                            if av1["cap_bound"] is None
                            else f"yes, {av1['bits_vs_uncapped_pct']:+.0f} %"
                            if av1["cap_bound"]
                            else "no",
                            _num(av1["h264_kbps_at_equal_psnr"], "{:.0f}"),
                            _num(av1["fewer_bits_than_h264_pct"], "{:.0f} %"),
                        )
                    )
    with_time = [(k, s["time"]) for k, s in r["sources"].items() if "time" in s]
    if with_time:
        t0 = with_time[0][1]
        print(
            f"\nEncode time, {t0['height']}p at {t0['kbps']} kb/s, shipped presets, threads "
            f"{r['settings_ffmpeg']['threads']}; chunked: chunk_s {t0['chunk_s']:g}, "
            f"lanes {t0['lanes']} (wall: machine shared with other work):\n"
        )
        _header(
            "source",
            "codec",
            "whole wall s",
            "whole CPU s",
            "encoder CPU s",
            "vs H.264",
            "chunked wall s",
            "chunked CPU s",
            "speed-up",
            "bound",
            "kb/s whole / chunked",
        )
        for kind, t in with_time:
            for name in PRESETS:
                x = t[name]
                print(
                    _row(
                        kind,
                        LABELS[name],
                        f"{x['whole']['wall_s']:.1f}",
                        f"{x['whole']['cpu_s']:.1f}",
                        f"{x['encoder_cpu_s']:.1f}",
                        f"{x['encoder_cpu_vs_h264']:.2f}",
                        f"{x['chunked']['wall_s']:.1f}",
                        f"{x['chunked']['cpu_s']:.1f}",
                        f"{x['speedup']:.2f}",
                        f"{x['chunked']['bound_speedup']:.2f}",
                        f"{x['whole']['video_kbps']:.0f} / {x['chunked']['video_kbps']:.0f}",
                    )
                )
        print(
            "\nencoder CPU = whole CPU - decoding and scaling the source alone ("
            + ", ".join(f"{k} {t['decode_scale_cpu_s']:.1f} s" for k, t in with_time)
            + ")"
        )
    print()


if __name__ == "__main__":
    sys.exit(main())
