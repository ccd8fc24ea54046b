"""What each pipeline stage does, as plain functions over local paths. No Dagster here: the
asset factory wires these into the graph, and anything else (a script, a test) can call them."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from .media import commands
from .media.chunking import WHOLE, Span, boundary_step, plan_spans
from .media.hls import VariantStream, master_playlist, measure_variant
from .media.mp4 import read_mp4
from .media.probe import MediaInfo, ProbeError, probe
from .media.progress import Progress
from .media.runner import RunLimits, RunResult, run_ffmpeg
from .media.safety import MAX_PIXELS, open_in_directory, playlist_signature
from .media.storyboard import storyboard_vtt
from .media.verify import OutputRejected, verify_output
from .spec import HlsSpec, PipelineSpec, Rendition, ThumbnailSpec
from .storage import ArtifactStore, copy_hashing, copy_tree_hashing, describe, scratch_dir, sha256_file, sha256_files

SOURCE_STEM = "source"
CAPTIONS_STEM = "captions"


class MediaRejected(ValueError):
    """The input is not something this pipeline can process; retrying will not help."""

    def __init__(self, message: str, *, reason: str = "input.rejected", failure_class: str = "permanent") -> None:
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
    on_progress: Optional[Callable[[str, Progress], None]] = None  # (label, progress)
    runs: list[RunResult] = field(default_factory=list)  # every run so far, for provenance

    def run(self, label: str, args: list[str], *, duration_s: Optional[float] = None, cwd: Optional[Path] = None,
            cancel: Optional[threading.Event] = None) -> RunResult:
        callback = (lambda p: self.on_progress(label, p)) if self.on_progress else None
        result = run_ffmpeg(args, ffmpeg=self.ffmpeg, cwd=cwd, duration_s=duration_s, limits=self.limits,
                            on_progress=callback, cancel=cancel)
        self.runs.append(result)
        return result


@dataclass
class StageOutput:
    path: Path
    facts: dict[str, object] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    hashed: dict[Path, str] = field(default_factory=dict)  # sha256 of files hashed while written


# -- ingest / probe ---------------------------------------------------------------------------

def find_sidecar(source: Path, extensions: tuple[str, ...]) -> Optional[Path]:
    """The first caption file named like `source` with one of `extensions`; a link counts as
    found (and is then judged by `open_in_directory`, not silently skipped)."""
    for ext in extensions:
        candidate = source.with_suffix(ext)
        if os.path.lexists(candidate):
            return candidate
    return None


FINGERPRINT_BYTES = 1 << 20


def source_fingerprint(source: Path) -> dict[str, object]:
    """What decides whether a local source is the file ingested before, for the price of two
    1 MiB reads: the path as named, size, mtime, inode and ctime (which no `cp -p`, `rsync -t`
    or `touch -d` can set back), and the sha256 of the first and last MiB. A file swapped for
    another of equal size with its mtime kept is a new source; the copy's full sha256, computed
    while ingesting, is then its data version."""
    source = Path(source).absolute()
    fd = _open_source(source, "source")
    try:
        st = os.fstat(fd)
        ends = hashlib.sha256(os.pread(fd, FINGERPRINT_BYTES, 0))
        ends.update(os.pread(fd, FINGERPRINT_BYTES, max(0, st.st_size - FINGERPRINT_BYTES)))
    finally:
        os.close(fd)
    return {"source": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "ends_sha256": ends.hexdigest()}


def _open_source(path: Path, what: str, allow_empty: bool = False) -> int:
    """`path` opened as `safety.open_in_directory` allows, with a missing (or, unless
    `allow_empty`, empty) file refused as a permanent input error naming it."""
    try:
        fd = open_in_directory(path, what)
    except FileNotFoundError:
        raise MediaRejected(f"{what} {path} does not exist", reason="input.not_found") from None
    if not allow_empty and os.fstat(fd).st_size == 0:
        os.close(fd)
        raise MediaRejected(f"{what} {path} is empty (0 bytes)")
    return fd


def ingest(source: Path, work: Path, caption_extensions: tuple[str, ...], origin: Optional[str] = None) -> StageOutput:
    """Copy the source (and a caption sidecar beside it, if any) into one artifact directory, so
    later stages read a stored copy that cannot change under them. Both are opened without
    following a link out of their directory (`safety.open_in_directory`), so nothing but the
    user's own files reaches storage. `origin` names where the source came from when `source`
    is our own download of it (an s3:// URI): that file is private to this stage, so it is moved
    into place and only hashed, not copied a second time."""
    source = Path(source).absolute()  # as named: a link is judged where it stands
    out = work / "ingest"
    out.mkdir()
    stored = out / f"{SOURCE_STEM}{source.suffix.lower() or '.bin'}"
    sidecar = find_sidecar(source, caption_extensions)
    copies = {stored: (source, "source")}
    if sidecar:  # a bad one fails the captions stage alone, which names it
        copies[out / f"{CAPTIONS_STEM}{sidecar.suffix.lower()}"] = (sidecar, "caption sidecar")
    hashed: dict[Path, str] = {}
    for dest, (path, what) in copies.items():
        if origin is None:
            fd = _open_source(path, what, allow_empty=dest != stored)
            try:
                hashed[dest] = copy_hashing(path, dest, fd=fd)
            finally:
                os.close(fd)
        else:
            os.replace(path, dest)
            hashed[dest] = sha256_file(dest)
    return StageOutput(out, {"original_path": origin or str(source), "original_name": source.name,
                             "source_sha256": hashed[stored], "caption_sidecar": sidecar.name if sidecar else "none"},
                       hashed=hashed)


def source_file(ingest_dir: Path) -> Path:
    return next(p for p in Path(ingest_dir).iterdir() if p.stem == SOURCE_STEM)


def captions_file(ingest_dir: Path) -> Optional[Path]:
    return next((p for p in Path(ingest_dir).iterdir() if p.stem == CAPTIONS_STEM), None)


def probe_source(ingest_dir: Path, work: Path, tools: Tools, name: str) -> StageOutput:
    """ffprobe facts of the stored source, refusing what the pipeline cannot or must not encode.
    Messages name the source as `name`: where it was ingested from."""
    source = source_file(ingest_dir)
    label = f"source {name}"
    signature = playlist_signature(source)
    if signature:
        raise MediaRejected(
            f"{label} is a playlist or file list ({signature!r}), not media: refused, it would make FFmpeg read other files",
            reason="security.playlist_input", failure_class="security",
        )
    try:
        info = probe(source, tools.ffprobe)
    except ProbeError as exc:
        raise ProbeError(f"{label}: {exc}") from exc
    video = info.video
    if video is None or not video.width or not video.height:
        raise MediaRejected(f"{label} has no video stream: nothing to encode", reason="input.no_video_stream")
    if video.width * video.height > MAX_PIXELS:
        raise MediaRejected(f"{label} declares {video.width}x{video.height} pixels, above the {MAX_PIXELS} limit",
                            reason="input.too_large")
    if info.duration <= 0:
        raise MediaRejected(f"{label} has no duration: it is empty or unreadable", reason="input.invalid_data")
    out = work / "probe.json"
    out.write_text(info.model_dump_json(indent=2))
    return StageOutput(out, info.summary())


def load_probe(path: Path) -> MediaInfo:
    return MediaInfo.model_validate_json(Path(path).read_text())


# -- encode -----------------------------------------------------------------------------------

def h264_output(spec: PipelineSpec, rendition: Rendition, info: MediaInfo) -> commands.H264Output:
    preset = spec.preset_for(rendition)
    video = info.video
    assert video is not None and video.height  # probe_source guarantees it
    return commands.H264Output(
        height=commands.rendition_height(rendition.height, video.height, spec.upscale),
        video_bitrate_kbps=rendition.video_bitrate_kbps, maxrate_factor=rendition.maxrate_factor,
        profile=rendition.profile, level=rendition.level, audio_bitrate_kbps=rendition.audio_bitrate_kbps,
        speed=preset.speed, tune=preset.tune, pix_fmt=preset.pix_fmt, x264_params=tuple(sorted(preset.x264_params.items())),
        audio_sample_rate=preset.audio_sample_rate, audio_channels=preset.audio_channels,
        gop_s=spec.gop_s, frame_rate=video.frame_rate or 30.0, has_audio=info.audio is not None,
    )


def _checked_rendition(out: Path, info: MediaInfo, spec: PipelineSpec, rendition: Rendition, runs: list[RunResult],
                       tools: Tools) -> StageOutput:
    """Exit 0 is not success: a truncated or damaged source can encode "fine" into a short output."""
    result = probe(out, tools.ffprobe)
    problems = verify_output(result, info, expect_audio=True, policy=spec.failures.verification,
                             messages="\n".join(r.messages for r in runs))
    if problems:
        raise OutputRejected(problems)
    wall = max(r.started_at + r.wall_s for r in runs) - min(r.started_at for r in runs)
    facts = {**result.summary(), "preset": spec.preset_for(rendition).ref, "target_kbps": rendition.video_bitrate_kbps,
             "encode_speed_x": round(info.duration / wall, 2) if wall else None}
    return StageOutput(out, facts, runs)


def encode_rendition(
    ingest_dir: Path, info: MediaInfo, spec: PipelineSpec, rendition: Rendition, tools: Tools, work: Path,
    *, subtitles: Optional[Path] = None, label: Optional[str] = None,
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
        source_file(ingest_dir), out, h264_output(spec, rendition, info), threads=tools.threads,
        subtitles=subtitle_name, subtitle_font_size=spec.captions.font_size,
    )
    run = tools.run(label or rendition.name, args, duration_s=info.duration, cwd=cwd)
    return _checked_rendition(out, info, spec, rendition, [run], tools)


def encode_spans(info: MediaInfo, spec: PipelineSpec) -> list[Span]:
    """The time chunks a shared encode of this source is cut into (one: the whole source)."""
    video = info.video
    step = boundary_step(spec.gop_s, spec.thumbnails.interval_s)
    return plan_spans(info.duration, video.constant_frame_rate if video else None, spec.chunk_s, step)


def encode_ladder(
    ingest_dir: Path, info: MediaInfo, spec: PipelineSpec, rungs: list[Rendition], with_thumbnails: bool,
    tools: Tools, work: dict[str, Path],
) -> dict[str, StageOutput]:
    """Several renditions (and the thumbnails), up to `tools.lanes` FFmpeg processes at once.
    FFmpeg 5.1 runs the encoders of one process one after another, and x264 must run one thread
    per encoder to give the same bytes on every run, so the work is spread over processes:

    - a source long enough for `spec.chunk_s` is cut in time (see `chunking`): each chunk is one
      process that decodes its part once and encodes every output from it; the audio is encoded
      once, apart, and each rendition's chunks are joined with it without re-encoding;
    - a shorter one is encoded whole, its renditions spread over lanes of similar cost, each lane
      decoding the source and encoding its renditions (byte for byte what one run per output makes).

    Either way an output's bytes depend only on the source, the spec and the build, not on the
    number of lanes or which outputs are encoded together. `work` and the result are keyed by rung
    name and "thumbnails" (one scratch dir per output, so each is published and cleaned up on its
    own). Any failure fails the whole call (the other processes are stopped); callers isolate by
    re-running the outputs one by one."""
    source = source_file(ingest_dir)
    frames = work["thumbnails"] / "thumbnails" / "frames" if with_thumbnails else None
    if frames is not None:
        frames.mkdir(parents=True)
    cfg = spec.thumbnails
    thumbs = (frames, commands.ThumbnailOutput(cfg.interval_s, cfg.width, cfg.quality)) if frames is not None else None
    outputs = {r.name: h264_output(spec, r, info) for r in rungs}
    spans = encode_spans(info, spec)
    chunked = len(spans) > 1

    def finish(runs: dict[str, list[RunResult]]) -> dict[str, StageOutput]:
        """Verified and hashed outputs; for a lane, while the other lanes still encode."""
        def one(name: str, cancel: threading.Event) -> tuple[str, StageOutput]:
            if name != "thumbnails":
                out = _checked_rendition(work[name] / f"{name}.mp4", info, spec, spec.rendition(name), runs[name], tools)
            else:
                assert frames is not None  # thumbnails are only run when frames are extracted
                out = _finish_thumbnails(frames.parent, info, cfg, tools, runs[name])
            out.hashed.update(sha256_files(out.path))
            return name, out

        # the ffprobe, sprite and hashes of a lane's outputs, all at once
        return dict(_together([functools.partial(one, name) for name in runs], at_once=len(runs)))

    def encode(names: list[str], span: Span, into: Callable[[str], Path], with_thumbs: bool, cancel: threading.Event) -> RunResult:
        label = "encode " + ",".join([*names, *(["thumbnails"] if with_thumbs else [])])
        if not span.whole:
            label += f" {float(span.start_s):g}s+"
        args = commands.encode_ladder_args(source, {into(n): outputs[n] for n in names}, threads=tools.threads,
                                           thumbnails=thumbs if with_thumbs else None, span=span)
        duration = float(span.duration_s) if span.duration_s is not None else info.duration - float(span.start_s)
        return tools.run(label, args, duration_s=duration, cancel=cancel)

    if not chunked:
        lanes = _lanes(rungs, max(1, tools.lanes))

        def lane(i: int, cancel: threading.Event) -> dict[str, StageOutput]:
            names, with_thumbs = [r.name for r in lanes[i]], thumbs is not None and i == len(lanes) - 1
            run = encode(names, WHOLE, lambda n: work[n] / f"{n}.mp4", with_thumbs, cancel)
            return finish({n: [run] for n in [*names, *(["thumbnails"] if with_thumbs else [])]})

        finished = _together([lambda cancel, i=i: lane(i, cancel) for i in range(len(lanes))], at_once=len(lanes))
        results = {name: out for done in finished for name, out in done.items()}
    else:
        with scratch_dir(next(iter(work.values())).parent, "chunks", temporary=True) as parts:
            audio = {name: parts / f"audio-{name}.m4a" for name in outputs} if info.audio is not None else {}
            names = list(outputs)

            def chunk(i: int, cancel: threading.Event) -> RunResult:
                return encode(names, spans[i], lambda n: parts / f"{n}-{i:04d}.mp4", thumbs is not None, cancel)

            def encode_audio(cancel: threading.Event) -> RunResult:
                return tools.run("encode audio", commands.audio_args(source, {audio[n]: outputs[n] for n in audio}),
                                 duration_s=info.duration, cancel=cancel)

            def chunks(cancel: threading.Event) -> list[RunResult]:
                return _together([lambda cancel, i=i: chunk(i, cancel) for i in range(len(spans))],
                                 at_once=max(1, tools.lanes), cancel=cancel)

            # The audio (a few percent of the work) runs beside the lanes, not after them.
            chunk_runs, *audio_runs = _together([chunks, *([encode_audio] if audio else [])], at_once=2)

            def join(name: str, cancel: threading.Event) -> dict[str, StageOutput]:
                listing = parts / f"{name}.ffconcat"
                listing.write_text(commands.concat_listing([parts / f"{name}-{i:04d}.mp4" for i in range(len(spans))]))
                joined = tools.run(f"join {name}", commands.join_args(listing, audio.get(name), work[name] / f"{name}.mp4"),
                                   duration_s=info.duration, cancel=cancel)
                return finish({name: [*chunk_runs, *audio_runs, joined]})

            joins = [lambda cancel, n=n: join(n, cancel) for n in names]
            if thumbs is not None:
                joins.append(lambda cancel: finish({"thumbnails": list(chunk_runs)}))
            finished = _together(joins, at_once=len(joins))  # stream copies and checks: light, all at once
        results = {name: out for done in finished for name, out in done.items()}
    return {name: results[name] for name in [*(r.name for r in rungs), *(["thumbnails"] if frames is not None else [])]}


def _together(jobs: list[Callable[[threading.Event], Any]], at_once: int,
              cancel: Optional[threading.Event] = None) -> list[Any]:
    """Run `jobs`, `at_once` at a time, each given an event (`cancel`, when nested) that is set
    when any of them fails: running FFmpeg processes stop, jobs not yet started are skipped.
    Raises the failure that happened first; the later ones are its consequences."""
    cancel = cancel or threading.Event()
    failures: list[tuple[float, BaseException]] = []

    def guarded(job: Callable[[threading.Event], Any]) -> Any:
        if cancel.is_set():
            return None
        try:
            return job(cancel)
        except BaseException as exc:
            failures.append((time.monotonic(), exc))
            cancel.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(jobs)))) as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    return [f.result() for f in futures]


def _lanes(rungs: list[Rendition], lanes: int) -> list[list[Rendition]]:
    """Rungs spread over at most `lanes` groups of similar cost (pixels per frame, ~height^2),
    heaviest first; the last group is the lightest (thumbnails go there)."""
    groups: list[list[Rendition]] = [[] for _ in range(min(lanes, len(rungs)) or 1)]
    load = [0] * len(groups)
    for rung in sorted(rungs, key=lambda r: -r.height):
        i = load.index(min(load))
        groups[i].append(rung)
        load[i] += rung.height**2
    return sorted(groups, key=lambda g: -sum(r.height**2 for r in g))


def burn_captions(ingest_dir: Path, info: MediaInfo, spec: PipelineSpec, tools: Tools, work: Path,
                  sidecar_name: str) -> Optional[StageOutput]:
    """The captioned rendition, or None when the source has no caption sidecar. `sidecar_name`
    (where the sidecar was ingested from) is what a message about it names."""
    sidecar = captions_file(ingest_dir)
    if sidecar is None:
        return None
    try:
        probe(sidecar, tools.ffprobe, formats="srt,webvtt")
    except ProbeError as exc:
        raise MediaRejected(f"caption sidecar {sidecar_name} is not a valid SRT or WebVTT file ({exc})",
                            reason="input.invalid_captions") from exc
    rung = spec.rendition(spec.captions.rendition)
    return encode_rendition(ingest_dir, info, spec, rung, tools, work, subtitles=sidecar, label="captioned")


# -- thumbnails -------------------------------------------------------------------------------

def _finish_thumbnails(out: Path, info: MediaInfo, cfg: ThumbnailSpec, tools: Tools, runs: list[RunResult]) -> StageOutput:
    """Sprite sheet and storyboard over the JPEGs extracted into `out/frames`."""
    frames = out / "frames"
    count = len(list(frames.glob("*.jpg")))
    if count == 0:
        raise MediaRejected("no thumbnail could be extracted: the video stream has no decodable frames")
    columns = min(cfg.sprite_columns, count)
    rows = math.ceil(count / columns)
    runs = [*runs, tools.run("sprite", commands.sprite_args(
        frames, out / "sprite.jpg", columns=columns, rows=rows, tile_width=cfg.sprite_tile_width, quality=cfg.quality))]
    video = info.video
    assert video is not None and video.width and video.height
    tile_height = commands.even(cfg.sprite_tile_width * video.height / video.width)
    (out / "storyboard.vtt").write_text(storyboard_vtt(
        count=count, interval_s=cfg.interval_s, duration_s=info.duration, sprite_uri="sprite.jpg",
        tile_width=cfg.sprite_tile_width, tile_height=tile_height, columns=columns))
    facts = {"count": count, "interval_s": cfg.interval_s, "thumbnail_width": cfg.width,
             "sprite_grid": f"{columns}x{rows}", "sprite_tile": f"{cfg.sprite_tile_width}x{tile_height}"}
    return StageOutput(out, facts, runs)


# -- package ----------------------------------------------------------------------------------

def package_hls(renditions: dict[str, Path], cfg: HlsSpec, tools: Tools, work: Path) -> StageOutput:
    """One HLS variant per rendition (stream copy, all at once: each is a short I/O-bound run)
    and a master playlist over all of them."""
    out = work / "hls"

    def variant(name: str, mp4: Path) -> tuple[VariantStream, RunResult, dict[Path, str]]:
        vdir = out / name
        vdir.mkdir(parents=True)
        header = read_mp4(mp4)  # verified by the encode stage; the header is all a master playlist needs
        run = tools.run(f"hls {name}", commands.hls_variant_args(
            mp4, vdir, segment_s=cfg.segment_s, segment_type=cfg.segment_type), duration_s=header.duration_s)
        peak, average, version = measure_variant(vdir / "index.m3u8")
        video = header.video
        rate = float(video.frame_rate) if video.frame_rate else None
        stream = VariantStream(f"{name}/index.m3u8", version, video.width, video.height, rate, header.codecs, peak, average)
        return stream, run, sha256_files(vdir)

    with ThreadPoolExecutor(max_workers=max(1, len(renditions))) as pool:
        made = list(pool.map(lambda item: variant(*item), renditions.items()))
    variants = [v for v, _, _ in made]
    (out / "master.m3u8").write_text(master_playlist(variants))
    facts = {"variants": len(variants), "segment_s": cfg.segment_s, "segment_type": cfg.segment_type,
             "ladder": ", ".join(f"{v.height}p@{v.peak_bps // 1000}k" for v in sorted(variants, key=lambda v: v.peak_bps))}
    return StageOutput(out, facts, [run for _, run, _ in made], hashed={f: h for _, _, known in made for f, h in known.items()})


# -- emit -------------------------------------------------------------------------------------

def emit(video: str, parts: dict[str, Path], delivery: ArtifactStore, work: Path) -> StageOutput:
    """Publish each part to `<delivery>/<video>/<part>` (atomically, one part at a time, playlists
    inside a part appear together with their segments) and write a manifest of what went where."""
    manifest: dict[str, dict[str, object]] = {}
    for part, path in parts.items():
        staged = work / part
        known = copy_tree_hashing(Path(path), staged)  # hashed while copied, not read again to publish
        record = delivery.publish(staged, PurePosixPath(video) / part, describe(staged, known))
        manifest[part] = {"uri": record.uri, "sha256": record.sha256, "size_bytes": record.size_bytes, "files": record.files}
    out = work / "published.json"
    out.write_text(json.dumps({"video": video, "parts": manifest}, indent=2, sort_keys=True))
    facts: dict[str, object] = {"published": ", ".join(manifest), **{f"{p}_uri": m["uri"] for p, m in manifest.items()}}
    if "hls" in manifest:
        facts["master_playlist"] = f"{manifest['hls']['uri']}/master.m3u8"
    return StageOutput(out, facts)
