"""QC cost benchmark: what the default quality-control checks add to the pipeline's wall time.

The goal: the default checks add at most 10 % to the bench's pipeline wall time. For bench/ladder.py's
clean and noisy 1080p30 sources with audio (made and cached in bench/work/sources as ladder.py makes
them), in one invocation, measures wall and children-CPU (ffmpeg/ffprobe) seconds of:

  qc        the `pipeline` of bench/ladder.py: materialize_video(..., force=True) on a temp project
            with the shipped settings (resources/settings.yaml) and the shipped `vod` spec with its
            default `qc:` (the source_qc asset made in the encode step, its detectors riding on the
            encode's own decodes of the source; per rendition, in the encode step, keyframes by
            ffprobe and PSNR/SSIM on every 7th frame of one GOP in 5, one FFmpeg run per GOP, two
            at a time, after the renditions are made; package checks in hls);
  noqc      the same with every check off: the spec's `qc:` set to
            {renditions: {enabled: false}, source: {enabled: false}, package: {enabled: false}}.

Both share one persistent Dagster instance made from the shipped resources/dagster.yaml (a warm-up
run of each, on a short source, pays its one-time costs unmeasured). The variants alternate (qc,
noqc; then noqc, qc; ...) for --repeats rounds, so a host that drifts over a round favours
neither. Reported per source: each variant's wall and children CPU (median over rounds); the ratio
qc/noqc of wall taken round by round and its median, the headline ("default checks' cost, % of
pipeline wall"; the worst source counts); and the parts: the source_qc step's wall when it is a
step of its own (from its STEP_START/STEP_SUCCESS events; 0 by default: it is made in the encode
step), the wall the encode step spent scoring (the renditions' `quality.wall_s` in their
materialization metadata: the runs that scored them; renditions scored together share it, so its
distinct values, summed: lanes scored apart may overlap), and the encode and hls steps' walls in
both variants. `quality.wall_s` leaves out the keyframe probes; the encode step's wall, qc minus
noqc, holds everything. Prints a table, writes bench/qc_cost.json
(with every round's raw figures). Everything generated lives in bench/work/ (gitignored).

    .venv/bin/python bench/qc_cost.py                           # 60 s sources, 2 alternating rounds
    .venv/bin/python bench/qc_cost.py --duration 10 --repeats 1 # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, cast

from dagster import DagsterEventType, DagsterInstance

# bench/ladder.py owns the sources (and their cache), the project as shipped, the Dagster instance,
# how a run is measured and the log format.
from ladder import (
    ROOT,
    SPEC_NAME,
    WORK,
    cached_clip,
    ffmpeg_version_line,
    forced_run,
    git_head,
    local_instance,
    log,
    median,
    paired_ratios,
    repo_project,
    step_name,
)
from ladder import summarize as ladder_summary

from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.spec import PackageQc, PipelineSpec, QcSpec, RenditionQc, SourceQc

RESULTS = ROOT / "bench" / "qc_cost.json"
GOAL_PCT = 10.0  # the default checks' cost, % of the pipeline's wall
VARIANTS = ("qc", "noqc")
WARM_UP_S = 10.0  # length of the warm-up runs' source (capped at --duration)
PARTS = ("source_qc", "encode", "hls")  # the steps the checks run in


def without_qc(spec: PipelineSpec) -> PipelineSpec:
    """`spec` with every check off (the frozen model copied; no validation needed for this)."""
    off = QcSpec(
        renditions=RenditionQc(enabled=False),
        source=SourceQc(enabled=False),
        package=PackageQc(enabled=False),
    )
    return spec.model_copy(update={"qc": off})


def run_once(
    instance: DagsterInstance, src: Path, spec: PipelineSpec, tag: str, log_level: str
) -> dict:
    """One forced pipeline run of `src` with `spec`: wall and CPU, each step's wall, the scoring
    runs' walls; its directories removed after."""
    with forced_run(instance, src, tag, log_level, kind="qc_cost", spec=spec) as (result, rec):
        entries = instance.all_logs(result.run_id)
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    scoring: dict[str, float] = {}  # rendition -> quality.wall_s
    asset_walls: dict[str, float] = {}
    for entry in entries:
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        step = step_name(ev.step_key)
        if ev.event_type == DagsterEventType.STEP_START:
            starts[step] = entry.timestamp
        elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[step] = entry.timestamp
        elif ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            assert ev.asset_key is not None
            asset = ev.asset_key.path[-1]
            meta = {
                k: v.value for k, v in ev.step_materialization_data.materialization.metadata.items()
            }
            if meta["reused"] is not False:
                raise RuntimeError(f"{asset} was reused: the benchmark needs every stage to run")
            asset_walls[asset] = float(cast(float, meta["wall_s"]))
            quality = cast(Optional[dict[str, Any]], meta.get("quality"))
            if asset.startswith("rendition_") and quality:
                scoring[asset.removeprefix("rendition_")] = float(quality["wall_s"])
    steps = {s: round(ends[s] - starts[s], 3) for s in starts if s in ends}
    lanes = sorted(set(scoring.values()), reverse=True)  # renditions of one lane share a run
    rec.pop("started_epoch")
    rec.pop("ended_epoch")
    rec.update(
        steps=steps,
        asset_wall_s=asset_walls,
        quality_wall_s=scoring,
        scoring_runs_wall_s=lanes,
        scoring_wall_s=round(sum(lanes), 3),
    )
    return rec


def summarize(runs: list[dict]) -> dict:
    """Medians over rounds; a step missing from a run (source_qc without its checks) counts 0."""
    names = sorted({s for r in runs for s in r["steps"]})
    return {
        **ladder_summary(runs),
        "scoring_wall_s": median([r["scoring_wall_s"] for r in runs]),
        "steps_wall_s": {n: median([r["steps"].get(n, 0.0) for r in runs]) for n in names},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--duration", type=float, default=60.0, help="source length in seconds (default 60)"
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="alternating rounds of qc/noqc (default 2)"
    )
    ap.add_argument(
        "--log-level",
        default="INFO",
        help="Dagster log level of the pipeline runs (default INFO, as shipped)",
    )
    args = ap.parse_args(argv)
    for var in ("STORAGE_DIR", "WORK_DIR", "DELIVERY_DIR", "EVENTS_PATH", "WEBHOOK_URL"):
        os.environ.pop(f"MPEGFLOW_{var}", None)  # the temp project's directories, as in ladder.py
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    spec = repo_project().spec(SPEC_NAME)
    specs = {"qc": spec, "noqc": without_qc(spec)}
    ffmpeg_version = ffmpeg_version_line()
    git_state = git_head()
    if subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "mpegflow_dagster", "resources"],
        capture_output=True,
        text=True,
    ).stdout.strip():
        git_state += " (+ uncommitted changes in mpegflow_dagster/ or resources/)"
    log(
        f"{ffmpeg_version}; {os.cpu_count()} CPUs; library at {git_state}; "
        f"duration {args.duration:g}s x {args.repeats} round(s); qc {spec.qc.model_dump()}"
    )
    kinds = {"clean": False, "noisy": True}
    sources = {k: cached_clip(k, args.duration, noisy) for k, noisy in kinds.items()}

    home = WORK / "dagster_home_qc_cost"
    instance = local_instance(home)
    warm_up = cached_clip("clean", min(WARM_UP_S, args.duration), False)
    for what in VARIANTS:
        log(f"warm-up {what} run on {warm_up.relative_to(ROOT)} (not measured)")
        run_once(instance, warm_up, specs[what], f"warm-up-{what}", args.log_level)
    per_source: dict[str, dict] = {}
    for kind, src in sources.items():
        info = probe(src)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for rep in range(args.repeats):
            order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))
            for what in order:
                rec = run_once(instance, src, specs[what], f"{kind}-{what}-{rep}", args.log_level)
                runs[what].append(rec)
                st = rec["steps"]
                log(
                    f"{kind:5s} #{rep + 1} {what:4s} wall {rec['wall_s']:7.2f}s cpu {rec['cpu_s']:7.2f}s "
                    f"other-cpu {rec['other_cpu_s']:6.1f}s  "
                    + "  ".join(f"{p} {st[p]:.2f}s" for p in PARTS if p in st)
                    + f"  scoring {rec['scoring_wall_s']:.2f}s"
                )
        fig = {v: summarize(runs[v]) for v in VARIANTS}
        ratios = paired_ratios(runs["qc"], runs["noqc"])
        cpu_ratios = [
            round(q["cpu_s"] / n["cpu_s"], 3) for q, n in zip(runs["qc"], runs["noqc"], strict=True)
        ]
        ratio = median(ratios)
        per_source[kind] = {
            "source": str(src.relative_to(ROOT)),
            "source_bytes": src.stat().st_size,
            "duration_s": info.duration,
            **fig,
            "ratio_qc_over_noqc": ratio,
            "ratios_per_round": ratios,
            "cost_pct_of_wall": round((ratio - 1) * 100, 1),
            "cpu_ratio_qc_over_noqc": median(cpu_ratios),
            "cpu_ratios_per_round": cpu_ratios,
            "ratio_of_medians": round(fig["qc"]["wall_s"] / fig["noqc"]["wall_s"], 3),
        }
    instance.dispose()
    shutil.rmtree(home, ignore_errors=True)

    worst = max(s["cost_pct_of_wall"] for s in per_source.values())
    results = {
        "ffmpeg_version": ffmpeg_version,
        "cpus": os.cpu_count(),
        "settings_ffmpeg": repo_project().settings.ffmpeg.model_dump(),
        "git": git_state,
        "spec": SPEC_NAME,
        "qc_default": spec.qc.model_dump(),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "cost_pct_of_wall": worst,
        "goal": {"threshold": f"<= {GOAL_PCT:g} %", "value": worst, "pass": worst <= GOAL_PCT},
        "headline_rule": (
            "per source, the median over rounds of the qc run's wall over the same round's noqc "
            "run's, minus 1, in %; the worst source counts"
        ),
        "note_scoring_wall": (
            "scoring_wall_s: the sum of the distinct quality.wall_s of the renditions (one scoring "
            "FFmpeg run per lane; lanes may overlap, so the sum can exceed the wall they add); "
            "keyframe probes are not in it"
        ),
        "sources": per_source,
        "bench_wall_s": round(time.monotonic() - t_start, 1),
    }
    RESULTS.write_text(json.dumps(results, indent=2))
    print_table(results)
    log(f"wrote {RESULTS.relative_to(ROOT)} (total {results['bench_wall_s']:.0f}s)")
    return 0


def print_table(r: dict) -> None:
    print()
    print(
        f"{r['ffmpeg_version']} | {r['cpus']} CPUs | {r['duration_s']:g}s 1080p30 sources | "
        f"spec {r['spec']} | median of {r['repeats']} alternating round(s)"
    )
    print(
        f"\n{'source':6s} {'run':5s} {'wall s':>8s} {'CPU s':>8s} {'CPU/wall':>8s} {'other CPU s':>11s} "
        f"{'source_qc s':>11s} {'encode s':>8s} {'scoring s':>9s} {'hls s':>6s}"
    )
    for kind, s in r["sources"].items():
        for what in VARIANTS:
            f = s[what]
            st = f["steps_wall_s"]
            print(
                f"{kind:6s} {what:5s} {f['wall_s']:8.2f} {f['cpu_s']:8.2f} {f['cpu_s'] / f['wall_s']:8.2f} "
                f"{f['other_cpu_s']:11.2f} {st.get('source_qc', 0.0):11.2f} {st.get('encode', 0.0):8.2f} "
                f"{f['scoring_wall_s']:9.2f} {st.get('hls', 0.0):6.2f}"
            )
        rounds = ", ".join(f"{x:.3f}" for x in s["ratios_per_round"])
        print(
            f"{kind:6s} default checks' cost: {s['cost_pct_of_wall']:+.1f} % of pipeline wall "
            f"(qc/noqc {s['ratio_qc_over_noqc']:.3f}, median of rounds {rounds}; ratio of medians "
            f"{s['ratio_of_medians']:.3f}); CPU qc/noqc {s['cpu_ratio_qc_over_noqc']:.3f}"
        )
        lanes = ", ".join(
            "+".join(f"{x:.2f}" for x in run["scoring_runs_wall_s"]) for run in s["qc"]["runs"]
        )
        print(f"{'':6s} scoring runs' wall per round (one per lane): {lanes}")
    g = r["goal"]
    print(
        f"\nGoal: default checks' cost {g['value']:+.1f} % of pipeline wall (worst source) "
        f"{g['threshold']}: {'PASS' if g['pass'] else 'FAIL'}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
