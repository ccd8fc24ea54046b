"""Ladder benchmark (issue #6): the default VOD pipeline through Dagster against hand-written scripts.

For a clean and a noisy (hard to encode) 1080p30 source with audio, in one invocation and
alternating (naive, best, chunked, pipeline; then naive, pipeline, chunked, best; ...), measures
wall and children-CPU seconds of:

  naive     every output by its own ffmpeg run, one after another: the 4 ladder renditions,
            HLS packaging of each, thumbnails, sprite.
  best      the fastest hand-written script for the same outputs: every variant below is
            measured once on short sources, and the fastest is run at full length beside
            `chunked` (the pipeline's own layout by hand, with its one x264 thread, so the same
            bytes: the "same-bytes" baseline); the faster of the two at full length counts.
  pipeline  materialize_video(..., force=True) on a temp project with the shipped settings
            (resources/settings.yaml) and one persistent Dagster instance made from the shipped
            resources/dagster.yaml, shared by its runs; the source has no caption
            sidecar, so the captions stage skips.

All FFmpeg argv come from mpegflow_dagster.media.commands, so scripts and pipeline do the same
FFmpeg work. A ratio is taken round by round (the pipeline's run over the same round's script run)
and reported as the median over rounds, so a host that drifts between rounds does not pit one
round's pipeline against another round's script. Prints a table and writes bench/results.json.
Everything generated lives in bench/work/ (gitignored); sources are cached there.

    make bench                                     # 60 s sources, 3 alternating repeats
    .venv/bin/python bench/ladder.py --duration 10 # quick smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / "work"
RESULTS = BENCH / "results.json"

# Imported up front so one run measures one version of the library, even if files change meanwhile.
from dagster import DagsterEventType, DagsterInstance  # noqa: E402

from mpegflow_dagster.media import commands  # noqa: E402
from mpegflow_dagster.media.probe import MediaInfo, probe  # noqa: E402
from mpegflow_dagster.media.synth import make_clip  # noqa: E402
from mpegflow_dagster.project import Project  # noqa: E402
from mpegflow_dagster.runs import materialize_video  # noqa: E402
from mpegflow_dagster.spec import PipelineSpec  # noqa: E402
from mpegflow_dagster.stages import encode  # noqa: E402

FFMPEG = ["ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error"]
SPEC_NAME = "vod"
SCRIPT_THREADS = 0  # -threads 0: FFmpeg/x264 decide
GOALS = {
    "ratio_vs_best": 1.05,
    "ratio_vs_best_same_bytes": 1.05,
    "ratio_vs_naive": 0.85,
    "overhead_s_per_stage": 0.3,
    "python_peak_rss_mb": 300.0,
    "python_peak_rss_mb_2gb_ingest": 300.0,
}
TWO_GB = 2 * 1024**3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mb(kb: float) -> float:
    return round(kb / 1024.0, 1)  # ru_maxrss is in KiB on Linux


# -- project / sources ----------------------------------------------------------------------------

_REPO: list[Project] = []


def ffmpeg_version_line() -> str:
    """The first line of `ffmpeg -version`: what every figure was measured with."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0]


def git_head() -> str:
    """The library's commit, `<short hash> <subject>`."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    return out.stdout.strip()


def repo_project() -> Project:
    """resources/ as it was when the benchmark started (loaded once: the tree may change under a long run)."""
    if not _REPO:
        _REPO.append(Project.load(ROOT))
    return _REPO[0]


def bench_project(base: Path) -> Project:
    """The repository's specs and resources/settings.yaml as shipped, with every directory under `base`."""
    repo = repo_project()
    settings = repo.settings.model_copy(
        update={
            "storage_dir": str(base / "storage"),
            "work_dir": str(base / "work"),
            "delivery_dir": str(base / "delivery"),
            "events_path": str(base / "events.jsonl"),
            "webhook_url": None,
        }
    )
    return Project(root=ROOT, specs=repo.specs, settings=settings)


def cached_clip(name: str, duration_s: float, noisy: bool) -> Path:
    out = WORK / "sources" / f"{name}-{duration_s:g}s.mp4"
    if not out.is_file():
        t0 = time.monotonic()
        tmp = out.with_name(out.stem + ".part.mp4")
        make_clip(tmp, duration_s=duration_s, width=1920, height=1080, fps=30, noisy=noisy)
        tmp.rename(out)
        log(
            f"generated {out.relative_to(ROOT)} ({out.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t0:.0f}s"
        )
    return out


def big_source() -> Path:
    """A >= 2 GiB H.264/AAC MP4: a 4 s lossless (-qp 0) noisy 1080p chunk, stream-copied in a loop."""
    out = WORK / "sources" / "big-2gb.mp4"
    if out.is_file() and out.stat().st_size >= TWO_GB:
        return out
    t0 = time.monotonic()
    chunk = WORK / "sources" / "big-chunk.mp4"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    if not chunk.is_file():
        tmp = chunk.with_name("big-chunk.part.mp4")
        subprocess.run(
            FFMPEG
            + [
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1920x1080:rate=30:duration=4",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000:duration=4",
                "-vf",
                "noise=alls=40:allf=t+u",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-qp",
                "0",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "30",
                "-c:a",
                "aac",
                "-b:a",
                "128k",
                "-f",
                "mp4",
                str(tmp),
            ],
            check=True,
        )
        tmp.rename(chunk)
    loops = math.ceil(TWO_GB * 1.02 / chunk.stat().st_size)
    tmp = out.with_name("big-2gb.part.mp4")
    subprocess.run(
        FFMPEG
        + [
            "-stream_loop",
            str(loops - 1),
            "-i",
            str(chunk),
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "mp4",
            str(tmp),
        ],
        check=True,
    )
    tmp.rename(out)
    log(
        f"generated {out.relative_to(ROOT)} ({out.stat().st_size / 2**30:.2f} GiB) in {time.monotonic() - t0:.0f}s"
    )
    return out


# -- the scripts' FFmpeg work, from the same argv builders the pipeline uses ------------------------


class Plan:
    """Every FFmpeg argv the pipeline's stages would run for `src`, with outputs under `out`."""

    def __init__(
        self, spec: PipelineSpec, src: Path, info: MediaInfo, out: Path, threads: int
    ) -> None:
        self.spec, self.src, self.info, self.out, self.threads = spec, src, info, out, threads
        video = info.video
        assert video is not None and video.height
        self.encodes: dict[str, list[str]] = {}
        self.outputs: dict[str, commands.VideoOutput] = {}
        self.area: dict[str, float] = {}
        cfg = spec.thumbnails
        self.frames = out / "thumbnails" / "frames"
        for rung in spec.ladder:  # exactly as the pipeline's stages build them
            enc = encode.video_output(spec, rung, info)
            self.outputs[rung.name] = enc
            self.encodes[rung.name] = commands.encode_rendition_args(
                src, self.rendition(rung.name), enc, threads=threads
            )
            self.area[rung.name] = enc.height * enc.height * 16 / 9
        self.thumbnail_output = (
            self.frames,
            commands.ThumbnailOutput(cfg.interval_s, cfg.width, cfg.quality),
        )
        self.thumbs = commands.encode_ladder_args(
            src, {}, threads=threads, thumbnails=self.thumbnail_output
        )

    def prepare(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.frames.mkdir(parents=True)
        for name in self.encodes:
            (self.out / "hls" / name).mkdir(parents=True)

    def rendition(self, name: str) -> Path:
        return self.out / f"{name}.mp4"

    def hls(self, name: str) -> list[str]:
        return commands.hls_variant_args(
            self.rendition(name),
            self.out / "hls" / name,
            segment_s=self.spec.hls.segment_s,
            segment_type=self.spec.hls.segment_type,
        )

    def sprite(self) -> list[str]:
        count = len(list(self.frames.glob("*.jpg")))
        if count == 0:
            raise RuntimeError("no thumbnails were written")
        cfg = self.spec.thumbnails
        columns = min(cfg.sprite_columns, count)
        return commands.sprite_args(
            self.frames,
            self.out / "thumbnails" / "sprite.jpg",
            columns=columns,
            rows=math.ceil(count / columns),
            tile_width=cfg.sprite_tile_width,
            quality=cfg.quality,
        )

    def rendition_sha(self) -> dict[str, str]:
        return {n: hashlib.sha256(self.rendition(n).read_bytes()).hexdigest() for n in self.encodes}


_LABEL = re.compile(r"\[([^\]]+)\]")


def merge_single_input(argvs: Sequence[list[str]]) -> list[str]:
    """One ffmpeg decoding the shared input once, with a split feeding each argv's filter chain and
    each argv's output options unchanged: `pre -i SRC -filter_complex G -map .. OPTS OUT` each."""
    pre = src = None
    graphs, outputs = [], []
    for k, argv in enumerate(argvs):
        i = argv.index("-i")
        if pre is None:
            pre, src = argv[:i], argv[i + 1]
        elif argv[:i] != pre or argv[i + 1] != src:
            raise ValueError("argv with different inputs cannot be merged")
        rest = argv[i + 2 : -1]
        graph, maps, opts = None, [], []
        j = 0
        while j < len(rest):
            if rest[j] == "-filter_complex":
                graph = rest[j + 1]
            elif rest[j] == "-map":
                maps.append(rest[j + 1])
            else:
                opts.extend(rest[j : j + 2])
            j += 2
        if graph is None or "[0:v:0]" not in graph:
            raise ValueError(f"unexpected argv layout (no filter_complex on 0:v:0): {argv}")
        graphs.append(
            _LABEL.sub(
                lambda m, k=k: f"[in{k}]" if m.group(1) == "0:v:0" else f"[k{k}{m.group(1)}]", graph
            )
        )
        for m in maps:
            outputs += ["-map", f"[k{k}{m[1:-1]}]" if m.startswith("[") else m]
        outputs += opts + [argv[-1]]
    split = f"[0:v:0]split={len(argvs)}" + "".join(f"[in{k}]" for k in range(len(argvs)))
    return list(pre) + ["-i", src, "-filter_complex", ";".join([split, *graphs])] + outputs


def run_all(argvs: Sequence[list[str]], parallel: bool = False) -> None:
    """Run ffmpeg for each argv, one after another or all at once; raise on any failure."""
    procs = []
    for argv in argvs:
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            FFMPEG + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        procs.append((proc, err, argv))
        if not parallel:
            _check(proc, err, argv)
    if parallel:
        for proc, err, argv in procs:
            _check(proc, err, argv)


def _check(proc: subprocess.Popen, err, argv: list[str]) -> None:
    if proc.wait() != 0:
        err.seek(0)
        raise RuntimeError(
            f"ffmpeg failed ({proc.returncode}): {' '.join(argv)}\n{err.read().decode(errors='replace')[-2000:]}"
        )
    err.close()


def two_groups(plan: Plan) -> list[list[str]]:
    """The rungs in the two groups the pipeline's lanes use (balanced pixel load, heaviest first)."""
    return [
        [r.name for r in group] for group in encode._lanes(plan.spec, list(plan.spec.ladder), 2)
    ]


def naive(plan: Plan) -> None:
    run_all([plan.encodes[n] for n in plan.encodes])
    run_all([plan.hls(n) for n in plan.encodes])
    run_all([plan.thumbs])
    run_all([plan.sprite()])


def v_parallel(plan: Plan) -> None:
    """(a) the 4 encodes and the thumbnails as 5 concurrent processes, then HLS x4 and the sprite concurrently."""
    run_all(
        [plan.encodes[n] for n in sorted(plan.encodes, key=lambda n: -plan.area[n])]
        + [plan.thumbs],
        parallel=True,
    )
    run_all([plan.hls(n) for n in plan.encodes] + [plan.sprite()], parallel=True)


def v_split(plan: Plan) -> None:
    """(b) one ffmpeg decoding once, split to the 4 scaled encodes; the rest as in the naive script."""
    run_all([merge_single_input([plan.encodes[n] for n in plan.encodes])])
    run_all([plan.hls(n) for n in plan.encodes])
    run_all([plan.thumbs])
    run_all([plan.sprite()])


def v_split_thumbs(plan: Plan) -> None:
    """(c1) one ffmpeg decoding once for the 4 encodes and the thumbnails; then HLS x4 + sprite concurrently."""
    run_all([merge_single_input([plan.encodes[n] for n in plan.encodes] + [plan.thumbs])])
    run_all([plan.hls(n) for n in plan.encodes] + [plan.sprite()], parallel=True)


def v_split_2proc(plan: Plan) -> None:
    """(c2) two concurrent split processes of balanced pixel load (one per core), thumbnails in the lighter;
    then HLS x4 + sprite concurrently."""
    big, small = two_groups(plan)
    run_all(
        [
            merge_single_input([plan.encodes[n] for n in big]),
            merge_single_input([plan.encodes[n] for n in small] + [plan.thumbs]),
        ],
        parallel=True,
    )
    run_all([plan.hls(n) for n in plan.encodes] + [plan.sprite()], parallel=True)


def v_chunked(plan: Plan) -> None:
    """(d) what the pipeline's shared encode does, by hand: a source long enough for the spec's
    chunk_s is cut in time at common keyframes, one process per chunk encodes every output of its
    part (video only), the audio is encoded once beside them, and each rendition's chunks are joined
    with its audio by stream copy; a shorter source gets the two lanes of (c2). Then HLS x4 + sprite."""
    spans = encode.encode_spans(plan.info, plan.spec)
    if len(spans) == 1:
        return v_split_2proc(plan)
    with tempfile.TemporaryDirectory(prefix="bench-chunks-") as d:
        parts = Path(d)
        chunks = [
            commands.encode_ladder_args(
                plan.src,
                {parts / f"{n}-{i}.mp4": plan.outputs[n] for n in plan.encodes},
                threads=plan.threads,
                thumbnails=plan.thumbnail_output,
                span=span,
            )
            for i, span in enumerate(spans)
        ]
        audio = (
            {n: parts / f"audio-{n}.m4a" for n in plan.encodes}
            if plan.info.audio is not None
            else {}
        )
        run_all(
            chunks
            + (
                [commands.audio_args(plan.src, {audio[n]: plan.outputs[n].audio for n in audio})]
                if audio
                else []
            ),
            parallel=True,
        )
        joins = []
        for n in plan.encodes:
            listing = parts / f"{n}.ffconcat"
            listing.write_text(
                commands.concat_listing([parts / f"{n}-{i}.mp4" for i in range(len(spans))], spans)
            )
            joins.append(commands.join_args(listing, audio.get(n), plan.rendition(n)))
        run_all(joins, parallel=True)
    run_all([plan.hls(n) for n in plan.encodes] + [plan.sprite()], parallel=True)


def v_parallel_thumbs_last(plan: Plan) -> None:
    """(c3) the 4 encodes concurrently; thumbnails start when the first encode ends (then HLS as ready)."""
    order = sorted(plan.encodes, key=lambda n: -plan.area[n])
    procs = {
        n: subprocess.Popen(
            FFMPEG + plan.encodes[n],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in order
    }
    extra: list[subprocess.Popen] = []
    thumbs_started = False
    pending = dict(procs)
    while pending:
        pid, status = os.wait()
        name = next((n for n, p in pending.items() if p.pid == pid), None)
        if name is None:
            for p in extra:
                if p.pid == pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
            continue
        p = pending.pop(name)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"encode {name} failed")
        extra.append(
            subprocess.Popen(
                FFMPEG + plan.hls(name), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
        )
        if not thumbs_started:
            thumbs_started = True
            extra.append(
                subprocess.Popen(
                    FFMPEG + plan.thumbs, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
            )
    for p in extra:
        if p.wait() != 0:
            raise RuntimeError("an HLS or thumbnails run failed")
    run_all([plan.sprite()])


VARIANTS: dict[str, Callable[[Plan], None]] = {
    "parallel": v_parallel,
    "split": v_split,
    "split+thumbs": v_split_thumbs,
    "split-2proc": v_split_2proc,
    "parallel-staggered": v_parallel_thumbs_last,
    "chunked": v_chunked,
}
# The script that makes the pipeline's very bytes (run with the pipeline's one x264 thread per encoder).
SAME_BYTES_VARIANT = "chunked"


# -- measuring ----------------------------------------------------------------------------------


def cpu(ru) -> float:
    return ru.ru_utime + ru.ru_stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (user+nice+system+irq+softirq+steal)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return float("nan")
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def measured(into: dict):
    """Wall, children CPU (ffmpeg/ffprobe) and this process's CPU of the block; `other_cpu_s` is CPU the
    rest of the machine used meanwhile (other users' jobs): high values mean the figure is contaminated.
    Dirty pages left by whatever ran before (the previous run's outputs, the copied-in source) are
    written back first, so no run pays for its predecessor's writeback."""
    os.sync()
    c0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    m0, e0, t0 = machine_busy_s(), time.time(), time.monotonic()
    yield
    t1, m1 = time.monotonic(), machine_busy_s()
    c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    ours = (cpu(c1) - cpu(c0)) + (cpu(s1) - cpu(s0))
    into.update(
        wall_s=round(t1 - t0, 3),
        cpu_s=round(cpu(c1) - cpu(c0), 3),
        python_cpu_s=round(cpu(s1) - cpu(s0), 3),
        other_cpu_s=round(max(0.0, m1 - m0 - ours), 2),
        started_epoch=e0,
        ended_epoch=e0 + (t1 - t0),
    )


def run_script(fn: Callable[[Plan], None], plan: Plan) -> dict:
    plan.prepare()
    rec: dict = {}
    with measured(rec):
        fn(plan)
    rec["rendition_sha256"] = plan.rendition_sha()
    return rec


@contextlib.contextmanager
def stderr_to(path: Path):
    """Dagster's console log (INFO, as `mpegflow run` ships) goes to a file, at the fd level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def union_length(
    intervals: list[tuple[float, float]], lo: float = -math.inf, hi: float = math.inf
) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((max(s, lo), min(e, hi)) for s, e in intervals):
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def step_name(step_key: str) -> str:
    """`vod__ingest` -> `ingest`; `vod__hls.vod__package_hls` -> `hls`."""
    return step_key.split("__", 1)[-1].split(".")[0]


@contextlib.contextmanager
def forced_run(
    instance: DagsterInstance,
    src: Path,
    tag: str,
    log_level: str,
    kind: str = "pipeline",
    spec: Optional[PipelineSpec] = None,
) -> Iterator[tuple[Any, dict]]:
    """A forced run of the pipeline (default: the shipped spec) on a copy of `src` in a project of
    its own under WORK/<kind>/<tag>, removed afterwards: its result and its measured figures."""
    base = WORK / kind / tag
    shutil.rmtree(base, ignore_errors=True)
    incoming = base / "incoming"
    incoming.mkdir(parents=True)
    source = incoming / src.name  # no caption sidecar beside it: the captions stage skips
    shutil.copyfile(src, source)
    project = bench_project(base)
    logfile = WORK / "logs" / f"{kind}-{tag}.log"
    rec: dict = {}
    try:
        with stderr_to(logfile), measured(rec):
            result = materialize_video(
                project,
                spec or project.spec(SPEC_NAME),
                tag,
                instance=instance,
                source=source,
                force=True,
                log_level=log_level,
            )
        if not result.success:
            raise RuntimeError(f"pipeline run failed; see {logfile}")
        yield result, rec
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_pipeline(instance: DagsterInstance, src: Path, tag: str, log_level: str) -> dict:
    with forced_run(instance, src, tag, log_level) as (result, rec):
        entries = instance.all_logs(result.run_id)
    steps: dict[str, dict] = {}
    runs: set[tuple[float, float]] = set()
    shas: dict[str, str] = {}
    materialized: list[str] = []
    for entry in entries:
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        step = step_name(ev.step_key)
        st = steps.setdefault(step, {"ffmpeg_runs": set(), "assets": []})
        if ev.event_type == DagsterEventType.STEP_START:
            st["start"] = entry.timestamp
        elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            st["end"] = entry.timestamp
        elif ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            asset = ev.asset_key.path[-1]
            meta = ev.step_materialization_data.materialization.metadata
            if meta["reused"].value is not False:
                raise RuntimeError(f"{asset} was reused: the benchmark needs every stage to run")
            prov = meta["provenance"].value
            materialized.append(asset)
            st["assets"].append(asset)
            got = {(round(a, 3), round(a + w, 3)) for a, w in prov["ffmpeg_runs"]}
            st["ffmpeg_runs"] |= (
                got  # a shared run (one decode, several outputs) is in each output's record
            )
            runs |= got
            if asset.startswith("rendition_"):
                shas[asset.removeprefix("rendition_")] = meta["sha256"].value
    started = {n: s for n, s in steps.items() if "start" in s}
    # stages = assets materialized + steps that ran and produced nothing (captions without a sidecar),
    # so the count does not depend on how assets are grouped into steps
    n_stages = len(set(materialized)) + sum(1 for s in started.values() if not s["assets"])
    lo, hi = rec["started_epoch"], rec["ended_epoch"]
    covered = union_length(list(runs), lo, hi)
    in_steps = union_length(
        [(s["start"], s["end"]) for s in started.values() if "end" in s], lo, hi
    )
    rec.update(
        stages_run=n_stages,
        steps_run=len(started),
        assets_materialized=len(set(materialized)),
        ffmpeg_covered_s=round(covered, 3),
        overhead_s=round(rec["wall_s"] - covered, 3),
        overhead_s_per_stage=round((rec["wall_s"] - covered) / max(1, n_stages), 3),
        outside_steps_s=round(rec["wall_s"] - in_steps, 3),
        rendition_sha256=shas,
        steps={
            n: {
                "wall_s": round(s["end"] - s["start"], 3) if "end" in s and "start" in s else None,
                "ffmpeg_wall_s": round(union_length(list(s["ffmpeg_runs"])), 3),
                "ffmpeg_runs": len(s["ffmpeg_runs"]),
                "assets": s["assets"],
                "start_offset_s": round(s["start"] - lo, 3) if "start" in s else None,
            }
            for n, s in steps.items()
        },
    )
    return rec


def local_instance(home: Path) -> DagsterInstance:
    """A new persistent Dagster instance in `home` with the config we ship (resources/dagster.yaml,
    as `make install` writes it into .dagster_home)."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    template = (ROOT / "resources" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(template.replace("@DAGSTER_HOME@", str(home.resolve())))
    return DagsterInstance.local_temp(tempdir=str(home))


def rss_child(src: str, base: str) -> None:
    """--rss-child: ingest+probe of `src` in this fresh process; print its own peak RSS as JSON."""
    project = bench_project(Path(base))
    instance = local_instance(Path(base) / "dagster_home")
    t0 = time.monotonic()
    result = materialize_video(
        project,
        project.spec(SPEC_NAME),
        "big",
        instance=instance,
        source=Path(src),
        stages=["ingest", "probe"],
        force=True,
        log_level="INFO",
    )
    wall = time.monotonic() - t0
    instance.dispose()
    # Not ru_maxrss: Linux carries the parent's RSS at fork (vfork/posix_spawn) into the child's ru_maxrss
    # across exec, so it would report the benchmark process's peak. VmHWM is this process's own.
    hwm = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    print(
        json.dumps(
            {
                "success": result.success,
                "wall_s": round(wall, 3),
                "peak_rss_mb": mb(hwm),
                "ru_maxrss_mb": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            }
        )
    )


def measure_big_ingest() -> dict:
    src = big_source()
    base = WORK / "pipeline" / "big-ingest"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    with open(WORK / "logs" / "pipeline-big-ingest.log", "wb") as err:
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(src), str(base)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=True,
        )
    shutil.rmtree(base, ignore_errors=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["success"]:
        raise RuntimeError(
            "ingest+probe of the 2 GB source failed; see bench/work/logs/pipeline-big-ingest.log"
        )
    out["source_bytes"] = src.stat().st_size
    return out


# -- main ---------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def paired_ratios(pipeline: list[dict], script: list[dict]) -> list[float]:
    """Pipeline wall over the script's, round by round (run i of each list is round i)."""
    return [round(p["wall_s"] / s["wall_s"], 3) for p, s in zip(pipeline, script, strict=True)]


def summarize(runs: list[dict]) -> dict:
    return {
        "wall_s": median([r["wall_s"] for r in runs]),
        "wall_min_s": min(r["wall_s"] for r in runs),
        "cpu_s": median([r["cpu_s"] for r in runs]),
        "python_cpu_s": median([r["python_cpu_s"] for r in runs]),
        "other_cpu_s": median([r["other_cpu_s"] for r in runs]),
        "runs": runs,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--duration", type=float, default=60.0, help="source length in seconds (default 60)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternating repeats of naive/best/pipeline (default 1)",
    )
    ap.add_argument(
        "--select-duration",
        type=float,
        default=10.0,
        help="source length for picking the best script variant (default 10, capped at --duration)",
    )
    ap.add_argument(
        "--best", choices=sorted(VARIANTS), help="skip the selection and use this variant as best"
    )
    ap.add_argument(
        "--skip-2gb", action="store_true", help="skip the 2 GB ingest+probe RSS measurement"
    )
    ap.add_argument(
        "--log-level",
        default="INFO",
        help="Dagster log level of the pipeline runs (default INFO, as shipped)",
    )
    ap.add_argument(
        "--only-2gb",
        action="store_true",
        help="only re-measure the 2 GB ingest+probe RSS and update it in bench/results.json",
    )
    ap.add_argument("--rss-child", nargs=2, metavar=("SRC", "BASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0

    if args.only_2gb:
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        big = measure_big_ingest()
        results = json.loads(RESULTS.read_text())
        results["big_ingest"] = big
        results["python_peak_rss_mb_2gb_ingest"] = big["peak_rss_mb"]
        g = results["goals"]["python_peak_rss_mb_2gb_ingest"]
        g.update(
            value=big["peak_rss_mb"],
            **{"pass": big["peak_rss_mb"] <= GOALS["python_peak_rss_mb_2gb_ingest"]},
        )
        RESULTS.write_text(json.dumps(results, indent=2))
        print(json.dumps(big))
        return 0
    for var in (
        "MPEGFLOW_STORAGE_DIR",
        "MPEGFLOW_WORK_DIR",
        "MPEGFLOW_DELIVERY_DIR",
        "MPEGFLOW_EVENTS_PATH",
        "MPEGFLOW_WEBHOOK_URL",
    ):
        os.environ.pop(var, None)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    project = repo_project()
    spec = project.spec(SPEC_NAME)
    # The scripts leave threading to FFmpeg, as a hand-written script does: x264's own frame
    # threads are the fastest choice for one encode at a time. The pipeline runs as shipped.
    threads = SCRIPT_THREADS
    same_threads = (
        project.settings.ffmpeg.threads
    )  # the pipeline's x264 threads: what its bytes depend on
    ffmpeg_version = ffmpeg_version_line()
    log(
        f"{ffmpeg_version}; {os.cpu_count()} CPUs; threads={threads}; ladder "
        f"{', '.join(r.name for r in spec.ladder)}; duration {args.duration:g}s x {args.repeats} repeat(s)"
    )

    git_state = git_head()
    if subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "mpegflow_dagster", "resources"],
        capture_output=True,
        text=True,
    ).stdout.strip():
        git_state += " (+ uncommitted changes in mpegflow_dagster/ or resources/)"
    log(f"library at {git_state}; ffmpeg settings {project.settings.ffmpeg.model_dump()}")
    kinds = {"clean": False, "noisy": True}
    sources = {k: cached_clip(k, args.duration, noisy) for k, noisy in kinds.items()}

    # 1. pick the best hand-written script on short sources (each variant once per source)
    selection: dict[str, dict] = {}
    if args.best:
        best_name = args.best
    else:
        sel_d = min(args.select_duration, args.duration)
        log(f"measuring {len(VARIANTS)} script variants (+ naive) once each on {sel_d:g}s sources")
        for kind, noisy in kinds.items():
            short = cached_clip(kind, sel_d, noisy)
            info = probe(short)
            ref = run_script(naive, Plan(spec, short, info, WORK / "out" / "select-naive", threads))
            selection.setdefault("naive", {})[kind] = {
                k: ref[k] for k in ("wall_s", "cpu_s", "other_cpu_s")
            }
            for name, fn in VARIANTS.items():
                rec = run_script(
                    fn, Plan(spec, short, info, WORK / "out" / f"select-{name}", threads)
                )
                selection.setdefault(name, {})[kind] = {
                    "wall_s": rec["wall_s"],
                    "cpu_s": rec["cpu_s"],
                    "other_cpu_s": rec["other_cpu_s"],
                }
                log(
                    f"  {kind:5s} {name:20s} wall {rec['wall_s']:7.2f}s cpu {rec['cpu_s']:7.2f}s "
                    f"(naive {ref['wall_s']:.2f}s) other-cpu {rec['other_cpu_s']:.1f}s"
                )
        for per in selection.values():
            per["total_wall_s"] = round(sum(v["wall_s"] for v in per.values()), 3)
        best_name = min(VARIANTS, key=lambda n: selection[n]["total_wall_s"])
        log(f"best script variant: {best_name}")

    # 2. alternating naive / best / pipeline on each full-length source. The pipeline runs share one
    # Dagster instance, as every `mpegflow run` shares .dagster_home: the cost measured per video is
    # the steady state, not the one-time creation of the instance's databases (a warm-up run pays it).
    per_source: dict[str, dict] = {}
    home = WORK / "dagster_home"
    instance = local_instance(home)
    warm_up = cached_clip("clean", min(args.select_duration, args.duration), False)
    log(f"warm-up pipeline run on {warm_up.relative_to(ROOT)} (not measured)")
    run_pipeline(instance, warm_up, "warm-up", args.log_level)
    for kind, src in sources.items():
        info = probe(src)
        runs: dict[str, list[dict]] = {
            "naive": [],
            "best": [],
            "best_same_bytes": [],
            "pipeline": [],
        }
        for rep in range(args.repeats):
            # Every other round the pipeline and the scripts swap places (the naive script stays
            # first): a host that slows down or speeds up over a round favours neither side.
            order = list(runs) if rep % 2 == 0 else ["naive", *reversed(list(runs)[1:])]
            for what in order:
                if what == "pipeline":
                    rec = run_pipeline(instance, src, f"{kind}-{rep}", args.log_level)
                elif what == "best_same_bytes":
                    rec = run_script(
                        VARIANTS[SAME_BYTES_VARIANT],
                        Plan(spec, src, info, WORK / "out" / what, same_threads),
                    )
                else:
                    fn = naive if what == "naive" else VARIANTS[best_name]
                    rec = run_script(fn, Plan(spec, src, info, WORK / "out" / what, threads))
                runs[what].append(rec)
                log(
                    f"{kind:5s} #{rep + 1} {what:15s} wall {rec['wall_s']:7.2f}s cpu {rec['cpu_s']:7.2f}s other-cpu {rec['other_cpu_s']:6.1f}s"
                    + (
                        f"  overhead {rec['overhead_s_per_stage']:.3f}s/stage"
                        if what == "pipeline"
                        else ""
                    )
                )
        fig = {k: summarize(v) for k, v in runs.items()}
        pipeline_shas = [r["rendition_sha256"] for r in runs["pipeline"]]
        p = fig["pipeline"]
        # the best script is the faster of the selected variant and the same-bytes script, at full length
        best_script = min(("best", "best_same_bytes"), key=lambda k: fig[k]["wall_s"])
        per_round = {
            k: paired_ratios(runs["pipeline"], runs[v])
            for k, v in (
                ("vs_best", best_script),
                ("vs_naive", "naive"),
                ("vs_best_same_bytes", "best_same_bytes"),
            )
        }
        per_source[kind] = {
            "source": str(src.relative_to(ROOT)),
            "source_bytes": src.stat().st_size,
            "duration_s": info.duration,
            **fig,
            "best_script": best_script,
            # paired by round (see the module docstring); the ratio of medians is kept beside
            "ratio_vs_best": median(per_round["vs_best"]),
            "ratio_vs_naive": median(per_round["vs_naive"]),
            "best_same_bytes_variant": SAME_BYTES_VARIANT,
            "ratio_vs_best_same_bytes": median(per_round["vs_best_same_bytes"]),
            "ratios_per_round": per_round,
            "ratio_of_medians_vs_best": round(p["wall_s"] / fig[best_script]["wall_s"], 3),
            "same_bytes_script_matches_pipeline": all(
                r["rendition_sha256"] == pipeline_shas[0] for r in runs["best_same_bytes"]
            ),
            "cpu_ratio_vs_best_variant": round(p["cpu_s"] / fig["best"]["cpu_s"], 3),
            "overhead_s_per_stage": median([r["overhead_s_per_stage"] for r in runs["pipeline"]]),
            # the scripts' x264 threads do not give the same bytes twice; the pipeline's should
            "pipeline_repeats_identical": all(x == pipeline_shas[0] for x in pipeline_shas)
            if len(pipeline_shas) > 1
            else None,
        }
    instance.dispose()
    shutil.rmtree(home, ignore_errors=True)
    rss_main = mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    big = None
    if not args.skip_2gb:
        log("measuring Python peak RSS of ingest+probe of a ~2 GB source (fresh subprocess)")
        big = measure_big_ingest()

    # 3. figures, goals, table
    headline = {
        "ratio_vs_best": max(s["ratio_vs_best"] for s in per_source.values()),
        "ratio_vs_naive": max(s["ratio_vs_naive"] for s in per_source.values()),
        "ratio_vs_best_same_bytes": max(s["ratio_vs_best_same_bytes"] for s in per_source.values()),
        "overhead_s_per_stage": max(s["overhead_s_per_stage"] for s in per_source.values()),
        "python_peak_rss_mb": rss_main,
        "python_peak_rss_mb_2gb_ingest": big["peak_rss_mb"] if big else None,
    }
    goals = {
        k: {
            "threshold": f"<= {v:g}",
            "value": headline[k],
            "pass": None if headline[k] is None else headline[k] <= v,
        }
        for k, v in GOALS.items()
    }
    results = {
        "ffmpeg_version": ffmpeg_version,
        "cpus": os.cpu_count(),
        "threads": threads,
        "settings_ffmpeg": project.settings.ffmpeg.model_dump(),
        "git": git_state,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "best_variant": best_name,
        "variant_selection": selection,
        **headline,
        "goals": goals,
        "headline_rule": (
            "ratios: per source, the median over rounds of the pipeline's wall over the same round's script; "
            "ratios and overhead: worst source; RSS: peak of the benchmark process (all pipeline runs in process)"
        ),
        "note_bit_identity": (
            "pipeline_repeats_identical: whether every pipeline repeat wrote the same rendition "
            "bytes (null with one repeat)"
        ),
        "big_ingest": big,
        "sources": per_source,
        "bench_wall_s": round(time.monotonic() - t_start, 1),
    }
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=False))
    print_table(results)
    log(f"wrote {RESULTS.relative_to(ROOT)} (total {results['bench_wall_s']:.0f}s)")
    return 0


def print_table(r: dict) -> None:
    print()
    print(
        f"{r['ffmpeg_version']} | {r['cpus']} CPUs | threads={r['threads']} | {r['duration_s']:g}s 1080p30 sources"
        f" | median of {r['repeats']} | best script = {r['best_variant']}"
    )
    if r["variant_selection"]:
        print(
            "\nScript variants (once each, short sources)  clean wall  noisy wall    total  CPU s (c+n)  other CPU s"
        )
        for name, per in sorted(
            r["variant_selection"].items(), key=lambda kv: kv[1]["total_wall_s"]
        ):
            c, n = per["clean"], per["noisy"]
            print(
                f"  {name:40s} {c['wall_s']:9.2f}s {n['wall_s']:10.2f}s {per['total_wall_s']:7.2f}s "
                f"{c['cpu_s'] + n['cpu_s']:11.2f} {c['other_cpu_s'] + n['other_cpu_s']:12.1f}"
            )
    print(
        f"\n{'source':6s} {'run':15s} {'wall s':>8s} {'CPU s':>8s} {'CPU/wall':>8s} {'py CPU s':>8s} {'other CPU s':>11s}"
    )
    for kind, s in r["sources"].items():
        for what in ("naive", "best", "best_same_bytes", "pipeline"):
            f = s[what]
            print(
                f"{kind:6s} {what:15s} {f['wall_s']:8.2f} {f['cpu_s']:8.2f} {f['cpu_s'] / f['wall_s']:8.2f} "
                f"{f['python_cpu_s']:8.2f} {f['other_cpu_s']:11.2f}"
            )
        p = s["pipeline"]["runs"][0]
        rounds = ", ".join(f"{x:.3f}" for x in s["ratios_per_round"]["vs_best"])
        print(
            f"{kind:6s} pipeline/best ({s['best_script']}) {s['ratio_vs_best']:.3f} (median of rounds {rounds}; "
            f"ratio of medians {s['ratio_of_medians_vs_best']:.3f})  pipeline/best-same-bytes ({s['best_same_bytes_variant']}) "
            f"{s['ratio_vs_best_same_bytes']:.3f} (its bytes match the pipeline's: {s['same_bytes_script_matches_pipeline']})  "
            f"pipeline/naive {s['ratio_vs_naive']:.3f}  "
            f"overhead {s['overhead_s_per_stage']:.3f} s/stage ({p['overhead_s']:.2f}s over {p['stages_run']} stages in {p['steps_run']} steps; "
            f"{p['outside_steps_s']:.2f}s outside steps)  pipeline repeats identical: {s['pipeline_repeats_identical']}"
        )
        print(
            f"{'':6s}   pipeline steps (run #1):  {'step':16s} {'start+':>7s} {'wall':>7s} {'ffmpeg':>7s} {'other':>6s}"
        )
        for name, st in sorted(p["steps"].items(), key=lambda kv: kv[1]["start_offset_s"] or 0):
            if st["wall_s"] is None:
                continue
            print(
                f"{'':6s}   {'':24s}  {name:16s} {st['start_offset_s']:7.2f} {st['wall_s']:7.2f} "
                f"{st['ffmpeg_wall_s']:7.2f} {st['wall_s'] - st['ffmpeg_wall_s']:6.2f}"
            )
    print(
        f"\nPython peak RSS (bench process, pipeline in process): {r['python_peak_rss_mb']:.0f} MB"
    )
    if r["big_ingest"]:
        b = r["big_ingest"]
        print(
            f"Python peak RSS, ingest+probe of {b['source_bytes'] / 2**30:.2f} GiB source (fresh process): "
            f"{b['peak_rss_mb']:.0f} MB (wall {b['wall_s']:.1f}s)"
        )
    print("\nGoals:")
    for k, g in r["goals"].items():
        status = "n/a" if g["pass"] is None else ("PASS" if g["pass"] else "FAIL")
        print(f"  {k:32s} {str(g['value']):>10s}  {g['threshold']:>8s}  {status}")
    print()


if __name__ == "__main__":
    sys.exit(main())
