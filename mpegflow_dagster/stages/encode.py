"""The ladder: every rung's rendition and the thumbnails from one step that shares each decode
of the source (time chunks or lanes of renditions); each output is still its own asset."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Optional, Sequence

from dagster import AssetsDefinition, Failure, Output

from .. import qc
from ..checks import ChecksFailed
from ..chunk_store import ChunkStore, local_chunks
from ..media import commands, stills
from ..media.chunking import WHOLE, Span, boundary_step, plan_spans
from ..media.classify import classify_exception
from ..media.codecs import codec
from ..media.probe import MediaInfo, probe
from ..media.runner import RunResult
from ..media.source_qc import Analysis, Part, SourceReport, analysis_of, read_parts
from ..media.storyboard import storyboard_vtt
from ..media.verify import verify_output
from ..spec import PipelineSpec, Rendition, ThumbnailSpec
from ..stage import (
    IO_MANAGER_KEY,
    Context,
    Retryable,
    StageContext,
    StageRun,
    StepLayout,
    VideoStage,
    pipeline_key,
    video_multi_asset,
)
from ..storage import CHUNK_CACHE, scratch_dir, sha256_files
from .ingest import CAPTIONS_STEM, load_probe, source_file
from .rendition_qc import measure_renditions
from .source_qc import (
    DETECTORS,
    FINDINGS,
    analyse_alone,
    report_output,
    rides_on_encode,
    source_analysis,
    source_inputs,
    source_loudnorm,
    source_qc_stage,
)
from .toolkit import MediaRejected, StageOutput, Tools

# The source's analysis (`stages.source_qc`) when it is an output of the encode step: its asset
# name, its key in `encode_ladder`'s `work` and result.
SOURCE_QC = "source_qc"


def rendition_asset_name(name: str) -> str:
    return f"rendition_{name}"


def video_output(
    spec: PipelineSpec,
    rendition: Rendition,
    info: MediaInfo,
    loudnorm: Optional[commands.Loudnorm] = None,
) -> commands.VideoOutput:
    preset = spec.preset_for(rendition)
    video = info.video
    assert video is not None and video.height  # probe_source guarantees it
    return commands.VideoOutput(
        encoder=preset.encoder,
        height=commands.rendition_height(rendition.height, video.height, spec.upscale),
        video_bitrate_kbps=rendition.video_bitrate_kbps,
        maxrate_factor=rendition.maxrate_factor,
        profile=rendition.profile,
        level=rendition.level,
        crf=preset.crf,
        audio_bitrate_kbps=rendition.audio_bitrate_kbps,
        speed=preset.speed,
        tune=preset.tune,
        pix_fmt=preset.pix_fmt,
        encoder_params=tuple(sorted(preset.encoder_params.items())),
        audio_sample_rate=preset.audio_sample_rate,
        audio_channels=preset.audio_channels,
        gop_s=spec.gop_s,
        frame_rate=video.frame_rate or 30.0,
        has_audio=info.audio is not None,
        tone_map=info.hdr and not preset.carries_hdr,
        audio_stream=f"a:{info.default_audio}",
        hdr10=info.hdr10 if preset.carries_hdr else None,
        loudnorm=loudnorm,
    )


def _checked_rendition(
    out: Path,
    info: MediaInfo,
    spec: PipelineSpec,
    rendition: Rendition,
    runs: list[RunResult],
    tools: Tools,
    *,
    preview_at_s: Optional[float] = None,
) -> StageOutput:
    """Exit 0 is not success: a truncated or damaged source can encode "fine" into a short output,
    which the rendition's `streams_and_duration` check refuses (see `qc`). The UI shows a frame
    decoded from the rendition itself (at `preview_at_s`, else its middle)."""
    result = probe(out, tools.ffprobe)
    problems = verify_output(
        result,
        info,
        expect_audio=True,
        policy=spec.failures.verification,
        messages="\n".join(r.messages for r in runs),
    )
    wall = max(r.started_at + r.wall_s for r in runs) - min(r.started_at for r in runs)
    facts = {
        **result.summary(),
        "preset": spec.preset_for(rendition).ref,
        "target_kbps": rendition.video_bitrate_kbps,
        "encode_speed_x": round(info.duration / wall, 2) if wall else None,
        qc.VERIFICATION: problems,
    }
    if problems:  # refused by its check: nothing to show or measure
        return StageOutput(out, facts, runs)
    frame = out.with_name("preview-frame.jpg")
    at_s = stills.middle(result.duration) if preview_at_s is None else preview_at_s
    video = result.video
    args = stills.frame_args(
        out, frame, at_s=at_s, video_width=video.width if video else None, formats="mov,mp4"
    )
    return StageOutput(out, facts, runs, display={"frame": tools.picture("frame", args, frame)})


def encode_rendition(
    ingest_dir: Path,
    info: MediaInfo,
    spec: PipelineSpec,
    rendition: Rendition,
    tools: Tools,
    work: Path,
    *,
    subtitles: Optional[Path] = None,
    label: Optional[str] = None,
    loudnorm: Optional[commands.Loudnorm] = None,
) -> StageOutput:
    """One rendition by its own FFmpeg run (optionally with captions burned in)."""
    cwd = None
    subtitle_name = None
    if subtitles is not None:
        # Run in the scratch dir with a plainly named copy: no filter-path escaping needed.
        subtitle_name = f"{CAPTIONS_STEM}{subtitles.suffix}"
        shutil.copyfile(subtitles, work / subtitle_name)
        cwd = work
    out = work / f"{label or rendition.name}.mp4"
    args = commands.encode_rendition_args(
        source_file(ingest_dir),
        out,
        video_output(spec, rendition, info, loudnorm),
        threads=tools.threads,
        subtitles=subtitle_name,
        subtitle_font_size=spec.captions.font_size,
    )
    run = tools.run(label or rendition.name, args, duration_s=info.duration, cwd=cwd)
    # A captioned rendition shows a frame with a caption on it.
    at_s = (
        stills.caption_moment(subtitles.read_text(errors="replace"), info.duration)
        if subtitles is not None
        else None
    )
    return _checked_rendition(out, info, spec, rendition, [run], tools, preview_at_s=at_s)


def encode_spans(info: MediaInfo, spec: PipelineSpec) -> list[Span]:
    """The time chunks a shared encode of this source is cut into (one: the whole source)."""
    video = info.video
    step = boundary_step(spec.gop_s, spec.thumbnails.interval_s)
    return plan_spans(
        info.duration,
        video.constant_frame_rate if video else None,
        spec.chunk_s,
        step,
        lead_s=Fraction(str(spec.gop_s)) * spec.chunk_lead_gops,
    )


class LadderEncode:
    """One shared encode of a source: the outputs, how the source is cut, and each piece (a time
    chunk encoding every output's part, the audio of every output) by the recipe that decides its
    bytes. `encode_ladder` makes everything in one step; `encode_share` only the pieces of one
    chunk-batch step, into the same `ChunkStore`, for the encode step to join."""

    def __init__(
        self,
        ingest_dir: Path,
        info: MediaInfo,
        spec: PipelineSpec,
        rungs: list[Rendition],
        with_thumbnails: bool,
        tools: Tools,
        chunks: ChunkStore,
        source_id: Optional[str] = None,
        loudnorm: Optional[commands.Loudnorm] = None,
        analyse: bool = False,
    ) -> None:
        self.source, self.info, self.tools, self.chunks = (
            source_file(ingest_dir),
            info,
            tools,
            chunks,
        )
        # what names the source in a piece's recipe: its content (the ingest's data version) when
        # known, so a piece made on one machine is found from another; else this file as it is
        self.source_id = source_id or _file_identity(self.source)
        cfg = spec.thumbnails
        self.thumbs = (
            commands.ThumbnailOutput(cfg.interval_s, cfg.width, cfg.quality)
            if with_thumbnails
            else None
        )
        self.outputs = {r.name: video_output(spec, r, info, loudnorm) for r in rungs}
        self.spans = encode_spans(info, spec)
        self.has_audio = info.audio is not None and bool(self.outputs)  # not for thumbnails alone
        # the source's analysis rides on the pieces: each chunk's video, the audio piece's audio.
        # No part of a piece's recipe (the analysis changes no byte of it): a piece made without
        # it has no findings, and the source is then analysed alone (`findings`)
        self.analyse = analyse and self.chunked and bool(self.outputs)

    @property
    def tone_mapped(self) -> frozenset[str]:
        """The rungs that tone-map an HDR source to SDR."""
        return frozenset(n for n, o in self.outputs.items() if o.tone_map)

    @property
    def chunked(self) -> bool:
        return len(self.spans) > 1

    def run(
        self,
        names: list[str],
        span: Span,
        into: Callable[[str], Path],
        thumbs_dir: Optional[Path],
        cancel: threading.Event,
        analysis: Optional[Analysis] = None,
    ) -> RunResult:
        """One FFmpeg process: `span` of the source decoded once into the outputs `names` (and the
        thumbnails into `thumbs_dir`, and the source's `analysis` on the same decode)."""
        label = "encode " + ",".join(
            [*names, *(["thumbnails"] if thumbs_dir else []), *([SOURCE_QC] if analysis else [])]
        )
        if not span.whole:
            label += f" {float(span.start_s):g}s+"
        if thumbs_dir is not None:
            thumbs_dir.mkdir(parents=True, exist_ok=True)
        args = commands.encode_ladder_args(
            self.source,
            {into(n): self.outputs[n] for n in names},
            threads=self.tools.threads,
            thumbnails=(thumbs_dir, self.thumbs) if self.thumbs and thumbs_dir else None,
            span=span,
            analysis=analysis.streams if analysis is not None else None,
        )
        duration = self._span_s(span)
        made = [rendition_asset_name(n) for n in names] + (["thumbnails"] if thumbs_dir else [])
        return self.tools.run(label, args, duration_s=duration, outputs=made, cancel=cancel)

    # -- pieces -------------------------------------------------------------------------------

    def _key(self, what: dict[str, Any]) -> str:
        """What decides a piece's bytes: the source, the piece, every output's settings, the
        threads and the FFmpeg build."""
        blob = {
            **what,
            "source": self.source_id,
            "outputs": {n: dataclasses.asdict(o) for n, o in sorted(self.outputs.items())},
            "threads": self.tools.threads,
            "ffmpeg": self.tools.build
            or _file_identity(Path(shutil.which(self.tools.ffmpeg) or self.tools.ffmpeg)),
            "layout": 3,  # 3: pieces in a ChunkStore; the audio is a piece
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[
            :32
        ]

    def chunk_key(self, i: int) -> str:
        span = self.spans[i]
        thumbs = dataclasses.asdict(self.thumbs) if self.thumbs else None
        return self._key({"span": [str(span.start_s), str(span.duration_s)], "thumbs": thumbs})

    def audio_key(self) -> str:
        return self._key({"audio": True})

    def _span_s(self, span: Span) -> float:
        return (
            float(span.duration_s)
            if span.duration_s is not None
            else self.info.duration - float(span.start_s)
        )

    def _analysis(self, into: Path, span: Optional[Span]) -> Optional[Analysis]:
        """The source's analysis in a piece (`analyse`): a chunk's video, its lead skipped
        (`span`), or the audio piece's audio (None)."""
        if not self.analyse:
            return None
        if span is None:
            return analysis_of(
                self.source, into / FINDINGS, self.info, settings=DETECTORS, video=False
            )
        return analysis_of(
            self.source,
            into / FINDINGS,
            self.info,
            settings=DETECTORS,
            audio=False,
            part=(float(span.lead_s), self._span_s(span)),
        )

    def make_chunk(self, i: int, into: Path, cancel: threading.Event) -> RunResult:
        return self.run(
            list(self.outputs),
            self.spans[i],
            lambda n: into / f"{n}.mp4",
            into / "thumbnails" if self.thumbs else None,
            cancel,
            self._analysis(into, self.spans[i]),
        )

    def make_audio(self, into: Path, cancel: threading.Event) -> RunResult:
        analysis = self._analysis(into, None)
        return self.tools.run(
            "encode audio",
            commands.audio_args(
                self.source,
                {into / f"{n}.m4a": o.audio for n, o in self.outputs.items()},
                analysis.streams if analysis is not None else None,
            ),
            duration_s=self.info.duration,
            cancel=cancel,
        )

    def findings(
        self, chunks: list[tuple[Path, RunResult]], audio: Optional[tuple[Path, RunResult]]
    ) -> Optional[SourceReport]:
        """The source's report from the findings in its pieces (`analyse`); None if a piece has
        none (made by a run that did not analyse)."""
        if not all((e / FINDINGS).is_dir() for e, _ in [*chunks, *([audio] if audio else [])]):
            return None
        return read_parts(
            [
                Part(entry / FINDINGS, float(span.start_s), self._span_s(span), run.stderr_tail)
                for (entry, run), span in zip(chunks, self.spans, strict=True)
            ],
            Part(audio[0] / FINDINGS, 0.0, self.info.duration, audio[1].stderr_tail)
            if audio is not None
            else None,
            duration_s=self.info.duration,
            settings=DETECTORS,
            audio_stream=f"a:{self.info.default_audio}" if self.info.audio is not None else None,
        )

    @functools.cached_property
    def pieces(self) -> list[tuple[str, Callable[[Path, threading.Event], RunResult]]]:
        """Every piece (key, make): the chunks in order, then the audio (if the source has any)."""
        found: list[tuple[str, Callable[[Path, threading.Event], RunResult]]] = [
            (self.chunk_key(i), functools.partial(self.make_chunk, i))
            for i in range(len(self.spans))
        ]
        if self.has_audio:
            found.append((self.audio_key(), self.make_audio))
        return found

    def share(self, step: int, steps: int) -> list[int]:
        """Which pieces (indices into `pieces`) chunk-batch step `step` of `steps` makes: the
        chunks dealt round, and the audio (a few percent of the work) to a step holding one chunk
        fewer when there is one."""
        count = len(self.spans)
        mine = list(range(step, count, steps))
        if self.has_audio and step == count % steps:
            mine.append(count)
        return mine

    def fetch_all(
        self, cancel: threading.Event
    ) -> tuple[list[tuple[Path, RunResult]], Optional[tuple[Path, RunResult]]]:
        """Every chunk and the audio from the store, the missing ones made here (`tools.lanes`
        chunks at a time, the audio beside them)."""
        pieces = self.pieces
        chunk_jobs = [
            functools.partial(self._fetched, key, make) for key, make in pieces[: len(self.spans)]
        ]

        def chunks(cancel: threading.Event) -> list[tuple[Path, RunResult]]:
            return _together(
                chunk_jobs, at_once=max(1, self.tools.lanes), cancel=cancel, finish_running=_heals
            )

        jobs: list[Callable[[threading.Event], Any]] = [chunks]
        if self.has_audio:
            jobs.append(functools.partial(self._fetched, *pieces[-1]))
        done = _together(jobs, at_once=2, cancel=cancel, finish_running=_heals)
        return done[0], (done[1] if self.has_audio else None)

    def _fetched(
        self, key: str, make: Callable[[Path, threading.Event], RunResult], cancel: threading.Event
    ) -> tuple[Path, RunResult]:
        return self.chunks.made(key, lambda into: make(into, cancel))

    def forget(self) -> None:
        """Remove every piece: all that was made from them is stored."""
        for key, _ in self.pieces:
            self.chunks.remove(key)


def _file_identity(path: Path) -> list[object]:
    st = path.resolve().stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _heals(exc: BaseException) -> bool:
    """A failure a retry may heal: the pieces running beside it are finished and kept, so the
    retry encodes only what failed."""
    return classify_exception(exc).failure_class in ("transient", "resource")


def encode_share(encode: LadderEncode, step: int, steps: int) -> list[RunResult]:
    """The pieces of chunk-batch step `step` (of `steps`) made into the store, `tools.lanes` at a
    time; those already there are left as they are. Returns the runs it made."""
    pieces = encode.pieces

    def made(i: int, cancel: threading.Event) -> Optional[RunResult]:
        key, make = pieces[i]
        return encode.chunks.ensure(key, lambda into: make(into, cancel))

    jobs = [functools.partial(made, i) for i in encode.share(step, steps)]
    runs = _together(jobs, at_once=max(1, encode.tools.lanes), finish_running=_heals)
    return [r for r in runs if r is not None]


def encode_ladder(
    ingest_dir: Path,
    info: MediaInfo,
    spec: PipelineSpec,
    rungs: list[Rendition],
    with_thumbnails: bool,
    tools: Tools,
    work: dict[str, Path],
    *,
    chunks: Optional[ChunkStore] = None,
    source_id: Optional[str] = None,
    loudnorm: Optional[commands.Loudnorm] = None,
) -> dict[str, StageOutput]:
    """Several renditions (and the thumbnails, and the source's analysis when `work` has a dir
    for SOURCE_QC), up to `tools.lanes` FFmpeg processes at once.
    FFmpeg 5.1 runs the encoders of one process one after another, and x264 must run one thread
    per encoder to give the same bytes on every run, so the work is spread over processes:

    - a source long enough for `spec.chunk_s` is cut in time (see `chunking`): each chunk is one
      process that decodes its part once and encodes every output from it; the audio is encoded
      once, apart, and each rendition's chunks are joined with it without re-encoding. Chunks and
      audio are pieces in `chunks` (default: beside the scratch dirs), kept by their recipe until
      every output is made: a retry, or the chunk-batch steps before this one, leave there what
      they finished, and only what is missing is encoded here;
    - a shorter one is encoded whole, its renditions spread over lanes of similar cost, each lane
      decoding the source and encoding its renditions (byte for byte what one run per output makes).

    Either way an output's bytes depend only on the source, the spec and the build, not on the
    number of lanes or steps or which outputs are encoded together. `work` and the result are keyed
    by rung name, "thumbnails" and SOURCE_QC (one scratch dir per output, so each is published and
    cleaned up on its own). The analysis rides on the decodes the encode makes anyway (see
    `stages.source_qc`): the lightest lane's, or each chunk's video and the audio piece's audio;
    with nothing else to make it runs alone. A failure fails the whole call: the other processes
    are stopped, unless a retry may heal it (they finish, and their pieces are kept); callers
    isolate by re-running the outputs one by one."""
    root = next(iter(work.values())).parent
    encode = LadderEncode(
        ingest_dir,
        info,
        spec,
        rungs,
        with_thumbnails,
        tools,
        chunks or local_chunks(root),
        source_id,
        loudnorm,
        analyse=SOURCE_QC in work,
    )
    on_lane = SOURCE_QC in work and not encode.chunked and bool(rungs or with_thumbnails)
    analysed: dict[str, StageOutput] = {}
    if SOURCE_QC in work and not (on_lane or encode.analyse):
        analysed[SOURCE_QC] = analyse_alone(ingest_dir, info, spec, work[SOURCE_QC], tools)
        if not rungs and not with_thumbnails:
            return analysed
    analysis = source_analysis(ingest_dir, info, spec, work[SOURCE_QC]) if on_lane else None
    frames = work["thumbnails"] / "thumbnails" / "frames" if with_thumbnails else None
    if frames is not None:
        frames.mkdir(parents=True)
    # each output's progress is out of the whole source, however many chunks make it
    tools.expect(
        [rendition_asset_name(n) for n in encode.outputs]
        + (["thumbnails"] if with_thumbnails else []),
        info.duration,
    )

    def finish(runs: dict[str, list[RunResult]]) -> dict[str, StageOutput]:
        """Verified and hashed outputs; for a lane, while the other lanes still encode."""

        def one(name: str, cancel: threading.Event) -> tuple[str, StageOutput]:
            if name != "thumbnails":
                out = _checked_rendition(
                    work[name] / f"{name}.mp4", info, spec, spec.rendition(name), runs[name], tools
                )
            else:
                assert frames is not None  # thumbnails are only run when frames are extracted
                cfg = spec.thumbnails
                out = _finish_thumbnails(frames.parent, encode.source, info, cfg, tools, runs[name])
            out.hashed.update(sha256_files(out.path))
            return name, out

        # the ffprobe, sprite and hashes of a lane's outputs, all at once
        return dict(_together([functools.partial(one, name) for name in runs], at_once=len(runs)))

    def measure(outs: dict[str, StageOutput]) -> None:
        """What the renditions' checks judge (`rendition_qc`): one run for all of `outs`."""
        measure_renditions(
            outs, encode.source, spec, tools, root, loudnorm, tone_mapped=encode.tone_mapped
        )

    if not encode.chunked:
        lanes = _lanes(spec, rungs, max(1, tools.lanes))

        def lane(i: int, cancel: threading.Event) -> dict[str, StageOutput]:
            names = [r.name for r in lanes[i]]
            lightest = i == len(lanes) - 1
            with_thumbs = with_thumbnails and lightest
            run = encode.run(
                names,
                WHOLE,
                lambda n: work[n] / f"{n}.mp4",
                frames if with_thumbs else None,
                cancel,
                analysis if lightest else None,
            )
            done = finish({n: [run] for n in [*names, *(["thumbnails"] if with_thumbs else [])]})
            if analysis is not None and lightest:
                done[SOURCE_QC] = report_output(analysis.read(run), [run], work[SOURCE_QC])
            # while the other lanes still encode
            measure({n: done[n] for n in names})
            return done

        finished = _together(
            [lambda cancel, i=i: lane(i, cancel) for i in range(len(lanes))], at_once=len(lanes)
        )
    else:
        fetched, audio = encode.fetch_all(threading.Event())
        entries, chunk_runs = [e for e, _ in fetched], [r for _, r in fetched]
        audio_runs = [audio[1]] if audio else []
        if encode.analyse:
            report = encode.findings(fetched, audio)
            analysed[SOURCE_QC] = (
                report_output(report, [*chunk_runs, *audio_runs], work[SOURCE_QC])
                if report is not None
                else analyse_alone(ingest_dir, info, spec, work[SOURCE_QC], tools)
            )
        if frames is not None:
            for entry in entries:
                for jpg in (entry / "thumbnails").iterdir():
                    os.link(jpg, frames / jpg.name)  # the store is on the scratch filesystem
        with scratch_dir(root, "joins", temporary=True) as listings:

            def join(name: str, cancel: threading.Event) -> dict[str, StageOutput]:
                listing = listings / f"{name}.ffconcat"
                listing.write_text(
                    commands.concat_listing(
                        [entry / f"{name}.mp4" for entry in entries], encode.spans
                    )
                )
                joined = tools.run(
                    f"join {name}",
                    commands.join_args(
                        listing,
                        audio[0] / f"{name}.m4a" if audio else None,
                        work[name] / f"{name}.mp4",
                    ),
                    duration_s=info.duration,
                    cancel=cancel,
                )
                return finish({name: [*chunk_runs, *audio_runs, joined]})

            joins: list[Callable[[threading.Event], dict[str, StageOutput]]] = [
                functools.partial(join, n) for n in encode.outputs
            ]
            if frames is not None:
                joins.append(lambda cancel: finish({"thumbnails": list(chunk_runs)}))
            # stream copies and checks: light, all at once
            finished = _together(joins, at_once=len(joins))
        encode.forget()  # everything made from them is done: a retry needs them no more
    results = {name: out for done in finished for name, out in done.items()} | analysed
    if encode.chunked:
        measure({r.name: results[r.name] for r in rungs})
    return {
        name: results[name]
        for name in [
            *(r.name for r in rungs),
            *(["thumbnails"] if frames is not None else []),
            *([SOURCE_QC] if SOURCE_QC in work else []),
        ]
    }


def _together(
    jobs: list[Callable[[threading.Event], Any]],
    at_once: int,
    cancel: Optional[threading.Event] = None,
    finish_running: Callable[[BaseException], bool] = lambda exc: False,
) -> list[Any]:
    """Run `jobs`, `at_once` at a time, each given an event (`cancel`, when nested) that is set
    when any of them fails: running FFmpeg processes stop, jobs not yet started are skipped. A
    failure for which `finish_running(failure)` holds skips the jobs not yet started but lets the
    running ones finish. Raises the failure that happened first; the later ones are its
    consequences."""
    cancel = cancel or threading.Event()
    no_more = threading.Event()
    failures: list[tuple[float, BaseException]] = []

    def guarded(job: Callable[[threading.Event], Any]) -> Any:
        if cancel.is_set() or no_more.is_set():
            return None
        try:
            return job(cancel)
        except BaseException as exc:
            failures.append((time.monotonic(), exc))
            no_more.set()
            if not finish_running(exc):
                cancel.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(jobs)))) as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    return [f.result() for f in futures]


def _lanes(spec: PipelineSpec, rungs: list[Rendition], lanes: int) -> list[list[Rendition]]:
    """Rungs spread over at most `lanes` groups of similar cost (pixels per frame, ~height^2,
    times the encoder's cost against x264), heaviest first; the last group is the lightest
    (thumbnails go there)."""

    def cost(rung: Rendition) -> float:
        return rung.height**2 * codec(spec.preset_for(rung).encoder).relative_cost

    groups: list[list[Rendition]] = [[] for _ in range(min(lanes, len(rungs)) or 1)]
    load = [0.0] * len(groups)
    for rung in sorted(rungs, key=lambda r: -cost(r)):
        i = load.index(min(load))
        groups[i].append(rung)
        load[i] += cost(rung)
    return sorted(groups, key=lambda g: -sum(cost(r) for r in g))


def _finish_thumbnails(
    out: Path,
    source: Path,
    info: MediaInfo,
    cfg: ThumbnailSpec,
    tools: Tools,
    runs: list[RunResult],
) -> StageOutput:
    """Sprite sheet and storyboard over the JPEGs extracted into `out/frames`; for the UI, a
    poster (the source's middle frame) and the sprite scaled small, beside `out`."""
    frames = out / "frames"
    count = len(list(frames.glob("*.jpg")))
    if count == 0:
        raise MediaRejected(
            "no thumbnail could be extracted: the video stream has no decodable frames"
        )
    columns = min(cfg.sprite_columns, count)
    rows = math.ceil(count / columns)
    runs = [
        *runs,
        tools.run(
            "sprite",
            commands.sprite_args(
                frames,
                out / "sprite.jpg",
                columns=columns,
                rows=rows,
                tile_width=cfg.sprite_tile_width,
                quality=cfg.quality,
            ),
        ),
    ]
    video = info.video
    assert video is not None and video.width and video.height
    tile_height = commands.even(cfg.sprite_tile_width * video.height / video.width)
    (out / "storyboard.vtt").write_text(
        storyboard_vtt(
            count=count,
            interval_s=cfg.interval_s,
            duration_s=info.duration,
            sprite_uri="sprite.jpg",
            tile_width=cfg.sprite_tile_width,
            tile_height=tile_height,
            columns=columns,
        )
    )
    facts = {
        "count": count,
        "interval_s": cfg.interval_s,
        "thumbnail_width": cfg.width,
        "sprite_grid": f"{columns}x{rows}",
        "sprite_tile": f"{cfg.sprite_tile_width}x{tile_height}",
    }
    poster, sprite = out.with_name("preview-poster.jpg"), out.with_name("preview-sprite.jpg")
    at_s = stills.middle(info.duration)
    display: dict[str, object] = {
        "poster": tools.picture(
            "poster", stills.frame_args(source, poster, at_s=at_s, video_width=video.width), poster
        ),
        "sprite": tools.picture(
            "sprite",
            stills.shrunk_args(
                out / "sprite.jpg", sprite, image_width=columns * cfg.sprite_tile_width
            ),
            sprite,
        ),
    }
    return StageOutput(out, facts, runs, display=display)


def _encode_shared(
    context: Context,
    spec: PipelineSpec,
    runs: dict[str, StageRun],
    ingest: Path,
    probe: Path,
    chunks: Optional[ChunkStore] = None,
    loudnorm: Optional[commands.Loudnorm] = None,
) -> Iterator[Output]:
    """The selected renditions and thumbnails of one video, encoded together (`stages.encode_ladder`:
    time chunks that each decode their part once, or lanes of renditions for a short source),
    with pieces (chunks, audio) kept in `chunks` (default: on this machine).

    If the shared run fails and a retry can heal it, the step retries (what was already
    materialized is reused). Otherwise each output is encoded alone, so one bad rendition does not
    take its siblings down, and the step fails naming the ones that failed (see `_settle`)."""
    todo: list[str] = []
    failed: dict[str, Exception] = {}
    for name, run in runs.items():
        try:
            reused = run.prepare()
        except (Failure, Retryable) as exc:  # e.g. its stored artifact changed: this output alone
            failed[name] = exc
            continue
        if reused is not None:
            yield reused
        else:
            todo.append(name)
    if todo:
        failed.update(
            (yield from _encode_todo(context, spec, runs, todo, ingest, probe, chunks, loudnorm))
        )
    _settle(context, spec, failed, renditions_done=_renditions(runs, exclude=failed))


def _encode_todo(
    context: Context,
    spec: PipelineSpec,
    runs: dict[str, StageRun],
    todo: list[str],
    ingest: Path,
    probe: Path,
    chunks: Optional[ChunkStore],
    loudnorm: Optional[commands.Loudnorm],
) -> Generator[Output, None, dict[str, Exception]]:
    """Encode the outputs `todo` together, or one by one after a permanent failure of the shared
    run; yields what was made, returns the failures by output."""
    info = load_probe(probe)
    started = time.time()
    try:
        with ExitStack() as scratches:
            work = {
                n.removeprefix("rendition_"): scratches.enter_context(
                    runs[n].ffmpeg.scratch(n, context.partition_key)
                )
                for n in todo
            }
            outs = encode_ladder(
                ingest,
                info,
                spec,
                _rungs(spec, todo),
                "thumbnails" in todo,
                _tools(runs, todo),
                work,
                chunks=chunks,
                source_id=runs[todo[0]].inputs.get("ingest"),
                loudnorm=loudnorm,
            )
            finished: list[Output] = []
            refused: dict[str, Exception] = {}
            for n in todo:
                try:
                    finished.append(runs[n].finish(outs[n.removeprefix("rendition_")], started))
                except ChecksFailed as exc:  # this output alone: its siblings are fine
                    refused[n] = runs[n].failure(exc)
                    # nothing publishes it: its files go now, as a failed stage's do
                    shutil.rmtree(work[n.removeprefix("rendition_")], ignore_errors=True)
    except Exception as exc:
        first = runs[todo[0]]
        if len(todo) == 1 or first.retryable(first.classification(exc)):
            verdicts = {n: runs[n].failure(exc) for n in todo}
            if isinstance(verdicts[todo[0]], Retryable):
                raise verdicts[todo[0]] from exc
            return verdicts
        context.log.warning(
            f"shared encode of {', '.join(todo)} failed ({exc}); encoding each alone to isolate it"
        )
        return (yield from _encode_each(spec, {n: runs[n] for n in todo}, ingest, info, loudnorm))
    yield from finished
    return refused


def _settle(
    context: Context,
    spec: PipelineSpec,
    failures: dict[str, Exception],
    renditions_done: int,
) -> None:
    """After some outputs failed for good: fail the step, unless only renditions failed, the spec
    packages a partial ladder (hls.min_renditions) and enough renditions are done; then the failed
    ones are simply not produced (their failure is recorded and announced) and packaging goes on."""
    retry = next((f for f in failures.values() if isinstance(f, Retryable)), None)
    if retry is not None:
        raise retry
    final = {n: f for n, f in failures.items() if isinstance(f, Failure)}
    if not final:
        return
    partial_ok = spec.hls.min_renditions is not None and renditions_done >= spec.hls.min_renditions
    if partial_ok and all(n.startswith("rendition_") for n in final):
        context.log.warning(
            f"{', '.join(final)} failed; packaging goes on without them (hls.min_renditions)"
        )
        return
    first = next(iter(final.values()))
    raise Failure(
        description="; ".join(f.description or "" for f in final.values()),
        metadata=first.metadata,
        allow_retries=False,
    )


def _renditions(names: Iterable[str], exclude: Iterable[str] = ()) -> int:
    return sum(1 for n in names if n.startswith("rendition_") and n not in set(exclude))


def _encode_each(
    spec: PipelineSpec,
    runs: dict[str, StageRun],
    ingest: Path,
    info: MediaInfo,
    loudnorm: Optional[commands.Loudnorm],
) -> Generator[Output, None, dict[str, Exception]]:
    failures: dict[str, Exception] = {}
    for name, run in runs.items():

        def produce(sc: StageContext, key: str = name.removeprefix("rendition_")) -> StageOutput:
            # the same chunks and bytes as shared
            rungs = [] if key in ("thumbnails", SOURCE_QC) else [spec.rendition(key)]
            return encode_ladder(
                ingest,
                info,
                spec,
                rungs,
                key == "thumbnails",
                sc.ffmpeg,
                {key: sc.work},
                loudnorm=loudnorm,
            )[key]

        try:
            output = run.run(produce)
        except (Failure, Retryable) as exc:
            failures[name] = exc
            continue
        if output is not None:
            yield output
    return failures


def _rungs(spec: PipelineSpec, todo: Iterable[str]) -> list[Rendition]:
    return [
        spec.rendition(n.removeprefix("rendition_"))
        for n in todo
        if n not in ("thumbnails", SOURCE_QC)
    ]


def _tools(runs: dict[str, StageRun], todo: Sequence[str]) -> Tools:
    """The tools of a shared encode: the fewest threads and lanes any of its outputs may use."""
    return runs[todo[0]].tools(
        threads=min(runs[n].threads for n in todo), lanes=min(runs[n].lanes for n in todo)
    )


# Where the chunk-batch steps leave pieces for the encode step, in the IO manager's store (local
# disk or S3, which every worker reaches); no pipeline can be named so.
SHARED_CHUNKS = ".chunks"


def shared_chunks(context: Context, runs: dict[str, StageRun]) -> ChunkStore:
    """The pieces store every step of a video's encode reaches: the artifact store."""
    io_manager = getattr(context.resources, IO_MANAGER_KEY)
    scratch = Path(next(iter(runs.values())).ffmpeg.work_dir) / CHUNK_CACHE
    return ChunkStore(io_manager.store(), scratch, prefix=SHARED_CHUNKS)


def _encode_ahead(
    context: Context,
    runs: dict[str, StageRun],
    step: int,
    steps: int,
    ingest: Path,
    probe: Path,
    source_qc: Optional[Path] = None,
    *,
    spec: PipelineSpec,
) -> None:
    """Chunk-batch step `step` of `steps`: its share of the pieces of the outputs the encode step
    will make, into the shared store; what is there already is left as it is."""
    pending = [n for n, run in runs.items() if run.pending()]
    todo = [n for n in pending if n != SOURCE_QC]
    if not todo:
        context.log.info("every selected output is reused: nothing to encode")
        return
    encode = LadderEncode(
        ingest,
        load_probe(probe),
        spec,
        _rungs(spec, todo),
        "thumbnails" in todo,
        _tools(runs, todo),
        shared_chunks(context, runs),
        runs[todo[0]].inputs.get("ingest"),
        source_loudnorm(spec, source_qc),
        analyse=SOURCE_QC in pending,  # the pieces the encode step will look for
    )
    if not encode.chunked:
        context.log.info("the source is not cut in time chunks: the encode step encodes it whole")
        return
    share = encode.share(step, steps)
    made = encode_share(encode, step, steps)
    context.log.info(
        f"chunk batch {step + 1}/{steps}: {len(made)} of its {len(share)} pieces made, "
        f"{len(share) - len(made)} found finished"
    )


ORDER = 20  # after ingest


def _codec_text(spec: PipelineSpec, rung: Rendition) -> str:
    c = codec(spec.preset_for(rung).encoder)
    return f"{c.label} {rung.profile or c.default_profile}"


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The encode step: rendition_<rung> per ladder rung, and thumbnails."""
    retry = spec.failures.retry_for("encode")
    source = source_inputs(spec)
    stages = [
        VideoStage(
            pipeline_key(spec, rendition_asset_name(r.name)),
            version(r.encoding, spec.preset_for(r), spec.encode_settings()),
            inputs=source,
            description=f"{r.name}: {_codec_text(spec, r)} {r.video_bitrate_kbps} kb/s, "
            f"keyframes every {spec.gop_s:g}s.",
            rendition=r.name,
            announces="rendition.ready",
            optional=True,
            retry=retry,
            preset=spec.preset_for(r).ref,
            checks=qc.rendition_checks(spec, r),
        )
        for r in spec.ladder
    ]
    if rides_on_encode(spec):  # its detectors on an encode lane's decode
        stages.append(source_qc_stage(spec, version))
    if spec.thumbnails.enabled:
        stages.append(
            VideoStage(
                pipeline_key(spec, "thumbnails"),
                version(spec.thumbnails),
                inputs=source,
                description="JPEG thumbnails, a sprite sheet and a WebVTT storyboard.",
                retry=retry,
                publish_as="thumbnails" if spec.emit.thumbnails else None,
                entry="storyboard.vtt",
            )
        )

    steps = layout.chunk_steps

    # Each decode of the source feeds every encoder; any subset can be materialized on demand.
    # With chunk steps, each time chunk is made in one of them, then joined here.
    @video_multi_asset(
        name=f"{spec.name}__encode",
        stages=stages,
        ins=source,
        can_subset=True,
        retry=retry,
        work_steps=steps,
        work=functools.partial(_encode_ahead, spec=spec) if steps else None,
    )
    def encode(
        context: Context,
        runs: dict[str, StageRun],
        ingest: Path,
        probe: Path,
        source_qc: Optional[Path] = None,
    ) -> Iterator[Output]:
        chunks = shared_chunks(context, runs) if steps and runs else None
        loudnorm = source_loudnorm(spec, source_qc)
        yield from _encode_shared(context, spec, runs, ingest, probe, chunks, loudnorm)
        if chunks is not None and (collected := chunks.collect_stale()):
            context.log.info(
                f"removed {collected} pieces from {SHARED_CHUNKS}/ that no run came back for "
                "in a day (of runs that failed and were never run again)"
            )

    return [encode]
