"""Seams benchmark (issue 18): what cutting a rendition's encode into time chunks costs in quality.

For a clean and a noisy 1080p30 source (bench/ladder.py's, cached in bench/work/sources), every
rung of the default ladder (resources/pipelines/vod.yaml, its presets, the shipped FFmpeg
settings) is encoded by the pipeline's own `stages.encode.encode_ladder`, so with the pipeline's
argv, chunk plan, join and bytes:

  whole     the spec with chunk_s 0: one span, the whole source, in one FFmpeg process per lane;
  chunked   the spec with chunk_s C and chunk_lead_gops L (one encode per C and L given): cut
            where `encode_spans` cuts, each chunk its own FFmpeg process starting L GOPs before
            its cut, joined by stream copy, as the pipeline does (L 0: no lead, as before).

Everything else (bitrates, VBV, keyframes every gop_s of source time, x264 preset, one thread) is
the same, so the two differ only in where an x264 process starts and stops. Each rendition is
compared frame by frame with FFmpeg's `psnr` and `ssim` filters (stats files) against the source
scaled to the rendition's size by the scaler the encode uses (bicubic, yuv420p): the figures are
the encoder's loss alone. Reported per rendition: the mean PSNR-Y over the frames within 1 s of
each cut (the second before it and the second after it), the penalty there (whole minus chunked,
dB: positive = chunking lost quality), the same over all frames, the worst single frame near a
cut and the largest one-frame drop, SSIM near the cuts and each file's bitrate. The goal: a mean
penalty near the cuts <= 0.3 dB for every rendition. Prints a table, writes bench/seams.json.

    .venv/bin/python bench/seams.py                          # 60 s sources, chunk_s 10 and 30, lead 0 and 2
    .venv/bin/python bench/seams.py --duration 20 --chunk-s 10 --rungs 240p  # smoke
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import ffmpeg

# bench/ladder.py owns the sources (and their cache), the project as shipped and the log format.
from ladder import ROOT, WORK, cached_clip, ffmpeg_version_line, git_head, log, repo_project

from mpegflow_dagster.media.probe import MediaInfo, probe
from mpegflow_dagster.spec import PipelineSpec, Rendition
from mpegflow_dagster.stages.encode import encode_ladder, encode_spans, video_output
from mpegflow_dagster.stages.ingest import SOURCE_STEM
from mpegflow_dagster.stages.toolkit import Tools

RESULTS = ROOT / "bench" / "seams.json"
SPEC_NAME = "vod"
GOAL_DB = 0.3  # mean PSNR penalty near the cuts, per rendition
NEAR_S = 1.0  # "near a cut": within this many seconds of it, on either side
FFMPEG = ["ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error"]


def encode(
    src: Path, info: MediaInfo, spec: PipelineSpec, rungs: list[Rendition], into: Path
) -> tuple[dict[str, Path], dict]:
    """The rungs' renditions as the pipeline's encode step makes them (no thumbnails: they do not
    change a rendition's bytes), in a fresh `into`; and what it cost."""
    shutil.rmtree(into, ignore_errors=True)
    ingest = into / "ingest"
    ingest.mkdir(parents=True)
    os.link(src, ingest / f"{SOURCE_STEM}{src.suffix}")
    work = {r.name: into / r.name for r in rungs}
    for d in work.values():
        d.mkdir()
    ffmpeg_settings = repo_project().settings.ffmpeg
    tools = Tools(threads=ffmpeg_settings.threads, lanes=ffmpeg_settings.encode_lanes)
    t0 = time.monotonic()
    outs = encode_ladder(ingest, info, spec, rungs, False, tools, work)
    cost = {
        "wall_s": round(time.monotonic() - t0, 2),
        "ffmpeg_cpu_s": round(sum(r.cpu_s for r in tools.runs), 2),
        "ffmpeg_runs": len(tools.runs),
    }
    return {n: o.path for n, o in outs.items()}, cost


_FIELD = re.compile(r"(\w+):(\S+)")


def _stats(path: Path, key: str) -> list[float]:
    values = []
    for line in path.read_text().splitlines():
        fields = dict(_FIELD.findall(line))
        if key in fields:
            v = fields[key]
            values.append(float("inf") if v == "inf" else float(v))
    return values


def compare(
    src: Path, rendition_height: int, renditions: dict[str, Path], into: Path
) -> dict[str, dict[str, list[float]]]:
    """Per-frame PSNR (Y and the weighted YUV average) and SSIM-Y of each of `renditions` (all of
    one rung) against the source scaled as the encode scales it, in one FFmpeg run decoding the
    source once. Frames are paired by position (timestamps reset to 0 on both sides)."""
    into.mkdir(parents=True, exist_ok=True)
    source = ffmpeg.input(str(src))["v:0"]
    reference = (
        source.filter("scale", -2, rendition_height, flags="bicubic")
        .filter("format", "yuv420p")
        .filter("setpts", "PTS-STARTPTS")
        .filter_multi_output("split", 2 * len(renditions))
    )
    outputs, files = [], {}
    for i, (label, path) in enumerate(renditions.items()):
        distorted = (
            ffmpeg.input(str(path))["v:0"]
            .filter("setpts", "PTS-STARTPTS")
            .filter_multi_output("split", 2)
        )
        files[label] = (into / f"{safe(label)}.psnr.log", into / f"{safe(label)}.ssim.log")
        psnr = ffmpeg.filter(
            [distorted.stream(0), reference.stream(2 * i)], "psnr", stats_file=str(files[label][0])
        )
        ssim = ffmpeg.filter(
            [distorted.stream(1), reference.stream(2 * i + 1)],
            "ssim",
            stats_file=str(files[label][1]),
        )
        outputs += [ffmpeg.output(psnr, "-", f="null"), ffmpeg.output(ssim, "-", f="null")]
    subprocess.run(FFMPEG + ffmpeg.merge_outputs(*outputs).get_args(), check=True)
    return {
        label: {
            "psnr_y": _stats(p, "psnr_y"),
            "psnr_avg": _stats(p, "psnr_avg"),
            "ssim_y": _stats(s, "Y"),
        }
        for label, (p, s) in files.items()
    }


def near(cuts: list[int], frames: int, fps: float) -> list[int]:
    """Frame numbers within NEAR_S of a cut: the last second of the chunk before it and the
    first second of the chunk after it."""
    k = round(NEAR_S * fps)
    return sorted({n for c in cuts for n in range(max(0, c - k), min(frames, c + k))})


def mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 3)


def video_csv(path: Path, entries: str) -> str:
    """ffprobe's `entries` of the first video stream, as bare CSV."""
    return subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", entries]
        + ["-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def video_kbps(path: Path) -> float:
    """The video stream's bitrate (the overlapped candidate has no audio, the others do)."""
    return round(int(video_csv(path, "stream=bit_rate").strip()) / 1000, 1)


def safe(label: str) -> str:
    """A label as a file name."""
    return re.sub(r"[^\w.-]+", "-", label)


def seam_figures(
    whole: dict[str, list[float]],
    chunked: dict[str, list[float]],
    cuts: list[int],
    fps: float,
) -> dict:
    y_w, y_c = whole["psnr_y"], chunked["psnr_y"]
    if len(y_w) != len(y_c):
        raise RuntimeError(
            f"whole and chunked renditions differ in frame count ({len(y_w)} vs {len(y_c)})"
        )
    frames = len(y_w)
    at = near(cuts, frames, fps)
    k = round(NEAR_S * fps)
    after = [n for c in cuts for n in range(c, min(frames, c + k))]
    before = [n for c in cuts for n in range(max(0, c - k), c)]
    worst = min(at, key=lambda n: y_c[n])
    drop = max(at, key=lambda n: y_w[n] - y_c[n])
    return {
        "frames": frames,
        "frames_near_cuts": len(at),
        "near_cuts": {
            "psnr_y_whole": mean([y_w[n] for n in at]),
            "psnr_y_chunked": mean([y_c[n] for n in at]),
            "penalty_db": mean([y_w[n] - y_c[n] for n in at]),
            "penalty_db_psnr_avg": mean(
                [whole["psnr_avg"][n] - chunked["psnr_avg"][n] for n in at]
            ),
            "penalty_db_second_before": mean([y_w[n] - y_c[n] for n in before]),
            "penalty_db_second_after": mean([y_w[n] - y_c[n] for n in after]),
            "ssim_y_whole": round(statistics.fmean(whole["ssim_y"][n] for n in at), 5),
            "ssim_y_chunked": round(statistics.fmean(chunked["ssim_y"][n] for n in at), 5),
            "worst_frame": {
                "n": worst,
                "psnr_y_chunked": round(y_c[worst], 2),
                "psnr_y_whole": round(y_w[worst], 2),
            },
            "largest_drop": {
                "n": drop,
                "db": round(y_w[drop] - y_c[drop], 2),
                "psnr_y_chunked": round(y_c[drop], 2),
            },
        },
        "all_frames": {
            "psnr_y_whole": mean(y_w),
            "psnr_y_chunked": mean(y_c),
            "penalty_db": mean([a - b for a, b in zip(y_w, y_c, strict=True)]),
            "ssim_y_whole": round(statistics.fmean(whole["ssim_y"]), 5),
            "ssim_y_chunked": round(statistics.fmean(chunked["ssim_y"]), 5),
        },
    }


def measure_source(
    kind: str,
    src: Path,
    spec: PipelineSpec,
    rungs: list[Rendition],
    chunk_values: list[float],
    lead_values: list[int],
) -> dict:
    info = probe(src)
    video = info.video
    assert video is not None and video.frame_rate
    fps = video.frame_rate
    base = WORK / "seams" / src.stem
    specs = {"whole": spec.model_copy(update={"chunk_s": 0.0})} | {
        f"chunk_s={c:g} lead={g}": spec.model_copy(update={"chunk_s": c, "chunk_lead_gops": g})
        for c in chunk_values
        for g in lead_values
    }
    variants = {label: functools.partial(encode, spec=s) for label, s in specs.items()}
    made: dict[str, dict[str, Path]] = {}
    costs, cuts = {}, {}
    for label in variants:  # every variant checked before any is encoded
        spans = encode_spans(info, specs[label])
        if label != "whole" and len(spans) < 2:
            raise SystemExit(
                f"a {info.duration:g} s source is not cut at {label}: give a source of at least "
                f"1.5x chunk_s (--duration) or a shorter --chunk-s"
            )
        cuts[label] = [round(sp.start_s * fps) for sp in spans[1:]]
    for label, make in variants.items():
        log(f"{kind}: encoding {label} (cuts at frames {cuts[label] or '-'})")
        made[label], costs[label] = make(src, info, rungs=rungs, into=base / safe(label))
        log(f"{kind}: {label} done: {costs[label]}")
    per_rung = {}
    for rung in rungs:
        t0 = time.monotonic()
        height = video_output(spec, rung, info).height
        stats = compare(
            src,
            height,
            {label: made[label][rung.name] for label in variants},
            base / "stats" / rung.name,
        )
        log(f"{kind}: compared {rung.name} ({time.monotonic() - t0:.0f}s)")
        per_rung[rung.name] = {
            "height": height,
            "video_kbps": {label: video_kbps(made[label][rung.name]) for label in variants},
            **{
                label: seam_figures(stats["whole"], stats[label], cuts[label], fps)
                for label in variants
                if label != "whole"
            },
        }
    return {
        "source": str(src.relative_to(ROOT)),
        "duration_s": info.duration,
        "frame_rate": fps,
        "cuts": {k: v for k, v in cuts.items() if k != "whole"},
        "encode_cost": costs,
        "renditions": per_rung,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=60.0, help="source length (default 60 s)")
    ap.add_argument(
        "--chunk-s",
        type=float,
        nargs="+",
        default=[10.0, 30.0],
        help="chunk lengths to compare with the whole-source encode (default 10 30; the spec's is 30)",
    )
    ap.add_argument(
        "--lead-gops",
        type=int,
        nargs="+",
        help="chunk_lead_gops values to measure: each chunk's encode starting this many GOPs before "
        "its cut, dropped in the join (default: 0, i.e. none, and the spec's)",
    )
    ap.add_argument("--rungs", nargs="+", help="ladder rungs to encode (default: all)")
    ap.add_argument("--sources", nargs="+", default=["clean", "noisy"], choices=["clean", "noisy"])
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    project = repo_project()
    spec = project.spec(SPEC_NAME)
    rungs = [r for r in spec.ladder if not args.rungs or r.name in args.rungs]
    leads = args.lead_gops or sorted({0, spec.chunk_lead_gops})
    if not rungs:
        raise SystemExit(f"no such rung; the ladder has {', '.join(r.name for r in spec.ladder)}")
    ffmpeg_version = ffmpeg_version_line()
    git_state = git_head()
    log(f"{ffmpeg_version}; library at {git_state}")
    sources = {}
    for kind in args.sources:
        src = cached_clip(kind, args.duration, kind == "noisy")
        sources[kind] = measure_source(kind, src, spec, rungs, args.chunk_s, leads)

    def worst(lead: int) -> float:
        """The largest mean penalty near the cuts over every source and rendition at `lead`."""
        return max(
            f["near_cuts"]["penalty_db"]
            for s in sources.values()
            for r in s["renditions"].values()
            for k, f in r.items()
            if k.startswith("chunk_s=") and k.endswith(f" lead={lead}")
        )

    by_lead = {lead: worst(lead) for lead in leads}
    shipped = by_lead.get(spec.chunk_lead_gops)
    results = {
        "ffmpeg_version": ffmpeg_version,
        "git": git_state,
        "settings_ffmpeg": project.settings.ffmpeg.model_dump(),
        "spec": SPEC_NAME,
        "near_s": NEAR_S,
        "goal": {
            "threshold_db": GOAL_DB,
            "shipped_chunk_lead_gops": spec.chunk_lead_gops,
            "worst_mean_penalty_near_cuts_db_by_lead": by_lead,
            "pass": None if shipped is None else shipped <= GOAL_DB,
        },
        "sources": sources,
        "bench_wall_s": round(time.monotonic() - t_start, 1),
    }
    RESULTS.write_text(json.dumps(results, indent=2))
    print_table(results)
    log(f"wrote {RESULTS.relative_to(ROOT)} (total {results['bench_wall_s']:.0f}s)")
    return 0


def print_table(r: dict) -> None:
    print(f"\n{r['ffmpeg_version']} | {r['git']}")
    print(
        f"PSNR-Y in dB against the source scaled to the rendition; 'near' = frames within "
        f"{r['near_s']:g} s of a cut; penalty = whole - chunked\n"
    )
    head = (
        f"{'source':6s} {'rung':5s} {'chunking':17s} {'cuts':>4s} {'kb/s w/c':>13s} "
        f"{'near: whole':>11s} {'chunked':>8s} {'penalty':>8s} {'before':>7s} {'after':>7s} "
        f"{'worst fr':>9s} {'max drop':>8s} {'all: penalty':>12s} {'SSIM near w/c':>16s}"
    )
    print(head)
    for kind, s in r["sources"].items():
        for rung, f in s["renditions"].items():
            for label, x in f.items():
                if not label.startswith("chunk_s="):
                    continue
                n, a = x["near_cuts"], x["all_frames"]
                print(
                    f"{kind:6s} {rung:5s} {label:17s} {len(s['cuts'][label]):4d} "
                    f"{f['video_kbps']['whole']:6.0f}/{f['video_kbps'][label]:<6.0f} "
                    f"{n['psnr_y_whole']:11.2f} {n['psnr_y_chunked']:8.2f} {n['penalty_db']:8.3f} "
                    f"{n['penalty_db_second_before']:7.3f} {n['penalty_db_second_after']:7.3f} "
                    f"{n['worst_frame']['psnr_y_chunked']:9.2f} {n['largest_drop']['db']:8.2f} "
                    f"{a['penalty_db']:12.3f} {n['ssim_y_whole']:8.4f}/{n['ssim_y_chunked']:.4f}"
                )
    g = r["goal"]
    print(f"\nGoal: mean penalty near the cuts <= {g['threshold_db']} dB for every rendition:")
    for lead, value in g["worst_mean_penalty_near_cuts_db_by_lead"].items():
        shipped = " (shipped)" if int(lead) == g["shipped_chunk_lead_gops"] else ""
        verdict = "PASS" if value <= g["threshold_db"] else "FAIL"
        print(f"  chunk_lead_gops {lead}{shipped}: worst {value:.3f} dB -> {verdict}")
    print()


if __name__ == "__main__":
    sys.exit(main())
